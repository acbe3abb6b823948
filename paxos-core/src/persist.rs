//! What an acceptor and learner must keep on disk, and how a host rebuilds it after a crash.

use std::collections::BTreeMap;

use crate::ballot::{Ballot, Slot};
use crate::membership::MembershipLog;
use crate::value::{Entry, Value};

/// One record the host must make durable, in order, when it is handed a
/// [`Output::Persist`](crate::Output::Persist) batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PersistEntry {
    /// The acceptor promised never to accept a ballot below this one.
    Promised(Ballot),
    /// The acceptor accepted `value` in `slot` under `ballot` (or learned it was chosen).
    Accepted {
        /// The slot.
        slot: Slot,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// Every slot below `upto` is chosen, with the value of its latest `Accepted` record.
    Committed {
        /// The commit index.
        upto: Slot,
    },
}

/// The durable state of a replica, rebuilt by replaying its persisted records in order.
///
/// ```
/// use paxos_core::{Ballot, PersistEntry, RecoveredState, Value};
/// let mut state = RecoveredState::default();
/// state.apply(PersistEntry::Promised(Ballot::new(3, 1)));
/// state.apply(PersistEntry::Accepted { slot: 0, ballot: Ballot::new(3, 1), value: Value::Noop });
/// state.apply(PersistEntry::Committed { upto: 1 });
/// assert_eq!(state.promised, Ballot::new(3, 1));
/// assert_eq!(state.commit, 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecoveredState {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// Accepted values by slot (the latest record per slot wins).
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    /// The commit index recorded.
    pub commit: Slot,
    /// The slot the host's snapshot covers up to (exclusive): the state machine already
    /// holds the effect of every slot below it. Set by the host after loading its snapshot.
    pub snapshot_slot: Slot,
    /// The membership log as of `snapshot_slot`, stored with the host's snapshot. `None`
    /// for a cluster that never took one: the replica then starts from the members in its
    /// [`Config`](crate::Config), and the changes chosen since are replayed from the log.
    pub membership: Option<MembershipLog>,
}

impl RecoveredState {
    /// Replays one persisted record.
    pub fn apply(&mut self, entry: PersistEntry) {
        match entry {
            PersistEntry::Promised(b) => self.promised = self.promised.max(b),
            PersistEntry::Accepted {
                slot,
                ballot,
                value,
            } => {
                self.accepted.insert(slot, (ballot, value));
            }
            PersistEntry::Committed { upto } => self.commit = self.commit.max(upto),
        }
    }

    /// The records that reproduce this state, for a host that rewrites its log after a
    /// snapshot (compaction): the promise, the commit index, and every accepted value at or
    /// above `snapshot_slot`.
    pub fn to_entries(&self) -> Vec<PersistEntry> {
        let mut out = Vec::with_capacity(self.accepted.len() + 2);
        out.push(PersistEntry::Promised(self.promised));
        for (&slot, (ballot, value)) in self.accepted.range(self.snapshot_slot..) {
            out.push(PersistEntry::Accepted {
                slot,
                ballot: *ballot,
                value: value.clone(),
            });
        }
        out.push(PersistEntry::Committed { upto: self.commit });
        out
    }

    /// The accepted entries as a list, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.accepted.iter().map(|(&slot, (ballot, value))| Entry {
            slot,
            ballot: *ballot,
            value: value.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_latest_accept_and_highest_promise() {
        let mut s = RecoveredState::default();
        let b1 = Ballot::new(1, 1);
        let b2 = Ballot::new(2, 2);
        s.apply(PersistEntry::Promised(b2));
        s.apply(PersistEntry::Promised(b1));
        s.apply(PersistEntry::Accepted {
            slot: 4,
            ballot: b1,
            value: Value::Noop,
        });
        s.apply(PersistEntry::Accepted {
            slot: 4,
            ballot: b2,
            value: Value::Commands(vec![bytes::Bytes::from_static(b"x")]),
        });
        s.apply(PersistEntry::Committed { upto: 5 });
        s.apply(PersistEntry::Committed { upto: 3 });
        assert_eq!(s.promised, b2);
        assert_eq!(s.commit, 5);
        assert_eq!(s.accepted[&4].0, b2);
        let mut again = RecoveredState::default();
        for e in s.to_entries() {
            again.apply(e);
        }
        assert_eq!(again, s);
    }
}
