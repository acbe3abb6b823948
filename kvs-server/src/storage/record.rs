//! The encoding of one log record (a [`PersistEntry`]) inside a WAL frame.

use bytes::Bytes;
use paxos_core::PersistEntry;

/// Why a record cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a record.
    #[error("{0}")]
    Malformed(String),
}

/// The bytes of `entry` as stored in the log.
pub(super) fn encode(entry: &PersistEntry) -> Result<Bytes, RecordError> {
    wire::encode(entry).map_err(|e| RecordError::Malformed(e.to_string()))
}

/// The entry stored in `raw`.
pub(super) fn decode(raw: &[u8]) -> Result<PersistEntry, RecordError> {
    wire::decode(raw).map_err(|e| RecordError::Malformed(e.to_string()))
}
