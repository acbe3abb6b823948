//! Membership as replicated state: who votes, who only learns, and how a change agreed in
//! the log takes effect.
//!
//! # The rule (Lamport's α-window reconfiguration)
//! A change is a value of its own ([`Value::Reconfig`](crate::Value::Reconfig)) chosen in
//! some slot `i` like any command. Every replica applies it when it delivers slot `i`, and
//! the new membership governs slot `i + delay` and every later slot, where `delay` (α) is
//! a cluster constant kept in the [`MembershipLog`] itself. So the membership that governs
//! slot `s` is a function of the values chosen in slots `≤ s - delay`, the same on every
//! replica.
//!
//! Each slot is then an independent instance of single-decree Paxos whose acceptors are
//! the voters of the membership that governs it:
//! - a leader proposes in slot `s` only once it has delivered every slot `≤ s - delay`
//!   (so it knows who governs `s`), and only with promises from a majority of those voters;
//! - a slot is chosen once a majority of *its* voters accepted (learners' votes, and votes
//!   of members of other memberships, are not counted);
//! - a candidate needs a majority of every membership that governs the slots it may
//!   propose in right away, and runs phase 1 again before it reaches slots governed by a
//!   membership its promises do not cover.
//!
//! A change names the membership it expects ([`Reconfig::expected`]): applied to another,
//! it is refused when delivered, on every replica alike, so concurrent changes serialize.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::config::MEMBERS_MAX;

/// Identifies one membership: 1 for a cluster's first, one more for each change applied.
pub type ConfigId = u64;

/// The default reconfiguration delay (α), in slots: a change chosen in slot `i` governs
/// slots from `i + RECONFIG_DELAY_DEFAULT` on. It also bounds how far beyond what it has
/// delivered a leader may propose.
pub const RECONFIG_DELAY_DEFAULT: Slot = 64;

/// The most learners a membership may hold besides its voters.
pub const LEARNERS_MAX: usize = 4;

/// One member of a membership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Member {
    /// Whether it votes (an acceptor counted in quorums) or only learns the log.
    pub voter: bool,
    /// What the host records about the member (its addresses, for instance); opaque to
    /// the core, replicated with the membership.
    pub meta: Bytes,
}

/// Who belongs to the cluster at some point of the log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Membership {
    /// This membership's id.
    pub id: ConfigId,
    /// The members by id, voters and learners.
    pub members: BTreeMap<NodeId, Member>,
}

/// A change of membership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Change {
    /// Add `id` as a learner: it receives the log, and does not vote.
    AddLearner {
        /// The new member's id.
        id: NodeId,
        /// What the host records about it.
        meta: Bytes,
    },
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove member `id` (a voter or a learner).
    Remove {
        /// The member.
        id: NodeId,
    },
}

impl Change {
    /// The member the change is about.
    pub fn member(&self) -> NodeId {
        match self {
            Change::AddLearner { id, .. } | Change::Promote { id } | Change::Remove { id } => *id,
        }
    }
}

/// A membership change as proposed and agreed: the change, and the membership it applies
/// to (compare-and-swap on [`Membership::id`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reconfig {
    /// The id of the latest membership the proposer saw; the change is refused on any other.
    pub expected: ConfigId,
    /// The change.
    pub change: Change,
}

/// Why a membership change was refused. The same refusals happen when a change is
/// proposed (on the leader, against the latest membership) and when it is applied (on
/// every replica alike, so all refuse the same changes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ChangeError {
    /// The change expected another membership: another change came first.
    Stale {
        /// The membership the change expected.
        expected: ConfigId,
        /// The latest membership.
        current: ConfigId,
    },
    /// The id to add is already a member.
    AlreadyMember(NodeId),
    /// The id is not a member.
    NotAMember(NodeId),
    /// The id to promote already votes.
    AlreadyVoter(NodeId),
    /// Removing the last voter would leave nobody to agree on anything.
    LastVoter(NodeId),
    /// The membership would exceed [`MEMBERS_MAX`] voters or [`LEARNERS_MAX`] learners.
    TooMany,
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Stale { expected, current } => write!(
                f,
                "the membership changed: the change expected configuration {expected}, the latest is {current}"
            ),
            ChangeError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            ChangeError::NotAMember(id) => write!(f, "node {id} is not a member"),
            ChangeError::AlreadyVoter(id) => write!(f, "node {id} is already a voter"),
            ChangeError::LastVoter(id) => {
                write!(f, "node {id} is the last voter and cannot be removed")
            }
            ChangeError::TooMany => write!(
                f,
                "a membership holds at most {MEMBERS_MAX} voters and {LEARNERS_MAX} learners"
            ),
        }
    }
}

impl std::error::Error for ChangeError {}

impl Membership {
    /// The first membership of a new cluster: `voters`, each with its host record
    /// (`metas`, empty where missing), id 1.
    pub fn initial(voters: &[NodeId], metas: &BTreeMap<NodeId, Bytes>) -> Self {
        Membership {
            id: 1,
            members: voters
                .iter()
                .map(|&id| {
                    let meta = metas.get(&id).cloned().unwrap_or_default();
                    (id, Member { voter: true, meta })
                })
                .collect(),
        }
    }

    /// The voters, in id order.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.voter)
            .map(|(&id, _)| id)
    }

    /// The learners, in id order.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| !m.voter)
            .map(|(&id, _)| id)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.voter)
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    /// Whether the voters among `ids` are a majority of this membership's voters.
    pub fn is_quorum(&self, ids: &BTreeSet<NodeId>) -> bool {
        ids.iter().filter(|&&id| self.is_voter(id)).count() >= self.quorum()
    }

    /// Whether a majority of voters is still possible once `refused` are left out.
    pub fn quorum_possible_without(&self, refused: &BTreeSet<NodeId>) -> bool {
        self.voters().filter(|id| !refused.contains(id)).count() >= self.quorum()
    }

    /// The membership after `reconfig`, with the next id; or why it is refused.
    pub fn apply(&self, reconfig: &Reconfig) -> Result<Membership, ChangeError> {
        if reconfig.expected != self.id {
            return Err(ChangeError::Stale {
                expected: reconfig.expected,
                current: self.id,
            });
        }
        let mut next = self.clone();
        next.id = self.id + 1;
        match &reconfig.change {
            Change::AddLearner { id, meta } => {
                if self.contains(*id) {
                    return Err(ChangeError::AlreadyMember(*id));
                }
                if self.learners().count() >= LEARNERS_MAX {
                    return Err(ChangeError::TooMany);
                }
                next.members.insert(
                    *id,
                    Member {
                        voter: false,
                        meta: meta.clone(),
                    },
                );
            }
            Change::Promote { id } => {
                match self.members.get(id) {
                    None => return Err(ChangeError::NotAMember(*id)),
                    Some(m) if m.voter => return Err(ChangeError::AlreadyVoter(*id)),
                    Some(_) => {}
                }
                if self.voters().count() >= MEMBERS_MAX {
                    return Err(ChangeError::TooMany);
                }
                if let Some(m) = next.members.get_mut(id) {
                    m.voter = true;
                }
            }
            Change::Remove { id } => {
                match self.members.get(id) {
                    None => return Err(ChangeError::NotAMember(*id)),
                    Some(m) if m.voter && self.voters().count() == 1 => {
                        return Err(ChangeError::LastVoter(*id))
                    }
                    Some(_) => {}
                }
                next.members.remove(id);
            }
        }
        Ok(next)
    }
}

/// The memberships that govern the log from some slot on: each with the first slot it
/// governs. It grows as chosen changes are delivered and forgets memberships no slot
/// still to be delivered needs. It is part of the replicated state: a host stores it with
/// its snapshots and hands it back when it recovers or installs one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MembershipLog {
    /// The reconfiguration delay α (a cluster constant, at least 1).
    delay: Slot,
    /// (first slot governed, membership), in increasing slot and id order. Never empty.
    epochs: Vec<(Slot, Membership)>,
}

impl MembershipLog {
    /// The log of a new cluster: `first` governs every slot from 0 until a change.
    pub fn new(delay: Slot, first: Membership) -> Self {
        MembershipLog {
            delay: delay.max(1),
            epochs: vec![(0, first)],
        }
    }

    /// A log that knows no member: a replica joining an existing cluster, until it
    /// installs a snapshot that carries the real one.
    pub fn unknown() -> Self {
        MembershipLog::new(
            RECONFIG_DELAY_DEFAULT,
            Membership {
                id: 0,
                members: BTreeMap::new(),
            },
        )
    }

    /// The reconfiguration delay α.
    pub fn delay(&self) -> Slot {
        self.delay
    }

    /// The membership that governs `slot` (for a slot below what this log still covers:
    /// the oldest it holds).
    pub fn at(&self, slot: Slot) -> &Membership {
        let i = self.epochs.partition_point(|(from, _)| *from <= slot);
        &self.epochs[i.saturating_sub(1)].1
    }

    /// The latest membership, which may not govern any delivered slot yet.
    pub fn latest(&self) -> &Membership {
        &self.epochs[self.epochs.len() - 1].1
    }

    /// The first slot the latest membership governs.
    pub fn latest_from(&self) -> Slot {
        self.epochs[self.epochs.len() - 1].0
    }

    /// Every (first slot, membership) held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = (Slot, &Membership)> {
        self.epochs.iter().map(|(s, m)| (*s, m))
    }

    /// The memberships that govern some slot in `from..to`, oldest first.
    pub fn governing(&self, from: Slot, to: Slot) -> Vec<&Membership> {
        let mut out: Vec<&Membership> = Vec::new();
        for (i, (start, m)) in self.epochs.iter().enumerate() {
            let end = self.epochs.get(i + 1).map_or(Slot::MAX, |(s, _)| *s);
            if *start < to && end > from {
                out.push(m);
            }
        }
        if out.is_empty() {
            out.push(self.at(from));
        }
        out
    }

    /// Every member of every membership held (voters and learners), in id order.
    pub fn all_members(&self) -> BTreeSet<NodeId> {
        self.epochs
            .iter()
            .flat_map(|(_, m)| m.members.keys().copied())
            .collect()
    }

    /// Applies `reconfig`, chosen in `slot`, to the latest membership: the result governs
    /// slots from `slot + delay` on. Returns the first slot it governs, or why it was
    /// refused (then nothing changes).
    pub fn apply_chosen(&mut self, slot: Slot, reconfig: &Reconfig) -> Result<Slot, ChangeError> {
        let next = self.latest().apply(reconfig)?;
        let from = slot.saturating_add(self.delay);
        // Invariant: memberships take effect in the order their changes were chosen, so
        // `at` is a function of the chosen log.
        debug_assert!(
            from > self.latest_from() || self.latest().id == 0,
            "a change chosen in slot {slot} takes effect at {from}, not after {}",
            self.latest_from()
        );
        self.epochs.push((from, next));
        Ok(from)
    }

    /// Forgets the memberships that govern no slot at or after `slot`.
    pub fn forget_before(&mut self, slot: Slot) {
        let keep_from = self
            .epochs
            .partition_point(|(from, _)| *from <= slot)
            .saturating_sub(1);
        if keep_from > 0 {
            self.epochs.drain(..keep_from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::initial(&[1, 2, 3], &BTreeMap::new())
    }

    fn change(expected: ConfigId, change: Change) -> Reconfig {
        Reconfig { expected, change }
    }

    #[test]
    fn a_change_applies_to_the_membership_it_names_only() {
        let m = three();
        let add = change(
            1,
            Change::AddLearner {
                id: 4,
                meta: Bytes::from_static(b"x"),
            },
        );
        let m2 = m.apply(&add).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((m2.id, m2.quorum()), (2, 2));
        assert_eq!(m2.learners().collect::<Vec<_>>(), vec![4]);
        assert_eq!(
            m2.apply(&add),
            Err(ChangeError::Stale {
                expected: 1,
                current: 2
            })
        );
        assert_eq!(
            m2.apply(&change(
                2,
                Change::AddLearner {
                    id: 4,
                    meta: Bytes::new()
                }
            )),
            Err(ChangeError::AlreadyMember(4))
        );
        assert_eq!(
            m2.apply(&change(2, Change::Promote { id: 3 })),
            Err(ChangeError::AlreadyVoter(3))
        );
        assert_eq!(
            m2.apply(&change(2, Change::Remove { id: 9 })),
            Err(ChangeError::NotAMember(9))
        );
        let m3 = m2
            .apply(&change(2, Change::Promote { id: 4 }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m3.quorum(), 3);
        let one = Membership::initial(&[1], &BTreeMap::new());
        assert_eq!(
            one.apply(&change(1, Change::Remove { id: 1 })),
            Err(ChangeError::LastVoter(1))
        );
    }

    #[test]
    fn quorums_count_voters_only() {
        let m = three()
            .apply(&change(
                1,
                Change::AddLearner {
                    id: 4,
                    meta: Bytes::new(),
                },
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!m.is_quorum(&[1, 4].into_iter().collect()));
        assert!(m.is_quorum(&[1, 2].into_iter().collect()));
        assert!(m.quorum_possible_without(&[3].into_iter().collect()));
        assert!(!m.quorum_possible_without(&[2, 3].into_iter().collect()));
    }

    #[test]
    fn a_change_governs_from_its_slot_plus_the_delay() {
        let mut log = MembershipLog::new(4, three());
        let from = log
            .apply_chosen(
                10,
                &change(
                    1,
                    Change::AddLearner {
                        id: 4,
                        meta: Bytes::new(),
                    },
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from, 14);
        assert_eq!(log.at(13).id, 1);
        assert_eq!(log.at(14).id, 2);
        assert_eq!(log.governing(12, 16).len(), 2);
        assert_eq!(log.governing(14, 16).len(), 1);
        assert_eq!(log.governing(0, 14).len(), 1);
        assert!(log
            .apply_chosen(11, &change(1, Change::Remove { id: 3 }))
            .is_err());
        assert_eq!(log.epochs().count(), 2, "a refused change adds nothing");
        log.forget_before(13);
        assert_eq!(log.epochs().count(), 2);
        log.forget_before(14);
        assert_eq!(log.epochs().count(), 1);
        assert_eq!(log.at(0).id, 2, "below what it holds: the oldest");
    }
}
