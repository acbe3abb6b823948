//! The commands the store replicates: what goes inside a Paxos value.
//!
//! A command crosses the network inside `paxos_core::Value`s, so its encoding is defined
//! here with every other byte on the wire. The consensus core never looks inside.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::Session;
use crate::kv::Txn;
use crate::WireError;

/// One state-machine command, agreed on through Paxos and applied in slot order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Deduplicates retried writes: a command whose session was already applied is not
    /// applied again and answers with the first result.
    ///
    /// A command without a session (a write sent without one, or
    /// [`WriteOp::RegisterSession`]) has `client_id` [`crate::NO_CLIENT_ID`]; its `seq` is
    /// then a random tag the proposing replica uses to find the waiting client, and the
    /// first registration ever applied also takes it as the salt of the client ids it
    /// hands out.
    pub session: Session,
    /// The change.
    pub op: WriteOp,
}

/// A change to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Set `key` to `new` if its current value is `expected` (`None`: the key is absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold.
        expected: Option<Bytes>,
        /// The new value.
        new: Bytes,
    },
    /// Register a new client session (see [`crate::Op::RegisterSession`]). Changes no key.
    RegisterSession,
    /// Remove every key in `[from, to)` (`to`: `None`, to the last key).
    DeleteRange {
        /// The first key removed (inclusive).
        from: Bytes,
        /// The end of the range (exclusive).
        to: Option<Bytes>,
    },
    /// A multi-key transaction (see [`crate::Txn`]).
    Txn(Txn),
}

impl Command {
    /// True for a command without a session: its `session.seq` is only a tag.
    pub fn is_sessionless(&self) -> bool {
        self.session.client_id == crate::NO_CLIENT_ID
    }

    /// Encodes the command for proposing.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        crate::encode(self)
    }

    /// Decodes a command from a chosen value's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        crate::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_roundtrip_and_garbage_fails() {
        let c = Command {
            session: Session {
                client_id: 9,
                seq: 4,
            },
            op: WriteOp::Cas {
                key: Bytes::from_static(b"k"),
                expected: None,
                new: Bytes::from_static(b"v"),
            },
        };
        let bytes = c.encode().unwrap_or_default();
        assert_eq!(Command::decode(&bytes).ok(), Some(c));
        assert!(Command::decode(b"\xff\xff\xff").is_err());
        assert!(Command::decode(&[]).is_err());
    }
}
