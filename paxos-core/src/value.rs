//! What the log holds: values made of client commands, and no-ops.

use bytes::Bytes;

use crate::ballot::{Ballot, Slot};

/// The value agreed on in one slot of the log.
///
/// A slot holds either a batch of commands (opaque bytes, in the order they were proposed)
/// or a no-op that a new leader uses to fill a slot nobody proposed anything for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Value {
    /// Fills a gap in the log; the host applies nothing.
    Noop,
    /// Commands to apply in order. Never empty.
    Commands(Vec<Bytes>),
}

impl Value {
    /// The commands of this value (none for a no-op).
    pub fn commands(&self) -> &[Bytes] {
        match self {
            Value::Noop => &[],
            Value::Commands(c) => c,
        }
    }

    /// Total payload bytes of the commands, used to bound batches and messages.
    pub fn payload_bytes(&self) -> usize {
        self.commands().iter().map(Bytes::len).sum()
    }
}

/// A value accepted (or known chosen) in a slot under a ballot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// The slot.
    pub slot: Slot,
    /// The ballot under which `value` was accepted.
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
}
