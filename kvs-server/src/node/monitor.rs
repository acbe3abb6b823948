//! What the replica tells its operators: the status it publishes for the admin listener
//! (at most every [`PUBLISH_INTERVAL`], and at once on a change of role or leader), the
//! metrics the event loop keeps, and the notable events it logs (elections, leader changes,
//! a quorum lost). Everything here is a few comparisons and atomic updates per turn of the
//! loop; the status is built only when published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_core::{Ballot, Message, NodeId, Role};
use tokio::sync::watch;

use super::Node;
use crate::admin::events::Kind;
use crate::admin::status::{MemberView, Phase, RoleView, Status};
use crate::admin::{Notables, PUBLISH_INTERVAL};
use crate::metrics::{set_gauge, Metrics, PeerMetrics};

/// How often a lasting loss of quorum, or an election that keeps failing, is logged again.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A heartbeat not acknowledged within this long no longer counts for a round trip.
const PROBE_STALE: Duration = Duration::from_secs(5);

/// The event loop's side of monitoring.
pub(crate) struct Monitor {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: Arc<Notables>,
    status: watch::Sender<Status>,
    /// When a message from each peer last arrived.
    heard: BTreeMap<NodeId, Instant>,
    /// Heartbeats sent and not acknowledged yet: when.
    probes: BTreeMap<NodeId, Instant>,
    /// The latest heartbeat round trip to each peer, ms.
    rtt_ms: BTreeMap<NodeId, f64>,
    peers: BTreeMap<NodeId, PeerMetrics>,
    /// What was last seen of the role, ballot and leader.
    role: Role,
    ballot: Ballot,
    leader: Option<NodeId>,
    last_publish: Instant,
    /// Elections started since one was last logged, and when that was.
    elections_unlogged: u64,
    election_logged: Option<Instant>,
    /// While no quorum is reachable: when that was last logged.
    no_quorum_logged: Option<Instant>,
    commit_seen: u64,
    applied_seen: u64,
    /// The replica is shutting down.
    stopping: bool,
}

impl Monitor {
    /// Monitoring for replica `id`, publishing on `status`.
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        events: Arc<Notables>,
        status: watch::Sender<Status>,
        now: Instant,
    ) -> Monitor {
        Monitor {
            metrics,
            events,
            status,
            heard: BTreeMap::new(),
            probes: BTreeMap::new(),
            rtt_ms: BTreeMap::new(),
            peers: BTreeMap::new(),
            role: Role::Follower,
            ballot: Ballot::ZERO,
            leader: None,
            last_publish: now,
            elections_unlogged: 0,
            election_logged: None,
            no_quorum_logged: None,
            commit_seen: 0,
            applied_seen: 0,
            stopping: false,
        }
    }

    /// Counts slots committed and applied from `commit` and `applied` on (what the replica
    /// recovered: counted before this start).
    pub(crate) fn baseline(&mut self, commit: u64, applied: u64) {
        self.commit_seen = commit;
        self.applied_seen = applied;
    }

    /// The replica is shutting down: it is no longer ready.
    pub(crate) fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// The replica dropped its state (an injected failure): what it knew of the leader and
    /// its round trips goes without an event (the failure's own event says why).
    pub(crate) fn forget(&mut self) {
        self.role = Role::Follower;
        self.leader = None;
        self.probes.clear();
        self.rtt_ms.clear();
        self.metrics.has_leader.set(0);
        self.metrics.is_leader.set(0);
    }

    fn peer(&mut self, id: NodeId) -> &PeerMetrics {
        let metrics = &self.metrics;
        self.peers.entry(id).or_insert_with(|| metrics.peer(id))
    }

    /// A message from `from` arrived: it is alive; a heartbeat acknowledgement closes a
    /// round trip.
    pub(crate) fn heard_from(&mut self, from: NodeId, message: &Message) {
        let now = Instant::now();
        self.heard.insert(from, now);
        if let Message::HeartbeatAck { .. } = message {
            if let Some(sent) = self.probes.remove(&from) {
                let rtt = now.saturating_duration_since(sent);
                self.peer(from).round_trip.observe(rtt.as_secs_f64());
                self.rtt_ms.insert(from, rtt.as_secs_f64() * 1000.0);
            }
        }
    }

    /// A chunk of a snapshot arrived from `from`: it is alive.
    pub(crate) fn heard_chunk(&mut self, from: NodeId) {
        self.heard.insert(from, Instant::now());
    }

    /// A message goes to `to`: a heartbeat starts a round trip, unless one is open.
    pub(crate) fn sending(&mut self, to: NodeId, message: &Message) {
        if let Message::Heartbeat { .. } = message {
            let now = Instant::now();
            let open = self
                .probes
                .get(&to)
                .is_some_and(|&t| now.saturating_duration_since(t) < PROBE_STALE);
            if !open {
                self.probes.insert(to, now);
            }
        }
    }
}

impl Node {
    /// After a turn of the loop: counts the slots committed and applied, and notes (logs,
    /// records, publishes) a change of role or leader.
    pub(super) fn observe_turn(&mut self) {
        let commit = self.replica.commit_index();
        let applied = self.sm.applied();
        let m = &mut self.monitor;
        if commit > m.commit_seen {
            m.metrics.proposals_committed.inc_by(commit - m.commit_seen);
        }
        if applied > m.applied_seen {
            m.metrics.proposals_applied.inc_by(applied - m.applied_seen);
        }
        m.commit_seen = commit;
        m.applied_seen = applied;
        if self.faults.is_down() {
            return; // the core is stale until it is rebuilt
        }
        let seen = (m.role, m.ballot, m.leader);
        let role = self.replica.role();
        let ballot = self.replica.ballot();
        let leader = self.known_leader();
        if (role, ballot, leader) != seen {
            self.note_change(role, ballot, leader);
            self.publish_status();
        }
    }

    /// The leader this replica knows (none while its acceptor is down).
    fn known_leader(&self) -> Option<NodeId> {
        if self.faults.is_down() {
            return None;
        }
        self.replica.leader_hint()
    }

    /// Logs and records a change of role, ballot or leader, with its reason.
    fn note_change(&mut self, role: Role, ballot: Ballot, leader: Option<NodeId>) {
        let (was_role, was_leader) = (self.monitor.role, self.monitor.leader);
        let heard = |m: &Monitor, id: NodeId| {
            m.heard
                .get(&id)
                .map(|t| format!("{:.1} s", t.elapsed().as_secs_f64()))
                .unwrap_or_else(|| "ever".into())
        };
        let events = Arc::clone(&self.monitor.events);
        let metrics = Arc::clone(&self.monitor.metrics);
        if leader != was_leader {
            if leader.is_some() {
                metrics.leader_changes.inc();
                events.count_leader_change();
            }
            match (was_leader, leader) {
                (_, Some(l)) if l == self.cfg.id => {}
                (_, Some(l)) => events.info(
                    Kind::Leader,
                    format!("following leader {l} (ballot {ballot})"),
                ),
                (Some(old), None) if old != self.cfg.id => events.warn(
                    Kind::Leader,
                    format!(
                        "lost leader {old}: not heard from for {}",
                        heard(&self.monitor, old)
                    ),
                ),
                _ => {}
            }
        }
        match (was_role, role) {
            (Role::Leader, Role::Leader) => {}
            (_, Role::Leader) => {
                metrics.elections_won.inc();
                self.monitor.elections_unlogged = 0;
                events.info(
                    Kind::Election,
                    format!(
                        "became leader at ballot {ballot} (commit slot {})",
                        self.replica.commit_index()
                    ),
                );
            }
            (Role::Leader, _) => {
                let was = self.monitor.ballot;
                let why = if ballot > was && ballot.node != self.cfg.id {
                    format!(
                        "replica {} stands with a higher ballot {ballot}",
                        ballot.node
                    )
                } else {
                    self.reachability_summary()
                };
                events.warn(
                    Kind::Election,
                    format!("stepped down as leader (ballot {was}): {why}"),
                );
            }
            (_, Role::Candidate) if ballot != self.monitor.ballot => {
                metrics.elections_started.inc();
                self.election_started(was_role, was_leader, ballot);
            }
            _ => {}
        }
        let m = &mut self.monitor;
        if role != Role::Leader {
            // Round trips are measured by the leader: a follower's would only grow stale.
            m.probes.clear();
            m.rtt_ms.clear();
        }
        m.role = role;
        m.ballot = ballot;
        m.leader = leader;
        m.metrics.has_leader.set(i64::from(leader.is_some()));
        m.metrics.is_leader.set(i64::from(role == Role::Leader));
        set_gauge(&m.metrics.ballot_round, ballot.round);
    }

    /// Logs an election started at `ballot`: the first of a series at once with its
    /// reason, then the failed ones at most every [`REPEAT_LOG_INTERVAL`].
    fn election_started(&mut self, was_role: Role, was_leader: Option<NodeId>, ballot: Ballot) {
        let m = &mut self.monitor;
        m.elections_unlogged += 1;
        let reason = match (was_role, was_leader) {
            (Role::Candidate, _) => None,
            (_, Some(l)) => Some(format!(
                "leader {l} not heard from for {}",
                m.heard
                    .get(&l)
                    .map(|t| format!("{:.1} s", t.elapsed().as_secs_f64()))
                    .unwrap_or_else(|| "ever".into())
            )),
            (_, None) => Some("no leader known".into()),
        };
        let due = m
            .election_logged
            .is_none_or(|t| t.elapsed() >= REPEAT_LOG_INTERVAL);
        let attempts = m.elections_unlogged;
        let text = match reason {
            Some(reason) => format!("starting an election at ballot {ballot}: {reason}"),
            None if due => format!(
                "no election won yet: {attempts} attempts, now at ballot {ballot} ({})",
                self.reachability_summary()
            ),
            None => return,
        };
        let m = &mut self.monitor;
        m.elections_unlogged = 0;
        m.election_logged = Some(Instant::now());
        m.events.warn(Kind::Election, text);
    }

    /// "heard from 1 of 3 voters" and who is silent.
    fn reachability_summary(&self) -> String {
        let status = self.status_now(Instant::now());
        let heard = status.voters_heard(Instant::now());
        let voters: Vec<NodeId> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let silent: Vec<String> = voters
            .iter()
            .filter(|v| !heard.contains(v))
            .map(|v| v.to_string())
            .collect();
        format!(
            "heard from {} of {} voters; silent: {}",
            heard.len(),
            voters.len(),
            if silent.is_empty() {
                "none".into()
            } else {
                silent.join(", ")
            }
        )
    }

    /// Publishes the status if it is due ([`PUBLISH_INTERVAL`]); also checks for a lost
    /// quorum and updates the gauges.
    pub(super) fn publish_if_due(&mut self) {
        if self.monitor.last_publish.elapsed() >= PUBLISH_INTERVAL {
            self.publish_status();
        }
    }

    /// Publishes the status now, checks for a lost quorum, and updates the gauges.
    pub(super) fn publish_status(&mut self) {
        let now = Instant::now();
        let status = self.status_now(now);
        self.check_quorum(&status, now);
        let m = &self.monitor.metrics;
        set_gauge(&m.commit_slot, status.commit);
        set_gauge(&m.applied_slot, status.applied);
        set_gauge(&m.keys, status.keys);
        set_gauge(&m.bytes, self.sm.data_bytes());
        set_gauge(&m.proposals_pending, status.pending.0 as u64);
        let links = self.links.reachability();
        // Handles of peers no longer linked go: their series were removed with the link.
        self.monitor
            .peers
            .retain(|id, _| links.iter().any(|r| r.id == *id));
        for r in links {
            let up = i64::from(r.reachable);
            self.monitor.peer(r.id).reachable.set(up);
        }
        self.monitor.last_publish = now;
        self.monitor.status.send_replace(status);
    }

    /// Logs (at most every [`REPEAT_LOG_INTERVAL`]) that no quorum of voters is reachable,
    /// and once that it is again.
    fn check_quorum(&mut self, s: &Status, now: Instant) {
        if s.phase != Phase::Running || s.quorum == 0 {
            return;
        }
        let heard = s.voters_heard(now);
        let voters = s.members.iter().filter(|m| m.voter).count();
        let m = &mut self.monitor;
        if heard.len() >= s.quorum {
            if m.no_quorum_logged.take().is_some() {
                m.events.info(
                    Kind::Quorum,
                    format!(
                        "quorum reachable again: heard from {} of {voters} voters",
                        heard.len()
                    ),
                );
            }
            return;
        }
        // A replica that just started has not heard from anyone yet.
        if now.saturating_duration_since(s.started) < s.election_timeout {
            return;
        }
        if m.no_quorum_logged
            .is_some_and(|t| now.saturating_duration_since(t) < REPEAT_LOG_INTERVAL)
        {
            return;
        }
        let silent: Vec<String> = s
            .members
            .iter()
            .filter(|x| x.voter && !heard.contains(&x.id))
            .map(|x| x.id.to_string())
            .collect();
        m.no_quorum_logged = Some(now);
        m.events.warn(
            Kind::Quorum,
            format!(
                "no quorum: cannot reach {} of {voters} voters (silent for over {:.1} s: {}); \
                 a quorum is {}",
                silent.len(),
                s.election_timeout.as_secs_f64(),
                silent.join(", "),
                s.quorum
            ),
        );
    }

    /// The status as of `now`.
    fn status_now(&self, now: Instant) -> Status {
        let replica = &self.replica;
        let phase = if self.faults.is_down() {
            Phase::AcceptorDown
        } else if replica.repairing() {
            Phase::Repairing
        } else if replica.joining() {
            Phase::Joining
        } else if self.removed || self.monitor.stopping {
            Phase::Stopping
        } else {
            Phase::Running
        };
        let role = match replica.role() {
            _ if self.faults.is_down() => RoleView::Down,
            Role::Leader => RoleView::Leader,
            Role::Candidate => RoleView::Candidate,
            Role::Follower => RoleView::Follower,
        };
        let membership = replica.membership();
        let ballot = replica.ballot();
        Status {
            id: self.cfg.id,
            phase,
            role,
            ballot: (ballot.round, ballot.node),
            leader: self.known_leader(),
            commit: replica.commit_index(),
            applied: self.sm.applied(),
            log_start: replica.log_start(),
            configuration: (!replica.joining()).then(|| replica.membership_log().latest().id),
            members: self.member_views(now),
            quorum: if replica.joining() {
                0
            } else {
                membership.quorum()
            },
            election_timeout: Duration::from_millis(self.cfg.election_timeout_ms.1),
            keys: self.sm.len() as u64,
            pending: self.pending.len(),
            started: self.start,
            published: now,
        }
    }

    fn member_views(&self, now: Instant) -> Vec<MemberView> {
        let replica = &self.replica;
        if replica.joining() {
            return Vec::new();
        }
        let membership = replica.membership();
        let addrs = self.links.addrs();
        let links: BTreeMap<NodeId, bool> = self
            .links
            .reachability()
            .into_iter()
            .map(|r| (r.id, r.reachable))
            .collect();
        let commits = replica.peer_commits();
        let voters = membership.voters().map(|id| (id, true));
        let learners = membership.learners().map(|id| (id, false));
        let mut members: Vec<MemberView> = voters
            .chain(learners)
            .map(|(id, voter)| {
                let this = id == self.cfg.id;
                MemberView {
                    id,
                    voter,
                    this,
                    addr: addrs.get(&id).or_else(|| self.cfg.peers.get(&id)).cloned(),
                    link_up: (!this).then(|| links.get(&id).copied().unwrap_or(false)),
                    last_heard: if this {
                        Some(now)
                    } else {
                        self.monitor.heard.get(&id).copied()
                    },
                    rtt_ms: self.monitor.rtt_ms.get(&id).copied(),
                    commit: commits.and_then(|c| c.get(&id).copied()),
                }
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    }
}
