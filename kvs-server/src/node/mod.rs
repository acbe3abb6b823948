//! The replica: one task owns the `paxos_core::Replica` and the state machine and is the
//! only one to change them. Network tasks and the storage thread talk to it over channels
//! ([`crate::event`]); nothing in it blocks on IO (the log is written by the storage
//! thread, snapshots by blocking threads).
//!
//! A newcomer's map, in the order a replica lives:
//!
//! | file | what |
//! |---|---|
//! | [`start`] | start-up: lock the data dir, identity, recovery from snapshot and log, listeners, peer links, joining |
//! | [`event_loop`] | the loop: wait for the next event, timer or report, handle it, carry out the outputs; graceful shutdown |
//! | [`requests`] | routing a client request; [`pending`] is the table of requests waiting for consensus |
//! | [`permissions`] | what a request needs from the auth state, checked where it is received |
//! | [`output`] | the core's outputs: sends, persists, applying chosen commands and answering clients |
//! | [`membership`] | the membership: links and peer port that follow it, member list and changes |
//! | [`snapshots`] | when to snapshot, and the snapshots shipped to and received from peers |
//! | [`faults`] | the injected acceptor failures (`--acceptor-fail-prob`) |
//! | [`status`] | the status report |
//! | [`monitor`] | the status published for the admin listener, metrics, notable events |

mod backups;
mod event_loop;
mod faults;
mod membership;
mod monitor;
mod output;
mod pending;
mod permissions;
mod requests;
mod snapshots;
mod start;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_core::Replica;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::PeerMessage;

pub use crate::config::NodeConfig;
pub use start::initial_membership;

use crate::error::ServerError;
use crate::event::{Event, Report};
use crate::identity::IdentityStore;
use crate::net::clients::{Outbox, ValueBytesSeen};
use crate::net::peers::{Links, PeerRegistry};
use crate::state_machine::StateMachine;
use crate::storage::{Storage, StorageEvent};
use faults::Faults;
use pending::Pending;
use snapshots::{ChunkOf, Snapshots};

/// Runs a replica until `shutdown` is cancelled or a fatal error (such as a failed fsync).
///
/// On shutdown it stops accepting connections and reading requests, lets the requests in
/// flight finish (for a bounded time), answers the rest, writes out the log, waits for its
/// client connections to deliver their last answers, and returns `Ok`.
pub async fn run(cfg: NodeConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    match start::start(cfg, &shutdown).await? {
        Some(started) => started.run(&shutdown).await,
        None => Ok(()), // shut down while joining
    }
}

/// The replica's state, owned by the event loop.
struct Node {
    cfg: NodeConfig,
    /// The consensus core.
    replica: Replica,
    sm: StateMachine,
    /// The handle of the storage thread.
    storage: Storage,
    /// The origin of the core's millisecond clock.
    start: Instant,
    /// Requests waiting for consensus.
    pending: Pending,
    /// Where messages to peers go.
    links: Links,
    /// Who may connect on the peer port.
    registry: Arc<PeerRegistry>,
    /// The data dir's identity (the instances of the peers it has seen).
    store: Arc<IdentityStore>,
    /// What the links and hints were last set up for.
    members: membership::MemberView,
    /// This replica was removed from the cluster: it stops.
    removed: bool,
    /// The voters of the configuration that removes this replica, once its removal is
    /// chosen and applied here (it still votes until the removal takes effect).
    leaving: Option<std::collections::BTreeSet<paxos_core::NodeId>>,
    snapshots: Snapshots,
    faults: Faults,
    /// Answers to clients, written at the end of each turn of the loop.
    outbox: Outbox,
    /// The largest value in the store, for bounding what client connections hold.
    values: ValueBytesSeen,
    /// Where work handed off reports back.
    reports: mpsc::UnboundedSender<Report>,
    rng: StdRng,
    /// Set when the replica must stop.
    fatal: Option<ServerError>,
    /// What was last logged, to log changes only.
    seen: Seen,
    /// The status published for the admin listener, metrics, notable events.
    monitor: monitor::Monitor,
}

/// What the loop last logged about the replica.
struct Seen {
    storage_backlogged: bool,
}

impl Node {
    /// Milliseconds since the replica started: the core's clock.
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the next timer fires: the core's next timeout, or the end of a failure.
    fn deadline(&self) -> Instant {
        match self.faults.down_until() {
            Some(t) => t,
            None => self.start + Duration::from_millis(self.replica.poll_timeout()),
        }
    }

    /// A timer fired.
    async fn on_timer(&mut self) {
        match self.faults.down_until() {
            Some(t) if Instant::now() >= t => self.on_recovery_due().await,
            Some(_) => {}
            None => {
                let now = self.now_ms();
                self.replica.handle_timeout(now);
            }
        }
    }

    /// A message from the network.
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Client {
                req,
                responder,
                identity,
            } => self.on_client(req, responder, identity),
            // A failed acceptor hears nothing (a chunk gives its room back).
            Event::Peer { msg, .. } if self.faults.is_down() => {
                // (It is not heard either: its health must not count peers it ignores.)
                if let PeerMessage::SnapshotChunk { .. } = msg {
                    self.snapshots.drop_chunk();
                }
            }
            Event::Peer {
                from,
                msg: PeerMessage::Paxos(m),
            } => {
                self.monitor.heard_from(from, &m);
                let now = self.now_ms();
                self.replica.handle_message(now, from, m);
            }
            Event::Peer {
                from,
                msg:
                    PeerMessage::SnapshotChunk {
                        slot,
                        total_bytes,
                        offset,
                        data,
                    },
            } => {
                self.monitor.heard_chunk(from);
                let chunk = ChunkOf {
                    slot,
                    total: total_bytes,
                    offset,
                    data,
                };
                self.on_snapshot_chunk(from, chunk);
            }
        }
    }

    /// A report from work handed off.
    fn on_report(&mut self, report: Report) {
        match report {
            Report::Storage(StorageEvent::Durable { incarnation, id }) => {
                if incarnation == self.faults.incarnation() && !self.faults.is_down() {
                    let now = self.now_ms();
                    self.replica.handle_durable(now, id);
                }
            }
            Report::Storage(StorageEvent::Fatal(e)) => {
                tracing::error!(id = self.cfg.id, reason = %e, "stopping: the log can no longer be trusted");
                self.fatal = Some(ServerError::Storage(e));
            }
            Report::SnapshotWritten(written) => self.snapshot_written(written),
            Report::SnapshotReceived(received) => self.snapshot_received(received),
        }
    }

    /// True while the log is too far behind to take new work; logs the changes.
    fn storage_backlogged(&mut self) -> bool {
        let backlogged = self.storage.is_backlogged();
        if backlogged != self.seen.storage_backlogged {
            self.seen.storage_backlogged = backlogged;
            if backlogged {
                tracing::warn!(
                    id = self.cfg.id,
                    bytes = self.storage.backlog_bytes(),
                    "the log is behind: taking no new requests or messages until it catches up"
                );
            } else {
                tracing::info!(id = self.cfg.id, "the log caught up");
            }
        }
        backlogged
    }
}

/// Notes the largest value of a loaded or received state machine.
fn note_values(sm: &StateMachine, values: &ValueBytesSeen) {
    values.observe(sm.data().values().map(|v| v.len()).max().unwrap_or(0));
}
