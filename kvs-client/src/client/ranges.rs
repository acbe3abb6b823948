//! Range reads (paged), range deletes and multi-key transactions.

use bytes::Bytes;
use wire::{Op, RangeMode, RangePage, RangeRequest, ReadConsistency, Reply, Txn};

use super::send::Route;
use super::{unexpected, unexpected_to_write, Client};
use crate::Error;

/// A range of keys: `[from, to)` in bytewise order (`to`: `None`, to the last key).
///
/// A range whose end is not above its start is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key (inclusive); empty: from the first key.
    pub from: Bytes,
    /// The end (exclusive); `None`: to the last key.
    pub to: Option<Bytes>,
}

impl KeyRange {
    /// Every key from `from` (inclusive) to `to` (exclusive).
    pub fn between(from: impl Into<Bytes>, to: impl Into<Bytes>) -> KeyRange {
        KeyRange {
            from: from.into(),
            to: Some(to.into()),
        }
    }

    /// Every key from `from` (inclusive) on.
    pub fn from_key(from: impl Into<Bytes>) -> KeyRange {
        KeyRange {
            from: from.into(),
            to: None,
        }
    }

    /// Every key starting with `prefix` (every key for an empty prefix).
    pub fn prefix(prefix: impl Into<Bytes>) -> KeyRange {
        let from = prefix.into();
        let to = wire::prefix_end(&from);
        KeyRange { from, to }
    }
}

/// The error for a limit of 0 (refused rather than read as "nothing" or "no limit").
fn zero_limit() -> Error {
    Error::Rejected(wire::ErrorReply::Invalid {
        reason: "the limit must be at least 1".to_owned(),
    })
}

/// One key of a range read, and its value (`None` when reading keys only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The value, unless keys only were read.
    pub value: Option<Bytes>,
}

/// How to read a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// The most keys to return over all pages (`None`: all). `Some(0)` is refused.
    pub limit: Option<u64>,
    /// Keys only, without their values.
    pub keys_only: bool,
    /// Read from any node's local state, which may lag behind the leader.
    pub stale: bool,
}

/// The pages of a range read, fetched one at a time as they are asked for
/// ([`Client::range`]): however long the range, at most one page is held in memory.
///
/// Each page is read at one point of the log (linearizably unless stale); the pages of a
/// range are read one after another, so writes made meanwhile may show in later pages.
/// Every key present throughout is returned exactly once, in order.
#[derive(Debug)]
pub struct RangePager {
    client: Client,
    next: Option<Bytes>,
    to: Option<Bytes>,
    left: Option<u64>,
    options: RangeOptions,
}

impl RangePager {
    /// The next page of entries, in key order; `None` when the range is done. A page is
    /// never empty.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, Error> {
        let Some(from) = self.next.take() else {
            return Ok(None);
        };
        if self.left == Some(0) {
            if self.options.limit == Some(0) {
                return Err(zero_limit());
            }
            return Ok(None);
        }
        let mode = if self.options.keys_only {
            RangeMode::KeysOnly
        } else {
            RangeMode::Entries
        };
        let page = self
            .client
            .range_page(from, self.to.clone(), self.left, mode, self.options.stale)
            .await?;
        self.left = self.left.map(|left| left.saturating_sub(page.count));
        self.next = page.next;
        if page.keys.is_empty() {
            return Ok(None);
        }
        let mut values = page.values.into_iter();
        let entries = page
            .keys
            .into_iter()
            .map(|key| Entry {
                key,
                value: if self.options.keys_only {
                    None
                } else {
                    values.next()
                },
            })
            .collect();
        Ok(Some(entries))
    }
}

impl Client {
    /// Reads the keys of `range` (and their values unless `options.keys_only`), page by
    /// page: see [`RangePager`]. Nothing is sent before the first
    /// [`RangePager::next_page`].
    pub fn range(&self, range: KeyRange, options: RangeOptions) -> RangePager {
        RangePager {
            client: self.clone(),
            next: Some(range.from),
            to: range.to,
            left: options.limit,
            options,
        }
    }

    /// Counts the keys of `range` (at most `limit` of them, if given), without any key
    /// leaving the server; a range of many keys takes one request per
    /// [`wire::RANGE_COUNT_PAGE_MAX`] keys.
    pub async fn count(
        &self,
        range: KeyRange,
        limit: Option<u64>,
        stale: bool,
    ) -> Result<u64, Error> {
        if limit == Some(0) {
            return Err(zero_limit());
        }
        let mut total = 0u64;
        let mut next = Some(range.from);
        while let Some(from) = next {
            let left = limit.map(|l| l.saturating_sub(total));
            if left == Some(0) {
                break;
            }
            let page = self
                .range_page(from, range.to.clone(), left, RangeMode::Count, stale)
                .await?;
            total += page.count;
            next = page.next;
        }
        Ok(total)
    }

    /// Removes every key of `range` as one write (one slot of the log, exactly once under
    /// this client's session like every write). Returns how many keys it removed.
    pub async fn delete_range(&self, range: KeyRange) -> Result<u64, Error> {
        let op = Op::DeleteRange {
            from: range.from,
            to: range.to,
        };
        match self.write(op).await? {
            (_, Reply::DeletedRange { count }) => Ok(count),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "DeletedRange", &other)),
        }
    }

    /// Applies a transaction atomically, exactly once: if every compare holds, its
    /// success operations, else its failure operations. Returns whether the compares
    /// held. A transaction beyond [`wire::TXN_OPS_MAX`] compares and operations or
    /// [`wire::TXN_BYTES_MAX`] bytes is refused before anything is sent.
    pub async fn txn(&self, txn: Txn) -> Result<bool, Error> {
        match self.write(Op::Txn(txn)).await? {
            (_, Reply::TxnDone { succeeded }) => Ok(succeeded),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "TxnDone", &other)),
        }
    }

    /// One page of a range read.
    async fn range_page(
        &self,
        from: Bytes,
        to: Option<Bytes>,
        limit: Option<u64>,
        mode: RangeMode,
        stale: bool,
    ) -> Result<RangePage, Error> {
        let (consistency, route) = if stale {
            (ReadConsistency::Stale, Route::AnyReplica)
        } else {
            (ReadConsistency::Linearizable, Route::Leader)
        };
        let op = Op::Range(RangeRequest {
            from,
            to,
            limit,
            mode,
            consistency,
        });
        match self.read(op, route).await? {
            (_, Reply::Range(page)) if page.stale == stale => Ok(page),
            (endpoint, other) => Err(unexpected(endpoint, "a Range page", &other)),
        }
    }
}
