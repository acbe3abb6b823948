//! Encoding the consensus messages to peers: each message once, however many peers it goes
//! to, into a buffer that is reused from one message to the next.
//!
//! The core hands a broadcast (an Accept to every follower, a heartbeat) to the host as one
//! `Output::Send` per peer, each with a clone of the same message: the clones share their
//! commands' bytes. [`PeerFrames`] remembers the last message it encoded and, when the next
//! one is a clone of it (the same fields, the same command buffers), hands out the same
//! frame again, a [`Bytes`] shared by every peer's link.

use bytes::{Bytes, BytesMut};
use paxos_core::{Message, Value};
use wire::{PeerMessage, WireError};

/// Spare room the encoding buffer keeps, so that small messages are encoded one after the
/// other into one allocation instead of one allocation each.
const ENCODE_BUFFER_BYTES: usize = 64 * 1024;

/// The encoder of the messages a replica sends to its peers.
#[derive(Default)]
pub struct PeerFrames {
    buf: BytesMut,
    /// The last message encoded, and its frame.
    last: Option<(Message, Bytes)>,
}

impl PeerFrames {
    /// The frame of `message`: the last one again if `message` is a clone of the last
    /// message, else a new encoding.
    pub fn frame(&mut self, message: Message) -> Result<Bytes, WireError> {
        if let Some((last, frame)) = &self.last {
            if same_message(last, &message) {
                return Ok(frame.clone());
            }
        }
        // Dropped first, so that the buffer can be reclaimed once the links have written
        // the frames that share it.
        self.last = None;
        self.buf.reserve(ENCODE_BUFFER_BYTES);
        let msg = PeerMessage::Paxos(message);
        let frame = wire::encode_into(&msg, &mut self.buf)?;
        if let PeerMessage::Paxos(message) = msg {
            self.last = Some((message, frame.clone()));
        }
        Ok(frame)
    }
}

/// Whether `b` is a clone of `a`: equal, and carrying the very same command buffers. Cheap:
/// commands are compared by address and length, never byte by byte, so two equal messages
/// built apart count as different (they are then simply encoded twice). Messages that carry
/// values and go to one peer only (promises, catch-up replies) always count as different.
fn same_message(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (
            Message::Accept {
                ballot,
                entries,
                commit,
            },
            Message::Accept {
                ballot: ballot_b,
                entries: entries_b,
                commit: commit_b,
            },
        ) => {
            ballot == ballot_b
                && commit == commit_b
                && entries.len() == entries_b.len()
                && entries
                    .iter()
                    .zip(entries_b)
                    .all(|((s, v), (s_b, v_b))| s == s_b && same_value(v, v_b))
        }
        (Message::Promise { .. } | Message::CatchUp { .. }, _) => false,
        _ => a == b,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Noop, Value::Noop) => true,
        (Value::Commands(a), Value::Commands(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.len() == y.len() && x.as_ptr() == y.as_ptr())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Ballot;

    fn accept(commands: Vec<Bytes>) -> Message {
        Message::Accept {
            ballot: Ballot::new(2, 1),
            entries: vec![(7, Value::Noop), (8, Value::Commands(commands))],
            commit: 7,
        }
    }

    #[test]
    fn a_broadcast_is_encoded_once_and_shared() {
        let mut frames = PeerFrames::default();
        let message = accept(vec![Bytes::from(vec![1u8; 1000])]);
        let first = frames.frame(message.clone()).unwrap_or_default();
        let second = frames.frame(message.clone()).unwrap_or_default();
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "one encoding for both peers"
        );
        let decoded: PeerMessage = wire::decode(&second).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, PeerMessage::Paxos(message));
    }

    #[test]
    fn equal_messages_built_apart_are_encoded_again_but_alike() {
        let mut frames = PeerFrames::default();
        let a = frames
            .frame(accept(vec![Bytes::from(vec![1u8; 10])]))
            .unwrap_or_default();
        let b = frames
            .frame(accept(vec![Bytes::from(vec![1u8; 10])]))
            .unwrap_or_default();
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert_eq!(a, b);
        let c = frames
            .frame(accept(vec![Bytes::from(vec![2u8; 10])]))
            .unwrap_or_default();
        assert_ne!(a, c, "another command, another frame");
    }

    #[test]
    fn small_messages_are_compared_by_value() {
        let mut frames = PeerFrames::default();
        let heartbeat = |commit| Message::Commit {
            ballot: Ballot::new(1, 1),
            commit,
        };
        let a = frames.frame(heartbeat(3)).unwrap_or_default();
        let b = frames.frame(heartbeat(3)).unwrap_or_default();
        assert_eq!(a.as_ptr(), b.as_ptr());
        let c = frames.frame(heartbeat(4)).unwrap_or_default();
        assert_ne!(a, c);
        assert_eq!(
            wire::decode::<PeerMessage>(&c).ok(),
            Some(PeerMessage::Paxos(heartbeat(4)))
        );
    }
}
