//! Client workloads that record every operation into a [`History`].
//!
//! - [`Workload::Register`]: several keys; each client task (its own [`Client`], so its own
//!   write session) reads linearizably, reads stale, writes unique values `p{process}-{n}`,
//!   compare-and-swaps from the last value it saw of the key (or from absent), and sometimes
//!   deletes. Optional *directed readers* send linearizable reads to the node the nemesis
//!   deposed (isolated from its peers, or paused), through a client that knows only that node.
//! - [`Workload::Set`]: clients add unique elements to one key holding a comma-separated list,
//!   by compare-and-swap appends. Every acknowledged add must be in the final value, no add
//!   that definitely failed may be, and nothing else may be ([`SetAdds::check_final`]).
//!
//! Outcomes follow the client's error semantics: `Ok` is ok; [`kvs_client::Error::OutcomeUnknown`]
//! is unknown (the write may take effect any time later, or never); every other error is a
//! definite failure. A failed read is a failure (a read has no effect). Stale reads are recorded
//! as [`OpKind::StaleRead`], which the linearizability checker skips. After an unknown outcome
//! a task continues as a new process id (as in Jepsen: the old process may still be "running"
//! its operation).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvs_client::{CasOutcome, Client, ClientOptions, Error};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::history::{History, OpKind, PendingOp, ProcessId, Ret};
use crate::nemesis::NemesisShared;

/// Operations one task issues at most (bounds every workload loop besides its deadline).
const OPS_PER_TASK_MAX: u64 = 200_000;

/// Extra time granted to a client call beyond its own request timeout before the workload
/// gives up on it (and counts an overrun: the client broke its own bound).
const OVERRUN_GRACE: Duration = Duration::from_secs(3);

/// Process ids of directed readers start here.
const DIRECTED_PROCESS_BASE: ProcessId = 500_000;

/// The register workload.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterConfig {
    /// Number of keys (`reg/0` … `reg/{keys-1}`).
    pub keys: usize,
    /// Concurrent client tasks, each with its own client.
    pub clients: usize,
    /// Extra tasks reading (linearizably) from the nemesis' target node directly.
    pub directed_readers: usize,
    /// Longest pause between two operations of a task (uniform in `0..=think_max`).
    pub think_max: Duration,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            keys: 8,
            clients: 5,
            directed_readers: 0,
            think_max: Duration::from_millis(10),
        }
    }
}

/// The set workload.
///
/// All tasks append to the same key, `{key_prefix}/{i}`, where `i` counts `rotate_every`
/// periods on the history's clock: values (and the history, which holds every CAS's old and
/// new value) stay bounded in size however long a soak runs, while the tasks still contend
/// on one key at a time. The set is the union of all those keys.
#[derive(Clone, Debug, PartialEq)]
pub struct SetConfig {
    /// Prefix of the keys holding the set.
    pub key_prefix: String,
    /// How long the tasks append to one key before moving to the next.
    pub rotate_every: Duration,
    /// Concurrent client tasks, each with its own client.
    pub clients: usize,
    /// Longest pause between two adds of a task.
    pub think_max: Duration,
}

impl Default for SetConfig {
    fn default() -> Self {
        SetConfig {
            key_prefix: "set".to_owned(),
            rotate_every: Duration::from_secs(5),
            clients: 5,
            think_max: Duration::from_millis(10),
        }
    }
}

impl SetConfig {
    /// Whether `key` is one of this set's keys.
    pub fn owns(&self, key: &str) -> bool {
        key.strip_prefix(&self.key_prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|n| n.parse::<u64>().is_ok())
    }

    fn key_at(&self, elapsed_ns: u64) -> String {
        let period = u64::try_from(self.rotate_every.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        format!("{}/{}", self.key_prefix, elapsed_ns / period)
    }
}

/// Which workload a scenario runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// Registers: read, write, compare-and-swap, delete on several keys.
    Register(RegisterConfig),
    /// A grow-only set on one key.
    Set(SetConfig),
}

impl Workload {
    /// The keys the workload is sure to touch (for the final reads; the set's keys depend on
    /// time and are found in the history).
    pub fn keys(&self) -> Vec<String> {
        match self {
            Workload::Register(c) => (0..c.keys).map(register_key).collect(),
            Workload::Set(_) => Vec::new(),
        }
    }
}

/// The name of register key `i`.
pub fn register_key(i: usize) -> String {
    format!("reg/{i}")
}

/// Counters of a running workload.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    /// Directed reads sent to a deposed node.
    pub directed_reads: AtomicU64,
    /// Directed reads answered successfully.
    pub directed_ok: AtomicU64,
    /// Directed reads answered by the deposed node itself (not after a redirect).
    pub directed_served_by_target: AtomicU64,
    /// Client calls that ran past their own request timeout plus a grace period.
    pub overruns: AtomicU64,
}

impl WorkloadStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a running workload needs.
#[derive(Clone, Debug)]
pub struct WorkloadContext {
    /// Where operations are recorded.
    pub history: History,
    /// The client endpoints of every node, by node id.
    pub endpoints: BTreeMap<u64, String>,
    /// Options of every client.
    pub client_options: ClientOptions,
    /// The nemesis' shared state (its current target).
    pub shared: Arc<NemesisShared>,
    /// Set to stop the tasks (each finishes its current operation).
    pub stop: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<WorkloadStats>,
    /// Seed of the workload's random choices.
    pub seed: u64,
}

/// The fate of every element the set workload tried to add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAdds {
    /// Adds the cluster acknowledged: they must be in the final set.
    pub acked: BTreeSet<String>,
    /// Adds that definitely failed: they must not be in the final set.
    pub failed: BTreeSet<String>,
    /// Adds with an unknown outcome: they may or may not be in the final set.
    pub unknown: BTreeSet<String>,
}

/// How the final set compares with the adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetCheck {
    /// Elements in the final set.
    pub present: usize,
    /// Acknowledged adds missing from the final set (lost writes).
    pub lost: Vec<String>,
    /// Definitely failed adds present in the final set.
    pub failed_present: Vec<String>,
    /// Elements present that no client ever tried to add.
    pub unexpected: Vec<String>,
    /// Elements present more than once.
    pub duplicated: Vec<String>,
    /// Unknown adds that made it in.
    pub unknown_present: usize,
}

impl SetCheck {
    /// Whether the final set is consistent with the adds.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.failed_present.is_empty()
            && self.unexpected.is_empty()
            && self.duplicated.is_empty()
    }
}

impl fmt::Display for SetCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} present ({} of them unknown adds); lost acked adds: {:?}; failed adds present: \
             {:?}; never-added elements: {:?}; duplicated: {:?}",
            self.present,
            self.unknown_present,
            self.lost,
            self.failed_present,
            self.unexpected,
            self.duplicated
        )
    }
}

impl SetAdds {
    fn merge(&mut self, other: SetAdds) {
        self.acked.extend(other.acked);
        self.failed.extend(other.failed);
        self.unknown.extend(other.unknown);
    }

    /// Compares the final set (the elements of every set key, concatenated) with the adds.
    pub fn check_final(&self, elements: &[String]) -> SetCheck {
        let mut seen = BTreeSet::new();
        let mut check = SetCheck {
            present: elements.len(),
            ..SetCheck::default()
        };
        for element in elements {
            if !seen.insert(element.clone()) {
                check.duplicated.push(element.clone());
            }
            if self.failed.contains(element) {
                check.failed_present.push(element.clone());
            } else if self.unknown.contains(element) {
                check.unknown_present += 1;
            } else if !self.acked.contains(element) {
                check.unexpected.push(element.clone());
            }
        }
        check.lost = self.acked.difference(&seen).cloned().collect();
        check
    }
}

/// The elements of a set value (comma-separated).
pub fn parse_set(value: Option<&[u8]>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(bytes) => String::from_utf8_lossy(bytes)
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// What a workload task returns.
#[derive(Debug, Default)]
pub struct TaskResult {
    /// Set adds (set workload only).
    pub adds: SetAdds,
}

/// Starts the workload's tasks on the current runtime.
pub fn spawn(
    workload: &Workload,
    ctx: &WorkloadContext,
) -> anyhow::Result<Vec<JoinHandle<TaskResult>>> {
    let mut handles = Vec::new();
    let all: Vec<String> = ctx.endpoints.values().cloned().collect();
    match workload {
        Workload::Register(config) => {
            let processes = config.clients as u64;
            for task in 0..config.clients {
                let client = connect_shuffled(&all, ctx, task as u64)?;
                let ctx = ctx.clone();
                let config = config.clone();
                handles.push(tokio::spawn(async move {
                    register_task(task as u64, processes, client, config, ctx).await
                }));
            }
            for reader in 0..config.directed_readers {
                let client = connect_shuffled(&all, ctx, 1000 + reader as u64)?;
                let ctx = ctx.clone();
                let config = config.clone();
                handles.push(tokio::spawn(async move {
                    directed_reader(reader as u64, client, config, ctx).await
                }));
            }
        }
        Workload::Set(config) => {
            let processes = config.clients as u64;
            for task in 0..config.clients {
                let client = connect_shuffled(&all, ctx, task as u64)?;
                let ctx = ctx.clone();
                let config = config.clone();
                handles.push(tokio::spawn(async move {
                    set_task(task as u64, processes, client, config, ctx).await
                }));
            }
        }
    }
    Ok(handles)
}

/// Waits for the tasks (bounded by `timeout`), merging their results. Tasks still running at
/// the bound are aborted (their in-flight operations stay unknown); the count is returned.
pub async fn join(handles: Vec<JoinHandle<TaskResult>>, timeout: Duration) -> (SetAdds, usize) {
    let deadline = Instant::now() + timeout;
    let mut adds = SetAdds::default();
    let mut aborted = 0;
    for mut handle in handles {
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(result)) => adds.merge(result.adds),
            Ok(Err(join_error)) => {
                // A panicking task is a harness bug: surface it.
                if join_error.is_panic() {
                    std::panic::resume_unwind(join_error.into_panic());
                }
                aborted += 1;
            }
            Err(_) => {
                handle.abort();
                aborted += 1;
            }
        }
    }
    (adds, aborted)
}

fn connect_shuffled(all: &[String], ctx: &WorkloadContext, salt: u64) -> anyhow::Result<Client> {
    let mut endpoints = all.to_vec();
    endpoints.shuffle(&mut StdRng::seed_from_u64(
        ctx.seed ^ salt.wrapping_mul(0x9e37_79b9),
    ));
    Ok(Client::connect(endpoints, ctx.client_options.clone())?)
}

/// Runs a client call bounded by the client's timeout plus a grace period.
async fn guarded<T>(
    ctx: &WorkloadContext,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Option<Error>> {
    let bound = ctx.client_options.request_timeout + OVERRUN_GRACE;
    match tokio::time::timeout(bound, call).await {
        Ok(result) => result.map_err(Some),
        Err(_) => {
            WorkloadStats::bump(&ctx.stats.overruns);
            Err(None)
        }
    }
}

/// Completes a write-like operation's error: unknown for an unknown outcome (or an overrun),
/// fail for a definite failure. Returns whether it was unknown.
fn complete_write_error(op: PendingOp, error: Option<Error>) -> bool {
    match error {
        Some(e) if e.is_definite_failure() => {
            op.fail();
            false
        }
        _ => {
            op.unknown();
            true
        }
    }
}

fn to_vec(value: &Option<Bytes>) -> Option<Vec<u8>> {
    value.as_ref().map(|b| b.to_vec())
}

async fn think(rng: &mut StdRng, max: Duration) {
    if max.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(rng.random_range(Duration::ZERO..=max)).await;
    }
}

async fn register_task(
    task: u64,
    processes: u64,
    client: Client,
    config: RegisterConfig,
    ctx: WorkloadContext,
) -> TaskResult {
    let mut rng = StdRng::seed_from_u64(ctx.seed.wrapping_add(task));
    let mut process = task;
    // The last value this task saw of each key (read, written or reported by a mismatch).
    let mut last_seen: HashMap<String, Option<Bytes>> = HashMap::new();
    for n in 0..OPS_PER_TASK_MAX {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let key = register_key(rng.random_range(0..config.keys));
        let dice: f64 = rng.random();
        let value = format!("p{process}-{n}");
        let unknown = if dice < 0.40 {
            let op = ctx.history.invoke(process, key.as_str(), OpKind::Read);
            match guarded(&ctx, client.get(key.clone())).await {
                Ok(v) => {
                    op.ok(Ret::Value(to_vec(&v)));
                    last_seen.insert(key, v);
                }
                Err(_) => op.fail(),
            }
            false
        } else if dice < 0.47 {
            let op = ctx.history.invoke(process, key.as_str(), OpKind::StaleRead);
            match guarded(&ctx, client.get_stale(key.clone())).await {
                Ok(v) => op.ok(Ret::Value(to_vec(&v))),
                Err(_) => op.fail(),
            }
            false
        } else if dice < 0.72 {
            let kind = OpKind::Write(value.clone().into_bytes());
            let op = ctx.history.invoke(process, key.as_str(), kind);
            match guarded(&ctx, client.put(key.clone(), value.clone())).await {
                Ok(()) => {
                    op.ok(Ret::Done);
                    last_seen.insert(key, Some(Bytes::from(value)));
                    false
                }
                Err(e) => complete_write_error(op, e),
            }
        } else if dice < 0.96 {
            let expected = last_seen.get(&key).cloned().flatten();
            let kind = OpKind::Cas {
                expected: to_vec(&expected),
                new: value.clone().into_bytes(),
            };
            let op = ctx.history.invoke(process, key.as_str(), kind);
            let call = client.compare_and_swap(key.clone(), expected, value.clone());
            match guarded(&ctx, call).await {
                Ok(CasOutcome::Swapped) => {
                    op.ok(Ret::Swapped(true));
                    last_seen.insert(key, Some(Bytes::from(value)));
                    false
                }
                Ok(CasOutcome::Mismatch { current }) => {
                    op.ok(Ret::Swapped(false));
                    last_seen.insert(key, current);
                    false
                }
                Err(e) => complete_write_error(op, e),
            }
        } else {
            let op = ctx.history.invoke(process, key.as_str(), OpKind::Delete);
            match guarded(&ctx, client.delete(key.clone())).await {
                Ok(_existed) => {
                    op.ok(Ret::Done);
                    last_seen.insert(key, None);
                    false
                }
                Err(e) => complete_write_error(op, e),
            }
        };
        if unknown {
            process += processes;
        }
        think(&mut rng, config.think_max).await;
    }
    TaskResult::default()
}

/// Reads from the nemesis' target (a deposed leader) through a client that knows only that
/// node; without a target, reads through every node.
async fn directed_reader(
    reader: u64,
    client: Client,
    config: RegisterConfig,
    ctx: WorkloadContext,
) -> TaskResult {
    let mut rng = StdRng::seed_from_u64(ctx.seed.wrapping_add(7919 * (reader + 1)));
    let process = DIRECTED_PROCESS_BASE + reader;
    let mut direct: BTreeMap<u64, Client> = BTreeMap::new();
    for _ in 0..OPS_PER_TASK_MAX {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let key = register_key(rng.random_range(0..config.keys));
        let target = ctx
            .shared
            .target()
            .and_then(|id| Some((id, ctx.endpoints.get(&id)?)));
        if let Some((id, endpoint)) = target {
            if let std::collections::btree_map::Entry::Vacant(slot) = direct.entry(id) {
                if let Ok(c) = Client::connect([endpoint.clone()], ctx.client_options.clone()) {
                    slot.insert(c);
                }
            }
        }
        let (use_client, endpoint) = match target {
            Some((id, endpoint)) if direct.contains_key(&id) => (&direct[&id], Some(endpoint)),
            _ => (&client, None),
        };
        let op = ctx.history.invoke(process, key.as_str(), OpKind::Read);
        if endpoint.is_some() {
            WorkloadStats::bump(&ctx.stats.directed_reads);
        }
        match guarded(&ctx, use_client.get(key.clone())).await {
            Ok(v) => {
                op.ok(Ret::Value(to_vec(&v)));
                if let Some(endpoint) = endpoint {
                    WorkloadStats::bump(&ctx.stats.directed_ok);
                    if use_client.leader().as_ref() == Some(endpoint) {
                        WorkloadStats::bump(&ctx.stats.directed_served_by_target);
                    }
                }
            }
            Err(_) => op.fail(),
        }
        think(&mut rng, config.think_max).await;
    }
    TaskResult::default()
}

async fn set_task(
    task: u64,
    processes: u64,
    client: Client,
    config: SetConfig,
    ctx: WorkloadContext,
) -> TaskResult {
    let mut rng = StdRng::seed_from_u64(ctx.seed.wrapping_add(31 * (task + 1)));
    let mut process = task;
    let mut adds = SetAdds::default();
    let mut key = config.key_at(ctx.history.elapsed_ns());
    // The set's value as last seen: `None` = unknown (read it first).
    let mut current: Option<Option<Bytes>> = None;
    let mut n = 0u64;
    let mut element = format!("p{process}-{n}");
    for _ in 0..OPS_PER_TASK_MAX {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let now_key = config.key_at(ctx.history.elapsed_ns());
        if now_key != key {
            key = now_key;
            current = None;
        }
        let key = key.as_str();
        if rng.random_bool(0.05) {
            let op = ctx.history.invoke(process, key, OpKind::StaleRead);
            match guarded(&ctx, client.get_stale(key.to_owned())).await {
                Ok(v) => op.ok(Ret::Value(to_vec(&v))),
                Err(_) => op.fail(),
            }
        }
        let Some(expected) = current.clone() else {
            let op = ctx.history.invoke(process, key, OpKind::Read);
            match guarded(&ctx, client.get(key.to_owned())).await {
                Ok(v) => {
                    op.ok(Ret::Value(to_vec(&v)));
                    current = Some(v);
                }
                Err(_) => op.fail(),
            }
            think(&mut rng, config.think_max).await;
            continue;
        };
        let new = match &expected {
            Some(v) if !v.is_empty() => format!("{},{element}", String::from_utf8_lossy(v)),
            _ => element.clone(),
        };
        let kind = OpKind::Cas {
            expected: to_vec(&expected),
            new: new.clone().into_bytes(),
        };
        let op = ctx.history.invoke(process, key, kind);
        let call = client.compare_and_swap(key.to_owned(), expected, new.clone());
        let next_element = match guarded(&ctx, call).await {
            Ok(CasOutcome::Swapped) => {
                op.ok(Ret::Swapped(true));
                adds.acked.insert(element.clone());
                current = Some(Some(Bytes::from(new)));
                true
            }
            Ok(CasOutcome::Mismatch { current: now }) => {
                // Not applied: retry the same element on the value the cluster reported.
                op.ok(Ret::Swapped(false));
                current = Some(now);
                false
            }
            Err(e) => {
                if complete_write_error(op, e) {
                    adds.unknown.insert(element.clone());
                    process += processes;
                } else {
                    adds.failed.insert(element.clone());
                }
                current = None;
                true
            }
        };
        if next_element {
            n += 1;
            element = format!("p{process}-{n}");
        }
        think(&mut rng, config.think_max).await;
    }
    TaskResult { adds }
}
