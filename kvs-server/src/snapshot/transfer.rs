//! Moving a snapshot between replicas, with bounded memory on both ends.
//!
//! Sending ([`Outgoing`]): at most one transfer per peer at a time. Chunks are read from the
//! snapshot file by a blocking thread and queued on the peer's snapshot lane
//! ([`crate::net::peers::SnapshotLane`], encoded), a small queue of its own that the link drains only when
//! no consensus message waits; the thread waits for room, so at most a few chunks are in
//! memory. A transfer stops when it is cancelled (a newer snapshot supersedes it) or when the
//! connection it streams over is lost.
//!
//! Receiving ([`Incoming`]): chunks are checked for order on the event loop and handed to a
//! blocking thread that writes them to a file of their own; once complete, that thread
//! fsyncs and decodes the file (which checks it) and reports the decoded state machine. The
//! event loop then only renames the file into place ([`super::publish_incoming`]) and swaps
//! the state in.
//!
//! Flow control ([`Credits`]): the peer connection takes a credit before it hands a chunk to
//! the event loop, and the credit comes back once the chunk is written (or dropped). With no
//! credit left the connection stops reading, TCP pushes back, and the sender waits: a
//! sender on a fast link never outruns a slow disk (which would break the transfer), and
//! at most [`INCOMING_QUEUE_CHUNKS`] chunks are held.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::PeerMessage;

use super::format;
use crate::admin::events::{Kind, Notables};
use crate::disk::{Disk, Open};
use crate::metrics::Metrics;
use crate::state_machine::StateMachine;

/// Chunks received and not yet written to disk, at most (the [`Credits`]).
pub const INCOMING_QUEUE_CHUNKS: usize = 16;

/// Room for received snapshot chunks, shared by a replica's peer connections, its event loop
/// and its snapshot writer: a connection takes a credit ([`Credits::take`]) before it hands
/// a chunk on, and whoever disposes of the chunk gives it back ([`Credits::give_back`]): the
/// writer once the chunk is written, the event loop when it drops the chunk. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Credits {
    room: Arc<tokio::sync::Semaphore>,
}

impl Default for Credits {
    fn default() -> Self {
        Credits {
            room: Arc::new(tokio::sync::Semaphore::new(INCOMING_QUEUE_CHUNKS)),
        }
    }
}

impl Credits {
    /// Waits for room for one more chunk, and takes it.
    pub async fn take(&self) {
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(permit) = self.room.acquire().await {
            permit.forget();
        }
    }

    /// Gives back the room of one chunk, written or dropped.
    pub fn give_back(&self) {
        self.room.add_permits(1);
    }
}

/// Where one peer's snapshot chunks go.
struct Lane {
    tx: mpsc::Sender<Bytes>,
    epoch: Arc<AtomicU64>,
}

/// A transfer in progress to one peer.
struct Running {
    /// The snapshot slot being sent (the latest local snapshot when it started).
    slot: u64,
    cancel: CancellationToken,
    done: Arc<AtomicBool>,
}

/// What [`Outgoing::start`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// A new transfer started (cancelling an older one to the same peer, if any).
    Started,
    /// A transfer of this snapshot, or a newer one, is already running to this peer.
    AlreadyRunning,
    /// The peer is not a member.
    UnknownPeer,
}

/// The snapshot transfers of a replica to its peers: at most one per peer.
#[derive(Default)]
pub struct Outgoing {
    lanes: BTreeMap<NodeId, Lane>,
    running: BTreeMap<NodeId, Running>,
    /// Where transfers report their duration and bytes, and are recorded as events.
    telemetry: Option<(Arc<Metrics>, Arc<Notables>)>,
}

impl Outgoing {
    /// From now on transfers are measured in `metrics` and recorded in `events`.
    pub fn observe(&mut self, metrics: Arc<Metrics>, events: Arc<Notables>) {
        self.telemetry = Some((metrics, events));
    }

    /// Registers the snapshot lane of `peer`: its chunk queue and its link's epoch.
    pub fn add_peer(&mut self, peer: NodeId, tx: mpsc::Sender<Bytes>, epoch: Arc<AtomicU64>) {
        self.lanes.insert(peer, Lane { tx, epoch });
    }

    /// Forgets the lane of `peer` (no longer a member), cancelling a transfer to it.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.lanes.remove(&peer);
        if let Some(r) = self.running.remove(&peer) {
            r.cancel.cancel();
        }
    }

    /// Streams the snapshot file `path` (of `slot`) to `to` from a blocking thread, unless
    /// a transfer of that snapshot or a newer one is running; an older one is cancelled.
    pub fn start(&mut self, to: NodeId, path: PathBuf, slot: u64) -> Start {
        let Some(lane) = self.lanes.get(&to) else {
            return Start::UnknownPeer;
        };
        if let Some(r) = self.running.get(&to) {
            if !r.done.load(Ordering::Acquire) {
                if r.slot >= slot {
                    return Start::AlreadyRunning;
                }
                tracing::info!(
                    peer = to,
                    old = r.slot,
                    new = slot,
                    "a newer snapshot supersedes the one being sent"
                );
                r.cancel.cancel();
            }
        }
        let cancel = CancellationToken::new();
        let done = Arc::new(AtomicBool::new(false));
        let tx = lane.tx.clone();
        let epoch = Arc::clone(&lane.epoch);
        let (thread_cancel, thread_done) = (cancel.clone(), Arc::clone(&done));
        let telemetry = self.telemetry.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let sent = stream(&path, &tx, &epoch, &thread_cancel);
            report_sent(to, slot, &sent, started.elapsed(), telemetry.as_ref());
            thread_done.store(true, Ordering::Release);
        });
        self.running.insert(to, Running { slot, cancel, done });
        Start::Started
    }

    /// True if a transfer to `to` is running.
    pub fn is_running(&self, to: NodeId) -> bool {
        self.running
            .get(&to)
            .is_some_and(|r| !r.done.load(Ordering::Acquire))
    }

    /// Cancels every transfer (the replica dropped its state).
    pub fn cancel_all(&mut self) {
        for r in self.running.values() {
            r.cancel.cancel();
        }
    }
}

/// Logs and measures a transfer to `to` that ended with `sent` after `took`.
fn report_sent(
    to: NodeId,
    slot: u64,
    sent: &Result<u64, String>,
    took: Duration,
    telemetry: Option<&(Arc<Metrics>, Arc<Notables>)>,
) {
    let Some((metrics, events)) = telemetry else {
        match sent {
            Ok(bytes) => tracing::info!(peer = to, bytes, "snapshot sent"),
            Err(e) => tracing::info!(peer = to, reason = %e, "snapshot transfer stopped"),
        }
        return;
    };
    match sent {
        Ok(bytes) => {
            metrics.snapshot_send.observe(took.as_secs_f64());
            metrics.snapshot_sent_bytes.inc_by(*bytes);
            metrics.snapshot_send_success.inc();
            events.info(
                Kind::Snapshot,
                format!(
                    "snapshot of slot {slot} sent to peer {to}: {bytes} bytes in {:.1} s",
                    took.as_secs_f64()
                ),
            );
        }
        Err(e) => {
            metrics.snapshot_send_failures.inc();
            events.info(
                Kind::Snapshot,
                format!("snapshot transfer to peer {to} stopped: {e}"),
            );
        }
    }
}

/// Reads the snapshot file at `path` in chunks and queues them on a peer's lane, waiting
/// for room. The file is opened once, so a newer snapshot renamed over it meanwhile does
/// not mix into this one. Stops when cancelled or when the link's epoch changes (the
/// connection the chunks went over is gone). Returns the bytes sent.
fn stream(
    path: &Path,
    tx: &mpsc::Sender<Bytes>,
    epoch: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<u64, String> {
    let started_epoch = epoch.load(Ordering::Acquire);
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let total = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", path.display()))?
        .len();
    let mut header = [0u8; format::HEADER_BYTES];
    file.read_exact(&mut header)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    let slot = format::header_slot(&header)
        .ok_or_else(|| format!("{} is not a snapshot (bad magic)", path.display()))?;
    let runtime = tokio::runtime::Handle::current();
    let mut offset = 0u64;
    let mut pending = header.to_vec();
    while offset < total {
        let mut buf = std::mem::take(&mut pending);
        let start = buf.len();
        buf.resize(wire::SNAPSHOT_CHUNK_BYTES, 0);
        let filled = start + read_full(&mut file, &mut buf[start..], path)?;
        buf.truncate(filled);
        if buf.is_empty() {
            return Err(format!(
                "{} ended at {offset} of {total} bytes",
                path.display()
            ));
        }
        let len = buf.len() as u64;
        let chunk = PeerMessage::SnapshotChunk {
            slot,
            total_bytes: total,
            offset,
            data: Bytes::from(buf),
        };
        let chunk = wire::encode(&chunk).map_err(|e| format!("cannot encode a chunk: {e}"))?;
        if epoch.load(Ordering::Acquire) != started_epoch {
            return Err("the peer link was lost".into());
        }
        runtime.block_on(async {
            // A cancelled transfer sends nothing more, even when the lane has room.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err("superseded".to_string()),
                sent = tx.send(chunk) => sent.map_err(|_| "the peer link closed".to_string()),
            }
        })?;
        offset += len;
    }
    Ok(offset)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8], path: &Path) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read(&mut buf[filled..])
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A snapshot received completely, checked and decoded, waiting to be published.
#[derive(Debug)]
pub struct Received {
    /// Who sent it.
    pub from: NodeId,
    /// The slot in its header.
    pub slot: u64,
    /// Where it was written (to be renamed into place, or removed).
    pub path: PathBuf,
    /// The decoded state, or why the file is unusable.
    pub result: Result<StateMachine, String>,
}

/// What to do with a chunk, according to [`Incoming::accept`].
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Queued for writing.
    Queued,
    /// The last chunk was queued: the writer will report the whole snapshot.
    Complete,
    /// Not part of this transfer (a stale chunk of a superseded one): ignored.
    Ignored,
    /// The transfer is broken (a gap, or the writer fell behind); drop it.
    Broken(String),
}

/// A snapshot being received from a peer.
pub struct Incoming {
    from: NodeId,
    slot: u64,
    total: u64,
    received: u64,
    /// `None` once every chunk is queued.
    tx: Option<mpsc::Sender<Bytes>>,
}

/// Distinguishes the files of successive transfers.
static INCOMING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Incoming {
    /// Starts receiving snapshot `slot` of `total` bytes from `from` into a new file in
    /// `dir`; `report` is called from the writer thread once the snapshot is complete and
    /// checked (or unusable). Dropping the [`Incoming`] early stops the writer, which then
    /// removes its file.
    /// Each chunk queued (and taken from `credits`) gives its credit back once written.
    pub fn start(
        dir: &Path,
        (from, slot, total): (NodeId, u64, u64),
        credits: Credits,
        report: impl FnOnce(Received) + Send + 'static,
    ) -> Incoming {
        let seq = INCOMING_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}.{seq}", super::INCOMING_NAME));
        let (tx, mut rx) = mpsc::channel(INCOMING_QUEUE_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let disk = &crate::disk::RealDisk;
            let written = write_chunks(disk, &path, &mut rx, total, &credits);
            // Chunks still queued (a write failed) give their credits back too; closed first,
            // so no chunk arrives after.
            rx.close();
            while rx.try_recv().is_ok() {
                credits.give_back();
            }
            let result = match written {
                Ok(true) => check(disk, &path, from),
                Ok(false) => {
                    let _ = std::fs::remove_file(&path);
                    return; // dropped before complete
                }
                Err(e) => Err(e),
            };
            report(Received {
                from,
                slot,
                path,
                result,
            });
        });
        Incoming {
            from,
            slot,
            total,
            received: 0,
            tx: Some(tx),
        }
    }

    /// The peer sending it.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// The snapshot's slot.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// True once every chunk has been queued (the writer is checking the file).
    pub fn is_complete(&self) -> bool {
        self.tx.is_none()
    }

    /// Takes the next chunk if it is the one expected.
    pub fn accept(
        &mut self,
        from: NodeId,
        slot: u64,
        total: u64,
        offset: u64,
        data: Bytes,
    ) -> Chunk {
        if from != self.from || slot != self.slot || total != self.total {
            return Chunk::Ignored;
        }
        let Some(tx) = &self.tx else {
            return Chunk::Ignored;
        };
        if offset != self.received {
            return Chunk::Broken(format!("expected offset {}, got {offset}", self.received));
        }
        let len = data.len() as u64;
        if tx.try_send(data).is_err() {
            return Chunk::Broken("the snapshot writer fell behind".into());
        }
        self.received += len;
        if self.received >= self.total {
            self.tx = None; // the writer sees the end of the chunks
            return Chunk::Complete;
        }
        Chunk::Queued
    }
}

/// Writes chunks to `path` until `total` bytes, giving each chunk's credit back once it is
/// written; false if the chunks stopped before.
pub(crate) fn write_chunks(
    disk: &dyn Disk,
    path: &Path,
    rx: &mut mpsc::Receiver<Bytes>,
    total: u64,
    credits: &Credits,
) -> Result<bool, String> {
    let mut file = disk
        .open(path, Open::Truncate)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut written = 0u64;
    while written < total {
        let Some(data) = rx.blocking_recv() else {
            return Ok(false);
        };
        let appended = file.append(&data);
        credits.give_back();
        appended.map_err(|e| format!("write {}: {e}", path.display()))?;
        written += data.len() as u64;
    }
    Ok(written == total)
}

/// fsyncs and decodes a received snapshot file (the decoder checks its checksum).
pub(crate) fn check(disk: &dyn Disk, path: &Path, from: NodeId) -> Result<StateMachine, String> {
    let mut file = disk
        .open(path, Open::Read)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    file.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    let origin = PathBuf::from(format!("snapshot from replica {from}"));
    let input = std::io::BufReader::with_capacity(
        super::file::FILE_BUFFER_BYTES,
        crate::disk::FileReader::new(file, 0),
    );
    format::decode_from(input, &origin).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A file that looks like a snapshot of `slot` to the sender: magic, slot, filler.
    fn fake_snapshot(dir: &Path, name: &str, slot: u64, bytes: usize) -> PathBuf {
        let mut data = b"KVSSNAP3".to_vec();
        data.extend_from_slice(&slot.to_le_bytes());
        data.resize(bytes, 7);
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    async fn next_chunk(rx: &mut mpsc::Receiver<Bytes>) -> Option<(u64, u64)> {
        let frame = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(frame)) => frame,
            _ => return None,
        };
        match wire::decode(&frame) {
            Ok(PeerMessage::SnapshotChunk { slot, offset, .. }) => Some((slot, offset)),
            _ => None,
        }
    }

    async fn wait_done(out: &Outgoing, to: NodeId) {
        for _ in 0..500 {
            if !out.is_running(to) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the transfer to {to} did not stop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_transfer_per_peer_and_a_newer_snapshot_supersedes_the_older() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let chunk = wire::SNAPSHOT_CHUNK_BYTES;
        let old = fake_snapshot(dir.path(), "old", 5, 3 * chunk);
        let new = fake_snapshot(dir.path(), "new", 7, 2 * chunk + 10);
        let (tx, mut rx) = mpsc::channel(1);
        let mut out = Outgoing::default();
        out.add_peer(2, tx, Arc::new(AtomicU64::new(0)));
        assert_eq!(out.start(3, old.clone(), 5), Start::UnknownPeer);
        assert_eq!(out.start(2, old.clone(), 5), Start::Started);
        assert_eq!(out.start(2, old, 5), Start::AlreadyRunning);
        // The lane holds one chunk: the transfer waits for room instead of reading on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(out.is_running(2));
        assert_eq!(out.start(2, new, 7), Start::Started);
        let mut seen = Vec::new();
        while let Some(c) = next_chunk(&mut rx).await {
            seen.push(c);
            if c == (7, 2 * chunk as u64) {
                break;
            }
        }
        let first_new = seen.iter().position(|&(slot, _)| slot == 7);
        let Some(first_new) = first_new else {
            panic!("the newer snapshot was not sent: {seen:?}");
        };
        assert!(
            seen[..first_new].iter().all(|&(slot, _)| slot == 5) && first_new <= 2,
            "at most what the lane held of the older transfer comes first: {seen:?}"
        );
        let newer: Vec<u64> = seen[first_new..].iter().map(|&(_, o)| o).collect();
        assert_eq!(newer, vec![0, chunk as u64, 2 * chunk as u64], "{seen:?}");
        wait_done(&out, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transfer_stops_when_its_connection_is_lost() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = fake_snapshot(dir.path(), "s", 9, 20 * wire::SNAPSHOT_CHUNK_BYTES);
        let (tx, mut rx) = mpsc::channel(1);
        let epoch = Arc::new(AtomicU64::new(0));
        let mut out = Outgoing::default();
        out.add_peer(2, tx, Arc::clone(&epoch));
        assert_eq!(out.start(2, path, 9), Start::Started);
        assert_eq!(next_chunk(&mut rx).await, Some((9, 0)));
        epoch.fetch_add(1, Ordering::AcqRel); // the link reconnected
        let mut more = 0;
        while next_chunk(&mut rx).await.is_some() {
            more += 1;
            assert!(more <= 2, "the transfer went on over a new connection");
        }
        wait_done(&out, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_in_order_are_written_checked_and_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bytes = format::encode(&StateMachine::new()).unwrap_or_else(|e| panic!("{e}"));
        let total = bytes.len() as u64;
        let (report_tx, report_rx) = std::sync::mpsc::channel();
        let credits = Credits::default();
        let mut incoming = Incoming::start(dir.path(), (1, 4, total), credits.clone(), move |r| {
            let _ = report_tx.send(r);
        });
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let (a, b) = (Bytes::copy_from_slice(a), Bytes::copy_from_slice(b));
        assert_eq!(
            incoming.accept(3, 4, total, 0, a.clone()),
            Chunk::Ignored,
            "another peer"
        );
        assert_eq!(
            incoming.accept(1, 5, total, 0, a.clone()),
            Chunk::Ignored,
            "another slot"
        );
        assert_eq!(incoming.accept(1, 4, total, 0, a), Chunk::Queued);
        assert_eq!(incoming.accept(1, 4, total, total / 2, b), Chunk::Complete);
        assert!(incoming.is_complete());
        let received = report_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no report: {e}"));
        assert_eq!((received.from, received.slot), (1, 4));
        assert!(received.result.is_ok(), "{:?}", received.result.err());
        assert_eq!(std::fs::read(&received.path).ok(), Some(bytes));
        // Both chunks' credits came back: all the room is free again.
        assert_eq!(credits.room.available_permits(), INCOMING_QUEUE_CHUNKS + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_waits_for_room_instead_of_breaking_the_transfer() {
        let credits = Credits::default();
        for _ in 0..INCOMING_QUEUE_CHUNKS {
            credits.take().await;
        }
        let waiting = tokio::time::timeout(Duration::from_millis(100), credits.take()).await;
        assert!(waiting.is_err(), "no room: a connection waits");
        credits.give_back();
        tokio::time::timeout(Duration::from_secs(5), credits.take())
            .await
            .unwrap_or_else(|_| panic!("room given back is taken"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_breaks_the_transfer_and_its_file_is_removed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut incoming = Incoming::start(dir.path(), (1, 4, 100), Credits::default(), |_| {
            panic!("a broken transfer is not reported")
        });
        assert_eq!(
            incoming.accept(1, 4, 100, 0, Bytes::from(vec![0; 10])),
            Chunk::Queued
        );
        assert!(matches!(
            incoming.accept(1, 4, 100, 20, Bytes::from(vec![0; 10])),
            Chunk::Broken(_)
        ));
        drop(incoming);
        for _ in 0..500 {
            let left = std::fs::read_dir(dir.path())
                .map(|d| d.count())
                .unwrap_or(0);
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the file of a dropped transfer was not removed");
    }
}
