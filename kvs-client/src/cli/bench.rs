//! `kvs-client bench`: closed-loop load, the same shape as etcd's benchmark tool and the
//! project's etcd load generator, so the two can be compared side by side.
//!
//! N client tasks share M connections (M `Client`s, each with its own connection to every
//! node); each task sends one request, waits for the answer, and sends the next, until the
//! tasks together have done the requested number of operations.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use kvs_client::{Client, ClientOptions, KeyRange, NodeRole};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// What each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Every operation writes a random key.
    Put,
    /// Every operation reads a random key (the keys are written once first).
    Get,
    /// Half reads, half writes, at random.
    Mixed,
}

/// `bench` flags.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,
    /// Connections shared by the clients (each one reaches every node).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub conns: u64,
    /// Total operations (split evenly between the clients).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// What each operation does.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Size of the key space (keys are drawn uniformly).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub value_size: u64,
    /// Read from any node without confirming with the leader (may be stale).
    #[arg(long)]
    pub stale: bool,
    /// The prefix of every key written and read (keys are PREFIX followed by 8 digits).
    #[arg(long, default_value = "key")]
    pub prefix: String,
    /// Afterwards, remove every key starting with the prefix, with one range delete.
    #[arg(long)]
    pub cleanup: bool,
}

/// The outcome of a run.
pub struct BenchReport {
    /// Operations done, failed ones included.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall-clock time of the measured part, in seconds.
    pub secs: f64,
    /// Latency of every operation, in microseconds.
    pub hist: Histogram<u64>,
}

fn key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:08}")
}

/// `--cleanup`: one range delete of the prefix; false if it failed.
async fn cleanup(client: &Client, prefix: &str) -> bool {
    match client
        .delete_range(KeyRange::prefix(prefix.to_owned()))
        .await
    {
        Ok(count) => {
            eprintln!("cleanup: removed {count} keys starting with {prefix:?}");
            true
        }
        Err(e) => {
            eprintln!("error: cleanup failed: {e}");
            false
        }
    }
}

/// Runs the benchmark; returns the process exit code.
pub async fn run(
    endpoints: &[String],
    options: ClientOptions,
    args: BenchArgs,
    json_out: bool,
) -> u8 {
    let clients_per_conn: Vec<Client> = match (0..args.conns)
        .map(|_| Client::connect(endpoints.iter().map(|e| e.trim()), options.clone()))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if !healthy(&clients_per_conn[0]).await {
        eprintln!("warning: the cluster does not look healthy; results may be poor or fail");
    }
    let value = Bytes::from(vec![b'v'; args.value_size as usize]);
    if args.workload != Workload::Put {
        eprintln!("preloading {} keys...", args.keys);
        if let Err(e) = preload(&clients_per_conn, &args, &value).await {
            eprintln!("error: preloading failed: {e}");
            return 3;
        }
    }
    let per_client = args.ops / args.clients;
    if per_client == 0 {
        eprintln!(
            "error: --ops ({}) must be at least --clients ({})",
            args.ops, args.clients
        );
        return 2;
    }
    let (report, last_error) = match measure(&clients_per_conn, &args, &value, per_client).await {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: a client task failed: {e}");
            return 3;
        }
    };
    print_report(&args, &report, json_out);
    if args.cleanup && !cleanup(&clients_per_conn[0], &args.prefix).await {
        return 3;
    }
    if let Some(e) = last_error {
        eprintln!("last error: {e}");
    }
    if report.errors > 0 {
        3
    } else {
        0
    }
}

/// The measured part: `args.clients` closed-loop tasks of `per_client` operations each,
/// spread over `clients` (one per connection). Returns the report and the last error seen.
async fn measure(
    clients: &[Client],
    args: &BenchArgs,
    value: &Bytes,
    per_client: u64,
) -> Result<(BenchReport, Option<String>), tokio::task::JoinError> {
    let total = per_client * args.clients;
    let done = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress(done.clone(), total);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let c = clients[(i % args.conns) as usize].clone();
        let args = args.clone();
        let value = value.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(i, c, args, value, per_client, done).await
        }));
    }
    let mut hist = new_hist();
    let mut errors = 0;
    let mut last_error = None;
    for t in tasks {
        let (h, e, last) = t.await?;
        let _ = hist.add(h);
        errors += e;
        if last.is_some() {
            last_error = last;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let report = BenchReport {
        ops: total,
        errors,
        secs,
        hist,
    };
    Ok((report, last_error))
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits; these bounds are valid, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

async fn client_loop(
    i: u64,
    c: Client,
    args: BenchArgs,
    value: Bytes,
    ops: u64,
    done: Arc<AtomicU64>,
) -> (Histogram<u64>, u64, Option<String>) {
    let mut hist = new_hist();
    let mut rng = rand::rngs::StdRng::seed_from_u64(i);
    let mut errors = 0u64;
    let mut last_error = None;
    for _ in 0..ops {
        let k = key(&args.prefix, rng.random_range(0..args.keys));
        let write = match args.workload {
            Workload::Put => true,
            Workload::Get => false,
            Workload::Mixed => rng.random_bool(0.5),
        };
        let t = Instant::now();
        let result = if write {
            c.put(k, value.clone()).await.map(|_| ())
        } else if args.stale {
            c.get_stale(k).await.map(|_| ())
        } else {
            c.get(k).await.map(|_| ())
        };
        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
        if let Err(e) = result {
            errors += 1;
            last_error = Some(e.to_string());
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (hist, errors, last_error)
}

async fn preload(clients: &[Client], args: &BenchArgs, value: &Bytes) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for w in 0..64u64.min(args.keys) {
        let c = clients[(w % clients.len() as u64) as usize].clone();
        let next = next.clone();
        let keys = args.keys;
        let prefix = args.prefix.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return Ok(());
                }
                c.put(key(&prefix, k), value.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn healthy(client: &Client) -> bool {
    let statuses = client.status().await;
    let mut ok = true;
    let mut leaders = 0;
    for (endpoint, s) in &statuses {
        match s {
            Ok(s) => {
                if s.role == NodeRole::Leader {
                    leaders += 1;
                }
            }
            Err(e) => {
                eprintln!("warning: {endpoint} is unreachable: {e}");
                ok = false;
            }
        }
    }
    if leaders == 0 {
        eprintln!("warning: no node reports itself leader");
        ok = false;
    }
    ok
}

fn spawn_progress(done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut last_quarter = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 1000 })).await;
            let n = done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let rate = n as f64 / secs;
            if tty {
                let width = 30usize;
                let filled = ((n as f64 / total as f64) * width as f64) as usize;
                eprint!(
                    "\r[{}{}] {n}/{total} ops  {rate:.0} ops/s",
                    "#".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width))
                );
                let _ = std::io::stderr().flush();
            } else {
                // In logs, a line at each quarter is enough.
                let quarter = n * 4 / total.max(1);
                if quarter > last_quarter && quarter < 4 {
                    last_quarter = quarter;
                    eprintln!("progress: {n}/{total} ops, {rate:.0} ops/s");
                }
            }
        }
    })
}

fn print_report(args: &BenchArgs, r: &BenchReport, json_out: bool) {
    let workload = format!(
        "{}{}",
        match args.workload {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
        },
        if args.stale && args.workload != Workload::Put {
            "(stale)"
        } else {
            ""
        }
    );
    let ops_per_s = r.ops as f64 / r.secs.max(1e-9);
    let q = |p: f64| r.hist.value_at_quantile(p);
    if json_out {
        let v = json!({
            "target": "kvs",
            "workload": workload,
            "clients": args.clients,
            "conns": args.conns,
            "keys": args.keys,
            "value_size": args.value_size,
            "ops": r.ops,
            "errors": r.errors,
            "secs": r.secs,
            "ops_per_s": ops_per_s,
            "p50_us": q(0.5),
            "p90_us": q(0.9),
            "p99_us": q(0.99),
            "p999_us": q(0.999),
            "max_us": r.hist.max(),
        });
        println!("{v}");
    } else {
        println!(
            "target=kvs workload={workload} clients={} ops={} errors={} secs={:.2} ops_per_s={:.0} p50_us={} p99_us={} max_us={}",
            args.clients,
            r.ops,
            r.errors,
            r.secs,
            ops_per_s,
            q(0.5),
            q(0.99),
            r.hist.max()
        );
        println!(
            "latency: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            r.hist.max()
        );
    }
}
