//! What can go wrong: I/O (always with the path), corruption (always with path and offset).

use std::io;
use std::path::{Path, PathBuf};

use super::record::PAYLOAD_BYTES_MAX;
use super::segment::SEGMENT_HEADER_BYTES;

/// Errors returned by the [`Wal`](super::Wal).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed. After one of these from `append`, `sync` or
    /// `rewrite`, the `Wal` is poisoned.
    #[error("WAL I/O error: {op} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "fdatasync".
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Data that may have been acknowledged is unreadable. Recovery refuses to guess:
    /// the operator (or a repair-from-peers path) must decide.
    #[error(
        "corrupt WAL data in {} at offset {offset}: {reason} \
         (record may have been acknowledged; refusing to start)",
        .path.display()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file of the bad record, or 0 for a bad segment header.
        offset: u64,
        /// What exactly is wrong.
        reason: Corruption,
    },
    /// The caller tried to append a payload larger than the format allows. Nothing was
    /// written and the `Wal` stays usable.
    #[error("WAL payload of {len_bytes} bytes exceeds the {max_bytes}-byte limit")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        len_bytes: usize,
        /// The limit, [`PAYLOAD_BYTES_MAX`].
        max_bytes: u32,
    },
    /// An earlier write or fsync failed. The kernel may have dropped the dirty pages, so
    /// neither retrying nor writing on is safe: the node must stop and recover by `open`.
    #[error("WAL refuses all operations after an earlier I/O error; the node must restart")]
    Poisoned,
}

/// The precise defect behind a [`WalError::Corrupt`], also used to describe a torn tail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A segment file is shorter than its own header (only tolerated in the last segment).
    #[error(
        "segment header cut short ({len_bytes} of {} bytes)",
        SEGMENT_HEADER_BYTES
    )]
    TruncatedSegmentHeader {
        /// The file's length.
        len_bytes: u64,
    },
    /// The segment header does not start with the magic number.
    #[error("bad segment magic")]
    BadMagic,
    /// The segment header has a format version this code does not understand.
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    /// The segment header's own checksum fails.
    #[error("segment header checksum mismatch")]
    HeaderChecksumMismatch,
    /// The segment header has flag bits this code does not understand.
    #[error("unknown segment header flags {0:#06x}")]
    UnknownFlags(u16),
    /// The sequence number in the header differs from the one in the file name.
    #[error("segment header says sequence {found} but the file name says {expected}")]
    SequenceMismatch {
        /// From the file name.
        expected: u64,
        /// From the header.
        found: u64,
    },
    /// A sequence number between the oldest live segment and the newest is absent.
    #[error("segment {expected} is missing")]
    MissingSegment {
        /// The absent sequence number.
        expected: u64,
    },
    /// The segment's chain seed is not the last checksum of its predecessor (or 0 for the
    /// first segment of a log): segments out of order, or a predecessor is missing.
    #[error(
        "segment chain seed {found:#010x} does not continue the log (expected {expected:#010x})"
    )]
    ChainSeedMismatch {
        /// The checksum the previous segment ended with.
        expected: u32,
        /// The seed in this segment's header.
        found: u32,
    },
    /// Fewer bytes than a record header remain before end of file.
    #[error("record header cut short by end of file")]
    TruncatedRecordHeader,
    /// The record's length field does not match its check word.
    #[error("record length field fails its check")]
    LengthCheckMismatch,
    /// The record's length field exceeds [`PAYLOAD_BYTES_MAX`].
    #[error(
        "record length {len_bytes} exceeds the {}-byte limit",
        PAYLOAD_BYTES_MAX
    )]
    LengthTooLarge {
        /// The length field.
        len_bytes: u32,
    },
    /// The record's payload runs past end of file.
    #[error("record payload of {len_bytes} bytes cut short by end of file ({available_bytes} bytes present)")]
    TruncatedPayload {
        /// The length field.
        len_bytes: u32,
        /// Bytes present after the header.
        available_bytes: u64,
    },
    /// The chained checksum fails: the payload changed, or the record is misplaced or replayed.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// A sync marker whose content does not match where it stands.
    #[error("sync marker does not match its position")]
    BadSyncMarker,
}

/// Builds a closure that wraps an `io::Error` with what was done and to which path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Shorthand for a [`WalError::Corrupt`].
pub(crate) fn corrupt(path: &Path, offset: u64, reason: Corruption) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}
