//! Messages exchanged between replicas.
//!
//! The core only builds and consumes these values; the host decides how they cross the
//! network (the `wire` crate encodes them for TCP).

use crate::ballot::{Ballot, Slot};
use crate::value::{Entry, Value};

/// A message from one replica's role to another's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Message {
    /// Phase 1a, proposer → acceptor: promise `ballot` for every slot from `from_slot` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first slot the candidate does not know to be chosen.
        from_slot: Slot,
    },
    /// Phase 1b, acceptor → proposer: the promise, with what the acceptor accepted.
    /// Only sent once the promise is durable.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's own commit index: every slot below it is chosen.
        commit: Slot,
        /// Accepted values in slots at or above `max(from_slot, commit)`.
        accepted: Vec<Entry>,
    },
    /// Phase 2a, leader → acceptor: accept these values under `ballot`.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// Slots and their values.
        entries: Vec<(Slot, Value)>,
        /// The leader's commit index (every slot below it is chosen).
        commit: Slot,
    },
    /// Phase 2b, acceptor → leader: these slots were accepted under `ballot`.
    /// Only sent once the accepted values are durable.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The slots accepted.
        slots: Vec<Slot>,
    },
    /// Refusal: the acceptor has promised a higher ballot than the one it was sent.
    Nack {
        /// The ballot that was refused.
        refused: Ballot,
        /// The acceptor's promised ballot.
        promised: Ballot,
    },
    /// Leader → all: I am alive, this is my commit index, and please confirm read round
    /// `read_round` (read-index linearizable reads).
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit index.
        commit: Slot,
        /// The newest read-confirmation round the leader has started.
        read_round: u64,
    },
    /// Leader → all: the commit index advanced. Unlike a heartbeat it expects no reply, so
    /// announcing commits under load costs one message per follower, not two.
    Commit {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit index.
        commit: Slot,
    },
    /// Reply to a heartbeat: the sender has not promised any ballot above `ballot`.
    HeartbeatAck {
        /// The leader's ballot being acknowledged.
        ballot: Ballot,
        /// The read round being confirmed.
        read_round: u64,
        /// The sender's commit index, so the leader knows how far behind it is.
        commit: Slot,
    },
    /// Learner → learner: send me the chosen values from `from_slot` on.
    CatchUpRequest {
        /// The first slot the requester is missing.
        from_slot: Slot,
        /// The requester joins the cluster and knows no membership yet: it needs a
        /// snapshot (which carries the membership), not log entries.
        joining: bool,
    },
    /// Reply to a catch-up request: chosen values in slot order.
    CatchUp {
        /// Chosen entries, contiguous from the requested slot.
        entries: Vec<Entry>,
        /// The sender's commit index, so the requester knows whether to ask again.
        commit: Slot,
    },
    /// Repairing replica → all: my durable state was damaged; tell me your promise, and
    /// where your log ends if you lead. (See [`Replica::recover_for_repair`](crate::Replica::recover_for_repair).)
    RepairQuery,
    /// Leader → voter: I am leaving (I am no longer a voter); start an election now
    /// instead of waiting for your election timeout.
    HandOver {
        /// The departing leader's ballot.
        ballot: Ballot,
    },
    /// Reply to a repair query.
    RepairInfo {
        /// The sender's promised ballot (meaningless when `repairing`).
        promised: Ballot,
        /// If the sender leads (phase 1 complete): its ballot and the next slot it will
        /// give a value to. Every slot it re-proposed in its recovery lies below that.
        leading: Option<(Ballot, Slot)>,
        /// The sender is repairing too: it campaigns for nothing, so its promise does not
        /// matter to the asker.
        repairing: bool,
    },
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Nack { .. } => "nack",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Commit { .. } => "commit",
            Message::HeartbeatAck { .. } => "heartbeat-ack",
            Message::CatchUpRequest { .. } => "catch-up-request",
            Message::CatchUp { .. } => "catch-up",
            Message::RepairQuery => "repair-query",
            Message::HandOver { .. } => "hand-over",
            Message::RepairInfo { .. } => "repair-info",
        }
    }
}
