//! The replicated key-value store daemon: it drives `paxos_core` over framed TCP and owns
//! the write-ahead log, the state machine and its snapshots.
//!
//! Layers, each importing only from those below it:
//!
//! | module | what |
//! |---|---|
//! | [`node`] | the replica: start-up, the event loop, request routing, outputs, snapshots, faults |
//! | [`net`] | the listeners, client connections and peer links; they talk to the node through [`event`] |
//! | [`event`] | the types the event loop receives |
//! | [`answers`] | the way back to a client: a responder per request, answers queued per connection |
//! | [`storage`], [`wal`] | the write-ahead log, its record format and its writer thread |
//! | [`disk`] | the narrow file-system interface under them, real or simulated (power cuts, faults) |
//! | [`snapshot`] | the snapshot file format, its files, and transfers between replicas |
//! | [`state_machine`], [`sessions`] | the replicated map and exactly-once sessions |
//! | [`auth`] | users, roles and grants as replicated state, and the permission checks |
//! | [`identity`] | the durable identity of a data dir, and who may vote |
//! | [`repair`] | a data dir with a damaged log or snapshot: moved aside, repaired from peers |
//! | [`admin`] | the admin HTTP listener (`--admin-addr`): metrics, health, status page |
//! | [`metrics`] | the Prometheus metrics of a replica |
//! | [`tls`] | TLS on the client port and the peer links: settings, verifiers, rotation, expiry |
//! | [`certs`] | development certificates (`kvs-server certs`) |
//! | [`config`] | flags, config file and defaults, resolved into a [`config::NodeConfig`] |
//! | [`error`] | [`error::ServerError`], why a replica cannot start or had to stop |
#![forbid(unsafe_code)]

pub mod acceptor_failures;
pub mod admin;
pub mod answers;
pub mod auth;
pub mod certs;
pub mod config;
pub mod dev;
pub mod dir_lock;
pub mod disk;
pub mod error;
pub mod event;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod node;
pub mod repair;
pub mod restore;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod wal;

pub use error::ServerError;

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
