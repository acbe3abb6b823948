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
//! |      8 |    2 | format version, `1`                                                |
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
//! length above the cap, checksum mismatch) is a **torn tail** only in the last segment
//! and only if it runs into end of file or is followed by nothing but zero bytes: it
//! was never fsynced, so never acknowledged. `open` truncates it, fsyncs, logs a warning
//! with file and offset, and carries on. A last segment shorter than a header or all
//! zeros is likewise recreated. Every other defect (a bad record followed by more data,
//! any defect in an earlier segment, a bad segment header, a missing segment, a broken
//! chain) may have hit acknowledged data: `open` returns [`WalError::Corrupt`] with the
//! file and byte offset and never truncates.
#![warn(missing_docs)]

mod dir;
mod error;
mod options;
mod reader;
mod record;
mod recovery;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{Corruption, WalError};
pub use options::{WalOptions, SEGMENT_BYTES_MAX_DEFAULT, WRITE_BUFFER_BYTES_DEFAULT};
pub use record::PAYLOAD_BYTES_MAX;

use record::RecordHeader;
use recovery::SealedSegment;
use segment::{segment_file_name, SegmentHeader};
use writer::SegmentWriter;

/// An open write-ahead log. Owned by one writer; not internally synchronised.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Segments before the active one, oldest first.
    sealed: Vec<SealedSegment>,
    active: SegmentWriter,
    /// Checksum of the last record appended (the next record chains from it).
    chain_crc: u32,
    /// Set by any I/O error in a mutating operation; never cleared.
    poisoned: bool,
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
        dir::ensure_dir(dir)?;
        let recovered = recovery::recover(dir, &options)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            sealed: recovered.sealed,
            active: recovered.active,
            chain_crc: recovered.chain_crc,
            poisoned: false,
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
            let header = RecordHeader::for_payload(wal.chain_crc, len_bytes, payload);
            wal.active.append_record(&header, payload)?;
            wal.chain_crc = header.crc;
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
            wal.active.sync()
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
        };
        let buffer_bytes = self.options.write_buffer_bytes;
        let mut writer =
            self.poison_on_error(|wal| SegmentWriter::create_temp(&wal.dir, header, buffer_bytes))?;
        let mut chain = header.chain_seed;
        for payload in payloads {
            let payload = payload.as_ref();
            let len_bytes = match checked_len(payload) {
                Ok(len_bytes) => len_bytes,
                Err(too_large) => {
                    // Unpublished, so harmless; `open` would delete it anyway.
                    let temp_path = writer.path().to_path_buf();
                    drop(writer);
                    self.poison_on_error(|_| dir::remove_file(&temp_path))?;
                    return Err(too_large);
                }
            };
            let record = RecordHeader::for_payload(chain, len_bytes, payload);
            self.poison_on_error(|_| writer.append_record(&record, payload))?;
            chain = record.crc;
        }
        self.poison_on_error(|wal| {
            writer.publish(&wal.dir)?;
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
            for sequence in obsolete {
                dir::remove_file(&wal.dir.join(segment_file_name(sequence)))?;
            }
            dir::sync_dir(&wal.dir)
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
        };
        let next = recovery::create_segment(&self.dir, header, &self.options)?;
        let previous = std::mem::replace(&mut self.active, next);
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
