//! The learner role: which slots are chosen, in-order delivery, and which are missing (the
//! [`Replica`](crate::Replica) fetches those from a peer: catch-up).

use std::collections::BTreeSet;

use crate::acceptor::Acceptor;
use crate::ballot::{Ballot, Slot};
use crate::persist::{PersistEntry, RecoveredState};
use crate::value::Value;

/// A learner: tracks the commit index (every slot below it is chosen) and what has been
/// delivered to the host. Chosen values live in the acceptor's log, which
/// [`Acceptor::record_chosen`] keeps equal to the chosen value for every slot below the
/// commit index.
#[derive(Clone, Debug, Default, Hash)]
pub struct Learner {
    /// Every slot below this is chosen. Invariant: it never decreases.
    commit: Slot,
    /// Every slot below this was handed to the host. Invariant: at most `commit`.
    delivered: Slot,
    /// Slots above `commit` known to be chosen (a leader learns them out of order).
    chosen_ahead: BTreeSet<Slot>,
}

impl Learner {
    /// A learner that knows nothing chosen.
    pub fn new() -> Self {
        Learner::default()
    }

    /// A learner restored from durable state: everything up to the recorded commit index
    /// (clipped at the first slot whose value is missing) is chosen; delivery restarts at
    /// the snapshot.
    pub fn recover(state: &RecoveredState) -> Self {
        let mut commit = state.snapshot_slot;
        while commit < state.commit && state.accepted.contains_key(&commit) {
            commit += 1;
        }
        Learner {
            commit,
            delivered: state.snapshot_slot,
            ..Learner::default()
        }
    }

    /// Every slot below this is chosen.
    pub fn commit(&self) -> Slot {
        self.commit
    }

    /// Whether `slot` is known to be chosen (below the commit index, or learned ahead).
    pub fn is_chosen(&self, slot: Slot) -> bool {
        slot < self.commit || self.chosen_ahead.contains(&slot)
    }

    /// Every slot below this has been handed to the host.
    pub fn delivered(&self) -> Slot {
        self.delivered
    }

    /// Learns that `value` was chosen in `slot` under `ballot`.
    pub fn learn(
        &mut self,
        acceptor: &mut Acceptor,
        slot: Slot,
        ballot: Ballot,
        value: &Value,
        persist: &mut Vec<PersistEntry>,
    ) {
        if slot < self.commit {
            return;
        }
        let commit_before = self.commit;
        acceptor.record_chosen(slot, ballot, value, persist);
        self.chosen_ahead.insert(slot);
        self.advance(commit_before);
    }

    /// Moves the commit index over the slots learned chosen just above it.
    fn advance(&mut self, commit_before: Slot) {
        while self.chosen_ahead.remove(&self.commit) {
            self.commit += 1;
        }
        // Invariant: the commit index never decreases, never falls behind what was
        // delivered, and every slot learned ahead of it lies above it.
        debug_assert!(
            self.commit >= commit_before,
            "commit index went back from {commit_before} to {}",
            self.commit
        );
        debug_assert!(
            self.delivered <= self.commit,
            "delivered past the commit index"
        );
        debug_assert!(
            self.chosen_ahead.first().is_none_or(|&s| s > self.commit),
            "a slot learned ahead lies at or below the commit index"
        );
    }

    /// The leader of `ballot` says every slot below `upto` is chosen. The slots this acceptor
    /// accepted under that same ballot hold the chosen value (a leader proposes one value per
    /// slot). Returns true if slots are still missing and must be fetched.
    pub fn on_commit_hint(&mut self, acceptor: &Acceptor, ballot: Ballot, upto: Slot) -> bool {
        let commit_before = self.commit;
        while self.commit < upto {
            let known = self.chosen_ahead.remove(&self.commit)
                || matches!(acceptor.get(self.commit), Some((b, _)) if *b == ballot);
            if !known {
                break;
            }
            self.commit += 1;
        }
        self.advance(commit_before);
        self.commit < upto
    }

    /// The next chosen value to hand to the host, in slot order.
    pub fn next_delivery(&mut self, acceptor: &Acceptor) -> Option<(Slot, Value)> {
        if self.delivered >= self.commit {
            return None;
        }
        let slot = self.delivered;
        let (_, value) = acceptor.get(slot)?;
        self.delivered += 1;
        debug_assert!(
            self.delivered <= self.commit,
            "delivered past the commit index"
        );
        Some((slot, value.clone()))
    }

    /// The host installed a snapshot covering every slot below `slot`.
    pub fn install_snapshot(&mut self, slot: Slot) {
        if slot <= self.delivered {
            return;
        }
        let commit_before = self.commit;
        self.delivered = slot;
        self.commit = self.commit.max(slot);
        self.chosen_ahead = self.chosen_ahead.split_off(&slot);
        self.advance(commit_before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cmd(s: &'static str) -> Value {
        Value::Commands(vec![Bytes::from_static(s.as_bytes())])
    }

    #[test]
    fn delivers_in_slot_order_even_when_learned_out_of_order() {
        let mut a = Acceptor::new();
        let mut l = Learner::new();
        let mut p = Vec::new();
        let b = Ballot::new(1, 1);
        l.learn(&mut a, 1, b, &cmd("second"), &mut p);
        assert_eq!(l.commit(), 0);
        assert_eq!(l.next_delivery(&a), None);
        l.learn(&mut a, 0, b, &cmd("first"), &mut p);
        assert_eq!(l.commit(), 2);
        assert_eq!(l.next_delivery(&a), Some((0, cmd("first"))));
        assert_eq!(l.next_delivery(&a), Some((1, cmd("second"))));
        assert_eq!(l.next_delivery(&a), None);
    }

    #[test]
    fn commit_hint_uses_only_votes_of_the_same_ballot() {
        let mut a = Acceptor::new();
        let mut l = Learner::new();
        let mut p = Vec::new();
        let (old, new) = (Ballot::new(1, 1), Ballot::new(2, 2));
        assert!(a
            .accept(old, &[(0, cmd("a")), (1, cmd("b"))], |_| false, &mut p)
            .is_ok());
        assert!(a.accept(new, &[(0, cmd("a"))], |_| false, &mut p).is_ok());
        // Slot 1 was accepted under an older ballot: its value may not be the chosen one.
        assert!(l.on_commit_hint(&a, new, 2));
        assert_eq!(l.commit(), 1);
    }

    #[test]
    fn recovery_clips_commit_at_a_missing_value() {
        let mut s = RecoveredState::default();
        s.accepted.insert(0, (Ballot::new(1, 1), Value::Noop));
        s.accepted.insert(2, (Ballot::new(1, 1), Value::Noop));
        s.commit = 3;
        assert_eq!(Learner::recover(&s).commit(), 1);
    }
}
