//! The proposer role: elections (phase 1), proposals (phase 2), and read-index rounds.
//!
//! The pure parts live here: what a candidate has collected, what a new leader must
//! re-propose, which slots are in flight, and which reads are confirmed. The
//! [`Replica`](crate::Replica) drives them with messages and time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::value::{Entry, Value};

/// The role a replica's proposer currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Follows a leader (or waits for one); proposes nothing.
    Follower,
    /// Running phase 1 to become leader.
    Candidate,
    /// Completed phase 1 with a majority; proposes values.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// A candidate's phase 1 in progress.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Phase1 {
    pub ballot: Ballot,
    pub from_slot: Slot,
    /// Promises received: each acceptor's commit index and accepted entries.
    pub promises: BTreeMap<NodeId, (Slot, Vec<Entry>)>,
    /// Acceptors that refused because they still follow a live leader.
    pub refusals: BTreeSet<NodeId>,
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
    let plan = (from_slot..next_slot)
        .map(|slot| {
            let value = best.get(&slot).map_or(Value::Noop, |(_, v)| (*v).clone());
            (slot, value)
        })
        .collect();
    (plan, next_slot)
}

/// A slot the leader proposed and is waiting to see chosen.
#[derive(Clone, Debug, Hash)]
pub(crate) struct InFlight {
    pub value: Value,
    pub acks: BTreeSet<NodeId>,
    pub sent_at_ms: u64,
}

/// Read-index bookkeeping: reads wait for a round of heartbeats acknowledged by a majority
/// that started after they arrived; many reads share one round.
#[derive(Clone, Debug, Default, Hash)]
pub(crate) struct ReadIndex {
    /// The newest round started.
    pub round: u64,
    /// Whether `round` is still collecting acknowledgements.
    pub round_open: bool,
    pub round_acks: BTreeSet<NodeId>,
    /// Reads covered by the open round: (read id, slot the state machine must reach).
    pub in_round: Vec<(u64, Slot)>,
    /// Reads that arrived while a round was open; they need the next round.
    pub waiting: Vec<(u64, Slot)>,
    /// Confirmed reads waiting for the state machine to reach their slot.
    pub confirmed: VecDeque<(u64, Slot)>,
}

impl ReadIndex {
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

/// A leader's state.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Leadership {
    pub ballot: Ballot,
    pub next_slot: Slot,
    /// The first slot after those re-proposed in recovery; a read must wait for it.
    pub recovery_end: Slot,
    pub inflight: BTreeMap<Slot, InFlight>,
    /// Payload bytes of the slots in `inflight`.
    pub inflight_bytes: usize,
    pub reads: ReadIndex,
    /// When each peer last answered this leader.
    pub last_ack_ms: BTreeMap<NodeId, u64>,
    /// The commit index last announced to followers.
    pub commit_sent: Slot,
}

/// The proposer's state machine.
#[derive(Clone, Debug, Hash)]
pub(crate) enum ProposerState {
    Follower,
    Candidate(Phase1),
    Leader(Leadership),
}

/// Commands waiting for a slot.
#[derive(Clone, Debug, Default, Hash)]
pub(crate) struct Queue {
    pub commands: VecDeque<Bytes>,
}

impl Queue {
    /// Takes the next batch: at least one command, then more while under both limits.
    pub fn next_batch(&mut self, bytes_max: usize, commands_max: usize) -> Option<Value> {
        let first = self.commands.pop_front()?;
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < commands_max {
            match self.commands.front() {
                Some(c) if bytes + c.len() <= bytes_max => {
                    bytes += c.len();
                    if let Some(c) = self.commands.pop_front() {
                        batch.push(c);
                    }
                }
                _ => break,
            }
        }
        Some(Value::Commands(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn batches_respect_both_limits_but_take_at_least_one() {
        let mut q = Queue::default();
        for s in ["aaaa", "bb", "cc", "d"] {
            q.commands.push_back(Bytes::from_static(s.as_bytes()));
        }
        let big = q.next_batch(3, 10);
        assert_eq!(
            big.map(|v| v.commands().len()),
            Some(1),
            "oversized command alone"
        );
        let two = q.next_batch(4, 10);
        assert_eq!(two.map(|v| v.commands().len()), Some(2));
        assert_eq!(q.next_batch(100, 10).map(|v| v.payload_bytes()), Some(1));
        assert!(q.next_batch(100, 10).is_none());
    }
}
