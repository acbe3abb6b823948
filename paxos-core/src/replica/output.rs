//! What a [`Replica`](super::Replica) tells its host to do, and why it refuses work.

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::message::Message;
use crate::persist::PersistEntry;
use crate::value::Value;

/// What the host must do next. Drain with
/// [`Replica::poll_output`](crate::Replica::poll_output) after every input, and act on each
/// output in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[must_use = "every output is an instruction the host must carry out"]
pub enum Output {
    /// Send `message` to replica `to` (best effort: the core retransmits what matters).
    Send {
        /// The destination replica.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make `entries` durable (append them to the log and fsync), in order, then call
    /// [`Replica::handle_durable`](crate::Replica::handle_durable) with `id`. Batches must
    /// become durable in `id` order.
    Persist {
        /// The batch id to report back.
        id: u64,
        /// The records to append.
        entries: Vec<PersistEntry>,
    },
    /// `value` is chosen in `slot`. Apply it to the state machine. Slots arrive in order,
    /// without gaps, each exactly once per incarnation of the replica.
    Committed {
        /// The slot.
        slot: Slot,
        /// The chosen value.
        value: Value,
    },
    /// The linearizable read `id` may now be served from the local state machine (every
    /// `Committed` output it depends on has already been handed out).
    ReadReady {
        /// The read id given to [`Replica::read`](crate::Replica::read).
        id: u64,
    },
    /// The read `id` cannot be confirmed here because this replica stopped leading.
    ReadAborted {
        /// The read id.
        id: u64,
        /// Who may be leading now.
        leader_hint: Option<NodeId>,
    },
    /// These proposals were never given a slot and never will be: this replica stopped
    /// leading. They are definitely not chosen; the client may retry elsewhere.
    ProposalsDropped {
        /// The commands, in the order they were proposed.
        commands: Vec<Bytes>,
        /// Who may be leading now.
        leader_hint: Option<NodeId>,
    },
    /// Replica `to` needs slots this replica compacted away: ship it the latest snapshot.
    /// The receiving host installs it and calls
    /// [`Replica::install_snapshot`](crate::Replica::install_snapshot).
    SendSnapshot {
        /// The lagging replica.
        to: NodeId,
    },
    /// A replica started with [`Replica::recover_for_repair`](crate::Replica::recover_for_repair)
    /// is repaired: what it needed is durable, and it votes again from now on. The host
    /// may now durably clear its "repairing" mark (until then, a restart must repair again).
    Repaired,
}

/// Why a proposal or read was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica is not the leader; try the hinted one.
    NotLeader {
        /// The replica believed to lead, if any.
        leader_hint: Option<NodeId>,
    },
    /// The proposal queue is full
    /// ([`Config::queued_commands_max`](crate::Config::queued_commands_max)); retry later.
    Busy,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "not the leader; replica {l} is"),
            ProposeError::NotLeader { leader_hint: None } => {
                f.write_str("not the leader; no leader is known")
            }
            ProposeError::Busy => f.write_str("too many proposals waiting"),
        }
    }
}

impl std::error::Error for ProposeError {}
