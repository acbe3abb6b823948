//! State-machine snapshots on disk, written and read as streams (a snapshot is never held
//! in memory as a whole: a large store would need twice its size otherwise).
//!
//! Format (little-endian), checked end to end by a trailing CRC32C:
//! ```text
//! magic "KVSSNAP1" | slot u64 | key count u64 | (key len u32, key, value len u32, value)*
//! | session count u64 | (client u64, last slot u64, n u32, (seq u64, len u32, reply)*)*
//! | crc32c u32 over everything before it
//! ```
//! A snapshot is written to a temporary file, fsynced, renamed over the previous one, and
//! the directory is fsynced, so a crash leaves either the old or the new snapshot.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::state_machine::{SessionResults, StateMachine};

const MAGIC: &[u8; 8] = b"KVSSNAP1";
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

/// Writes `sm` as a snapshot to `out`; returns the bytes written.
pub fn encode_to(sm: &StateMachine, out: impl Write) -> io::Result<u64> {
    let mut w = CrcWriter { inner: out, crc: 0 };
    let mut n = 0u64;
    let mut put = |w: &mut CrcWriter<_>, b: &[u8]| -> io::Result<()> {
        w.write_all(b)?;
        n += b.len() as u64;
        Ok(())
    };
    put(&mut w, MAGIC)?;
    put(&mut w, &sm.applied().to_le_bytes())?;
    put(&mut w, &(sm.len() as u64).to_le_bytes())?;
    for (k, v) in sm.data() {
        put(&mut w, &(k.len() as u32).to_le_bytes())?;
        put(&mut w, k)?;
        put(&mut w, &(v.len() as u32).to_le_bytes())?;
        put(&mut w, v)?;
    }
    put(&mut w, &(sm.sessions().len() as u64).to_le_bytes())?;
    for (client, s) in sm.sessions() {
        put(&mut w, &client.to_le_bytes())?;
        put(&mut w, &s.last_slot.to_le_bytes())?;
        put(&mut w, &(s.results.len() as u32).to_le_bytes())?;
        for (seq, reply) in &s.results {
            put(&mut w, &seq.to_le_bytes())?;
            let r = wire::encode(reply).map_err(|e| io::Error::other(e.to_string()))?;
            put(&mut w, &(r.len() as u32).to_le_bytes())?;
            put(&mut w, &r)?;
        }
    }
    let crc = w.crc;
    w.inner.write_all(&crc.to_le_bytes())?;
    w.inner.flush()?;
    Ok(n + 4)
}

/// Serializes `sm` as a snapshot in memory (for tests and small stores).
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_to(sm, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads a snapshot from `input`, checking every length against what remains and the
/// checksum at the end. `origin` names where the bytes came from in errors.
pub fn decode_from(input: impl Read, origin: &Path) -> Result<StateMachine, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: origin.to_path_buf(),
        reason,
    };
    let mut r = CrcReader {
        inner: input,
        crc: 0,
        pos: 0,
    };
    let magic = r.take(8, 8).map_err(&corrupt)?;
    if magic != MAGIC {
        return Err(corrupt("not a snapshot file (bad magic)".into()));
    }
    let slot = r.u64().map_err(&corrupt)?;
    let keys = r.u64().map_err(&corrupt)?;
    let mut data = BTreeMap::new();
    for _ in 0..keys {
        let k = r.bytes(wire::KEY_BYTES_MAX).map_err(&corrupt)?;
        let v = r.bytes(wire::VALUE_BYTES_MAX).map_err(&corrupt)?;
        data.insert(k, v);
    }
    let sessions_n = r.u64().map_err(&corrupt)?;
    let mut sessions = BTreeMap::new();
    for _ in 0..sessions_n {
        let client = r.u64().map_err(&corrupt)?;
        let last_slot = r.u64().map_err(&corrupt)?;
        let n = r.u32().map_err(&corrupt)?;
        if n as usize > crate::state_machine::SESSION_RESULTS_MAX {
            return Err(corrupt(format!("a session claims {n} results")));
        }
        let mut results = BTreeMap::new();
        for _ in 0..n {
            let seq = r.u64().map_err(&corrupt)?;
            let raw = r.bytes(REPLY_BYTES_MAX).map_err(&corrupt)?;
            let reply = wire::decode(&raw).map_err(|e| corrupt(format!("session reply: {e}")))?;
            results.insert(seq, reply);
        }
        sessions.insert(client, SessionResults { last_slot, results });
    }
    let computed = r.crc;
    let mut tail = [0u8; 4];
    r.inner
        .read_exact(&mut tail)
        .map_err(|e| corrupt(format!("missing checksum at offset {}: {e}", r.pos)))?;
    let stored = u32::from_le_bytes(tail);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let mut extra = [0u8; 1];
    if matches!(r.inner.read(&mut extra), Ok(n) if n > 0) {
        return Err(corrupt("unexpected bytes after the checksum".into()));
    }
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
    fn bytes(&mut self, max: usize) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(Bytes::from(self.take(n, max)?))
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
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)?;
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

/// Reads the snapshot in `dir`, if there is one. Leftover temporary files are removed.
pub fn read_file(dir: &Path) -> Result<Option<StateMachine>, SnapshotError> {
    let _ = fs::remove_file(dir.join(TEMP_NAME));
    let _ = fs::remove_file(dir.join(INCOMING_NAME));
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
    use wire::{Command, Session, WriteOp};

    fn sample() -> StateMachine {
        let mut sm = StateMachine::new();
        for i in 0..20u64 {
            let c = Command {
                session: Session {
                    client_id: i % 3,
                    seq: i,
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
        assert_eq!(read_file(dir.path()).ok().flatten(), Some(sm.clone()));
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
}
