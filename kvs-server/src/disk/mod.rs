//! The narrow storage interface under the log, the snapshots and the data-dir files.
//!
//! Everything the server keeps on disk goes through [`Disk`] and [`DiskFile`]: create,
//! append or write at an offset, read, truncate, fsync (data or all), rename, remove, list,
//! and fsync of a directory. Production uses [`RealDisk`], the file system. Tests use
//! [`SimDisk`], a simulated disk that keeps exactly what a real one guarantees and no more:
//! on a power cut only what was synced survives, the unsynced writes that do reach the
//! platter arrive sector by sector in any order (so the last write can be torn at a sector
//! boundary, and a later sector can land while an earlier one does not), and directory
//! changes survive only once their directory was synced. It also fails an fsync (EIO),
//! fills up (ENOSPC), and flips bits or zeroes sectors on read, all from one seed, so that
//! a failure replays.

mod real;
mod sim;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use real::RealDisk;
pub use sim::{SimDisk, SimFaults};

/// The size of a sector: the unit a power cut tears writes at.
pub const SECTOR_BYTES: u64 = 512;

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Read only; the file must exist.
    Read,
    /// Read and write; created empty if missing, kept as it is otherwise.
    Write,
    /// Read and write; created, or emptied if it exists.
    Truncate,
}

/// A file system, real or simulated. Paths are used as given.
pub trait Disk: Send + Sync + Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The files directly inside `dir`, sorted by path.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens `path`.
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn DiskFile>>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to` if it exists. Durable once the directory is
    /// synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`. Durable once the directory is synced.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists (as a file or a directory).
    fn exists(&self, path: &Path) -> bool;
}

/// An open file.
pub trait DiskFile: Send + Debug {
    /// Writes `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, extending the file (with zeros) if needed.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads into `buf` from `offset`; returns how many bytes were read (0 at the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The file's length.
    fn len(&mut self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&mut self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the file's data and metadata durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A shared handle on a disk.
pub type SharedDisk = Arc<dyn Disk>;

/// The file system of the machine, shared.
pub fn real() -> SharedDisk {
    Arc::new(RealDisk)
}

/// A [`DiskFile`] read as a stream from an offset.
#[derive(Debug)]
pub struct FileReader {
    file: Box<dyn DiskFile>,
    offset: u64,
}

impl FileReader {
    /// Reads `file` from `offset` on.
    pub fn new(file: Box<dyn DiskFile>, offset: u64) -> FileReader {
        FileReader { file, offset }
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// A [`DiskFile`] written as a stream, appending.
#[derive(Debug)]
pub struct FileWriter {
    file: Box<dyn DiskFile>,
}

impl FileWriter {
    /// Appends to `file`.
    pub fn new(file: Box<dyn DiskFile>) -> FileWriter {
        FileWriter { file }
    }

    /// The file, to sync it.
    pub fn into_inner(self) -> Box<dyn DiskFile> {
        self.file
    }
}

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
