//! Pure decoders of the write-ahead log's on-disk bytes, for fuzzing and offline tools.
//!
//! This is a small public API over the same header and record checks that recovery runs
//! on files ([`super::reader`]); it reads from a byte slice, never touches a disk, and never
//! panics on any input. Recovery itself does not go through it.

use super::error::Corruption;
use super::record::{is_marker_at, RecordHeader, RECORD_HEADER_BYTES};
use super::segment::{SegmentHeader, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_BYTES};

/// Length of a segment header, in bytes.
pub const SEGMENT_HEADER_LEN: usize = SEGMENT_HEADER_BYTES;

/// Length of a record header, in bytes.
pub const RECORD_HEADER_LEN: usize = RECORD_HEADER_BYTES;

/// The fields of a valid segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeaderFields {
    /// The segment's sequence number.
    pub sequence: u64,
    /// The checksum the first record's chain starts from.
    pub chain_seed: u32,
    /// Whether the segment supersedes the ones before it.
    pub supersedes: bool,
    /// The format version (1: no sync markers, 2: sync markers).
    pub version: u16,
}

/// A segment read from bytes: its header, the payloads of its valid records (sync markers
/// checked and skipped), and where and why reading stopped, if before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// The segment's header.
    pub header: SegmentHeaderFields,
    /// The payloads of the valid records, in order.
    pub payloads: Vec<Vec<u8>>,
    /// Offset just past the last valid record.
    pub valid_end: usize,
    /// Why the record at `valid_end` was rejected; `None` if the bytes end there.
    pub defect: Option<Corruption>,
}

/// Parses and checks a segment header from the first [`SEGMENT_HEADER_LEN`] bytes.
pub fn segment_header(bytes: &[u8]) -> Result<SegmentHeaderFields, Corruption> {
    let Some(head) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(Corruption::TruncatedSegmentHeader {
            len_bytes: bytes.len() as u64,
        });
    };
    let mut fixed = [0u8; SEGMENT_HEADER_BYTES];
    fixed.copy_from_slice(head);
    let header = SegmentHeader::decode(&fixed)?;
    Ok(SegmentHeaderFields {
        sequence: header.sequence,
        chain_seed: header.chain_seed,
        supersedes: header.supersedes,
        version: header.version,
    })
}

/// Reads a whole segment from `bytes`: the header, then records until the first defect or
/// the end. Allocates no more than the input's length for payloads.
pub fn segment(bytes: &[u8]) -> Result<DecodedSegment, Corruption> {
    let fields = segment_header(bytes)?;
    let markers = fields.version >= SEGMENT_FORMAT_VERSION;
    let mut payloads = Vec::new();
    let mut chain = fields.chain_seed;
    let mut offset = SEGMENT_HEADER_BYTES;
    // Every record takes at least a header, so this loop runs at most len / 12 times.
    while offset < bytes.len() {
        match record_at(bytes, offset, chain, markers, fields.sequence) {
            Ok((header, payload)) => {
                if !header.is_marker() {
                    payloads.push(payload.to_vec());
                }
                chain = header.crc;
                offset += RECORD_HEADER_BYTES + payload.len();
            }
            Err(reason) => {
                return Ok(DecodedSegment {
                    header: fields,
                    payloads,
                    valid_end: offset,
                    defect: Some(reason),
                })
            }
        }
    }
    Ok(DecodedSegment {
        header: fields,
        payloads,
        valid_end: offset,
        defect: None,
    })
}

/// The record at `offset`, checked against the chain and, for a marker, its position.
fn record_at(
    bytes: &[u8],
    offset: usize,
    prev_crc: u32,
    markers: bool,
    sequence: u64,
) -> Result<(RecordHeader, &[u8]), Corruption> {
    let rest = bytes.get(offset..).unwrap_or_default();
    let Some(head) = rest.get(..RECORD_HEADER_BYTES) else {
        return Err(Corruption::TruncatedRecordHeader);
    };
    let mut fixed = [0u8; RECORD_HEADER_BYTES];
    fixed.copy_from_slice(head);
    let header = RecordHeader::decode(&fixed);
    header.validate_length(markers)?;
    let available = rest.len() - RECORD_HEADER_BYTES;
    let len = header.payload_len();
    let Some(payload) = rest
        .get(RECORD_HEADER_BYTES..)
        .and_then(|r| r.get(..len as usize))
    else {
        return Err(Corruption::TruncatedPayload {
            len_bytes: len,
            available_bytes: available as u64,
        });
    };
    header.validate_payload(prev_crc, payload)?;
    if header.is_marker() && !is_marker_at(payload, offset as u64, sequence) {
        return Err(Corruption::BadSyncMarker);
    }
    Ok((header, payload))
}

/// Encodes a segment of format version 2 holding `payloads` (no sync markers), so that
/// [`segment`] reads the payloads back: for seed inputs and round-trip checks.
pub fn encode_segment(sequence: u64, chain_seed: u32, payloads: &[&[u8]]) -> Option<Vec<u8>> {
    let header = SegmentHeader {
        sequence,
        chain_seed,
        supersedes: false,
        version: SEGMENT_FORMAT_VERSION,
    };
    let mut out = header.encode().to_vec();
    let mut chain = chain_seed;
    for payload in payloads {
        let len = u32::try_from(payload.len()).ok()?;
        if len > super::PAYLOAD_BYTES_MAX {
            return None;
        }
        let record = RecordHeader::for_payload(chain, len, payload);
        out.extend_from_slice(&record.encode());
        out.extend_from_slice(payload);
        chain = record.crc;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_segment_reads_back() {
        let bytes = encode_segment(3, 7, &[b"one", b"", b"three"]).unwrap();
        let got = segment(&bytes).unwrap();
        assert_eq!(got.header.sequence, 3);
        assert_eq!(
            got.payloads,
            vec![b"one".to_vec(), vec![], b"three".to_vec()]
        );
        assert_eq!((got.valid_end, got.defect), (bytes.len(), None));
    }

    #[test]
    fn short_or_damaged_bytes_are_errors() {
        assert!(segment(&[]).is_err());
        let mut bytes = encode_segment(1, 0, &[b"payload"]).unwrap();
        bytes.truncate(bytes.len() - 1);
        let got = segment(&bytes).unwrap();
        assert!(got.payloads.is_empty());
        assert!(matches!(
            got.defect,
            Some(Corruption::TruncatedPayload { .. })
        ));
    }
}
