//! A leader's phase 2: the slots it proposed and the votes they collected, its lease on the
//! followers (who answered lately), and what its heartbeat must retransmit.

use std::collections::{BTreeMap, BTreeSet};

use super::read_index::ReadIndex;
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::Config;
use crate::membership::{Membership, MembershipLog};
use crate::value::Value;

/// A slot the leader proposed and is waiting to see chosen.
#[derive(Clone, Debug, Hash)]
pub(crate) struct InFlight {
    /// The value proposed.
    pub value: Value,
    /// Who acknowledged it (the leader itself once its own write is durable).
    pub acks: BTreeSet<NodeId>,
    /// When its Accept was last sent to the peers that have not acknowledged it.
    pub sent_at_ms: u64,
}

/// A leader's state.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Leadership {
    /// The ballot led under; equal to this replica's durable promise.
    pub ballot: Ballot,
    /// The next slot to give a batch.
    pub next_slot: Slot,
    /// The first slot after those re-proposed in recovery; a read must wait for it.
    pub recovery_end: Slot,
    /// Recovered values of slots from `next_slot` up to `recovery_end` that could not be
    /// proposed yet (their membership was not known when phase 1 ended), with the ballot
    /// they were accepted under. A slot in that range missing here gets a no-op.
    pub deferred: BTreeMap<Slot, Value>,
    /// The acceptors that promised this leader's ballot. A slot may be proposed only if
    /// they hold a majority of the voters that govern it.
    pub promised_by: BTreeSet<NodeId>,
    /// Each peer's commit index, as its last heartbeat acknowledgement reported it.
    pub peer_commit: BTreeMap<NodeId, Slot>,
    /// Slots proposed and not yet known chosen.
    pub inflight: BTreeMap<Slot, InFlight>,
    /// Payload bytes of the slots in `inflight`.
    pub inflight_bytes: usize,
    /// Linearizable reads waiting for confirmation or for the state machine.
    pub reads: ReadIndex,
    /// When each peer last answered this leader.
    pub last_ack_ms: BTreeMap<NodeId, u64>,
    /// The commit index last announced to followers.
    pub commit_sent: Slot,
}

/// Accepts to retransmit, by peer: the slots each has not acknowledged.
pub(crate) type Resend = BTreeMap<NodeId, Vec<(Slot, Value)>>;

impl Leadership {
    /// A leader of `ballot`, promised by `promised_by`, that re-proposes `plan` (the
    /// recovered log suffix, ending just below `next_slot`), keeps the recovered values
    /// of later slots up to `recovery_end` in `deferred`, and counts every member in
    /// `members` as having just answered.
    pub fn new(
        ballot: Ballot,
        (plan, next_slot): (&[(Slot, Value)], Slot),
        (deferred, recovery_end): (BTreeMap<Slot, Value>, Slot),
        promised_by: BTreeSet<NodeId>,
        members: &BTreeSet<NodeId>,
        commit: Slot,
        now_ms: u64,
    ) -> Self {
        debug_assert!(
            recovery_end >= next_slot
                && deferred.keys().all(|&s| s >= next_slot && s < recovery_end),
            "deferred values outside {next_slot}..{recovery_end}"
        );
        let mut leadership = Leadership {
            ballot,
            next_slot,
            recovery_end,
            deferred,
            promised_by,
            peer_commit: BTreeMap::new(),
            inflight: BTreeMap::new(),
            inflight_bytes: 0,
            reads: ReadIndex::default(),
            last_ack_ms: members.iter().map(|&m| (m, now_ms)).collect(),
            commit_sent: commit,
        };
        for (slot, value) in plan {
            leadership.track(*slot, value.clone(), now_ms);
        }
        leadership
    }

    /// Whether another slot may be proposed under the in-flight limits of `config` (one
    /// slot is always allowed, whatever its size).
    pub fn has_room(&self, config: &Config) -> bool {
        self.inflight.len() < config.inflight_slots_max
            && (self.inflight.is_empty() || self.inflight_bytes < config.inflight_bytes_max)
    }

    /// Gives `value` the next free slot and tracks it as in flight.
    pub fn propose(&mut self, value: Value, now_ms: u64) -> Slot {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.track(slot, value, now_ms);
        slot
    }

    /// Records `value` as proposed in `slot` at `now_ms`.
    fn track(&mut self, slot: Slot, value: Value, now_ms: u64) {
        // Invariant: a leader proposes one value per slot (which is why a commit
        // announcement lets followers take their vote under this ballot as chosen).
        debug_assert!(
            slot < self.next_slot,
            "slot {slot} beyond the next free slot"
        );
        self.inflight_bytes += value.payload_bytes();
        let earlier = self.inflight.insert(
            slot,
            InFlight {
                value,
                acks: BTreeSet::new(),
                sent_at_ms: now_ms,
            },
        );
        debug_assert!(earlier.is_none(), "slot {slot} proposed twice");
    }

    /// `f` left the in-flight set (chosen).
    fn untrack(&mut self, f: &InFlight) {
        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.value.payload_bytes());
    }

    /// `from` accepted `slots` under this leader's ballot. Returns the slots this makes
    /// chosen (a majority of the voters that govern each, per `log`, acknowledged it), with
    /// their values, in the order given; they are no longer in flight.
    pub fn on_accepted(
        &mut self,
        from: NodeId,
        slots: Vec<Slot>,
        log: &MembershipLog,
        now_ms: u64,
    ) -> Vec<(Slot, Value)> {
        self.last_ack_ms.insert(from, now_ms);
        let mut chosen = Vec::new();
        for slot in slots {
            let Some(f) = self.inflight.get_mut(&slot) else {
                continue;
            };
            f.acks.insert(from);
            if !log.at(slot).is_quorum(&f.acks) {
                continue;
            }
            if let Some(f) = self.inflight.remove(&slot) {
                self.untrack(&f);
                chosen.push((slot, f.value));
            }
        }
        chosen
    }

    /// Slots below `commit` were learned chosen (by votes or by catch-up): they are no
    /// longer in flight. Returns whether `commit` is news to the followers, and records it
    /// as announced.
    pub fn retire_below(&mut self, commit: Slot) -> bool {
        let still = self.inflight.split_off(&commit);
        let done = std::mem::replace(&mut self.inflight, still);
        for f in done.values() {
            self.untrack(f);
        }
        if self.commit_sent >= commit {
            return false;
        }
        self.commit_sent = commit;
        true
    }

    /// The members of `membership` (this replica included) that answered within the last
    /// `election_timeout_max_ms`.
    pub fn alive(&self, config: &Config, membership: &Membership, now_ms: u64) -> BTreeSet<NodeId> {
        let horizon_ms = config.election_timeout_max_ms;
        membership
            .members
            .keys()
            .copied()
            .filter(|&m| {
                m == config.id
                    || self
                        .last_ack_ms
                        .get(&m)
                        .is_some_and(|&t| t + horizon_ms > now_ms)
            })
            .collect()
    }

    /// Whether a majority of the voters of `membership` (this replica included) answered
    /// within the last `election_timeout_max_ms`: if not, the leader cannot commit and
    /// steps down, so clients are told to go elsewhere instead of waiting on it.
    pub fn majority_alive(&self, config: &Config, membership: &Membership, now_ms: u64) -> bool {
        membership.is_quorum(&self.alive(config, membership, now_ms))
    }

    /// The Accepts some peer among `peers` has not acknowledged for a heartbeat interval,
    /// by peer; their resend clock restarts now.
    pub fn due_for_resend(
        &mut self,
        config: &Config,
        peers: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Resend {
        let mut resend = Resend::new();
        for (&slot, f) in self.inflight.iter_mut() {
            if f.sent_at_ms + config.heartbeat_interval_ms > now_ms {
                continue;
            }
            f.sent_at_ms = now_ms;
            for &m in peers {
                if m != config.id && !f.acks.contains(&m) {
                    resend.entry(m).or_default().push((slot, f.value.clone()));
                }
            }
        }
        resend
    }

    /// Checks the leader's bookkeeping (debug builds): the in-flight byte count matches
    /// the slots in flight, all of which lie below the next free slot.
    pub fn debug_check(&self) {
        debug_assert_eq!(
            self.inflight_bytes,
            self.inflight
                .values()
                .map(|f| f.value.payload_bytes())
                .sum::<usize>(),
            "in-flight bytes out of step with the slots in flight"
        );
        debug_assert!(
            self.inflight
                .keys()
                .next_back()
                .is_none_or(|&s| s < self.next_slot),
            "a slot in flight at or above the next free slot"
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

    fn three() -> Membership {
        Membership::initial(&[1, 2, 3], &BTreeMap::new())
    }

    fn leader(plan: &[(Slot, Value)], next_slot: Slot) -> Leadership {
        let ids: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        Leadership::new(
            Ballot::new(1, 1),
            (plan, next_slot),
            (BTreeMap::new(), next_slot),
            ids.clone(),
            &ids,
            0,
            0,
        )
    }

    #[test]
    fn a_slot_is_chosen_once_a_majority_acknowledged_it() {
        let log = MembershipLog::new(4, three());
        let mut l = leader(&[(0, Value::Noop)], 1);
        assert_eq!(l.propose(cmd("x"), 5), 1);
        assert_eq!(l.on_accepted(2, vec![0, 1], &log, 6), vec![]);
        assert_eq!(l.on_accepted(9, vec![1], &log, 6), vec![], "not a voter");
        assert_eq!(
            l.on_accepted(1, vec![1, 7], &log, 6),
            vec![(1, cmd("x"))],
            "an unknown slot is skipped"
        );
        assert_eq!((l.inflight.len(), l.inflight_bytes), (1, 0));
        assert!(l.retire_below(1), "the new commit index is news");
        assert!(!l.retire_below(1));
        assert!(l.inflight.is_empty());
        l.debug_check();
    }

    #[test]
    fn a_leader_resends_what_a_peer_has_not_acknowledged_for_an_interval() {
        let config = Config::new(1, vec![1, 2, 3]);
        let mut l = leader(&[(0, cmd("a"))], 1);
        let log = MembershipLog::new(4, three());
        let peers: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let _ = l.on_accepted(2, vec![0], &log, 10);
        assert!(
            l.due_for_resend(&config, &peers, 10).is_empty(),
            "not yet due"
        );
        let due = l.due_for_resend(&config, &peers, config.heartbeat_interval_ms);
        assert_eq!(
            due.into_iter().collect::<Vec<_>>(),
            vec![(3, vec![(0, cmd("a"))])]
        );
        assert!(l.majority_alive(&config, &three(), config.election_timeout_max_ms));
        assert!(!l.majority_alive(&config, &three(), 10 + config.election_timeout_max_ms));
    }
}
