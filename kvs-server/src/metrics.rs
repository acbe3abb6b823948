//! The replica's metrics: one [`Metrics`] per replica holds the Prometheus registry and a
//! handle on every metric, shared (`Arc`) by the code paths that update them and read by the
//! admin listener's `/metrics` ([`Metrics::encode`]).
//!
//! Names follow etcd's where the meaning is the same (`etcd_server_has_leader` becomes
//! `kvs_server_has_leader`, and so on); README.md's "Monitoring" section lists them all.
//! Updating a metric is a few atomic operations: labelled series are looked up once and
//! their handles kept ([`Metrics::request`], [`PeerMetrics`]), so no hot path takes a lock
//! or allocates.
//!
//! The latencies shown on the status page come from small lock-free reservoirs of the
//! latest samples ([`Reservoir`]), since histogram buckets are too coarse for a p50.
//!
//! This module imports nothing from the rest of the server, so every layer may use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set of one label.
type Label = [(&'static str, String); 1];
/// A family of histograms with one label and the buckets of its constructor.
type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

/// The operations whose request latency is measured, and their `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestOp {
    /// A write of a key.
    Put,
    /// A linearizable read.
    Get,
    /// A read answered from local state.
    GetStale,
    /// A delete.
    Del,
    /// A compare-and-swap.
    Cas,
    /// A session registration.
    Session,
    /// A status request.
    Status,
    /// A member list or change.
    Member,
    /// A range read (one page), linearizable or stale.
    Range,
    /// A range delete.
    DelRange,
    /// A multi-key transaction.
    Txn,
    /// An auth change or a read of the auth state.
    Auth,
}

impl RequestOp {
    /// Every operation, in label order.
    pub const ALL: [RequestOp; 12] = [
        RequestOp::Put,
        RequestOp::Get,
        RequestOp::GetStale,
        RequestOp::Del,
        RequestOp::Cas,
        RequestOp::Session,
        RequestOp::Status,
        RequestOp::Member,
        RequestOp::Range,
        RequestOp::DelRange,
        RequestOp::Txn,
        RequestOp::Auth,
    ];

    /// The `op` label.
    pub fn label(self) -> &'static str {
        match self {
            RequestOp::Put => "put",
            RequestOp::Get => "get",
            RequestOp::GetStale => "get_stale",
            RequestOp::Del => "del",
            RequestOp::Cas => "cas",
            RequestOp::Session => "session",
            RequestOp::Status => "status",
            RequestOp::Member => "member",
            RequestOp::Range => "range",
            RequestOp::DelRange => "del_range",
            RequestOp::Txn => "txn",
            RequestOp::Auth => "auth",
        }
    }
}

/// Latency buckets from 100 µs to about 13 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Duration buckets for slower work (snapshots): 1 ms to about 65 s.
fn slow_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The most recent latency samples, in microseconds, kept lock-free for the status page's
/// percentiles. Writers overwrite the oldest sample; a reader copies them all.
pub struct Reservoir {
    /// Each sample plus one (0: no sample yet).
    samples: Box<[AtomicU32]>,
    next: AtomicUsize,
}

/// Samples a [`Reservoir`] keeps.
pub const RESERVOIR_SAMPLES: usize = 1024;

impl Default for Reservoir {
    fn default() -> Self {
        Reservoir {
            samples: (0..RESERVOIR_SAMPLES).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Reservoir {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX - 1);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.samples.len();
        self.samples[i].store(us.saturating_add(1), Ordering::Relaxed);
    }

    /// The `q` quantiles (each in 0..=1) of the samples kept, in milliseconds; `None` if
    /// there is no sample.
    pub fn quantiles_ms<const N: usize>(&self, q: [f64; N]) -> Option<[f64; N]> {
        let mut v: Vec<u32> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .map(|s| s - 1)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let last = v.len() - 1;
        Some(q.map(|q| {
            let i = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
            f64::from(v[i.min(last)]) / 1000.0
        }))
    }
}

/// The metrics of one peer link, looked up once per peer.
#[derive(Clone)]
pub struct PeerMetrics {
    /// `kvs_network_peer_round_trip_time_seconds{To}`.
    pub round_trip: Histogram,
    /// `kvs_network_peer_sent_failures_total{To}`.
    pub sent_failures: Counter,
    /// `kvs_network_peer_reachable{To}`.
    pub reachable: Gauge,
}

/// The request metrics of one operation, looked up once.
pub struct RequestMetrics {
    /// `kvs_server_request_duration_seconds{op}`.
    pub duration: Histogram,
}

/// Every metric of a replica, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// 1 if this replica knows a leader.
    pub has_leader: Gauge,
    /// 1 if this replica leads.
    pub is_leader: Gauge,
    /// Times the leader this replica knows changed.
    pub leader_changes: Counter,
    /// Slots this replica learned were chosen.
    pub proposals_committed: Counter,
    /// Slots applied to the state machine.
    pub proposals_applied: Counter,
    /// Writes that failed: not proposed (not leader, busy), dropped, or timed out.
    pub proposals_failed: Counter,
    /// Writes waiting for consensus.
    pub proposals_pending: Gauge,
    /// The commit index.
    pub commit_slot: Gauge,
    /// The applied index.
    pub applied_slot: Gauge,
    /// The round of the highest ballot seen.
    pub ballot_round: Gauge,
    /// Elections this replica started.
    pub elections_started: Counter,
    /// Elections this replica won.
    pub elections_won: Counter,
    /// Duration of each WAL fsync.
    pub wal_fsync: Histogram,
    /// The latest fsync durations, for the status page.
    pub wal_fsync_recent: Reservoir,
    /// Duration of each snapshot save.
    pub snapshot_save: Histogram,
    /// Duration of each snapshot sent to a peer.
    pub snapshot_send: Histogram,
    /// Bytes of snapshots sent to peers.
    pub snapshot_sent_bytes: Counter,
    /// Snapshots sent completely.
    pub snapshot_send_success: Counter,
    /// Snapshot transfers that stopped before the end.
    pub snapshot_send_failures: Counter,
    /// Snapshots received from a peer and installed.
    pub snapshot_installed: Counter,
    peer_round_trip: HistogramFamily,
    peer_sent_failures: Family<Label, Counter>,
    peer_reachable: Family<Label, Gauge>,
    /// Client connections open.
    pub client_connections: Gauge,
    request_duration: HistogramFamily,
    requests: BTreeMap<RequestOp, RequestMetrics>,
    /// The latest request durations (every operation), for the status page.
    pub request_recent: Reservoir,
    /// Keys in the state machine.
    pub keys: Gauge,
    /// Bytes of keys and values in the state machine.
    pub bytes: Gauge,
    /// Injected acceptor failures.
    pub acceptor_failures: Counter,
    /// Recoveries from injected acceptor failures.
    pub acceptor_recoveries: Counter,
    tls_expiry: Family<Label, Gauge>,
    /// The same expiries, by link, for the status view.
    tls_expiry_by_link: Mutex<BTreeMap<&'static str, i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_applied: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_pending: Gauge::default(),
            commit_slot: Gauge::default(),
            applied_slot: Gauge::default(),
            ballot_round: Gauge::default(),
            elections_started: Counter::default(),
            elections_won: Counter::default(),
            wal_fsync: latency_buckets(),
            wal_fsync_recent: Reservoir::default(),
            snapshot_save: slow_buckets(),
            snapshot_send: slow_buckets(),
            snapshot_sent_bytes: Counter::default(),
            snapshot_send_success: Counter::default(),
            snapshot_send_failures: Counter::default(),
            snapshot_installed: Counter::default(),
            peer_round_trip: Family::new_with_constructor(latency_buckets),
            peer_sent_failures: Family::default(),
            peer_reachable: Family::default(),
            client_connections: Gauge::default(),
            request_duration: Family::new_with_constructor(latency_buckets),
            requests: BTreeMap::new(),
            request_recent: Reservoir::default(),
            keys: Gauge::default(),
            bytes: Gauge::default(),
            acceptor_failures: Counter::default(),
            acceptor_recoveries: Counter::default(),
            tls_expiry: Family::default(),
            tls_expiry_by_link: Mutex::new(BTreeMap::new()),
        };
        for op in RequestOp::ALL {
            let duration = m
                .request_duration
                .get_or_create(&[("op", op.label().to_string())])
                .clone();
            m.requests.insert(op, RequestMetrics { duration });
        }
        m.register_all();
        m
    }

    /// Sets `kvs_server_tls_certificate_expiry_timestamp_seconds{link}`: when the TLS
    /// certificate in use on `link` (`client` or `peer`) expires, in Unix time. The series
    /// exists only for a link with TLS on.
    pub fn set_tls_certificate_expiry(&self, link: &'static str, not_after_unix: i64) {
        self.tls_expiry
            .get_or_create(&[("link", link.to_string())])
            .set(not_after_unix);
        self.tls_expiry_by_link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(link, not_after_unix);
    }

    /// When the TLS certificate of each link with TLS on expires, in Unix time.
    pub fn tls_certificate_expiries(&self) -> BTreeMap<&'static str, i64> {
        self.tls_expiry_by_link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "kvs_server_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate in use expires (Unix time), by link: client, peer",
            self.tls_expiry.clone(),
        );
        r.register(
            "kvs_server_has_leader",
            "Whether a leader exists (1) or not (0), as this replica knows",
            self.has_leader.clone(),
        );
        r.register(
            "kvs_server_is_leader",
            "Whether this replica is the leader (1) or not (0)",
            self.is_leader.clone(),
        );
        r.register(
            "kvs_server_leader_changes_seen",
            "Number of leader changes seen",
            self.leader_changes.clone(),
        );
        r.register(
            "kvs_server_proposals_committed",
            "Number of log slots this replica learned were chosen",
            self.proposals_committed.clone(),
        );
        r.register(
            "kvs_server_proposals_applied",
            "Number of log slots applied to the state machine",
            self.proposals_applied.clone(),
        );
        r.register(
            "kvs_server_proposals_failed",
            "Number of writes that failed: refused, dropped or timed out",
            self.proposals_failed.clone(),
        );
        r.register(
            "kvs_server_proposals_pending",
            "Number of writes waiting for consensus",
            self.proposals_pending.clone(),
        );
        r.register(
            "kvs_server_commit_slot",
            "The highest log slot known to be chosen",
            self.commit_slot.clone(),
        );
        r.register(
            "kvs_server_applied_slot",
            "The highest log slot applied to the state machine",
            self.applied_slot.clone(),
        );
        r.register(
            "kvs_server_ballot_round",
            "The round of the highest ballot this replica has seen",
            self.ballot_round.clone(),
        );
        r.register(
            "kvs_server_elections_started",
            "Number of elections this replica started",
            self.elections_started.clone(),
        );
        r.register(
            "kvs_server_elections_won",
            "Number of elections this replica won",
            self.elections_won.clone(),
        );
        r.register(
            "kvs_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the WAL",
            self.wal_fsync.clone(),
        );
        r.register(
            "kvs_debugging_snapshot_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot",
            self.snapshot_save.clone(),
        );
        r.register(
            "kvs_network_snapshot_send_total_duration_seconds",
            "Total latency distributions of snapshot sends to peers",
            self.snapshot_send.clone(),
        );
        r.register(
            "kvs_network_snapshot_sent_bytes",
            "Total bytes of snapshots sent to peers",
            self.snapshot_sent_bytes.clone(),
        );
        r.register(
            "kvs_network_snapshot_send_success",
            "Number of snapshots sent completely",
            self.snapshot_send_success.clone(),
        );
        r.register(
            "kvs_network_snapshot_send_failures",
            "Number of snapshot transfers that stopped before the end",
            self.snapshot_send_failures.clone(),
        );
        r.register(
            "kvs_server_snapshot_installed",
            "Number of snapshots received from a peer and installed",
            self.snapshot_installed.clone(),
        );
        r.register(
            "kvs_network_peer_round_trip_time_seconds",
            "Round trip time of heartbeats to each peer (leader only)",
            self.peer_round_trip.clone(),
        );
        r.register(
            "kvs_network_peer_sent_failures",
            "Number of messages to a peer dropped: link down or its queue full",
            self.peer_sent_failures.clone(),
        );
        r.register(
            "kvs_network_peer_reachable",
            "Whether the link to each peer is connected (1) or not (0)",
            self.peer_reachable.clone(),
        );
        r.register(
            "kvs_server_client_connections",
            "Number of client connections open",
            self.client_connections.clone(),
        );
        r.register(
            "kvs_server_request_duration_seconds",
            "Time from taking a client request to answering it, by operation",
            self.request_duration.clone(),
        );
        r.register(
            "kvs_server_keys",
            "Number of keys in the state machine",
            self.keys.clone(),
        );
        r.register(
            "kvs_server_data_bytes",
            "Bytes of keys and values in the state machine",
            self.bytes.clone(),
        );
        r.register(
            "kvs_server_acceptor_failures",
            "Number of injected acceptor failures",
            self.acceptor_failures.clone(),
        );
        r.register(
            "kvs_server_acceptor_recoveries",
            "Number of recoveries from injected acceptor failures",
            self.acceptor_recoveries.clone(),
        );
    }

    /// The metrics of requests of `op`.
    pub fn request(&self, op: RequestOp) -> Option<&RequestMetrics> {
        self.requests.get(&op)
    }

    /// Records that a request of `op` took `d` to answer.
    pub fn observe_request(&self, op: RequestOp, d: Duration) {
        if let Some(m) = self.request(op) {
            m.duration.observe(d.as_secs_f64());
        }
        self.request_recent.record(d);
    }

    /// The metrics of the link to `peer` (look them up once and keep them).
    pub fn peer(&self, peer: u64) -> PeerMetrics {
        let label = [("To", peer.to_string())];
        PeerMetrics {
            round_trip: self.peer_round_trip.get_or_create(&label).clone(),
            sent_failures: self.peer_sent_failures.get_or_create(&label).clone(),
            reachable: self.peer_reachable.get_or_create(&label).clone(),
        }
    }

    /// Forgets the series of `peer` (no longer a member).
    pub fn remove_peer(&self, peer: u64) {
        let label = [("To", peer.to_string())];
        self.peer_round_trip.remove(&label);
        self.peer_sent_failures.remove(&label);
        self.peer_reachable.remove(&label);
    }

    /// Records one WAL fsync.
    pub fn observe_fsync(&self, d: Duration) {
        self.wal_fsync.observe(d.as_secs_f64());
        self.wal_fsync_recent.record(d);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Sets a gauge from an unsigned value.
pub fn set_gauge(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The metrics of each WAL directory in this process, so that the storage thread (started
/// by the storage layer, which knows nothing of metrics) finds the ones of its replica.
/// Several replicas may share a process (`kvs-server dev`), each with its own directory.
fn wal_dirs() -> &'static Mutex<BTreeMap<PathBuf, Arc<Metrics>>> {
    static DIRS: OnceLock<Mutex<BTreeMap<PathBuf, Arc<Metrics>>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
}

/// Records that the WAL in `dir` belongs to the replica of `metrics` (before it is opened).
pub fn register_wal_dir(dir: &Path, metrics: &Arc<Metrics>) {
    let mut dirs = wal_dirs().lock().unwrap_or_else(PoisonError::into_inner);
    dirs.insert(dir.to_path_buf(), Arc::clone(metrics));
}

/// The metrics of the replica whose WAL is in `dir`, if one registered it.
pub fn for_wal_dir(dir: &Path) -> Option<Arc<Metrics>> {
    let dirs = wal_dirs().lock().unwrap_or_else(PoisonError::into_inner);
    dirs.get(dir).cloned()
}

/// A counter of events per minute over the last [`MINUTES`] minutes, for the status page.
#[derive(Debug, Default)]
pub struct PerMinute {
    /// (minute since the epoch, count), oldest first, at most [`MINUTES`].
    counts: Mutex<std::collections::VecDeque<(u64, u32)>>,
    total: AtomicU64,
}

/// Minutes a [`PerMinute`] keeps.
pub const MINUTES: usize = 30;

impl PerMinute {
    /// Counts one event at `minute` (minutes since the epoch).
    pub fn add(&self, minute: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match c.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => c.push_back((minute, 1)),
        }
        while c.len() > MINUTES {
            c.pop_front();
        }
    }

    /// The counts of the [`MINUTES`] minutes up to `now_minute`, oldest first.
    pub fn last_minutes(&self, now_minute: u64) -> Vec<u32> {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let first = now_minute.saturating_sub(MINUTES as u64 - 1);
        (first..=now_minute)
            .map(|m| {
                c.iter()
                    .find(|(at, _)| *at == m)
                    .map(|(_, n)| *n)
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Events counted since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_metrics_and_their_values() {
        let m = Metrics::new();
        m.has_leader.set(1);
        m.proposals_committed.inc_by(3);
        m.observe_request(RequestOp::Put, Duration::from_millis(2));
        m.peer(2).sent_failures.inc();
        let text = m.encode().unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("kvs_server_has_leader 1\n"), "{text}");
        assert!(
            text.contains("kvs_server_proposals_committed_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("kvs_server_request_duration_seconds_count{op=\"put\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kvs_network_peer_sent_failures_total{To=\"2\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn reservoir_quantiles_come_from_the_latest_samples() {
        let r = Reservoir::default();
        assert_eq!(r.quantiles_ms([0.5]), None);
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        let [p50, p99] = r.quantiles_ms([0.5, 0.99]).unwrap_or([0.0, 0.0]);
        assert!((50.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.0).contains(&p99), "{p99}");
        // Old samples are overwritten.
        for _ in 0..RESERVOIR_SAMPLES {
            r.record(Duration::from_millis(7));
        }
        assert_eq!(r.quantiles_ms([0.99]), Some([7.0]));
    }

    #[test]
    fn per_minute_counts_fill_in_empty_minutes() {
        let p = PerMinute::default();
        p.add(100);
        p.add(100);
        p.add(102);
        let last = p.last_minutes(102);
        assert_eq!(last.len(), MINUTES);
        assert_eq!(&last[MINUTES - 3..], &[2, 0, 1]);
        assert_eq!(p.total(), 3);
        // Minutes older than the window are gone.
        assert_eq!(p.last_minutes(200).iter().sum::<u32>(), 0);
    }
}
