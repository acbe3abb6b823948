//! The encoding of one log record, a [`PersistEntry`], owned here and independent of the
//! network format: the log on disk must not change when the wire protocol does.
//!
//! The write-ahead log ([`crate::wal`]) frames every record with its length and a CRC32C
//! chained through the whole log, so a record reaches this decoder whole and unaltered, or
//! not at all. Inside the frame (integers little-endian, fixed width):
//!
//! ```text
//! version u8 = 0x10 (format 1)
//! tag u8, then by tag:
//!   1 Promised   round u64 | node u64
//!   2 Accepted   slot u64 | round u64 | node u64 | value
//!   3 Committed  upto u64
//! value: 0 (a no-op)
//!      | 1 | count u32 > 0 | (len u32 | command bytes) * count
//!      | 2 | expected u64 | change u8 | member u64 | (meta len u32 | meta, for change 1)
//!        a membership change; change 1 = add a learner (with its meta), 2 = promote,
//!        3 = remove
//! ```
//!
//! Versions are numbered from 0x10 up so that the first byte also tells a record from those
//! of earlier releases, which hold the entry in the network encoding (bincode, whose first
//! byte is the entry's variant, 0 to 2): those are still read, never written, and a log is
//! rewritten in this format at its next compaction. A record of an unknown version is
//! refused with an error naming the version, never guessed at.

use bytes::Bytes;
use paxos_core::{Ballot, Change, PersistEntry, Reconfig, Value};

/// The version byte of the records this build writes.
pub const RECORD_VERSION: u8 = 0x10;

/// First bytes of the records of earlier releases (the variant of a bincode-encoded
/// [`PersistEntry`]).
const LEGACY_FIRST_BYTES: std::ops::RangeInclusive<u8> = 0..=2;

const TAG_PROMISED: u8 = 1;
const TAG_ACCEPTED: u8 = 2;
const TAG_COMMITTED: u8 = 3;

const VALUE_NOOP: u8 = 0;
const VALUE_COMMANDS: u8 = 1;
const VALUE_RECONFIG: u8 = 2;

const CHANGE_ADD_LEARNER: u8 = 1;
const CHANGE_PROMOTE: u8 = 2;
const CHANGE_REMOVE: u8 = 3;

/// Why a record cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is written in a format this build does not know (a newer release).
    #[error(
        "record format version {0:#04x} is unknown to this build, which reads version \
         {RECORD_VERSION:#04x} and the records of earlier releases"
    )]
    UnknownVersion(u8),
    /// The record holds no byte at all.
    #[error("the record is empty")]
    Empty,
    /// The entry's tag is unknown.
    #[error("unknown entry tag {0}")]
    UnknownTag(u8),
    /// The value's kind is unknown.
    #[error("unknown value kind {0}")]
    UnknownValue(u8),
    /// A membership change's kind is unknown.
    #[error("unknown membership change kind {0}")]
    UnknownChange(u8),
    /// A field runs past the end of the record.
    #[error(
        "the record ends inside {field} (offset {offset}, {needed} bytes needed, {available} left)"
    )]
    Truncated {
        /// The field.
        field: &'static str,
        /// Where it starts in the record.
        offset: usize,
        /// Its size.
        needed: usize,
        /// Bytes left in the record.
        available: usize,
    },
    /// Bytes follow the entry.
    #[error("{0} bytes follow the entry")]
    Trailing(usize),
    /// A batch of commands with no command.
    #[error("a batch of commands is empty")]
    EmptyBatch,
    /// A command too long for a length field.
    #[error("a command of {0} bytes is too long for a log record")]
    TooLong(usize),
    /// A record of an earlier release that does not decode.
    #[error("record of an earlier release: {0}")]
    Legacy(String),
}

/// Appends the encoding of `entry` to `out`.
pub fn encode_into(entry: &PersistEntry, out: &mut Vec<u8>) -> Result<(), RecordError> {
    out.push(RECORD_VERSION);
    match entry {
        PersistEntry::Promised(ballot) => {
            out.push(TAG_PROMISED);
            put_ballot(out, ballot);
        }
        PersistEntry::Accepted {
            slot,
            ballot,
            value,
        } => {
            out.push(TAG_ACCEPTED);
            out.extend_from_slice(&slot.to_le_bytes());
            put_ballot(out, ballot);
            put_value(out, value)?;
        }
        PersistEntry::Committed { upto } => {
            out.push(TAG_COMMITTED);
            out.extend_from_slice(&upto.to_le_bytes());
        }
    }
    Ok(())
}

/// The encoding of `entry`.
pub fn encode(entry: &PersistEntry) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::with_capacity(encoded_len_hint(entry));
    encode_into(entry, &mut out)?;
    Ok(out)
}

fn encoded_len_hint(entry: &PersistEntry) -> usize {
    match entry {
        PersistEntry::Accepted { value, .. } => {
            40 + value.payload_bytes() + 4 * value.commands().len()
        }
        _ => 24,
    }
}

fn put_ballot(out: &mut Vec<u8>, ballot: &Ballot) {
    out.extend_from_slice(&ballot.round.to_le_bytes());
    out.extend_from_slice(&ballot.node.to_le_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) -> Result<(), RecordError> {
    let commands = match value {
        Value::Noop => {
            out.push(VALUE_NOOP);
            return Ok(());
        }
        Value::Commands(commands) => commands,
        Value::Reconfig(reconfig) => return put_reconfig(out, reconfig),
    };
    if commands.is_empty() {
        // Refused on read: never written.
        return Err(RecordError::EmptyBatch);
    }
    out.push(VALUE_COMMANDS);
    let count = u32::try_from(commands.len()).map_err(|_| RecordError::TooLong(commands.len()))?;
    out.extend_from_slice(&count.to_le_bytes());
    for c in commands {
        let len = u32::try_from(c.len()).map_err(|_| RecordError::TooLong(c.len()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(c);
    }
    Ok(())
}

fn put_reconfig(out: &mut Vec<u8>, reconfig: &Reconfig) -> Result<(), RecordError> {
    out.push(VALUE_RECONFIG);
    out.extend_from_slice(&reconfig.expected.to_le_bytes());
    let (kind, id) = match &reconfig.change {
        Change::AddLearner { id, .. } => (CHANGE_ADD_LEARNER, id),
        Change::Promote { id } => (CHANGE_PROMOTE, id),
        Change::Remove { id } => (CHANGE_REMOVE, id),
    };
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    if let Change::AddLearner { meta, .. } = &reconfig.change {
        let len = u32::try_from(meta.len()).map_err(|_| RecordError::TooLong(meta.len()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(meta);
    }
    Ok(())
}

/// The entry stored in `raw`: a record of this format, or of an earlier release.
pub fn decode(raw: &[u8]) -> Result<PersistEntry, RecordError> {
    match raw.first() {
        None => Err(RecordError::Empty),
        Some(&RECORD_VERSION) => Reader::new(raw, 1).entry(),
        Some(first) if LEGACY_FIRST_BYTES.contains(first) => {
            let entry: PersistEntry =
                wire::decode(raw).map_err(|e| RecordError::Legacy(e.to_string()))?;
            // The same rule as the current format: a record read here is rewritten in it at
            // the next compaction, and must then read back.
            match &entry {
                PersistEntry::Accepted {
                    value: Value::Commands(commands),
                    ..
                } if commands.is_empty() => Err(RecordError::EmptyBatch),
                _ => Ok(entry),
            }
        }
        Some(&version) => Err(RecordError::UnknownVersion(version)),
    }
}

/// Reads the fields of a record in order.
struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(raw: &'a [u8], at: usize) -> Reader<'a> {
        Reader { raw, at }
    }

    fn entry(mut self) -> Result<PersistEntry, RecordError> {
        let entry = match self.u8("the tag")? {
            TAG_PROMISED => PersistEntry::Promised(self.ballot()?),
            TAG_ACCEPTED => PersistEntry::Accepted {
                slot: self.u64("the slot")?,
                ballot: self.ballot()?,
                value: self.value()?,
            },
            TAG_COMMITTED => PersistEntry::Committed {
                upto: self.u64("the commit index")?,
            },
            tag => return Err(RecordError::UnknownTag(tag)),
        };
        match self.raw.len() - self.at {
            0 => Ok(entry),
            trailing => Err(RecordError::Trailing(trailing)),
        }
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], RecordError> {
        let available = self.raw.len() - self.at;
        if needed > available {
            return Err(RecordError::Truncated {
                field,
                offset: self.at,
                needed,
                available,
            });
        }
        let bytes = &self.raw[self.at..self.at + needed];
        self.at += needed;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(field, 4)?);
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(field, 8)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn ballot(&mut self) -> Result<Ballot, RecordError> {
        let round = self.u64("the ballot's round")?;
        let node = self.u64("the ballot's node")?;
        Ok(Ballot { round, node })
    }

    fn value(&mut self) -> Result<Value, RecordError> {
        match self.u8("the value's kind")? {
            VALUE_NOOP => Ok(Value::Noop),
            VALUE_COMMANDS => {
                let count = self.u32("the command count")? as usize;
                if count == 0 {
                    return Err(RecordError::EmptyBatch);
                }
                // Each command takes at least its length field: a hostile count cannot make
                // this allocate more than the record's size.
                let mut commands = Vec::with_capacity(count.min((self.raw.len() - self.at) / 4));
                for _ in 0..count {
                    let len = self.u32("a command's length")? as usize;
                    commands.push(Bytes::copy_from_slice(self.take("a command", len)?));
                }
                Ok(Value::Commands(commands))
            }
            VALUE_RECONFIG => self.reconfig().map(Value::Reconfig),
            kind => Err(RecordError::UnknownValue(kind)),
        }
    }

    fn reconfig(&mut self) -> Result<Reconfig, RecordError> {
        let expected = self.u64("the expected configuration")?;
        let kind = self.u8("the change's kind")?;
        let id = self.u64("the member's id")?;
        let change = match kind {
            CHANGE_ADD_LEARNER => {
                let len = self.u32("the meta's length")? as usize;
                let meta = Bytes::copy_from_slice(self.take("the meta", len)?);
                Change::AddLearner { id, meta }
            }
            CHANGE_PROMOTE => Change::Promote { id },
            CHANGE_REMOVE => Change::Remove { id },
            kind => return Err(RecordError::UnknownChange(kind)),
        };
        Ok(Reconfig { expected, change })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<PersistEntry> {
        vec![
            PersistEntry::Promised(Ballot::new(7, 3)),
            PersistEntry::Accepted {
                slot: 42,
                ballot: Ballot::new(7, 3),
                value: Value::Noop,
            },
            PersistEntry::Accepted {
                slot: u64::MAX - 1,
                ballot: Ballot::new(u64::MAX, 1),
                value: Value::Commands(vec![
                    Bytes::from_static(b"put k v"),
                    Bytes::new(),
                    Bytes::from(vec![0xff; 300]),
                ]),
            },
            PersistEntry::Committed { upto: 99 },
            PersistEntry::Accepted {
                slot: 7,
                ballot: Ballot::new(2, 1),
                value: Value::Reconfig(Reconfig {
                    expected: 3,
                    change: Change::AddLearner {
                        id: 4,
                        meta: Bytes::from_static(b"\x01\x03h:1\x00"),
                    },
                }),
            },
            PersistEntry::Accepted {
                slot: 8,
                ballot: Ballot::new(2, 1),
                value: Value::Reconfig(Reconfig {
                    expected: 4,
                    change: Change::Promote { id: 4 },
                }),
            },
            PersistEntry::Accepted {
                slot: 9,
                ballot: Ballot::new(2, 1),
                value: Value::Reconfig(Reconfig {
                    expected: u64::MAX,
                    change: Change::Remove { id: 1 },
                }),
            },
        ]
    }

    #[test]
    fn every_entry_roundtrips_and_starts_with_the_version() {
        for entry in samples() {
            let raw = encode(&entry).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(raw[0], RECORD_VERSION);
            assert_eq!(decode(&raw), Ok(entry));
        }
    }

    #[test]
    fn the_layout_is_pinned() {
        let raw = encode(&PersistEntry::Promised(Ballot::new(2, 1))).unwrap_or_default();
        let mut expected = vec![0x10, 1];
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(raw, expected);
        let value = Value::Commands(vec![Bytes::from_static(b"ab")]);
        let raw = encode(&PersistEntry::Accepted {
            slot: 5,
            ballot: Ballot::new(2, 1),
            value,
        })
        .unwrap_or_default();
        let mut expected = vec![0x10, 2];
        for n in [5u64, 2, 1] {
            expected.extend_from_slice(&n.to_le_bytes());
        }
        expected.push(1);
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        assert_eq!(raw, expected);
    }

    #[test]
    fn records_of_earlier_releases_are_read() {
        // Earlier releases had no membership changes.
        let old = samples().into_iter().filter(|e| {
            !matches!(
                e,
                PersistEntry::Accepted {
                    value: Value::Reconfig(_),
                    ..
                }
            )
        });
        for entry in old {
            let legacy = wire::encode(&entry).unwrap_or_default();
            assert!(LEGACY_FIRST_BYTES.contains(&legacy[0]), "{legacy:?}");
            assert_eq!(decode(&legacy), Ok(entry));
        }
    }

    #[test]
    fn an_unknown_version_is_refused_by_name() {
        let mut raw = encode(&PersistEntry::Committed { upto: 1 }).unwrap_or_default();
        raw[0] = 0x11;
        assert_eq!(decode(&raw), Err(RecordError::UnknownVersion(0x11)));
        let text = RecordError::UnknownVersion(0x11).to_string();
        assert!(text.contains("0x11") && text.contains("0x10"), "{text}");
        for first in 3..=u8::MAX {
            if first != RECORD_VERSION {
                assert_eq!(
                    decode(&[first, 1, 2]),
                    Err(RecordError::UnknownVersion(first))
                );
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for entry in samples() {
            let raw = encode(&entry).unwrap_or_default();
            for len in 0..raw.len() {
                assert!(decode(&raw[..len]).is_err(), "{entry:?} cut to {len}");
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(RecordError::Trailing(1)));
        }
    }

    /// Found by fuzzing (fuzz target `storage_record`): a record of an earlier release
    /// holding an empty batch was read, but its rewrite in the current format was refused
    /// on the next read. Both formats now refuse it, and it is never written.
    #[test]
    fn an_empty_batch_is_refused_in_every_format() {
        let legacy = [0x01, 0x01, 0x01, 0x26, 0x01, 0x00];
        assert_eq!(decode(&legacy), Err(RecordError::EmptyBatch));
        let entry = PersistEntry::Accepted {
            slot: 1,
            ballot: Ballot { round: 1, node: 38 },
            value: Value::Commands(vec![]),
        };
        assert_eq!(encode(&entry), Err(RecordError::EmptyBatch));
    }

    #[test]
    fn malformed_fields_are_named() {
        assert_eq!(decode(&[0x10, 9]), Err(RecordError::UnknownTag(9)));
        let mut raw = vec![0x10, 2];
        raw.extend_from_slice(&[0; 24]);
        raw.push(7);
        assert_eq!(decode(&raw), Err(RecordError::UnknownValue(7)));
        raw.pop();
        raw.push(1);
        raw.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&raw), Err(RecordError::EmptyBatch));
        // A hostile count in a short record fails on the data, without a large allocation.
        raw.truncate(raw.len() - 4);
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&raw),
            Err(RecordError::Truncated {
                field: "a command's length",
                ..
            })
        ));
        assert_eq!(decode(&[]), Err(RecordError::Empty));
        let mut raw = vec![0x10, 2];
        raw.extend_from_slice(&[0; 24]);
        raw.push(2);
        raw.extend_from_slice(&[0; 8]);
        raw.push(9);
        raw.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&raw), Err(RecordError::UnknownChange(9)));
    }

    #[test]
    fn a_membership_change_layout_is_pinned() {
        let value = Value::Reconfig(Reconfig {
            expected: 3,
            change: Change::AddLearner {
                id: 4,
                meta: Bytes::from_static(b"ab"),
            },
        });
        let raw = encode(&PersistEntry::Accepted {
            slot: 5,
            ballot: Ballot::new(2, 1),
            value,
        })
        .unwrap_or_default();
        let mut expected = vec![0x10, 2];
        for n in [5u64, 2, 1] {
            expected.extend_from_slice(&n.to_le_bytes());
        }
        expected.push(2);
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.push(1);
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        assert_eq!(raw, expected);
    }
}
