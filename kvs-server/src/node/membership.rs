//! The membership as the event loop carries it out: the peer links and the peer port
//! follow it, clients list and change it (on the leader), and a change the core reports
//! chosen is mirrored into the state machine (so that snapshots carry it) and answered.
//!
//! The rule itself (a change is a value of its own in the log, and governs the slots from
//! its own plus a fixed delay on) is the consensus core's: see `paxos_core::membership`.
//! What the store records about each member, its addresses, is [`wire::MemberAddrs`],
//! kept in the membership as the member's opaque meta.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use paxos_core::membership::LEARNERS_MAX;
use paxos_core::{
    Change, ChangeError, Membership, NodeId, Reconfig, ReconfigError, Replica, Role, Slot,
    MEMBERS_MAX,
};
use wire::{ClusterInfo, ErrorReply, MemberAddrs, MemberChange, MemberInfo, MemberList, Reply};

use super::{Node, NodeConfig};
use crate::answers::Responder;
use crate::error::ServerError;
use crate::identity::Identity;

/// The peers to keep an outbound link to, with their addresses: every other member of the
/// memberships `replica` knows (a joining replica: every other member given in `--peers`).
/// The address is the member's `--peers` entry when there is one (so that a test's proxies
/// or a local route still apply), else the one its membership records; a member with
/// neither is left out, with a warning.
pub(super) fn wanted_peers(cfg: &NodeConfig, replica: &Replica) -> BTreeMap<NodeId, String> {
    if replica.joining() {
        return cfg
            .peers
            .iter()
            .filter(|(&id, _)| id != cfg.id)
            .map(|(&id, addr)| (id, addr.clone()))
            .collect();
    }
    let mut wanted = BTreeMap::new();
    for id in replica.peers() {
        let recorded = addrs_of(&replica.member_meta(id)).map(|a| a.peer_addr);
        match cfg.peers.get(&id).cloned().or(recorded) {
            Some(addr) => {
                wanted.insert(id, addr);
            }
            None => tracing::warn!(
                member = id,
                "no address is known for this member: no link to it (give it in --peers)"
            ),
        }
    }
    wanted
}

/// Who may connect on the peer port: the other members of the memberships `replica`
/// knows (a joining replica: the members given in `--peers`), what a replica joining
/// through this one is told (nothing while this one joins itself), and the latest
/// configuration id it knows (`None` while it joins), above which a replica it does not
/// know is admitted as a newcomer ([`wire::is_newcomer`]).
pub(super) fn admission(
    cfg: &NodeConfig,
    identity: &Identity,
    replica: &Replica,
) -> (BTreeSet<NodeId>, Option<ClusterInfo>, Option<u64>) {
    if replica.joining() {
        let given = cfg.peers.keys().copied().filter(|&id| id != cfg.id);
        return (given.collect(), None, None);
    }
    let latest = replica.membership_log().latest();
    let cluster = ClusterInfo {
        cluster_uid: identity.cluster_uid,
        members: identity.members.clone(),
        voters: latest.voters().collect(),
    };
    (replica.peers(), Some(cluster), Some(latest.id))
}

/// Where this replica accepts peer connections, as it tells its peers: its own `--peers`
/// entry, else the address its membership records for it.
pub(super) fn own_peer_addr(cfg: &NodeConfig, replica: &Replica) -> Option<String> {
    cfg.peers
        .get(&cfg.id)
        .cloned()
        .or_else(|| addrs_of(&replica.member_meta(cfg.id)).map(|a| a.peer_addr))
}

/// The member addresses recorded in `meta`; `None` when it records none or cannot be read.
fn addrs_of(meta: &[u8]) -> Option<MemberAddrs> {
    match MemberAddrs::decode(meta) {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::warn!(error = %e, "a member's recorded addresses cannot be read");
            None
        }
    }
}

/// What the event loop last set up for the membership: which memberships (so that the
/// links are reconciled only when they change), and each member's addresses (for the
/// leader hints given to clients).
#[derive(Default)]
pub(crate) struct MemberView {
    /// (latest configuration id, first slot it governs, memberships held, joining).
    seen: Option<(u64, Slot, usize, bool)>,
    /// The recorded addresses of the members of the latest membership.
    addrs: BTreeMap<NodeId, MemberAddrs>,
    /// Newcomers linked to: members of a later configuration than this replica knows
    /// (it was away while they were added), with the address to reach them and the
    /// configuration they stated. Each is dropped once this replica knows that
    /// configuration: it is then a member like any other, or not a member at all.
    newcomers: BTreeMap<NodeId, (String, u64)>,
}

impl Node {
    /// Makes the peer links and the peer port follow the membership, if it changed since
    /// the last call: links to new members, none to members gone, and only members may
    /// connect. Cheap when nothing changed; called after every turn.
    pub(super) fn sync_peers(&mut self) {
        let arrived = self.registry.take_newcomers();
        let log = self.replica.membership_log();
        let latest_id = log.latest().id;
        let now = (
            latest_id,
            log.latest_from(),
            log.epochs().count(),
            self.replica.joining(),
        );
        if self.members.seen == Some(now) && arrived.is_empty() {
            return;
        }
        self.members.seen = Some(now);
        for newcomer in arrived {
            if newcomer.configuration > latest_id {
                tracing::info!(
                    peer = newcomer.id,
                    addr = %newcomer.peer_addr,
                    configuration = latest_id,
                    theirs = newcomer.configuration,
                    "a member this replica does not know connected: it knows a later \
                     configuration (this replica was away while it was added); linking to \
                     it to catch up"
                );
                let addr = self
                    .cfg
                    .peers
                    .get(&newcomer.id)
                    .cloned()
                    .unwrap_or(newcomer.peer_addr);
                self.members
                    .newcomers
                    .insert(newcomer.id, (addr, newcomer.configuration));
            }
        }
        self.members
            .newcomers
            .retain(|_, (_, stated)| *stated > latest_id);
        self.links.set_configuration(latest_id);
        self.members.addrs = log
            .latest()
            .members
            .iter()
            .filter_map(|(&id, m)| addrs_of(&m.meta).map(|a| (id, a)))
            .collect();
        let mut wanted = wanted_peers(&self.cfg, &self.replica);
        if !self.replica.joining() {
            for (id, (addr, _)) in &self.members.newcomers {
                wanted.entry(*id).or_insert_with(|| addr.clone());
            }
        }
        for (id, _) in self.links.addrs() {
            if !wanted.contains_key(&id) {
                tracing::info!(peer = id, "no longer a member: closing the link to it");
                self.links.disconnect(id, self.snapshots.outgoing_mut());
            }
        }
        let before = self.links.addrs();
        for (id, addr) in &wanted {
            if before.get(id) != Some(addr) {
                tracing::info!(peer = id, %addr, "linking to a member");
                self.links.connect(*id, addr, self.snapshots.outgoing_mut());
            }
        }
        let (allowed, cluster, configuration) =
            admission(&self.cfg, &self.store.snapshot(), &self.replica);
        for gone in self.registry.set(allowed, cluster, configuration) {
            tracing::info!(peer = gone, "no longer a member: closed its connections");
        }
        self.notice_removal_chosen();
    }

    /// The client address of member `id`: the one its membership records, else its
    /// `--client-addrs` entry.
    pub(super) fn client_addr_of(&self, id: NodeId) -> Option<String> {
        self.members
            .addrs
            .get(&id)
            .and_then(|a| a.client_addr.clone())
            .or_else(|| self.cfg.client_addrs.get(&id).cloned())
    }

    /// `kvs-client member list`: the leader answers with applied slots and lags; a
    /// follower that knows the leader sends the client there; one that knows none answers
    /// with what it knows.
    pub(super) fn list_members(&self, responder: Responder) {
        let leading = self.replica.role() == Role::Leader;
        let hint = self.replica.leader_hint().filter(|&l| l != self.cfg.id);
        if !leading && hint.is_some() {
            responder.respond(Err(self.not_leader(hint)));
            return;
        }
        responder.respond(Ok(Reply::Members(Box::new(self.member_list(leading)))));
    }

    fn member_list(&self, leading: bool) -> MemberList {
        let log = self.replica.membership_log();
        let latest = log.latest();
        let commit = self.replica.commit_index();
        let commits = self.replica.peer_commits().filter(|_| leading);
        let members = latest
            .members
            .iter()
            .map(|(&id, member)| {
                let addrs = addrs_of(&member.meta);
                let applied = if id == self.cfg.id && leading {
                    Some(self.sm.applied())
                } else {
                    commits.and_then(|c| c.get(&id).copied())
                };
                MemberInfo {
                    id,
                    peer_addr: addrs.as_ref().map(|a| a.peer_addr.clone()),
                    client_addr: addrs.and_then(|a| a.client_addr),
                    voter: member.voter,
                    applied,
                    lag: applied.map(|a| commit.saturating_sub(a)),
                }
            })
            .collect();
        MemberList {
            config_id: latest.id,
            in_effect: log.latest_from() <= self.replica.delivered_index(),
            served_by: self.cfg.id,
            leader: self.replica.leader_hint(),
            members,
        }
    }

    /// `kvs-client member add|promote|remove`: proposed on the leader (checked against the
    /// latest membership first), answered once chosen; refused at once otherwise.
    pub(super) fn change_members(
        &mut self,
        expected: u64,
        change: MemberChange,
        force: bool,
        responder: Responder,
    ) {
        let change = match self.core_change(change) {
            Ok(change) => change,
            Err(e) => {
                responder.respond(Err(e));
                return;
            }
        };
        let reconfig = Reconfig { expected, change };
        match self
            .replica
            .propose_reconfig(self.now_ms(), reconfig.clone(), force)
        {
            Ok(()) => {
                tracing::info!(
                    id = self.cfg.id,
                    change = %describe(&reconfig.change),
                    expected,
                    force,
                    "membership change proposed"
                );
                self.pending
                    .insert_change(reconfig, responder, Instant::now());
            }
            Err(e) => {
                tracing::info!(
                    id = self.cfg.id,
                    change = %describe(&reconfig.change),
                    reason = %e,
                    "membership change refused"
                );
                responder.respond(Err(self.reconfig_error(e)));
            }
        }
    }

    /// The core's form of a client's change. An id this replica knows a data dir of (it
    /// was a member, and may have voted) is not added again: ids are never reused.
    fn core_change(&self, change: MemberChange) -> Result<Change, ErrorReply> {
        Ok(match change {
            MemberChange::Add {
                id,
                peer_addr,
                client_addr,
            } => {
                let is_member = self.replica.membership_log().latest().contains(id);
                if !is_member && (id == self.cfg.id || self.store.knows(id)) {
                    return Err(ErrorReply::Invalid {
                        reason: format!(
                            "node id {id} was used by a member before (its data dir is known \
                             here); ids are never reused: add the replica under a new id"
                        ),
                    });
                }
                let addrs = MemberAddrs {
                    peer_addr,
                    client_addr: Some(client_addr),
                };
                let meta = addrs.encode().map_err(|e| ErrorReply::Invalid {
                    reason: e.to_string(),
                })?;
                Change::AddLearner { id, meta }
            }
            MemberChange::Promote { id } => Change::Promote { id },
            MemberChange::Remove { id } => Change::Remove { id },
        })
    }

    /// The answer for a change the core refused before proposing it.
    fn reconfig_error(&self, e: ReconfigError) -> ErrorReply {
        match e {
            ReconfigError::NotLeader { leader_hint } => self.not_leader(leader_hint),
            ReconfigError::InProgress => ErrorReply::ChangeInProgress,
            ReconfigError::Refused(e) => change_error(e),
            ReconfigError::LearnerNotReady { id, lag, allowed } => {
                // Refused within the allowed lag: the learner has not answered lately, and
                // its last reported lag is stale.
                let lag = lag.filter(|&lag| lag > allowed);
                ErrorReply::LearnerNotReady { id, lag, allowed }
            }
            ReconfigError::WouldLoseQuorum { live, needed } => ErrorReply::WouldLoseQuorum {
                live: live as u64,
                needed: needed as u64,
            },
        }
    }

    /// The change chosen in `slot` was delivered (right after the slot itself): mirror it
    /// into the state machine, answer the client that asked, and take a snapshot if one
    /// is due (not before: the snapshot of the slot must carry the change).
    pub(super) fn reconfigured(
        &mut self,
        slot: Slot,
        reconfig: Reconfig,
        outcome: Result<Slot, ChangeError>,
        latest: &Membership,
    ) {
        let mirrored = self.sm.apply_reconfig(slot, &reconfig);
        if mirrored.as_ref().is_some_and(|m| *m != outcome) {
            tracing::error!(
                slot,
                core = ?outcome,
                state_machine = ?mirrored,
                "the membership kept with the state machine disagrees with the core's"
            );
        }
        let answer = match &outcome {
            Ok(from) => {
                tracing::info!(
                    id = self.cfg.id,
                    slot,
                    change = %describe(&reconfig.change),
                    configuration = latest.id,
                    from_slot = from,
                    voters = ?latest.voters().collect::<Vec<_>>(),
                    learners = ?latest.learners().collect::<Vec<_>>(),
                    "membership changed"
                );
                Ok(Reply::MemberChanged {
                    config_id: latest.id,
                    effective_from_slot: *from,
                })
            }
            Err(e) => {
                tracing::info!(slot, change = %describe(&reconfig.change), reason = %e, "a chosen membership change was refused");
                Err(change_error(e.clone()))
            }
        };
        self.pending.answer_change(&reconfig, &answer);
        if outcome.is_ok() {
            self.notice_removal_chosen();
        }
        self.snapshot_if_due();
    }

    /// This replica's removal is chosen, whether it delivered the change itself or
    /// installed a snapshot that holds it (it lagged too far behind): it keeps voting until
    /// the removal is in effect, and learns that it is from the peers of the configuration
    /// that removes it ([`Node::refused_as_non_member`]), or from the core.
    fn notice_removal_chosen(&mut self) {
        let latest = self.replica.membership_log().latest();
        if self.leaving.is_some() || self.replica.joining() || latest.contains(self.cfg.id) {
            return;
        }
        tracing::info!(
            id = self.cfg.id,
            configuration = latest.id,
            "this replica's removal is chosen: it keeps voting until the removal takes effect"
        );
        self.leaving = Some(latest.voters().collect());
    }

    /// Peer `peer` refused this replica as not a member. If this replica's removal was
    /// chosen and `peer` votes in the configuration that removes it, the removal is in
    /// effect there (it forgot the configurations this replica was in only once it had
    /// delivered every slot they govern, so every slot this replica could still vote in is
    /// chosen): stop, as on [`paxos_core::Output::Removed`]. This replica may not get to
    /// deliver those slots itself, since its peers no longer talk to it.
    pub(super) fn refused_as_non_member(&mut self, peer: NodeId) {
        let in_effect = self
            .leaving
            .as_ref()
            .is_some_and(|voters| voters.contains(&peer));
        if in_effect && !self.removed {
            tracing::info!(
                id = self.cfg.id,
                peer,
                "a member of the configuration that removes this replica no longer knows it: \
                 the removal is in effect"
            );
            self.on_removed();
        }
    }

    /// Peer `peer` refused this replica as removed: it knows `configuration`, later than
    /// the one this replica stated, without this replica, and it forgot this replica only
    /// once it had delivered every slot this replica could vote in. This replica may have
    /// missed its removal altogether (it lagged, and the snapshot it installed was older);
    /// it stops, as on [`paxos_core::Output::Removed`].
    pub(super) fn refused_as_removed(&mut self, peer: NodeId, configuration: u64) {
        let known = self.replica.membership_log().latest().id;
        if self.removed || self.replica.joining() || configuration <= known {
            return;
        }
        tracing::info!(
            id = self.cfg.id,
            peer,
            configuration,
            known,
            "a peer knows a later configuration without this replica: it was removed"
        );
        self.on_removed();
    }

    /// A change this leader took never got a slot: the client may try the new leader.
    pub(super) fn reconfig_dropped(&mut self, reconfig: &Reconfig, leader_hint: Option<NodeId>) {
        let answer = Err(self.not_leader(leader_hint));
        self.pending.answer_change(reconfig, &answer);
    }

    /// This replica is no longer a member: it stops, gracefully, and exits with success.
    pub(super) fn on_removed(&mut self) {
        let configuration = self.replica.membership_log().latest().id;
        tracing::warn!(
            id = self.cfg.id,
            configuration,
            "this replica was removed from the cluster: it no longer votes or serves; \
             stopping (its data dir is retired: a replica added later needs a new id and an \
             empty data dir)"
        );
        self.removed = true;
    }

    /// Installing a snapshot into a data dir that joined empty: if it makes this replica
    /// a voter, this id voted before with another data dir (a joining replica is a learner
    /// until it has caught up), whose promises are lost.
    pub(super) fn check_joined_as_learner(&mut self, membership: &Membership) -> bool {
        if !self.replica.joining() || !membership.is_voter(self.cfg.id) {
            return true;
        }
        self.fatal = Some(ServerError::Membership {
            reason: format!(
                "this data dir joined empty, but the cluster's snapshot lists node {} as a \
                 voter: it lost the data dir it voted with, and with it its promises, so it \
                 must not vote. Replace this member: remove id {} and add a new id",
                self.cfg.id, self.cfg.id
            ),
        });
        false
    }
}

/// The answer for a change refused by the membership rules.
fn change_error(e: ChangeError) -> ErrorReply {
    match e {
        ChangeError::Stale { expected, current } => ErrorReply::StaleConfig { expected, current },
        ChangeError::AlreadyMember(id) => ErrorReply::MemberExists { id },
        ChangeError::NotAMember(id) => ErrorReply::UnknownMember { id },
        ChangeError::AlreadyVoter(id) => ErrorReply::AlreadyVoter { id },
        ChangeError::LastVoter(id) => ErrorReply::LastVoter { id },
        ChangeError::TooMany => ErrorReply::TooManyMembers {
            voters_max: MEMBERS_MAX as u64,
            learners_max: LEARNERS_MAX as u64,
        },
    }
}

/// A change, for the log.
fn describe(change: &Change) -> String {
    match change {
        Change::AddLearner { id, meta } => match addrs_of(meta) {
            Some(a) => format!(
                "add learner {id} (peer {}, client {})",
                a.peer_addr,
                a.client_addr.as_deref().unwrap_or("unknown")
            ),
            None => format!("add learner {id}"),
        },
        Change::Promote { id } => format!("promote {id}"),
        Change::Remove { id } => format!("remove {id}"),
    }
}
