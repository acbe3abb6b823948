//! Retrying a write whose outcome is unknown: the same write, with the same session and
//! sequence number, so that the cluster applies it at most once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wire::{Op, Session};

use crate::client::CasOutcome;
use crate::Error;

/// Version of [`RetryHandle::to_bytes`]'s format, its first byte.
const FORMAT_VERSION: u8 = 1;

/// Everything needed to send a write again exactly as it was sent: its session (client id
/// and sequence number) and its operation. Carried by [`Error::OutcomeUnknown`]; give it
/// to [`Client::retry`](crate::Client::retry).
///
/// A retry through a handle is answered with the write's first result if an earlier
/// attempt was applied, applies the write if none was, and is refused with
/// [`Error::SessionExpired`] if the cluster no longer remembers the session's results (so
/// can no longer tell): in no case is the write applied twice. The handle stays valid
/// across processes ([`RetryHandle::to_bytes`], [`RetryHandle::from_bytes`]) and any
/// client of the same cluster can use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryHandle {
    session: Session,
    op: Op,
}

impl RetryHandle {
    /// The handle of write `session` doing `op`. Normally taken from
    /// [`Error::OutcomeUnknown`]; this is for tools that recorded a write's session
    /// themselves. Refuses an operation that is not a write and the reserved client id.
    pub fn new(session: Session, op: Op) -> Result<RetryHandle, Error> {
        if !op.is_write() {
            return Err(Error::InvalidRetry {
                reason: "only a put, delete, compare-and-swap, range delete or transaction \
                         can be retried"
                    .to_owned(),
            });
        }
        if session.client_id == wire::NO_CLIENT_ID || session.seq == 0 {
            return Err(Error::InvalidRetry {
                reason: format!(
                    "session {}/{} is not a registered session's write",
                    session.client_id, session.seq
                ),
            });
        }
        wire::validate(&op).map_err(Error::Rejected)?;
        Ok(RetryHandle { session, op })
    }

    /// The handle of a write the client itself sent (already checked).
    pub(crate) fn unchecked(session: Session, op: Op) -> RetryHandle {
        debug_assert!(op.is_write());
        RetryHandle { session, op }
    }

    /// The write's session: the client id and sequence number every attempt carries.
    pub fn session(&self) -> Session {
        self.session
    }

    /// The write.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// The handle as bytes (a version byte, then the wire encoding), for keeping it beyond
    /// this process; [`RetryHandle::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        // Encoding a session and a checked operation into memory cannot fail; an empty
        // body would be refused by `from_bytes`.
        if let Ok(body) = wire::encode(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Reads a handle written by [`RetryHandle::to_bytes`], checking it.
    pub fn from_bytes(bytes: &[u8]) -> Result<RetryHandle, Error> {
        let invalid = |reason: String| Error::InvalidRetry { reason };
        let Some((&version, body)) = bytes.split_first() else {
            return Err(invalid("empty retry handle".to_owned()));
        };
        if version != FORMAT_VERSION {
            return Err(invalid(format!(
                "retry handle format {version} is not supported (this client reads {FORMAT_VERSION})"
            )));
        }
        let handle: RetryHandle =
            wire::decode(body).map_err(|e| invalid(format!("not a retry handle: {e}")))?;
        RetryHandle::new(handle.session, handle.op)
    }

    /// The key the write is about.
    pub fn key(&self) -> Option<&Bytes> {
        self.op.key()
    }
}

/// What a retried write did: the reply to its kind of operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A put: the value is written.
    Written,
    /// A delete: the key is absent now; `existed` says whether it was there before.
    Deleted {
        /// Whether the key existed when the delete was applied.
        existed: bool,
    },
    /// A compare-and-swap.
    Cas(CasOutcome),
    /// A range delete: how many keys it removed when it was applied.
    DeletedRange {
        /// How many keys it removed.
        count: u64,
    },
    /// A transaction: whether its compares held.
    Txn {
        /// True if the success operations were applied.
        succeeded: bool,
    },
    /// An auth change: it is applied.
    AuthChanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_roundtrips_through_bytes_and_garbage_is_refused() {
        let session = Session {
            client_id: 99,
            seq: 4,
        };
        let op = Op::Delete {
            key: Bytes::from_static(b"k"),
        };
        let handle = RetryHandle::new(session, op.clone()).unwrap_or_else(|e| panic!("{e}"));
        let back = RetryHandle::from_bytes(&handle.to_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, handle);
        assert_eq!((back.session(), back.op()), (session, &op));
        for bad in [&b""[..], b"\x02abc", b"\x01\xff\xff\xff"] {
            assert!(matches!(
                RetryHandle::from_bytes(bad),
                Err(Error::InvalidRetry { .. })
            ));
        }
        let read = Op::Get {
            key: Bytes::from_static(b"k"),
            consistency: wire::ReadConsistency::Linearizable,
        };
        assert!(RetryHandle::new(session, read).is_err());
        let no_session = Session {
            client_id: wire::NO_CLIENT_ID,
            seq: 1,
        };
        assert!(RetryHandle::new(no_session, op).is_err());
    }
}
