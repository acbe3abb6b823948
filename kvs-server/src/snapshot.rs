//! State-machine snapshots on disk.
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
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::state_machine::{SessionResults, StateMachine};

const MAGIC: &[u8; 8] = b"KVSSNAP1";
/// The snapshot's file name inside the data directory.
pub const FILE_NAME: &str = "snapshot";
const TEMP_NAME: &str = "snapshot.tmp";

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
        source: std::io::Error,
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

/// Serializes `sm` as a snapshot.
pub fn encode(sm: &StateMachine) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(sm.data_bytes() as usize + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sm.applied().to_le_bytes());
    out.extend_from_slice(&(sm.len() as u64).to_le_bytes());
    for (k, v) in sm.data() {
        put_bytes(&mut out, k);
        put_bytes(&mut out, v);
    }
    out.extend_from_slice(&(sm.sessions().len() as u64).to_le_bytes());
    for (client, s) in sm.sessions() {
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&s.last_slot.to_le_bytes());
        out.extend_from_slice(&(s.results.len() as u32).to_le_bytes());
        for (seq, reply) in &s.results {
            out.extend_from_slice(&seq.to_le_bytes());
            let r = wire::encode(reply).map_err(|e| e.to_string())?;
            put_bytes(&mut out, &r);
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Parses and verifies a snapshot. `origin` names where the bytes came from in errors.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<StateMachine, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: origin.to_path_buf(),
        reason,
    };
    if bytes.len() < MAGIC.len() + 4 {
        return Err(corrupt(format!("only {} bytes long", bytes.len())));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    let mut r = Reader { buf: body, pos: 0 };
    if r.take(8).map_err(&corrupt)? != MAGIC {
        return Err(corrupt("not a snapshot file (bad magic)".into()));
    }
    let slot = r.u64().map_err(&corrupt)?;
    let keys = r.u64().map_err(&corrupt)?;
    let mut data = BTreeMap::new();
    for _ in 0..keys {
        let k = r.bytes().map_err(&corrupt)?;
        let v = r.bytes().map_err(&corrupt)?;
        data.insert(k, v);
    }
    let sessions_n = r.u64().map_err(&corrupt)?;
    let mut sessions = BTreeMap::new();
    for _ in 0..sessions_n {
        let client = r.u64().map_err(&corrupt)?;
        let last_slot = r.u64().map_err(&corrupt)?;
        let n = r.u32().map_err(&corrupt)?;
        let mut results = BTreeMap::new();
        for _ in 0..n {
            let seq = r.u64().map_err(&corrupt)?;
            let raw = r.bytes().map_err(&corrupt)?;
            let reply = wire::decode(&raw).map_err(|e| corrupt(format!("session reply: {e}")))?;
            results.insert(seq, reply);
        }
        sessions.insert(client, SessionResults { last_slot, results });
    }
    if r.pos != body.len() {
        return Err(corrupt(format!(
            "{} unexpected bytes after the sessions",
            body.len() - r.pos
        )));
    }
    Ok(StateMachine::from_parts(slot, data, sessions))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated at offset {} (wanted {n} bytes)", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
}

/// Durably replaces the snapshot in `dir` with `bytes` (temp file, fsync, rename, fsync dir).
pub fn write_file(dir: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let tmp = dir.join(TEMP_NAME);
    let path = dir.join(FILE_NAME);
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapshotError::Io {
            op,
            path: p,
            source,
        }
    };
    let file = File::create(&tmp).map_err(io("create", &tmp))?;
    let mut w = BufWriter::new(file);
    w.write_all(bytes).map_err(io("write", &tmp))?;
    let file = w
        .into_inner()
        .map_err(|e| io("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))?;
    Ok(())
}

/// Reads the snapshot in `dir`, if there is one. A leftover temporary file is removed.
pub fn read_file(dir: &Path) -> Result<Option<(Vec<u8>, StateMachine)>, SnapshotError> {
    let _ = fs::remove_file(dir.join(TEMP_NAME));
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let sm = decode(&bytes, &path)?;
    Ok(Some((bytes, sm)))
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
        let bytes = encode(&sm).unwrap_or_default();
        write_file(dir.path(), &bytes).unwrap_or_else(|e| panic!("{e}"));
        let back = read_file(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.map(|(_, sm)| sm), Some(sm));
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
        let msg = decode(&bytes[..bytes.len() - 1], origin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("corrupt snapshot snapshot"), "{msg}");
    }

    #[test]
    fn missing_snapshot_is_none_and_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.path().join(TEMP_NAME), b"half written").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_file(dir.path()), Ok(None)));
        assert!(!dir.path().join(TEMP_NAME).exists());
    }
}
