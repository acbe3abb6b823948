//! Seeded generator of register histories with a known linearization, and a mutation that
//! provably breaks linearizability (test-only).
//!
//! Operations are generated in their true linearization order: operation `s` takes effect at
//! time `lp` (strictly increasing), and its recorded window [invoke, complete] is placed randomly
//! around `lp` while keeping each simulated process sequential. The recorded results come from
//! a sequential model, so every generated history is linearizable by construction.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::history::{Key, OpId, OpKind, Operation, Outcome, ProcessId, Ret, Value};

/// Shape of a generated history.
#[derive(Clone, Debug)]
pub(crate) struct GenConfig {
    pub(crate) seed: u64,
    pub(crate) ops: usize,
    pub(crate) keys: usize,
    pub(crate) processes: u64,
    /// Probability (per mille) that an operation ends `Unknown` (then it takes effect with
    /// probability 1/2).
    pub(crate) unknown_per_mille: u32,
    /// Probability (per mille) that an operation ends `Fail` (never takes effect).
    pub(crate) fail_per_mille: u32,
    /// `None`: every written value is unique. `Some(n)`: values drawn from n candidates, which
    /// makes many different orders produce the same state.
    pub(crate) value_space: Option<u32>,
    /// Maximum distance between an operation's window ends and its linearization point.
    pub(crate) window_ns_max: u64,
}

impl GenConfig {
    pub(crate) fn small(seed: u64) -> Self {
        Self {
            seed,
            ops: 300,
            keys: 3,
            processes: 5,
            unknown_per_mille: 30,
            fail_per_mille: 20,
            value_space: None,
            window_ns_max: 400,
        }
    }
}

pub(crate) fn key_name(index: usize) -> Key {
    format!("key{index}").into_bytes()
}

/// Generates a linearizable history; ops are returned in invocation order with ids matching.
pub(crate) fn generate(config: &GenConfig) -> Vec<Operation> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let processes = config.processes.max(1);
    let window_ns_max = config.window_ns_max.max(1);
    // Average gap between linearization points such that ~`processes` windows overlap.
    let gap_ns_max = (2 * window_ns_max / processes).max(1);
    let mut free_at_ns: Vec<u64> = vec![0; processes as usize];
    let mut last_lp_ns = 0u64;
    let mut state: Vec<Option<Value>> = vec![None; config.keys.max(1)];
    let mut written: Vec<Vec<Value>> = vec![Vec::new(); config.keys.max(1)];
    let mut ops = Vec::with_capacity(config.ops);

    for s in 0..config.ops {
        let process: ProcessId = rng.random_range(0..processes);
        let free = free_at_ns[process as usize];
        let lp_ns = (last_lp_ns + rng.random_range(1..=gap_ns_max)).max(free + 1);
        let invoke_ns = lp_ns - rng.random_range(1..=(lp_ns - free).min(window_ns_max));
        let complete_ns = lp_ns + rng.random_range(0..window_ns_max);
        free_at_ns[process as usize] = complete_ns;
        last_lp_ns = lp_ns;

        let k = rng.random_range(0..state.len());
        let fresh = |rng: &mut StdRng| -> Value {
            match config.value_space {
                None => format!("v{s}").into_bytes(),
                Some(n) => format!("v{}", rng.random_range(0..n.max(1))).into_bytes(),
            }
        };
        let kind = match rng.random_range(0..100) {
            0..40 => OpKind::Read,
            40..45 => OpKind::StaleRead,
            45..70 => OpKind::Write(fresh(&mut rng)),
            70..90 => {
                let expected = if rng.random_bool(0.5) {
                    state[k].clone()
                } else if rng.random_bool(0.2) {
                    None
                } else {
                    written[k].choose(&mut rng).cloned()
                };
                OpKind::Cas {
                    expected,
                    new: fresh(&mut rng),
                }
            }
            _ => OpKind::Delete,
        };

        let roll = rng.random_range(0..1000);
        let (takes_effect, outcome_kind) = if kind == OpKind::StaleRead {
            (false, 'o')
        } else if roll < config.fail_per_mille {
            (false, 'f')
        } else if roll < config.fail_per_mille + config.unknown_per_mille {
            (rng.random_bool(0.5), 'u')
        } else {
            (true, 'o')
        };

        // Apply to the sequential model at lp.
        let ret = match &kind {
            // A stale read may return anything; a value never written proves it is ignored.
            OpKind::StaleRead => Ret::Value(Some(b"stale-garbage".to_vec())),
            OpKind::Read => Ret::Value(state[k].clone()),
            OpKind::Write(v) => {
                if takes_effect {
                    state[k] = Some(v.clone());
                    written[k].push(v.clone());
                }
                Ret::Done
            }
            OpKind::Cas { expected, new } => {
                let swaps = state[k] == *expected;
                if takes_effect && swaps {
                    state[k] = Some(new.clone());
                    written[k].push(new.clone());
                }
                Ret::Swapped(swaps)
            }
            OpKind::Delete => {
                if takes_effect {
                    state[k] = None;
                }
                Ret::Done
            }
        };
        let (outcome, complete_ns) = match outcome_kind {
            'f' => (Outcome::Fail, Some(complete_ns)),
            'u' => (Outcome::Unknown, None),
            _ => (Outcome::Ok(ret), Some(complete_ns)),
        };
        ops.push(Operation {
            id: OpId(s),
            process,
            key: key_name(k),
            kind,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }
    // A real History numbers operations in invocation order.
    ops.sort_by_key(|op| (op.invoke_ns, op.id));
    for (i, op) in ops.iter_mut().enumerate() {
        op.id = OpId(i);
    }
    ops
}

/// A read whose result was replaced.
#[derive(Clone, Debug)]
pub(crate) struct Mutation {
    pub(crate) op: OpId,
    pub(crate) key: Key,
    pub(crate) to: Option<Value>,
}

/// The value an operation may have stored, if any (writes and CAS that did not fail to swap).
fn stored_value(op: &Operation) -> Option<&Value> {
    if op.outcome == Outcome::Fail {
        return None;
    }
    match (&op.kind, &op.outcome) {
        (OpKind::Write(v), _) => Some(v),
        (OpKind::Cas { .. }, Outcome::Ok(Ret::Swapped(false))) => None,
        (OpKind::Cas { new, .. }, _) => Some(new),
        _ => None,
    }
}

/// Whether `op` surely changed the register (ok write/delete, ok CAS that swapped).
fn surely_overwrites(op: &Operation) -> bool {
    matches!(
        (&op.kind, &op.outcome),
        (OpKind::Write(_), Outcome::Ok(_))
            | (OpKind::Delete, Outcome::Ok(_))
            | (OpKind::Cas { .. }, Outcome::Ok(Ret::Swapped(true)))
    )
}

/// Replaces one ok read's result with a value that cannot be current at any point of its window
/// in *any* linearization. Requires unique written values (`value_space: None`). Sufficient
/// conditions used (all timestamps strict, so ties never count):
/// - the only op that could store `v` was invoked after the read completed ("future read");
/// - `v` was stored by an ok op W, and an ok op X that surely overwrote it ran entirely after W
///   and before the read ("stale read");
/// - absent, when an ok op stored a value before the read and no delete (even unknown) was
///   invoked before the read completed.
pub(crate) fn mutate_read(ops: &mut [Operation], seed: u64) -> Option<Mutation> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d75_7461_7465);
    let mut by_key: HashMap<&Key, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(i);
    }
    let mut plans: Vec<(usize, Option<Value>)> = Vec::new();
    for (i, r) in ops.iter().enumerate() {
        let (OpKind::Read, Outcome::Ok(Ret::Value(actual)), Some(r_complete)) =
            (&r.kind, &r.outcome, r.complete_ns)
        else {
            continue;
        };
        let same_key = &by_key[&r.key];
        let mut candidates: Vec<Option<Value>> = Vec::new();
        for &w in same_key {
            let writer = &ops[w];
            let Some(v) = stored_value(writer) else {
                continue;
            };
            let future = writer.invoke_ns > r_complete;
            let stale = writer.outcome != Outcome::Unknown
                && writer.complete_ns.is_some_and(|w_complete| {
                    same_key.iter().any(|&x| {
                        let x_op = &ops[x];
                        surely_overwrites(x_op)
                            && x_op.invoke_ns > w_complete
                            && x_op.complete_ns.is_some_and(|c| c < r.invoke_ns)
                    })
                });
            if future || stale {
                candidates.push(Some(v.clone()));
            }
        }
        let stored_before = same_key.iter().any(|&w| {
            let op = &ops[w];
            matches!(op.outcome, Outcome::Ok(_))
                && stored_value(op).is_some()
                && op.complete_ns.is_some_and(|c| c < r.invoke_ns)
        });
        let delete_possible = same_key.iter().any(|&d| {
            ops[d].kind == OpKind::Delete
                && ops[d].outcome != Outcome::Fail
                && ops[d].invoke_ns < r_complete
        });
        if stored_before && !delete_possible {
            candidates.push(None);
        }
        candidates.retain(|c| c != actual);
        if let Some(choice) = candidates.choose(&mut rng) {
            plans.push((i, choice.clone()));
        }
    }
    let (i, to) = plans.choose(&mut rng)?.clone();
    ops[i].outcome = Outcome::Ok(Ret::Value(to.clone()));
    Some(Mutation {
        op: ops[i].id,
        key: ops[i].key.clone(),
        to,
    })
}
