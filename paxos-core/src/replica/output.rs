//! What a [`Replica`](super::Replica) tells its host to do, and why it refuses work.

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::membership::{ChangeError, Membership, Reconfig};
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
    /// The membership change chosen in `slot` was delivered (right after its
    /// [`Output::Committed`]): applied, governing slots from `Ok(first slot)` on, or
    /// refused alike on every replica. `latest` is the latest membership after it; the
    /// host keeps it with its state machine so its snapshots carry it. A host's snapshot
    /// must pair the state machine and the membership log as of the same slot: take none
    /// between the `Committed` of a change's slot and this output (or apply the change to
    /// the host's own log copy with `MembershipLog::apply_chosen` when it applies the slot).
    Reconfigured {
        /// The slot the change was chosen in.
        slot: Slot,
        /// The change.
        reconfig: Reconfig,
        /// The first slot the new membership governs, or why the change was refused.
        outcome: Result<Slot, ChangeError>,
        /// The latest membership after this change.
        latest: Membership,
    },
    /// A membership change this leader was asked to propose never got a slot (it stopped
    /// leading): it is definitely not chosen.
    ReconfigDropped {
        /// The change.
        reconfig: Reconfig,
        /// Who may be leading now.
        leader_hint: Option<NodeId>,
    },
    /// This replica is no longer a member: the slots from now on are governed by a
    /// membership without it. It will never vote again; the host may stop it.
    Removed,
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

/// Why a membership change was refused before it was proposed; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconfigError {
    /// This replica is not the leader; try the hinted one.
    NotLeader {
        /// The replica believed to lead, if any.
        leader_hint: Option<NodeId>,
    },
    /// Another membership change waits for a slot, is in flight, or has not taken effect
    /// yet: one change at a time.
    InProgress,
    /// The change cannot apply to the latest membership.
    Refused(ChangeError),
    /// The learner to promote is not caught up (or has not answered lately), like etcd's
    /// "learner not ready": promoting it could stall the cluster.
    LearnerNotReady {
        /// The learner.
        id: NodeId,
        /// How many slots it is behind the leader's commit index; `None` if it has not
        /// answered the leader lately (it may be down or cut off).
        lag: Option<Slot>,
        /// The most it may lag ([`Config::promote_lag_max`](crate::Config::promote_lag_max)).
        allowed: Slot,
    },
    /// After the change, the voters that answered lately would not be a majority: the
    /// cluster would stop. Refused unless forced.
    WouldLoseQuorum {
        /// Live voters after the change.
        live: usize,
        /// Voters needed for a majority after the change.
        needed: usize,
    },
}

impl std::fmt::Display for ReconfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconfigError::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "not the leader; replica {l} is"),
            ReconfigError::NotLeader { leader_hint: None } => {
                f.write_str("not the leader; no leader is known")
            }
            ReconfigError::InProgress => f.write_str(
                "another membership change is in progress; retry once it has taken effect",
            ),
            ReconfigError::Refused(e) => e.fmt(f),
            ReconfigError::LearnerNotReady {
                id,
                lag: Some(lag),
                allowed,
            } => write!(
                f,
                "learner {id} is not ready: it is {lag} slots behind the leader (at most {allowed} allowed); wait for it to catch up"
            ),
            ReconfigError::LearnerNotReady { id, lag: None, .. } => write!(
                f,
                "learner {id} is not ready: it has not answered the leader lately"
            ),
            ReconfigError::WouldLoseQuorum { live, needed } => write!(
                f,
                "refused: after this change only {live} live voters would remain where {needed} are needed for a majority (force it to override)"
            ),
        }
    }
}

impl std::error::Error for ReconfigError {}
