//! What a replica's event loop reacts to: messages from the network ([`Event`], on one
//! bounded inbox that gives backpressure), and reports from work it handed off
//! ([`Report`]: the storage thread and the snapshot writers, on an unbounded channel so
//! that they never wait on the loop while the loop waits on them).
//!
//! This module only names the types; it sits below both the network tasks that send
//! events and the node that handles them, so neither imports the other.

use std::time::Instant;

use paxos_core::NodeId;
use wire::{ClientRequest, PeerMessage};

use crate::answers::Responder;
use crate::snapshot::transfer::Received;
use crate::snapshot::SnapshotError;
use crate::state_machine::Delta;
use crate::storage::StorageEvent;

/// A message from the network for the event loop.
#[derive(Debug)]
pub enum Event {
    /// A message from a peer.
    Peer {
        /// Who sent it.
        from: NodeId,
        /// The message.
        msg: PeerMessage,
    },
    /// A client request, with the way to answer it.
    Client {
        /// The request.
        req: ClientRequest,
        /// Where the answer goes.
        responder: Responder,
        /// Who sent it: the identity proven by the client's TLS certificate, if the
        /// connection presented one that was verified; `None` on a plain connection or a
        /// TLS connection without a client certificate.
        identity: Option<ClientIdentity>,
    },
}

/// The identity a client proved: the subject common name of its verified TLS certificate.
pub type ClientIdentity = std::sync::Arc<str>;

/// A report from work the event loop handed off.
#[derive(Debug)]
pub enum Report {
    /// The storage thread made a batch durable, or failed.
    Storage(StorageEvent),
    /// A snapshot was written in the background (or failed).
    SnapshotWritten(SnapshotWritten),
    /// A snapshot from a peer was received, checked and decoded off the loop.
    SnapshotReceived(Received),
}

/// How writing a snapshot in the background went.
#[derive(Debug)]
pub struct SnapshotWritten {
    /// The slot it covers (every slot below it).
    pub slot: u64,
    /// Its size in bytes, or why it failed with the changes it was to include (they go
    /// back into the state machine's delta).
    pub result: Result<u64, (SnapshotError, Delta)>,
    /// When writing began.
    pub started: Instant,
    /// Keys in the store when it was taken.
    pub keys: usize,
}
