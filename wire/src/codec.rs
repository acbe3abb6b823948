//! Framing and message encoding.
//!
//! On a socket, every message after the handshake is one frame: a 4-byte big-endian
//! length, then that many bytes of payload. The payload is one message encoded by
//! [`encode`] and read back by [`decode`]. The encoding library (bincode, unmaintained) is
//! called from this file only, so it can be replaced in one place.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::WireError;

/// Default largest frame payload accepted on read and on write, in bytes (4 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// Smallest value [`frame_codec_with_max`] accepts, in bytes (1 KiB).
pub const FRAME_BYTES_MAX_MIN: usize = 1024;

/// Largest value [`frame_codec_with_max`] accepts, and the longest input [`decode`]
/// accepts, in bytes (16 MiB).
pub const FRAME_BYTES_MAX_CEILING: usize = 16 * 1024 * 1024;

/// Length of the frame header, in bytes: a big-endian `u32` payload length.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Upper bound on the bytes the decoder claims (memory it may reserve) per input byte.
///
/// The decoder counts the in-memory size of what it decodes: a `u64` counts 8 bytes but may
/// be encoded in 1, which is the largest ratio among the types this crate sends.
const DECODE_CLAIM_PER_INPUT_BYTE: usize = 8;

/// A frame codec with the default maximum frame size, [`FRAME_BYTES_MAX_DEFAULT`].
///
/// Frames have a 4-byte big-endian length prefix that counts the payload only. A frame
/// whose announced length exceeds the maximum is rejected on read before any of its
/// payload is buffered (the stream yields an `io::Error` of kind `InvalidData`), and a
/// payload above the maximum is rejected on write.
pub fn frame_codec() -> LengthDelimitedCodec {
    build_codec(FRAME_BYTES_MAX_DEFAULT)
}

/// A frame codec like [`frame_codec`] with a maximum frame payload of `frame_bytes_max`
/// bytes, which must lie in [`FRAME_BYTES_MAX_MIN`]`..=`[`FRAME_BYTES_MAX_CEILING`].
pub fn frame_codec_with_max(frame_bytes_max: usize) -> Result<LengthDelimitedCodec, WireError> {
    if !(FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_CEILING).contains(&frame_bytes_max) {
        return Err(WireError::InvalidFrameLimit {
            requested: frame_bytes_max,
            min: FRAME_BYTES_MAX_MIN,
            max: FRAME_BYTES_MAX_CEILING,
        });
    }
    Ok(build_codec(frame_bytes_max))
}

fn build_codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    debug_assert!((FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_CEILING).contains(&frame_bytes_max));
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(frame_bytes_max)
        .new_codec()
}

/// Encodes one message as a frame payload.
///
/// Fails if the message cannot be encoded or its encoding is longer than
/// [`FRAME_BYTES_MAX_CEILING`] (no frame could carry it).
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, WireError> {
    let buf = bincode::serde::encode_to_vec(msg, bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if buf.len() > FRAME_BYTES_MAX_CEILING {
        return Err(WireError::TooLarge {
            size: buf.len(),
            max: FRAME_BYTES_MAX_CEILING,
        });
    }
    Ok(Bytes::from(buf))
}

/// Encodes one message as a frame payload like [`encode`], into `buf`'s spare capacity.
///
/// `buf` is emptied first and is empty again on return; the payload is split off it, so
/// once every copy of an earlier payload is dropped, `buf` writes the next one into the same
/// allocation. For a sender that encodes many messages (and shares each payload between
/// several destinations, as [`Bytes`] clones) this saves an allocation and the regrowth of a
/// fresh buffer per message.
pub fn encode_into<T: Serialize>(msg: &T, buf: &mut BytesMut) -> Result<Bytes, WireError> {
    buf.clear();
    bincode::serde::encode_into_std_write(msg, &mut buf.writer(), bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if buf.len() > FRAME_BYTES_MAX_CEILING {
        let size = buf.len();
        buf.clear();
        return Err(WireError::TooLarge {
            size,
            max: FRAME_BYTES_MAX_CEILING,
        });
    }
    Ok(buf.split().freeze())
}

/// Decodes one message from a frame payload: a pure function that never panics.
///
/// The input must hold exactly one message: trailing bytes are an error. Memory reserved
/// while decoding is capped by a limit that grows with the input's length (64 KiB for
/// inputs up to 8 KiB, at most 64 times the input's length above that), so a hostile
/// length field inside a small frame cannot make the decoder reserve a large buffer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    // Tiers grow by 8x, so the limit is at most 64x (and at least 8x) the input length.
    match bytes.len() {
        n if n <= 8 * KIB => decode_limited::<T, { 64 * KIB }>(bytes),
        n if n <= 64 * KIB => decode_limited::<T, { 512 * KIB }>(bytes),
        n if n <= 512 * KIB => decode_limited::<T, { 4 * MIB }>(bytes),
        n if n <= 4 * MIB => decode_limited::<T, { 32 * MIB }>(bytes),
        n if n <= FRAME_BYTES_MAX_CEILING => {
            decode_limited::<T, { DECODE_CLAIM_PER_INPUT_BYTE * FRAME_BYTES_MAX_CEILING }>(bytes)
        }
        size => Err(WireError::TooLarge {
            size,
            max: FRAME_BYTES_MAX_CEILING,
        }),
    }
}

/// Decodes with the decoder's memory claims capped at `LIMIT` bytes, which must be at least
/// `DECODE_CLAIM_PER_INPUT_BYTE` times the input length so that no valid input is refused.
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, WireError> {
    debug_assert!(LIMIT >= bytes.len().saturating_mul(DECODE_CLAIM_PER_INPUT_BYTE));
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config)
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes {
            used,
            trailing: bytes.len() - used,
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_limits_are_checked() {
        assert!(frame_codec_with_max(FRAME_BYTES_MAX_MIN).is_ok());
        assert!(frame_codec_with_max(FRAME_BYTES_MAX_CEILING).is_ok());
        assert!(matches!(
            frame_codec_with_max(FRAME_BYTES_MAX_CEILING + 1),
            Err(WireError::InvalidFrameLimit { .. })
        ));
        assert!(matches!(
            frame_codec_with_max(0),
            Err(WireError::InvalidFrameLimit { .. })
        ));
        assert_eq!(frame_codec().max_frame_length(), FRAME_BYTES_MAX_DEFAULT);
    }

    #[test]
    fn hostile_length_inside_a_small_input_is_refused() {
        // A byte string whose varint length says u64::MAX-ish, followed by nothing.
        let hostile = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode::<Vec<u8>>(&hostile),
            Err(WireError::Decode(_))
        ));
        // A length just under the tier's limit is still refused: the data is not there.
        let mut near = vec![0xfc];
        near.extend_from_slice(&(60_000u32).to_le_bytes());
        assert!(decode::<bytes::Bytes>(&near).is_err());
    }

    #[test]
    fn encode_into_matches_encode_and_reuses_the_buffer() {
        let mut buf = BytesMut::new();
        let first = encode_into(&vec![7u64; 100], &mut buf).unwrap();
        assert_eq!(first, encode(&vec![7u64; 100]).unwrap());
        assert!(buf.is_empty());
        drop(first);
        // Payloads dropped before the next one is encoded: the same allocation serves.
        let mut addresses = std::collections::BTreeSet::new();
        for i in 0..100u64 {
            let payload = encode_into(&vec![i; 100], &mut buf).unwrap();
            assert_eq!(decode::<Vec<u64>>(&payload).unwrap(), vec![i; 100]);
            addresses.insert(payload.as_ptr() as usize);
        }
        assert!(addresses.len() <= 2, "{} allocations", addresses.len());
        assert!(matches!(
            encode_into(&vec![0u8; FRAME_BYTES_MAX_CEILING + 1], &mut buf),
            Err(WireError::TooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn worst_case_claim_ratio_still_decodes() {
        // Many zero u64s: one encoded byte each, eight claimed bytes each.
        for n in [1usize, 1000, 8 * 1024, 70_000] {
            let v = vec![0u64; n];
            let bytes = encode(&v).unwrap();
            assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), v, "n = {n}");
        }
    }
}
