//! Shrinking a non-linearizable key history to a small sub-history that still fails.
//!
//! Only two reductions are used, because both preserve the meaning of a failure (if the
//! reduced history is not linearizable, neither is the original):
//! 1. Cutting the history at a time T (ops invoked later dropped, ops completing later treated
//!    as unknown): every linearization of the full history restricts to one of the prefix.
//!    Non-linearizability is monotone in T, so the shortest failing prefix is found by
//!    bisection over completion times.
//! 2. Dropping operations that cannot change the register (ok reads, ok CAS that did not swap):
//!    removing them from a linearization of the original leaves a valid linearization.
//!
//! Removing writes is *not* sound (a read of the removed value would become the "violation"),
//! so writes are always kept.

use std::time::Instant;

use super::search::{compile, is_relevant, pending_at_cut, search, Limits, SearchResult};
use super::CheckConfig;
use crate::history::{OpKind, Operation, Outcome, Ret};

/// Upper bound on re-checks during one minimization, on top of the states budget.
const CHECKS_MAX: u32 = 512;

/// A failing sub-history: `ops[i]` for each `i` in `kept`, cut at `cut_ns`.
#[derive(Clone, Debug)]
pub(crate) struct Reduction {
    pub(crate) kept: Vec<usize>,
    pub(crate) cut_ns: Option<u64>,
}

struct Prober<'a> {
    ops: &'a [Operation],
    states_left: u64,
    states_per_check_max: u64,
    checks_left: u32,
    deadline: Option<Instant>,
}

impl Prober<'_> {
    fn exhausted(&self) -> bool {
        self.states_left == 0
            || self.checks_left == 0
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Whether the sub-history is *proven* non-linearizable. Running out of budget counts as
    /// "not proven", which only makes the reduction less aggressive, never wrong.
    fn fails(&mut self, include: &[bool], cut_ns: Option<u64>) -> bool {
        if self.exhausted() {
            return false;
        }
        self.checks_left -= 1;
        let Ok(compiled) = compile(self.ops, |i| include[i], cut_ns) else {
            return false;
        };
        let limits = Limits {
            states_max: self.states_per_check_max.min(self.states_left),
            deadline: self.deadline,
        };
        let report = search(&compiled, &limits);
        self.states_left = self.states_left.saturating_sub(report.explored_states);
        report.result == SearchResult::NotLinearizable
    }
}

/// Whether removing `op` from a history cannot make it less linearizable.
fn is_effect_free(op: &Operation, cut_ns: Option<u64>) -> bool {
    if pending_at_cut(op, cut_ns) {
        return false;
    }
    matches!(
        (&op.kind, &op.outcome),
        (OpKind::Read, Outcome::Ok(Ret::Value(_)))
            | (OpKind::Cas { .. }, Outcome::Ok(Ret::Swapped(false)))
    )
}

/// Shrinks `ops` (all operations of one key, known to be non-linearizable).
pub(crate) fn minimize(
    ops: &[Operation],
    config: &CheckConfig,
    deadline: Option<Instant>,
) -> Reduction {
    let everything = Reduction {
        kept: (0..ops.len())
            .filter(|&i| is_relevant(&ops[i], None))
            .collect(),
        cut_ns: None,
    };
    let mut prober = Prober {
        ops,
        states_left: config.minimize_states_max,
        states_per_check_max: config.budget_states_max,
        checks_left: CHECKS_MAX,
        deadline,
    };
    if prober.exhausted() {
        return everything;
    }

    // 1. Shortest failing prefix. Cutting at the last ok completion is equivalent to the full
    //    history (only unknown ops, unconstrained, come later), so `cuts.len() - 1` is known to
    //    fail and bisection keeps `high` failing.
    let all = vec![true; ops.len()];
    let mut cuts: Vec<u64> = ops
        .iter()
        .filter(|op| op.kind != OpKind::StaleRead && matches!(op.outcome, Outcome::Ok(_)))
        .filter_map(|op| op.complete_ns)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let Some(mut high) = cuts.len().checked_sub(1) else {
        return everything;
    };
    let mut low = 0;
    while low < high {
        let mid = low + (high - low) / 2;
        if prober.fails(&all, Some(cuts[mid])) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let cut_ns = Some(cuts[high]);

    // 2. Drop effect-free operations, in halving chunks (a simple ddmin): often a single
    //    check removes every read but the offending one.
    let mut include: Vec<bool> = ops.iter().map(|op| is_relevant(op, cut_ns)).collect();
    let mut removable: Vec<usize> = (0..ops.len())
        .filter(|&i| include[i] && is_effect_free(&ops[i], cut_ns))
        .collect();
    let mut chunk = removable.len();
    'shrink: while chunk > 0 && !removable.is_empty() {
        let mut start = 0;
        while start < removable.len() {
            if prober.exhausted() {
                break 'shrink;
            }
            let end = (start + chunk).min(removable.len());
            for &i in &removable[start..end] {
                include[i] = false;
            }
            if prober.fails(&include, cut_ns) {
                removable.drain(start..end);
            } else {
                for &i in &removable[start..end] {
                    include[i] = true;
                }
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }

    Reduction {
        kept: (0..ops.len()).filter(|&i| include[i]).collect(),
        cut_ns,
    }
}
