//! A candidate's phase 1: the promises and refusals it collected, and what a new leader
//! must re-propose once a majority promised.

use std::collections::{BTreeMap, BTreeSet};

use crate::ballot::{Ballot, NodeId, Slot};
use crate::membership::Membership;
use crate::value::{Entry, Value};

/// A candidate's phase 1 in progress.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Candidacy {
    /// The ballot campaigned under: above every round this replica has seen.
    pub ballot: Ballot,
    /// The first slot the candidate does not know to be chosen (its commit index then).
    pub from_slot: Slot,
    /// Promises received: each acceptor's commit index and accepted entries.
    pub promises: BTreeMap<NodeId, (Slot, Vec<Entry>)>,
    /// Acceptors that refused because they still follow a live leader.
    pub refusals: BTreeSet<NodeId>,
    /// The memberships that govern the slots the candidate may propose in at once (from
    /// `from_slot` up to what its delivered log determines): it needs a majority of the
    /// voters of each.
    pub required: Vec<Membership>,
}

/// What a promise did to a candidacy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PromiseOutcome {
    /// Not about the current candidacy, or counted without completing a majority.
    Pending,
    /// A majority promised: the candidate may lead.
    Elected,
    /// The promise reports this ballot, above the candidate's: give up the candidacy.
    Outranked(Ballot),
    /// The promising acceptor knows more chosen slots than the candidate: give up, and
    /// catch up from it (a leader must know the whole chosen prefix).
    Behind,
}

/// What a refusal (Nack) means for the proposer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalOutcome {
    /// About a ballot no longer in use, or not yet decisive.
    Ignored,
    /// The candidacy cannot reach a majority: the election is lost.
    Lost,
    /// A leader learned of a higher promise: it re-runs phase 1 above it.
    Rerun,
}

impl Candidacy {
    /// A candidacy under `ballot` for the slots from `from_slot` on, which needs a majority
    /// of every membership in `required` (never empty); nothing collected yet.
    pub fn new(ballot: Ballot, from_slot: Slot, required: Vec<Membership>) -> Self {
        debug_assert!(!required.is_empty(), "a candidacy that needs no quorum");
        Candidacy {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            refusals: BTreeSet::new(),
            required,
        }
    }

    /// Whether `ids` hold a majority of the voters of every required membership.
    pub fn is_quorum(&self, ids: &BTreeSet<NodeId>) -> bool {
        self.required.iter().all(|m| m.is_quorum(ids))
    }

    /// The acceptors that promised.
    pub fn promisers(&self) -> BTreeSet<NodeId> {
        self.promises.keys().copied().collect()
    }

    /// Counts a promise from `from`; `my_commit` is the candidate's commit index.
    pub fn on_promise(
        &mut self,
        from: NodeId,
        (commit, accepted): (Slot, Vec<Entry>),
        my_commit: Slot,
    ) -> PromiseOutcome {
        // An acceptor never holds a record above its promise; a Promise that reports one
        // comes from a broken or forged peer. It is news of a higher ballot.
        if let Some(higher) = accepted.iter().map(|e| e.ballot).find(|b| *b > self.ballot) {
            return PromiseOutcome::Outranked(higher);
        }
        if commit > my_commit {
            return PromiseOutcome::Behind;
        }
        self.promises.insert(from, (commit, accepted));
        if self.is_quorum(&self.promisers()) {
            PromiseOutcome::Elected
        } else {
            PromiseOutcome::Pending
        }
    }

    /// Counts a refusal from `from` by an acceptor that follows a live leader; the election
    /// is lost once too few voters are left to make a majority of some required membership.
    pub fn on_refusal(&mut self, from: NodeId) -> RefusalOutcome {
        self.refusals.insert(from);
        if self
            .required
            .iter()
            .any(|m| !m.quorum_possible_without(&self.refusals))
        {
            RefusalOutcome::Lost
        } else {
            RefusalOutcome::Ignored
        }
    }

    /// Every voter of a required membership, in id order.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.required.iter().flat_map(|m| m.voters()).collect()
    }

    /// The voters that neither promised nor refused, to whom the Prepare is resent.
    pub fn unanswered(&self) -> Vec<NodeId> {
        self.voters()
            .into_iter()
            .filter(|m| !self.promises.contains_key(m) && !self.refusals.contains(m))
            .collect()
    }
}

/// What a new leader must do in the log after phase 1: the value to propose in every slot
/// from `from_slot` up to the highest slot any promise reported, and the first free slot.
///
/// For each slot it takes the value accepted under the highest ballot (Paxos's rule); a slot
/// nobody reported is filled with a no-op so the log has no holes.
pub fn recovery_plan<'a>(
    from_slot: Slot,
    promises: impl IntoIterator<Item = &'a [Entry]>,
) -> (Vec<(Slot, Value)>, Slot) {
    let mut best: BTreeMap<Slot, (Ballot, &Value)> = BTreeMap::new();
    for entries in promises {
        for e in entries {
            if e.slot < from_slot {
                continue;
            }
            match best.get(&e.slot) {
                Some((b, _)) if *b >= e.ballot => {}
                _ => {
                    best.insert(e.slot, (e.ballot, &e.value));
                }
            }
        }
    }
    let next_slot = best.keys().next_back().map_or(from_slot, |&s| s + 1);
    let plan: Vec<(Slot, Value)> = (from_slot..next_slot)
        .map(|slot| {
            let value = best.get(&slot).map_or(Value::Noop, |(_, v)| (*v).clone());
            (slot, value)
        })
        .collect();
    // Invariant: the plan covers every slot from `from_slot` up to the first free one,
    // without a hole, so a new leader leaves no slot below `next_slot` unproposed.
    debug_assert_eq!(
        plan.len() as u64,
        next_slot - from_slot,
        "a hole in the plan"
    );
    (plan, next_slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn voters(ids: &[NodeId]) -> Vec<Membership> {
        vec![Membership::initial(ids, &BTreeMap::new())]
    }

    fn cmd(s: &'static str) -> Value {
        Value::Commands(vec![Bytes::from_static(s.as_bytes())])
    }

    #[test]
    fn recovery_takes_highest_ballot_and_fills_gaps_with_noops() {
        let (b1, b2) = (Ballot::new(1, 1), Ballot::new(2, 2));
        let a = vec![
            Entry {
                slot: 3,
                ballot: b1,
                value: cmd("old"),
            },
            Entry {
                slot: 6,
                ballot: b1,
                value: cmd("six"),
            },
        ];
        let b = vec![Entry {
            slot: 3,
            ballot: b2,
            value: cmd("newer"),
        }];
        let (plan, next) = recovery_plan(3, [a.as_slice(), b.as_slice()]);
        assert_eq!(
            plan,
            vec![
                (3, cmd("newer")),
                (4, Value::Noop),
                (5, Value::Noop),
                (6, cmd("six")),
            ]
        );
        assert_eq!(next, 7);
    }

    #[test]
    fn recovery_with_nothing_reported_starts_at_from_slot() {
        let (plan, next) = recovery_plan(9, std::iter::empty::<&[Entry]>());
        assert!(plan.is_empty());
        assert_eq!(next, 9);
    }

    #[test]
    fn a_majority_of_promises_elects_and_a_higher_ballot_or_commit_abandons() {
        let ballot = Ballot::new(2, 1);
        let mut c = Candidacy::new(ballot, 0, voters(&[1, 2, 3]));
        assert_eq!(c.on_promise(1, (0, vec![]), 0), PromiseOutcome::Pending);
        assert_eq!(c.on_promise(2, (0, vec![]), 0), PromiseOutcome::Elected);
        let higher = Entry {
            slot: 0,
            ballot: Ballot::new(3, 2),
            value: Value::Noop,
        };
        let mut c = Candidacy::new(ballot, 0, voters(&[1, 2, 3]));
        assert_eq!(
            c.on_promise(2, (0, vec![higher]), 0),
            PromiseOutcome::Outranked(Ballot::new(3, 2))
        );
        assert_eq!(c.on_promise(3, (5, vec![]), 4), PromiseOutcome::Behind);
        assert!(c.promises.is_empty(), "neither is counted");
    }

    #[test]
    fn refusals_lose_the_election_only_without_a_possible_majority() {
        let mut c = Candidacy::new(Ballot::new(1, 1), 0, voters(&[1, 2, 3]));
        assert_eq!(c.on_refusal(2), RefusalOutcome::Ignored);
        assert_eq!(c.on_refusal(2), RefusalOutcome::Ignored, "counted once");
        assert_eq!(c.unanswered(), vec![1, 3]);
        assert_eq!(c.on_refusal(3), RefusalOutcome::Lost);
    }

    #[test]
    fn a_candidate_needs_a_majority_of_every_membership_it_may_propose_under() {
        // Slots governed by {1,2,3}, then by {1,2,3,4}: {1,2} is not enough for the second.
        let mut required = voters(&[1, 2, 3]);
        required.extend(voters(&[1, 2, 3, 4]));
        let mut c = Candidacy::new(Ballot::new(1, 1), 0, required);
        assert_eq!(c.on_promise(1, (0, vec![]), 0), PromiseOutcome::Pending);
        assert_eq!(c.on_promise(2, (0, vec![]), 0), PromiseOutcome::Pending);
        assert_eq!(c.on_promise(4, (0, vec![]), 0), PromiseOutcome::Elected);
        assert_eq!(c.unanswered(), vec![3]);
        // Two refusals among four voters leave no majority of the second membership.
        let mut required = voters(&[1, 2, 3]);
        required.extend(voters(&[1, 2, 3, 4]));
        let mut c = Candidacy::new(Ballot::new(1, 1), 0, required);
        assert_eq!(c.on_refusal(4), RefusalOutcome::Ignored);
        assert_eq!(c.on_refusal(3), RefusalOutcome::Lost);
    }
}
