//! Read-index bookkeeping of a leader: a linearizable read waits for a round of heartbeats,
//! started after it arrived, that a majority acknowledges; many reads share one round.

use std::collections::{BTreeSet, VecDeque};

use crate::ballot::{NodeId, Slot};

/// The reads a leader has not yet released, by the round that confirms them.
#[derive(Clone, Debug, Default, Hash)]
pub(crate) struct ReadIndex {
    /// The newest round started.
    pub round: u64,
    /// Whether `round` is still collecting acknowledgements.
    round_open: bool,
    /// Who acknowledged `round` (the leader counts itself).
    round_acks: BTreeSet<NodeId>,
    /// Reads covered by the open round: (read id, slot the state machine must reach).
    in_round: Vec<(u64, Slot)>,
    /// Reads that arrived while a round was open; they need the next round.
    waiting: Vec<(u64, Slot)>,
    /// Confirmed reads waiting for the state machine to reach their slot.
    confirmed: VecDeque<(u64, Slot)>,
}

impl ReadIndex {
    /// Adds read `id`, to be served once the state machine reaches `index`. A leader that
    /// is a majority alone (`single`) confirms it at once. Returns whether a round must be
    /// started for it (none is open).
    pub fn add(&mut self, id: u64, index: Slot, single: bool) -> bool {
        if single {
            self.confirmed.push_back((id, index));
            return false;
        }
        self.waiting.push((id, index));
        !self.round_open
    }

    /// Starts the next round, covering every waiting read; `me` acknowledges it at once.
    /// Returns the round's number, for the heartbeats that ask peers to confirm it.
    pub fn start_round(&mut self, me: NodeId) -> u64 {
        // Invariant: at most one round is open, so the reads it covers are never replaced
        // (and never dropped) by the next round's.
        debug_assert!(!self.round_open, "read round {} still open", self.round);
        debug_assert!(
            self.in_round.is_empty(),
            "reads of a closed round not confirmed"
        );
        self.round += 1;
        self.round_open = true;
        self.round_acks.clear();
        self.round_acks.insert(me);
        self.in_round = std::mem::take(&mut self.waiting);
        self.round
    }

    /// `from` acknowledged read round `round`. Returns whether another round must start
    /// (this one was confirmed and reads arrived meanwhile).
    pub fn on_ack(
        &mut self,
        from: NodeId,
        round: u64,
        is_quorum: impl Fn(&BTreeSet<NodeId>) -> bool,
    ) -> bool {
        if !self.round_open || round != self.round {
            return false;
        }
        self.round_acks.insert(from);
        if !is_quorum(&self.round_acks) {
            return false;
        }
        self.round_open = false;
        let confirmed = std::mem::take(&mut self.in_round);
        self.confirmed.extend(confirmed);
        !self.waiting.is_empty()
    }

    /// The next confirmed read whose index the state machine has reached (every slot below
    /// `delivered` was handed out), in the order the reads were confirmed.
    pub fn pop_ready(&mut self, delivered: Slot) -> Option<u64> {
        match self.confirmed.front() {
            Some(&(id, index)) if index <= delivered => {
                self.confirmed.pop_front();
                Some(id)
            }
            _ => None,
        }
    }

    /// Every read id not yet released, for aborting them on a leadership change.
    pub fn drain_all(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.in_round.drain(..).map(|(id, _)| id).collect();
        ids.extend(self.waiting.drain(..).map(|(id, _)| id));
        ids.extend(self.confirmed.drain(..).map(|(id, _)| id));
        self.round_open = false;
        self.round_acks.clear();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_waits_for_a_round_that_started_after_it() {
        let mut r = ReadIndex::default();
        assert!(r.add(7, 0, false), "no round open: start one");
        assert_eq!(r.start_round(1), 1);
        assert!(!r.add(8, 0, false), "joins the next round");
        let two = |acks: &BTreeSet<NodeId>| acks.len() >= 2;
        assert!(!r.on_ack(2, 0, two), "an older round proves nothing");
        assert!(
            r.on_ack(3, 1, two),
            "round 1 confirmed; read 8 needs round 2"
        );
        assert_eq!(r.pop_ready(0), Some(7));
        assert_eq!(r.pop_ready(0), None);
        assert_eq!(r.start_round(1), 2);
        assert_eq!(r.drain_all(), vec![8]);
    }

    #[test]
    fn a_confirmed_read_waits_for_the_state_machine() {
        let mut r = ReadIndex::default();
        assert!(!r.add(1, 5, true));
        assert_eq!(r.pop_ready(4), None);
        assert_eq!(r.pop_ready(5), Some(1));
    }
}
