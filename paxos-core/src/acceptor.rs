//! The acceptor role: the promised ballot and the accepted value of each slot.
//!
//! This is the only state Paxos needs to survive a crash. Every change is recorded as a
//! [`PersistEntry`] in the `persist` list passed in; the caller (normally a
//! [`Replica`](crate::Replica)) must make those durable before it releases the reply that
//! depends on them.

use std::collections::BTreeMap;

use crate::ballot::{Ballot, Slot};
use crate::persist::{PersistEntry, RecoveredState};
use crate::value::{Entry, Value};

/// An acceptor: promises ballots and accepts values.
#[derive(Clone, Debug, Default, Hash)]
pub struct Acceptor {
    /// The highest ballot promised. Invariant: no record in `log` is above it.
    promised: Ballot,
    /// The accepted ballot and value of each slot from `log_start` on.
    log: BTreeMap<Slot, (Ballot, Value)>,
    /// Slots below this were compacted away (they are chosen and in the host's snapshot).
    log_start: Slot,
    /// Test-only planted bug: accept values under ballots below the promise.
    #[cfg(test)]
    pub(crate) ignore_promises: bool,
    /// Test-only planted bug: record a chosen value without raising the promise, and let
    /// an Accept rewrite a slot known chosen.
    #[cfg(test)]
    pub(crate) chosen_keeps_promise: bool,
}

impl Acceptor {
    /// A fresh acceptor that has promised nothing.
    pub fn new() -> Self {
        Acceptor::default()
    }

    /// An acceptor restored from durable state; entries below the snapshot are dropped.
    pub fn recover(state: &RecoveredState) -> Self {
        let mut acceptor = Acceptor::new();
        // Invariant: no record above the promise. The host writes a promise before the
        // records that need it, so replay already gives this; taking the maximum also
        // repairs a log written by an engine that did not.
        let highest = state.accepted.values().map(|(b, _)| *b).max();
        acceptor.promised = state.promised.max(highest.unwrap_or(Ballot::ZERO));
        acceptor.log = state
            .accepted
            .range(state.snapshot_slot..)
            .map(|(&s, e)| (s, e.clone()))
            .collect();
        acceptor.log_start = state.snapshot_slot;
        acceptor
    }

    /// Test-only planted bug: lose the promise (as a broken recovery would).
    #[cfg(test)]
    pub(crate) fn forget_promise(&mut self) {
        self.promised = Ballot::ZERO;
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The first slot still held (earlier ones were compacted).
    pub fn log_start(&self) -> Slot {
        self.log_start
    }

    /// The accepted ballot and value in `slot`, if any.
    pub fn get(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.log.get(&slot)
    }

    /// The highest slot holding an accepted value.
    pub fn last_slot(&self) -> Option<Slot> {
        self.log.keys().next_back().copied()
    }

    /// Phase 1: promise `ballot`. On success returns the accepted entries in slots at or
    /// above `from_slot`; on refusal returns the higher ballot already promised.
    pub fn prepare(
        &mut self,
        ballot: Ballot,
        from_slot: Slot,
        persist: &mut Vec<PersistEntry>,
    ) -> Result<Vec<Entry>, Ballot> {
        if ballot < self.promised {
            return Err(self.promised);
        }
        if ballot > self.promised {
            self.promised = ballot;
            persist.push(PersistEntry::Promised(ballot));
        }
        // Invariant: a promise only grows, and an acceptor that promised `ballot` holds it.
        debug_assert_eq!(
            self.promised, ballot,
            "promised {} for {ballot}",
            self.promised
        );
        Ok(self
            .log
            .range(from_slot..)
            .map(|(&slot, (b, v))| Entry {
                slot,
                ballot: *b,
                value: v.clone(),
            })
            .collect())
    }

    /// Phase 2: accept `entries` under `ballot`. On success returns the slots accepted; on
    /// refusal returns the higher ballot already promised. Accepting implies promising.
    ///
    /// `known_chosen(slot)` tells whether the caller already knows `slot` to be chosen. Such
    /// a slot is never rewritten: an entry carrying the value held there is acknowledged
    /// without storing anything, and any other value is neither stored nor acknowledged
    /// (no correct leader proposes it: every ballot at or above this acceptor's promise,
    /// which is at least the ballot of the chosen record, carries the chosen value).
    pub fn accept(
        &mut self,
        ballot: Ballot,
        entries: &[(Slot, Value)],
        known_chosen: impl Fn(Slot) -> bool,
        persist: &mut Vec<PersistEntry>,
    ) -> Result<Vec<Slot>, Ballot> {
        #[cfg(test)]
        let refuse = ballot < self.promised && !self.ignore_promises;
        #[cfg(not(test))]
        let refuse = ballot < self.promised;
        if refuse {
            return Err(self.promised);
        }
        if ballot > self.promised {
            self.promised = ballot;
            persist.push(PersistEntry::Promised(ballot));
        }
        #[cfg(test)]
        let guard_chosen = !self.chosen_keeps_promise;
        #[cfg(not(test))]
        let guard_chosen = true;
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, value) in entries {
            if *slot < self.log_start {
                // Compacted, hence chosen; a correct leader can only be proposing the chosen
                // value here, so the vote is harmless and nothing needs storing.
                slots.push(*slot);
                continue;
            }
            let held = self.log.get(slot);
            if guard_chosen && known_chosen(*slot) {
                if matches!(held, Some((_, v)) if v == value) {
                    slots.push(*slot);
                }
                continue;
            }
            slots.push(*slot);
            if matches!(held, Some((b, v)) if *b == ballot && v == value) {
                continue; // a retransmission of what is already recorded
            }
            // Invariant: no record above the promise (accepting implies promising).
            debug_assert!(
                ballot <= self.promised,
                "record under {ballot} above the promise {}",
                self.promised
            );
            self.log.insert(*slot, (ballot, value.clone()));
            persist.push(PersistEntry::Accepted {
                slot: *slot,
                ballot,
                value: value.clone(),
            });
        }
        Ok(slots)
    }

    /// Records that `value` was chosen in `slot` under `ballot`, so that it survives a
    /// restart and can be served to lagging peers.
    ///
    /// This may store a vote the acceptor never cast, which is safe: once a value is chosen
    /// under ballot `b`, every proposal under a higher ballot carries the same value, so any
    /// proposer that later picks this entry in phase 1 picks the chosen value anyway.
    ///
    /// Invariant: no record above the promise. A record under `ballot` above the promise
    /// first raises the promise to `ballot` (persisted before the record): otherwise a
    /// stale Accept under a ballot between the two could later overwrite the chosen value.
    pub fn record_chosen(
        &mut self,
        slot: Slot,
        ballot: Ballot,
        value: &Value,
        persist: &mut Vec<PersistEntry>,
    ) {
        if slot < self.log_start {
            return;
        }
        #[cfg(test)]
        let raise = !self.chosen_keeps_promise;
        #[cfg(not(test))]
        let raise = true;
        if raise && ballot > self.promised {
            self.promised = ballot;
            persist.push(PersistEntry::Promised(ballot));
        }
        match self.log.get(&slot) {
            // A vote under the chosen ballot or a later one holds the chosen value already.
            Some((b, _)) if *b >= ballot => {}
            _ => {
                debug_assert!(
                    !raise || ballot <= self.promised,
                    "chosen record under {ballot} above the promise {}",
                    self.promised
                );
                self.log.insert(slot, (ballot, value.clone()));
                persist.push(PersistEntry::Accepted {
                    slot,
                    ballot,
                    value: value.clone(),
                });
            }
        }
    }

    /// Forgets every slot below `upto` (the host's snapshot covers them).
    pub fn compact(&mut self, upto: Slot) {
        if upto <= self.log_start {
            return;
        }
        self.log = self.log.split_off(&upto);
        self.log_start = upto;
        debug_assert!(
            self.log.keys().next().is_none_or(|&s| s >= upto),
            "a record below the log start"
        );
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
    fn promise_is_persisted_and_reports_accepted_values() {
        let mut a = Acceptor::new();
        let mut p = Vec::new();
        let b1 = Ballot::new(1, 1);
        assert_eq!(
            a.accept(b1, &[(0, cmd("x")), (2, cmd("y"))], |_| false, &mut p),
            Ok(vec![0, 2])
        );
        assert_eq!(
            p,
            vec![
                PersistEntry::Promised(b1),
                PersistEntry::Accepted {
                    slot: 0,
                    ballot: b1,
                    value: cmd("x")
                },
                PersistEntry::Accepted {
                    slot: 2,
                    ballot: b1,
                    value: cmd("y")
                },
            ]
        );
        p.clear();
        let b2 = Ballot::new(2, 2);
        let got = a.prepare(b2, 1, &mut p).unwrap_or_default();
        assert_eq!(
            got,
            vec![Entry {
                slot: 2,
                ballot: b1,
                value: cmd("y")
            }]
        );
        assert_eq!(p, vec![PersistEntry::Promised(b2)]);
    }

    #[test]
    fn refuses_lower_ballots_after_a_promise() {
        let mut a = Acceptor::new();
        let mut p = Vec::new();
        assert!(a.prepare(Ballot::new(5, 2), 0, &mut p).is_ok());
        p.clear();
        assert_eq!(
            a.prepare(Ballot::new(4, 3), 0, &mut p),
            Err(Ballot::new(5, 2))
        );
        assert_eq!(
            a.accept(Ballot::new(5, 1), &[(0, cmd("x"))], |_| false, &mut p),
            Err(Ballot::new(5, 2))
        );
        assert!(p.is_empty(), "a refusal changes nothing durable");
        assert_eq!(a.get(0), None);
    }

    #[test]
    fn retransmitted_accept_is_not_persisted_twice() {
        let mut a = Acceptor::new();
        let mut p = Vec::new();
        let b = Ballot::new(1, 1);
        assert!(a.accept(b, &[(0, cmd("x"))], |_| false, &mut p).is_ok());
        p.clear();
        assert_eq!(
            a.accept(b, &[(0, cmd("x"))], |_| false, &mut p),
            Ok(vec![0])
        );
        assert!(p.is_empty());
    }

    #[test]
    fn chosen_value_replaces_only_older_votes() {
        let mut a = Acceptor::new();
        let mut p = Vec::new();
        let (b1, b2, b3) = (Ballot::new(1, 1), Ballot::new(2, 1), Ballot::new(3, 1));
        assert!(a.accept(b1, &[(0, cmd("old"))], |_| false, &mut p).is_ok());
        assert!(a.accept(b3, &[(1, cmd("new"))], |_| false, &mut p).is_ok());
        p.clear();
        a.record_chosen(0, b2, &cmd("chosen"), &mut p);
        a.record_chosen(1, b2, &cmd("new"), &mut p);
        assert_eq!(a.get(0), Some(&(b2, cmd("chosen"))));
        assert_eq!(a.get(1), Some(&(b3, cmd("new"))));
        assert_eq!(
            p,
            vec![PersistEntry::Accepted {
                slot: 0,
                ballot: b2,
                value: cmd("chosen")
            }]
        );
    }

    #[test]
    fn compaction_drops_prefix() {
        let mut a = Acceptor::new();
        let mut p = Vec::new();
        let b = Ballot::new(1, 1);
        assert!(a
            .accept(
                b,
                &[(0, cmd("a")), (1, cmd("b")), (2, cmd("c"))],
                |_| false,
                &mut p
            )
            .is_ok());
        a.compact(2);
        assert_eq!(a.log_start(), 2);
        assert_eq!(a.get(1), None);
        assert!(a.get(2).is_some());
        p.clear();
        // A vote for a compacted slot is acknowledged but not stored.
        assert_eq!(
            a.accept(b, &[(0, cmd("a"))], |_| false, &mut p),
            Ok(vec![0])
        );
        assert!(p.is_empty());
    }
}
