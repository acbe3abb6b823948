//! Snapshot files in a data directory: written to a temporary file, fsynced, renamed into
//! place and the directory fsynced; read back at start; received ones published.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use paxos_core::MembershipLog;

use crate::disk::{self, Disk, FileReader, FileWriter, Open};

use super::format::{decode_from, encode_to, SnapshotReader, SnapshotWriter};
use super::{SnapshotError, FILE_NAME, INCOMING_NAME, TEMP_NAME};
use crate::auth::AuthState;
use crate::sessions::SessionTable;
use crate::state_machine::{Delta, StateMachine};

/// The buffer of snapshot file readers and writers.
pub(crate) const FILE_BUFFER_BYTES: usize = 1024 * 1024;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// fsyncs `dir`, so that a rename inside it is durable.
fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), SnapshotError> {
    disk.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Durably replaces the snapshot in `dir` with one of `sm` (temp file, fsync, rename,
/// fsync dir). Returns the snapshot's size in bytes.
pub fn write_file(dir: &Path, sm: &StateMachine) -> Result<u64, SnapshotError> {
    write_file_on(&disk::RealDisk, dir, sm)
}

/// [`write_file`] on `disk`.
pub fn write_file_on(disk: &dyn Disk, dir: &Path, sm: &StateMachine) -> Result<u64, SnapshotError> {
    let tmp = dir.join(TEMP_NAME);
    let path = dir.join(FILE_NAME);
    let file = disk
        .open(&tmp, Open::Truncate)
        .map_err(io_err("create", &tmp))?;
    let mut w = BufWriter::with_capacity(FILE_BUFFER_BYTES, FileWriter::new(file));
    let size = encode_to(sm, &mut w).map_err(io_err("write", &tmp))?;
    publish(disk, dir, &tmp, &path, w)?;
    Ok(size)
}

/// Makes a fully written temporary snapshot the current one: flush, fsync, rename over the
/// previous file, fsync the directory. A crash at any point leaves the old or the new file.
fn publish(
    disk: &dyn Disk,
    dir: &Path,
    tmp: &Path,
    path: &Path,
    mut w: BufWriter<FileWriter>,
) -> Result<(), SnapshotError> {
    w.flush().map_err(io_err("write", tmp))?;
    let mut file = w
        .into_inner()
        .map_err(|e| io_err("write", tmp)(e.into_error()))?
        .into_inner();
    file.sync_all().map_err(io_err("fsync", tmp))?;
    disk.rename(tmp, path).map_err(io_err("rename", path))?;
    sync_dir(disk, dir)
}

/// Durably writes the snapshot of `slot`: the current snapshot file in `dir` (if any)
/// with `delta` merged in, `sessions` and `membership` (the membership log as of `slot`).
/// Streams from file to file, so memory use does not grow with the store. Returns the new
/// snapshot's size.
pub fn write_merged(
    dir: &Path,
    slot: u64,
    delta: &Delta,
    sessions: &SessionTable,
    membership: Option<&MembershipLog>,
    auth: &AuthState,
) -> Result<u64, SnapshotError> {
    write_merged_on(
        &disk::RealDisk,
        dir,
        slot,
        delta,
        sessions,
        membership,
        auth,
    )
}

/// [`write_merged`] on `disk`.
pub fn write_merged_on(
    disk: &dyn Disk,
    dir: &Path,
    slot: u64,
    delta: &Delta,
    sessions: &SessionTable,
    membership: Option<&MembershipLog>,
    auth: &AuthState,
) -> Result<u64, SnapshotError> {
    let base_path = dir.join(FILE_NAME);
    let mut base = match disk.open(&base_path, Open::Read) {
        Ok(f) => Some(SnapshotReader::new(
            BufReader::with_capacity(FILE_BUFFER_BYTES, FileReader::new(f, 0)),
            &base_path,
        )?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("open", &base_path)(e)),
    };
    let tmp = dir.join(TEMP_NAME);
    let file = disk
        .open(&tmp, Open::Truncate)
        .map_err(io_err("create", &tmp))?;
    let mut w = SnapshotWriter::new(
        BufWriter::with_capacity(FILE_BUFFER_BYTES, FileWriter::new(file)),
        slot,
    )
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
    let (buf, size) = w
        .finish(sessions, membership, auth)
        .map_err(io_err("write", &tmp))?;
    publish(disk, dir, &tmp, &base_path, buf)?;
    Ok(size)
}

/// Checks a snapshot file received from a peer and, if valid, durably makes it this
/// replica's snapshot. Returns the state it holds.
pub fn install_incoming(dir: &Path, origin: &Path) -> Result<StateMachine, SnapshotError> {
    let disk = &disk::RealDisk;
    let incoming = dir.join(INCOMING_NAME);
    let file = File::open(&incoming).map_err(io_err("open", &incoming))?;
    file.sync_all().map_err(io_err("fsync", &incoming))?;
    let sm = decode_from(BufReader::with_capacity(FILE_BUFFER_BYTES, file), origin)?;
    let path = dir.join(FILE_NAME);
    fs::rename(&incoming, &path).map_err(io_err("rename", &path))?;
    sync_dir(disk, dir)?;
    Ok(sm)
}

/// Makes a received snapshot file, already fsynced and checked ([`transfer::Incoming`]),
/// the current snapshot: rename over the previous one, fsync the directory.
pub fn publish_incoming(dir: &Path, incoming: &Path) -> Result<(), SnapshotError> {
    publish_incoming_on(&disk::RealDisk, dir, incoming)
}

/// [`publish_incoming`] on `disk`.
pub fn publish_incoming_on(
    disk: &dyn Disk,
    dir: &Path,
    incoming: &Path,
) -> Result<(), SnapshotError> {
    let path = dir.join(FILE_NAME);
    disk.rename(incoming, &path)
        .map_err(io_err("rename", &path))?;
    sync_dir(disk, dir)
}

/// Reads the snapshot in `dir`, if there is one. Leftover temporary files (of snapshots
/// being written or received) are removed.
pub fn read_file(dir: &Path) -> Result<Option<StateMachine>, SnapshotError> {
    read_file_on(&disk::RealDisk, dir)
}

/// [`read_file`] on `disk`.
pub fn read_file_on(disk: &dyn Disk, dir: &Path) -> Result<Option<StateMachine>, SnapshotError> {
    let _ = disk.remove(&dir.join(TEMP_NAME));
    let _ = disk.remove(&dir.join(INCOMING_NAME));
    let received = format!("{INCOMING_NAME}.");
    for path in disk.list(dir).unwrap_or_default() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&received) {
            let _ = disk.remove(&path);
        }
    }
    let path = dir.join(FILE_NAME);
    let file = match disk.open(&path, Open::Read) {
        Ok(f) => FileReader::new(f, 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                op: "open",
                path,
                source,
            })
        }
    };
    let sm = decode_from(BufReader::with_capacity(FILE_BUFFER_BYTES, file), &path)?;
    Ok(Some(sm))
}
