//! What the log holds: values made of client commands, and no-ops.

use bytes::Bytes;

use crate::ballot::{Ballot, Slot};
use crate::membership::Reconfig;

/// The value agreed on in one slot of the log.
///
/// A slot holds a batch of commands (opaque bytes, in the order they were proposed), a
/// no-op that a new leader uses to fill a slot nobody proposed anything for, or a change
/// of membership (see [`membership`](crate::membership)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Value {
    /// Fills a gap in the log; the host applies nothing.
    Noop,
    /// Commands to apply in order. Never empty.
    Commands(Vec<Bytes>),
    /// A membership change; it governs slots from its own slot plus the reconfiguration
    /// delay on (see [`MembershipLog`](crate::MembershipLog)).
    Reconfig(Reconfig),
}

impl Value {
    /// The commands of this value (none for a no-op).
    pub fn commands(&self) -> &[Bytes] {
        match self {
            Value::Noop | Value::Reconfig(_) => &[],
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
