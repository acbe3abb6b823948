//! `kvs-server`: run one replica, or a whole local cluster with `kvs-server dev`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use kvs_server::config::{defaults, Cli, Command};
use kvs_server::ServerError;
use tokio_util::sync::CancellationToken;

// Many small, short-lived allocations (frames, commands, replies): mimalloc handles them
// with less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a replica has, after SIGTERM or Ctrl-C, to stop gracefully (finish its
/// requests in flight, write out its log, deliver its last answers).
const STOP_MAX: Duration = Duration::from_secs(10);

/// How long blocking work still running when the replica has stopped (a snapshot being
/// written: harmless to abandon, its temporary file is removed at the next start) may
/// delay the exit.
const BLOCKING_FINISH_MAX: Duration = Duration::from_secs(2);

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(defaults::LOG_LEVEL));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, &matches));
    runtime.shutdown_timeout(BLOCKING_FINISH_MAX);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> Result<(), ServerError> {
    match cli.command {
        Some(Command::Dev(args)) => {
            init_logs(&args.log_level);
            return kvs_server::dev::run(args).await;
        }
        Some(Command::Repair(args)) => return repair(&args.data_dir),
        None => {}
    }
    let args = cli.replica.merged(matches)?;
    init_logs(args.log_level.as_deref().unwrap_or(defaults::LOG_LEVEL));
    let cfg = args.resolve()?;
    let shutdown = CancellationToken::new();
    let mut node = tokio::spawn(kvs_server::node::run(cfg, shutdown.clone()));
    tokio::select! {
        r = &mut node => return r?,
        _ = kvs_server::wait_for_signal() => {}
    }
    // Graceful: the replica finishes what it can within its bounds, then returns.
    shutdown.cancel();
    match tokio::time::timeout(STOP_MAX, node).await {
        Ok(r) => r?,
        Err(_) => Err(ServerError::StopTimeout {
            secs: STOP_MAX.as_secs(),
        }),
    }
}

/// `kvs-server repair --data-dir DIR`.
fn repair(dir: &std::path::Path) -> Result<(), ServerError> {
    let _lock = kvs_server::dir_lock::DirLock::acquire(dir)?;
    let done = kvs_server::repair::prepare(dir)?;
    match &done.log_moved_to {
        Some(p) => println!("moved the damaged log aside to {}", p.display()),
        None => println!("no log to move aside"),
    }
    if let Some(p) = &done.snapshot_moved_to {
        println!("moved the unreadable snapshot aside to {}", p.display());
    }
    println!(
        "marked {} for repair ({}). Start this replica again with its usual flags: it votes \
         for nothing until it has relearned the log from its peers (every other member must \
         be reachable), then removes the mark and votes again.",
        dir.display(),
        kvs_server::repair::MARK_NAME
    );
    Ok(())
}
