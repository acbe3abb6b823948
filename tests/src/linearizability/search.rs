//! Wing & Gong's linearizability search with Lowe's memoization, for one register (one key).
//!
//! The history is turned into a doubly linked list of call/return entries sorted by time. The
//! search walks the list: at a call entry it tries to linearize that operation now (apply it to
//! the model, "lift" its call and return entries out of the list, restart from the head); at a
//! return entry it has hit an operation whose deadline passed without being linearized, so it
//! backtracks (pop the last linearized op, "unlift" it, try the next candidate). A cache of
//! (set of linearized ops, register state) configurations already explored prunes the search:
//! the future of the search depends only on that pair, not on the order that produced it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::BudgetLimit;
use crate::history::{OpKind, Operation, Outcome, Ret, Value};

/// Register state as an interned value id; [`ABSENT`] is the absent key.
pub(crate) type State = u32;

/// The state of a key that does not exist (the initial state of every key).
pub(crate) const ABSENT: State = 0;

/// An operation reduced to its effect on the register and the constraint on its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A read that must observe `expect`.
    Read { expect: State },
    /// A write (or delete, `to == ABSENT`); always applicable.
    Write { to: State },
    /// Compare-and-swap; `swapped` is `None` when the result is unknown (unconstrained).
    Cas {
        from: State,
        to: State,
        swapped: Option<bool>,
    },
}

impl Step {
    /// The state after applying this step to `state`, or `None` if the recorded result is
    /// impossible in `state`.
    pub(crate) fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read { expect } => (state == expect).then_some(state),
            Step::Write { to } => Some(to),
            Step::Cas { from, to, swapped } => {
                let swaps = state == from;
                match swapped {
                    Some(recorded) if recorded != swaps => None,
                    _ => Some(if swaps { to } else { state }),
                }
            }
        }
    }
}

/// One operation prepared for the search.
#[derive(Clone, Debug)]
pub(crate) struct CompiledOp {
    /// Index into the key's operation slice that was compiled.
    pub(crate) source: usize,
    pub(crate) invoke_ns: u64,
    /// `None` when the operation may take effect at any time after `invoke_ns`, or never.
    pub(crate) complete_ns: Option<u64>,
    pub(crate) step: Step,
}

/// A key's operations prepared for the search, with the value interning table.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub(crate) ops: Vec<CompiledOp>,
    /// Value of each state id; index [`ABSENT`] holds `None`.
    pub(crate) values: Vec<Option<Value>>,
}

impl Compiled {
    /// The value a state id stands for.
    pub(crate) fn value(&self, state: State) -> Option<&[u8]> {
        self.values.get(state as usize).and_then(|v| v.as_deref())
    }
}

/// An operation whose recorded result does not fit its kind (a test-harness bug).
#[derive(Clone, Debug)]
pub(crate) struct Malformed {
    pub(crate) source: usize,
    pub(crate) reason: String,
}

struct Interner {
    ids: HashMap<Value, State>,
    values: Vec<Option<Value>>,
}

impl Interner {
    fn new() -> Self {
        Self {
            ids: HashMap::new(),
            values: vec![None],
        }
    }

    fn intern(&mut self, value: Option<&[u8]>) -> State {
        let Some(value) = value else {
            return ABSENT;
        };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        // More than 2^32 distinct values in one key cannot fit in memory anyway.
        let id = State::try_from(self.values.len()).unwrap_or(State::MAX);
        self.values.push(Some(value.to_vec()));
        self.ids.insert(value.to_vec(), id);
        id
    }
}

/// Whether `op` is still pending (completes later, or never) at the cut `cut_ns`.
pub(crate) fn pending_at_cut(op: &Operation, cut_ns: Option<u64>) -> bool {
    cut_ns.is_some_and(|cut| op.complete_ns.is_none_or(|c| c > cut))
}

/// The outcome `op` counts with in a check of the prefix cut at `cut_ns`, or `None` if it has no
/// influence at all (failed ops, stale reads, unknown reads and ops invoked after the cut).
/// Operations still pending at the cut count as unknown.
pub(crate) fn effective_outcome(op: &Operation, cut_ns: Option<u64>) -> Option<&Outcome> {
    if op.kind == OpKind::StaleRead || cut_ns.is_some_and(|cut| op.invoke_ns > cut) {
        return None;
    }
    // A failed op never happened, whatever the cut: dropping it is always sound.
    let outcome = match &op.outcome {
        Outcome::Fail => return None,
        _ if pending_at_cut(op, cut_ns) => &Outcome::Unknown,
        outcome => outcome,
    };
    // An unknown read has no effect and an unconstrained result.
    (!(outcome == &Outcome::Unknown && op.kind == OpKind::Read)).then_some(outcome)
}

/// Whether `op` has any influence on the check of the prefix cut at `cut_ns`.
pub(crate) fn is_relevant(op: &Operation, cut_ns: Option<u64>) -> bool {
    effective_outcome(op, cut_ns).is_some()
}

/// Prepares the operations `ops[i]` with `include(i)` for the search.
///
/// With `cut_ns`, only the prefix of the history up to that time is compiled: operations
/// invoked later are dropped and those completing later become unknown. If the full history is
/// linearizable then so is every such prefix, which makes a failing prefix a valid witness.
pub(crate) fn compile(
    ops: &[Operation],
    include: impl Fn(usize) -> bool,
    cut_ns: Option<u64>,
) -> Result<Compiled, Malformed> {
    let mut interner = Interner::new();
    let mut compiled = Vec::new();
    for (source, op) in ops.iter().enumerate() {
        if !include(source) {
            continue;
        }
        let Some(outcome) = effective_outcome(op, cut_ns) else {
            continue;
        };
        let malformed = |reason: String| Malformed { source, reason };
        let (step, complete_ns) = match outcome {
            // Filtered out by effective_outcome.
            Outcome::Fail => continue,
            Outcome::Unknown => {
                let step = match &op.kind {
                    // Filtered out by effective_outcome.
                    OpKind::Read | OpKind::StaleRead => continue,
                    OpKind::Write(v) => Step::Write {
                        to: interner.intern(Some(v)),
                    },
                    OpKind::Delete => Step::Write { to: ABSENT },
                    OpKind::Cas { expected, new } => Step::Cas {
                        from: interner.intern(expected.as_deref()),
                        to: interner.intern(Some(new)),
                        swapped: None,
                    },
                };
                (step, None)
            }
            Outcome::Ok(ret) => {
                let Some(complete_ns) = op.complete_ns else {
                    return Err(malformed(format!("{op}: ok without a completion time")));
                };
                if complete_ns < op.invoke_ns {
                    return Err(malformed(format!("{op}: completes before it was invoked")));
                }
                let step = match (&op.kind, ret) {
                    (OpKind::Read, Ret::Value(v)) => Step::Read {
                        expect: interner.intern(v.as_deref()),
                    },
                    (OpKind::Write(v), Ret::Done) => Step::Write {
                        to: interner.intern(Some(v)),
                    },
                    (OpKind::Delete, Ret::Done) => Step::Write { to: ABSENT },
                    (OpKind::Cas { expected, new }, Ret::Swapped(swapped)) => Step::Cas {
                        from: interner.intern(expected.as_deref()),
                        to: interner.intern(Some(new)),
                        swapped: Some(*swapped),
                    },
                    _ => {
                        return Err(malformed(format!(
                            "{op}: result does not fit the operation kind"
                        )))
                    }
                };
                (step, Some(complete_ns))
            }
        };
        compiled.push(CompiledOp {
            source,
            invoke_ns: op.invoke_ns,
            complete_ns,
            step,
        });
    }
    Ok(Compiled {
        ops: compiled,
        values: interner.values,
    })
}

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) states_max: u64,
    pub(crate) deadline: Option<Instant>,
}

/// How a search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Linearizable,
    NotLinearizable,
    Exhausted(BudgetLimit),
}

/// Result of one search, with the material for a failure report.
#[derive(Clone, Debug)]
pub(crate) struct SearchReport {
    pub(crate) result: SearchResult,
    /// Distinct (linearized set, state) configurations explored.
    pub(crate) explored_states: u64,
    /// Longest partial linearization reached (indices into `Compiled::ops`, in order).
    pub(crate) deepest: Vec<usize>,
    /// The op whose completion was reached, unlinearized, right after `deepest`.
    pub(crate) stuck: Option<usize>,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;
/// Instant::now() is cheap but not free; the deadline is polled every this many iterations.
const DEADLINE_POLL_ITERATIONS: u64 = 256;

#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call entry, the index of its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    call_entry: usize,
    state_before: State,
}

fn build_entries(ops: &[CompiledOp]) -> Vec<Entry> {
    // (time, 0 = call / 1 = return, op). Unknown ops return "at infinity" (after every real
    // time). On equal timestamps calls sort first, treating the two ops as concurrent: that is
    // the permissive choice, so clock granularity cannot cause a false alarm.
    let mut events: Vec<(u128, u8, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((u128::from(op.invoke_ns), 0, i));
        let ret = op.complete_ns.map_or(u128::from(u64::MAX) + 1, u128::from);
        events.push((ret, 1, i));
    }
    events.sort_unstable();

    let mut entries = Vec::with_capacity(events.len() + 1);
    entries.push(Entry {
        op: NIL,
        is_call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut return_entry = vec![NIL; ops.len()];
    for (k, &(_, kind, op)) in events.iter().enumerate() {
        let index = k + 1;
        entries[index - 1].next = index;
        entries.push(Entry {
            op,
            is_call: kind == 0,
            matching: NIL,
            prev: index - 1,
            next: NIL,
        });
        if kind == 1 {
            return_entry[op] = index;
        }
    }
    for entry in entries.iter_mut().skip(1) {
        if entry.is_call {
            entry.matching = return_entry[entry.op];
        }
    }
    entries
}

/// Removes a call entry and its return entry from the list (dancing links).
fn lift(entries: &mut [Entry], call: usize) {
    for index in [call, entries[call].matching] {
        let Entry { prev, next, .. } = entries[index];
        entries[prev].next = next;
        if next != NIL {
            entries[next].prev = prev;
        }
    }
}

/// Reinserts what [`lift`] removed; must be called in reverse lift order.
fn unlift(entries: &mut [Entry], call: usize) {
    for index in [entries[call].matching, call] {
        let Entry { prev, next, .. } = entries[index];
        entries[prev].next = index;
        if next != NIL {
            entries[next].prev = index;
        }
    }
}

/// Cache key of a configuration: `[state, f, bits[f..end]]` where words before `f` are all
/// ones and words from `end` on are all zero. The search linearizes roughly in time order, so
/// this keeps keys a few words long even for keys with thousands of operations.
fn encode(bits: &[u64], state: State, out: &mut Vec<u64>) {
    let first = bits
        .iter()
        .position(|&w| w != u64::MAX)
        .unwrap_or(bits.len());
    let end = bits.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
    out.clear();
    out.push(u64::from(state));
    out.push(first as u64);
    if end > first {
        out.extend_from_slice(&bits[first..end]);
    }
}

/// Runs the search over `compiled` (initial state: absent).
pub(crate) fn search(compiled: &Compiled, limits: &Limits) -> SearchReport {
    let ops = &compiled.ops;
    let mut entries = build_entries(ops);
    // Unknown ops can always be linearized last (their results are unconstrained and nothing
    // observes their effect), so the search succeeds once every ok op is placed.
    let mut ok_remaining = ops.iter().filter(|op| op.complete_ns.is_some()).count();
    let mut bits = vec![0u64; ops.len().div_ceil(64)];
    let mut state = ABSENT;
    let mut stack: Vec<Frame> = Vec::new();
    let mut cache: HashSet<Box<[u64]>, BuildHasherDefault<FxHasher>> = HashSet::default();
    let mut scratch = Vec::new();
    let mut explored_states = 0u64;
    let mut iterations = 0u64;
    // Longest partial linearization seen; `deepest[..deepest_shared]` equals the current stack,
    // so recording a new best copies only the part that changed (amortized O(1) per push).
    let mut deepest: Vec<usize> = Vec::new();
    let mut deepest_shared = 0usize;
    let mut stuck: Option<usize> = None;

    let mut entry = entries[HEAD].next;
    let result = loop {
        if ok_remaining == 0 {
            break SearchResult::Linearizable;
        }
        if iterations.is_multiple_of(DEADLINE_POLL_ITERATIONS)
            && limits.deadline.is_some_and(|d| Instant::now() >= d)
        {
            break SearchResult::Exhausted(BudgetLimit::Time);
        }
        iterations += 1;
        if entry == NIL {
            // Unreachable: a call's return entry always follows it and a return entry makes
            // the search backtrack, so the walk never runs off the list while ok ops remain.
            // Fail safe (a false alarm is visible; a false pass is not).
            debug_assert!(false, "linearizability search ran off the entry list");
            break SearchResult::NotLinearizable;
        }
        let current = entries[entry];
        if current.is_call {
            let op = current.op;
            if let Some(next_state) = ops[op].step.apply(state) {
                bits[op / 64] |= 1 << (op % 64);
                encode(&bits, next_state, &mut scratch);
                if !cache.contains(scratch.as_slice()) {
                    if explored_states >= limits.states_max {
                        break SearchResult::Exhausted(BudgetLimit::States);
                    }
                    cache.insert(scratch.clone().into_boxed_slice());
                    explored_states += 1;
                    stack.push(Frame {
                        call_entry: entry,
                        state_before: state,
                    });
                    state = next_state;
                    if ops[op].complete_ns.is_some() {
                        ok_remaining -= 1;
                    }
                    lift(&mut entries, entry);
                    entry = entries[HEAD].next;
                    continue;
                }
                bits[op / 64] &= !(1 << (op % 64));
            }
            entry = current.next;
        } else {
            // `current.op` had to be linearized before now but could not be.
            if stuck.is_none() || stack.len() > deepest.len() {
                deepest.truncate(deepest_shared);
                deepest.extend(
                    stack[deepest_shared..]
                        .iter()
                        .map(|f| entries[f.call_entry].op),
                );
                deepest_shared = stack.len();
                stuck = Some(current.op);
            }
            let Some(frame) = stack.pop() else {
                break SearchResult::NotLinearizable;
            };
            deepest_shared = deepest_shared.min(stack.len());
            let op = entries[frame.call_entry].op;
            bits[op / 64] &= !(1 << (op % 64));
            state = frame.state_before;
            if ops[op].complete_ns.is_some() {
                ok_remaining += 1;
            }
            unlift(&mut entries, frame.call_entry);
            entry = entries[frame.call_entry].next;
        }
    };
    SearchReport {
        result,
        explored_states,
        deepest,
        stuck,
    }
}

/// FxHash-style hasher with a murmur3 finalizer: the cache keys are short `u64` slices and
/// SipHash would dominate the search time.
#[derive(Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply only moves entropy upwards; the table indexes by low bits, so mix back.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_semantics() {
        let read = Step::Read { expect: 3 };
        assert_eq!(read.apply(3), Some(3));
        assert_eq!(read.apply(ABSENT), None);
        assert_eq!(Step::Write { to: 5 }.apply(2), Some(5));
        let cas = |swapped| Step::Cas {
            from: 1,
            to: 2,
            swapped,
        };
        assert_eq!(cas(Some(true)).apply(1), Some(2));
        assert_eq!(cas(Some(true)).apply(4), None);
        assert_eq!(cas(Some(false)).apply(4), Some(4));
        assert_eq!(cas(Some(false)).apply(1), None);
        assert_eq!(cas(None).apply(1), Some(2));
        assert_eq!(cas(None).apply(4), Some(4));
    }

    #[test]
    fn encoding_is_canonical() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode(&[u64::MAX, 0b101, 0], 7, &mut a);
        assert_eq!(a, vec![7, 1, 0b101]);
        encode(&[u64::MAX, u64::MAX, 0], 7, &mut b);
        assert_eq!(b, vec![7, 2]);
        encode(&[0, 0, 0], 0, &mut b);
        assert_eq!(b, vec![0, 0]);
        encode(&[0, 0, 1 << 63], 0, &mut b);
        assert_eq!(b, vec![0, 0, 0, 0, 1 << 63]);
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        let ops: Vec<CompiledOp> = (0..3)
            .map(|i| CompiledOp {
                source: i,
                invoke_ns: i as u64,
                complete_ns: Some(10 + i as u64),
                step: Step::Write { to: 1 },
            })
            .collect();
        let mut entries = build_entries(&ops);
        let walk = |entries: &[Entry]| {
            let mut out = Vec::new();
            let mut e = entries[HEAD].next;
            while e != NIL {
                out.push((entries[e].op, entries[e].is_call));
                e = entries[e].next;
            }
            out
        };
        let before = walk(&entries);
        assert_eq!(
            before,
            vec![
                (0, true),
                (1, true),
                (2, true),
                (0, false),
                (1, false),
                (2, false)
            ]
        );
        // Entry indices: head = 0; the calls of ops 0, 1, 2 are entries 1, 2, 3.
        lift(&mut entries, 3);
        lift(&mut entries, 2);
        assert_eq!(walk(&entries), vec![(0, true), (0, false)]);
        unlift(&mut entries, 2);
        unlift(&mut entries, 3);
        assert_eq!(walk(&entries), before);
    }
}
