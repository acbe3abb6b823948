//! `kvs-server`: run one replica, or a whole local cluster with `kvs-server dev`.
#![forbid(unsafe_code)]

use std::io::Write;
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

/// The log's output: stderr, where a failed write (a closed pipe: `kvs-server 2>&1 |
/// head`) loses the line and nothing else. A replica must never stop because nobody reads
/// its logs.
struct LogOutput;

impl Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(defaults::LOG_LEVEL));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogOutput)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Its own complaints would go to the stderr that just failed (and panic there).
        .log_internal_errors(false)
        .init();
}

/// Writes `text` to stdout, ignoring a closed or failing stdout.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes `text` to stderr, ignoring a closed or failing stderr.
fn complain(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
            complain(&format!("error: cannot start the async runtime: {e}\n"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, &matches));
    runtime.shutdown_timeout(BLOCKING_FINISH_MAX);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(&format!("error: {e}\n"));
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
        Some(Command::Restore(args)) => return restore(&args),
        Some(Command::Certs(args)) => return certs(&args),
        None => {}
    }
    let args = cli.replica.merged(matches)?;
    init_logs(args.log_level.as_deref().unwrap_or(defaults::LOG_LEVEL));
    let cfg = args.resolve()?;
    let shutdown = CancellationToken::new();
    if std::env::var_os(kvs_server::dev::PARENT_PIPE_ENV).is_some() {
        stop_with_parent(shutdown.clone());
    }
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

/// A replica started by `kvs-server dev` stops, gracefully, when `dev` is gone: its
/// standard input is a pipe from `dev`, which nobody writes, so reading it ends (or fails)
/// exactly when `dev` exits, however it exits.
fn stop_with_parent(shutdown: CancellationToken) {
    let watch = move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        while let Ok(n) = std::io::Read::read(&mut stdin, &mut buf) {
            if n == 0 {
                break;
            }
        }
        complain("the dev cluster that started this replica is gone: stopping\n");
        shutdown.cancel();
    };
    if let Err(e) = std::thread::Builder::new()
        .name("dev-parent".into())
        .spawn(watch)
    {
        complain(&format!(
            "warning: cannot watch the dev cluster that started this replica: {e}\n"
        ));
    }
}

/// `kvs-server certs`: see [`kvs_server::certs`].
fn certs(args: &kvs_server::config::CertsArgs) -> Result<(), ServerError> {
    let done = kvs_server::certs::generate(&args.spec())?;
    let mut text = format!("wrote to {}:\n", args.out.display());
    for file in done.files() {
        let name = file.file_name().unwrap_or(file.as_os_str());
        text.push_str(&format!("  {}\n", name.to_string_lossy()));
    }
    text.push_str(&format!(
        "valid for {} days; keys are mode 0600. A replica uses ca.pem as --trusted-ca-file \
         and --peer-trusted-ca-file, node-<id>.pem and node-<id>-key.pem as --cert-file/\
         --key-file and --peer-cert-file/--peer-key-file; a client uses ca.pem as --cacert \
         and client-<name>.pem and client-<name>-key.pem as --cert/--key.\n",
        args.days
    ));
    say(&text);
    Ok(())
}

/// `kvs-server restore`: see [`kvs_server::restore`].
fn restore(args: &kvs_server::config::RestoreArgs) -> Result<(), ServerError> {
    use kvs_server::config::parse_members;
    let started = std::time::Instant::now();
    let options = kvs_server::restore::RestoreOptions {
        from: args.from.clone(),
        data_dir: args.data_dir.clone(),
        id: args.id,
        peers: parse_members(&args.peers, "--peers")?,
        client_addrs: match &args.client_addrs {
            Some(s) => parse_members(s, "--client-addrs")?,
            None => Default::default(),
        },
        cluster_name: args.cluster_id.clone(),
        token: args.initial_cluster_token.clone(),
    };
    let done = kvs_server::restore::restore(&options)?;
    let h = &done.header;
    say(&format!(
        "restored {} keys of slot {} (from cluster \"{}\" {}) into {} as member {} of new \
         cluster {} ({} bytes) in {} ms; start it with the same --id, --peers and --data-dir\n",
        h.keys,
        h.slot,
        h.cluster_name,
        h.cluster_uid,
        args.data_dir.display(),
        args.id,
        done.cluster_uid,
        done.snapshot_bytes,
        started.elapsed().as_millis()
    ));
    Ok(())
}

/// `kvs-server repair --data-dir DIR`.
fn repair(dir: &std::path::Path) -> Result<(), ServerError> {
    let _lock = kvs_server::dir_lock::DirLock::acquire(dir)?;
    let done = kvs_server::repair::prepare(dir)?;
    match &done.log_moved_to {
        Some(p) => say(&format!("moved the damaged log aside to {}\n", p.display())),
        None => say("no log to move aside\n"),
    }
    if let Some(p) = &done.snapshot_moved_to {
        say(&format!(
            "moved the unreadable snapshot aside to {}\n",
            p.display()
        ));
    }
    say(&format!(
        "marked {} for repair ({}). Start this replica again with its usual flags: it votes \
         for nothing until it has relearned the log from its peers (every other member must \
         be reachable), then removes the mark and votes again.\n",
        dir.display(),
        kvs_server::repair::MARK_NAME
    ));
    Ok(())
}
