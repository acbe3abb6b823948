//! Reading one segment during recovery, and telling a torn tail from corruption.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::disk::{Disk, DiskFile, Open};

use super::error::{corrupt, io_err, Corruption, WalError};
use super::record::{is_marker_at, marker_within, RecordHeader, RECORD_HEADER_BYTES};
use super::segment::{SegmentHeader, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES};

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// What a segment's header turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderRead {
    /// A valid header.
    Valid(SegmentHeader),
    /// The last segment is shorter than a header, or nothing but zero bytes. It cannot
    /// hold a record, so nothing in it was ever acknowledged.
    Blank,
}

/// Reads the header of the last segment, which alone may be [`HeaderRead::Blank`].
pub(crate) fn read_last_segment_header(
    disk: &dyn Disk,
    path: &Path,
    sequence: u64,
) -> Result<HeaderRead, WalError> {
    let (mut file, len_bytes) = open_file(disk, path, 0)?;
    if len_bytes < SEGMENT_HEADER_BYTES as u64 || rest_is_zero(&mut file, path)? {
        return Ok(HeaderRead::Blank);
    }
    read_segment_header(disk, path, sequence).map(HeaderRead::Valid)
}

/// Reads and checks the header of segment `sequence` at `path`.
pub(crate) fn read_segment_header(
    disk: &dyn Disk,
    path: &Path,
    sequence: u64,
) -> Result<SegmentHeader, WalError> {
    let (mut file, len_bytes) = open_file(disk, path, 0)?;
    if len_bytes < SEGMENT_HEADER_BYTES as u64 {
        let reason = Corruption::TruncatedSegmentHeader { len_bytes };
        return Err(corrupt(path, 0, reason));
    }
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact(&mut bytes).map_err(io_err("read", path))?;
    let header = SegmentHeader::decode(&bytes).map_err(|reason| corrupt(path, 0, reason))?;
    if header.sequence != sequence {
        let reason = Corruption::SequenceMismatch {
            expected: sequence,
            found: header.sequence,
        };
        return Err(corrupt(path, 0, reason));
    }
    Ok(header)
}

/// The outcome of reading a segment's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScannedSegment {
    /// Offset just past the last valid record.
    pub valid_end: u64,
    /// Checksum of the last valid record (the seed if there is none).
    pub chain_end: u32,
    /// Set if the segment ends in a torn tail starting at `valid_end`.
    pub torn: Option<Corruption>,
}

/// One attempt to read a record.
enum RecordRead {
    /// A record that passed every check.
    Valid {
        header: RecordHeader,
        payload: Vec<u8>,
    },
    /// A record that did not.
    Defective(Defect),
}

/// Why the record at some offset could not be accepted.
struct Defect {
    reason: Corruption,
    /// The record runs into end of file: nothing can follow it.
    incomplete: bool,
}

/// Reads every record of a segment after its header, pushing the payloads (sync markers
/// are checked and skipped).
///
/// The rule for a defective record: in a sealed segment, always corruption (it was synced
/// at roll-over). In the last segment of the current format, it is a torn tail unless a
/// valid sync marker stands anywhere after it: a marker is written at the start of a group
/// commit, only once the previous one's fdatasync returned, so a marker after the defect
/// proves the defective record was synced, and possibly acknowledged. Without one, the
/// defect lies in writes never reported durable, whatever a power cut left of them (torn
/// sectors, later sectors landed before earlier ones). In a last segment of the first
/// format (no markers) the older rule holds: torn only if cut off by end of file or
/// followed by nothing but zero bytes.
pub(crate) fn scan_records(
    disk: &dyn Disk,
    path: &Path,
    header: &SegmentHeader,
    is_last: bool,
    payloads: &mut Vec<Vec<u8>>,
) -> Result<ScannedSegment, WalError> {
    let markers = header.version >= SEGMENT_FORMAT_VERSION;
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    let (file, file_len_bytes) = open_file(disk, path, offset)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut chain = header.chain_seed;
    loop {
        let remaining_bytes = file_len_bytes.saturating_sub(offset);
        if remaining_bytes == 0 {
            return Ok(ScannedSegment {
                valid_end: offset,
                chain_end: chain,
                torn: None,
            });
        }
        let defect = match read_record(&mut reader, path, remaining_bytes, chain, markers)? {
            RecordRead::Valid {
                header: record,
                payload,
            } => {
                if record.is_marker() {
                    if !is_marker_at(&payload, offset, header.sequence) {
                        return Err(corrupt(path, offset, Corruption::BadSyncMarker));
                    }
                } else {
                    payloads.push(payload);
                }
                chain = record.crc;
                offset += RECORD_HEADER_BYTES as u64 + u64::from(record.payload_len());
                continue;
            }
            RecordRead::Defective(defect) => defect,
        };
        let torn = is_last
            && if markers {
                !synced_after(disk, path, offset, header.sequence)?
            } else {
                defect.incomplete || rest_is_zero(&mut reader, path)?
            };
        if !torn {
            return Err(corrupt(path, offset, defect.reason));
        }
        return Ok(ScannedSegment {
            valid_end: offset,
            chain_end: chain,
            torn: Some(defect.reason),
        });
    }
}

/// Whether a sync marker stands anywhere after `defect_at` in the segment.
fn synced_after(
    disk: &dyn Disk,
    path: &Path,
    defect_at: u64,
    sequence: u64,
) -> Result<bool, WalError> {
    let (mut file, len_bytes) = open_file(disk, path, defect_at + 1)?;
    let mut rest = Vec::with_capacity(len_bytes.saturating_sub(defect_at) as usize);
    file.read_to_end(&mut rest).map_err(io_err("read", path))?;
    Ok(marker_within(&rest, defect_at + 1, sequence))
}

/// Reads one record at the reader's position, with at most `remaining_bytes` left in the
/// file.
fn read_record(
    reader: &mut impl Read,
    path: &Path,
    remaining_bytes: u64,
    prev_crc: u32,
    markers: bool,
) -> Result<RecordRead, WalError> {
    if remaining_bytes < RECORD_HEADER_BYTES as u64 {
        return Ok(RecordRead::Defective(Defect {
            reason: Corruption::TruncatedRecordHeader,
            incomplete: true,
        }));
    }
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
    reader
        .read_exact(&mut header_bytes)
        .map_err(io_err("read", path))?;
    let header = RecordHeader::decode(&header_bytes);
    if let Err(reason) = header.validate_length(markers) {
        return Ok(RecordRead::Defective(Defect {
            reason,
            incomplete: false,
        }));
    }
    let available_bytes = remaining_bytes - RECORD_HEADER_BYTES as u64;
    let payload_len = header.payload_len();
    if u64::from(payload_len) > available_bytes {
        return Ok(RecordRead::Defective(Defect {
            reason: Corruption::TruncatedPayload {
                len_bytes: payload_len,
                available_bytes,
            },
            incomplete: true,
        }));
    }
    let mut payload = vec![0u8; payload_len as usize];
    reader
        .read_exact(&mut payload)
        .map_err(io_err("read", path))?;
    if let Err(reason) = header.validate_payload(prev_crc, &payload) {
        return Ok(RecordRead::Defective(Defect {
            reason,
            incomplete: false,
        }));
    }
    Ok(RecordRead::Valid { header, payload })
}

/// Whether everything from the reader's position to end of file is zero bytes
/// (file systems zero-fill space allocated but never written before a crash).
fn rest_is_zero(reader: &mut impl Read, path: &Path) -> Result<bool, WalError> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read_bytes = match reader.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        if chunk[..read_bytes].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// A file read sequentially from an offset, through the [`Disk`] interface.
struct FileReader {
    file: Box<dyn DiskFile>,
    offset: u64,
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Opens `path` for reading from `offset`; returns the reader and the file's length.
fn open_file(disk: &dyn Disk, path: &Path, offset: u64) -> Result<(FileReader, u64), WalError> {
    let mut file = disk.open(path, Open::Read).map_err(io_err("open", path))?;
    let len_bytes = file.len().map_err(io_err("stat", path))?;
    Ok((FileReader { file, offset }, len_bytes))
}
