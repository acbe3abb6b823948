//! Crash loops with real processes: replicas are `kill -9`ed over and over under a write
//! load, each restarted on its own data directory after a short random delay, and every
//! write a client was told succeeded must read back afterwards.
//!
//! Each cycle is one of three kinds, mixed in a random order (each block of five cycles has
//! two random, two leader and one whole-cluster cycle):
//! - **random**: SIGKILL one replica drawn at random (it may be the leader);
//! - **leader**: SIGKILL the replica every node agrees is the leader;
//! - **whole cluster**: SIGKILL every replica at once (all the signals are sent before any
//!   process is reaped), as a power cut would.
//!
//! Each killed process is restarted on the same data directory after its own random delay
//! ([`RESTART_DELAY_MS`]), and a cycle ends when every replica answers and agrees on a
//! leader. Then the load runs on a healthy cluster for a moment ([`DWELL_MS`]) and the next
//! cycle starts, so no kill ever takes down more than the cycle meant to.
//!
//! The load: [`WRITERS`] clients, each with its own session, put unique values, mostly to new
//! keys of their own and sometimes ([`OVERWRITE_PERCENT`]) to one of their recent keys
//! again; a reader does linearizable reads of acknowledged keys. Every operation goes into a
//! history. A writer has one write in flight at a time, so the writes to a key are ordered.
//!
//! Faults are proven to take effect: a killed process ended by SIGKILL, its pid no longer
//! names it and its client port refuses connections; after the leader is killed (by a
//! leader or whole-cluster cycle, or a random one that hit it), the leader that every node
//! then agrees on holds a higher ballot than the killed one.
//!
//! At the end, with every replica up and the load stopped, every key written is read
//! linearizably and must hold its last acknowledged value, or the value of a later write of
//! unknown outcome; a definitely failed write's value, a value never written, or an older
//! acknowledged value is a failure, and so is an absent key that had an acknowledged write.
//! (An unknown-outcome write *older* than the last acknowledged one may be applied after it
//! and still be linearizable, since its effect may come at any time after it was sent: it is
//! counted and printed as `late`, and the whole history, final reads included, goes through
//! the linearizability checker.) The replicas must then reach the same applied index and
//! each hold, in its local state (stale reads), exactly the values the linearizable reads
//! returned.
//!
//! The test prints a `SUMMARY crash-loop` line (cycles by kind, acknowledged writes checked,
//! unknown outcomes, failures) and requires at least [`ACKED_PER_CYCLE_MIN`] acknowledged
//! writes per cycle.
//!
//! - `KVS_CRASH_CYCLES=N` sets the number of cycles (default [`CYCLES_DEFAULT`], about 90 s
//!   on a 2-core machine); `KVS_CRASH_CYCLES=1000` is a soak.
//! - `KVS_CRASH_SEED=S` replays the random choices (kinds, victims, delays, keys); the seed
//!   is always printed. Timing still differs from run to run.
//!
//! A failing run keeps the cluster directory (node logs and data, and `history.txt`) and
//! names it in the panic message.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use common::*;
use futures::stream::{self, StreamExt};
use kvs_client::{Client, NodeRole};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tests::cluster::{process_start_ticks, wait_for, Cluster, ClusterOptions};
use tests::history::{History, OpKind, Ret};
use tests::linearizability::{check_history, CheckConfig};
use tokio::task::JoinHandle;
use wire::BallotInfo;

/// Environment variable: the number of cycles.
const CYCLES_ENV: &str = "KVS_CRASH_CYCLES";
/// Environment variable: the seed of the random choices.
const SEED_ENV: &str = "KVS_CRASH_SEED";
/// Cycles when [`CYCLES_ENV`] is not set.
const CYCLES_DEFAULT: u64 = 100;
/// The whole run may take this long per cycle (plus [`RUN_SLACK`]) before the test fails.
const CYCLE_TIME_MAX: Duration = Duration::from_secs(6);
const RUN_SLACK: Duration = Duration::from_secs(60);

/// Replicas.
const NODES: usize = 3;
/// Snapshot every this many applied slots, so restarts also load snapshots.
const SNAPSHOT_EVERY: u64 = 500;
/// Writer clients (each its own client and session).
const WRITERS: usize = 4;
/// Share of writes (percent) that overwrite one of the writer's recent keys.
const OVERWRITE_PERCENT: u32 = 20;
/// How many of a writer's most recent keys an overwrite picks from.
const OVERWRITE_WINDOW: usize = 16;
/// Request budget of the load's clients.
const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a write or read that definitely failed (every node refusing fails at once).
const FAILED_OP_PAUSE: Duration = Duration::from_millis(20);
/// Pause between two reads of the reader.
const READ_PAUSE: Duration = Duration::from_millis(10);
/// Each writer stops after this many writes, whatever the test does.
const WRITES_PER_WRITER_MAX: usize = 1_000_000;

/// A killed process is restarted after a delay drawn from this range (milliseconds).
const RESTART_DELAY_MS: (u64, u64) = (20, 400);
/// After the cluster recovered, the load runs this long (milliseconds) before the next kill.
const DWELL_MS: (u64, u64) = (100, 400);
/// Bound on every replica answering and agreeing on a leader after a cycle's restarts.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Pause between two checks of the cluster's state.
const RECOVERY_POLL: Duration = Duration::from_millis(25);
/// Bound on the load tasks finishing once stopped.
const STOP_BOUND: Duration = Duration::from_secs(30);
/// The minimum of acknowledged writes, per cycle.
const ACKED_PER_CYCLE_MIN: u64 = 2;

/// Process id of the reader in the history; writers are `0..WRITERS`.
const READER_PROCESS: u64 = 100;
/// Process id of the final reads in the history.
const FINAL_PROCESS: u64 = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Random,
    Leader,
    Whole,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Leader => "leader",
            Kind::Whole => "whole-cluster",
        }
    }
}

/// The kinds of `cycles` cycles: blocks of five (two random, two leader, one whole-cluster)
/// each shuffled, the last block cut short.
fn plan(cycles: u64, rng: &mut StdRng) -> Vec<Kind> {
    let mut kinds = Vec::new();
    while (kinds.len() as u64) < cycles {
        let mut block = [
            Kind::Random,
            Kind::Random,
            Kind::Leader,
            Kind::Leader,
            Kind::Whole,
        ];
        block.shuffle(rng);
        kinds.extend(block);
    }
    kinds.truncate(cycles as usize);
    kinds
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={raw:?} is not a number: {e}")),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// --- the load ----------------------------------------------------------------------------

/// How a write ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Acked,
    Unknown,
    Failed,
}

/// One write of one writer.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: String,
    end: End,
}

/// The writers and the reader, running until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    writers: Vec<JoinHandle<Vec<Write>>>,
    reader: JoinHandle<(u64, u64)>,
}

impl Load {
    fn start(cluster: &Cluster, seed: u64, history: &History) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let acked_keys = Arc::new(Mutex::new(Vec::<String>::new()));
        let writers = (0..WRITERS)
            .map(|w| {
                let client = client(cluster, LOAD_REQUEST_TIMEOUT);
                let rng = StdRng::seed_from_u64(seed ^ (0x5752_4954_0000 + w as u64));
                tokio::spawn(write_loop(
                    w,
                    client,
                    rng,
                    history.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&acked_keys),
                ))
            })
            .collect();
        let reader = tokio::spawn(read_loop(
            client(cluster, LOAD_REQUEST_TIMEOUT),
            StdRng::seed_from_u64(seed ^ 0x5245_4144),
            history.clone(),
            Arc::clone(&stop),
            acked_keys,
        ));
        Load {
            stop,
            acked,
            writers,
            reader,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Stops the tasks (each finishes its current request) and returns every writer's
    /// writes, in order, and the reader's (ok, failed) counts.
    async fn stop(self, cluster: &Cluster) -> (Vec<Vec<Write>>, (u64, u64)) {
        self.stop.store(true, Ordering::SeqCst);
        let join = async {
            let mut writes = Vec::new();
            for handle in self.writers {
                writes.push(handle.await.expect("writer task panicked"));
            }
            (writes, self.reader.await.expect("reader task panicked"))
        };
        tokio::time::timeout(STOP_BOUND, join)
            .await
            .or_fail(cluster, "stopping the load")
    }
}

async fn write_loop(
    w: usize,
    client: Client,
    mut rng: StdRng,
    history: History,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    acked_keys: Arc<Mutex<Vec<String>>>,
) -> Vec<Write> {
    let mut keys: Vec<String> = Vec::new();
    let mut writes = Vec::new();
    while !stop.load(Ordering::SeqCst) && writes.len() < WRITES_PER_WRITER_MAX {
        let key = if !keys.is_empty() && rng.random_ratio(OVERWRITE_PERCENT, 100) {
            let recent = &keys[keys.len().saturating_sub(OVERWRITE_WINDOW)..];
            recent[rng.random_range(0..recent.len())].clone()
        } else {
            let key = format!("crash/w{w}/k{}", keys.len());
            keys.push(key.clone());
            key
        };
        let value = format!("w{w} write {} {:08x}", writes.len(), rng.random::<u32>());
        let op = history.invoke(
            w as u64,
            key.as_bytes().to_vec(),
            OpKind::Write(value.as_bytes().to_vec()),
        );
        let end = match client.put(key.clone(), value.clone()).await {
            Ok(()) => {
                op.ok(Ret::Done);
                acked.fetch_add(1, Ordering::SeqCst);
                lock(&acked_keys).push(key.clone());
                End::Acked
            }
            Err(e) if e.outcome_unknown() => {
                op.unknown();
                End::Unknown
            }
            Err(_) => {
                op.fail();
                tokio::time::sleep(FAILED_OP_PAUSE).await;
                End::Failed
            }
        };
        writes.push(Write { key, value, end });
    }
    writes
}

/// Linearizable reads of acknowledged keys; returns (ok, failed).
async fn read_loop(
    client: Client,
    mut rng: StdRng,
    history: History,
    stop: Arc<AtomicBool>,
    acked_keys: Arc<Mutex<Vec<String>>>,
) -> (u64, u64) {
    let (mut ok, mut failed) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let key = {
            let keys = lock(&acked_keys);
            (!keys.is_empty()).then(|| keys[rng.random_range(0..keys.len())].clone())
        };
        if let Some(key) = key {
            let op = history.invoke(READER_PROCESS, key.as_bytes().to_vec(), OpKind::Read);
            match client.get(key).await {
                Ok(value) => {
                    op.ok(Ret::Value(value.map(|v| v.to_vec())));
                    ok += 1;
                }
                Err(_) => {
                    // A read has no effect: a failed one is dropped from the check.
                    op.fail();
                    failed += 1;
                    tokio::time::sleep(FAILED_OP_PAUSE).await;
                }
            }
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
    (ok, failed)
}

// --- the cluster's state -----------------------------------------------------------------

/// The leader every node of `ids` answers to, with its ballot (all of `ids` must answer).
async fn agreed_leader_ballot(cluster: &Cluster, ids: &[u64]) -> Option<(u64, BallotInfo)> {
    let all = statuses(cluster, ids).await;
    if all.len() != ids.len() {
        return None;
    }
    let leader = all
        .values()
        .filter(|s| s.role == NodeRole::Leader)
        .max_by_key(|s| s.ballot)?;
    all.values()
        .all(|s| s.id == leader.id || s.leader == Some(leader.id))
        .then_some((leader.id, leader.ballot))
}

/// What every node says of itself, and how each process that is down ended, for failures.
async fn describe(cluster: &Cluster) -> String {
    let ids = cluster.ids();
    let all = statuses(cluster, &ids).await;
    ids.iter()
        .map(|&id| match all.get(&id) {
            Some(s) => format!(
                "n{id}: {} ballot {} leader {:?} commit {} applied {}",
                s.role, s.ballot, s.leader, s.commit_index, s.applied_index
            ),
            None if cluster.is_running(id) => format!("n{id}: running, no status answer"),
            None => format!(
                "n{id}: NOT RUNNING (exited {:?})",
                cluster.last_exit(id).map(|s| s.to_string())
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until every node answers and agrees on a leader whose ballot is above `above` (if
/// given); returns the leader and its ballot.
async fn wait_recovered(
    cluster: &Cluster,
    above: Option<BallotInfo>,
    what: &str,
) -> (u64, BallotInfo) {
    let ids = cluster.ids();
    let found = wait_for(what, RECOVERY_BOUND, RECOVERY_POLL, || async {
        agreed_leader_ballot(cluster, &ids)
            .await
            .filter(|&(_, ballot)| above.is_none_or(|min| ballot > min))
    })
    .await;
    match found {
        Ok(found) => found,
        Err(e) => {
            let state = describe(cluster).await;
            fail(cluster, format!("{e:#}; nodes now: {state}"))
        }
    }
}

/// Fails unless every node's process is alive: a replica that exited by itself crashed.
fn check_all_running(cluster: &Cluster, when: &str) {
    for id in cluster.ids() {
        check!(
            cluster,
            cluster.is_running(id),
            "node {id} is not running {when}: it exited by itself with {:?}",
            cluster.last_exit(id)
        );
    }
}

/// Whether a TCP connection to `addr` is refused.
fn refuses(addr: std::net::SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// SIGKILLs every node at once (every signal sent before any process is reaped), reaps them,
/// and proves each is gone: ended by SIGKILL, its pid no longer naming it, its client port
/// refusing. Returns the pids.
fn kill_whole_cluster(cluster: &Cluster) -> anyhow::Result<Vec<u32>> {
    let mut targets = Vec::new();
    for id in cluster.ids() {
        let pid = cluster.pid(id).with_context(|| {
            format!(
                "node {id} is not running (exited {:?})",
                cluster.last_exit(id)
            )
        })?;
        targets.push((id, pid, process_start_ticks(pid)));
    }
    for &(id, pid, _) in &targets {
        let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our unreaped child,
        // so it cannot name another process.
        let rc = unsafe { libc::kill(raw, libc::SIGKILL) };
        ensure!(
            rc == 0,
            "cannot SIGKILL node {id} (pid {pid}): {}",
            io::Error::last_os_error()
        );
    }
    for &(id, pid, started) in &targets {
        cluster.kill(id)?; // Reaps it (the second SIGKILL finds a dead process).
        let status = cluster
            .last_exit(id)
            .context("a reaped node has a status")?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "node {id} (pid {pid}) did not end by SIGKILL: {status:?}"
        );
        let now = process_start_ticks(pid);
        ensure!(
            now.is_none() || now != started,
            "node {id}'s pid {pid} still names the same process after SIGKILL and reaping"
        );
        let addr = cluster.layout().client_listen[&id];
        ensure!(
            refuses(addr),
            "node {id} was SIGKILLed and reaped, yet {addr} did not refuse a connection"
        );
    }
    Ok(targets.into_iter().map(|(_, pid, _)| pid).collect())
}

// --- the cycles ---------------------------------------------------------------------------

/// What the cycles did.
#[derive(Debug, Default)]
struct Figures {
    by_kind: BTreeMap<Kind, u64>,
    kills_verified: u64,
    leader_kills: u64,
    leader_changes: u64,
    /// Cycles that killed only followers, after which the leader's ballot had changed
    /// anyway (a restarted follower started an election).
    follower_kills_with_new_ballot: u64,
    recovery_max: Duration,
    recovery_total: Duration,
}

/// One cycle: kill, restart after random delays, wait for recovery (and a higher ballot if
/// the leader was killed), then let the load run on the healthy cluster.
async fn cycle(
    cluster: &Cluster,
    n: u64,
    kind: Kind,
    rng: &mut StdRng,
    figures: &mut Figures,
    load: &Load,
) {
    let ids = cluster.ids();
    check_all_running(cluster, &format!("before cycle {n}"));
    let (leader, ballot) =
        wait_recovered(cluster, None, &format!("a leader before cycle {n}")).await;
    let victims: Vec<u64> = match kind {
        Kind::Random => vec![ids[rng.random_range(0..ids.len())]],
        Kind::Leader => vec![leader],
        Kind::Whole => ids.clone(),
    };
    let leader_killed = victims.contains(&leader);
    let mut delays: Vec<(Duration, u64)> = victims
        .iter()
        .map(|&v| {
            let ms = rng.random_range(RESTART_DELAY_MS.0..=RESTART_DELAY_MS.1);
            (Duration::from_millis(ms), v)
        })
        .collect();
    delays.sort();

    let acked_before = load.acked();
    let killed_at = Instant::now();
    let evidence = tokio::task::block_in_place(|| match kind {
        Kind::Random | Kind::Leader => cluster
            .kill_verified(victims[0])
            .map(|e| vec![e.pid])
            .with_context(|| format!("kill -9 of node {}", victims[0])),
        Kind::Whole => kill_whole_cluster(cluster).context("kill -9 of every node"),
    });
    let pids = evidence.or_fail(cluster, &format!("cycle {n} ({})", kind.name()));
    figures.kills_verified += pids.len() as u64;

    for &(delay, v) in &delays {
        tokio::time::sleep_until((killed_at + delay).into()).await;
        check!(
            cluster,
            !cluster.is_running(v),
            "node {v} is running again before its restart"
        );
        cluster
            .restart(v)
            .or_fail(cluster, &format!("restart of node {v} in cycle {n}"));
    }
    let above = leader_killed.then_some(ballot);
    let what = if leader_killed {
        format!(
            "every node to agree on a leader with a ballot above {ballot} (held by the killed \
             leader n{leader}) after cycle {n} ({})",
            kind.name()
        )
    } else {
        format!(
            "every node to agree on a leader after cycle {n} ({})",
            kind.name()
        )
    };
    let (new_leader, new_ballot) = wait_recovered(cluster, above, &what).await;
    let recovery = killed_at.elapsed();
    *figures.by_kind.entry(kind).or_default() += 1;
    figures.leader_kills += u64::from(leader_killed);
    figures.leader_changes += u64::from(new_leader != leader);
    figures.follower_kills_with_new_ballot += u64::from(!leader_killed && new_ballot != ballot);
    figures.recovery_max = figures.recovery_max.max(recovery);
    figures.recovery_total += recovery;
    eprintln!(
        "  cycle {n} {}: killed {victims:?} (pids {pids:?}), restarted after {:?} ms; leader \
         n{leader} {ballot} -> n{new_leader} {new_ballot} after {recovery:.0?}; acked +{}",
        kind.name(),
        delays
            .iter()
            .map(|(d, _)| d.as_millis())
            .collect::<Vec<_>>(),
        load.acked() - acked_before
    );

    let dwell = rng.random_range(DWELL_MS.0..=DWELL_MS.1);
    tokio::time::sleep(Duration::from_millis(dwell)).await;
}

// --- the final checks --------------------------------------------------------------------

/// What the final reads showed.
#[derive(Debug, Default)]
struct Verdicts {
    keys: usize,
    acked_checked: usize,
    unknown_applied: usize,
    /// Unknown-outcome writes applied after a later acknowledged write of the same key.
    late: Vec<String>,
    problems: Vec<String>,
}

/// Reads every key linearizably (recorded in `history`), returning what each holds.
async fn final_reads(
    cluster: &Cluster,
    history: &History,
    keys: Vec<String>,
) -> BTreeMap<String, Option<Bytes>> {
    let reader = client(cluster, CHECK_TIMEOUT);
    let results: Vec<_> = stream::iter(keys)
        .map(|key| {
            let reader = reader.clone();
            async move {
                let op = history.invoke(FINAL_PROCESS, key.as_bytes().to_vec(), OpKind::Read);
                let got = reader.get(key.clone()).await;
                match &got {
                    Ok(value) => op.ok(Ret::Value(value.as_ref().map(|v| v.to_vec()))),
                    Err(_) => op.fail(),
                }
                (key, got)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut values = BTreeMap::new();
    for (key, got) in results {
        values.insert(
            key.clone(),
            got.or_fail(cluster, &format!("final linearizable read of {key:?}")),
        );
    }
    values
}

/// Checks each key's final value against its writes (in order).
fn judge(writes: &[Vec<Write>], values: &BTreeMap<String, Option<Bytes>>) -> Verdicts {
    let mut by_key: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for write in writes.iter().flatten() {
        by_key.entry(&write.key).or_default().push(write);
    }
    let mut v = Verdicts {
        keys: by_key.len(),
        ..Verdicts::default()
    };
    for (key, ws) in by_key {
        let got = values.get(key).cloned().flatten();
        let last_acked = ws.iter().rposition(|w| w.end == End::Acked);
        v.acked_checked += ws.iter().filter(|w| w.end == End::Acked).count();
        let Some(got) = got else {
            if let Some(a) = last_acked {
                v.problems.push(format!(
                    "{key:?} is absent, yet its write #{a} {:?} was acknowledged",
                    ws[a].value
                ));
            }
            continue;
        };
        let got = String::from_utf8_lossy(&got).into_owned();
        let Some(pos) = ws.iter().position(|w| w.value == got) else {
            v.problems.push(format!(
                "{key:?} holds {got:?}, a value never written to it"
            ));
            continue;
        };
        let described = format!("{key:?} holds {got:?} (write #{pos} of {})", ws.len());
        match (ws[pos].end, last_acked) {
            (End::Failed, _) => v
                .problems
                .push(format!("{described}, a write that definitely failed")),
            (End::Acked, Some(a)) if pos == a => {}
            (End::Acked, Some(a)) => v.problems.push(format!(
                "{described}, an older acknowledged value: the acknowledged write #{a} {:?} \
                 was lost",
                ws[a].value
            )),
            (End::Acked, None) => unreachable!("an acknowledged write makes last_acked Some"),
            (End::Unknown, Some(a)) if pos < a => v.late.push(format!(
                "{described}, of unknown outcome, applied after the acknowledged write #{a}"
            )),
            (End::Unknown, _) => v.unknown_applied += 1,
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_no_acknowledged_write() {
    let started = Instant::now();
    let cycles = env_u64(CYCLES_ENV).unwrap_or(CYCLES_DEFAULT);
    assert!(cycles >= 1, "{CYCLES_ENV} must be at least 1");
    let seed = env_u64(SEED_ENV).unwrap_or_else(rand::random);
    eprintln!("crash loop: {cycles} cycles, {SEED_ENV}={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds = plan(cycles, &mut rng);
    let run_bound = RUN_SLACK + CYCLE_TIME_MAX * cycles as u32;

    let cluster = start(ClusterOptions {
        nodes: NODES,
        proxies: false,
        snapshot_every: Some(SNAPSHOT_EVERY),
        extra_args: fast_timing(),
        ..ClusterOptions::default()
    });
    let ids = cluster.ids();
    wait_recovered(&cluster, None, "a first leader").await;
    let history = History::new();
    let load = Load::start(&cluster, seed, &history);

    let mut figures = Figures::default();
    for (i, &kind) in kinds.iter().enumerate() {
        check!(
            &cluster,
            started.elapsed() < run_bound,
            "the run took longer than {run_bound:?}: {i} of {cycles} cycles done"
        );
        cycle(&cluster, i as u64 + 1, kind, &mut rng, &mut figures, &load).await;
    }
    let cycles_took = started.elapsed();

    // Every replica is up and agrees on a leader (the last cycle waited for it).
    check_all_running(&cluster, "after the last cycle");
    let (writes, (reads_ok, reads_failed)) = load.stop(&cluster).await;
    let applied = wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    let keys: Vec<String> = {
        let mut keys: Vec<String> = writes.iter().flatten().map(|w| w.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let values = final_reads(&cluster, &history, keys).await;
    let verdicts = judge(&writes, &values);
    let count = |end: End| writes.iter().flatten().filter(|w| w.end == end).count();
    let (acked, unknown, failed) = (count(End::Acked), count(End::Unknown), count(End::Failed));
    let overwrites = writes.iter().flatten().count() - verdicts.keys;

    let report = check_history(
        &history,
        &CheckConfig {
            budget_time_max: Some(Duration::from_secs(120)),
            ..CheckConfig::default()
        },
    );
    let linearizable = report.is_ok();
    if !verdicts.problems.is_empty() || !linearizable {
        let root = cluster.keep_data();
        let _ = history.dump_to_file(root.join("history.txt"));
        let _ = report.write_to_file(root.join("linearizability.txt"));
        let n = verdicts.problems.len();
        fail(
            &cluster,
            format!(
                "{n} keys read back wrong after {cycles} crash cycles (seed {seed}; acked=\
                 {acked} unknown={unknown} failed={failed}); linearizability: {:?}; first \
                 ones:\n{}",
                report.verdict(),
                verdicts.problems[..n.min(20)].join("\n")
            ),
        );
    }

    // The replicas converged: each holds, locally, what the linearizable reads returned.
    for &id in &ids {
        verify_node_holds(&cluster, id, &values).await;
    }

    let by_kind = |k: Kind| figures.by_kind.get(&k).copied().unwrap_or(0);
    let mean_recovery = figures.recovery_total / (cycles as u32);
    eprintln!(
        "SUMMARY crash-loop: cycles={cycles} (random={} leader={} whole-cluster={}), kills \
         verified={}, leader kills={} (higher ballot after each), leader changes={}, new ballot \
         after a follower kill={}, recovery mean={mean_recovery:.0?} max={:.0?}; writes acked={acked} (checked={}) unknown=\
         {unknown} (applied={}, late={}) failed={failed} overwrites={overwrites} keys={}; \
         reads ok={reads_ok} failed={reads_failed}; history linearizable ({} ops); replicas \
         converged at applied index {applied}; failures=0; seed={seed} cycles took \
         {cycles_took:.1?} elapsed={:.1?}",
        by_kind(Kind::Random),
        by_kind(Kind::Leader),
        by_kind(Kind::Whole),
        figures.kills_verified,
        figures.leader_kills,
        figures.leader_changes,
        figures.follower_kills_with_new_ballot,
        figures.recovery_max,
        verdicts.acked_checked,
        verdicts.unknown_applied,
        verdicts.late.len(),
        verdicts.keys,
        history.len(),
        started.elapsed()
    );
    for late in &verdicts.late {
        eprintln!("  late: {late}");
    }

    // The faults took effect and the load was served.
    let planned = |k: Kind| kinds.iter().filter(|&&x| x == k).count() as u64;
    for kind in [Kind::Random, Kind::Leader, Kind::Whole] {
        check!(
            &cluster,
            by_kind(kind) == planned(kind),
            "{} cycles of kind {} ran, {} planned",
            by_kind(kind),
            kind.name(),
            planned(kind)
        );
    }
    let expected_kills =
        planned(Kind::Random) + planned(Kind::Leader) + planned(Kind::Whole) * NODES as u64;
    check!(
        &cluster,
        figures.kills_verified == expected_kills,
        "{} kills verified, {expected_kills} made",
        figures.kills_verified
    );
    check!(
        &cluster,
        figures.leader_kills >= planned(Kind::Leader) + planned(Kind::Whole),
        "the leader was killed {} times, fewer than the leader and whole-cluster cycles",
        figures.leader_kills
    );
    let acked_min = ACKED_PER_CYCLE_MIN * cycles;
    check!(
        &cluster,
        acked as u64 >= acked_min,
        "only {acked} writes were acknowledged in {cycles} cycles (want at least {acked_min})"
    );
    check!(
        &cluster,
        verdicts.acked_checked == acked,
        "{} acknowledged writes checked of {acked}",
        verdicts.acked_checked
    );
}

/// The final check fails on every way an acknowledged write can be lost or changed, and
/// accepts what unknown outcomes allow.
#[test]
fn the_final_check_catches_lost_and_changed_writes() {
    let w = |key: &str, value: &str, end: End| Write {
        key: key.to_owned(),
        value: value.to_owned(),
        end,
    };
    let writes = vec![vec![
        w("ok", "a1", End::Acked),
        w("ok", "a2", End::Acked),
        w("unknown-later", "b1", End::Acked),
        w("unknown-later", "b2", End::Unknown),
        w("late", "c1", End::Unknown),
        w("late", "c2", End::Acked),
        w("never-acked", "d1", End::Unknown),
        w("lost", "e1", End::Acked),
        w("older", "f1", End::Acked),
        w("older", "f2", End::Acked),
        w("failed", "g1", End::Acked),
        w("failed", "g2", End::Failed),
        w("foreign", "h1", End::Acked),
    ]];
    let held = |pairs: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<Bytes>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(|v| Bytes::from(v.to_owned()))))
            .collect()
    };
    let values = held(&[
        ("ok", Some("a2")),
        ("unknown-later", Some("b2")),
        ("late", Some("c1")),
        ("never-acked", None),
        ("lost", None),
        ("older", Some("f1")),
        ("failed", Some("g2")),
        ("foreign", Some("x")),
    ]);
    let v = judge(&writes, &values);
    assert_eq!((v.keys, v.acked_checked), (8, 9));
    assert_eq!((v.unknown_applied, v.late.len()), (1, 1), "{v:?}");
    let problems = v.problems.join("\n");
    assert_eq!(v.problems.len(), 4, "{problems}");
    for key in ["lost", "older", "failed", "foreign"] {
        assert!(problems.contains(&format!("{key:?}")), "{problems}");
    }
}
