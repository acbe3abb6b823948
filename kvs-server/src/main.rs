//! `kvs-server`: run one replica, or a whole local cluster with `kvs-server dev`.

use clap::Parser;
use kvs_server::config::{Cli, Command};
use tokio::sync::watch;

// Many small, short-lived allocations (frames, commands, replies): mimalloc handles them
// with less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Dev(args)) => {
                init_logs(&args.log_level);
                kvs_server::dev::run(args).await
            }
            None => {
                let merged = cli.replica.merged()?;
                init_logs(merged.log_level.as_deref().unwrap_or("info"));
                let cfg = cli.replica.resolve()?;
                let (stop_tx, stop_rx) = watch::channel(false);
                let mut node = tokio::spawn(kvs_server::node::run(cfg, stop_rx));
                tokio::select! {
                    r = &mut node => return r.map_err(|e| format!("replica task failed: {e}"))?,
                    _ = kvs_server::wait_for_signal() => {}
                }
                // Graceful: in-flight requests get up to three seconds, then the log is synced.
                let _ = stop_tx.send(true);
                match tokio::time::timeout(std::time::Duration::from_secs(10), node).await {
                    Ok(r) => r.map_err(|e| format!("replica task failed: {e}"))?,
                    Err(_) => Err("the replica did not stop within 10 s".to_string()),
                }
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
