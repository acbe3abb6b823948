//! Standard base64 (RFC 4648, with padding), to show non-UTF-8 values in JSON output and
//! to print retry tokens.

use ::base64::engine::general_purpose::STANDARD;
use ::base64::Engine;

/// Encodes `bytes` as standard base64 with `=` padding.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 with `=` padding; `None` if `text` is not that (padding
/// missing or misplaced, a character outside the alphabet, or bits left over that an
/// encoder would have set to zero).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn decoding_inverts_encoding_and_refuses_garbage() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes)), Some(bytes));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "é"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn matches_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(encode(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
