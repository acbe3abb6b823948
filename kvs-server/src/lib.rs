//! The replicated key-value store daemon: it drives `paxos_core` over framed TCP and owns
//! the write-ahead log, the state machine and its snapshots.

pub mod acceptor_failures;
pub mod clients;
pub mod config;
pub mod dev;
pub mod identity;
pub mod listener;
pub mod node;
pub mod peers;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod wal;

/// Resolves when the process receives Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
