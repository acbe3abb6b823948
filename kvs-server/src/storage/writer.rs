//! The storage thread: group commit of the appends queued, compaction, and reading the
//! log back for a recovering replica.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use paxos_core::{PersistEntry, RecoveredState};

use super::{batch_bytes, record, replay, Shared, StorageCmd, StorageError, StorageEvent};
use crate::metrics::Metrics;
use crate::wal::{Wal, WalOptions};

/// The storage thread's state: the log, and the mirror of what it holds.
pub(super) struct Writer {
    wal: Wal,
    options: WalOptions,
    mirror: RecoveredState,
    shared: Arc<Shared>,
    /// The encoding of the record being appended, reused from one record to the next.
    scratch: Vec<u8>,
    /// Where each fsync's duration goes: the metrics of the replica that registered this
    /// log's directory ([`crate::metrics::register_wal_dir`]), if any.
    metrics: Option<Arc<Metrics>>,
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

fn fatal(e: crate::wal::WalError) -> StorageEvent {
    StorageEvent::Fatal(StorageError::Failed(e))
}

impl Writer {
    /// A writer of `wal`, whose records replay to `mirror`.
    pub(super) fn new(wal: Wal, options: WalOptions, mirror: RecoveredState) -> Writer {
        let metrics = crate::metrics::for_wal_dir(wal.dir());
        Writer {
            wal,
            options,
            mirror,
            shared: Arc::new(Shared::default()),
            scratch: Vec::new(),
            metrics,
        }
    }

    /// What the writer shares with the [`super::Storage`] handle.
    pub(super) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<StorageCmd>, on_event: impl Fn(StorageEvent)) {
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
                    self.scratch.clear();
                    record::encode_into(&e, &mut self.scratch)
                        .map_err(|err| StorageEvent::Fatal(StorageError::Encode(err)))?;
                    self.wal.append(&self.scratch).map_err(fatal)?;
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
                self.sync()?;
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
            self.sync()?;
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

    /// Makes everything written durable, timing the fsync.
    fn sync(&mut self) -> Result<(), StorageEvent> {
        let started = Instant::now();
        self.wal.sync().map_err(fatal)?;
        if let Some(m) = &self.metrics {
            m.observe_fsync(started.elapsed());
        }
        Ok(())
    }

    /// Reopens the log and replays it from the files, as a restart would, after a sync.
    /// The result must equal the mirror: a difference means the log on disk is not what
    /// the replica was told is durable, and the node must stop.
    fn read_back(&mut self) -> Result<RecoveredState, StorageEvent> {
        let dir = self.wal.dir().to_path_buf();
        let (wal, records) = Wal::open(&dir, self.options.clone())
            .map_err(|e| StorageEvent::Fatal(StorageError::Reopen(e)))?;
        // Everything was synced, so the old handle holds nothing unwritten: replace it.
        self.wal = wal;
        let mut state = replay(&records, |index, source| {
            StorageError::UndecodableOnReadBack {
                index,
                dir: dir.clone(),
                source,
            }
        })
        .map_err(StorageEvent::Fatal)?;
        state.snapshot_slot = self.mirror.snapshot_slot;
        if state != self.mirror {
            return Err(StorageEvent::Fatal(StorageError::ReadBackMismatch {
                dir,
                read: Box::new(state),
                written: Box::new(self.mirror.clone()),
            }));
        }
        Ok(state)
    }
}

fn encode_all(entries: &[PersistEntry]) -> Result<Vec<Vec<u8>>, StorageEvent> {
    entries
        .iter()
        .map(|e| record::encode(e).map_err(|err| StorageEvent::Fatal(StorageError::Encode(err))))
        .collect()
}
