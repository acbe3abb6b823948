//! Recording of concurrent client operations against the key-value store.
//!
//! Every client logs an operation with [`History::invoke`] *before* sending the request and
//! completes the returned [`PendingOp`] *after* the reply (or the give-up) is known. Taking the
//! timestamps on that side of the network round trip is what makes the recorded real-time order
//! sound for the linearizability checker: if the history says A completed before B was invoked,
//! then A really did complete before B started.
//!
//! Recording is a push into a `Vec` behind a `std::sync::Mutex`; the critical section is a few
//! hundred nanoseconds and never awaits, so it is fine to call from async tasks.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Identifies the client (logical process) that issued an operation.
pub type ProcessId = u64;

/// A key of the store, as raw bytes.
pub type Key = Vec<u8>;

/// A register value, as raw bytes.
pub type Value = Vec<u8>;

/// Index of an operation in its [`History`] (assigned in invocation order, starting at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What an operation asks the register (one key) to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Linearizable read. Completes with [`Ret::Value`].
    Read,
    /// Read that is allowed to return stale data (e.g. served locally by a follower). It is
    /// recorded for the reports but excluded from linearizability checking.
    StaleRead,
    /// Unconditional write. Completes with [`Ret::Done`].
    Write(Value),
    /// Compare-and-swap: store `new` iff the current value equals `expected` (`None` = the key
    /// must be absent). Completes with [`Ret::Swapped`].
    Cas {
        /// Value the key must currently hold; `None` means "must be absent".
        expected: Option<Value>,
        /// Value stored if the comparison succeeds.
        new: Value,
    },
    /// Removes the key (the register becomes absent). Completes with [`Ret::Done`].
    Delete,
}

/// Result of an operation that completed successfully.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// Result of a read: the value, or `None` if the key was absent.
    Value(Option<Value>),
    /// Result of a compare-and-swap: whether the swap happened.
    Swapped(bool),
    /// Result of a write or delete (no payload).
    Done,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The operation took effect (exactly once) and returned this result.
    Ok(Ret),
    /// The operation definitely did not take effect (e.g. rejected before being proposed).
    Fail,
    /// The client does not know (timeout, connection lost, cancelled): the operation may take
    /// effect at any time after its invocation, or never. Also the state of operations that are
    /// still in flight when [`History::ops`] is called.
    Unknown,
}

/// One recorded operation: the checker's view of an invoke/complete pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Position in the history (invocation order).
    pub id: OpId,
    /// Client that issued the operation.
    pub process: ProcessId,
    /// Key the operation addressed.
    pub key: Key,
    /// What was requested.
    pub kind: OpKind,
    /// Invocation time, nanoseconds since the history started.
    pub invoke_ns: u64,
    /// Completion time, nanoseconds since the history started. `Some` for [`Outcome::Ok`] and
    /// [`Outcome::Fail`]; `None` for [`Outcome::Unknown`] (the effect, if any, may happen at any
    /// time after `invoke_ns`).
    pub complete_ns: Option<u64>,
    /// How the operation ended.
    pub outcome: Outcome,
}

/// A thread-safe, cheaply clonable operation recorder. Clones share the same log.
#[derive(Clone, Debug)]
pub struct History {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        // A panic while holding the lock cannot leave the Vec half-updated (each critical
        // section is a single push or field assignment), so a poisoned log is still valid and
        // worth keeping for the failure report.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ns(&self) -> u64 {
        // u64 nanoseconds cover 584 years; saturate rather than fail.
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// Starts an empty history; timestamps are measured from this call.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Records the invocation of `kind` on `key` by `process`. Call it before the request is
    /// sent, then complete the returned handle exactly once.
    pub fn invoke(&self, process: ProcessId, key: impl Into<Key>, kind: OpKind) -> PendingOp {
        let key = key.into();
        let mut ops = self.inner.lock();
        // Timestamp under the lock so that the log order and the time order agree.
        let invoke_ns = self.inner.now_ns();
        let id = OpId(ops.len());
        ops.push(Operation {
            id,
            process,
            key,
            kind,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        });
        PendingOp {
            inner: Arc::clone(&self.inner),
            id,
            completed: false,
        }
    }

    /// Records how `op` ended; same as [`PendingOp::complete`]. `op` must come from this
    /// history (or a clone of it); it is recorded in the history it came from either way.
    pub fn complete(&self, op: PendingOp, outcome: Outcome) {
        debug_assert!(
            Arc::ptr_eq(&self.inner, &op.inner),
            "PendingOp completed on a different History"
        );
        op.complete(outcome);
    }

    /// Nanoseconds elapsed since the history started (same clock as the recorded timestamps).
    pub fn elapsed_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    /// Number of operations invoked so far.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no operation has been invoked yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of all operations in invocation order. Operations still in flight appear as
    /// [`Outcome::Unknown`], which is exactly how the checker must treat them.
    pub fn ops(&self) -> Vec<Operation> {
        self.inner.lock().clone()
    }

    /// The history as readable text, one line per operation (see [`format_ops`]).
    pub fn dump_text(&self) -> String {
        format_ops(&self.ops())
    }

    /// Writes [`History::dump_text`] to `path`, for failure reports.
    pub fn dump_to_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        write_ops_to_file(&self.ops(), path)
    }
}

/// Handle for an invoked operation. Consuming it records the completion, so an operation can
/// complete at most once. Dropping it without completing records [`Outcome::Unknown`]: a
/// cancelled request (e.g. a timed-out future) may still take effect.
#[derive(Debug)]
#[must_use = "complete the operation with ok/fail/unknown; dropping it records Unknown"]
pub struct PendingOp {
    inner: Arc<Inner>,
    id: OpId,
    completed: bool,
}

impl PendingOp {
    /// Identifier of the operation in its history.
    pub fn id(&self) -> OpId {
        self.id
    }

    /// Records how the operation ended. Call it after the reply was received (or the client gave
    /// up).
    pub fn complete(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    /// Shorthand for `complete(Outcome::Ok(ret))`.
    pub fn ok(self, ret: Ret) {
        self.complete(Outcome::Ok(ret));
    }

    /// Shorthand for `complete(Outcome::Fail)`: the operation definitely did not take effect.
    pub fn fail(self) {
        self.complete(Outcome::Fail);
    }

    /// Shorthand for `complete(Outcome::Unknown)`: the operation may or may not take effect.
    pub fn unknown(self) {
        self.complete(Outcome::Unknown);
    }

    fn record(&mut self, outcome: Outcome) {
        self.completed = true;
        let mut ops = self.inner.lock();
        let now_ns = self.inner.now_ns();
        if let Some(op) = ops.get_mut(self.id.0) {
            // Unknown operations have no completion bound: their effect may happen any time.
            op.complete_ns = match outcome {
                Outcome::Unknown => None,
                Outcome::Ok(_) | Outcome::Fail => Some(now_ns),
            };
            op.outcome = outcome;
        }
    }
}

impl Drop for PendingOp {
    fn drop(&mut self) {
        if !self.completed {
            self.record(Outcome::Unknown);
        }
    }
}

/// Formats bytes as a quoted string when printable ASCII, else as hex.
pub fn format_bytes(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        // Printable ASCII is valid UTF-8; the fallback is unreachable but harmless.
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        let mut out = String::with_capacity(2 + 2 * bytes.len());
        out.push_str("0x");
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// Formats a register value (`None` = absent).
pub fn format_value(value: Option<&[u8]>) -> String {
    match value {
        Some(v) => format_bytes(v),
        None => "absent".to_string(),
    }
}

/// Formats a timestamp in nanoseconds as milliseconds (six decimals, i.e. nanosecond precision).
pub fn format_ns(ns: u64) -> String {
    format!("{}.{:06}ms", ns / 1_000_000, ns % 1_000_000)
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Read => write!(f, "read"),
            OpKind::StaleRead => write!(f, "stale-read"),
            OpKind::Write(v) => write!(f, "write({})", format_bytes(v)),
            OpKind::Cas { expected, new } => write!(
                f,
                "cas({} -> {})",
                format_value(expected.as_deref()),
                format_bytes(new)
            ),
            OpKind::Delete => write!(f, "delete"),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Value(v) => write!(f, "{}", format_value(v.as_deref())),
            Ret::Swapped(true) => write!(f, "swapped"),
            Ret::Swapped(false) => write!(f, "not-swapped"),
            Ret::Done => write!(f, "done"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(ret) => write!(f, "ok {ret}"),
            Outcome::Fail => write!(f, "FAIL"),
            Outcome::Unknown => write!(f, "UNKNOWN"),
        }
    }
}

impl fmt::Display for Operation {
    /// One line: `#id p<process> [invoke .. complete] key=<key> <kind> -> <outcome>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = self.complete_ns.map_or_else(|| "?".to_string(), format_ns);
        write!(
            f,
            "{} p{} [{} .. {}] key={} {} -> {}",
            self.id,
            self.process,
            format_ns(self.invoke_ns),
            complete,
            format_bytes(&self.key),
            self.kind,
            self.outcome
        )
    }
}

/// Formats operations one per line, in the given order.
pub fn format_ops(ops: &[Operation]) -> String {
    let mut out = String::new();
    for op in ops {
        out.push_str(&op.to_string());
        out.push('\n');
    }
    out
}

/// Writes [`format_ops`] of `ops` to `path` (created or truncated).
pub fn write_ops_to_file(ops: &[Operation], path: impl AsRef<Path>) -> io::Result<()> {
    fs::write(path, format_ops(ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_invoke_and_completions() {
        let h = History::new();
        let w = h.invoke(1, "k", OpKind::Write(b"a".to_vec()));
        let r = h.invoke(2, "k", OpKind::Read);
        let c = h.invoke(
            3,
            "k",
            OpKind::Cas {
                expected: None,
                new: b"b".to_vec(),
            },
        );
        let d = h.invoke(4, "k", OpKind::Delete);
        assert_eq!(
            (w.id(), r.id(), c.id(), d.id()),
            (OpId(0), OpId(1), OpId(2), OpId(3))
        );
        h.complete(w, Outcome::Ok(Ret::Done));
        r.ok(Ret::Value(Some(b"a".to_vec())));
        c.fail();
        d.unknown();

        let ops = h.ops();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0].outcome, Outcome::Ok(Ret::Done));
        assert_eq!(ops[1].outcome, Outcome::Ok(Ret::Value(Some(b"a".to_vec()))));
        assert_eq!(ops[2].outcome, Outcome::Fail);
        assert_eq!(ops[3].outcome, Outcome::Unknown);
        assert!(ops[0].complete_ns.is_some());
        assert!(ops[2].complete_ns.is_some());
        assert_eq!(ops[3].complete_ns, None);
        assert_eq!(ops[1].process, 2);
        assert_eq!(ops[1].key, b"k".to_vec());
        for op in &ops {
            if let Some(c) = op.complete_ns {
                assert!(c >= op.invoke_ns);
            }
        }
        // Invocation order equals time order.
        assert!(ops.windows(2).all(|w| w[0].invoke_ns <= w[1].invoke_ns));
    }

    #[test]
    fn dropped_handle_is_unknown_and_in_flight_is_unknown() {
        let h = History::new();
        let in_flight = h.invoke(1, "k", OpKind::Read);
        {
            let _dropped = h.invoke(2, "k", OpKind::Write(b"x".to_vec()));
        }
        let ops = h.ops();
        assert_eq!(ops[0].outcome, Outcome::Unknown);
        assert_eq!(ops[1].outcome, Outcome::Unknown);
        assert_eq!(ops[1].complete_ns, None);
        in_flight.ok(Ret::Value(None));
        assert_eq!(h.ops()[0].outcome, Outcome::Ok(Ret::Value(None)));
    }

    #[test]
    fn concurrent_recording_from_threads() {
        let h = History::new();
        let threads_n = 4;
        let per_thread = 500;
        std::thread::scope(|s| {
            for p in 0..threads_n {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..per_thread {
                        let op = h.invoke(p, format!("k{}", i % 3), OpKind::Read);
                        op.ok(Ret::Value(None));
                    }
                });
            }
        });
        let ops = h.ops();
        assert_eq!(ops.len(), (threads_n * per_thread) as usize);
        for (i, op) in ops.iter().enumerate() {
            assert_eq!(op.id, OpId(i));
            assert!(op.complete_ns.is_some_and(|c| c >= op.invoke_ns));
        }
        assert!(ops.windows(2).all(|w| w[0].invoke_ns <= w[1].invoke_ns));
    }

    #[test]
    fn dump_is_one_readable_line_per_op() {
        let h = History::new();
        h.invoke(7, "key", OpKind::Write(b"v1".to_vec()))
            .ok(Ret::Done);
        h.invoke(
            8,
            vec![0u8, 0xff],
            OpKind::Cas {
                expected: Some(b"v1".to_vec()),
                new: vec![1, 2],
            },
        )
        .ok(Ret::Swapped(false));
        h.invoke(9, "key", OpKind::Read).unknown();
        let text = h.dump_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("#0 p7 ["), "{}", lines[0]);
        assert!(
            lines[0].ends_with("key=\"key\" write(\"v1\") -> ok done"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("key=0x00ff cas(\"v1\" -> 0x0102) -> ok not-swapped"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(" .. ?]"), "{}", lines[2]);
        assert!(lines[2].ends_with("read -> UNKNOWN"), "{}", lines[2]);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.txt");
        h.dump_to_file(&path).expect("dump");
        assert_eq!(fs::read_to_string(&path).expect("read back"), text);
    }

    #[test]
    fn format_ns_is_milliseconds() {
        assert_eq!(format_ns(0), "0.000000ms");
        assert_eq!(format_ns(1_234_567_890), "1234.567890ms");
    }
}
