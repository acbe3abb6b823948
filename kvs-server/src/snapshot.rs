//! State-machine snapshots on disk, written and read as streams (a snapshot is never held
//! in memory as a whole: a large store would need twice its size otherwise).
//!
//! Format (little-endian), checked end to end by a trailing CRC32C:
//! ```text
//! magic "KVSSNAP3" | slot u64 | (key len u32 > 0, key, value len u32, value)* in key order
//! | 0u32 (end of keys) | sessions registered u64 | id salt u64 | session count u64
//! | (client u64, last slot u64, floor u64, n u32, (seq u64, len u32, reply)*)*
//! | crc32c u32 over everything before it
//! ```
//! The previous format, "KVSSNAP2", is still read: it has no registration counter, salt or
//! floors (a session's floor is then taken as just below its oldest result if its window is
//! full, else 0).
//! A new snapshot is the previous snapshot file merged with the keys changed since (the
//! state machine's delta), streamed from one file to the next: taking a snapshot never
//! copies the store in memory.
//! A snapshot is written to a temporary file, fsynced, renamed over the previous one, and
//! the directory is fsynced, so a crash leaves either the old or the new snapshot.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub mod transfer;

use crate::sessions::SessionTable;
use crate::state_machine::{Blob, Delta, SessionResults, StateMachine, SESSION_RESULTS_MAX};

const MAGIC: &[u8; 8] = b"KVSSNAP3";
/// The format before session floors and registration: read, never written.
const MAGIC_V2: &[u8; 8] = b"KVSSNAP2";
/// The snapshot's file name inside the data directory.
pub const FILE_NAME: &str = "snapshot";
const TEMP_NAME: &str = "snapshot.tmp";
/// Where a snapshot received from a peer is assembled before it is checked and installed.
pub const INCOMING_NAME: &str = "snapshot.incoming";
/// Largest reply stored in a session (a CAS mismatch carries the current value).
const REPLY_BYTES_MAX: usize = wire::VALUE_BYTES_MAX + 1024;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("snapshot {op} failed for {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The bytes are not a valid snapshot.
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt {
        /// The file (or the peer it came from).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A writer that keeps a running CRC32C of what passes through.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot as a stream: header, entries in key order, then sessions.
pub struct SnapshotWriter<W: Write> {
    w: CrcWriter<W>,
    written: u64,
    last_key: Option<Vec<u8>>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot of every slot below `slot`.
    pub fn new(out: W, slot: u64) -> io::Result<Self> {
        let mut s = SnapshotWriter {
            w: CrcWriter { inner: out, crc: 0 },
            written: 0,
            last_key: None,
        };
        s.put(MAGIC)?;
        s.put(&slot.to_le_bytes())?;
        Ok(s)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Adds one key and its value; keys must come in strictly increasing order.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.is_empty() || self.last_key.as_deref().is_some_and(|l| l >= key) {
            return Err(io::Error::other(
                "snapshot keys must be non-empty and in order",
            ));
        }
        self.last_key = Some(key.to_vec());
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }

    /// Ends the keys, writes the sessions and the checksum; returns the bytes written.
    pub fn finish(mut self, table: &SessionTable) -> io::Result<(W, u64)> {
        self.put(&0u32.to_le_bytes())?;
        self.put(&table.registered().to_le_bytes())?;
        self.put(&table.salt().to_le_bytes())?;
        let sessions = table.sessions();
        self.put(&(sessions.len() as u64).to_le_bytes())?;
        for (client, s) in sessions {
            self.put(&client.to_le_bytes())?;
            self.put(&s.last_slot.to_le_bytes())?;
            self.put(&s.floor.to_le_bytes())?;
            self.put(&(s.results.len() as u32).to_le_bytes())?;
            for (seq, reply) in &s.results {
                self.put(&seq.to_le_bytes())?;
                let r = wire::encode(reply).map_err(|e| io::Error::other(e.to_string()))?;
                self.put(&(r.len() as u32).to_le_bytes())?;
                self.put(&r)?;
            }
        }
        let crc = self.w.crc;
        self.w.inner.write_all(&crc.to_le_bytes())?;
        self.w.inner.flush()?;
        Ok((self.w.inner, self.written + 4))
    }
}

/// Writes all of `sm` as a snapshot to `out`; returns the bytes written.
pub fn encode_to(sm: &StateMachine, out: impl Write) -> io::Result<u64> {
    let mut w = SnapshotWriter::new(out, sm.applied())?;
    for (k, v) in sm.data() {
        w.entry(k, v)?;
    }
    Ok(w.finish(sm.sessions())?.1)
}

/// Serializes `sm` as a snapshot in memory (for tests and small stores).
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_to(sm, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads a snapshot as a stream: the slot, then the entries one by one, then the sessions,
/// with the checksum verified at the end.
pub struct SnapshotReader<R> {
    r: CrcReader<R>,
    origin: PathBuf,
    /// The slot the snapshot covers (every slot below it is applied).
    pub slot: u64,
    keys_done: bool,
    /// Written in the previous format ([`MAGIC_V2`]).
    v2: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header.
    pub fn new(input: R, origin: &Path) -> Result<Self, SnapshotError> {
        let mut r = CrcReader {
            inner: input,
            crc: 0,
            pos: 0,
        };
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: origin.to_path_buf(),
            reason,
        };
        let magic = r.take(8, 8).map_err(&corrupt)?;
        let v2 = magic == MAGIC_V2;
        if magic != MAGIC && !v2 {
            return Err(corrupt(
                "not a snapshot file of this version (bad magic)".into(),
            ));
        }
        let slot = r.u64().map_err(&corrupt)?;
        Ok(SnapshotReader {
            r,
            origin: origin.to_path_buf(),
            slot,
            keys_done: false,
            v2,
        })
    }

    fn corrupt(&self, reason: String) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.origin.clone(),
            reason,
        }
    }

    /// The next key and value, in key order; `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<(Blob, Blob)>, SnapshotError> {
        if self.keys_done {
            return Ok(None);
        }
        let klen = self.r.u32().map_err(|e| self.corrupt(e))? as usize;
        if klen == 0 {
            self.keys_done = true;
            return Ok(None);
        }
        let k = self
            .r
            .take(klen, wire::KEY_BYTES_MAX)
            .map_err(|e| self.corrupt(e))?;
        let vlen = self.r.u32().map_err(|e| self.corrupt(e))? as usize;
        let v = self
            .r
            .take(vlen, wire::VALUE_BYTES_MAX)
            .map_err(|e| self.corrupt(e))?;
        Ok(Some((k.into_boxed_slice(), v.into_boxed_slice())))
    }

    /// The sessions and the checksum check; call after the last entry.
    pub fn finish(mut self) -> Result<SessionTable, SnapshotError> {
        while self.next_entry()?.is_some() {}
        let (registered, salt) = if self.v2 {
            (0, 0)
        } else {
            let registered = self.r.u64().map_err(|e| self.corrupt(e))?;
            (registered, self.r.u64().map_err(|e| self.corrupt(e))?)
        };
        let sessions_n = self.r.u64().map_err(|e| self.corrupt(e))?;
        let mut sessions = BTreeMap::new();
        for _ in 0..sessions_n {
            let client = self.r.u64().map_err(|e| self.corrupt(e))?;
            let last_slot = self.r.u64().map_err(|e| self.corrupt(e))?;
            let floor = if self.v2 {
                None
            } else {
                Some(self.r.u64().map_err(|e| self.corrupt(e))?)
            };
            let n = self.r.u32().map_err(|e| self.corrupt(e))?;
            if n as usize > SESSION_RESULTS_MAX {
                return Err(self.corrupt(format!("a session claims {n} results")));
            }
            let mut results = BTreeMap::new();
            for _ in 0..n {
                let seq = self.r.u64().map_err(|e| self.corrupt(e))?;
                let raw = self
                    .r
                    .take_len(REPLY_BYTES_MAX)
                    .map_err(|e| self.corrupt(e))?;
                let reply =
                    wire::decode(&raw).map_err(|e| self.corrupt(format!("session reply: {e}")))?;
                results.insert(seq, reply);
            }
            let floor = match floor {
                Some(floor) => floor,
                None => v2_floor(&results),
            };
            if results.keys().any(|&seq| seq <= floor) {
                return Err(
                    self.corrupt(format!("session {client} remembers a seq below its floor"))
                );
            }
            let session = SessionResults {
                last_slot,
                floor,
                results,
            };
            sessions.insert(client, session);
        }
        let computed = self.r.crc;
        let mut tail = [0u8; 4];
        self.r
            .inner
            .read_exact(&mut tail)
            .map_err(|e| self.corrupt(format!("missing checksum at offset {}: {e}", self.r.pos)))?;
        let stored = u32::from_le_bytes(tail);
        if stored != computed {
            return Err(self.corrupt(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let mut extra = [0u8; 1];
        if matches!(self.r.inner.read(&mut extra), Ok(n) if n > 0) {
            return Err(self.corrupt("unexpected bytes after the checksum".into()));
        }
        Ok(SessionTable::from_parts(registered, salt, sessions))
    }
}

/// The floor of a session read from the previous format: just below its oldest result if
/// its window is full (older ones were forgotten), else 0.
fn v2_floor(results: &BTreeMap<u64, wire::Reply>) -> u64 {
    match results.first_key_value() {
        Some((&lowest, _)) if results.len() >= SESSION_RESULTS_MAX => lowest.saturating_sub(1),
        _ => 0,
    }
}

/// Reads a whole snapshot from `input`. `origin` names where the bytes came from in errors.
pub fn decode_from(input: impl Read, origin: &Path) -> Result<StateMachine, SnapshotError> {
    let mut reader = SnapshotReader::new(input, origin)?;
    let mut data = BTreeMap::new();
    let mut last: Option<Blob> = None;
    while let Some((k, v)) = reader.next_entry()? {
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err(reader.corrupt("keys out of order".into()));
        }
        last = Some(k.clone());
        data.insert(k, v);
    }
    let slot = reader.slot;
    let sessions = reader.finish()?;
    Ok(StateMachine::from_parts(slot, data, sessions))
}

/// Parses and verifies an in-memory snapshot.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<StateMachine, SnapshotError> {
    decode_from(bytes, origin)
}

struct CrcReader<R> {
    inner: R,
    crc: u32,
    pos: u64,
}

impl<R: Read> CrcReader<R> {
    /// Reads exactly `n` bytes (`n` at most `max`, checked before allocating).
    fn take(&mut self, n: usize, max: usize) -> Result<Vec<u8>, String> {
        if n > max {
            return Err(format!(
                "a field of {n} bytes at offset {} exceeds the limit of {max}",
                self.pos
            ));
        }
        let mut buf = vec![0u8; n];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("truncated at offset {} (wanted {n} bytes): {e}", self.pos))?;
        self.crc = crc32c::crc32c_append(self.crc, &buf);
        self.pos += n as u64;
        Ok(buf)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn take_len(&mut self, max: usize) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        self.take(n, max)
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// fsyncs `dir`, so that a rename inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Durably replaces the snapshot in `dir` with one of `sm` (temp file, fsync, rename,
/// fsync dir). Returns the snapshot's size in bytes.
pub fn write_file(dir: &Path, sm: &StateMachine) -> Result<u64, SnapshotError> {
    let tmp = dir.join(TEMP_NAME);
    let path = dir.join(FILE_NAME);
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let size = encode_to(sm, &mut w).map_err(io_err("write", &tmp))?;
    publish(dir, &tmp, &path, w)?;
    Ok(size)
}

/// Makes a fully written temporary snapshot the current one: flush, fsync, rename over the
/// previous file, fsync the directory. A crash at any point leaves the old or the new file.
fn publish(dir: &Path, tmp: &Path, path: &Path, w: BufWriter<File>) -> Result<(), SnapshotError> {
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", tmp))?;
    fs::rename(tmp, path).map_err(io_err("rename", path))?;
    sync_dir(dir)
}

/// Durably writes the snapshot of `slot`: the current snapshot file in `dir` (if any)
/// with `delta` merged in, and `sessions`. Streams from file to file, so memory use does not
/// grow with the store. Returns the new snapshot's size.
pub fn write_merged(
    dir: &Path,
    slot: u64,
    delta: &Delta,
    sessions: &SessionTable,
) -> Result<u64, SnapshotError> {
    let base_path = dir.join(FILE_NAME);
    let mut base = match File::open(&base_path) {
        Ok(f) => Some(SnapshotReader::new(
            BufReader::with_capacity(1 << 20, f),
            &base_path,
        )?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("open", &base_path)(e)),
    };
    let tmp = dir.join(TEMP_NAME);
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut w = SnapshotWriter::new(BufWriter::with_capacity(1 << 20, file), slot)
        .map_err(io_err("write", &tmp))?;
    let mut next_base = match base.as_mut() {
        Some(b) => b.next_entry()?,
        None => None,
    };
    let mut changes = delta.iter().peekable();
    loop {
        let take_base = match (&next_base, changes.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((bk, _)), Some((dk, _))) => bk < *dk,
        };
        if take_base {
            if let Some((k, v)) = next_base.take() {
                w.entry(&k, &v).map_err(io_err("write", &tmp))?;
            }
            next_base = match base.as_mut() {
                Some(b) => b.next_entry()?,
                None => None,
            };
            continue;
        }
        let Some((dk, dv)) = changes.next() else {
            break;
        };
        if next_base.as_ref().is_some_and(|(bk, _)| bk == dk) {
            // Replaced or deleted since the previous snapshot.
            next_base = match base.as_mut() {
                Some(b) => b.next_entry()?,
                None => None,
            };
        }
        if let Some(v) = dv {
            w.entry(dk, v).map_err(io_err("write", &tmp))?;
        }
    }
    // The previous snapshot must check out in full before the new one replaces it.
    if let Some(b) = base {
        b.finish()?;
    }
    let (buf, size) = w.finish(sessions).map_err(io_err("write", &tmp))?;
    publish(dir, &tmp, &base_path, buf)?;
    Ok(size)
}

/// Checks a snapshot file received from a peer and, if valid, durably makes it this
/// replica's snapshot. Returns the state it holds.
pub fn install_incoming(dir: &Path, origin: &Path) -> Result<StateMachine, SnapshotError> {
    let incoming = dir.join(INCOMING_NAME);
    let file = File::open(&incoming).map_err(io_err("open", &incoming))?;
    file.sync_all().map_err(io_err("fsync", &incoming))?;
    let sm = decode_from(BufReader::with_capacity(1 << 20, file), origin)?;
    let path = dir.join(FILE_NAME);
    fs::rename(&incoming, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)?;
    Ok(sm)
}

/// Makes a received snapshot file, already fsynced and checked ([`transfer::Incoming`]),
/// the current snapshot: rename over the previous one, fsync the directory.
pub fn publish_incoming(dir: &Path, incoming: &Path) -> Result<(), SnapshotError> {
    let path = dir.join(FILE_NAME);
    fs::rename(incoming, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

/// Reads the snapshot in `dir`, if there is one. Leftover temporary files (of snapshots
/// being written or received) are removed.
pub fn read_file(dir: &Path) -> Result<Option<StateMachine>, SnapshotError> {
    let _ = fs::remove_file(dir.join(TEMP_NAME));
    let _ = fs::remove_file(dir.join(INCOMING_NAME));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{INCOMING_NAME}.")))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let path = dir.join(FILE_NAME);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                op: "open",
                path,
                source,
            })
        }
    };
    let sm = decode_from(BufReader::with_capacity(1 << 20, file), &path)?;
    Ok(Some(sm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use wire::{Command, Session, WriteOp};

    /// Three sessions (registered in slot 0) with a few writes each.
    fn sample() -> StateMachine {
        let mut sm = StateMachine::new();
        let register = Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq: 12345,
            },
            op: WriteOp::RegisterSession,
        };
        let ids: Vec<u64> = (0..3)
            .filter_map(|_| match sm.apply(0, register.clone()).reply {
                Ok(wire::Reply::SessionRegistered { client_id }) => Some(client_id),
                _ => None,
            })
            .collect();
        sm.finish_slot(0);
        for i in 1..20u64 {
            let c = Command {
                session: Session {
                    client_id: ids[i as usize % 3],
                    seq: i / 3 + 1,
                },
                op: WriteOp::Put {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from(vec![i as u8; i as usize]),
                },
            };
            sm.apply(i, c);
            sm.finish_slot(i);
        }
        sm
    }

    #[test]
    fn the_sample_has_sessions() {
        let sm = sample();
        assert_eq!(sm.sessions().len(), 3);
        assert!(sm
            .sessions()
            .sessions()
            .values()
            .all(|s| !s.results.is_empty()));
    }

    #[test]
    fn a_snapshot_of_the_previous_format_is_read() {
        let sm = sample();
        let bytes = encode(&sm).unwrap_or_default();
        // Rewrite as the previous format: no counter, salt or floors.
        let mut old = MAGIC_V2.to_vec();
        let keys_end = bytes.len() - 4 - sessions_bytes(&sm);
        old.extend_from_slice(&bytes[8..keys_end]);
        old.extend_from_slice(&(sm.sessions().len() as u64).to_le_bytes());
        for (client, s) in sm.sessions().sessions() {
            old.extend_from_slice(&client.to_le_bytes());
            old.extend_from_slice(&s.last_slot.to_le_bytes());
            old.extend_from_slice(&(s.results.len() as u32).to_le_bytes());
            for (seq, reply) in &s.results {
                old.extend_from_slice(&seq.to_le_bytes());
                let r = wire::encode(reply).unwrap_or_default();
                old.extend_from_slice(&(r.len() as u32).to_le_bytes());
                old.extend_from_slice(&r);
            }
        }
        let crc = crc32c::crc32c(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        let back = decode(&old, Path::new("old")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.data(), sm.data());
        assert_eq!(back.sessions().sessions(), sm.sessions().sessions());
        assert_eq!(back.sessions().registered(), 0);
    }

    /// Bytes of the session part of `sm`'s snapshot (counter, salt and sessions).
    fn sessions_bytes(sm: &StateMachine) -> usize {
        let mut n = 8 + 8 + 8;
        for s in sm.sessions().sessions().values() {
            n += 8 + 8 + 8 + 4;
            for reply in s.results.values() {
                n += 8 + 4 + wire::encode(reply).map(|r| r.len()).unwrap_or(0);
            }
        }
        n
    }

    #[test]
    fn roundtrip_through_a_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sm = sample();
        let size = write_file(dir.path(), &sm).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(size, encode(&sm).map(|b| b.len() as u64).unwrap_or(0));
        let back = read_file(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, Some(sm));
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_refused() {
        let bytes = encode(&sample()).unwrap_or_default();
        let origin = Path::new("snapshot");
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, origin).is_err(), "flip at {i} accepted");
        }
        for len in [0, 5, 12, bytes.len() - 1] {
            assert!(
                decode(&bytes[..len], origin).is_err(),
                "truncation to {len} accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, origin).is_err(), "trailing byte accepted");
        let msg = decode(&bytes[..bytes.len() - 1], origin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("corrupt snapshot snapshot"), "{msg}");
    }

    #[test]
    fn a_hostile_length_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&bytes, Path::new("x"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn incoming_snapshots_are_checked_before_they_replace_the_current_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sm = sample();
        write_file(dir.path(), &sm).unwrap_or_else(|e| panic!("{e}"));
        let mut bad = encode(&StateMachine::new()).unwrap_or_default();
        bad[10] ^= 1;
        fs::write(dir.path().join(INCOMING_NAME), &bad).unwrap_or_else(|e| panic!("{e}"));
        assert!(install_incoming(dir.path(), Path::new("peer 2")).is_err());
        assert_eq!(read_file(dir.path()).ok().flatten(), Some(sm));
        let good = encode(&StateMachine::new()).unwrap_or_default();
        fs::write(dir.path().join(INCOMING_NAME), &good).unwrap_or_else(|e| panic!("{e}"));
        assert!(install_incoming(dir.path(), Path::new("peer 2")).is_ok());
        assert_eq!(
            read_file(dir.path()).ok().flatten(),
            Some(StateMachine::new())
        );
    }

    #[test]
    fn missing_snapshot_is_none_and_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.path().join(TEMP_NAME), b"half written").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_file(dir.path()), Ok(None)));
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    fn apply_all(sm: &mut StateMachine, from: u64, ops: &[(&str, Option<&str>)]) {
        for (n, (k, v)) in ops.iter().enumerate() {
            let slot = from + n as u64;
            let op = match v {
                Some(v) => WriteOp::Put {
                    key: Bytes::from(k.to_string()),
                    value: Bytes::from(v.to_string()),
                },
                None => WriteOp::Delete {
                    key: Bytes::from(k.to_string()),
                },
            };
            let c = Command {
                session: Session {
                    client_id: wire::NO_CLIENT_ID,
                    seq: slot,
                },
                op,
            };
            sm.apply(slot, c);
            sm.finish_slot(slot);
        }
    }

    #[test]
    fn merged_snapshots_equal_a_full_snapshot_of_the_same_state() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut sm = StateMachine::new();
        apply_all(
            &mut sm,
            0,
            &[("b", Some("1")), ("d", Some("2")), ("f", Some("3"))],
        );
        // First snapshot: no file yet, so the delta is everything.
        let d = sm.take_delta();
        write_merged(dir.path(), sm.applied(), &d, sm.sessions()).unwrap_or_else(|e| panic!("{e}"));
        // Changes: insert before, between and after; replace one; delete one; delete a key
        // that never existed in the file.
        apply_all(
            &mut sm,
            3,
            &[
                ("a", Some("0")),
                ("c", Some("x")),
                ("d", Some("22")),
                ("f", None),
                ("g", Some("9")),
                ("zz", Some("z")),
                ("zz", None),
            ],
        );
        let d = sm.take_delta();
        let size = write_merged(dir.path(), sm.applied(), &d, sm.sessions())
            .unwrap_or_else(|e| panic!("{e}"));
        let on_disk = std::fs::read(dir.path().join(FILE_NAME)).unwrap_or_default();
        assert_eq!(
            on_disk,
            encode(&sm).unwrap_or_default(),
            "merge differs from a full snapshot"
        );
        assert_eq!(size, on_disk.len() as u64);
        let back = read_file(dir.path()).ok().flatten();
        assert_eq!(back.as_ref().map(|s| s.get(b"d")), Some(Some(&b"22"[..])));
        assert_eq!(back.as_ref().map(|s| s.get(b"f")), Some(None));
    }

    #[test]
    fn a_corrupt_base_fails_the_merge_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut sm = StateMachine::new();
        apply_all(&mut sm, 0, &[("a", Some("1")), ("b", Some("2"))]);
        let d = sm.take_delta();
        write_merged(dir.path(), sm.applied(), &d, sm.sessions()).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        apply_all(&mut sm, 2, &[("c", Some("3"))]);
        let d = sm.take_delta();
        let err = write_merged(dir.path(), sm.applied(), &d, sm.sessions())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("corrupt snapshot")),
            "a corrupt base must not be merged"
        );
        assert_eq!(
            std::fs::read(&path).unwrap_or_default(),
            bytes,
            "the old file is untouched"
        );
    }
}
