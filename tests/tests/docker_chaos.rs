//! Container chaos: the FROM-scratch image `kvs:local` run by `docker/compose.yaml`, faulted
//! with Docker itself (`docker network disconnect/connect`, `docker pause/unpause`,
//! `docker kill` + `docker start`) while a register workload runs from the host through the
//! published ports; then everything is healed, every key is read, and the history must be
//! linearizable (so no acknowledged write is lost or reordered).
//!
//! Without `KVS_DOCKER_CHAOS=1` it does not run: it prints a line starting `SKIPPED:` with the
//! reason and returns. With `KVS_DOCKER_CHAOS=1` every prerequisite is required: no Docker
//! engine answering `docker info`, no compose, or no image **fails** the test (`.ci/run` sets
//! the variable exactly when an engine answers, so a skipped run cannot pass for a real one).
//! A run that got to the end prints a `RAN:` line and writes the same summary (ops, acknowledged
//! writes, faults, verdict) to `KVS_DOCKER_CHAOS_SUMMARY`, default
//! `<target dir>/docker-chaos-summary.txt`, which `.ci/run` checks.
//!
//! Build the image first with `scripts/docker-build.sh`. It starts its own compose project
//! (unique project name, free loopback ports, its own /24 in 172.28.0.0/16) and always removes
//! it, volumes included.
//!
//! ```sh
//! KVS_DOCKER_CHAOS=1 cargo test -p tests --test docker_chaos -- --nocapture
//! # 10-minute soak, a fault every <= 10 s:
//! KVS_DOCKER_CHAOS=1 DOCKER_CHAOS_SECS=600 cargo test -p tests --test docker_chaos -- --nocapture
//! ```
//!
//! `DOCKER_CHAOS_SEED=S` replays the fault choices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_client::{Client, ClientOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::history::{History, OpKind, Outcome, Ret};
use tests::linearizability::{check_history, CheckConfig};
use tests::nemesis::{self, NemesisShared};
use tests::workload::{self, RegisterConfig, Workload, WorkloadContext, WorkloadStats};

const NODES: u64 = 3;
const FINAL_PROCESS: u64 = 990_000;
const READY_KEY: &str = "chaos/ready";
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Set to `1` to run the test; then a missing prerequisite fails it instead of skipping.
const ENABLE_ENV: &str = "KVS_DOCKER_CHAOS";
/// Where the summary of a completed run is written.
const SUMMARY_ENV: &str = "KVS_DOCKER_CHAOS_SUMMARY";

/// Least successful operations per 60 s of faults (scaled to `DOCKER_CHAOS_SECS`): a typical
/// run on the 2-core machine serves ~31,000 (release binaries), and leader pauses stall the
/// clients for their duration, so this is about a sixth.
const OK_PER_MINUTE_MIN: u64 = 5000;
/// Least acknowledged writes per 60 s of faults: typically ~16,500.
const ACKED_WRITES_PER_MINUTE_MIN: u64 = 2500;

/// Whether [`ENABLE_ENV`] asks for the test.
fn enabled() -> bool {
    matches!(std::env::var(ENABLE_ENV).as_deref(), Ok(v) if v != "0" && !v.is_empty())
}

/// The summary file: [`SUMMARY_ENV`], else `docker-chaos-summary.txt` in the target dir.
fn summary_path() -> PathBuf {
    if let Some(path) = std::env::var_os(SUMMARY_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace.join(dir), // An absolute dir replaces the workspace.
        None => workspace.join("target"),
    };
    target.join("docker-chaos-summary.txt")
}

/// Why the Docker prerequisites are not met, if they are not: an engine answering
/// `docker info`, a compose program, the image.
fn missing_prerequisite(image: &str) -> Option<String> {
    match Command::new("docker").arg("info").output() {
        Err(e) => return Some(format!("no `docker` command ({e})")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "no Docker engine answers `docker info`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    if compose_program().is_none() {
        return Some("neither `docker compose` nor `docker-compose` works".to_owned());
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", image])
        .output();
    if !inspect.is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "no image {image}: run scripts/docker-build.sh first"
        ));
    }
    None
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> bool {
    let out = docker(args);
    if !out.status.success() {
        eprintln!(
            "docker chaos: `docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out.status.success()
}

/// `docker compose` (v2 plugin) or `docker-compose` (v1), whichever answers `version`.
fn compose_program() -> Option<Vec<String>> {
    let answers = |program: &[&str]| {
        Command::new(program[0])
            .args(&program[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [&["docker", "compose"][..], &["docker-compose"][..]]
        .into_iter()
        .find(|program| answers(program))
        .map(|program| program.iter().map(|s| s.to_string()).collect())
}

/// One compose project; `docker compose down -v` on drop (also when the test panics).
struct Project {
    program: Vec<String>,
    name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run docker compose")
    }

    fn container(&self, node: u64) -> String {
        let out = self.run(&["ps", "-q", &format!("kvs{node}")]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container for kvs{node}");
        id
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.run(&["down", "-v", "--timeout", "2"]);
        eprintln!(
            "docker chaos: removed compose project {} ({})",
            self.name,
            if out.status.success() { "ok" } else { "FAILED" }
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Disconnect,
    Pause,
    Kill,
}

/// Undoes one fault.
fn heal(network: &str, ip: &str, container: &str, fault: Fault) -> bool {
    match fault {
        Fault::Disconnect => docker_ok(&["network", "connect", "--ip", ip, network, container]),
        Fault::Pause => docker_ok(&["unpause", container]),
        // The restart policy may already have restarted it; `start` is then a no-op.
        Fault::Kill => docker_ok(&["start", container]),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints `line` on stdout (shown by `--nocapture`, and by a harness that shows stdout).
fn announce(line: &str) {
    println!("{line}");
}

#[test]
fn docker_chaos() {
    if !enabled() {
        announce(&format!(
            "SKIPPED: docker chaos: {ENABLE_ENV} is not set (set {ENABLE_ENV}=1 where a Docker \
             engine answers; .ci/run does)"
        ));
        return;
    }
    let image = std::env::var("KVS_IMAGE").unwrap_or_else(|_| "kvs:local".to_owned());
    if let Some(missing) = missing_prerequisite(&image) {
        panic!("docker chaos: {ENABLE_ENV}=1 but the test cannot run: {missing}");
    }
    let secs = env_u64("DOCKER_CHAOS_SECS", 60);
    let seed = env_u64("DOCKER_CHAOS_SEED", rand::rng().random());
    eprintln!(
        "docker chaos: seed {seed} (replay with DOCKER_CHAOS_SEED={seed}), {secs}s of faults"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    // A project of our own, on ports and a subnet nobody else uses.
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let admin_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let program = compose_program().expect("checked with the prerequisites");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yaml");
    let mut project = None;
    let mut prefix = String::new();
    for _attempt in 0..8 {
        prefix = format!("172.28.{}", rng.random_range(100..250));
        let mut env = vec![
            ("KVS_IMAGE".to_owned(), image.clone()),
            ("KVS_NET_PREFIX".to_owned(), prefix.clone()),
            ("KVS_ELECTION_TIMEOUT_MS".to_owned(), "300..600".to_owned()),
            ("KVS_HEARTBEAT_MS".to_owned(), "50".to_owned()),
            ("KVS_LOG".to_owned(), "warn".to_owned()),
        ];
        for (i, port) in ports.iter().enumerate() {
            env.push((format!("KVS_PORT_{}", i + 1), port.to_string()));
        }
        for (i, port) in admin_ports.iter().enumerate() {
            env.push((format!("KVS_ADMIN_PORT_{}", i + 1), port.to_string()));
        }
        let p = Project {
            program: program.clone(),
            name: format!("kvschaos{}x{}", std::process::id(), rng.random::<u16>()),
            file: file.clone(),
            env,
        };
        let started = Instant::now();
        let out = p.run(&["up", "-d"]);
        if out.status.success() {
            eprintln!(
                "docker chaos: project {} up in {:.1}s (subnet {prefix}.0/24, ports {ports:?})",
                p.name,
                started.elapsed().as_secs_f64()
            );
            project = Some(p);
            break;
        }
        // Most likely the subnet overlaps another network: try another (drop removes it).
        eprintln!(
            "docker chaos: compose up failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let project = project.expect("could not start the compose project");
    let network = format!("{}_kvs", project.name);
    let containers: BTreeMap<u64, String> =
        (1..=NODES).map(|n| (n, project.container(n))).collect();
    let ips: BTreeMap<u64, String> = (1..=NODES)
        .map(|n| (n, format!("{prefix}.{}", 10 + n)))
        .collect();
    let endpoints: BTreeMap<u64, String> = (1..=NODES)
        .map(|n| (n, format!("127.0.0.1:{}", ports[n as usize - 1])))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let options = ClientOptions {
        request_timeout: Duration::from_millis(2500),
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let history = History::new();
    let admin = Client::connect(endpoints.values().cloned(), options.clone()).expect("client");
    runtime
        .block_on(nemesis::wait_writable(
            &admin,
            READY_KEY,
            Duration::from_secs(60),
        ))
        .expect("the new cluster never served a write");

    // Workload from the host, faults from a thread, for `secs`.
    let register = Workload::Register(RegisterConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WorkloadStats::default());
    let ctx = WorkloadContext {
        history: history.clone(),
        endpoints: endpoints.clone(),
        client_options: options.clone(),
        shared: Arc::new(NemesisShared::default()),
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
        seed,
    };
    let tasks = {
        let _guard = runtime.enter();
        workload::spawn(&register, &ctx).expect("start the workload")
    };
    let faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let counts: Arc<Mutex<BTreeMap<Fault, u64>>> = Arc::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let nemesis = {
        let (faults, counts) = (Arc::clone(&faults), Arc::clone(&counts));
        let (containers, ips, network) = (containers.clone(), ips.clone(), network.clone());
        let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
        std::thread::spawn(move || {
            let mut heal_failures = 0;
            // Quiet 1-3 s, then one fault on one random node held 1-6 s, healed: <= 10 s apart.
            while Instant::now() + Duration::from_secs(3) < deadline {
                std::thread::sleep(Duration::from_millis(rng.random_range(1000..3000)));
                let node = rng.random_range(1..=NODES);
                let fault = match rng.random_range(0..3) {
                    0 => Fault::Disconnect,
                    1 => Fault::Pause,
                    _ => Fault::Kill,
                };
                let c = &containers[&node];
                let injected = match fault {
                    Fault::Disconnect => docker_ok(&["network", "disconnect", &network, c]),
                    Fault::Pause => docker_ok(&["pause", c]),
                    Fault::Kill => docker_ok(&["kill", c]),
                };
                let at = started.elapsed().as_secs_f64();
                if !injected {
                    faults
                        .lock()
                        .unwrap()
                        .push(format!("{at:6.1}s {fault:?} n{node}: FAILED"));
                    continue;
                }
                *counts.lock().unwrap().entry(fault).or_default() += 1;
                let hold = Duration::from_millis(rng.random_range(1000..6000));
                std::thread::sleep(hold.min(deadline.saturating_duration_since(Instant::now())));
                let healed = heal(&network, &ips[&node], c, fault);
                if !healed {
                    heal_failures += 1;
                }
                faults.lock().unwrap().push(format!(
                    "{at:6.1}s {fault:?} n{node} for {:.1}s{}",
                    hold.as_secs_f64(),
                    if healed { "" } else { ", heal FAILED" }
                ));
            }
            heal_failures
        })
    };
    let heal_failures = nemesis.join().expect("the nemesis panicked");
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let (_, aborted) = runtime.block_on(workload::join(
        tasks,
        options.request_timeout + Duration::from_secs(6),
    ));

    // Heal everything (again, in case a heal failed), then wait for a writable cluster whose
    // every node answers.
    for (node, c) in &containers {
        let _ = docker(&["unpause", c]);
        let _ = docker(&["network", "connect", "--ip", &ips[node], &network, c]);
        let _ = docker(&["start", c]);
    }
    let recovery = Instant::now();
    let fresh = Client::connect(endpoints.values().cloned(), options.clone()).expect("client");
    runtime
        .block_on(nemesis::wait_writable(&fresh, READY_KEY, RECOVERY_TIMEOUT))
        .expect("no recovery after healing");
    for (node, endpoint) in &endpoints {
        let answered = runtime.block_on(async {
            let until = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
            while tokio::time::Instant::now() < until {
                if fresh.status_of(endpoint).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        });
        assert!(answered, "node {node} never answered after healing");
    }
    let recovered_in = recovery.elapsed();

    // Read every key (recorded, so the checker sees the final state).
    let mut keys: BTreeSet<String> = register.keys().into_iter().collect();
    for op in history.ops() {
        keys.insert(String::from_utf8_lossy(&op.key).into_owned());
    }
    let mut unread = Vec::new();
    for key in &keys {
        let mut read = false;
        for _ in 0..20 {
            let op = history.invoke(FINAL_PROCESS, key.as_str(), OpKind::Read);
            match runtime.block_on(fresh.get(key.clone())) {
                Ok(v) => {
                    op.ok(Ret::Value(v.map(|b| b.to_vec())));
                    read = true;
                    break;
                }
                Err(_) => op.fail(),
            }
        }
        if !read {
            unread.push(key.clone());
        }
    }

    let report = check_history(
        &history,
        &CheckConfig {
            budget_time_max: Some(Duration::from_secs(120.max(2 * secs))),
            ..CheckConfig::default()
        },
    );
    let ops = history.ops();
    let count = |f: &dyn Fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok(_)));
    let acked_writes = ops
        .iter()
        .filter(|o| {
            matches!(
                o.kind,
                OpKind::Write(_) | OpKind::Cas { .. } | OpKind::Delete
            )
        })
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let panics: Vec<String> = containers
        .iter()
        .filter_map(|(node, c)| {
            let out = docker(&["logs", c]);
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find(|l| l.contains("panicked"))
                .map(|l| format!("n{node}: {l}"))
        })
        .collect();
    let counts = counts.lock().unwrap().clone();
    let injected: u64 = counts.values().sum();
    eprintln!("docker chaos: faults:");
    for line in faults.lock().unwrap().iter() {
        eprintln!("  {line}");
    }
    eprintln!(
        "docker chaos: {injected} faults injected {counts:?} ({heal_failures} heal failures); \
         {} ops: {ok} ok ({acked_writes} acknowledged writes), {} failed, {} unknown; \
         {} keys read; recovered in {:.1}s; checker: {}",
        ops.len(),
        count(&|o| *o == Outcome::Fail),
        count(&|o| *o == Outcome::Unknown),
        keys.len() - unread.len(),
        recovered_in.as_secs_f64(),
        if report.is_ok() {
            format!("linearizable ({} keys)", report.keys.len())
        } else {
            "FAILED".to_owned()
        }
    );
    if !report.is_ok() {
        let path = std::env::temp_dir().join(format!("{}-report.txt", project.name));
        let _ = report.write_to_file(&path);
        let _ = history.dump_to_file(path.with_extension("history"));
        panic!(
            "docker chaos: the history is not linearizable (report and history in {})",
            path.display()
        );
    }
    assert!(unread.is_empty(), "final reads never succeeded: {unread:?}");
    assert!(panics.is_empty(), "replicas panicked: {panics:?}");
    assert_eq!(aborted, 0, "{aborted} workload tasks did not stop");
    assert_eq!(heal_failures, 0, "some faults could not be healed");
    assert!(injected > 0, "no fault was injected");
    let ok_min = (OK_PER_MINUTE_MIN * secs / 60).max(1);
    let acked_min = (ACKED_WRITES_PER_MINUTE_MIN * secs / 60).max(1);
    assert!(
        ok as u64 >= ok_min,
        "too little served: {ok} successful operations, at least {ok_min} required"
    );
    assert!(
        acked_writes as u64 >= acked_min,
        "too little served: {acked_writes} acknowledged writes, at least {acked_min} required"
    );
    drop(project);
    let summary = format!(
        "RAN docker chaos: seed {seed}, {secs}s of faults, {injected} faults injected \
         {counts:?}, ops {}, ok {ok} (min {ok_min}), acknowledged writes {acked_writes} \
         (min {acked_min}), checker linearizable ({} keys)",
        ops.len(),
        report.keys.len()
    );
    let path = summary_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the summary's directory");
    }
    std::fs::write(&path, format!("{summary}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    announce(&summary.replacen("RAN docker chaos", "RAN: docker chaos", 1));
}
