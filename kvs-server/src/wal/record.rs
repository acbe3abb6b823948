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
    pub fn validate_length(&self) -> Result<(), Corruption> {
        if self.len_check != length_check(self.len_bytes) {
            return Err(Corruption::LengthCheckMismatch);
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
