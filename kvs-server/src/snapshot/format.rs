//! The snapshot file format, its one owner: writing and reading it as streams, with the
//! checksum checked at the end. See the [module docs](super) for the layout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use paxos_core::MembershipLog;

use super::SnapshotError;
use crate::auth::AuthState;
use crate::sessions::SessionTable;
use crate::state_machine::{Blob, Outcome, SessionResults, StateMachine, SESSION_RESULTS_MAX};

const MAGIC: &[u8; 8] = b"KVSSNAP5";
/// The format before the auth state and refusals remembered by sessions: read, never
/// written.
pub(crate) const MAGIC_V4: &[u8; 8] = b"KVSSNAP4";
/// The format before the membership: read, never written.
pub(crate) const MAGIC_V3: &[u8; 8] = b"KVSSNAP3";
/// The format before session floors and registration: read, never written.
pub(crate) const MAGIC_V2: &[u8; 8] = b"KVSSNAP2";
/// What every snapshot magic starts with; the last byte is the format version.
const MAGIC_PREFIX: &[u8; 7] = b"KVSSNAP";
/// The format version this build writes, and the oldest it reads.
const VERSION: u8 = b'5';
const VERSION_OLDEST: u8 = b'2';
/// Largest membership log kept in a snapshot (a handful of memberships of a few members).
const MEMBERSHIP_BYTES_MAX: usize = 64 * 1024;
/// Largest auth state kept in a snapshot: its limit, plus room for its encoding.
const AUTH_BYTES_MAX: usize = wire::auth::AUTH_STATE_BYTES_MAX + 64 * 1024;
/// Largest reply stored in a session (a CAS mismatch carries the current value).
const REPLY_BYTES_MAX: usize = wire::VALUE_BYTES_MAX + 1024;
/// Bytes of the header: the magic, then the slot.
pub(crate) const HEADER_BYTES: usize = 16;

/// The header of a snapshot of `slot` (the first [`HEADER_BYTES`] of its file).
pub(crate) fn header(slot: u64) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..].copy_from_slice(&slot.to_le_bytes());
    bytes
}

/// The slot in a snapshot header, if it is one (of this format or an earlier one).
pub(crate) fn header_slot(bytes: &[u8; HEADER_BYTES]) -> Option<u64> {
    let (magic, slot) = bytes.split_at(8);
    if magic != MAGIC && magic != MAGIC_V4 && magic != MAGIC_V3 && magic != MAGIC_V2 {
        return None;
    }
    let mut slot_bytes = [0u8; 8];
    slot_bytes.copy_from_slice(slot);
    Some(u64::from_le_bytes(slot_bytes))
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
        s.put(&header(slot))?;
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

    /// Ends the keys, writes the sessions, the membership log (`None`: not known, which
    /// only tests and a store of an earlier version have), the auth state and the
    /// checksum; returns the bytes written.
    pub fn finish(
        mut self,
        table: &SessionTable,
        membership: Option<&MembershipLog>,
        auth: &AuthState,
    ) -> io::Result<(W, u64)> {
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
        let membership = match membership {
            Some(log) => wire::membership::encode_membership_log(log)
                .map_err(|e| io::Error::other(e.to_string()))?,
            None => bytes::Bytes::new(),
        };
        self.put(&(membership.len() as u32).to_le_bytes())?;
        self.put(&membership)?;
        let auth = wire::encode(&auth.status()).map_err(|e| io::Error::other(e.to_string()))?;
        self.put(&(auth.len() as u32).to_le_bytes())?;
        self.put(&auth)?;
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
    Ok(w.finish(sm.sessions(), sm.membership(), sm.auth())?.1)
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
    /// The format version (b'2' to [`VERSION`]).
    version: u8,
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
        let version = magic_version(&magic).map_err(&corrupt)?;
        let slot = r.u64().map_err(&corrupt)?;
        Ok(SnapshotReader {
            r,
            origin: origin.to_path_buf(),
            slot,
            keys_done: false,
            version,
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

    /// The sessions, the membership log (`None` in a snapshot of an earlier version, or
    /// one written without), the auth state (empty in a snapshot of an earlier version)
    /// and the checksum check; call after the last entry.
    pub fn finish(mut self) -> Result<SnapshotTail, SnapshotError> {
        while self.next_entry()?.is_some() {}
        let v2 = self.version == b'2';
        let (registered, salt) = if v2 {
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
            let floor = if v2 {
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
                let outcome: Result<Outcome, _> = if self.version >= b'5' {
                    wire::decode(&raw)
                } else {
                    wire::decode(&raw).map(Ok)
                };
                let outcome = outcome.map_err(|e| self.corrupt(format!("session reply: {e}")))?;
                results.insert(seq, outcome);
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
        let membership = if self.version >= b'4' {
            let raw = self
                .r
                .take_len(MEMBERSHIP_BYTES_MAX)
                .map_err(|e| self.corrupt(e))?;
            if raw.is_empty() {
                None
            } else {
                Some(
                    wire::membership::decode_membership_log(&raw)
                        .map_err(|e| self.corrupt(e.to_string()))?,
                )
            }
        } else {
            None
        };
        let auth = if self.version >= b'5' {
            let raw = self
                .r
                .take_len(AUTH_BYTES_MAX)
                .map_err(|e| self.corrupt(e))?;
            let status =
                wire::decode(&raw).map_err(|e| self.corrupt(format!("auth state: {e}")))?;
            AuthState::from_status(&status).map_err(|e| self.corrupt(format!("auth state: {e}")))?
        } else {
            AuthState::default()
        };
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
        Ok(SnapshotTail {
            sessions: SessionTable::from_parts(registered, salt, sessions),
            membership,
            auth,
        })
    }
}

/// What a snapshot holds after its keys.
#[derive(Debug)]
pub struct SnapshotTail {
    /// The session table.
    pub sessions: SessionTable,
    /// The membership log (`None` in a snapshot of an earlier version, or one written
    /// without).
    pub membership: Option<MembershipLog>,
    /// The users, roles and grants (empty in a snapshot of an earlier version).
    pub auth: AuthState,
}

/// The format version of a snapshot magic, or why it is not one this build reads: a
/// snapshot of a newer version says so, with the versions this build reads.
fn magic_version(magic: &[u8]) -> Result<u8, String> {
    match magic.split_last() {
        Some((&version, prefix)) if prefix == MAGIC_PREFIX => {
            if (VERSION_OLDEST..=VERSION).contains(&version) {
                Ok(version)
            } else {
                Err(format!(
                    "snapshot format version {} is not one this build reads (versions {} to {}); \
                     a newer kvs-server wrote it",
                    version.escape_ascii(),
                    VERSION_OLDEST as char,
                    VERSION as char
                ))
            }
        }
        _ => Err("not a snapshot file (bad magic)".into()),
    }
}

/// The floor of a session read from the previous format: just below its oldest result if
/// its window is full (older ones were forgotten), else 0.
fn v2_floor(results: &BTreeMap<u64, Outcome>) -> u64 {
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
    let tail = reader.finish()?;
    let mut sm = StateMachine::from_parts(slot, data, tail.sessions);
    if let Some(log) = tail.membership {
        sm.set_membership(log);
    }
    sm.set_auth(tail.auth);
    Ok(sm)
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
