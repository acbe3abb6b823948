//! The storage thread: owns the write-ahead log, makes persist batches durable with group
//! commit (everything queued, one fdatasync), and reports back to the event loop.
//!
//! The queue to the thread is bounded in bytes by backpressure rather than by dropping:
//! [`Storage::is_backlogged`] tells the event loop to stop taking new work (peer and client
//! messages) until the disk has caught up, so a stalled disk cannot grow the queue without
//! bound.
//!
//! It keeps a mirror of the durable consensus state (promise, accepted values, commit
//! index) so that it can rewrite the log after a snapshot without asking the event loop.
//! A recovering replica is handed its durable state read back from the log files, which
//! is checked against the mirror.
//!
//! Injected crashes ([`Storage::crash`]): every request carries the incarnation of the
//! replica that issued it, and the writer drops, before they reach the file, the appends
//! of an incarnation that crashed, so what was not yet durable is lost as in a real crash.

pub mod record;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use paxos_core::{PersistEntry, RecoveredState};

pub use record::RecordError;

use crate::wal::{Wal, WalError, WalOptions};
use writer::Writer;

/// The log's directory inside a data directory.
pub const WAL_DIR_NAME: &str = "wal";

/// A request to the storage thread.
pub enum StorageCmd {
    /// Make `entries` durable, then report `Durable { incarnation, id }`.
    Append {
        /// Which incarnation of the replica issued the batch.
        incarnation: u64,
        /// The batch id from `Output::Persist`.
        id: u64,
        /// The records.
        entries: Vec<PersistEntry>,
    },
    /// A snapshot covering every slot below `slot` is durable: rewrite the log without them.
    Compact {
        /// The snapshot's slot.
        slot: u64,
    },
    /// Send back the durable state, read back from the log files after syncing everything
    /// queued before this request (appends dropped by [`Storage::crash`] excepted).
    DurableState {
        /// Where to send it.
        reply: tokio::sync::oneshot::Sender<RecoveredState>,
    },
}

/// What the storage thread reports.
#[derive(Debug)]
pub enum StorageEvent {
    /// Batches up to `id` of `incarnation` are durable.
    Durable {
        /// The replica incarnation.
        incarnation: u64,
        /// The highest durable batch id.
        id: u64,
    },
    /// The log failed (an fsync or write error): the node must stop.
    Fatal(StorageError),
}

/// Why the log cannot be opened or used. After any of these but [`StorageError::Open`] and
/// [`StorageError::Undecodable`] at start, the node stops: a failed write or fsync may
/// have lost data the kernel had accepted, so going on is not safe.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The log could not be opened (its files are damaged, or cannot be read).
    #[error(transparent)]
    Open(WalError),
    /// A record in the log cannot be decoded: refusing to start beats misreading it.
    #[error(
        "log record {index} in {} cannot be decoded ({source}); refusing to start",
        .dir.display()
    )]
    Undecodable {
        /// The record's position in the log, from 0.
        index: usize,
        /// The log's directory.
        dir: PathBuf,
        /// What is wrong with it.
        source: RecordError,
    },
    /// Writing, syncing or rewriting the log failed.
    #[error("write-ahead log failed: {0}")]
    Failed(WalError),
    /// A record could not be encoded.
    #[error("cannot encode a log record: {0}")]
    Encode(RecordError),
    /// The log writer thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Thread(std::io::Error),
    /// The log writer thread has stopped (after one of the errors above).
    #[error("the log writer has stopped")]
    WriterStopped,
    /// Reopening the log to read it back failed.
    #[error("cannot reopen the write-ahead log: {0}")]
    Reopen(WalError),
    /// A record read back after reopening cannot be decoded.
    #[error("log record {index} in {} cannot be decoded after reopening: {source}", .dir.display())]
    UndecodableOnReadBack {
        /// The record's position in the log, from 0.
        index: usize,
        /// The log's directory.
        dir: PathBuf,
        /// What is wrong with it.
        source: RecordError,
    },
    /// The log read back from its files is not what was written to it.
    #[error(
        "the write-ahead log in {} read back differs from what was written: promise \
         {} vs {}, {} vs {} accepted records, commit {} vs {}",
        .dir.display(),
        .read.promised,
        .written.promised,
        .read.accepted.len(),
        .written.accepted.len(),
        .read.commit,
        .written.commit
    )]
    ReadBackMismatch {
        /// The log's directory.
        dir: PathBuf,
        /// What the files hold.
        read: Box<RecoveredState>,
        /// What was written.
        written: Box<RecoveredState>,
    },
}

/// Record bytes queued for the log at most before [`Storage::is_backlogged`] holds.
pub const BACKLOG_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a record costs in the queue besides its value.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The handle the event loop keeps.
pub struct Storage {
    tx: mpsc::Sender<StorageCmd>,
    thread: Option<thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    backlog_bytes_max: usize,
}

/// What the event loop and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of records queued and not yet durable (or dropped).
    backlog: AtomicUsize,
    /// Appends of incarnations below this crashed: the writer drops them unwritten.
    live_incarnation: AtomicU64,
    /// How many appends were dropped that way.
    dropped_batches: AtomicU64,
}

/// The bytes a batch of records holds in the queue.
fn batch_bytes(entries: &[PersistEntry]) -> usize {
    entries
        .iter()
        .map(|e| match e {
            PersistEntry::Accepted { value, .. } => value.payload_bytes() + ENTRY_OVERHEAD_BYTES,
            _ => ENTRY_OVERHEAD_BYTES,
        })
        .sum()
}

/// Replays the records of a log into the state they describe.
fn replay(
    records: &[Vec<u8>],
    undecodable: impl Fn(usize, RecordError) -> StorageError,
) -> Result<RecoveredState, StorageError> {
    let mut state = RecoveredState::default();
    for (index, raw) in records.iter().enumerate() {
        let entry = record::decode(raw).map_err(|e| undecodable(index, e))?;
        state.apply(entry);
    }
    Ok(state)
}

/// Opens the log in `dir` and replays it. Returns the replayed state (its `snapshot_slot`
/// is left at 0: the caller sets it from its snapshot) and the storage handle.
pub fn open(
    dir: &Path,
    options: WalOptions,
    on_event: impl Fn(StorageEvent) + Send + 'static,
) -> Result<(RecoveredState, Storage), StorageError> {
    let (wal, records) = Wal::open(dir, options.clone()).map_err(StorageError::Open)?;
    let state = replay(&records, |index, source| StorageError::Undecodable {
        index,
        dir: dir.to_path_buf(),
        source,
    })?;
    drop(records);
    let (tx, rx) = mpsc::channel();
    let writer = Writer::new(wal, options, state.clone());
    let shared = writer.shared();
    let thread = thread::Builder::new()
        .name("kvs-wal".into())
        .spawn(move || writer.run(rx, on_event))
        .map_err(StorageError::Thread)?;
    Ok((
        state,
        Storage {
            tx,
            thread: Some(thread),
            shared,
            backlog_bytes_max: BACKLOG_BYTES_MAX,
        },
    ))
}

impl Storage {
    /// Queues a request. Fails only if the thread stopped (after a fatal error). Never
    /// refuses for lack of room: the caller keeps the queue bounded by taking no new work
    /// while [`Storage::is_backlogged`].
    pub fn send(&self, cmd: StorageCmd) -> Result<(), StorageError> {
        let bytes = match &cmd {
            StorageCmd::Append { entries, .. } => batch_bytes(entries),
            _ => 0,
        };
        self.shared.backlog.fetch_add(bytes, Ordering::AcqRel);
        self.tx.send(cmd).map_err(|_| {
            self.shared.backlog.fetch_sub(bytes, Ordering::AcqRel);
            StorageError::WriterStopped
        })
    }

    /// An injected crash of every incarnation below `incarnation`: their appends still
    /// queued are dropped, never written nor reported durable, as a real crash loses what
    /// was not on disk yet. An append the writer has begun writing completes (the crash
    /// came just after it), so what survives is always a prefix of what was queued. Later
    /// appends of `incarnation` and above are written as usual.
    pub fn crash(&self, incarnation: u64) {
        self.shared
            .live_incarnation
            .fetch_max(incarnation, Ordering::AcqRel);
    }

    /// How many appends [`Storage::crash`] has dropped so far (all of them, once a later
    /// [`StorageCmd::DurableState`] was answered).
    pub fn dropped_batches(&self) -> u64 {
        self.shared.dropped_batches.load(Ordering::Acquire)
    }

    /// Bytes of records queued and not yet durable.
    pub fn backlog_bytes(&self) -> usize {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// True while more than the bound of record bytes waits for the disk: take no new work
    /// until it is false again (a `Durable` report follows every drop of the backlog).
    pub fn is_backlogged(&self) -> bool {
        self.backlog_bytes() > self.backlog_bytes_max
    }

    /// Sets the bound of [`Storage::is_backlogged`] (by default [`BACKLOG_BYTES_MAX`]).
    pub fn set_backlog_bytes_max(&mut self, bytes: usize) {
        self.backlog_bytes_max = bytes;
    }

    /// Stops the thread after it has written everything queued.
    pub fn close(mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
