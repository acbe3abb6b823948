//! Shared helpers of the cluster integration tests: starting clusters with fast timing,
//! clients bound to one or all endpoints, waiting for a leader or for convergence, write
//! streams that record what was acknowledged, and failure messages carrying the node logs.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod admin;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use kvs_client::{Client, ClientOptions, NodeRole, NodeStatus};
use tests::cluster::{wait_for, Cluster, ClusterOptions};

/// Bound on electing a leader (generous: the machine may be loaded).
pub const ELECTION_BOUND: Duration = Duration::from_secs(10);
/// Bound on replicas converging to the same applied index.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(20);
/// Pause between two checks of a condition.
pub const POLL: Duration = Duration::from_millis(50);
/// Request budget of the clients used for checks.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many reads run at once when checking many keys.
pub const READ_CONCURRENCY: usize = 16;

/// Server arguments for faster elections than the defaults (300..600 ms).
pub fn fast_timing() -> Vec<String> {
    ["--election-timeout-ms", "150..300", "--heartbeat-ms", "30"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// A cluster of `nodes` replicas with fast election timing.
pub fn fast_options(nodes: usize) -> ClusterOptions {
    ClusterOptions {
        nodes,
        extra_args: fast_timing(),
        ..ClusterOptions::default()
    }
}

/// Starts a cluster or panics with the reason.
pub fn start(opts: ClusterOptions) -> Cluster {
    Cluster::start(opts).unwrap_or_else(|e| panic!("cannot start the test cluster: {e:#}"))
}

/// Keeps the cluster's data, then panics with `msg`, the data path and every node's log tail.
pub fn fail(cluster: &Cluster, msg: impl Display) -> ! {
    let root = cluster.keep_data();
    let mut text = format!(
        "{msg}\n\ncluster data and logs kept in {}\n",
        root.display()
    );
    for id in cluster.ids() {
        let tail = cluster
            .log_tail(id, 2500)
            .unwrap_or_else(|e| format!("<cannot read: {e:#}>"));
        text.push_str(&format!(
            "----- node {id} log tail ({}) -----\n{tail}\n",
            cluster.log_path(id).display()
        ));
    }
    panic!("{text}");
}

/// `fail` on an error, naming what was attempted.
pub trait OrFail<T> {
    /// The value, or [`fail`] with `what` and the error.
    fn or_fail(self, cluster: &Cluster, what: &str) -> T;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, cluster: &Cluster, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => fail(cluster, format!("{what}: {e:#}")),
        }
    }
}

/// Fails the test (with logs) unless `cond` holds. Use `#[macro_use] mod common;`.
macro_rules! check {
    ($cluster:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $crate::common::fail($cluster, format!($($fmt)+));
        }
    };
}

/// Client options with the given request budget.
pub fn client_options(request_timeout: Duration) -> ClientOptions {
    ClientOptions {
        request_timeout,
        ..ClientOptions::default()
    }
}

/// The cluster's client options (with its TLS, if any) and the given request budget.
pub fn cluster_client_options(cluster: &Cluster, request_timeout: Duration) -> ClientOptions {
    ClientOptions {
        request_timeout,
        ..cluster.client_options()
    }
}

/// A client of every endpoint (with the cluster's TLS, if any).
pub fn client(cluster: &Cluster, request_timeout: Duration) -> Client {
    let options = cluster_client_options(cluster, request_timeout);
    Client::connect(cluster.client_endpoints(), options).or_fail(cluster, "creating a client")
}

/// A client that knows only node `id`'s endpoint (it still follows redirects).
pub fn node_client(cluster: &Cluster, id: u64, request_timeout: Duration) -> Client {
    let endpoint = cluster.client_endpoint(id).or_fail(cluster, "endpoint");
    let options = cluster_client_options(cluster, request_timeout);
    Client::connect([endpoint], options).or_fail(cluster, "creating a client")
}

/// The status of each of `ids` that answers within a short budget.
pub async fn statuses(cluster: &Cluster, ids: &[u64]) -> BTreeMap<u64, NodeStatus> {
    let probe = client(cluster, Duration::from_secs(2));
    let asks = ids.iter().map(|&id| {
        let probe = probe.clone();
        let endpoint = cluster.client_endpoint(id).expect("known id");
        async move { (id, probe.status_of(&endpoint).await) }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(id, status)| status.ok().map(|s| (id, s)))
        .collect()
}

/// The leader that every node of `ids` answers to: it says it leads, and every other node
/// of `ids` names it as leader.
pub async fn agreed_leader(cluster: &Cluster, ids: &[u64]) -> Option<u64> {
    let all = statuses(cluster, ids).await;
    if all.len() != ids.len() {
        return None;
    }
    let leader = all
        .values()
        .filter(|s| s.role == NodeRole::Leader)
        .max_by_key(|s| s.ballot)?
        .id;
    all.values()
        .all(|s| s.id == leader || s.leader == Some(leader))
        .then_some(leader)
}

/// Waits until `ids` agree on a leader, failing the test after [`ELECTION_BOUND`].
pub async fn wait_leader(cluster: &Cluster, ids: &[u64]) -> u64 {
    let started = Instant::now();
    let leader = wait_for(
        &format!("nodes {ids:?} to agree on a leader"),
        ELECTION_BOUND,
        POLL,
        || agreed_leader(cluster, ids),
    )
    .await
    .or_fail(cluster, "leader election");
    eprintln!(
        "  leader {leader} agreed by {ids:?} after {:?}",
        started.elapsed()
    );
    leader
}

/// Waits until every node of `ids` reports the same applied index (and no lower commit
/// index), and returns it.
pub async fn wait_converged(cluster: &Cluster, ids: &[u64], bound: Duration) -> u64 {
    let last = std::sync::Mutex::new(BTreeMap::new());
    let result = wait_for(
        &format!("nodes {ids:?} to reach the same applied index"),
        bound,
        POLL,
        || {
            let last = &last;
            async move {
                let all = statuses(cluster, ids).await;
                *last.lock().unwrap() = all
                    .iter()
                    .map(|(&id, s)| (id, (s.commit_index, s.applied_index)))
                    .collect::<BTreeMap<_, _>>();
                if all.len() != ids.len() {
                    return None;
                }
                let applied = all.values().next()?.applied_index;
                all.values()
                    .all(|s| s.applied_index == applied && s.commit_index == applied)
                    .then_some(applied)
            }
        },
    )
    .await;
    match result {
        Ok(applied) => applied,
        Err(e) => fail(
            cluster,
            format!(
                "{e:#}; last (commit, applied) per node: {:?}",
                last.lock().unwrap()
            ),
        ),
    }
}

/// What a stream of writes produced: key → value for each outcome.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Acknowledged writes.
    pub acked: Vec<(String, String)>,
    /// Writes whose outcome is unknown, with the error.
    pub unknown: Vec<(String, String, String)>,
    /// Writes that definitely failed, with the error.
    pub failed: Vec<(String, String, String)>,
}

impl Outcomes {
    fn merge(&mut self, other: Outcomes) {
        self.acked.extend(other.acked);
        self.unknown.extend(other.unknown);
        self.failed.extend(other.failed);
    }

    /// `acked/unknown/failed` counts, for the summary lines.
    pub fn figures(&self) -> String {
        format!(
            "acked={} unknown={} failed={}",
            self.acked.len(),
            self.unknown.len(),
            self.failed.len()
        )
    }

    /// Every key written, with the value it was written with.
    pub fn all_keys(&self) -> Vec<(String, String)> {
        let mut keys = self.acked.clone();
        keys.extend(self.unknown.iter().map(|(k, v, _)| (k.clone(), v.clone())));
        keys.extend(self.failed.iter().map(|(k, v, _)| (k.clone(), v.clone())));
        keys
    }
}

/// Concurrent writer tasks putting unique keys until stopped (or a count or time cap).
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    attempted: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<Outcomes>>,
}

/// Hard cap on how long a writer task runs, whatever the test does.
const WRITER_LIFETIME_MAX: Duration = Duration::from_secs(60);

impl Writers {
    /// Starts `tasks` tasks sharing `client`, each writing at most `per_task` keys
    /// `{prefix}-{task}-{i}`.
    pub fn spawn(client: &Client, prefix: &str, tasks: usize, per_task: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let attempted = Arc::new(AtomicU64::new(0));
        let handles = (0..tasks)
            .map(|task| {
                let client = client.clone();
                let stop = Arc::clone(&stop);
                let acked = Arc::clone(&acked);
                let attempted = Arc::clone(&attempted);
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut out = Outcomes::default();
                    for i in 0..per_task {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > WRITER_LIFETIME_MAX {
                            break;
                        }
                        let key = format!("{prefix}-{task}-{i}");
                        let value = format!("value of {key} #{}", rand::random::<u32>());
                        attempted.fetch_add(1, Ordering::SeqCst);
                        match client.put(key.clone(), value.clone()).await {
                            Ok(()) => {
                                acked.fetch_add(1, Ordering::SeqCst);
                                out.acked.push((key, value));
                            }
                            Err(e) if e.outcome_unknown() => {
                                out.unknown.push((key, value, e.to_string()));
                            }
                            Err(e) => out.failed.push((key, value, e.to_string())),
                        }
                    }
                    out
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            attempted,
            handles,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Writes started so far.
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::SeqCst)
    }

    /// Waits until `n` more writes than now were acknowledged.
    pub async fn wait_acked_more(&self, cluster: &Cluster, n: u64, bound: Duration) {
        let target = self.acked() + n;
        let acked = Arc::clone(&self.acked);
        tests::cluster::wait_until(
            &format!("{target} acknowledged writes"),
            bound,
            Duration::from_millis(20),
            || {
                let done = acked.load(Ordering::SeqCst) >= target;
                async move { done }
            },
        )
        .await
        .or_fail(cluster, "write stream");
    }

    /// Stops the tasks (each finishes its current write) and returns their outcomes.
    pub async fn stop(self) -> Outcomes {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }

    /// Waits for the tasks to write all their keys (or reach their time cap) and returns
    /// their outcomes.
    pub async fn finish(self) -> Outcomes {
        let mut all = Outcomes::default();
        for handle in self.handles {
            all.merge(handle.await.expect("writer task panicked"));
        }
        all
    }
}

/// Checks, with linearizable reads, that every acknowledged write is present, every
/// definitely failed one absent, and every unknown one either. Returns how many unknown
/// writes turned out to be applied.
pub async fn verify_linearizable(cluster: &Cluster, client: &Client, outcomes: &Outcomes) -> usize {
    let mut checks: Vec<(String, String, &'static str)> = Vec::new();
    checks.extend(
        outcomes
            .acked
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), "acked")),
    );
    checks.extend(
        outcomes
            .unknown
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone(), "unknown")),
    );
    checks.extend(
        outcomes
            .failed
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone(), "failed")),
    );
    let results: Vec<_> = stream::iter(checks)
        .map(|(key, value, kind)| {
            let client = client.clone();
            async move {
                let got = client.get(key.clone()).await;
                (key, value, kind, got)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut unknown_applied = 0;
    let mut problems = Vec::new();
    for (key, value, kind, got) in results {
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                problems.push(format!("linearizable get {key:?} failed: {e}"));
                continue;
            }
        };
        let present = got.as_deref() == Some(value.as_bytes());
        match kind {
            "acked" if !present => problems.push(format!(
                "acknowledged write {key:?}={value:?} is missing: read {got:?}"
            )),
            "failed" if got.is_some() => problems.push(format!(
                "definitely failed write {key:?}={value:?} is present: read {got:?}"
            )),
            "unknown" if present => unknown_applied += 1,
            "unknown" if got.is_some() => problems.push(format!(
                "unknown-outcome write {key:?} reads a value never written: {got:?}"
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(10);
        fail(
            cluster,
            format!(
                "{n} problems after the run ({}), first ones:\n{}",
                outcomes.figures(),
                problems.join("\n")
            ),
        );
    }
    unknown_applied
}

/// Reads `keys` with stale reads from node `id` alone and returns what it holds, or the
/// first error.
pub async fn stale_values(
    cluster: &Cluster,
    id: u64,
    keys: &[String],
) -> Result<BTreeMap<String, Option<Bytes>>, String> {
    let client = node_client(cluster, id, Duration::from_secs(5));
    let results: Vec<_> = stream::iter(keys.to_vec())
        .map(|key| {
            let client = client.clone();
            async move {
                let got = client.get_stale(key.clone()).await;
                (key, got)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut values = BTreeMap::new();
    for (key, got) in results {
        let value = got.map_err(|e| format!("stale get {key:?} on node {id}: {e}"))?;
        values.insert(key, value);
    }
    Ok(values)
}

/// Checks that every node of `ids` comes to hold, for `keys`, the values linearizable reads
/// through `client` return (run after [`wait_converged`]; a node is given up to
/// [`CONVERGE_BOUND`], since one recovering from a failure may briefly lag).
pub async fn verify_replicas_agree(
    cluster: &Cluster,
    client: &Client,
    ids: &[u64],
    keys: &[String],
) {
    let reference: Vec<_> = stream::iter(keys.to_vec())
        .map(|key| {
            let client = client.clone();
            async move {
                let got = client.get(key.clone()).await;
                (key, got)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut expected = BTreeMap::new();
    for (key, got) in reference {
        expected.insert(key.clone(), got.or_fail(cluster, &format!("get {key:?}")));
    }
    for &id in ids {
        verify_node_holds(cluster, id, &expected).await;
    }
}

/// Checks that node `id`'s local state (stale reads) comes to hold exactly `expected`
/// (`None`: absent) within [`CONVERGE_BOUND`].
pub async fn verify_node_holds(
    cluster: &Cluster,
    id: u64,
    expected: &BTreeMap<String, Option<Bytes>>,
) {
    let keys: Vec<String> = expected.keys().cloned().collect();
    let last_problem = std::sync::Mutex::new(String::new());
    let agreed = tests::cluster::wait_until(
        &format!(
            "node {id}'s local state to hold the expected values of {} keys",
            keys.len()
        ),
        CONVERGE_BOUND,
        Duration::from_millis(200),
        || {
            let (keys, last_problem) = (&keys, &last_problem);
            async move {
                let problem = match stale_values(cluster, id, keys).await {
                    Err(e) => e,
                    Ok(held) => {
                        let differing: Vec<String> = expected
                            .iter()
                            .filter(|(key, value)| held.get(*key) != Some(*value))
                            .map(|(key, value)| {
                                format!(
                                    "{key:?}: expected {value:?}, node {id} holds {:?}",
                                    held.get(key).cloned().flatten()
                                )
                            })
                            .collect();
                        if differing.is_empty() {
                            return true;
                        }
                        format!(
                            "{} keys differ, first ones: {:#?}",
                            differing.len(),
                            &differing[..differing.len().min(10)]
                        )
                    }
                };
                *last_problem.lock().unwrap() = problem;
                false
            }
        },
    )
    .await;
    if let Err(e) = agreed {
        fail(
            cluster,
            format!("{e:#}; last check: {}", last_problem.lock().unwrap()),
        );
    }
}

/// Whether node `id`'s log file contains `needle`.
pub fn log_contains(cluster: &Cluster, id: u64, needle: &str) -> bool {
    std::fs::read_to_string(cluster.log_path(id)).is_ok_and(|log| log.contains(needle))
}
