//! Linearizability checker for the key-value store's register model.
//!
//! Every key is an independent register (initially absent) supporting read, write,
//! compare-and-swap and delete. Linearizability is compositional (P-compositionality, Herlihy &
//! Wing), so a history is linearizable iff the sub-history of every key is; keys are checked
//! independently and in parallel.
//!
//! Per key, the checker runs Wing & Gong's backtracking search with Lowe's memoization of
//! (linearized set, register state) configurations ("Testing for Linearizability", Lowe 2017;
//! the same approach as Porcupine and Knossos). Semantics of the recorded outcomes:
//! - `Ok`: took effect exactly once, between invocation and completion, and its result must
//!   match the model;
//! - `Fail`: never happened (dropped);
//! - `Unknown`: may take effect at any time after invocation, or never; its result is
//!   unconstrained (unknown reads are therefore dropped);
//! - `StaleRead` operations are excluded.
//!
//! Running out of budget (states or time) is reported as a failure, never as a pass.

mod minimize;
mod search;

#[cfg(test)]
mod generator;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::history::{
    format_bytes, format_ns, format_ops, format_value, History, Key, OpId, Operation, Value,
};
use search::{compile, search, Compiled, Limits, SearchReport, SearchResult, ABSENT};

/// Limits and knobs of a check.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Maximum distinct (linearized set, state) configurations explored per key. Each costs a
    /// few dozen bytes of memory. Exceeding it yields [`Verdict::BudgetExhausted`].
    pub budget_states_max: u64,
    /// Wall-clock budget for the whole check (all keys), or `None` for no time limit.
    /// Exceeding it yields [`Verdict::BudgetExhausted`] for the unfinished keys.
    pub budget_time_max: Option<Duration>,
    /// Maximum worker threads; 0 means `std::thread::available_parallelism()`.
    pub threads_max: usize,
    /// States budget (summed over all re-checks) for shrinking a failing key to a small failing
    /// sub-history; 0 disables shrinking (the report then shows all of the key's operations).
    pub minimize_states_max: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            budget_states_max: 1_000_000,
            budget_time_max: None,
            threads_max: 0,
            minimize_states_max: 1_000_000,
        }
    }
}

/// Which budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetLimit {
    /// [`CheckConfig::budget_states_max`].
    States,
    /// [`CheckConfig::budget_time_max`].
    Time,
}

/// Outcome of checking one key, or the worst outcome over all keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid linearization exists.
    Linearizable,
    /// No linearization exists; the violation explains why.
    NotLinearizable(Box<Violation>),
    /// The search gave up before reaching an answer. This is a failure: the key is unverified.
    BudgetExhausted {
        /// The key whose check ran out of budget.
        key: Key,
        /// Configurations explored before giving up.
        explored_states: u64,
        /// Which budget ran out.
        limit: BudgetLimit,
    },
    /// An operation's recorded result does not fit its kind (e.g. a write completed with a read
    /// value): a bug in the test harness, reported as a failure.
    Malformed {
        /// The key of the offending operation.
        key: Key,
        /// The offending operation.
        op: OpId,
        /// Human-readable description, including the operation.
        reason: String,
    },
}

impl Verdict {
    /// Whether this verdict is a pass (only [`Verdict::Linearizable`] is).
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// Severity for picking the overall verdict: violations first, then harness bugs, then
    /// budget exhaustion.
    fn severity(&self) -> u8 {
        match self {
            Verdict::Linearizable => 0,
            Verdict::BudgetExhausted { .. } => 1,
            Verdict::Malformed { .. } => 2,
            Verdict::NotLinearizable(_) => 3,
        }
    }
}

/// An operation placed in a partial linearization, with the register value after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearizedOp {
    /// The operation.
    pub op: Operation,
    /// Register value after applying it (`None` = absent).
    pub value_after: Option<Value>,
}

/// Evidence that a key's history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: Key,
    /// Every recorded operation on the key (including failed ones and stale reads), sorted by
    /// invocation time.
    pub key_ops: Vec<Operation>,
    /// A small sub-history that is already not linearizable (sorted by invocation time).
    /// Failed operations, stale reads and unknown reads are left out since they cannot matter.
    pub minimal_ops: Vec<Operation>,
    /// If set, `minimal_ops` is a prefix of the history cut at this time: operations completing
    /// after it count as unknown.
    pub cut_ns: Option<u64>,
    /// Longest partial linearization of `minimal_ops` the search found.
    pub linearized_prefix: Vec<LinearizedOp>,
    /// The operation whose completion the search reached, unplaced, right after
    /// `linearized_prefix`: with the register holding `stuck_value`, it (and every other pending
    /// candidate) could not be linearized.
    pub stuck: Option<Operation>,
    /// Register value at the point where `stuck` could not be placed.
    pub stuck_value: Option<Value>,
    /// Configurations explored by the check of the full key history.
    pub explored_states: u64,
}

/// Result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVerdict {
    /// The key.
    pub key: Key,
    /// Number of recorded operations on the key.
    pub ops_count: usize,
    /// Configurations explored by the (first, full) search.
    pub explored_states: u64,
    /// Time spent on this key, including shrinking a failure.
    pub elapsed: Duration,
    /// The verdict.
    pub verdict: Verdict,
}

/// Result of checking a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// One entry per key, sorted by key.
    pub keys: Vec<KeyVerdict>,
    /// Total wall-clock time of the check.
    pub elapsed: Duration,
}

impl CheckReport {
    /// Whether every key is linearizable. Budget exhaustion and malformed histories are
    /// failures.
    pub fn is_ok(&self) -> bool {
        self.keys.iter().all(|k| k.verdict.is_ok())
    }

    /// The overall verdict: the most severe key verdict (a violation over a malformed history
    /// over budget exhaustion; the first key in key order on ties), or `Linearizable`.
    pub fn verdict(&self) -> Verdict {
        let mut worst: Option<&Verdict> = None;
        for key in &self.keys {
            if worst.is_none_or(|w| key.verdict.severity() > w.severity()) {
                worst = Some(&key.verdict);
            }
        }
        worst.cloned().unwrap_or(Verdict::Linearizable)
    }

    /// The verdict for `key`, if the history had operations on it.
    pub fn verdict_for(&self, key: &[u8]) -> Option<&Verdict> {
        self.keys
            .iter()
            .find(|k| k.key.as_slice() == key)
            .map(|k| &k.verdict)
    }

    /// Keys whose verdict is not a pass.
    pub fn failures(&self) -> impl Iterator<Item = &KeyVerdict> {
        self.keys.iter().filter(|k| !k.verdict.is_ok())
    }

    /// The report ([`fmt::Display`]) followed by every operation of each failing key.
    pub fn full_text(&self) -> String {
        let mut out = self.to_string();
        for key in self.failures() {
            if let Verdict::NotLinearizable(violation) = &key.verdict {
                out.push_str(&format!(
                    "\nall {} operations on key {}:\n",
                    violation.key_ops.len(),
                    format_bytes(&violation.key)
                ));
                out.push_str(&format_ops(&violation.key_ops));
            }
        }
        out
    }

    /// Writes [`CheckReport::full_text`] to `path`, for failure reports.
    pub fn write_to_file(&self, path: impl AsRef<Path>) -> io::Result<()> {
        fs::write(path, self.full_text())
    }
}

/// Checks every key of `history` (see [`check_operations`]).
pub fn check_history(history: &History, config: &CheckConfig) -> CheckReport {
    check_operations(&history.ops(), config)
}

/// Checks that `ops` (any order, any mix of keys) is linearizable, key by key, on up to
/// [`CheckConfig::threads_max`] threads.
pub fn check_operations(ops: &[Operation], config: &CheckConfig) -> CheckReport {
    let started = Instant::now();
    let deadline = config
        .budget_time_max
        .and_then(|budget| started.checked_add(budget));

    let mut by_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let keys: Vec<(Key, Vec<Operation>)> = by_key
        .into_iter()
        .map(|(key, mut key_ops)| {
            // The search sorts events itself; this order is for readable reports.
            key_ops.sort_by_key(|op| (op.invoke_ns, op.id));
            (key, key_ops)
        })
        .collect();

    // Largest keys first so that one big key does not start last and run alone.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i].1.len()));

    let threads_available = thread::available_parallelism().map_or(1, |n| n.get());
    let threads_max = if config.threads_max == 0 {
        threads_available
    } else {
        config.threads_max
    };
    let threads = threads_max.min(keys.len()).max(1);

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<KeyVerdict>>> = Mutex::new(vec![None; keys.len()]);
    let work = || loop {
        let slot = next.fetch_add(1, Ordering::Relaxed);
        let Some(&index) = order.get(slot) else {
            break;
        };
        let (key, key_ops) = &keys[index];
        let verdict = check_key(key, key_ops, config, deadline);
        results.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(verdict);
    };
    if threads == 1 {
        work();
    } else {
        thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(work);
            }
        });
    }

    let keys = results
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .flatten()
        .collect();
    CheckReport {
        keys,
        elapsed: started.elapsed(),
    }
}

/// Checks the operations of a single key (all of `ops` must be on `key`), giving up at
/// `deadline`.
fn check_key(
    key: &[u8],
    ops: &[Operation],
    config: &CheckConfig,
    deadline: Option<Instant>,
) -> KeyVerdict {
    let started = Instant::now();
    let finish = |explored_states: u64, verdict: Verdict| KeyVerdict {
        key: key.to_vec(),
        ops_count: ops.len(),
        explored_states,
        elapsed: started.elapsed(),
        verdict,
    };

    let compiled = match compile(ops, |_| true, None) {
        Ok(compiled) => compiled,
        Err(malformed) => {
            let op = ops
                .get(malformed.source)
                .map_or(OpId(usize::MAX), |op| op.id);
            return finish(
                0,
                Verdict::Malformed {
                    key: key.to_vec(),
                    op,
                    reason: malformed.reason,
                },
            );
        }
    };
    let limits = Limits {
        states_max: config.budget_states_max,
        deadline,
    };
    let report = search(&compiled, &limits);
    let explored_states = report.explored_states;
    match report.result {
        SearchResult::Linearizable => finish(explored_states, Verdict::Linearizable),
        SearchResult::Exhausted(limit) => finish(
            explored_states,
            Verdict::BudgetExhausted {
                key: key.to_vec(),
                explored_states,
                limit,
            },
        ),
        SearchResult::NotLinearizable => {
            let violation = explain(key, ops, config, deadline, compiled, report);
            finish(
                explored_states,
                Verdict::NotLinearizable(Box::new(violation)),
            )
        }
    }
}

/// Builds the violation report: shrinks the history if allowed, then describes the longest
/// partial linearization of the (shrunk) history.
fn explain(
    key: &[u8],
    ops: &[Operation],
    config: &CheckConfig,
    deadline: Option<Instant>,
    full: Compiled,
    full_report: SearchReport,
) -> Violation {
    let mut evidence = (full, full_report.clone(), None);
    if config.minimize_states_max > 0 {
        let reduction = minimize::minimize(ops, config, deadline);
        let kept: Vec<bool> = {
            let mut kept = vec![false; ops.len()];
            for &i in &reduction.kept {
                kept[i] = true;
            }
            kept
        };
        if let Ok(compiled) = compile(ops, |i| kept[i], reduction.cut_ns) {
            let limits = Limits {
                states_max: config.budget_states_max,
                deadline,
            };
            let report = search(&compiled, &limits);
            // Only use the shrunk history if it is confirmed to fail on its own.
            if report.result == SearchResult::NotLinearizable {
                evidence = (compiled, report, reduction.cut_ns);
            }
        }
    }
    let (compiled, report, cut_ns) = evidence;

    let minimal_ops = compiled.ops.iter().map(|c| ops[c.source].clone()).collect();
    let mut state = ABSENT;
    let mut linearized_prefix = Vec::with_capacity(report.deepest.len());
    for &c in &report.deepest {
        // The prefix was valid during the search, so apply succeeds; keep the state otherwise.
        state = compiled.ops[c].step.apply(state).unwrap_or(state);
        linearized_prefix.push(LinearizedOp {
            op: ops[compiled.ops[c].source].clone(),
            value_after: compiled.value(state).map(<[u8]>::to_vec),
        });
    }
    Violation {
        key: key.to_vec(),
        key_ops: ops.to_vec(),
        minimal_ops,
        cut_ns,
        linearized_prefix,
        stuck: report.stuck.map(|c| ops[compiled.ops[c].source].clone()),
        stuck_value: compiled.value(state).map(<[u8]>::to_vec),
        explored_states: full_report.explored_states,
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {} is NOT linearizable ({} ops on the key, {} states explored)",
            format_bytes(&self.key),
            self.key_ops.len(),
            self.explored_states
        )?;
        match self.cut_ns {
            Some(cut) => writeln!(
                f,
                "  failing sub-history ({} ops; history cut at {}, ops completing later count as unknown):",
                self.minimal_ops.len(),
                format_ns(cut)
            )?,
            None => writeln!(f, "  failing sub-history ({} ops):", self.minimal_ops.len())?,
        }
        for op in &self.minimal_ops {
            let cut_note = if is_pending_at(op, self.cut_ns) {
                "  [pending at cut: unknown]"
            } else {
                ""
            };
            writeln!(f, "    {op}{cut_note}")?;
        }
        writeln!(
            f,
            "  longest linearizable prefix found ({} ops):",
            self.linearized_prefix.len()
        )?;
        for step in &self.linearized_prefix {
            writeln!(
                f,
                "    {}  => {}",
                step.op,
                format_value(step.value_after.as_deref())
            )?;
        }
        if let Some(stuck) = &self.stuck {
            writeln!(
                f,
                "  could not place before its completion, with register = {}:",
                format_value(self.stuck_value.as_deref())
            )?;
            writeln!(f, "    {stuck}")?;
        }
        Ok(())
    }
}

/// Whether `op` counts as unknown in a history cut at `cut_ns`.
fn is_pending_at(op: &Operation, cut_ns: Option<u64>) -> bool {
    matches!(op.outcome, crate::history::Outcome::Ok(_)) && search::pending_at_cut(op, cut_ns)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => writeln!(f, "linearizable"),
            Verdict::NotLinearizable(violation) => write!(f, "{violation}"),
            Verdict::BudgetExhausted {
                key,
                explored_states,
                limit,
            } => writeln!(
                f,
                "key {} UNVERIFIED: {} budget exhausted after {} states (counts as a failure)",
                format_bytes(key),
                match limit {
                    BudgetLimit::States => "states",
                    BudgetLimit::Time => "time",
                },
                explored_states
            ),
            Verdict::Malformed { key, op, reason } => writeln!(
                f,
                "key {} MALFORMED history at {op}: {reason}",
                format_bytes(key)
            ),
        }
    }
}

impl fmt::Display for CheckReport {
    /// A one-line summary, one line per key, then the details of every failing key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        writeln!(
            f,
            "linearizability: {} keys, {} failed, {:?}",
            self.keys.len(),
            failed,
            self.elapsed
        )?;
        for key in &self.keys {
            let status = match &key.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable(_) => "NOT LINEARIZABLE",
                Verdict::BudgetExhausted { .. } => "BUDGET EXHAUSTED",
                Verdict::Malformed { .. } => "MALFORMED",
            };
            writeln!(
                f,
                "  key {}: {status} ({} ops, {} states, {:?})",
                format_bytes(&key.key),
                key.ops_count,
                key.explored_states,
                key.elapsed
            )?;
        }
        for key in self.failures() {
            write!(f, "{}", key.verdict)?;
        }
        Ok(())
    }
}
