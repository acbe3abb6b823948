//! One record: its fixed header and the checksum chain linking it to its predecessor.

use super::error::Corruption;

/// Largest payload the format admits. A length field above this is corruption, so a
/// damaged length can never make recovery allocate more than this.
pub const PAYLOAD_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Size of a record header: length, length check, chained checksum (u32 LE each).
pub(crate) const RECORD_HEADER_BYTES: usize = 12;

/// The decoded fixed header in front of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload length in bytes.
    pub len_bytes: u32,
    /// `crc32c(len_bytes as LE)`. Without it a bit flip that enlarges the length of a
    /// record in the middle of the last segment would look exactly like a payload cut
    /// off by a crash, and recovery would silently truncate acknowledged records.
    pub len_check: u32,
    /// `crc32c(previous record's crc ‖ len_bytes as LE ‖ payload)`.
    pub crc: u32,
}

/// The check word stored next to a length.
pub(crate) fn length_check(len_bytes: u32) -> u32 {
    crc32c::crc32c(&len_bytes.to_le_bytes())
}

/// The chained checksum of a record. Folding in the predecessor's checksum makes a
/// record valid only at its own position: a swapped, replayed or stray record fails.
pub(crate) fn chained_crc(prev_crc: u32, len_bytes: u32, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&prev_crc.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &len_bytes.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

impl RecordHeader {
    /// The header for `payload` following a record whose checksum is `prev_crc`.
    /// The caller has checked `payload.len() <= PAYLOAD_BYTES_MAX`.
    pub fn for_payload(prev_crc: u32, len_bytes: u32, payload: &[u8]) -> Self {
        debug_assert_eq!(payload.len(), len_bytes as usize);
        debug_assert!(len_bytes <= PAYLOAD_BYTES_MAX);
        Self {
            len_bytes,
            len_check: length_check(len_bytes),
            crc: chained_crc(prev_crc, len_bytes, payload),
        }
    }

    /// The on-disk bytes.
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.len_bytes.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.len_check.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.crc.to_le_bytes());
        bytes
    }

    /// Splits raw bytes into fields; nothing is validated yet.
    pub fn decode(bytes: &[u8; RECORD_HEADER_BYTES]) -> Self {
        let [l0, l1, l2, l3, k0, k1, k2, k3, c0, c1, c2, c3] = *bytes;
        Self {
            len_bytes: u32::from_le_bytes([l0, l1, l2, l3]),
            len_check: u32::from_le_bytes([k0, k1, k2, k3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        }
    }

    /// Whether the length can be trusted enough to read that many bytes.
    /// A sync marker (see [`MARKER_LEN_FIELD`]).
    pub fn is_marker(&self) -> bool {
        self.len_bytes == MARKER_LEN_FIELD
    }

    /// Bytes of payload that follow the header.
    pub fn payload_len(&self) -> u32 {
        if self.is_marker() {
            MARKER_PAYLOAD_BYTES as u32
        } else {
            self.len_bytes
        }
    }

    /// The header of the sync marker `payload`, chained from `prev_crc`.
    pub fn for_marker(prev_crc: u32, payload: &[u8; MARKER_PAYLOAD_BYTES]) -> Self {
        Self {
            len_bytes: MARKER_LEN_FIELD,
            len_check: length_check(MARKER_LEN_FIELD),
            crc: chained_crc(prev_crc, MARKER_LEN_FIELD, payload),
        }
    }

    pub fn validate_length(&self, markers: bool) -> Result<(), Corruption> {
        if self.len_check != length_check(self.len_bytes) {
            return Err(Corruption::LengthCheckMismatch);
        }
        if markers && self.is_marker() {
            return Ok(());
        }
        if self.len_bytes > PAYLOAD_BYTES_MAX {
            return Err(Corruption::LengthTooLarge {
                len_bytes: self.len_bytes,
            });
        }
        Ok(())
    }

    /// Whether `payload` is the record this header describes, at this chain position.
    pub fn validate_payload(&self, prev_crc: u32, payload: &[u8]) -> Result<(), Corruption> {
        if chained_crc(prev_crc, self.len_bytes, payload) != self.crc {
            return Err(Corruption::ChecksumMismatch);
        }
        Ok(())
    }
}

/// The length field of a sync marker: the high bit (never set in a record's length, which
/// is at most [`PAYLOAD_BYTES_MAX`]) and the marker's payload size.
pub(crate) const MARKER_LEN_FIELD: u32 = 0x8000_0000 | MARKER_PAYLOAD_BYTES as u32;

/// A sync marker's payload: magic, its own offset, the segment's sequence, a checksum.
pub(crate) const MARKER_PAYLOAD_BYTES: usize = 28;

const MARKER_MAGIC: [u8; 8] = *b"KVS-SYNC";

/// The payload of the sync marker written at `offset` of segment `sequence`.
pub(crate) fn marker_payload(offset: u64, sequence: u64) -> [u8; MARKER_PAYLOAD_BYTES] {
    let mut bytes = [0u8; MARKER_PAYLOAD_BYTES];
    bytes[0..8].copy_from_slice(&MARKER_MAGIC);
    bytes[8..16].copy_from_slice(&offset.to_le_bytes());
    bytes[16..24].copy_from_slice(&sequence.to_le_bytes());
    let check = crc32c::crc32c(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&check.to_le_bytes());
    bytes
}

/// Whether `payload` is the sync marker that belongs at `offset` of segment `sequence`:
/// checked on its own, without the chain, so that it can be recognised past a damaged
/// record.
pub(crate) fn is_marker_at(payload: &[u8], offset: u64, sequence: u64) -> bool {
    payload.len() == MARKER_PAYLOAD_BYTES && payload == marker_payload(offset, sequence)
}

/// Whether a valid sync marker of segment `sequence` stands anywhere in `bytes`, which
/// start at `base` in the file: proof that everything before it was synced.
pub(crate) fn marker_within(bytes: &[u8], base: u64, sequence: u64) -> bool {
    let mut field = [0u8; 8];
    field[0..4].copy_from_slice(&MARKER_LEN_FIELD.to_le_bytes());
    field[4..8].copy_from_slice(&length_check(MARKER_LEN_FIELD).to_le_bytes());
    let need = super::record::RECORD_HEADER_BYTES + MARKER_PAYLOAD_BYTES;
    if bytes.len() < need {
        return false;
    }
    (0..=bytes.len() - need).any(|i| {
        bytes[i..i + 8] == field
            && is_marker_at(
                &bytes[i + super::record::RECORD_HEADER_BYTES..i + need],
                base + i as u64,
                sequence,
            )
    })
}
