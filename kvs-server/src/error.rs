//! Why a replica cannot start, or had to stop: [`ServerError`], with the errors of each
//! part it owns (settings, identity, log, snapshot) as typed sources.

use std::path::PathBuf;

use paxos_core::NodeId;

use crate::config::ConfigError;
use crate::identity::IdentityError;
use crate::snapshot::SnapshotError;
use crate::storage::StorageError;

/// Why a replica cannot start or had to stop. The message names what is wrong (a flag, a
/// file and offset, a peer) and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material cannot be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `kvs-server certs` failed.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
    /// `kvs-server restore` failed.
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    /// The consensus settings cannot work together.
    #[error("invalid cluster configuration: {0}")]
    Cluster(#[from] paxos_core::ConfigError),
    /// The data dir's identity refuses this start, or cannot be read or written.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Joining the cluster was refused: a peer knows this member by another data dir, or
    /// the identity could not be recorded.
    #[error("{0}; refusing to start")]
    JoinRefused(#[source] IdentityError),
    /// The peer links stopped before a majority of the others recorded this data dir.
    #[error("the peer links stopped while joining")]
    LinksStopped,
    /// The write-ahead log cannot be opened, read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The snapshot in the data dir cannot be read.
    #[error("{0}; refusing to start")]
    Snapshot(#[from] SnapshotError),
    /// The snapshot could not be reloaded after an injected acceptor failure.
    #[error("cannot reload the snapshot: {0}")]
    SnapshotReload(#[source] SnapshotError),
    /// The replica could not be rebuilt after an injected acceptor failure.
    #[error("cannot rebuild the replica: {0}")]
    Rebuild(#[source] paxos_core::ConfigError),
    /// The log writer stopped while a recovering replica waited for its durable state.
    #[error("the log writer stopped during recovery")]
    RecoveryInterrupted,
    /// Another process holds the data dir.
    #[error(
        "data dir {} is in use by another kvs-server (could not lock {})",
        .dir.display(),
        .lock.display()
    )]
    DataDirLocked {
        /// The data dir.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "create data dir".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        /// "peers" or "clients".
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// This replica is not in its own member list.
    #[error("--peers has no entry for this node ({id})")]
    NoPeerEntry {
        /// This replica's id.
        id: NodeId,
    },
    /// A replica's task ended abnormally (it panicked or was cancelled).
    #[error("replica task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The replica did not finish its graceful shutdown in time.
    #[error("the replica did not stop within {secs} s")]
    StopTimeout {
        /// The bound, in seconds.
        secs: u64,
    },
    /// The log or the snapshot holds damage to data that may have been acknowledged.
    #[error(
        "{source}\n  This replica may have lost promises and votes it gave, so it must not vote \
         until it is repaired from its peers. Run\n    kvs-server repair --data-dir {}\n  \
         (it moves the damaged files aside and deletes nothing), then start this replica again \
         with the same flags: it relearns the log from its peers and votes again once that is \
         safe. Every other member must be reachable for the repair to finish.",
        .dir.display()
    )]
    Damaged {
        /// The data dir.
        dir: PathBuf,
        /// What is damaged.
        source: Box<ServerError>,
    },
    /// `kvs-server repair` was pointed at a directory that is not a member's data dir.
    #[error("{} holds no IDENTITY file: not a replica's data dir, nothing to repair", .dir.display())]
    NotAMemberDir {
        /// The directory.
        dir: PathBuf,
    },
    /// The membership cannot be set up or used: what is wrong, and what to do.
    #[error("{reason}")]
    Membership {
        /// What is wrong.
        reason: String,
    },
    /// A port a replica of the dev cluster needs is taken.
    #[error(
        "cannot start the dev cluster: the {what} port {addr} of replica {id} is taken \
         ({source}); stop what listens there or choose other ports (--client-port, \
         --peer-port, --admin-port)"
    )]
    DevPortTaken {
        /// The replica.
        id: NodeId,
        /// "client", "peer" or "admin".
        what: &'static str,
        /// The address.
        addr: String,
        /// Why it could not be bound.
        source: std::io::Error,
    },
    /// A replica of the dev cluster could not start, or did not stop cleanly.
    #[error("replica {id} {reason}")]
    DevReplica {
        /// The replica.
        id: NodeId,
        /// What happened.
        reason: String,
    },
    /// Replicas of a dev cluster failed.
    #[error("{}", describe(.0))]
    Replicas(Vec<(NodeId, ServerError)>),
}

fn describe(failures: &[(NodeId, ServerError)]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|(id, e)| format!("replica {id}: {e}"))
        .collect();
    parts.join("; ")
}
