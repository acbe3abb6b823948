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

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use paxos_core::{PersistEntry, RecoveredState};

use crate::wal::{Wal, WalError, WalOptions};

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
    Fatal(String),
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

/// Opens the log in `dir` and replays it. Returns the replayed state (its `snapshot_slot`
/// is left at 0: the caller sets it from its snapshot) and the storage handle.
pub fn open(
    dir: &Path,
    options: WalOptions,
    on_event: impl Fn(StorageEvent) + Send + 'static,
) -> Result<(RecoveredState, Storage), String> {
    let (wal, records) = Wal::open(dir, options.clone()).map_err(|e| e.to_string())?;
    let mut state = RecoveredState::default();
    for (i, raw) in records.iter().enumerate() {
        let entry: PersistEntry = wire::decode(raw).map_err(|e| {
            format!(
                "log record {i} in {} cannot be decoded ({e}); refusing to start",
                dir.display()
            )
        })?;
        state.apply(entry);
    }
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        wal,
        options,
        mirror: state.clone(),
        shared: Arc::new(Shared::default()),
    };
    let shared = Arc::clone(&writer.shared);
    let thread = thread::Builder::new()
        .name("kvs-wal".into())
        .spawn(move || writer.run(rx, on_event))
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
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
    pub fn send(&self, cmd: StorageCmd) -> Result<(), String> {
        let bytes = match &cmd {
            StorageCmd::Append { entries, .. } => batch_bytes(entries),
            _ => 0,
        };
        self.shared.backlog.fetch_add(bytes, Ordering::AcqRel);
        self.tx.send(cmd).map_err(|_| {
            self.shared.backlog.fetch_sub(bytes, Ordering::AcqRel);
            "the log writer has stopped".to_string()
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

/// The storage thread's state: the log, and the mirror of what it holds.
struct Writer {
    wal: Wal,
    options: WalOptions,
    mirror: RecoveredState,
    shared: Arc<Shared>,
}

/// What the writer has done in the current group and not yet synced or reported.
#[derive(Default)]
struct Group {
    /// The last batch written, to report durable after the sync.
    durable: Option<(u64, u64)>,
    unsynced: bool,
    /// Bytes of this group's records, off the backlog once they are durable.
    bytes: usize,
}

fn fatal(e: WalError) -> StorageEvent {
    StorageEvent::Fatal(format!("write-ahead log failed: {e}"))
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<StorageCmd>, on_event: impl Fn(StorageEvent)) {
        while let Ok(first) = rx.recv() {
            // Group commit: everything already queued goes into this one sync.
            let mut cmds = vec![first];
            while let Ok(c) = rx.try_recv() {
                cmds.push(c);
            }
            let mut group = Group::default();
            for cmd in cmds {
                if let Err(event) = self.handle(cmd, &mut group, &on_event) {
                    on_event(event);
                    return;
                }
            }
            if let Err(event) = self.finish_group(&mut group, &on_event) {
                on_event(event);
                return;
            }
        }
    }

    fn handle(
        &mut self,
        cmd: StorageCmd,
        group: &mut Group,
        on_event: &impl Fn(StorageEvent),
    ) -> Result<(), StorageEvent> {
        match cmd {
            StorageCmd::Append {
                incarnation,
                id,
                entries,
            } => {
                let bytes = batch_bytes(&entries);
                if incarnation < self.shared.live_incarnation.load(Ordering::Acquire) {
                    // Its replica crashed before this reached the disk: lost, unreported.
                    self.shared.backlog.fetch_sub(bytes, Ordering::AcqRel);
                    self.shared.dropped_batches.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                group.bytes += bytes;
                for e in entries {
                    let raw = wire::encode(&e).map_err(|err| {
                        StorageEvent::Fatal(format!("cannot encode a log record: {err}"))
                    })?;
                    self.wal.append(&raw).map_err(fatal)?;
                    self.mirror.apply(e);
                }
                group.unsynced = true;
                // Report per incarnation; a newer incarnation supersedes an older one.
                group.durable = Some((incarnation, id));
            }
            StorageCmd::Compact { slot } => {
                if slot <= self.mirror.snapshot_slot {
                    return Ok(());
                }
                self.wal.sync().map_err(fatal)?;
                self.mirror.snapshot_slot = slot;
                self.mirror.accepted = self.mirror.accepted.split_off(&slot);
                self.mirror.commit = self.mirror.commit.max(slot);
                let raws = encode_all(&self.mirror.to_entries())?;
                self.wal.rewrite(raws.iter()).map_err(fatal)?;
                group.unsynced = false;
            }
            StorageCmd::DurableState { reply } => {
                self.finish_group(group, on_event)?;
                let state = self.read_back()?;
                let _ = reply.send(state);
            }
        }
        Ok(())
    }

    /// Syncs what the group wrote and reports it durable.
    fn finish_group(
        &mut self,
        group: &mut Group,
        on_event: &impl Fn(StorageEvent),
    ) -> Result<(), StorageEvent> {
        if std::mem::take(&mut group.unsynced) {
            self.wal.sync().map_err(fatal)?;
        }
        // Off the backlog before the report, so the event loop woken by it sees the room.
        self.shared
            .backlog
            .fetch_sub(std::mem::take(&mut group.bytes), Ordering::AcqRel);
        if let Some((incarnation, id)) = group.durable.take() {
            on_event(StorageEvent::Durable { incarnation, id });
        }
        Ok(())
    }

    /// Reopens the log and replays it from the files, as a restart would, after a sync.
    /// The result must equal the mirror: a difference means the log on disk is not what
    /// the replica was told is durable, and the node must stop.
    fn read_back(&mut self) -> Result<RecoveredState, StorageEvent> {
        let dir = self.wal.dir().to_path_buf();
        let (wal, records) = Wal::open(&dir, self.options.clone())
            .map_err(|e| StorageEvent::Fatal(format!("cannot reopen the write-ahead log: {e}")))?;
        // Everything was synced, so the old handle holds nothing unwritten: replace it.
        self.wal = wal;
        let mut state = RecoveredState::default();
        for (i, raw) in records.iter().enumerate() {
            let entry: PersistEntry = wire::decode(raw).map_err(|e| {
                StorageEvent::Fatal(format!(
                    "log record {i} in {} cannot be decoded after reopening: {e}",
                    dir.display()
                ))
            })?;
            state.apply(entry);
        }
        state.snapshot_slot = self.mirror.snapshot_slot;
        if state != self.mirror {
            return Err(StorageEvent::Fatal(format!(
                "the write-ahead log in {} read back differs from what was written: promise \
                 {} vs {}, {} vs {} accepted records, commit {} vs {}",
                dir.display(),
                state.promised,
                self.mirror.promised,
                state.accepted.len(),
                self.mirror.accepted.len(),
                state.commit,
                self.mirror.commit
            )));
        }
        Ok(state)
    }
}

fn encode_all(entries: &[PersistEntry]) -> Result<Vec<bytes::Bytes>, StorageEvent> {
    entries
        .iter()
        .map(|e| {
            wire::encode(e)
                .map_err(|err| StorageEvent::Fatal(format!("cannot encode a log record: {err}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, Value};
    use std::sync::{Arc, Mutex};

    fn accepted(slot: u64) -> PersistEntry {
        PersistEntry::Accepted {
            slot,
            ballot: Ballot::new(1, 1),
            value: Value::Noop,
        }
    }

    #[test]
    fn batches_become_durable_and_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let (state, storage) = open(dir.path(), WalOptions::default(), move |e| {
            if let Ok(mut v) = ev.lock() {
                v.push(format!("{e:?}"));
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state, RecoveredState::default());
        let mut entries = vec![PersistEntry::Promised(Ballot::new(1, 1))];
        entries.extend((0..5).map(accepted));
        entries.push(PersistEntry::Committed { upto: 5 });
        let sent = storage.send(StorageCmd::Append {
            incarnation: 0,
            id: 1,
            entries,
        });
        assert!(sent.is_ok());
        assert!(storage.send(StorageCmd::Compact { slot: 3 }).is_ok());
        storage.close();
        let seen = events.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(seen, vec!["Durable { incarnation: 0, id: 1 }".to_string()]);

        let (state, storage) =
            open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
        storage.close();
        assert_eq!(state.promised, Ballot::new(1, 1));
        assert_eq!(state.commit, 5);
        assert_eq!(
            state.accepted.keys().copied().collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    fn batch(id: u64, value_bytes: usize) -> StorageCmd {
        StorageCmd::Append {
            incarnation: 0,
            id,
            entries: vec![PersistEntry::Accepted {
                slot: id,
                ballot: Ballot::new(1, 1),
                value: Value::Commands(vec![bytes::Bytes::from(vec![0u8; value_bytes])]),
            }],
        }
    }

    #[test]
    fn a_stalled_disk_backlogs_the_queue_until_it_catches_up() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The storage thread stalls in its first report until released (the sender is
        // dropped): a stalled disk.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (durable_tx, durable_rx) = std::sync::mpsc::channel();
        let (_, mut storage) = open(dir.path(), WalOptions::default(), move |e| {
            if let StorageEvent::Durable { id, .. } = e {
                if let Ok(rx) = release_rx.lock() {
                    let _ = rx.recv(); // the first report waits; later ones pass
                }
                let _ = durable_tx.send(id);
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        storage.set_backlog_bytes_max(100_000);
        assert!(storage.send(batch(1, 10)).is_ok());
        let mut id = 1;
        while !storage.is_backlogged() {
            id += 1;
            assert!(id < 100, "the backlog never passed its bound");
            assert!(storage.send(batch(id, 10_000)).is_ok());
        }
        drop(release_tx);
        // Every report comes once the disk has caught up, and the backlog is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = 0;
        while last < id {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            last = durable_rx
                .recv_timeout(wait)
                .unwrap_or_else(|e| panic!("no durable report: {e}"));
        }
        assert_eq!(storage.backlog_bytes(), 0);
        assert!(!storage.is_backlogged());
        storage.close();
    }

    /// The durable state the storage thread reports, read back from disk.
    fn durable_state(storage: &Storage) -> RecoveredState {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(storage.send(StorageCmd::DurableState { reply: tx }).is_ok());
        rx.blocking_recv()
            .unwrap_or_else(|e| panic!("no durable state: {e}"))
    }

    fn append(incarnation: u64, id: u64, entries: Vec<PersistEntry>) -> StorageCmd {
        StorageCmd::Append {
            incarnation,
            id,
            entries,
        }
    }

    #[test]
    fn a_crash_drops_the_crashed_incarnations_queued_appends_before_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // The writer stalls in its first report until released, so later appends queue.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (stalled_tx, stalled_rx) = std::sync::mpsc::channel::<()>();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let (_, storage) = open(dir.path(), WalOptions::default(), move |e| {
            let _ = stalled_tx.send(());
            if let Ok(rx) = release_rx.lock() {
                let _ = rx.recv(); // the first report waits; later ones pass
            }
            if let Ok(mut v) = seen.lock() {
                v.push(format!("{e:?}"));
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let promise = PersistEntry::Promised(Ballot::new(1, 1));
        assert!(storage.send(append(0, 1, vec![promise])).is_ok());
        stalled_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the first batch was never reported: {e}"));
        assert!(storage.send(append(0, 2, vec![accepted(0)])).is_ok());
        assert!(storage.send(append(0, 3, vec![accepted(1)])).is_ok());
        // Incarnation 0 crashes while batches 2 and 3 wait behind the stalled report.
        storage.crash(1);
        drop(release_tx);
        let state = durable_state(&storage);
        assert_eq!(state.promised, Ballot::new(1, 1));
        assert!(
            state.accepted.is_empty(),
            "appends queued before the crash reached the disk: {state:?}"
        );
        assert_eq!(
            storage.backlog_bytes(),
            0,
            "dropped appends leave the backlog"
        );
        assert_eq!(storage.dropped_batches(), 2);
        // The next incarnation writes as usual.
        assert!(storage.send(append(1, 1, vec![accepted(5)])).is_ok());
        storage.close();
        let reported = events.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            reported,
            vec![
                "Durable { incarnation: 0, id: 1 }".to_string(),
                "Durable { incarnation: 1, id: 1 }".to_string(),
            ],
            "a dropped batch is never reported durable"
        );
        let (state, storage) =
            open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
        storage.close();
        assert_eq!(state.promised, Ballot::new(1, 1));
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn without_a_crash_a_failed_incarnations_appends_are_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_, storage) =
            open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
        assert!(storage.send(append(0, 1, vec![accepted(0)])).is_ok());
        assert!(storage.send(append(0, 2, vec![accepted(1)])).is_ok());
        // The durable state is read back from the files after a reopen, and matches.
        let state = durable_state(&storage);
        assert_eq!(
            state.accepted.keys().copied().collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(storage.send(StorageCmd::Compact { slot: 1 }).is_ok());
        let state = durable_state(&storage);
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!((state.commit, state.snapshot_slot), (1, 1));
        storage.close();
    }

    #[test]
    fn undecodable_record_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let (mut wal, _) =
                Wal::open(dir.path(), WalOptions::default()).unwrap_or_else(|e| panic!("{e}"));
            assert!(wal.append(b"\xff\xff not a record").is_ok());
            assert!(wal.sync().is_ok());
        }
        let err = open(dir.path(), WalOptions::default(), |_| {})
            .err()
            .unwrap_or_default();
        assert!(err.contains("log record 0"), "{err}");
        assert!(err.contains("refusing to start"), "{err}");
    }
}
