//! Shared fixtures of the replica's unit tests: given this state and this input, exactly
//! these outputs come out, in order. Each handler module keeps its own tests beside it.

pub(crate) use crate::ballot::{Ballot, NodeId, Slot};
pub(crate) use crate::config::Config;
pub(crate) use crate::message::Message;
pub(crate) use crate::persist::{PersistEntry, RecoveredState};
pub(crate) use crate::proposer::Role;
pub(crate) use crate::replica::{Output, ProposeError, Replica};
pub(crate) use crate::value::{Entry, Value};

use bytes::Bytes;

pub(crate) fn b(round: u64, node: NodeId) -> Ballot {
    Ballot::new(round, node)
}

pub(crate) fn cmd(s: &'static str) -> Value {
    Value::Commands(vec![Bytes::from_static(s.as_bytes())])
}

pub(crate) fn replica(id: NodeId) -> Replica {
    match Replica::new(Config::new(id, vec![1, 2, 3]), 1, 0) {
        Ok(r) => r,
        Err(e) => panic!("config: {e}"),
    }
}

pub(crate) fn drain(r: &mut Replica) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

pub(crate) fn send(to: NodeId, message: Message) -> Output {
    Output::Send { to, message }
}

/// Replica `id` of 1, 2, 3 with `held_replies_max` set.
pub(crate) fn replica_holding_at_most(id: NodeId, held_replies_max: usize) -> Replica {
    let mut config = Config::new(id, vec![1, 2, 3]);
    config.held_replies_max = held_replies_max;
    match Replica::new(config, 1, 0) {
        Ok(r) => r,
        Err(e) => panic!("config: {e}"),
    }
}

/// Replica 1, elected leader under ballot 1.1 with nothing to recover, everything durable.
pub(crate) fn leader() -> Replica {
    elect(replica(1))
}

/// `r` (replica 1), elected leader under ballot 1.1 with nothing to recover, everything
/// durable.
pub(crate) fn elect(mut r: Replica) -> Replica {
    let t = r.poll_timeout();
    r.handle_timeout(t);
    let out = drain(&mut r);
    assert!(
        matches!(out.last(), Some(Output::Persist { id: 1, .. })),
        "{out:?}"
    );
    r.handle_durable(t, 1);
    r.handle_message(
        t,
        2,
        Message::Promise {
            ballot: b(1, 1),
            commit: 0,
            accepted: vec![],
        },
    );
    assert_eq!(r.role(), Role::Leader);
    let _ = drain(&mut r);
    r
}
