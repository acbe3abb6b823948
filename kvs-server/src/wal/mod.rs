//! Write-ahead log: an append-only sequence of opaque byte records in segment files.
//!
//! The WAL never interprets payloads; the caller encodes its own records. Durability is
//! explicit: [`Wal::append`] only buffers, [`Wal::sync`] makes everything appended so far
//! durable with one `fdatasync` (group commit). Any I/O error poisons the `Wal`.
//!
//! # Files
//!
//! A directory of segments named `wal-<sequence>.log`, the sequence number zero-padded to
//! 20 digits so that lexical order is creation order. A segment is prepared as
//! `wal-<sequence>.log.tmp`, fsynced, renamed to its final name, and the directory fsynced;
//! so a published segment is never torn in what it held when published, and `open` deletes
//! any leftover `.tmp` file (it was never published, so nothing in it was acknowledged).
//! Other files in the directory are ignored.
//!
//! # Segment header (28 bytes, all integers little-endian)
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! |      0 |    8 | magic `b"KVS-WAL\0"`                                               |
//! |      8 |    2 | format version, `2` (`1`: the first format, read but not written)  |
//! |     10 |    2 | flags: bit 0 = SUPERSEDES (written by `rewrite`), others must be 0 |
//! |     12 |    8 | sequence number, equal to the one in the file name                 |
//! |     20 |    4 | chain seed: last record CRC of the previous segment, or 0          |
//! |     24 |    4 | CRC32C of bytes 0..24                                              |
//!
//! # Record (12-byte header, then the payload), starting at offset 28
//!
//! | offset | size | field                                                            |
//! |-------:|-----:|------------------------------------------------------------------|
//! |      0 |    4 | `len`: payload length, at most [`PAYLOAD_BYTES_MAX`] (64 MiB)    |
//! |      4 |    4 | CRC32C(`len` as 4 LE bytes): lets a damaged length be told apart  |
//! |        |      | from a payload cut off by a crash                                |
//! |      8 |    4 | `crc` = CRC32C(previous `crc` ‖ `len` ‖ payload), as 4 LE bytes each |
//! |     12 |  len | payload                                                          |
//!
//! # Sync markers (format 2)
//!
//! The first append after a `sync` that wrote records in the active segment is preceded by
//! a **sync marker**: a record whose length field is `0x8000_0000 | 28` (the high bit is
//! never set in a record's length) and whose 28-byte payload is `b"KVS-SYNC"`, the marker's
//! own offset in the file (u64), the segment's sequence number (u64) and a CRC32C of those
//! 24 bytes. It is chained like any record and is not returned by `open`. A marker is
//! written only after the fdatasync before it returned, so it proves that everything before
//! it in the segment was synced, and may have been acknowledged; and because it checks
//! itself and names its own position, it can be recognised past a damaged record.
//!
//! The "previous `crc`" of a segment's first record is its header's chain seed, so the
//! checksums form one chain through the whole log: a swapped, replayed or misplaced
//! record, and a segment out of order or missing, all break it.
//!
//! # Compaction
//!
//! [`Wal::rewrite`] publishes one new segment with the SUPERSEDES flag holding the whole
//! live state, then deletes all older segments. `open` starts from the newest superseding
//! segment and ignores (then deletes) everything older, so a crash at any point yields
//! either the old log or the new one. The seed of a superseding segment is not checked,
//! its predecessors being obsolete; the genesis segment must have seed 0.
//!
//! # Recovery
//!
//! A defective record (header or payload cut off by end of file, failed length check,
//! length above the cap, checksum mismatch) in the **last** segment is a **torn tail**
//! unless a valid sync marker stands anywhere after it in the file: without one, the
//! defect lies in writes that were never reported durable, whatever a power cut left of
//! them (the last write torn at a sector boundary, later sectors landed while earlier ones
//! did not, zeros or data after the damage). `open` truncates it, fsyncs, logs a warning
//! with file and offset, and carries on. A last segment shorter than a header or all zeros
//! is likewise recreated. With a marker after it, the damaged record was synced: that,
//! and every defect in an earlier segment, a bad segment header, a missing segment, a
//! broken chain, or a marker that does not match its place, is [`WalError::Corrupt`] with
//! the file and byte offset, and nothing is truncated.
//!
//! What recovery cannot tell apart: the **last** group commit before a crash, synced and
//! acknowledged, then damaged at rest before the next group commit wrote its marker, looks
//! exactly like a torn unsynced one, and is truncated. Telling them apart would take a
//! second fsync per group commit.
//!
//! A last segment of the first format (no markers) keeps that format's rule: torn only if
//! cut off by end of file or followed by nothing but zero bytes; the log then goes on in a
//! new segment of the current format.
#![warn(missing_docs)]

pub mod decode;
mod dir;
mod error;
mod options;
mod reader;
mod record;
mod recovery;
mod segment;
mod writer;

#[cfg(test)]
mod power_cuts;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::disk::{self, SharedDisk};

pub use error::{Corruption, WalError};
pub use options::{WalOptions, SEGMENT_BYTES_MAX_DEFAULT, WRITE_BUFFER_BYTES_DEFAULT};
pub use record::PAYLOAD_BYTES_MAX;

use record::{marker_payload, RecordHeader};
use recovery::SealedSegment;
use segment::{segment_file_name, SegmentHeader, SEGMENT_FORMAT_VERSION};
use writer::SegmentWriter;

/// An open write-ahead log. Owned by one writer; not internally synchronised.
#[derive(Debug)]
pub struct Wal {
    disk: SharedDisk,
    dir: PathBuf,
    options: WalOptions,
    /// Segments before the active one, oldest first.
    sealed: Vec<SealedSegment>,
    active: SegmentWriter,
    /// Checksum of the last record appended (the next record chains from it).
    chain_crc: u32,
    /// Set by any I/O error in a mutating operation; never cleared.
    poisoned: bool,
    /// Records of the active segment were synced since the last sync marker: the next
    /// append writes one first (see the module docs).
    marker_due: bool,
    /// Records were appended since the last sync.
    batch_open: bool,
    /// Test hook: the next fdatasync fails after the flush, as a failing disk would.
    #[cfg(test)]
    fail_next_sync: bool,
}

impl Wal {
    /// Opens the log in `dir`, creating the directory and a first segment if missing.
    ///
    /// Replays every live segment in order and returns the payloads of all valid records.
    /// A torn tail is truncated; corruption that may affect acknowledged records is
    /// [`WalError::Corrupt`] (see the module docs). The returned `Wal` appends after the
    /// last valid record. Call once at startup, before anything else touches `dir`.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
        Wal::open_on(disk::real(), dir, options)
    }

    /// [`Wal::open`] on `disk` (the real file system, or a simulated disk in tests).
    pub fn open_on(
        disk: SharedDisk,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
        dir::ensure_dir(&*disk, dir)?;
        let recovered = recovery::recover(&*disk, dir, &options)?;
        let marker_due = recovered.active.has_records();
        let wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            options,
            sealed: recovered.sealed,
            active: recovered.active,
            chain_crc: recovered.chain_crc,
            poisoned: false,
            marker_due,
            batch_open: false,
            #[cfg(test)]
            fail_next_sync: false,
        };
        Ok((wal, recovered.payloads))
    }

    /// Buffers one record. Not durable until the next [`sync`](Self::sync) returns `Ok`.
    ///
    /// May start a new segment first, which fdatasyncs the current one (so that only the
    /// last segment can ever have a torn tail). A payload over [`PAYLOAD_BYTES_MAX`] is
    /// rejected without effect; an I/O error poisons the `Wal`.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        self.check_usable()?;
        let len_bytes = checked_len(payload)?;
        self.poison_on_error(|wal| {
            if wal.active.len_bytes() >= wal.options.segment_bytes_max && wal.active.has_records() {
                wal.roll_over()?;
            }
            if std::mem::take(&mut wal.marker_due) {
                let marker = marker_payload(wal.active.len_bytes(), wal.active.sequence());
                let header = RecordHeader::for_marker(wal.chain_crc, &marker);
                wal.active.append_record(&header, &marker)?;
                wal.chain_crc = header.crc;
            }
            let header = RecordHeader::for_payload(wal.chain_crc, len_bytes, payload);
            wal.active.append_record(&header, payload)?;
            wal.chain_crc = header.crc;
            wal.batch_open = true;
            Ok(())
        })
    }

    /// Makes every record appended so far durable: write out the buffer, then
    /// `fdatasync`. Call once per batch of appends (group commit) and acknowledge the
    /// batch only after it returns `Ok`. Any error poisons the `Wal`: the caller must
    /// treat it as fatal, since a retried fsync can report success for lost pages.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        self.poison_on_error(|wal| {
            wal.active.flush()?;
            #[cfg(test)]
            if std::mem::take(&mut wal.fail_next_sync) {
                return Err(WalError::Io {
                    op: "fdatasync",
                    path: wal.active.path().to_path_buf(),
                    source: std::io::Error::other("injected fdatasync failure"),
                });
            }
            wal.active.sync()?;
            if std::mem::take(&mut wal.batch_open) {
                wal.marker_due = true;
            }
            Ok(())
        })
    }

    /// Replaces the whole log with exactly `payloads`, in order (compaction after a
    /// snapshot: pass the live state). Records appended but not yet synced are discarded
    /// with the old log; include them in `payloads` if they must survive.
    ///
    /// Writes a new superseding segment as a temp file, fsyncs it, renames it into place,
    /// fsyncs the directory, and only then deletes the older segments and fsyncs the
    /// directory again. A crash at any point leaves `open` either the old log or the new
    /// one. When this returns `Ok` the new log is durable.
    ///
    /// A payload over [`PAYLOAD_BYTES_MAX`] aborts the rewrite, leaving the old log in
    /// place and the `Wal` usable; an I/O error poisons it.
    pub fn rewrite<I, P>(&mut self, payloads: I) -> Result<(), WalError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.check_usable()?;
        let header = SegmentHeader {
            sequence: self.active.sequence() + 1,
            // Not checked on recovery (the predecessors are obsolete) but recorded, so
            // the chain value is continuous for anyone inspecting the files.
            chain_seed: self.chain_crc,
            supersedes: true,
            version: SEGMENT_FORMAT_VERSION,
        };
        let buffer_bytes = self.options.write_buffer_bytes;
        let mut writer = self.poison_on_error(|wal| {
            SegmentWriter::create_temp(&*wal.disk, &wal.dir, header, buffer_bytes)
        })?;
        let mut chain = header.chain_seed;
        for payload in payloads {
            let payload = payload.as_ref();
            let len_bytes = match checked_len(payload) {
                Ok(len_bytes) => len_bytes,
                Err(too_large) => {
                    // Unpublished, so harmless; `open` would delete it anyway.
                    let temp_path = writer.path().to_path_buf();
                    drop(writer);
                    self.poison_on_error(|wal| dir::remove_file(&*wal.disk, &temp_path))?;
                    return Err(too_large);
                }
            };
            let record = RecordHeader::for_payload(chain, len_bytes, payload);
            self.poison_on_error(|_| writer.append_record(&record, payload))?;
            chain = record.crc;
        }
        self.poison_on_error(|wal| {
            writer.publish(&*wal.disk, &wal.dir)?;
            // From here on the new segment is the log.
            let obsolete: Vec<u64> = wal
                .sealed
                .iter()
                .map(|segment| segment.sequence)
                .chain([wal.active.sequence()])
                .collect();
            wal.active = writer;
            wal.sealed.clear();
            wal.chain_crc = chain;
            wal.batch_open = false;
            wal.marker_due = wal.active.has_records();
            for sequence in obsolete {
                dir::remove_file(&*wal.disk, &wal.dir.join(segment_file_name(sequence)))?;
            }
            dir::sync_dir(&*wal.disk, &wal.dir)
        })
    }

    /// Total bytes of all segments, including appends still buffered. Compare with the
    /// size of a snapshot to decide when to [`rewrite`](Self::rewrite).
    pub fn size_bytes(&self) -> u64 {
        let sealed_bytes: u64 = self.sealed.iter().map(|s| s.len_bytes).sum();
        sealed_bytes + self.active.len_bytes()
    }

    /// Number of segment files, the active one included (always at least 1).
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Whether an earlier I/O error has made the `Wal` refuse all operations.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seals the active segment durably and starts the next one, chained from it.
    fn roll_over(&mut self) -> Result<(), WalError> {
        self.active.sync()?;
        let header = SegmentHeader {
            sequence: self.active.sequence() + 1,
            chain_seed: self.chain_crc,
            supersedes: false,
            version: SEGMENT_FORMAT_VERSION,
        };
        let next = recovery::create_segment(&*self.disk, &self.dir, header, &self.options)?;
        let previous = std::mem::replace(&mut self.active, next);
        // The sealed segment was synced whole; nothing in the new one needs confirming.
        self.marker_due = false;
        self.batch_open = false;
        self.sealed.push(SealedSegment {
            sequence: previous.sequence(),
            len_bytes: previous.len_bytes(),
        });
        Ok(())
    }

    fn check_usable(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Runs `op`; if it fails, nothing may be written again (see [`WalError::Poisoned`]).
    fn poison_on_error<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        let result = op(self);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

/// The payload's length as stored, if the format admits it.
fn checked_len(payload: &[u8]) -> Result<u32, WalError> {
    u32::try_from(payload.len())
        .ok()
        .filter(|&len_bytes| len_bytes <= PAYLOAD_BYTES_MAX)
        .ok_or(WalError::PayloadTooLarge {
            len_bytes: payload.len(),
            max_bytes: PAYLOAD_BYTES_MAX,
        })
}
