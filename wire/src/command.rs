//! The commands the store replicates: what goes inside a Paxos value.
//!
//! A command crosses the network inside `paxos_core::Value`s, so its encoding is defined
//! here with every other byte on the wire. The consensus core never looks inside.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::AuthChange;
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
    /// Who proposed it, for the permission check every replica makes when it applies the
    /// command. `None` in a command written before auth existed, and in one proposed while
    /// auth was disabled (it is then encoded in the layout before origins, see
    /// [`Command::encode`]); such a command is refused if auth is enabled by the time it
    /// is applied.
    pub origin: Option<Origin>,
}

/// Who proposed a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The identity of the client request the command came from (its certificate's
    /// common name), if it had one.
    pub identity: Option<String>,
}

/// A command as it was encoded before it carried its [`Origin`].
#[derive(Deserialize)]
struct CommandV1 {
    session: Session,
    op: WriteOp,
}

/// [`CommandV1`] for encoding, borrowed.
#[derive(Serialize)]
struct CommandV1Ref<'a> {
    session: &'a Session,
    op: &'a WriteOp,
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
    /// A change to the users, roles and grants, or turning auth on or off (see
    /// [`crate::auth`]). Changes no key.
    Auth(AuthChange),
}

impl Command {
    /// A command proposed on behalf of a client request whose identity is `identity`.
    pub fn new(session: Session, op: WriteOp, identity: Option<String>) -> Self {
        Command {
            session,
            op,
            origin: Some(Origin { identity }),
        }
    }

    /// The identity of the request the command came from: `None` when it had none, or
    /// the command predates origins.
    pub fn identity(&self) -> Option<&str> {
        self.origin.as_ref()?.identity.as_deref()
    }

    /// True for a command without a session: its `session.seq` is only a tag.
    pub fn is_sessionless(&self) -> bool {
        self.session.client_id == crate::NO_CLIENT_ID
    }

    /// Encodes the command for proposing: with its origin, or, without one, in the layout
    /// before origins, byte for byte what an earlier version wrote (so a cluster that does
    /// not use auth replicates the same bytes as before, which replicas of that version can
    /// still apply).
    pub fn encode(&self) -> Result<Bytes, WireError> {
        match self.origin {
            Some(_) => crate::encode(self),
            None => crate::encode(&CommandV1Ref {
                session: &self.session,
                op: &self.op,
            }),
        }
    }

    /// Decodes a command from a chosen value's bytes: of this layout (session, op,
    /// origin), or of the layout before origins (session, op), which a log or snapshot
    /// written by an earlier version holds; such a command has origin `None`.
    ///
    /// The two cannot be confused: the fields they share are encoded alike and decoding
    /// rejects trailing bytes, so bytes of the old layout lack the origin for the new one,
    /// and bytes of the new layout have the origin left over for the old one.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        match crate::decode::<Command>(bytes) {
            Ok(command) => Ok(command),
            Err(current) => match crate::decode::<CommandV1>(bytes) {
                Ok(old) => Ok(Command {
                    session: old.session,
                    op: old.op,
                    origin: None,
                }),
                Err(_) => Err(current),
            },
        }
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
            origin: Some(Origin {
                identity: Some("alice".into()),
            }),
        };
        let bytes = c.encode().unwrap_or_default();
        assert_eq!(Command::decode(&bytes).ok(), Some(c));
        assert!(Command::decode(b"\xff\xff\xff").is_err());
        assert!(Command::decode(&[]).is_err());
    }

    /// The layout before origins, as an earlier version encoded it.
    #[derive(Serialize)]
    struct OldCommand {
        session: Session,
        op: WriteOp,
    }

    #[test]
    fn a_command_of_the_layout_before_origins_decodes_with_no_origin() {
        let session = Session {
            client_id: 7,
            seq: 3,
        };
        let op = WriteOp::Put {
            key: Bytes::from_static(b"patient/1"),
            value: Bytes::from_static(b"v"),
        };
        let old = crate::encode(&OldCommand {
            session,
            op: op.clone(),
        })
        .unwrap_or_default();
        let decoded = Command::decode(&old).ok();
        let want = Command {
            session,
            op: op.clone(),
            origin: None,
        };
        assert_eq!(decoded, Some(want.clone()));
        // The new layout of the same command is longer, round trips, and is not read as
        // the old one (the origin would be trailing bytes).
        for identity in [None, Some("alice".to_owned())] {
            let new = Command::new(session, op.clone(), identity.clone());
            let bytes = new.encode().unwrap_or_default();
            assert!(bytes.len() > old.len());
            assert_eq!(Command::decode(&bytes).ok(), Some(new.clone()));
            assert_eq!(
                Command::decode(&bytes).ok().and_then(|c| c.origin),
                Some(Origin { identity })
            );
        }
        // A command without an origin encodes in the old layout, byte for byte; the new
        // layout with no origin (as serde writes it) is read too.
        assert_eq!(want.encode().ok().as_deref(), Some(&old[..]));
        let serde_bytes = crate::encode(&want).unwrap_or_default();
        assert_ne!(serde_bytes, old);
        assert_eq!(Command::decode(&serde_bytes).ok(), Some(want));
        // Garbage after an old command is refused, not taken for an origin.
        let mut long = old.to_vec();
        long.extend_from_slice(b"\x05\x05\x05");
        assert!(Command::decode(&long).is_err());
    }
}
