//! Running one nemesis scenario end to end.
//!
//! [`run`] starts a cluster, lets a [`Workload`] and a [`Nemesis`] run together for the fault
//! time, heals every fault, resumes or restarts every node that is down, waits (bounded) for
//! the cluster to serve writes again, reads every key linearizably, runs the linearizability
//! checker and the workload's own checks, and prints a summary. When the scenario fails, it
//! keeps the cluster's directory (node data and logs), writes the history, the checker report,
//! the fault log and the summary into it, and panics naming it ([`try_run`] returns the
//! [`Failure`] instead).
//!
//! Besides the checker's verdict, a scenario fails when
//! - a fault did not take effect ([`FaultChecks`]: a cut link carried traffic, a leader kept
//!   its leadership, a killed node was not gone), or a scenario built on leader faults or
//!   kills never got to verify one;
//! - the cluster served too little ([`served`]): fewer successful operations, acknowledged
//!   writes, or of either inside the fault windows, than [`Scenario::minimums`] requires.
//!
//! Environment: `NEMESIS_SECS=N` sets the fault time of every scenario (default 20 s, for a
//! soak use more); `NEMESIS_SEED=S` fixes the seed of every random choice (the seed used is
//! always printed).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kvs_client::{Client, ClientOptions};
use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterOptions};
use crate::history::{format_value, History, OpKind, Outcome, ProcessId, Ret};
use crate::linearizability::{check_history, CheckConfig, CheckReport, Verdict};
use crate::nemesis::{
    self, Fault, FaultChecks, FaultEvent, FaultLog, FaultWindow, Nemesis, NemesisConfig,
    NemesisShared, ProbeStats, Schedule,
};
use crate::workload::{self, SetCheck, Workload, WorkloadContext, WorkloadStats};

pub mod served;

pub use served::{Minimums, Served, ServedReport};

/// Default fault time of a scenario.
pub const DEFAULT_FAULT_TIME: Duration = Duration::from_secs(20);

/// Environment variable setting the fault time of every scenario, in seconds.
pub const SECS_ENV: &str = "NEMESIS_SECS";

/// Environment variable fixing the random seed.
pub const SEED_ENV: &str = "NEMESIS_SEED";

/// Process id of the final reads.
const FINAL_PROCESS: ProcessId = 990_000;

/// Key written to find out whether the cluster serves writes (not recorded in the history).
const READY_KEY: &str = "nemesis/ready";

/// Bound on waiting for the first leader, and for the recovery after the faults.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on the final reads of all keys together.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(30);

/// Wall-clock budget of the linearizability check (at least; it grows with the fault time).
const CHECK_TIME_MIN: Duration = Duration::from_secs(60);

/// What the checker is expected to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The history must be linearizable, and every other check must pass.
    Linearizable,
    /// The checker must find a violation (a planted bug); the other checks must pass.
    Violation,
}

/// A scenario: cluster shape, workload, faults and expectations.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name, for messages.
    pub name: String,
    /// Cluster size.
    pub nodes: usize,
    /// What the clients do.
    pub workload: Workload,
    /// What the nemesis does.
    pub schedule: Schedule,
    /// How long each fault is held, min..max.
    pub hold: (Duration, Duration),
    /// Fault-free time before each fault, min..max.
    pub quiet: (Duration, Duration),
    /// How long the workload and the nemesis run; `None`: [`SECS_ENV`] or
    /// [`DEFAULT_FAULT_TIME`].
    pub fault_time: Option<Duration>,
    /// `(probability, (min_ms, max_ms))` of random acceptor failures in the servers.
    pub acceptor_failures: Option<(f64, (u64, u64))>,
    /// `--snapshot-every N` for the servers (small values exercise snapshots and catch-up by
    /// snapshot under faults); `None`: the server's default.
    pub snapshot_every: Option<u64>,
    /// Start every server with the planted bug `--unsafe-local-reads`.
    pub unsafe_local_reads: bool,
    /// What the checker must say.
    pub expect: Expect,
    /// Client options of the workload.
    pub client_options: ClientOptions,
    /// The least the cluster must serve in [`DEFAULT_FAULT_TIME`] of faults (scaled to the
    /// fault time used); see [`served`].
    pub minimums: Minimums,
    /// Start the cluster with fake network faults (recorded, not applied), to show that the
    /// scenario's checks catch a fault without effect. See
    /// [`ClusterOptions::fake_network_faults`].
    pub fake_network_faults: bool,
    /// Run the cluster with TLS everywhere ([`ClusterOptions::tls`]): every client of the
    /// scenario (workload, nemesis, checks) then connects with the cluster's CA and client
    /// certificate.
    pub tls: bool,
}

impl Scenario {
    /// A scenario with the suite's defaults: faults held 1.5–3.5 s after 0.5–1.5 s of quiet,
    /// clients with a 2.5 s request timeout, linearizability expected, no minimum of served
    /// operations (set [`Scenario::minimums`]).
    pub fn new(name: &str, nodes: usize, workload: Workload, schedule: Schedule) -> Scenario {
        Scenario {
            name: name.to_owned(),
            nodes,
            workload,
            schedule,
            hold: (Duration::from_millis(1500), Duration::from_millis(3500)),
            quiet: (Duration::from_millis(500), Duration::from_millis(1500)),
            fault_time: None,
            acceptor_failures: None,
            snapshot_every: None,
            unsafe_local_reads: false,
            expect: Expect::Linearizable,
            client_options: ClientOptions {
                request_timeout: Duration::from_millis(2500),
                connect_timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            },
            minimums: Minimums::default(),
            fake_network_faults: false,
            tls: false,
        }
    }
}

/// Every figure of a finished scenario.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Scenario name.
    pub name: String,
    /// The seed used.
    pub seed: u64,
    /// Fault time used.
    pub fault_time: Duration,
    /// Wall-clock time of the whole scenario (start to verdict).
    pub elapsed: Duration,
    /// Operations invoked (workload, probes and final reads).
    pub ops: usize,
    /// Operations that completed ok (stale reads included).
    pub ok: usize,
    /// Operations that definitely failed.
    pub fail: usize,
    /// Operations with an unknown outcome.
    pub unknown: usize,
    /// Stale reads invoked (excluded from the check).
    pub stale_reads: usize,
    /// What the workload got served, and the minimums required.
    pub served: ServedReport,
    /// What the nemesis verified about its faults' effects.
    pub checks: FaultChecks,
    /// Every nemesis event.
    pub faults: Vec<FaultEvent>,
    /// Faults injected by the nemesis.
    pub faults_injected: usize,
    /// Acceptor failures the servers injected themselves (from their status).
    pub acceptor_failures: u64,
    /// Time the checker took.
    pub checker_time: Duration,
    /// The checker's overall verdict, one line.
    pub verdict: String,
    /// Whether the checker found the history linearizable.
    pub linearizable: bool,
    /// Whether the checker found a violation (as opposed to exhausting its budget).
    pub violation_found: bool,
    /// The set workload's final check.
    pub set_check: Option<SetCheck>,
    /// Old-leader probes.
    pub probes: ProbeStats,
    /// Directed reads (sent, ok, answered by the deposed node itself).
    pub directed: (u64, u64, u64),
    /// Problems other than the checker's verdict (crashes, no recovery, lost set adds, ...).
    pub problems: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "=== scenario {} (seed {}) ===", self.name, self.seed)?;
        writeln!(
            f,
            "duration: {:.1}s total, {:.1}s of workload and faults",
            self.elapsed.as_secs_f64(),
            self.fault_time.as_secs_f64()
        )?;
        writeln!(
            f,
            "ops invoked: {}  ok: {}  fail: {}  unknown: {}  stale reads: {}",
            self.ops, self.ok, self.fail, self.unknown, self.stale_reads
        )?;
        writeln!(f, "{}", self.served)?;
        writeln!(
            f,
            "faults injected: {} (nemesis) + {} acceptor failures (servers)",
            self.faults_injected, self.acceptor_failures
        )?;
        writeln!(f, "fault checks: {}", self.checks)?;
        for event in &self.faults {
            writeln!(f, "  {event}")?;
        }
        if self.probes != ProbeStats::default() {
            let p = &self.probes;
            writeln!(
                f,
                "old-leader probes: {} rounds, {} fresh, {} refused, {} STALE, {} skipped",
                p.rounds, p.fresh, p.failed, p.stale, p.skipped
            )?;
        }
        if self.directed != (0, 0, 0) {
            writeln!(
                f,
                "directed reads at the deposed leader: {} sent, {} ok, {} answered by it",
                self.directed.0, self.directed.1, self.directed.2
            )?;
        }
        if let Some(set) = &self.set_check {
            writeln!(f, "set: {set}")?;
        }
        writeln!(
            f,
            "checker: {} in {:.3}s",
            self.verdict,
            self.checker_time.as_secs_f64()
        )?;
        if self.problems.is_empty() {
            writeln!(f, "problems: none")
        } else {
            writeln!(f, "problems:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}

/// The seed: [`SEED_ENV`] if set, else random.
pub fn seed_from_env() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// The fault time: [`SECS_ENV`] if set, else `default`.
pub fn fault_time_from_env(default: Duration) -> Duration {
    match std::env::var(SECS_ENV) {
        Ok(s) => Duration::from_secs(
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SECS_ENV}={s:?} is not a number of seconds")),
        ),
        Err(_) => default,
    }
}

/// A failed scenario.
#[derive(Debug)]
pub struct Failure {
    /// Everything measured.
    pub summary: Summary,
    /// Why it failed, one reason each.
    pub reasons: Vec<String>,
    /// The kept directory with the history, checker report, fault log, summary and node logs.
    pub evidence: PathBuf,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario {} FAILED (seed {}): {}; evidence (history.txt, check.txt, faults.txt, \
             summary.txt, node-N.log, node data) kept in {}",
            self.summary.name,
            self.summary.seed,
            self.reasons.join("; "),
            self.evidence.display()
        )
    }
}

/// Runs `scenario` (see the [module docs](self)) and returns its summary. Panics, keeping
/// the evidence, if it fails.
pub fn run(scenario: Scenario) -> Summary {
    match try_run(scenario) {
        Ok(summary) => summary,
        Err(failure) => panic!("{failure}"),
    }
}

/// Runs `scenario` like [`run`], returning its failure instead of panicking.
pub fn try_run(scenario: Scenario) -> Result<Summary, Box<Failure>> {
    let seed = seed_from_env();
    let fault_time = scenario
        .fault_time
        .unwrap_or_else(|| fault_time_from_env(DEFAULT_FAULT_TIME));
    eprintln!(
        "scenario {}: seed {seed} (replay with {SEED_ENV}={seed}), {:.0}s of faults",
        scenario.name,
        fault_time.as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run_async(scenario, seed, fault_time))
}

/// Everything gathered while running, for the verdict and the evidence.
struct RunState {
    cluster: Arc<Cluster>,
    history: History,
    log: FaultLog,
    report: Option<CheckReport>,
    summary: Summary,
    /// The workload's run, `(start, end)` on the history's clock, once it ended.
    workload_span: Option<(u64, u64)>,
}

async fn run_async(
    mut scenario: Scenario,
    seed: u64,
    fault_time: Duration,
) -> Result<Summary, Box<Failure>> {
    let started = Instant::now();
    let mut extra_args: Vec<String> = ["--election-timeout-ms", "150..300", "--heartbeat-ms", "30"]
        .map(str::to_owned)
        .to_vec();
    if scenario.unsafe_local_reads {
        extra_args.push("--unsafe-local-reads".to_owned());
    }
    let options = ClusterOptions {
        nodes: scenario.nodes,
        acceptor_fail_prob: scenario.acceptor_failures.map(|(p, _)| p),
        acceptor_down_ms: scenario.acceptor_failures.map(|(_, d)| d),
        snapshot_every: scenario.snapshot_every,
        extra_args,
        fake_network_faults: scenario.fake_network_faults,
        tls: scenario.tls,
        ..ClusterOptions::default()
    };
    let cluster = Arc::new(Cluster::start(options).expect("start the cluster"));
    scenario.client_options.tls = cluster.client_options().tls;
    let history = History::new();
    let log = FaultLog::new(&history);
    let mut outcome = RunState {
        cluster: Arc::clone(&cluster),
        history: history.clone(),
        log: log.clone(),
        report: None,
        summary: Summary {
            name: scenario.name.clone(),
            seed,
            fault_time,
            elapsed: Duration::ZERO,
            ops: 0,
            ok: 0,
            fail: 0,
            unknown: 0,
            stale_reads: 0,
            served: ServedReport::default(),
            checks: FaultChecks::default(),
            faults: Vec::new(),
            faults_injected: 0,
            acceptor_failures: 0,
            checker_time: Duration::ZERO,
            verdict: "not run".to_owned(),
            linearizable: false,
            violation_found: false,
            set_check: None,
            probes: ProbeStats::default(),
            directed: (0, 0, 0),
            problems: Vec::new(),
        },
        workload_span: None,
    };
    if let Err(e) = drive(&scenario, seed, fault_time, &mut outcome).await {
        outcome.summary.problems.push(format!("{e:#}"));
    }
    outcome.summary.elapsed = started.elapsed();
    finish(&scenario, outcome)
}

/// Everything from "cluster started" to "checker ran". Errors are problems of the scenario.
async fn drive(
    scenario: &Scenario,
    seed: u64,
    fault_time: Duration,
    out: &mut RunState,
) -> anyhow::Result<()> {
    let cluster = Arc::clone(&out.cluster);
    let history = out.history.clone();
    let endpoints: std::collections::BTreeMap<u64, String> = cluster
        .ids()
        .into_iter()
        .map(|id| Ok((id, cluster.client_endpoint(id)?)))
        .collect::<anyhow::Result<_>>()?;
    let admin = Client::connect(endpoints.values().cloned(), scenario.client_options.clone())?;
    nemesis::wait_writable(&admin, READY_KEY, READY_TIMEOUT)
        .await
        .context("the new cluster never served a write")?;

    let shared = Arc::new(NemesisShared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WorkloadStats::default());
    let ctx = WorkloadContext {
        history: history.clone(),
        endpoints: endpoints.clone(),
        client_options: scenario.client_options.clone(),
        shared: Arc::clone(&shared),
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
        seed,
    };
    let workload_start_ns = history.elapsed_ns();
    let tasks = workload::spawn(&scenario.workload, &ctx)?;
    let nemesis = Nemesis::new(
        Arc::clone(&cluster),
        NemesisConfig {
            schedule: scenario.schedule.clone(),
            hold: scenario.hold,
            quiet: scenario.quiet,
            seed: seed.rotate_left(17),
            client_options: scenario.client_options.clone(),
        },
        &history,
        out.log.clone(),
        Arc::clone(&shared),
    )?;
    let deadline = Instant::now() + fault_time;
    let mut nemesis_task = tokio::spawn(nemesis.run(deadline));
    // The nemesis ends by the deadline, plus one bounded leader search and probe at most.
    let nemesis_result =
        tokio::time::timeout_at(deadline + Duration::from_secs(30), &mut nemesis_task).await;
    if nemesis_result.is_err() {
        nemesis_task.abort(); // It must not inject anything once the faults are over.
    }
    tokio::time::sleep_until(deadline).await;
    stop.store(true, Ordering::Relaxed);
    let join_bound = scenario.client_options.request_timeout + Duration::from_secs(6);
    let (adds, aborted) = workload::join(tasks, join_bound).await;
    out.workload_span = Some((workload_start_ns, history.elapsed_ns()));
    if aborted > 0 {
        out.summary.problems.push(format!(
            "{aborted} workload tasks did not stop within {join_bound:?}"
        ));
    }
    match nemesis_result {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => out.summary.problems.push(format!("nemesis: {e:#}")),
        Ok(Err(e)) => out.summary.problems.push(format!("nemesis task: {e}")),
        Err(_) => out
            .summary
            .problems
            .push("nemesis overran its deadline".into()),
    }
    let overruns = WorkloadStats::get(&stats.overruns);
    if overruns > 0 {
        out.summary.problems.push(format!(
            "{overruns} client calls ran past their request timeout by more than 3s"
        ));
    }

    // Heal everything and bring every node back.
    let leaks = cluster.heal_all().leaks();
    if !leaks.is_empty() {
        out.summary.problems.push(format!(
            "a cut in force at the end did not take effect: {}",
            leaks.join("; ")
        ));
    }
    let killed = shared.killed();
    let mut revived = Vec::new();
    for id in cluster.ids() {
        if cluster.is_paused(id) {
            cluster.resume(id)?;
            revived.push(format!("resumed n{id}"));
        }
        if !cluster.is_running(id) {
            let exit = cluster.last_exit(id);
            let by_us =
                exit.and_then(|e| e.signal()) == Some(libc::SIGKILL) && killed.contains(&id);
            if !by_us {
                out.summary.problems.push(format!(
                    "node {id} exited on its own: {exit:?} (see node-{id}.log)"
                ));
            }
            cluster.restart(id)?;
            revived.push(format!("restarted n{id}"));
        }
    }
    out.log.heal(format!(
        "end of faults: healed every link{}{}",
        if revived.is_empty() { "" } else { "; " },
        revived.join(", ")
    ));
    let fresh = Client::connect(endpoints.values().cloned(), scenario.client_options.clone())?;
    let recovered_at = Instant::now();
    let recovered = nemesis::wait_writable(&fresh, READY_KEY, READY_TIMEOUT).await;
    match &recovered {
        Ok(()) => out.log.note(format!(
            "cluster serves writes again after {:.2}s",
            recovered_at.elapsed().as_secs_f64()
        )),
        Err(e) => out
            .summary
            .problems
            .push(format!("no recovery after healing: {e:#}")),
    }

    // Final linearizable reads of every key, recorded in the history.
    let mut keys: BTreeSet<String> = scenario.workload.keys().into_iter().collect();
    for op in history.ops() {
        keys.insert(String::from_utf8_lossy(&op.key).into_owned());
    }
    let final_values = final_reads(&fresh, &history, &keys).await;
    for key in &keys {
        if !final_values.contains_key(key) {
            out.summary.problems.push(format!(
                "final linearizable read of {key:?} never succeeded"
            ));
        }
    }

    // The servers' own acceptor failures.
    let status = nemesis::status_client(&cluster)?;
    let statuses = nemesis::statuses(&cluster, &status, &cluster.ids()).await;
    out.summary.acceptor_failures = statuses.iter().map(|s| s.acceptor_failures).sum();
    if scenario.acceptor_failures.is_some() {
        let per_node: Vec<String> = statuses
            .iter()
            .map(|s| {
                format!(
                    "n{}: {} failures / {} recoveries",
                    s.id, s.acceptor_failures, s.acceptor_recoveries
                )
            })
            .collect();
        out.log
            .note(format!("acceptor failures: {}", per_node.join(", ")));
        if out.summary.acceptor_failures == 0 {
            out.summary
                .problems
                .push("no acceptor failure happened: the scenario tested nothing".into());
        }
    }

    // Workload-specific checks.
    if let Workload::Set(config) = &scenario.workload {
        let mut elements = Vec::new();
        for (key, value) in &final_values {
            if config.owns(key) {
                elements.extend(workload::parse_set(value.as_deref()));
            }
        }
        let check = adds.check_final(&elements);
        if !check.is_ok() {
            out.summary
                .problems
                .push(format!("set check failed: {check}"));
        }
        if adds.acked.is_empty() {
            out.summary
                .problems
                .push("no add was acknowledged: the set scenario tested nothing".into());
        }
        out.summary.set_check = Some(check);
    }
    out.summary.checks = shared.checks();
    out.summary.problems.extend(
        out.summary
            .checks
            .failures
            .iter()
            .map(|f| format!("fault check failed: {f}")),
    );
    let injected = out.log.faults_injected();
    if let Some(problem) = nothing_verified(&scenario.schedule, &out.summary.checks, injected) {
        out.summary.problems.push(problem);
    }
    out.summary.probes = shared.probes();
    if out.summary.probes.stale > 0 && scenario.expect == Expect::Linearizable {
        out.summary.problems.push(format!(
            "{} old-leader probes returned a stale value as linearizable",
            out.summary.probes.stale
        ));
    }
    out.summary.directed = (
        WorkloadStats::get(&stats.directed_reads),
        WorkloadStats::get(&stats.directed_ok),
        WorkloadStats::get(&stats.directed_served_by_target),
    );
    if let Some(bad) = stale_reads_of_unwritten_values(&history) {
        out.summary.problems.push(bad);
    }
    for id in cluster.ids() {
        if let Ok(text) = fs::read_to_string(cluster.log_path(id)) {
            if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
                out.summary
                    .problems
                    .push(format!("node {id} panicked: {line}"));
            }
        }
    }

    let check_time = CHECK_TIME_MIN.max(fault_time * 2);
    let report = tokio::task::spawn_blocking({
        let history = history.clone();
        move || {
            check_history(
                &history,
                &CheckConfig {
                    budget_time_max: Some(check_time),
                    ..CheckConfig::default()
                },
            )
        }
    })
    .await
    .context("the checker panicked")?;
    out.summary.checker_time = report.elapsed;
    out.summary.linearizable = report.is_ok();
    out.summary.violation_found = matches!(report.verdict(), Verdict::NotLinearizable(_));
    out.summary.verdict = verdict_line(&report);
    out.report = Some(report);
    Ok(())
}

/// Reads every key linearizably until each read succeeds once (bounded); failed attempts are
/// recorded as failures. Returns the values read.
async fn final_reads(
    client: &Client,
    history: &History,
    keys: &BTreeSet<String>,
) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let deadline = Instant::now() + FINAL_READS_TIMEOUT;
    let mut values = std::collections::BTreeMap::new();
    for key in keys {
        for _attempt in 0..50 {
            if Instant::now() >= deadline {
                break;
            }
            let op = history.invoke(FINAL_PROCESS, key.as_str(), OpKind::Read);
            match tokio::time::timeout_at(deadline, client.get(key.clone())).await {
                Ok(Ok(value)) => {
                    let value = value.map(|b| b.to_vec());
                    op.ok(Ret::Value(value.clone()));
                    values.insert(key.clone(), value);
                    break;
                }
                _ => op.fail(),
            }
        }
    }
    values
}

/// A stale read may lag, but it must return a value some operation tried to write.
fn stale_reads_of_unwritten_values(history: &History) -> Option<String> {
    let ops = history.ops();
    let mut written: BTreeSet<(&[u8], &[u8])> = BTreeSet::new();
    for op in &ops {
        match &op.kind {
            OpKind::Write(v) | OpKind::Cas { new: v, .. } => {
                written.insert((&op.key, v));
            }
            _ => {}
        }
    }
    let bad: Vec<String> = ops
        .iter()
        .filter(|op| op.kind == OpKind::StaleRead)
        .filter_map(|op| match &op.outcome {
            Outcome::Ok(Ret::Value(Some(v))) if !written.contains(&(&op.key[..], &v[..])) => {
                Some(format!("{op}"))
            }
            _ => None,
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "{} stale reads returned values nobody wrote, e.g. {}",
            bad.len(),
            bad[0]
        )
    })
}

fn verdict_line(report: &CheckReport) -> String {
    let failed: Vec<String> = report
        .failures()
        .map(|k| {
            let what = match &k.verdict {
                Verdict::Linearizable => "ok",
                Verdict::NotLinearizable(_) => "NOT LINEARIZABLE",
                Verdict::BudgetExhausted { .. } => "BUDGET EXHAUSTED",
                Verdict::Malformed { .. } => "MALFORMED",
            };
            format!("{} {what}", format_value(Some(&k.key)))
        })
        .collect();
    if failed.is_empty() {
        format!("linearizable ({} keys)", report.keys.len())
    } else {
        format!(
            "{} of {} keys failed: {}",
            failed.len(),
            report.keys.len(),
            failed.join(", ")
        )
    }
}

/// For a schedule that repeats a leader fault or kills: a problem if not one of its faults
/// could be verified (e.g. no leader was ever found to isolate), since then the scenario
/// tested nothing it claims.
fn nothing_verified(schedule: &Schedule, checks: &FaultChecks, injected: usize) -> Option<String> {
    let Schedule::Repeat(fault) = schedule else {
        return None;
    };
    if injected == 0 {
        return None; // Reported by the tests' own "no fault was injected" assertions.
    }
    let (verified, what) = match fault {
        Fault::IsolateLeader | Fault::IsolateLeaderFromPeers | Fault::PauseLeader => {
            (checks.leadership_changes_verified, "leadership change")
        }
        Fault::KillRandom => (checks.kills_verified, "kill"),
        _ => (checks.cuts_verified, "cut"),
    };
    (verified == 0).then(|| {
        format!(
            "{injected} faults injected, but not one {what} was verified: the scenario tested \
             nothing"
        )
    })
}

/// The windows in which the cluster was under faults: the nemesis' fault windows, or the
/// whole workload run when the servers inject their own faults (acceptor failures) all along.
fn fault_windows(scenario: &Scenario, out: &RunState) -> Vec<FaultWindow> {
    match (
        &scenario.schedule,
        scenario.acceptor_failures,
        out.workload_span,
    ) {
        (Schedule::None, Some(_), Some((start_ns, end_ns))) => {
            vec![FaultWindow { start_ns, end_ns }]
        }
        _ => out.log.windows(),
    }
}

fn count_outcomes(summary: &mut Summary, history: &History) {
    let ops = history.ops();
    summary.ops = ops.len();
    summary.ok = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    summary.fail = ops.iter().filter(|o| o.outcome == Outcome::Fail).count();
    summary.unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    summary.stale_reads = ops.iter().filter(|o| o.kind == OpKind::StaleRead).count();
}

/// Prints the summary and decides; on failure keeps the evidence and says where.
fn finish(scenario: &Scenario, mut out: RunState) -> Result<Summary, Box<Failure>> {
    count_outcomes(&mut out.summary, &out.history);
    out.summary.faults = out.log.events();
    out.summary.faults_injected = out.log.faults_injected();
    let windows = fault_windows(scenario, &out);
    let minimums = scenario
        .minimums
        .scaled(DEFAULT_FAULT_TIME, out.summary.fault_time);
    let served = Served::count(&out.history.ops(), &windows);
    out.summary.served = ServedReport { served, minimums };
    out.summary.problems.extend(minimums.check(&served));
    let summary = out.summary.clone();
    eprintln!("{summary}");
    let checker_ok = match scenario.expect {
        Expect::Linearizable => summary.linearizable,
        Expect::Violation => summary.violation_found,
    };
    if scenario.expect == Expect::Violation && summary.violation_found {
        if let Some(report) = &out.report {
            let text = report.to_string();
            let excerpt: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
            eprintln!("the checker caught the planted bug, as required:\n{excerpt}");
        }
    }
    if checker_ok && summary.problems.is_empty() {
        return Ok(summary);
    }
    let dir = out.cluster.keep_data();
    let mut reasons = Vec::new();
    if !checker_ok {
        reasons.push(format!(
            "checker: expected {:?}, got: {}",
            scenario.expect, summary.verdict
        ));
    }
    reasons.extend(summary.problems.iter().cloned());
    if let Err(e) = save_evidence(&dir, &out, &summary) {
        reasons.push(format!("saving some of the evidence failed: {e:#}"));
    }
    if let Some(report) = &out.report {
        let text = report.to_string();
        let excerpt: String = text.lines().take(60).collect::<Vec<_>>().join("\n");
        eprintln!("{excerpt}");
    }
    Err(Box::new(Failure {
        summary,
        reasons,
        evidence: dir,
    }))
}

fn save_evidence(dir: &Path, out: &RunState, summary: &Summary) -> anyhow::Result<()> {
    out.history.dump_to_file(dir.join("history.txt"))?;
    if let Some(report) = &out.report {
        report.write_to_file(dir.join("check.txt"))?;
    }
    fs::write(dir.join("faults.txt"), out.log.text())?;
    fs::write(dir.join("summary.txt"), summary.to_string())?;
    Ok(())
}
