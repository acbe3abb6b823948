//! The storage thread: owns the write-ahead log, makes persist batches durable with group
//! commit (everything queued, one fdatasync), and reports back to the event loop.
//!
//! The queue to the thread is bounded in bytes by backpressure rather than by dropping:
//! [`Storage::is_backlogged`] tells the event loop to stop taking new work (peer and client
//! messages) until the disk has caught up, so a stalled disk cannot grow the queue without
//! bound.
//!
//! It keeps a mirror of the durable consensus state (promise, accepted values, commit
//! index) so that it can rewrite the log after a snapshot without asking the event loop,
//! and hand a recovering replica its durable state.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Send back the durable state (after syncing everything queued before this request).
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
    /// Bytes of records queued and not yet durable.
    backlog: Arc<AtomicUsize>,
    backlog_bytes_max: usize,
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
    let (wal, records) = Wal::open(dir, options).map_err(|e| e.to_string())?;
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
    let mirror = state.clone();
    let backlog = Arc::new(AtomicUsize::new(0));
    let writer_backlog = Arc::clone(&backlog);
    let thread = thread::Builder::new()
        .name("kvs-wal".into())
        .spawn(move || writer_loop(wal, mirror, rx, &writer_backlog, on_event))
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    Ok((
        state,
        Storage {
            tx,
            thread: Some(thread),
            backlog,
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
        self.backlog.fetch_add(bytes, Ordering::AcqRel);
        self.tx.send(cmd).map_err(|_| {
            self.backlog.fetch_sub(bytes, Ordering::AcqRel);
            "the log writer has stopped".to_string()
        })
    }

    /// Bytes of records queued and not yet durable.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.load(Ordering::Acquire)
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

fn writer_loop(
    mut wal: Wal,
    mut mirror: RecoveredState,
    rx: mpsc::Receiver<StorageCmd>,
    backlog: &AtomicUsize,
    on_event: impl Fn(StorageEvent),
) {
    let fatal = |e: WalError| StorageEvent::Fatal(format!("write-ahead log failed: {e}"));
    while let Ok(first) = rx.recv() {
        // Group commit: everything already queued goes into this one sync.
        let mut cmds = vec![first];
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        let mut durable: Option<(u64, u64)> = None;
        let mut unsynced = false;
        // Bytes of this group's records, off the backlog once they are durable.
        let mut group_bytes = 0;
        for cmd in cmds {
            match cmd {
                StorageCmd::Append {
                    incarnation,
                    id,
                    entries,
                } => {
                    group_bytes += batch_bytes(&entries);
                    for e in entries {
                        let raw = match wire::encode(&e) {
                            Ok(r) => r,
                            Err(err) => {
                                on_event(StorageEvent::Fatal(format!(
                                    "cannot encode a log record: {err}"
                                )));
                                return;
                            }
                        };
                        if let Err(err) = wal.append(&raw) {
                            on_event(fatal(err));
                            return;
                        }
                        mirror.apply(e);
                    }
                    unsynced = true;
                    // Report per incarnation; a newer incarnation supersedes an older one.
                    durable = Some((incarnation, id));
                }
                StorageCmd::Compact { slot } => {
                    if slot <= mirror.snapshot_slot {
                        continue;
                    }
                    if let Err(err) = wal.sync() {
                        on_event(fatal(err));
                        return;
                    }
                    mirror.snapshot_slot = slot;
                    mirror.accepted = mirror.accepted.split_off(&slot);
                    mirror.commit = mirror.commit.max(slot);
                    let mut raws = Vec::new();
                    for e in mirror.to_entries() {
                        match wire::encode(&e) {
                            Ok(r) => raws.push(r),
                            Err(err) => {
                                on_event(StorageEvent::Fatal(format!(
                                    "cannot encode a log record: {err}"
                                )));
                                return;
                            }
                        }
                    }
                    if let Err(err) = wal.rewrite(raws.iter()) {
                        on_event(fatal(err));
                        return;
                    }
                    unsynced = false;
                }
                StorageCmd::DurableState { reply } => {
                    if unsynced {
                        if let Err(err) = wal.sync() {
                            on_event(fatal(err));
                            return;
                        }
                        unsynced = false;
                        backlog.fetch_sub(std::mem::take(&mut group_bytes), Ordering::AcqRel);
                        if let Some((incarnation, id)) = durable.take() {
                            on_event(StorageEvent::Durable { incarnation, id });
                        }
                    }
                    let _ = reply.send(mirror.clone());
                }
            }
        }
        if unsynced {
            if let Err(err) = wal.sync() {
                on_event(fatal(err));
                return;
            }
        }
        // Off the backlog before the report, so the event loop woken by it sees the room.
        backlog.fetch_sub(group_bytes, Ordering::AcqRel);
        if let Some((incarnation, id)) = durable {
            on_event(StorageEvent::Durable { incarnation, id });
        }
    }
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
