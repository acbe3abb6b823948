//! A replicated counter: three replicas in one process agree on a log of `+N` commands.
//!
//! The host is the loop from the crate docs plus a disk per replica (a `Vec<PersistEntry>`
//! that is durable at once) and one crash: a follower loses its memory midway and restarts
//! from its disk. Run with `cargo run -p paxos-core --example counter`.

use std::collections::VecDeque;

use paxos_core::{Config, Message, NodeId, Output, PersistEntry, ProposeError};
use paxos_core::{RecoveredState, Replica};

/// One server: its replica (`None` while crashed), its disk, and its state machine.
struct Server {
    replica: Option<Replica>,
    disk: Vec<PersistEntry>,
    total: u64,
}

/// Carries out every output of the server's replica, in order.
fn drain(s: &mut Server, now_ms: u64, network: &mut VecDeque<(NodeId, NodeId, Message)>) {
    let Some(r) = s.replica.as_mut() else { return };
    while let Some(out) = r.poll_output() {
        match out {
            Output::Send { to, message } => network.push_back((r.id(), to, message)),
            Output::Persist { id, entries } => {
                s.disk.extend(entries); // "append and fsync": durable at once
                r.handle_durable(now_ms, id);
            }
            Output::Committed { value, .. } => {
                for cmd in value.commands() {
                    let n = String::from_utf8_lossy(&cmd[1..]).parse::<u64>();
                    s.total += n.expect("every command is +N");
                }
            }
            _ => {} // no reads, no compaction, and the leader never changes here
        }
    }
}

fn boot(id: NodeId, state: &RecoveredState, now_ms: u64) -> Replica {
    Replica::recover(Config::new(id, vec![1, 2, 3]), 42, now_ms, state).expect("valid config")
}

fn main() {
    let mut servers: Vec<Server> = (1..=3)
        .map(|id| Server {
            replica: Some(boot(id, &RecoveredState::default(), 0)),
            disk: vec![],
            total: 0,
        })
        .collect();
    let mut network = VecDeque::new();
    let (mut next, mut target, mut leader) = (1, 3, None); // propose +next to replica target
    let mut crash: Option<(NodeId, u64)> = None; // who crashed, and when it restarts
    let expected: u64 = (1..=20).sum();
    for now_ms in (0..30_000).step_by(10) {
        // The client proposes +1 ... +20, one per tick, following leader hints.
        if let Some(r) = servers[target as usize - 1]
            .replica
            .as_mut()
            .filter(|_| next <= 20)
        {
            match r.propose(now_ms, format!("+{next}").into()) {
                Ok(()) if leader != Some(target) => {
                    println!(
                        "t={now_ms}ms: replica {target} leads (ballot {}); proposing there",
                        r.ballot()
                    );
                    (leader, next) = (Some(target), next + 1);
                }
                Ok(()) => next += 1,
                Err(ProposeError::NotLeader {
                    leader_hint: Some(l),
                }) => {
                    println!("t={now_ms}ms: replica {target} is not the leader, it points to {l}");
                    target = l;
                }
                Err(_) => {} // no leader known yet (or busy): ask again next tick
            }
        }
        // After +10, a follower crashes: its replica and counter vanish, its disk stays.
        if let (None, Some(l), 11) = (crash, leader, next) {
            let (victim, s) = (l % 3 + 1, &mut servers[l as usize % 3]);
            println!(
                "t={now_ms}ms: replica {victim} crashes at total {}, {} records on disk",
                s.total,
                s.disk.len()
            );
            (s.replica, s.total, crash) = (None, 0, Some((victim, now_ms + 1_000)));
        }
        if let Some((victim, _)) = crash.filter(|&(_, at)| at == now_ms) {
            let s = &mut servers[victim as usize - 1];
            let mut state = RecoveredState::default(); // no snapshot: snapshot_slot stays 0
            s.disk.iter().cloned().for_each(|e| state.apply(e));
            s.replica = Some(boot(victim, &state, now_ms));
            drain(s, now_ms, &mut network); // the first drain re-delivers committed slots
            let (p, c, t) = (state.promised, state.commit, s.total);
            println!(
                "t={now_ms}ms: replica {victim} restarts (promised {p}, commit {c}): total {t}"
            );
        }
        for s in servers.iter_mut() {
            if let Some(r) = s.replica.as_mut().filter(|r| r.poll_timeout() <= now_ms) {
                r.handle_timeout(now_ms);
            }
            drain(s, now_ms, &mut network);
        }
        for (from, to, message) in std::mem::take(&mut network) {
            let s = &mut servers[to as usize - 1];
            if let Some(r) = s.replica.as_mut() {
                r.handle_message(now_ms, from, message); // a crashed replica hears nothing
                drain(s, now_ms, &mut network);
            }
        }
        if crash.is_some_and(|(_, at)| at < now_ms) && servers.iter().all(|s| s.total == expected) {
            break;
        }
    }
    let totals: Vec<u64> = servers.iter().map(|s| s.total).collect();
    println!("totals on replicas 1, 2, 3: {totals:?} (expected {expected} on each)");
    assert!(
        totals.iter().all(|&t| t == expected),
        "replicas disagree or missed increments"
    );
}
