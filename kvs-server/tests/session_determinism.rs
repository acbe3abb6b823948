//! Property: a replica restored from a snapshot taken after any slot behaves exactly like a
//! replica that applied every slot itself, for any continuation of the log: the same reply
//! to every command and the same state after every slot. The commands come from more
//! clients than the session table holds (a small table, the production code), so sessions
//! are evicted before and after the snapshot, in slots holding several clients' commands.
//!
//! Along the way, every write of a session is checked to be executed at most once: a retry
//! is answered from the table or refused as expired, never applied again.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use kvs_server::snapshot;
use kvs_server::state_machine::{Applied, StateMachine};
use proptest::prelude::*;
use wire::{Command, ErrorReply, Reply, Session, WriteOp};

/// Sessions the table holds in this test: small, so that eviction happens often.
const SESSIONS_MAX: usize = 4;

/// One command, abstractly: which client, which sequence number, which change.
#[derive(Clone, Debug)]
enum Step {
    /// Open a session (through the log, as a client does).
    Register,
    /// A write of the `client`-th session registered so far (modulo their number).
    Write {
        client: usize,
        seq: SeqPick,
        op: OpPick,
    },
    /// A write of a client id never handed out.
    Stranger { op: OpPick },
    /// A write without a session.
    Sessionless { op: OpPick },
}

/// Which sequence number a session's write carries.
#[derive(Clone, Copy, Debug)]
enum SeqPick {
    /// The session's next new one.
    Next,
    /// A retry of one already used: this many below the next.
    Retry(u64),
}

#[derive(Clone, Copy, Debug)]
enum OpPick {
    Put(u8, u8),
    Delete(u8),
    Cas(u8, Option<u8>, u8),
}

fn op_pick() -> impl Strategy<Value = OpPick> {
    prop_oneof![
        (0..3u8, 0..3u8).prop_map(|(k, v)| OpPick::Put(k, v)),
        (0..3u8).prop_map(OpPick::Delete),
        (0..3u8, proptest::option::of(0..3u8), 0..3u8).prop_map(|(k, e, n)| OpPick::Cas(k, e, n)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let seq = prop_oneof![3 => Just(SeqPick::Next), 2 => (1..4u64).prop_map(SeqPick::Retry)];
    prop_oneof![
        3 => Just(Step::Register),
        8 => (0..64usize, seq, op_pick())
            .prop_map(|(client, seq, op)| Step::Write { client, seq, op }),
        1 => op_pick().prop_map(|op| Step::Stranger { op }),
        1 => op_pick().prop_map(|op| Step::Sessionless { op }),
    ]
}

/// Slots of one to six commands each, and where the snapshot is taken (after that many
/// slots).
fn history() -> impl Strategy<Value = (Vec<Vec<Step>>, usize)> {
    proptest::collection::vec(proptest::collection::vec(step(), 1..7), 1..40).prop_flat_map(
        |slots| {
            let n = slots.len();
            (Just(slots), 0..=n)
        },
    )
}

fn bytes_of(b: u8) -> Bytes {
    Bytes::from(vec![b'a' + b])
}

fn write_op(op: OpPick) -> WriteOp {
    match op {
        OpPick::Put(k, v) => WriteOp::Put {
            key: bytes_of(k),
            value: bytes_of(v),
        },
        OpPick::Delete(k) => WriteOp::Delete { key: bytes_of(k) },
        OpPick::Cas(k, e, n) => WriteOp::Cas {
            key: bytes_of(k),
            expected: e.map(bytes_of),
            new: bytes_of(n),
        },
    }
}

/// Turns abstract steps into commands, as clients would send them: registered ids come from
/// the replies, each session numbers its new writes 1, 2, 3, ... and retries reuse them.
#[derive(Default)]
struct Clients {
    /// (client id, next seq) of every session registered.
    sessions: Vec<(u64, u64)>,
    /// Every (client id, seq) executed so far: none may be executed twice.
    executed: BTreeSet<(u64, u64)>,
    tag: u64,
}

impl Clients {
    fn command(&mut self, step: &Step) -> Command {
        self.tag += 1;
        let none = Session {
            client_id: wire::NO_CLIENT_ID,
            seq: self.tag,
        };
        let (session, op) = match step {
            Step::Register => (none, WriteOp::RegisterSession),
            Step::Sessionless { op } => (none, write_op(*op)),
            Step::Stranger { op } => {
                let known: BTreeSet<u64> = self.sessions.iter().map(|s| s.0).collect();
                let stranger = (1..).find(|c| !known.contains(c)).unwrap_or(u64::MAX);
                (
                    Session {
                        client_id: stranger,
                        seq: 1,
                    },
                    write_op(*op),
                )
            }
            Step::Write { client, seq, op } if !self.sessions.is_empty() => {
                let n = self.sessions.len();
                let (client_id, next) = &mut self.sessions[client % n];
                let seq = match seq {
                    SeqPick::Next => {
                        *next += 1;
                        *next - 1
                    }
                    SeqPick::Retry(back) => next.saturating_sub(*back).max(1),
                };
                (
                    Session {
                        client_id: *client_id,
                        seq,
                    },
                    write_op(*op),
                )
            }
            Step::Write { op, .. } => (none, write_op(*op)),
        };
        Command {
            session,
            op,
            origin: None,
        }
    }

    /// Learns from what applying a command did; checks exactly-once.
    fn observe(&mut self, command: &Command, applied: &Applied) -> Result<(), TestCaseError> {
        if let Ok(Reply::SessionRegistered { client_id }) = applied.reply {
            self.sessions.push((client_id, 1));
            return Ok(());
        }
        if command.is_sessionless() || !applied.fresh {
            return Ok(());
        }
        let s = command.session;
        prop_assert!(
            self.executed.insert((s.client_id, s.seq)),
            "write {} of session {} executed twice",
            s.seq,
            s.client_id
        );
        Ok(())
    }
}

fn restore(live: &StateMachine) -> Result<StateMachine, TestCaseError> {
    let bytes = snapshot::encode(live).map_err(TestCaseError::fail)?;
    let mut restored = snapshot::decode(&bytes, Path::new("snapshot"))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    restored.set_sessions_max(SESSIONS_MAX);
    Ok(restored)
}

/// Applies `slots` live, restores a second replica from a snapshot taken after
/// `snapshot_after` slots and feeds it the rest; returns how many writes were refused as
/// expired.
fn run(slots: &[Vec<Step>], snapshot_after: usize) -> Result<usize, TestCaseError> {
    let mut live = StateMachine::with_sessions_max(SESSIONS_MAX);
    let mut clients = Clients::default();
    let mut restored: Option<StateMachine> = None;
    let mut expired = 0usize;
    for (slot, steps) in slots.iter().enumerate() {
        let slot = slot as u64;
        if slot as usize == snapshot_after {
            restored = Some(restore(&live)?);
        }
        for step in steps {
            let command = clients.command(step);
            let applied = live.apply(slot, command.clone());
            clients.observe(&command, &applied)?;
            if matches!(applied.reply, Err(ErrorReply::SessionExpired { .. })) {
                expired += 1;
            }
            if let Some(r) = restored.as_mut() {
                let again = r.apply(slot, command.clone());
                prop_assert_eq!(
                    &again,
                    &applied,
                    "slot {}: {:?} answered differently after a restore",
                    slot,
                    command
                );
            }
        }
        live.finish_slot(slot);
        if let Some(r) = restored.as_mut() {
            r.finish_slot(slot);
            prop_assert!(*r == live, "state differs after slot {}", slot);
        }
    }
    let restored = match restored {
        Some(r) => r,
        None => restore(&live)?,
    };
    prop_assert!(restored == live);
    let (a, b) = (snapshot::encode(&restored), snapshot::encode(&live));
    prop_assert_eq!(a, b, "snapshots differ");
    Ok(expired)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_restored_replica_matches_one_that_applied_everything(
        (slots, snapshot_after) in history()
    ) {
        run(&slots, snapshot_after)?;
    }
}

/// A fixed history showing the case that diverged before: two sessions last active in the
/// same slot, applied in an order other than their id order, then a registration that
/// evicts one of them, then retries of both.
#[test]
fn sessions_active_in_one_slot_are_evicted_alike_live_and_restored() {
    let reg = || Step::Register;
    let put = |client| Step::Write {
        client,
        seq: SeqPick::Next,
        op: OpPick::Put(0, client as u8 % 3),
    };
    let retry = |client| Step::Write {
        client,
        seq: SeqPick::Retry(1),
        op: OpPick::Delete(0),
    };
    let slots = vec![
        vec![reg(), reg(), reg(), reg()],
        // Every session is active in slot 1, in an order unrelated to their ids.
        vec![put(3), put(1), put(0), put(2)],
        vec![reg()],
        vec![retry(0), retry(1), retry(2), retry(3)],
        vec![reg(), put(4)],
        vec![retry(0), retry(1), retry(2), retry(3), retry(4)],
    ];
    for snapshot_after in 0..=slots.len() {
        match run(&slots, snapshot_after) {
            Ok(expired) => assert!(expired > 0, "no session was evicted"),
            Err(e) => panic!("snapshot after {snapshot_after} slots: {e}"),
        }
    }
}
