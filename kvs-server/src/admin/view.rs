//! The status as `/status` serves it (JSON) and the page renders it: the published
//! [`Status`] with times made relative to now, the health verdict, latency percentiles,
//! counts per minute and the latest notable events.

use std::time::Instant;

use serde::Serialize;

use super::events::{self, Notable, Notables};
use super::status::{self, Phase, RoleView, Status};
use crate::metrics::Metrics;

/// The whole view of one replica.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    /// This replica's id.
    pub id: u64,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its role.
    pub role: RoleView,
    /// Its ballot.
    pub ballot: BallotView,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// The health verdict.
    pub health: Verdict,
    /// The readiness verdict.
    pub ready: Verdict,
    /// The short state shown on the page's banner (`HEALTHY`, `NO LEADER`, ...).
    pub banner: String,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// The first slot of the log kept.
    pub log_start: u64,
    /// The configuration id of the membership.
    pub configuration: Option<u64>,
    /// Votes needed for a quorum.
    pub quorum: usize,
    /// Keys in the store.
    pub keys: u64,
    /// Writes waiting for consensus.
    pub pending_writes: usize,
    /// Reads waiting for consensus.
    pub pending_reads: usize,
    /// Seconds since the replica started.
    pub uptime_s: u64,
    /// Milliseconds since the status was published.
    pub published_ms_ago: u64,
    /// Every member, in id order.
    pub members: Vec<MemberRow>,
    /// Request latency over the latest requests, ms.
    pub request_ms: Option<Percentiles>,
    /// WAL fsync latency over the latest fsyncs, ms.
    pub fsync_ms: Option<Percentiles>,
    /// Leader changes per minute over the last 30 minutes, oldest first.
    pub leader_changes_per_minute: Vec<u32>,
    /// Injected acceptor failures per minute over the last 30 minutes, oldest first.
    pub acceptor_failures_per_minute: Vec<u32>,
    /// Leader changes since start.
    pub leader_changes_total: u64,
    /// Injected acceptor failures since start.
    pub acceptor_failures_total: u64,
    /// The latest notable events, newest first.
    pub events: Vec<Notable>,
    /// When this view was made, ms since the Unix epoch.
    pub now_unix_ms: u64,
    /// The TLS certificate of each link with TLS on (`client`, `peer`); empty without TLS.
    pub tls: std::collections::BTreeMap<&'static str, TlsCertificateView>,
}

/// The TLS certificate in use on a link.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TlsCertificateView {
    /// When it expires, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Seconds until it expires (negative: expired).
    pub expires_in_s: i64,
}

/// A ballot.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BallotView {
    /// Its round.
    pub round: u64,
    /// Its node.
    pub node: u64,
}

/// A health or readiness verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Healthy (or ready).
    pub ok: bool,
    /// What is wrong, if anything.
    pub reason: Option<String>,
}

impl From<Result<(), String>> for Verdict {
    fn from(r: Result<(), String>) -> Self {
        Verdict {
            ok: r.is_ok(),
            reason: r.err(),
        }
    }
}

/// Latency percentiles, ms.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
}

/// One member as the view shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberRow {
    /// Its id.
    pub id: u64,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// This replica.
    pub this: bool,
    /// The leader this replica knows.
    pub leader: bool,
    /// Its peer address.
    pub addr: Option<String>,
    /// `self`, `connected` or `down`.
    pub link: &'static str,
    /// Milliseconds since a message from it arrived.
    pub last_heard_ms_ago: Option<u64>,
    /// The latest heartbeat round trip, ms (leader only).
    pub rtt_ms: Option<f64>,
    /// Its commit index (leader only; this replica's own).
    pub commit: Option<u64>,
    /// Slots it is behind this replica's commit index.
    pub lag: Option<u64>,
}

impl StatusView {
    /// The view of `s` at `now`.
    pub fn new(s: &Status, now: Instant, metrics: &Metrics, events: &Notables) -> StatusView {
        let health = status::health(s, now);
        let banner = banner(s, health.is_ok(), now);
        let now_unix_ms = events::unix_ms();
        let minute = now_unix_ms / 60_000;
        let p = |r: &crate::metrics::Reservoir| {
            r.quantiles_ms([0.5, 0.99])
                .map(|[p50, p99]| Percentiles { p50, p99 })
        };
        StatusView {
            id: s.id,
            phase: s.phase,
            role: s.role,
            ballot: BallotView {
                round: s.ballot.0,
                node: s.ballot.1,
            },
            leader: s.leader,
            health: health.into(),
            ready: status::readiness(s).into(),
            banner,
            commit: s.commit,
            applied: s.applied,
            log_start: s.log_start,
            configuration: s.configuration,
            quorum: s.quorum,
            keys: s.keys,
            pending_writes: s.pending.0,
            pending_reads: s.pending.1,
            uptime_s: now.saturating_duration_since(s.started).as_secs(),
            published_ms_ago: now.saturating_duration_since(s.published).as_millis() as u64,
            members: members(s, now),
            request_ms: p(&metrics.request_recent),
            fsync_ms: p(&metrics.wal_fsync_recent),
            leader_changes_per_minute: events.leader_changes.last_minutes(minute),
            acceptor_failures_per_minute: events.acceptor_failures.last_minutes(minute),
            leader_changes_total: events.leader_changes.total(),
            acceptor_failures_total: events.acceptor_failures.total(),
            events: events.latest(),
            now_unix_ms,
            tls: tls_view(metrics, now_unix_ms),
        }
    }
}

/// The expiry of each link's TLS certificate, as of `now_unix_ms`.
fn tls_view(
    metrics: &Metrics,
    now_unix_ms: u64,
) -> std::collections::BTreeMap<&'static str, TlsCertificateView> {
    let now_s = i64::try_from(now_unix_ms / 1000).unwrap_or(i64::MAX);
    metrics
        .tls_certificate_expiries()
        .into_iter()
        .map(|(link, not_after_unix)| {
            let view = TlsCertificateView {
                not_after_unix,
                expires_in_s: not_after_unix.saturating_sub(now_s),
            };
            (link, view)
        })
        .collect()
}

/// The banner: `HEALTHY`, or the first thing wrong.
fn banner(s: &Status, healthy: bool, now: Instant) -> String {
    let text = match (s.phase, s.leader) {
        (Phase::Starting, _) => "STARTING",
        (Phase::Joining, _) => "JOINING",
        (Phase::Repairing, _) => "REPAIRING",
        (Phase::AcceptorDown, _) => "ACCEPTOR DOWN",
        (Phase::Stopping, _) => "STOPPING",
        _ if healthy => "HEALTHY",
        (_, None) => "NO LEADER",
        (_, Some(l)) if l == s.id && s.voters_heard(now).len() < s.quorum => "NO QUORUM",
        _ => "LEADER UNREACHABLE",
    };
    text.to_string()
}

fn members(s: &Status, now: Instant) -> Vec<MemberRow> {
    s.members
        .iter()
        .map(|m| MemberRow {
            id: m.id,
            role: if m.voter { "voter" } else { "learner" },
            this: m.this,
            leader: s.leader == Some(m.id),
            addr: m.addr.clone(),
            link: match m.link_up {
                None => "self",
                Some(true) => "connected",
                Some(false) => "down",
            },
            last_heard_ms_ago: m
                .last_heard
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            rtt_ms: m.rtt_ms,
            commit: if m.this { Some(s.commit) } else { m.commit },
            lag: if m.this {
                Some(s.commit.saturating_sub(s.applied))
            } else {
                m.commit.map(|c| s.commit.saturating_sub(c))
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::status::MemberView;

    fn status(now: Instant, leader: Option<u64>, peers_heard: bool) -> Status {
        let mut s = Status::starting(1, now - Duration::from_secs(30));
        s.phase = Phase::Running;
        s.leader = leader;
        s.quorum = 2;
        let heard = peers_heard.then_some(now);
        s.members = (1..=3)
            .map(|id| MemberView {
                id,
                voter: true,
                this: id == 1,
                addr: None,
                link_up: (id != 1).then_some(peers_heard),
                last_heard: if id == 1 { Some(now) } else { heard },
                rtt_ms: None,
                commit: (id != 1).then_some(5),
            })
            .collect();
        s.commit = 7;
        s.applied = 6;
        s
    }

    #[test]
    fn the_banner_names_what_is_wrong() {
        let now = Instant::now();
        let banner = |s: &Status| banner(s, status::health(s, now).is_ok(), now);
        assert_eq!(banner(&status(now, Some(1), true)), "HEALTHY");
        assert_eq!(banner(&status(now, Some(1), false)), "NO QUORUM");
        assert_eq!(banner(&status(now, None, true)), "NO LEADER");
        assert_eq!(banner(&status(now, Some(2), false)), "LEADER UNREACHABLE");
        let mut s = status(now, Some(1), true);
        s.phase = Phase::Repairing;
        assert_eq!(banner(&s), "REPAIRING");
    }

    #[test]
    fn members_show_their_link_and_lag() {
        let now = Instant::now();
        let v = StatusView::new(
            &status(now, Some(1), true),
            now,
            &Metrics::new(),
            &Notables::new(1),
        );
        let rows: Vec<(&str, Option<u64>, bool)> = v
            .members
            .iter()
            .map(|m| (m.link, m.lag, m.leader))
            .collect();
        assert_eq!(
            rows,
            [
                ("self", Some(1), true),
                ("connected", Some(2), false),
                ("connected", Some(2), false)
            ]
        );
        assert!(v.health.ok && v.ready.ok);
        assert_eq!(v.uptime_s, 30);
    }

    #[test]
    fn tls_expiry_shows_in_the_view_and_the_metrics() {
        let now = Instant::now();
        let metrics = Metrics::new();
        let events = Notables::new(1);
        let view = StatusView::new(&status(now, Some(1), true), now, &metrics, &events);
        assert!(view.tls.is_empty(), "no TLS, no entry");
        let in_a_day = i64::try_from(events::unix_ms() / 1000).unwrap() + 86_400;
        metrics.set_tls_certificate_expiry("peer", in_a_day);
        let view = StatusView::new(&status(now, Some(1), true), now, &metrics, &events);
        let json = serde_json::to_value(&view).unwrap();
        let peer = &json["tls"]["peer"];
        assert_eq!(peer["not_after_unix"], in_a_day);
        let left = peer["expires_in_s"].as_i64().unwrap();
        assert!((86_300..=86_400).contains(&left), "{left}");
        let text = metrics.encode().unwrap();
        let want = format!(
            "kvs_server_tls_certificate_expiry_timestamp_seconds{{link=\"peer\"}} {in_a_day}"
        );
        assert!(text.contains(&want), "{text}");
    }
}
