//! The WAL directory: creating it, listing its files, and making entries durable.

use std::path::{Path, PathBuf};

use crate::disk::Disk;

use super::error::{io_err, WalError};
use super::segment::{classify_file_name, FileKind};

/// The WAL files found in a directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Sequence numbers of published segments, ascending.
    pub segment_sequences: Vec<u64>,
    /// Unpublished segments left by a crash.
    pub temp_paths: Vec<PathBuf>,
}

/// Creates `dir` if missing. A new directory's own entry lives in its parent, so the
/// parent is fsynced too; otherwise a crash could lose the directory with its segments.
pub(crate) fn ensure_dir(disk: &dyn Disk, dir: &Path) -> Result<(), WalError> {
    if disk.exists(dir) {
        return Ok(());
    }
    disk.create_dir_all(dir)
        .map_err(io_err("create directory", dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(disk, parent),
        _ => Ok(()),
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub(crate) fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), WalError> {
    disk.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Lists the WAL files in `dir`, ignoring anything else.
pub(crate) fn list(disk: &dyn Disk, dir: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    for path in disk.list(dir).map_err(io_err("list directory", dir))? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        match classify_file_name(name) {
            Some(FileKind::Segment(sequence)) => listing.segment_sequences.push(sequence),
            Some(FileKind::Temp) => listing.temp_paths.push(path),
            None => {}
        }
    }
    listing.segment_sequences.sort_unstable();
    Ok(listing)
}

/// Removes a file; one already gone counts as removed, so cleanup can be repeated.
pub(crate) fn remove_file(disk: &dyn Disk, path: &Path) -> Result<(), WalError> {
    match disk.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}
