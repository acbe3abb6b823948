//! Checker tests: hand-written histories with exact verdicts, generated linearizable histories,
//! and mutated (provably non-linearizable) ones.

use std::time::{Duration, Instant};

use super::generator::{generate, key_name, mutate_read, GenConfig};
use super::*;
use crate::history::{OpKind, Outcome, Ret};

/// Builds histories with explicit timestamps (nanoseconds) on key "k" unless told otherwise.
struct Builder {
    ops: Vec<Operation>,
    key: Key,
}

impl Builder {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            key: b"k".to_vec(),
        }
    }

    fn on(&mut self, key: &str) -> &mut Self {
        self.key = key.as_bytes().to_vec();
        self
    }

    fn push(
        &mut self,
        process: u64,
        invoke_ns: u64,
        complete_ns: Option<u64>,
        kind: OpKind,
        outcome: Outcome,
    ) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            id,
            process,
            key: self.key.clone(),
            kind,
            invoke_ns,
            complete_ns,
            outcome,
        });
        id
    }

    fn write(&mut self, p: u64, invoke_ns: u64, complete_ns: u64, v: &str) -> OpId {
        self.push(
            p,
            invoke_ns,
            Some(complete_ns),
            OpKind::Write(v.into()),
            Outcome::Ok(Ret::Done),
        )
    }

    fn read(&mut self, p: u64, invoke_ns: u64, complete_ns: u64, v: Option<&str>) -> OpId {
        self.push(
            p,
            invoke_ns,
            Some(complete_ns),
            OpKind::Read,
            Outcome::Ok(Ret::Value(v.map(Into::into))),
        )
    }

    fn cas(
        &mut self,
        p: u64,
        invoke_ns: u64,
        complete_ns: u64,
        expected: Option<&str>,
        new: &str,
        swapped: bool,
    ) -> OpId {
        self.push(
            p,
            invoke_ns,
            Some(complete_ns),
            cas_kind(expected, new),
            Outcome::Ok(Ret::Swapped(swapped)),
        )
    }

    fn delete(&mut self, p: u64, invoke_ns: u64, complete_ns: u64) -> OpId {
        self.push(
            p,
            invoke_ns,
            Some(complete_ns),
            OpKind::Delete,
            Outcome::Ok(Ret::Done),
        )
    }

    fn unknown(&mut self, p: u64, invoke_ns: u64, kind: OpKind) -> OpId {
        self.push(p, invoke_ns, None, kind, Outcome::Unknown)
    }

    fn failed(&mut self, p: u64, invoke_ns: u64, complete_ns: u64, kind: OpKind) -> OpId {
        self.push(p, invoke_ns, Some(complete_ns), kind, Outcome::Fail)
    }
}

fn cas_kind(expected: Option<&str>, new: &str) -> OpKind {
    OpKind::Cas {
        expected: expected.map(Into::into),
        new: new.into(),
    }
}

fn write_kind(v: &str) -> OpKind {
    OpKind::Write(v.into())
}

fn config() -> CheckConfig {
    CheckConfig {
        threads_max: 2,
        ..CheckConfig::default()
    }
}

fn assert_linearizable(ops: &[Operation]) {
    let report = check_operations(ops, &config());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.verdict(), Verdict::Linearizable, "{report}");
}

fn expect_violation(ops: &[Operation]) -> Violation {
    let report = check_operations(ops, &config());
    assert!(!report.is_ok());
    match report.verdict() {
        Verdict::NotLinearizable(violation) => *violation,
        other => panic!("expected NotLinearizable, got {other}\n{report}"),
    }
}

fn ids(ops: &[Operation]) -> Vec<OpId> {
    ops.iter().map(|op| op.id).collect()
}

// ---- linearizable histories -------------------------------------------------------------

#[test]
fn sequential_history_is_linearizable() {
    let mut h = Builder::new();
    h.read(1, 0, 5, None);
    h.write(1, 10, 20, "a");
    h.read(2, 30, 40, Some("a"));
    h.write(2, 50, 60, "b");
    h.read(1, 70, 80, Some("b"));
    h.delete(3, 90, 100);
    h.read(1, 110, 120, None);
    h.write(3, 130, 140, "c");
    h.read(2, 150, 160, Some("c"));
    assert_linearizable(&h.ops);
}

#[test]
fn empty_history_is_linearizable() {
    let report = check_operations(&[], &config());
    assert!(report.is_ok());
    assert!(report.keys.is_empty());
    assert_eq!(report.verdict(), Verdict::Linearizable);
}

#[test]
fn overlapping_writes_may_be_read_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        let mut h = Builder::new();
        h.write(1, 0, 100, "a");
        h.write(2, 10, 90, "b");
        // During the overlap a reader may see one, then the other.
        h.read(3, 20, 30, Some(first));
        h.read(3, 40, 50, Some(second));
        // After both complete, the later-linearized one stays.
        h.read(4, 110, 120, Some(second));
        assert_linearizable(&h.ops);
    }
}

#[test]
fn reads_concurrent_with_a_write_see_old_then_new() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.write(2, 20, 100, "b");
    h.read(3, 30, 40, Some("a"));
    h.read(4, 35, 60, Some("b"));
    h.read(3, 50, 70, Some("b"));
    h.read(3, 110, 120, Some("b"));
    assert_linearizable(&h.ops);
}

#[test]
fn unknown_write_that_later_becomes_visible() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.unknown(2, 20, write_kind("x"));
    h.read(3, 30, 40, Some("a"));
    h.read(3, 50, 60, Some("x"));
    h.read(1, 1_000, 1_010, Some("x"));
    assert_linearizable(&h.ops);
}

#[test]
fn unknown_write_that_never_appears() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.unknown(2, 20, write_kind("x"));
    for i in 0..20 {
        h.read(3, 30 + 20 * i, 40 + 20 * i, Some("a"));
    }
    assert_linearizable(&h.ops);
}

#[test]
fn unknown_delete_and_cas_may_or_may_not_apply() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.unknown(2, 20, OpKind::Delete);
    h.unknown(3, 25, cas_kind(Some("a"), "c"));
    h.read(4, 30, 40, Some("a"));
    h.read(4, 50, 60, Some("c"));
    h.read(4, 70, 80, None);
    assert_linearizable(&h.ops);
}

#[test]
fn cas_chain_is_linearizable() {
    let mut h = Builder::new();
    h.cas(1, 0, 10, None, "a", true);
    h.cas(2, 20, 30, None, "z", false);
    h.cas(1, 40, 50, Some("a"), "b", true);
    h.cas(2, 60, 70, Some("a"), "c", false);
    h.read(3, 80, 90, Some("b"));
    // Two concurrent CAS from "b": exactly one wins.
    h.cas(1, 100, 150, Some("b"), "d", false);
    h.cas(2, 110, 140, Some("b"), "e", true);
    h.read(3, 160, 170, Some("e"));
    h.delete(3, 180, 190);
    h.cas(1, 200, 210, None, "f", true);
    h.read(2, 220, 230, Some("f"));
    assert_linearizable(&h.ops);
}

#[test]
fn failed_ops_and_stale_reads_are_ignored() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.failed(2, 20, 30, write_kind("never"));
    h.failed(2, 35, 45, OpKind::Delete);
    h.push(
        3,
        40,
        Some(50),
        OpKind::StaleRead,
        Outcome::Ok(Ret::Value(Some(b"garbage".to_vec()))),
    );
    h.read(3, 60, 70, Some("a"));
    assert_linearizable(&h.ops);
}

#[test]
fn keys_are_independent() {
    let mut h = Builder::new();
    // Interleaved in time, but each key is its own register.
    h.on("x").write(1, 0, 10, "a");
    h.on("y").write(2, 5, 15, "b");
    h.on("x").read(3, 20, 30, Some("a"));
    h.on("y").read(4, 20, 30, Some("b"));
    h.on("z").read(5, 25, 35, None);
    let report = check_operations(&h.ops, &config());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys.len(), 3);
    assert_eq!(report.keys[0].key, b"x".to_vec());
    assert_eq!(report.keys[0].ops_count, 2);
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    // Invoked at the same nanosecond the write completed: may be ordered either way.
    h.read(2, 10, 20, None);
    assert_linearizable(&h.ops);
}

// ---- non-linearizable histories ----------------------------------------------------------

#[test]
fn stale_read_after_newer_write_completed() {
    let mut h = Builder::new();
    let wa = h.write(1, 0, 10, "a");
    let wb = h.write(2, 20, 30, "b");
    let r = h.read(3, 40, 50, Some("a"));
    let v = expect_violation(&h.ops);
    assert_eq!(v.key, b"k".to_vec());
    assert_eq!(ids(&v.minimal_ops), vec![wa, wb, r]);
    let prefix: Vec<OpId> = v.linearized_prefix.iter().map(|s| s.op.id).collect();
    assert_eq!(prefix, vec![wa, wb]);
    assert_eq!(v.linearized_prefix[1].value_after, Some(b"b".to_vec()));
    assert_eq!(v.stuck.as_ref().map(|op| op.id), Some(r));
    assert_eq!(v.stuck_value, Some(b"b".to_vec()));
}

#[test]
fn lost_write_is_detected_and_shrunk() {
    let mut h = Builder::new();
    let wa = h.write(1, 0, 10, "a");
    let wb = h.write(2, 20, 30, "b");
    let first_read = h.read(3, 40, 50, Some("a"));
    for i in 1..30 {
        h.read(3 + i % 3, 40 + 20 * i, 50 + 20 * i, Some("a"));
    }
    h.write(1, 1_000, 1_010, "c");
    h.read(2, 1_020, 1_030, Some("c"));
    let v = expect_violation(&h.ops);
    assert_eq!(v.key_ops.len(), 34);
    // Shortest failing prefix: cut right after the first stale read completed.
    assert_eq!(ids(&v.minimal_ops), vec![wa, wb, first_read]);
    assert_eq!(v.cut_ns, Some(50));
}

#[test]
fn cas_succeeding_twice_from_the_same_value() {
    let mut h = Builder::new();
    let w = h.write(1, 0, 10, "a");
    let c1 = h.cas(2, 20, 40, Some("a"), "b", true);
    let c2 = h.cas(3, 25, 45, Some("a"), "c", true);
    let v = expect_violation(&h.ops);
    assert_eq!(ids(&v.minimal_ops), vec![w, c1, c2]);
    assert_eq!(v.linearized_prefix.len(), 2);
}

#[test]
fn cas_reporting_no_swap_although_the_value_matched() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    let c = h.cas(2, 20, 30, Some("a"), "b", false);
    let v = expect_violation(&h.ops);
    assert_eq!(v.stuck.map(|op| op.id), Some(c));
}

#[test]
fn read_of_a_value_never_written() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    let r = h.read(2, 5, 20, Some("zzz"));
    let v = expect_violation(&h.ops);
    assert_eq!(v.stuck.map(|op| op.id), Some(r));
}

#[test]
fn read_of_absent_after_the_delete_was_overwritten() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.delete(2, 20, 30);
    h.read(3, 35, 38, None);
    h.write(1, 40, 50, "b");
    let r = h.read(3, 60, 70, None);
    let v = expect_violation(&h.ops);
    assert_eq!(v.stuck.map(|op| op.id), Some(r));
    // The read of absent between the delete and the rewrite is fine and gets shrunk away.
    assert_eq!(v.minimal_ops.len(), 4);
}

#[test]
fn failed_write_must_not_become_visible() {
    let mut h = Builder::new();
    h.failed(1, 0, 10, write_kind("z"));
    h.read(2, 20, 30, Some("z"));
    expect_violation(&h.ops);
}

#[test]
fn read_from_the_future() {
    let mut h = Builder::new();
    h.read(1, 0, 10, Some("a"));
    h.write(2, 20, 30, "a");
    expect_violation(&h.ops);
}

#[test]
fn unknown_write_cannot_be_seen_before_its_invocation() {
    let mut h = Builder::new();
    h.read(1, 0, 10, Some("x"));
    h.unknown(2, 20, write_kind("x"));
    expect_violation(&h.ops);
}

#[test]
fn value_seen_once_cannot_be_replaced_by_an_older_one() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.unknown(2, 20, write_kind("x"));
    h.read(3, 30, 40, Some("x"));
    h.read(3, 50, 60, Some("a"));
    expect_violation(&h.ops);
}

#[test]
fn non_monotonic_reads_during_a_long_write() {
    let mut h = Builder::new();
    h.write(1, 0, 10, "a");
    h.write(2, 20, 100, "b");
    h.read(3, 30, 40, Some("b"));
    h.read(3, 50, 60, Some("a"));
    expect_violation(&h.ops);
}

#[test]
fn one_bad_key_fails_the_whole_history() {
    let mut h = Builder::new();
    h.on("good").write(1, 0, 10, "a");
    h.on("good").read(2, 20, 30, Some("a"));
    h.on("bad").write(1, 0, 10, "a");
    h.on("bad").write(1, 15, 18, "b");
    h.on("bad").read(2, 20, 30, Some("a"));
    h.on("other").read(3, 0, 5, None);
    let report = check_operations(&h.ops, &config());
    assert!(!report.is_ok());
    assert_eq!(report.failures().count(), 1);
    assert_eq!(report.verdict_for(b"good"), Some(&Verdict::Linearizable));
    assert_eq!(report.verdict_for(b"other"), Some(&Verdict::Linearizable));
    match report.verdict() {
        Verdict::NotLinearizable(v) => assert_eq!(v.key, b"bad".to_vec()),
        other => panic!("unexpected {other}"),
    }

    // The readable report names the key, the failing ops and the stuck read.
    let text = report.to_string();
    assert!(text.contains("key \"bad\" is NOT linearizable"), "{text}");
    assert!(text.contains("read -> ok \"a\""), "{text}");
    assert!(text.contains("could not place"), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.txt");
    report.write_to_file(&path).expect("write report");
    let written = std::fs::read_to_string(&path).expect("read report");
    assert!(
        written.contains("all 3 operations on key \"bad\""),
        "{written}"
    );
}

#[test]
fn malformed_result_is_a_failure() {
    let mut h = Builder::new();
    let bad = h.push(
        1,
        0,
        Some(10),
        write_kind("a"),
        Outcome::Ok(Ret::Value(None)),
    );
    let report = check_operations(&h.ops, &config());
    assert!(!report.is_ok());
    match report.verdict() {
        Verdict::Malformed { key, op, .. } => {
            assert_eq!(key, b"k".to_vec());
            assert_eq!(op, bad);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn tiny_budgets_are_failures_not_passes() {
    let ops = generate(&GenConfig::small(7));
    let tiny_states = CheckConfig {
        budget_states_max: 10,
        ..config()
    };
    let report = check_operations(&ops, &tiny_states);
    assert!(!report.is_ok());
    assert_eq!(report.keys.len(), 3);
    for key in &report.keys {
        assert_eq!(
            key.verdict,
            Verdict::BudgetExhausted {
                key: key.key.clone(),
                explored_states: 10,
                limit: BudgetLimit::States,
            }
        );
    }
    assert!(matches!(
        report.verdict(),
        Verdict::BudgetExhausted {
            limit: BudgetLimit::States,
            ..
        }
    ));

    let no_time = CheckConfig {
        budget_time_max: Some(Duration::ZERO),
        ..config()
    };
    let report = check_operations(&ops, &no_time);
    assert!(!report.is_ok());
    assert!(report.keys.iter().all(|k| matches!(
        k.verdict,
        Verdict::BudgetExhausted {
            limit: BudgetLimit::Time,
            ..
        }
    )));
}

// ---- generated histories -------------------------------------------------------------------

#[test]
fn generated_histories_are_linearizable() {
    for seed in 0..40 {
        let mut gen = GenConfig::small(seed);
        // Alternate unique values with a tiny value space (many equivalent orders).
        if seed % 2 == 1 {
            gen.value_space = Some(3);
        }
        let ops = generate(&gen);
        let report = check_operations(&ops, &config());
        assert!(report.is_ok(), "seed {seed}: {report}");
    }
}

#[test]
fn generated_histories_with_many_unknowns_are_linearizable() {
    for seed in 100..115 {
        let gen = GenConfig {
            unknown_per_mille: 150,
            ops: 200,
            value_space: if seed % 2 == 0 { None } else { Some(4) },
            ..GenConfig::small(seed)
        };
        let ops = generate(&gen);
        let report = check_operations(&ops, &config());
        assert!(report.is_ok(), "seed {seed}: {report}");
    }
}

#[test]
fn generated_large_history_is_linearizable() {
    let gen = GenConfig {
        seed: 42,
        ops: 10_000,
        keys: 10,
        processes: 10,
        unknown_per_mille: 10,
        fail_per_mille: 10,
        value_space: None,
        window_ns_max: 1_000,
    };
    let ops = generate(&gen);
    let started = Instant::now();
    let report = check_operations(&ops, &config());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys.len(), 10);
    eprintln!(
        "10k ops / 10 keys / 10 processes checked in {:?}",
        started.elapsed()
    );
}

#[test]
fn mutated_generated_histories_are_not_linearizable() {
    let mut mutated_count = 0;
    for seed in 0..40 {
        let mut ops = generate(&GenConfig::small(seed));
        let Some(mutation) = mutate_read(&mut ops, seed) else {
            continue;
        };
        mutated_count += 1;
        let report = check_operations(&ops, &config());
        assert!(!report.is_ok(), "seed {seed}: {mutation:?} accepted");
        for key in &report.keys {
            if key.key != mutation.key {
                assert_eq!(key.verdict, Verdict::Linearizable, "seed {seed}: {report}");
                continue;
            }
            let Verdict::NotLinearizable(violation) = &key.verdict else {
                panic!("seed {seed}: {mutation:?}: {report}");
            };
            // Without the mutated read the history is linearizable, so every failing
            // sub-history must contain it.
            assert!(
                violation.minimal_ops.iter().any(|op| op.id == mutation.op),
                "seed {seed}: {mutation:?}: {violation}"
            );
            // The shrunk history is small and fails on its own.
            assert!(violation.minimal_ops.len() < violation.key_ops.len());
            let recheck = check_operations(&violation_as_history(violation), &config());
            assert!(
                matches!(recheck.verdict(), Verdict::NotLinearizable(_)),
                "seed {seed}: shrunk history passes: {violation}"
            );
        }
    }
    assert!(mutated_count >= 30, "only {mutated_count} seeds mutated");
}

/// The shrunk sub-history as a standalone history (ops pending at the cut become unknown).
fn violation_as_history(violation: &Violation) -> Vec<Operation> {
    violation
        .minimal_ops
        .iter()
        .cloned()
        .map(|mut op| {
            if is_pending_at(&op, violation.cut_ns) {
                op.outcome = Outcome::Unknown;
                op.complete_ns = None;
            }
            op
        })
        .collect()
}

#[test]
fn generator_mutation_only_changes_one_read() {
    let original = generate(&GenConfig::small(3));
    let mut mutated = original.clone();
    let mutation = mutate_read(&mut mutated, 3).expect("a mutable read");
    let changed: Vec<OpId> = original
        .iter()
        .zip(&mutated)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.id)
        .collect();
    assert_eq!(changed, vec![mutation.op]);
    assert_eq!(
        mutated[mutation.op.0].outcome,
        Outcome::Ok(Ret::Value(mutation.to.clone()))
    );
    assert_eq!(mutated[mutation.op.0].key, mutation.key);
    assert!(key_name(0).starts_with(b"key"));
}
