//! Replica-to-replica messages.
//!
//! Each replica sends on the connections it dials and only receives on the connections
//! it accepts, so every direction of every link is its own TCP connection: cutting one
//! direction (a one-way partition) is cutting one connection.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How many bytes of a snapshot travel in one [`PeerMessage::SnapshotChunk`].
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A frame between replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A consensus message, for the receiver's `paxos_core::Replica`.
    Paxos(paxos_core::Message),
    /// Part of a state-machine snapshot sent to a replica that lags behind the sender's
    /// compacted log. Chunks of one snapshot arrive in order; `offset` is where `data` goes.
    SnapshotChunk {
        /// The snapshot covers every slot below this one.
        slot: u64,
        /// Size of the whole snapshot file.
        total_bytes: u64,
        /// Byte offset of `data` in the snapshot.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
}

impl PeerMessage {
    /// Whether the message carries a batch of no command: never proposed, and refused by
    /// the log's record format, so a receiver drops the connection instead of acting on it.
    pub fn carries_empty_batch(&self) -> bool {
        use paxos_core::{Message, Value};
        let empty = |value: &Value| matches!(value, Value::Commands(c) if c.is_empty());
        match self {
            PeerMessage::Paxos(Message::Accept { entries, .. }) => {
                entries.iter().any(|(_, value)| empty(value))
            }
            PeerMessage::Paxos(Message::Promise { accepted, .. }) => {
                accepted.iter().any(|e| empty(&e.value))
            }
            PeerMessage::Paxos(Message::CatchUp { entries, .. }) => {
                entries.iter().any(|e| empty(&e.value))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::{Ballot, Message, Value};

    #[test]
    fn an_empty_batch_is_noticed() {
        let accept = |value: Value| {
            PeerMessage::Paxos(Message::Accept {
                ballot: Ballot { round: 1, node: 1 },
                entries: vec![(1, Value::Noop), (2, value)],
                commit: 0,
            })
        };
        assert!(accept(Value::Commands(vec![])).carries_empty_batch());
        assert!(!accept(Value::Commands(vec![Bytes::from("c")])).carries_empty_batch());
        assert!(!accept(Value::Noop).carries_empty_batch());
    }

    #[test]
    fn peer_messages_roundtrip() {
        let msgs = vec![
            PeerMessage::Paxos(Message::Accept {
                ballot: Ballot::new(3, 2),
                entries: vec![
                    (7, Value::Noop),
                    (8, Value::Commands(vec![Bytes::from_static(b"put k v")])),
                ],
                commit: 7,
            }),
            PeerMessage::SnapshotChunk {
                slot: 100,
                total_bytes: 3,
                offset: 0,
                data: Bytes::from_static(b"abc"),
            },
        ];
        for m in msgs {
            let bytes = crate::encode(&m).unwrap_or_default();
            let back: Result<PeerMessage, _> = crate::decode(&bytes);
            assert_eq!(back.ok(), Some(m));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(len))
                .collect();
            let _ = crate::decode::<PeerMessage>(&junk);
        }
        assert!(crate::decode::<PeerMessage>(&[0xff; 9]).is_err());
    }
}
