//! Snapshots streamed to clients (backups, `kvs-client snapshot save`): the event loop's
//! side.
//!
//! A save is linearizable: the leader first confirms a read round ([`Node::start_backup`],
//! the same read index as a linearizable GET), and the snapshot streamed is one on disk of
//! a slot at least as new as what the state machine had applied when the round was
//! confirmed: the current snapshot file if it is new enough, else one taken at once by the
//! usual background writer. A blocking thread opens that file, checks it in full (its
//! checksum) while counting its keys, and answers with the stream's size; from then on the
//! stream holds the open file, so later snapshots that replace it on disk do not disturb
//! it. Each [`wire::Op::SnapshotRead`] is read from the file by a blocking thread too: the
//! loop never touches the bytes. The client reads one chunk at a time, so a connection
//! holds at most one chunk of it.
//!
//! At most [`wire::SNAPSHOT_SAVES_MAX`] streams are open at once; one more is refused with
//! [`ErrorReply::SnapshotBusy`]. A stream whose last byte was read ends; one nobody reads
//! for [`STREAM_IDLE_MAX`] (or still waiting for its read round after the request
//! timeout) is dropped when room is needed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::{ErrorReply, Reply, SnapshotStream, SNAPSHOT_SAVES_MAX, SNAPSHOT_STREAM_CHUNK_BYTES};

use super::Node;
use crate::answers::Responder;
use crate::snapshot::{self, SnapshotError, SnapshotReader};

/// A stream nobody has read for this long is dropped when another save needs its room.
pub(crate) const STREAM_IDLE_MAX: Duration = Duration::from_secs(60);

/// How many snapshots a save waiting for a new enough one lets the writer try.
const SNAPSHOT_ATTEMPTS_MAX: u32 = 3;

/// The snapshot streams of a replica, shared with the blocking threads that open and read
/// them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backups {
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    streams: BTreeMap<u64, Stream>,
    next_id: u64,
    /// Saves whose read round is confirmed, waiting for a snapshot of at least `slot`.
    waiting: Vec<Waiting>,
    /// Read rounds of saves not yet confirmed: read id to stream id.
    reads: BTreeMap<u64, (u64, Responder)>,
}

#[derive(Debug)]
enum Stream {
    /// Waiting for its read round, a snapshot, or its file to be checked.
    Preparing { since: Instant },
    /// Being read by its client.
    Open {
        file: Arc<File>,
        bytes: u64,
        touched: Instant,
    },
}

#[derive(Debug)]
struct Waiting {
    stream: u64,
    slot: u64,
    responder: Responder,
    attempts: u32,
}

impl Backups {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section is a few map operations: a panic cannot leave it half done.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a stream, dropping abandoned ones if room is needed; `None` if every one
    /// is in use.
    fn reserve(&self, now: Instant, preparing_max: Duration) -> Option<u64> {
        let mut t = self.lock();
        if t.streams.len() >= SNAPSHOT_SAVES_MAX {
            t.streams.retain(|_, s| match s {
                Stream::Preparing { since } => now.duration_since(*since) < preparing_max,
                Stream::Open { touched, .. } => now.duration_since(*touched) < STREAM_IDLE_MAX,
            });
        }
        if t.streams.len() >= SNAPSHOT_SAVES_MAX {
            return None;
        }
        t.next_id += 1;
        let id = t.next_id;
        t.streams.insert(id, Stream::Preparing { since: now });
        Some(id)
    }

    fn end(&self, stream: u64) {
        self.lock().streams.remove(&stream);
    }

    /// How many streams are open or being prepared.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().streams.len()
    }
}

/// What a blocking thread needs to open a stream.
struct Opening {
    backups: Backups,
    stream: u64,
    min_slot: u64,
    path: PathBuf,
    cluster_name: String,
    cluster_uid: [u8; 16],
}

impl Node {
    /// [`wire::Op::SnapshotSave`]: reserves a stream and starts a read round.
    pub(super) fn start_backup(&mut self, responder: Responder) {
        let backups = self.snapshots.backups().clone();
        let Some(stream) = backups.reserve(Instant::now(), self.cfg.request_timeout) else {
            responder.respond(Err(ErrorReply::SnapshotBusy {
                saves_max: SNAPSHOT_SAVES_MAX as u64,
            }));
            return;
        };
        let id = self.pending.next_read_id();
        match self.replica.read(self.now_ms(), id) {
            Ok(()) => {
                backups.lock().reads.insert(id, (stream, responder));
            }
            Err(e) => {
                backups.end(stream);
                responder.respond(Err(self.propose_error(e)));
            }
        }
    }

    /// Whether the read round `id` is a save's.
    pub(super) fn is_backup_read(&self, id: u64) -> bool {
        self.snapshots.backups().lock().reads.contains_key(&id)
    }

    /// The read round `id` of a save is confirmed (`Ok`) or aborted: the save goes on or
    /// is refused.
    pub(super) fn backup_read_done(&mut self, id: u64, result: Result<(), ErrorReply>) {
        let backups = self.snapshots.backups().clone();
        let Some((stream, responder)) = backups.lock().reads.remove(&id) else {
            return;
        };
        if let Err(e) = result {
            backups.end(stream);
            responder.respond(Err(e));
            return;
        }
        // Every write acknowledged before the save arrived is applied here by now.
        let waiting = Waiting {
            stream,
            slot: self.sm.applied(),
            responder,
            attempts: 0,
        };
        backups.lock().waiting.push(waiting);
        self.serve_waiting_backups();
    }

    /// Opens the streams whose snapshot is on disk; takes a snapshot for the others.
    pub(super) fn serve_waiting_backups(&mut self) {
        let backups = self.snapshots.backups().clone();
        let waiting = std::mem::take(&mut backups.lock().waiting);
        if waiting.is_empty() {
            return;
        }
        let on_disk = self.snapshots.last_slot();
        let writing = self.snapshots.is_writing();
        let mut still = Vec::new();
        for mut w in waiting {
            if w.slot <= on_disk && !writing {
                self.open_backup(w.stream, w.slot, w.responder);
            } else if !writing && w.attempts >= SNAPSHOT_ATTEMPTS_MAX {
                backups.end(w.stream);
                w.responder.respond(Err(ErrorReply::Unavailable {
                    reason: "this replica cannot write a snapshot now (see its log)".into(),
                }));
            } else {
                if !writing {
                    w.attempts += 1;
                }
                still.push(w);
            }
        }
        if still.is_empty() {
            return;
        }
        backups.lock().waiting.extend(still);
        if !writing {
            tracing::info!(
                slot = self.sm.applied(),
                "taking a snapshot for a client's snapshot save"
            );
            self.take_snapshot();
        }
    }

    /// Checks the snapshot file and opens the stream, off the loop.
    fn open_backup(&self, stream: u64, min_slot: u64, responder: Responder) {
        let opening = Opening {
            backups: self.snapshots.backups().clone(),
            stream,
            min_slot,
            path: self.cfg.data_dir.join(snapshot::FILE_NAME),
            cluster_name: self.cfg.cluster_id.clone(),
            cluster_uid: self.store.snapshot().cluster_uid.0,
        };
        tokio::task::spawn_blocking(move || {
            let stream = opening.stream;
            let backups = opening.backups.clone();
            let answer = open_stream(opening).map_err(|e| {
                tracing::warn!(error = %e, "cannot stream the snapshot to a client");
                backups.end(stream);
                ErrorReply::Unavailable {
                    reason: format!("cannot read this replica's snapshot: {e}"),
                }
            });
            responder.respond_now(answer.map(|s| Reply::SnapshotStream(Box::new(s))));
        });
    }

    /// [`wire::Op::SnapshotRead`]: the next chunk, read off the loop.
    pub(super) fn read_backup(&self, stream: u64, offset: u64, responder: Responder) {
        let backups = self.snapshots.backups().clone();
        let file = {
            let mut t = backups.lock();
            match t.streams.get_mut(&stream) {
                Some(Stream::Open {
                    file,
                    bytes,
                    touched,
                }) if offset <= *bytes => {
                    *touched = Instant::now();
                    Some((Arc::clone(file), *bytes))
                }
                _ => None,
            }
        };
        let Some((file, bytes)) = file else {
            responder.respond(Err(ErrorReply::Invalid {
                reason: format!(
                    "no snapshot stream {stream} at offset {offset} on this replica (it ended, \
                     was dropped after {} s unread, or is another replica's)",
                    STREAM_IDLE_MAX.as_secs()
                ),
            }));
            return;
        };
        tokio::task::spawn_blocking(move || {
            let answer = read_chunk(&file, offset, bytes);
            let ended = match &answer {
                Ok(data) => offset + data.len() as u64 >= bytes,
                Err(_) => true,
            };
            if ended {
                backups.end(stream);
            }
            let answer = answer
                .map(|data| Reply::SnapshotChunk { data })
                .map_err(|e| ErrorReply::Unavailable {
                    reason: format!("cannot read this replica's snapshot: {e}"),
                });
            responder.respond_now(answer);
        });
    }
}

/// Opens the snapshot file, checks it in full while counting its keys, and makes the
/// stream readable.
fn open_stream(o: Opening) -> Result<SnapshotStream, SnapshotError> {
    let io = |op: &'static str| {
        let path = o.path.clone();
        move |source| SnapshotError::Io { op, path, source }
    };
    let file = File::open(&o.path).map_err(io("open"))?;
    let bytes = file.metadata().map_err(io("stat"))?.len();
    let mut reader = SnapshotReader::new(BufReader::with_capacity(1 << 20, &file), &o.path)?;
    let slot = reader.slot;
    let mut keys = 0u64;
    while reader.next_entry()?.is_some() {
        keys += 1;
    }
    reader.finish()?;
    if slot < o.min_slot {
        return Err(SnapshotError::Corrupt {
            path: o.path.clone(),
            reason: format!("it covers slot {slot}, older than slot {}", o.min_slot),
        });
    }
    let mut t = o.backups.lock();
    let Some(entry) = t.streams.get_mut(&o.stream) else {
        return Err(SnapshotError::Corrupt {
            path: o.path.clone(),
            reason: "the stream was dropped meanwhile".into(),
        });
    };
    *entry = Stream::Open {
        file: Arc::new(file),
        bytes,
        touched: Instant::now(),
    };
    Ok(SnapshotStream {
        stream: o.stream,
        slot,
        keys,
        bytes,
        cluster_name: o.cluster_name,
        cluster_uid: o.cluster_uid,
    })
}

/// Up to [`SNAPSHOT_STREAM_CHUNK_BYTES`] of `file` from `offset` (of `bytes` in all).
fn read_chunk(file: &File, offset: u64, bytes: u64) -> std::io::Result<Bytes> {
    let want = (bytes - offset).min(SNAPSHOT_STREAM_CHUNK_BYTES as u64) as usize;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    // Bounded: each turn reads at least one byte or ends.
    while got < want {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the snapshot file is shorter than when it was opened",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_beyond_the_limit_are_refused_until_one_ends_or_is_abandoned() {
        let backups = Backups::default();
        let now = Instant::now();
        let preparing_max = Duration::from_secs(10);
        let first = backups.reserve(now, preparing_max).expect("room");
        let second = backups.reserve(now, preparing_max).expect("room");
        assert_ne!(first, second);
        assert_eq!(backups.reserve(now, preparing_max), None, "at most two");
        backups.end(first);
        assert!(backups.reserve(now, preparing_max).is_some(), "room again");
        assert_eq!(backups.len(), SNAPSHOT_SAVES_MAX);
        // Abandoned ones make room once they are old enough.
        let later = now + preparing_max + Duration::from_secs(1);
        assert!(backups.reserve(later, preparing_max).is_some());
    }

    #[test]
    fn a_chunk_is_read_from_the_offset_asked_for() {
        let mut tmp = tempfile::tempfile().expect("a temp file");
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        std::io::Write::write_all(&mut tmp, &data).expect("write");
        let chunk = read_chunk(&tmp, 1000, 3000).expect("read");
        assert_eq!(&chunk[..], &data[1000..]);
        assert!(
            read_chunk(&tmp, 0, 4000).is_err(),
            "a file shorter than said"
        );
    }
}
