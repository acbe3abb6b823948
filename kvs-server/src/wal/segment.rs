//! Segment files: their names and the fixed header at the start of each.

use super::error::Corruption;

/// Size of the segment header; the first record starts at this offset.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 28;

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"KVS-WAL\0";

/// The format version this code writes: records, and sync markers between group commits.
pub(crate) const SEGMENT_FORMAT_VERSION: u16 = 2;

/// The first format, without sync markers: still read (a torn tail is recognised by the
/// older rule), never written; a log whose last segment is of this version continues in a
/// new segment of the current version.
pub(crate) const SEGMENT_FORMAT_VERSION_V1: u16 = 1;

/// Header flag: this segment holds the whole log as of its creation (written by
/// `rewrite`), so every segment with a smaller sequence number is obsolete.
const FLAG_SUPERSEDES: u16 = 0x0001;

const FILE_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
const TEMP_SUFFIX: &str = ".log.tmp";
/// Zero-padded so that lexical order of names equals numeric order (u64::MAX has 20 digits).
const SEQUENCE_DIGITS: usize = 20;

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Equal to the number in the file name, so a renamed or copied file is caught.
    pub sequence: u64,
    /// The checksum the first record chains from: the last checksum of the previous
    /// segment, or 0 for the first segment of a log.
    pub chain_seed: u32,
    /// See [`FLAG_SUPERSEDES`].
    pub supersedes: bool,
    /// [`SEGMENT_FORMAT_VERSION`], or [`SEGMENT_FORMAT_VERSION_V1`] for an older segment.
    pub version: u16,
}

impl SegmentHeader {
    /// The on-disk bytes, ending with a checksum of the preceding 24.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..10].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.supersedes { FLAG_SUPERSEDES } else { 0 };
        bytes[10..12].copy_from_slice(&flags.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.chain_seed.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header. Version is checked before the checksum so that a
    /// future format with a different layout is reported as such, not as damage.
    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES]) -> Result<Self, Corruption> {
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(Corruption::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != SEGMENT_FORMAT_VERSION && version != SEGMENT_FORMAT_VERSION_V1 {
            return Err(Corruption::UnsupportedVersion(version));
        }
        let stored_crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        if crc32c::crc32c(&bytes[0..24]) != stored_crc {
            return Err(Corruption::HeaderChecksumMismatch);
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags & !FLAG_SUPERSEDES != 0 {
            return Err(Corruption::UnknownFlags(flags));
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&bytes[12..20]);
        Ok(Self {
            sequence: u64::from_le_bytes(sequence),
            chain_seed: u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
            supersedes: flags & FLAG_SUPERSEDES != 0,
            version,
        })
    }
}

/// Name of a published segment, e.g. `wal-00000000000000000001.log`.
pub(crate) fn segment_file_name(sequence: u64) -> String {
    format!(
        "{FILE_PREFIX}{sequence:0width$}{SEGMENT_SUFFIX}",
        width = SEQUENCE_DIGITS
    )
}

/// Name of a segment being prepared. `open` deletes these: they were never published.
pub(crate) fn temp_file_name(sequence: u64) -> String {
    format!(
        "{FILE_PREFIX}{sequence:0width$}{TEMP_SUFFIX}",
        width = SEQUENCE_DIGITS
    )
}

/// What a directory entry is to the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A published segment with this sequence number.
    Segment(u64),
    /// An unpublished segment left by a crash.
    Temp,
}

/// Recognises WAL file names; anything else in the directory is not ours.
pub(crate) fn classify_file_name(name: &str) -> Option<FileKind> {
    let rest = name.strip_prefix(FILE_PREFIX)?;
    if let Some(digits) = rest.strip_suffix(TEMP_SUFFIX) {
        return parse_sequence(digits).map(|_| FileKind::Temp);
    }
    let digits = rest.strip_suffix(SEGMENT_SUFFIX)?;
    parse_sequence(digits).map(FileKind::Segment)
}

fn parse_sequence(digits: &str) -> Option<u64> {
    // Exactly 20 digits, so each sequence number has one name and sorting is unambiguous.
    if digits.len() != SEQUENCE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
