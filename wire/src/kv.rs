//! Range reads, range deletes and multi-key transactions: their requests, replies and
//! limits.
//!
//! Keys are ordered bytewise. A range is `[from, to)`: every key `k` with `from <= k` and,
//! when `to` is given, `k < to`; a range whose `to` is not above `from` is empty (not an
//! error). A prefix is the range from the prefix to [`prefix_end`] of it.
//!
//! A range read is answered one page at a time ([`RangePage`]): at most
//! [`RANGE_PAGE_KEYS_MAX`] keys and about [`RANGE_PAGE_BYTES_MAX`] bytes of keys and values
//! (a page always holds at least one entry, so one maximal entry still fits), or, counting
//! only, at most [`RANGE_COUNT_PAGE_MAX`] keys counted; [`RangePage::next`] says where the
//! next page starts. Each page is read as a whole at one point of the log (linearizably
//! unless stale), a range of several pages is not one snapshot.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::{ErrorReply, ReadConsistency, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::codec::FRAME_BYTES_MAX_DEFAULT;

/// Most keys returned in one page of a range read.
pub const RANGE_PAGE_KEYS_MAX: u64 = 65_536;

/// Bytes of keys and values after which a page of a range read ends (1 MiB); the entry
/// that crosses it is the last of the page.
pub const RANGE_PAGE_BYTES_MAX: usize = 1024 * 1024;

/// Most keys counted in one page of a count-only range read.
pub const RANGE_COUNT_PAGE_MAX: u64 = 1 << 20;

/// Most compares plus operations in one transaction.
pub const TXN_OPS_MAX: usize = 128;

/// Most bytes of keys and values in one transaction (2 MiB): it fits one frame.
pub const TXN_BYTES_MAX: usize = 2 * 1024 * 1024;

// A largest transaction (its bytes, plus a generous 64 bytes of encoding per compare or
// operation) fits a default frame with room for the envelope, as a request and inside a
// replicated command; so does a fullest page of a range read (the bytes after which it
// ends, one more maximal entry, and its per-key encoding).
const _: () = assert!(TXN_BYTES_MAX + TXN_OPS_MAX * 64 + 1024 <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(
    RANGE_PAGE_BYTES_MAX + KEY_BYTES_MAX + VALUE_BYTES_MAX + RANGE_PAGE_KEYS_MAX as usize * 16
        <= FRAME_BYTES_MAX_DEFAULT
);

/// What a range read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RangeMode {
    /// Keys and their values.
    Entries,
    /// Keys only.
    KeysOnly,
    /// Only how many keys there are: no key leaves the server.
    Count,
}

/// One page of a range read ([`crate::Op::Range`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key of the range (inclusive); empty: from the first key.
    pub from: Bytes,
    /// The end of the range (exclusive); `None`: to the last key.
    pub to: Option<Bytes>,
    /// The most keys this page may return or count (at least 1; the server may return
    /// fewer). `None`: as many as a page holds.
    pub limit: Option<u64>,
    /// What to return.
    pub mode: RangeMode,
    /// How fresh the read must be.
    pub consistency: ReadConsistency,
}

/// One page of a range read: the answer to [`crate::Op::Range`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangePage {
    /// The keys, in order (empty when counting).
    pub keys: Vec<Bytes>,
    /// Their values, in the same order ([`RangeMode::Entries`] only; empty otherwise).
    pub values: Vec<Bytes>,
    /// How many keys this page covers (returned or counted).
    pub count: u64,
    /// Where the rest of the range starts, if the page ended before the range did (a full
    /// page, or the limit reached): ask again from here. `None`: the range is done.
    pub next: Option<Bytes>,
    /// True if the page was read from the replica's local state without confirming it is
    /// current ([`ReadConsistency::Stale`]).
    pub stale: bool,
}

/// A condition of a [`Txn`] on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key holds exactly this value.
    Value {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// The key exists.
    Exists {
        /// The key.
        key: Bytes,
    },
    /// The key is absent.
    Absent {
        /// The key.
        key: Bytes,
    },
}

impl Compare {
    /// The key compared.
    pub fn key(&self) -> &Bytes {
        match self {
            Compare::Value { key, .. } | Compare::Exists { key } | Compare::Absent { key } => key,
        }
    }

    /// Whether the condition holds for a key whose value is `current` (`None`: absent).
    pub fn holds(&self, current: Option<&[u8]>) -> bool {
        match self {
            Compare::Value { value, .. } => current == Some(&value[..]),
            Compare::Exists { .. } => current.is_some(),
            Compare::Absent { .. } => current.is_none(),
        }
    }
}

/// A change made by a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Set the key to the value.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove the key.
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl TxnOp {
    /// The key changed.
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// A multi-key transaction: if every compare holds, the `success` operations are applied,
/// else the `failure` ones; in order, atomically, in one slot of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The conditions, all of which must hold (none: success).
    pub compares: Vec<Compare>,
    /// Applied if every compare holds.
    pub success: Vec<TxnOp>,
    /// Applied otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// How many compares and operations it holds.
    pub fn len(&self) -> usize {
        self.compares.len() + self.success.len() + self.failure.len()
    }

    /// True when it holds no compare and no operation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values it holds.
    pub fn bytes(&self) -> usize {
        let compares = self.compares.iter().map(|c| match c {
            Compare::Value { key, value } => key.len() + value.len(),
            Compare::Exists { key } | Compare::Absent { key } => key.len(),
        });
        let ops = self.success.iter().chain(&self.failure).map(|o| match o {
            TxnOp::Put { key, value } => key.len() + value.len(),
            TxnOp::Delete { key } => key.len(),
        });
        compares.chain(ops).sum()
    }
}

/// The end of the range of keys starting with `prefix`: the smallest key above every such
/// key, or `None` when there is none (the prefix is empty or all `0xff` bytes: the range
/// goes to the last key).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let keep = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=keep].to_vec();
    end[keep] += 1;
    Some(Bytes::from(end))
}

/// Whether `key` lies in `[from, to)`.
pub fn in_range(key: &[u8], from: &[u8], to: Option<&[u8]>) -> bool {
    key >= from && to.is_none_or(|to| key < to)
}

/// Checks a range's bounds: each at most [`KEY_BYTES_MAX`] bytes.
pub(crate) fn validate_bounds(from: &Bytes, to: Option<&Bytes>) -> Result<(), ErrorReply> {
    check_len("range start", from.len(), KEY_BYTES_MAX)?;
    if let Some(to) = to {
        check_len("range end", to.len(), KEY_BYTES_MAX)?;
    }
    Ok(())
}

/// Checks a range read: its bounds, and a limit of at least 1.
pub(crate) fn validate_range(req: &RangeRequest) -> Result<(), ErrorReply> {
    validate_bounds(&req.from, req.to.as_ref())?;
    if req.limit == Some(0) {
        return Err(ErrorReply::Invalid {
            reason: "the limit must be at least 1".to_owned(),
        });
    }
    Ok(())
}

/// Checks a transaction: at most [`TXN_OPS_MAX`] compares and operations and
/// [`TXN_BYTES_MAX`] bytes, keys of 1 to [`KEY_BYTES_MAX`] bytes, values of at most
/// [`VALUE_BYTES_MAX`].
pub(crate) fn validate_txn(txn: &Txn) -> Result<(), ErrorReply> {
    if txn.len() > TXN_OPS_MAX {
        return Err(ErrorReply::Invalid {
            reason: format!(
                "a transaction holds at most {TXN_OPS_MAX} compares and operations, this one {}",
                txn.len()
            ),
        });
    }
    check_len("transaction", txn.bytes(), TXN_BYTES_MAX)?;
    let keys = txn
        .compares
        .iter()
        .map(Compare::key)
        .chain(txn.success.iter().chain(&txn.failure).map(TxnOp::key));
    for key in keys {
        if key.is_empty() {
            return Err(ErrorReply::Invalid {
                reason: "a key of the transaction is empty".to_owned(),
            });
        }
        check_len("key", key.len(), KEY_BYTES_MAX)?;
    }
    let values = txn
        .compares
        .iter()
        .filter_map(|c| match c {
            Compare::Value { value, .. } => Some(value),
            _ => None,
        })
        .chain(
            txn.success
                .iter()
                .chain(&txn.failure)
                .filter_map(|o| match o {
                    TxnOp::Put { value, .. } => Some(value),
                    TxnOp::Delete { .. } => None,
                }),
        );
    for value in values {
        check_len("value", value.len(), VALUE_BYTES_MAX)?;
    }
    Ok(())
}

fn check_len(what: &str, len: usize, max: usize) -> Result<(), ErrorReply> {
    if len <= max {
        return Ok(());
    }
    Err(ErrorReply::TooLarge {
        what: what.to_owned(),
        size: len as u64,
        max: max as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"abc"), Some(Bytes::from_static(b"abd")));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(Bytes::from_static(b"b")));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
        let end = prefix_end(b"ab").unwrap_or_default();
        assert!(in_range(b"ab\xff\xff", b"ab", Some(&end)));
        assert!(!in_range(b"ac", b"ab", Some(&end)));
        assert!(!in_range(b"aa", b"ab", None));
    }

    #[test]
    fn a_txn_beyond_its_limits_is_refused() {
        let put = |k: &'static [u8], v: Bytes| TxnOp::Put {
            key: Bytes::from_static(k),
            value: v,
        };
        let ok = Txn {
            compares: vec![Compare::Absent {
                key: Bytes::from_static(b"k"),
            }],
            success: vec![put(b"k", Bytes::from_static(b"v"))],
            failure: vec![],
        };
        assert_eq!(validate_txn(&ok), Ok(()));
        let many = Txn {
            success: (0..=TXN_OPS_MAX).map(|_| put(b"k", Bytes::new())).collect(),
            ..Txn::default()
        };
        assert!(matches!(
            validate_txn(&many),
            Err(ErrorReply::Invalid { .. })
        ));
        let big = Bytes::from(vec![0u8; VALUE_BYTES_MAX]);
        let heavy = Txn {
            success: (0..3).map(|_| put(b"k", big.clone())).collect(),
            ..Txn::default()
        };
        assert!(matches!(
            validate_txn(&heavy),
            Err(ErrorReply::TooLarge { .. })
        ));
        let empty_key = Txn {
            compares: vec![Compare::Exists { key: Bytes::new() }],
            ..Txn::default()
        };
        assert!(matches!(
            validate_txn(&empty_key),
            Err(ErrorReply::Invalid { .. })
        ));
    }
}
