//! The buffered writer of the active segment.
//!
//! A hand-rolled buffer rather than `BufWriter`, because `BufWriter` flushes on drop: after
//! a failed write or fsync (a poisoned WAL) nothing more may reach the file.

use std::path::{Path, PathBuf};

use crate::disk::{Disk, DiskFile, Open};

use super::dir;
use super::error::{io_err, WalError};
use super::record::RecordHeader;
use super::segment::{segment_file_name, temp_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};

/// Appends to one segment file through a userspace buffer.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    path: PathBuf,
    sequence: u64,
    file: Box<dyn DiskFile>,
    buffer: Vec<u8>,
    buffer_bytes_max: usize,
    /// Bytes in the file plus bytes still buffered.
    len_bytes: u64,
    /// Whether anything was written since the last fdatasync.
    unsynced: bool,
}

impl SegmentWriter {
    /// Starts a segment under its temporary name. `open` ignores and deletes temp files,
    /// so the segment does not exist for recovery until [`publish`](Self::publish).
    pub fn create_temp(
        disk: &dyn Disk,
        dir: &Path,
        header: SegmentHeader,
        buffer_bytes_max: usize,
    ) -> Result<Self, WalError> {
        let path = dir.join(temp_file_name(header.sequence));
        let file = disk
            .open(&path, Open::Truncate)
            .map_err(io_err("create", &path))?;
        let mut writer = Self {
            path,
            sequence: header.sequence,
            file,
            buffer: Vec::with_capacity(buffer_bytes_max.min(SEGMENT_HEADER_BYTES * 64)),
            buffer_bytes_max,
            len_bytes: 0,
            unsynced: false,
        };
        writer.write(&header.encode())?;
        Ok(writer)
    }

    /// Makes a temp segment durable and visible: fsync its contents, rename it to its
    /// final name, fsync the directory. Renaming only after the fsync means a published
    /// segment is never torn in what it held at publication.
    pub fn publish(&mut self, disk: &dyn Disk, dir: &Path) -> Result<(), WalError> {
        self.flush()?;
        self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        let final_path = dir.join(segment_file_name(self.sequence));
        disk.rename(&self.path, &final_path)
            .map_err(io_err("rename", &self.path))?;
        self.path = final_path;
        dir::sync_dir(disk, dir)?;
        self.unsynced = false;
        Ok(())
    }

    /// Continues an existing segment whose valid contents end at `len_bytes` (the file
    /// has already been truncated there).
    pub fn open_existing(
        disk: &dyn Disk,
        path: PathBuf,
        sequence: u64,
        len_bytes: u64,
        buffer_bytes_max: usize,
    ) -> Result<Self, WalError> {
        let file = disk
            .open(&path, Open::Write)
            .map_err(io_err("open for append", &path))?;
        Ok(Self {
            path,
            sequence,
            file,
            buffer: Vec::new(),
            buffer_bytes_max,
            len_bytes,
            unsynced: false,
        })
    }

    /// Buffers one record.
    pub fn append_record(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), WalError> {
        self.write(&header.encode())?;
        self.write(payload)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        self.unsynced = true;
        self.len_bytes += bytes.len() as u64;
        if self.buffer.len() + bytes.len() > self.buffer_bytes_max {
            self.flush()?;
        }
        if bytes.len() >= self.buffer_bytes_max {
            // Large payloads go straight to the file rather than through a copy.
            return self.file.append(bytes).map_err(io_err("write", &self.path));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes out the buffer (to the page cache: not durable).
    pub fn flush(&mut self) -> Result<(), WalError> {
        if !self.buffer.is_empty() {
            self.file
                .append(&self.buffer)
                .map_err(io_err("write", &self.path))?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Writes out the buffer and fdatasyncs. Skips the syscall when nothing changed.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.flush()?;
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(io_err("fdatasync", &self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The file's path (final name once published).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Bytes written or buffered, header included.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether at least one record follows the header.
    pub fn has_records(&self) -> bool {
        self.len_bytes > SEGMENT_HEADER_BYTES as u64
    }
}
