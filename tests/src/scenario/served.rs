//! What the cluster served during a scenario, against the minimum the scenario requires.
//!
//! A scenario must not pass when nearly every client operation failed: a cluster that answered
//! nothing during the faults would otherwise make an empty, trivially linearizable history.
//! [`Served::count`] counts, from the history, the workload's successful operations and its
//! acknowledged writes (a write or delete answered ok, a compare-and-swap that swapped), in
//! total and entirely inside fault windows (invoked after a fault was injected and completed
//! before it was healed). [`Minimums::check`] names every count below its minimum.
//!
//! Minimums are given for [`DEFAULT_FAULT_TIME`](super::DEFAULT_FAULT_TIME) of faults and
//! scale linearly with the fault time actually used ([`Minimums::scaled`]).

use std::fmt;
use std::time::Duration;

use crate::history::{OpKind, Operation, Outcome, Ret};
use crate::nemesis::{FaultWindow, PROBE_PROCESS_BASE};

/// Operations of the workload that completed successfully.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Operations answered ok (reads, stale reads, writes, compare-and-swaps of either
    /// result, deletes).
    pub ok: u64,
    /// Writes that took effect and were acknowledged: writes and deletes answered ok,
    /// compare-and-swaps that swapped.
    pub acked_writes: u64,
    /// Of `ok`, those invoked and completed inside one fault window.
    pub ok_in_faults: u64,
    /// Of `acked_writes`, those invoked and completed inside one fault window.
    pub acked_writes_in_faults: u64,
}

impl Served {
    /// Counts the workload's operations in `ops` (the nemesis' probes and the final reads,
    /// whose process ids start at [`PROBE_PROCESS_BASE`], are not the workload's).
    pub fn count(ops: &[Operation], windows: &[FaultWindow]) -> Served {
        let mut served = Served::default();
        for op in ops.iter().filter(|op| op.process < PROBE_PROCESS_BASE) {
            let Outcome::Ok(ret) = &op.outcome else {
                continue;
            };
            let acked_write = match (&op.kind, ret) {
                (OpKind::Write(_) | OpKind::Delete, _) => true,
                (OpKind::Cas { .. }, Ret::Swapped(swapped)) => *swapped,
                _ => false,
            };
            let in_faults = op
                .complete_ns
                .is_some_and(|done| windows.iter().any(|w| w.contains(op.invoke_ns, done)));
            served.ok += 1;
            served.acked_writes += u64::from(acked_write);
            served.ok_in_faults += u64::from(in_faults);
            served.acked_writes_in_faults += u64::from(acked_write && in_faults);
        }
        served
    }
}

/// The least a scenario must serve; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Minimums {
    /// Least [`Served::ok`].
    pub ok: u64,
    /// Least [`Served::acked_writes`].
    pub acked_writes: u64,
    /// Least [`Served::ok_in_faults`].
    pub ok_in_faults: u64,
    /// Least [`Served::acked_writes_in_faults`].
    pub acked_writes_in_faults: u64,
}

impl Minimums {
    /// These minimums (meant for `reference` of faults) scaled to `fault_time`, rounding down
    /// but keeping every non-zero minimum at one at least.
    pub fn scaled(&self, reference: Duration, fault_time: Duration) -> Minimums {
        let ratio = fault_time.as_secs_f64() / reference.as_secs_f64().max(f64::EPSILON);
        let scale = |min: u64| {
            if min == 0 {
                0
            } else {
                ((min as f64 * ratio) as u64).max(1)
            }
        };
        Minimums {
            ok: scale(self.ok),
            acked_writes: scale(self.acked_writes),
            ok_in_faults: scale(self.ok_in_faults),
            acked_writes_in_faults: scale(self.acked_writes_in_faults),
        }
    }

    /// One message per count of `served` below its minimum; empty if every minimum is met.
    pub fn check(&self, served: &Served) -> Vec<String> {
        [
            ("successful operations", served.ok, self.ok),
            (
                "acknowledged writes",
                served.acked_writes,
                self.acked_writes,
            ),
            (
                "successful operations during faults",
                served.ok_in_faults,
                self.ok_in_faults,
            ),
            (
                "acknowledged writes during faults",
                served.acked_writes_in_faults,
                self.acked_writes_in_faults,
            ),
        ]
        .into_iter()
        .filter(|(_, got, min)| got < min)
        .map(|(what, got, min)| {
            format!("too little served: {got} {what}, the scenario requires at least {min}")
        })
        .collect()
    }
}

/// Both, for the summary: `ok 5544 (min 1500), ...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedReport {
    /// What was served.
    pub served: Served,
    /// What was required (already scaled to the fault time).
    pub minimums: Minimums,
}

impl fmt::Display for ServedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, m) = (&self.served, &self.minimums);
        write!(
            f,
            "served ok {} (min {}), acknowledged writes {} (min {}); inside fault windows: ok {} \
             (min {}), acknowledged writes {} (min {})",
            s.ok,
            m.ok,
            s.acked_writes,
            m.acked_writes,
            s.ok_in_faults,
            m.ok_in_faults,
            s.acked_writes_in_faults,
            m.acked_writes_in_faults
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpId;

    fn op(process: u64, kind: OpKind, span: (u64, u64), outcome: Outcome) -> Operation {
        Operation {
            id: OpId(0),
            process,
            key: b"k".to_vec(),
            kind,
            invoke_ns: span.0,
            complete_ns: (outcome != Outcome::Unknown).then_some(span.1),
            outcome,
        }
    }

    fn write(process: u64, span: (u64, u64), outcome: Outcome) -> Operation {
        op(process, OpKind::Write(b"v".to_vec()), span, outcome)
    }

    fn cas(span: (u64, u64), swapped: bool) -> Operation {
        let kind = OpKind::Cas {
            expected: None,
            new: b"v".to_vec(),
        };
        op(1, kind, span, Outcome::Ok(Ret::Swapped(swapped)))
    }

    fn read(span: (u64, u64), outcome: Outcome) -> Operation {
        op(2, OpKind::Read, span, outcome)
    }

    const WINDOW: FaultWindow = FaultWindow {
        start_ns: 100,
        end_ns: 200,
    };

    #[test]
    fn counts_successes_and_acknowledged_writes_inside_and_outside_faults() {
        let ops = vec![
            write(1, (10, 20), Outcome::Ok(Ret::Done)),
            write(1, (110, 120), Outcome::Ok(Ret::Done)),
            write(1, (130, 140), Outcome::Fail),
            write(1, (150, 160), Outcome::Unknown),
            cas((120, 130), true),
            cas((120, 130), false), // ok, but nothing was written
            op(3, OpKind::Delete, (300, 310), Outcome::Ok(Ret::Done)),
            read((90, 110), Outcome::Ok(Ret::Value(None))), // straddles the injection
            read((150, 199), Outcome::Ok(Ret::Value(None))),
            read((190, 210), Outcome::Ok(Ret::Value(None))), // straddles the heal
            // The nemesis' probes and the final reads are not the workload's.
            write(PROBE_PROCESS_BASE, (110, 120), Outcome::Ok(Ret::Done)),
            read((150, 160), Outcome::Fail),
        ];
        let served = Served::count(&ops, &[WINDOW]);
        assert_eq!(
            served,
            Served {
                ok: 8,
                acked_writes: 4,
                ok_in_faults: 4,
                acked_writes_in_faults: 2,
            }
        );
    }

    fn minimums() -> Minimums {
        Minimums {
            ok: 100,
            acked_writes: 40,
            ok_in_faults: 20,
            acked_writes_in_faults: 5,
        }
    }

    #[test]
    fn a_history_with_too_few_successes_fails_the_minimum_check() {
        // Plenty of operations, nearly all failed: the kind of run the minimums exist for.
        let mut ops: Vec<Operation> = (0..1000)
            .map(|i| write(1, (i, i + 1), Outcome::Fail))
            .collect();
        ops.extend((0..30).map(|i| read((i, i + 1), Outcome::Ok(Ret::Value(None)))));
        let problems = minimums().check(&Served::count(&ops, &[WINDOW]));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].contains("30 successful operations")
                && problems[0].contains("at least 100"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("0 acknowledged writes"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_cluster_that_served_only_outside_the_faults_fails_the_check() {
        // Many successes before and after the fault, none while it was in force.
        let ops: Vec<Operation> = (0..200)
            .map(|i| {
                let at = if i < 100 { i / 2 } else { 200 + i };
                write(1, (at, at + 1), Outcome::Ok(Ret::Done))
            })
            .collect();
        let served = Served::count(&ops, &[WINDOW]);
        assert_eq!((served.ok, served.acked_writes), (200, 200));
        let problems = minimums().check(&served);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().all(|p| p.contains("during faults")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_healthy_history_passes() {
        let ops: Vec<Operation> = (0..200)
            .map(|i| write(1, (i, i + 1), Outcome::Ok(Ret::Done)))
            .collect();
        assert!(minimums().check(&Served::count(&ops, &[WINDOW])).is_empty());
    }

    #[test]
    fn minimums_scale_with_the_fault_time() {
        let twenty = Duration::from_secs(20);
        let m = minimums().scaled(twenty, Duration::from_secs(40));
        assert_eq!((m.ok, m.acked_writes_in_faults), (200, 10));
        let m = minimums().scaled(twenty, Duration::from_secs(1));
        assert_eq!((m.ok, m.acked_writes, m.acked_writes_in_faults), (5, 2, 1));
        assert_eq!(
            Minimums::default().scaled(twenty, twenty),
            Minimums::default()
        );
    }
}
