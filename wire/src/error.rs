//! The crate's error type.

use crate::handshake::HandshakeRefusal;

/// Everything that can go wrong while framing, encoding, decoding or handshaking.
///
/// Encoder and decoder errors carry the encoding library's message as text, so that no type
/// of the encoding library leaks into the public API and it can be replaced in one place.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the underlying stream failed, or the frame codec rejected a frame
    /// (for example "frame size too big", with kind `InvalidData`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),

    /// The bytes are not a valid encoding of the expected message type.
    #[error("cannot decode message: {0}")]
    Decode(String),

    /// The bytes hold a valid message followed by bytes that belong to no message.
    #[error("cannot decode message: {trailing} trailing bytes after a {used}-byte message")]
    TrailingBytes {
        /// Bytes the message used.
        used: usize,
        /// Bytes left over after it.
        trailing: usize,
    },

    /// The input to [`decode`](crate::decode) is longer than any frame can be.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the input, in bytes.
        size: usize,
        /// The largest accepted size, in bytes.
        max: usize,
    },

    /// A requested maximum frame size is outside the supported range.
    #[error("invalid maximum frame size {requested} bytes: must be between {min} and {max} bytes")]
    InvalidFrameLimit {
        /// The requested maximum, in bytes.
        requested: usize,
        /// The smallest allowed maximum, in bytes.
        min: usize,
        /// The largest allowed maximum, in bytes.
        max: usize,
    },

    /// A [`Hello`](crate::Hello) cannot be encoded, for example because its cluster id is too long.
    #[error("invalid hello: {reason}")]
    InvalidHello {
        /// What is wrong with it.
        reason: String,
    },

    /// This side refused the peer's handshake; the refusal was also sent to the peer.
    #[error("refused the peer's handshake: {0}")]
    Refused(HandshakeRefusal),

    /// The peer refused this side's handshake, for the given reason.
    #[error("the peer refused our handshake: {0}")]
    PeerRefused(HandshakeRefusal),

    /// The peer's handshake reply is not a valid reply (for example, the peer is not a kvs node).
    #[error("invalid handshake reply: {0}")]
    BadReply(HandshakeRefusal),

    /// The handshake did not complete in time.
    #[error("handshake timed out after {timeout_ms} ms")]
    HandshakeTimeout {
        /// The timeout that expired, in milliseconds.
        timeout_ms: u64,
    },

    /// The peer closed the connection before the handshake completed.
    #[error("connection closed during the handshake")]
    ClosedDuringHandshake,

    /// A handshake helper was called on a connection that has already exchanged frames.
    #[error("the handshake must be the first exchange on a connection, but frames are buffered")]
    HandshakeNotFirst,
}
