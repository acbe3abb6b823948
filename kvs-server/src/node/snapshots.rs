//! When the replica snapshots its state machine, and the snapshots it ships to and receives
//! from its peers. The file format and the transfers themselves belong to
//! [`crate::snapshot`]; this is the event loop's side.
//!
//! Taking a snapshot does not block the loop: the loop hands the changes since the last
//! snapshot (the state machine's delta) and the session table to a blocking thread, which
//! merges them into the previous snapshot file and reports back
//! ([`Report::SnapshotWritten`]); only then do the core and the log forget what it covers.
//! Received snapshots are written, fsynced and decoded off the loop too; the loop only
//! renames the checked file into place and swaps the state in.
//!
//! A snapshot carries the membership as of its slot. A peer asked for a snapshot before
//! this replica took any (a member that joins a young cluster) gets one taken at once.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use paxos_core::NodeId;

use super::backups::Backups;
use super::{note_values, Node};
use crate::admin::events::{Kind, Level};
use crate::error::ServerError;
use crate::event::{Report, SnapshotWritten};
use crate::snapshot::transfer::{Chunk, Credits, Incoming, Outgoing, Received, Start};
use crate::snapshot::{self, SnapshotError};
use crate::state_machine::StateMachine;
use crate::storage::StorageCmd;

/// Also snapshot once this many command bytes were applied since the last snapshot, so the
/// log kept in memory stays bounded however many commands a slot carries.
const SNAPSHOT_LOG_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Replicas stagger their snapshots by id, in this many steps of the interval, so they
/// never all pause to write one at the same moment.
const STAGGER_STEPS: u64 = 8;

/// The event loop's snapshot state.
pub(crate) struct Snapshots {
    /// The slot of the latest snapshot on disk.
    last_slot: u64,
    /// Command bytes applied since the last snapshot.
    applied_bytes: u64,
    /// A snapshot is being written in the background.
    writing: bool,
    /// The snapshot being received from a peer, if any (one at a time).
    incoming: Option<Incoming>,
    /// Snapshots being sent to peers (one per peer at a time).
    outgoing: Outgoing,
    /// Peers asked for a snapshot before there was one: shipped once it is written.
    ship_after: BTreeSet<NodeId>,
    /// Room for received chunks, shared with the peer connections (flow control).
    credits: Credits,
    /// Snapshots streamed to clients (backups).
    backups: Backups,
}

impl Snapshots {
    /// The state of a replica whose latest snapshot covers the slots below `last_slot`;
    /// received chunks take their room from `credits`.
    pub(crate) fn new(last_slot: u64, outgoing: Outgoing, credits: Credits) -> Snapshots {
        Snapshots {
            last_slot,
            applied_bytes: 0,
            writing: false,
            incoming: None,
            outgoing,
            ship_after: BTreeSet::new(),
            credits,
            backups: Backups::default(),
        }
    }

    /// The snapshots streamed to clients.
    pub(crate) fn backups(&self) -> &Backups {
        &self.backups
    }

    /// The slot of the latest snapshot on disk.
    pub(crate) fn last_slot(&self) -> u64 {
        self.last_slot
    }

    /// Gives back the room of a received chunk this replica drops.
    pub(crate) fn drop_chunk(&self) {
        self.credits.give_back();
    }

    /// The transfers to peers (whose lanes follow the membership).
    pub(crate) fn outgoing_mut(&mut self) -> &mut Outgoing {
        &mut self.outgoing
    }

    /// A command of `bytes` was applied.
    pub(crate) fn note_applied(&mut self, bytes: usize) {
        self.applied_bytes += bytes as u64;
    }

    /// Whether replica `id`, having applied every slot below `applied`, should snapshot
    /// now: `every` slots after the last snapshot (the first one staggered by id), or once
    /// [`SNAPSHOT_LOG_BYTES_MAX`] (staggered) of commands were applied since.
    pub(crate) fn due(&self, applied: u64, id: NodeId, every: u64) -> bool {
        let step = id % STAGGER_STEPS;
        let first = self.last_slot == 0;
        let stagger = if first {
            every / STAGGER_STEPS * step
        } else {
            0
        };
        let due_slot = self.last_slot + every + stagger;
        let bytes_max = SNAPSHOT_LOG_BYTES_MAX + SNAPSHOT_LOG_BYTES_MAX / STAGGER_STEPS * step;
        applied >= due_slot || self.applied_bytes >= bytes_max
    }

    /// Whether a snapshot is being written in the background.
    pub(crate) fn is_writing(&self) -> bool {
        self.writing
    }

    /// Forgets transfers in progress (the replica dropped its state).
    pub(crate) fn cancel_transfers(&mut self) {
        self.incoming = None;
        self.outgoing.cancel_all();
    }

    /// The state machine was replaced by one covering the slots below `slot`.
    pub(crate) fn reset(&mut self, slot: u64) {
        self.last_slot = slot;
        self.applied_bytes = 0;
    }
}

impl Node {
    /// Starts writing a snapshot of the state machine in the background, unless one is
    /// being written already.
    pub(super) fn take_snapshot(&mut self) {
        if self.snapshots.writing {
            return;
        }
        // The next snapshot is the previous file with the changes since merged in, written
        // by a blocking thread; the loop only hands over the changes and the sessions.
        let delta = self.sm.take_delta();
        let sessions = self.sm.sessions().clone();
        let membership = self.sm.membership().cloned();
        let auth = self.sm.auth().clone();
        let slot = self.sm.applied();
        let keys = self.sm.len();
        let dir = self.cfg.data_dir.clone();
        let reports = self.reports.clone();
        self.snapshots.writing = true;
        self.snapshots.applied_bytes = 0;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let written =
                snapshot::write_merged(&dir, slot, &delta, &sessions, membership.as_ref(), &auth);
            let result = match written {
                Ok(size) => Ok(size),
                Err(e) => Err((e, delta)),
            };
            let written = SnapshotWritten {
                slot,
                result,
                started,
                keys,
            };
            let _ = reports.send(Report::SnapshotWritten(written));
        });
    }

    /// A background snapshot is durable (or failed): let the core and the log forget what
    /// it covers, and stream it to the clients waiting for it.
    pub(super) fn snapshot_written(&mut self, written: SnapshotWritten) {
        self.snapshot_done(written);
        self.serve_waiting_backups();
    }

    fn snapshot_done(&mut self, written: SnapshotWritten) {
        self.snapshots.writing = false;
        let SnapshotWritten {
            slot,
            result,
            started,
            keys,
        } = written;
        let size = match result {
            Ok(size) => size,
            Err((e, delta)) => {
                // A snapshot is an optimisation: the log still holds everything. The changes
                // go back into the delta so the next snapshot includes them.
                self.sm.restore_delta(delta);
                tracing::error!(error = %e, "cannot write a snapshot; keeping the full log");
                return;
            }
        };
        let took = started.elapsed();
        let ms = took.as_millis() as u64;
        tracing::info!(slot, bytes = size, keys, ms, "snapshot taken");
        self.monitor
            .metrics
            .snapshot_save
            .observe(took.as_secs_f64());
        self.monitor.events.keep(
            Level::Info,
            Kind::Snapshot,
            format!("snapshot of slot {slot} saved: {keys} keys, {size} bytes in {ms} ms"),
        );
        if slot <= self.snapshots.last_slot {
            return;
        }
        self.snapshots.last_slot = slot;
        self.replica.compact(slot);
        self.compact_log(slot);
        for peer in std::mem::take(&mut self.snapshots.ship_after) {
            self.ship_snapshot(peer);
        }
    }

    /// Takes a snapshot if one is due.
    pub(super) fn snapshot_if_due(&mut self) {
        if self
            .snapshots
            .due(self.sm.applied(), self.cfg.id, self.cfg.snapshot_every)
        {
            self.take_snapshot();
        }
    }

    /// Tells the storage thread that the log below `slot` may go.
    fn compact_log(&mut self, slot: u64) {
        if let Err(e) = self.storage.send(StorageCmd::Compact { slot }) {
            self.fatal = Some(ServerError::Storage(e));
        }
    }

    /// Streams the current snapshot file to a lagging peer, from a blocking thread: one
    /// transfer per peer at a time, an older one cancelled when a newer snapshot exists.
    pub(super) fn ship_snapshot(&mut self, to: NodeId) {
        if self.snapshots.last_slot == 0 {
            // None taken yet (only the first membership, of slot 0): take one now, and ship
            // it once written. A store that applied nothing has nothing to snapshot, and its
            // log is whole.
            if self.sm.applied() > 0 {
                if self.snapshots.ship_after.insert(to) {
                    tracing::info!(peer = to, "a peer needs a snapshot: taking one to ship");
                }
                // Nothing if one is being written; again if the last attempt failed.
                self.take_snapshot();
            }
            return;
        }
        let path = self.cfg.data_dir.join(snapshot::FILE_NAME);
        let slot = self.snapshots.last_slot;
        if self.snapshots.outgoing.start(to, path, slot) == Start::Started {
            tracing::info!(peer = to, slot, "shipping a snapshot to a lagging peer");
        }
    }

    /// A chunk of a snapshot from a peer: checked here, written and checked off the loop.
    /// The chunk took a credit (see [`Credits`]): it goes back once the chunk is written,
    /// or here if the chunk is dropped.
    pub(super) fn on_snapshot_chunk(&mut self, from: NodeId, chunk: ChunkOf) {
        if !self.queue_chunk(from, chunk) {
            self.snapshots.drop_chunk();
        }
    }

    /// Queues a chunk for the writer; false if it is dropped.
    fn queue_chunk(&mut self, from: NodeId, chunk: ChunkOf) -> bool {
        let ChunkOf {
            slot,
            total,
            offset,
            data,
        } = chunk;
        // While a local snapshot is being written, a received one could be overwritten by
        // that older one; the sender retries later. A joining replica takes any: it has
        // no membership without one.
        let old = slot <= self.sm.applied() && !self.replica.joining();
        if old || self.snapshots.writing {
            return false;
        }
        if offset == 0 && !self.start_incoming(from, slot, total) {
            return false;
        }
        let Some(incoming) = self.snapshots.incoming.as_mut() else {
            return false;
        };
        match incoming.accept(from, slot, total, offset, data) {
            Chunk::Queued | Chunk::Complete => true,
            Chunk::Ignored => false,
            Chunk::Broken(reason) => {
                tracing::info!(peer = from, slot, %reason, "dropping a snapshot being received");
                self.snapshots.incoming = None;
                false
            }
        }
    }

    /// The first chunk of a transfer: starts receiving it, unless the one in progress
    /// takes precedence. False if the chunk is to be ignored.
    fn start_incoming(&mut self, from: NodeId, slot: u64, total: u64) -> bool {
        match &self.snapshots.incoming {
            // The file of a complete one is being checked: let that finish first.
            Some(i) if i.is_complete() => return false,
            // One at a time: a newer (or restarted) transfer replaces the current one.
            Some(i) if i.from() != from && i.slot() >= slot => return false,
            _ => {}
        }
        let reports = self.reports.clone();
        let report = move |received| {
            let _ = reports.send(Report::SnapshotReceived(received));
        };
        let credits = self.snapshots.credits.clone();
        let incoming = Incoming::start(&self.cfg.data_dir, (from, slot, total), credits, report);
        self.snapshots.incoming = Some(incoming);
        true
    }

    /// A received snapshot was written, fsynced and decoded off the loop: publish it and
    /// install it, unless this replica has moved past it meanwhile.
    pub(super) fn snapshot_received(&mut self, received: Received) {
        let Received {
            from,
            slot,
            path,
            result,
        } = received;
        let ours = self
            .snapshots
            .incoming
            .as_ref()
            .is_some_and(|i| i.from() == from && i.slot() == slot && i.is_complete());
        if !ours {
            let _ = std::fs::remove_file(&path);
            return;
        }
        self.snapshots.incoming = None;
        let sm = match result {
            Ok(sm) => sm,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(peer = from, error = %e, "discarding a received snapshot");
                return;
            }
        };
        let old = sm.applied() <= self.sm.applied() && !self.replica.joining();
        let stale = self.faults.is_down() || old;
        if stale || self.snapshots.writing {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let Some(membership) = sm.membership() else {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(
                peer = from,
                slot,
                "discarding a received snapshot that carries no membership (a peer of an \
                 earlier version?)"
            );
            return;
        };
        if !self.check_joined_as_learner(membership.latest()) {
            let _ = std::fs::remove_file(&path);
            return;
        }
        if sm.applied() != slot {
            tracing::warn!(
                peer = from,
                slot,
                "a received snapshot's slot does not match its header"
            );
        }
        if let Err(e) = snapshot::publish_incoming(&self.cfg.data_dir, &path) {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(peer = from, error = %e, "cannot install a received snapshot");
            return;
        }
        self.install(from, sm);
    }

    /// Swaps in the state machine of a snapshot received from `from`, now on disk.
    fn install(&mut self, from: NodeId, sm: StateMachine) {
        let slot = sm.applied();
        let Some(membership) = sm.membership().cloned() else {
            return; // checked by the caller
        };
        tracing::info!(
            peer = from,
            slot,
            keys = sm.len(),
            configuration = membership.latest().id,
            "installed a snapshot from a peer"
        );
        self.monitor.metrics.snapshot_installed.inc();
        self.monitor.events.keep(
            Level::Info,
            Kind::Snapshot,
            format!(
                "installed a snapshot of slot {slot} from peer {from} ({} keys)",
                sm.len()
            ),
        );
        self.replace_state_machine(sm);
        self.replica
            .install_snapshot(self.now_ms(), slot, membership);
        self.compact_log(slot);
    }

    /// Makes `sm` (from a snapshot on disk) the state machine.
    pub(super) fn replace_state_machine(&mut self, mut sm: StateMachine) {
        note_values(&sm, &self.values);
        sm.set_sessions_max(self.cfg.sessions_max);
        self.snapshots.reset(sm.applied());
        self.sm = sm;
    }

    /// Reads the snapshot in the data dir back (for a replica rebuilding itself).
    pub(super) fn reload_snapshot(&self) -> Result<StateMachine, SnapshotError> {
        Ok(snapshot::read_file(&self.cfg.data_dir)?.unwrap_or_default())
    }
}

/// A chunk of a snapshot, as a peer sent it.
pub(crate) struct ChunkOf {
    /// The snapshot covers the slots below this.
    pub slot: u64,
    /// The snapshot's size.
    pub total: u64,
    /// Where the data goes.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshots(last_slot: u64) -> Snapshots {
        Snapshots::new(last_slot, Outgoing::default(), Credits::default())
    }

    #[test]
    fn the_first_snapshot_is_staggered_by_id_and_later_ones_are_not() {
        let every = 800;
        // Replica 1 waits one eighth longer than replica 0 (or 8) for its first snapshot.
        assert!(snapshots(0).due(800, 8, every));
        assert!(!snapshots(0).due(899, 1, every));
        assert!(snapshots(0).due(900, 1, every));
        assert!(!snapshots(0).due(1499, 7, every));
        assert!(snapshots(0).due(1500, 7, every));
        // Later ones come every `every` slots.
        assert!(!snapshots(1000).due(1799, 3, every));
        assert!(snapshots(1000).due(1800, 3, every));
    }

    #[test]
    fn many_applied_bytes_make_a_snapshot_due_early() {
        let mut s = snapshots(1000);
        s.note_applied(SNAPSHOT_LOG_BYTES_MAX as usize - 1);
        assert!(!s.due(1001, 8, 10_000));
        s.note_applied(1);
        assert!(s.due(1001, 8, 10_000));
        // Replica 1's bound is one eighth higher.
        assert!(!s.due(1001, 1, 10_000));
        s.reset(1001);
        assert!(!s.due(1001, 8, 10_000), "reset with the new snapshot");
    }
}
