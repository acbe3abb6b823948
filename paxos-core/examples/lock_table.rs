//! A replicated lock table on five in-memory replicas.
//!
//! Commands are text: `<request id> acquire <lock> <owner>` and `<request id> release <lock>
//! <owner>`. Every replica applies them in log order with the same rule (an acquire succeeds
//! only if the lock is free, a release only by the holder), so every replica grants the
//! same locks to the same owners. "Who holds this lock?" is a linearizable read: the host
//! calls `Replica::read` on the leader and answers from its own table when
//! `Output::ReadReady` comes out.
//!
//! Midway the leader is cut off from everybody (the in-memory network drops its messages
//! both ways). The other four elect a new leader and carry on; a read and a proposal sent
//! to the old leader never take effect; when the cut heals it rejoins as a follower.
//!
//! Run with `cargo run -p paxos-core --example lock_table`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use paxos_core::{Config, Message, NodeId, Output, Replica, Role, Slot};

type Network = VecDeque<(NodeId, NodeId, Message)>;

/// One server: a replica and the lock table it applies commands to.
struct Server {
    replica: Replica,
    /// Lock name -> owner.
    locks: BTreeMap<String, String>,
    /// Every command applied, with its slot and outcome, in order.
    history: Vec<(Slot, String, String)>,
    /// The outcome of each request id applied here (what a client is told).
    outcomes: HashMap<u64, String>,
    /// Reads asked here: read id -> the lock asked about.
    reads_asked: HashMap<u64, String>,
    /// Finished reads: read id -> the holder, or the leader hint of an aborted read.
    reads_done: HashMap<u64, Result<Option<String>, Option<NodeId>>>,
}

impl Server {
    /// Applies one command to the lock table, the same way on every replica.
    fn apply(&mut self, slot: Slot, command: String) {
        let words: Vec<&str> = command.split(' ').collect();
        let [request, op, lock, owner] = words[..] else {
            panic!("malformed command {command:?}");
        };
        let outcome = match (op, self.locks.get(lock)) {
            ("acquire", None) => {
                self.locks.insert(lock.to_string(), owner.to_string());
                "granted".to_string()
            }
            ("acquire", Some(holder)) => format!("refused: {holder} holds it"),
            ("release", Some(holder)) if holder == owner => {
                self.locks.remove(lock);
                "released".to_string()
            }
            ("release", _) => "refused: not the holder".to_string(),
            _ => panic!("unknown operation in {command:?}"),
        };
        let request = request.parse().expect("a numeric request id");
        self.outcomes.insert(request, outcome.clone());
        self.history.push((slot, command, outcome));
    }

    /// Carries out every output of the replica, in order.
    fn drain(&mut self, now_ms: u64, network: &mut Network) {
        while let Some(out) = self.replica.poll_output() {
            match out {
                Output::Send { to, message } => network.push_back((self.replica.id(), to, message)),
                // Nothing crashes here, so no disk is kept (counter.rs keeps one).
                Output::Persist { id, .. } => self.replica.handle_durable(now_ms, id),
                Output::Committed { slot, value } => {
                    for cmd in value.commands() {
                        self.apply(slot, String::from_utf8_lossy(cmd).into_owned());
                    }
                }
                // Every Committed output the read depends on came out before this one,
                // so the local table is up to date for it.
                Output::ReadReady { id } => {
                    let holder = self.locks.get(&self.reads_asked[&id]).cloned();
                    self.reads_done.insert(id, Ok(holder));
                }
                Output::ReadAborted { id, leader_hint } => {
                    self.reads_done.insert(id, Err(leader_hint));
                }
                Output::ProposalsDropped { commands, .. } => {
                    let id = self.replica.id();
                    println!(
                        "  replica {id} dropped {} unslotted proposals",
                        commands.len()
                    );
                }
                Output::SendSnapshot { .. } => unreachable!("this example never compacts"),
                // Nothing here is ever repaired (no disk is damaged).
                // This example never changes its membership.
                Output::Repaired
                | Output::Reconfigured { .. }
                | Output::ReconfigDropped { .. }
                | Output::Removed => {}
            }
        }
    }
}

struct Cluster {
    servers: Vec<Server>,
    network: Network,
    now_ms: u64,
    /// A replica cut off from the rest: the network drops its messages both ways.
    cut: Option<NodeId>,
    /// Request and read ids.
    next_id: u64,
}

impl Cluster {
    fn new(size: u64) -> Self {
        let members: Vec<NodeId> = (1..=size).collect();
        let servers = members
            .iter()
            .map(|&id| Server {
                replica: Replica::new(Config::new(id, members.clone()), 2024, 0).expect("config"),
                locks: BTreeMap::new(),
                history: Vec::new(),
                outcomes: HashMap::new(),
                reads_asked: HashMap::new(),
                reads_done: HashMap::new(),
            })
            .collect();
        Cluster {
            servers,
            network: VecDeque::new(),
            now_ms: 0,
            cut: None,
            next_id: 1,
        }
    }

    fn server(&self, id: NodeId) -> &Server {
        &self.servers[id as usize - 1]
    }

    fn server_mut(&mut self, id: NodeId) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    /// Five simulated milliseconds: timers fire, then every message sent so far is
    /// delivered (or dropped, if it crosses the cut).
    fn step(&mut self) {
        self.now_ms += 5;
        let now = self.now_ms;
        for s in &mut self.servers {
            if s.replica.poll_timeout() <= now {
                s.replica.handle_timeout(now);
            }
            s.drain(now, &mut self.network);
        }
        for (from, to, message) in std::mem::take(&mut self.network) {
            if self.cut == Some(from) || self.cut == Some(to) {
                continue;
            }
            let s = &mut self.servers[to as usize - 1];
            s.replica.handle_message(now, from, message);
            s.drain(now, &mut self.network);
        }
    }

    /// Steps until `done` holds; panics after 20 simulated seconds.
    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..4_000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("gave up waiting for {what} at t={}ms", self.now_ms);
    }

    /// The leader a client on the majority side finds (the cut-off replica is out of reach).
    fn leader(&self) -> Option<NodeId> {
        let reachable = self.servers.iter().map(|s| &s.replica);
        let mut reachable = reachable.filter(|r| self.cut != Some(r.id()));
        reachable.find(|r| r.role() == Role::Leader).map(|r| r.id())
    }

    fn wait_for_leader(&mut self) -> NodeId {
        self.run_until("a leader", |c| c.leader().is_some());
        let leader = self.leader().expect("a leader");
        let ballot = self.server(leader).replica.ballot();
        println!(
            "t={}ms: replica {leader} leads with ballot {ballot}",
            self.now_ms
        );
        leader
    }

    /// Proposes `op` ("acquire db alice") at replica `at`; returns the request id.
    fn propose(&mut self, at: NodeId, op: &str) -> u64 {
        let (id, now) = (self.next_id, self.now_ms);
        self.next_id += 1;
        let command = format!("{id} {op}");
        let replica = &mut self.server_mut(at).replica;
        replica
            .propose(now, command.into())
            .expect("proposing at the leader");
        id // the next step drains what this produced
    }

    /// A client request through the leader `at`: waits for the outcome applied there.
    fn request(&mut self, at: NodeId, op: &str) -> String {
        let id = self.propose(at, op);
        self.run_until(op, |c| c.server(at).outcomes.contains_key(&id));
        let outcome = self.server(at).outcomes[&id].clone();
        println!("t={}ms:   {op:<20} -> {outcome}", self.now_ms);
        outcome
    }

    /// Starts a linearizable read of `lock` at replica `at`; returns the read id.
    fn start_read(&mut self, at: NodeId, lock: &str) -> u64 {
        let (id, now) = (self.next_id, self.now_ms);
        self.next_id += 1;
        let s = self.server_mut(at);
        s.replica.read(now, id).expect("reading at the leader");
        s.reads_asked.insert(id, lock.to_string());
        id
    }

    /// A linearizable "who holds `lock`?" through the leader `at`.
    fn holder(&mut self, at: NodeId, lock: &str) -> Option<String> {
        let id = self.start_read(at, lock);
        self.run_until("a read", |c| c.server(at).reads_done.contains_key(&id));
        let answer = self.server(at).reads_done[&id]
            .clone()
            .expect("the leader serves it");
        let (question, shown) = (format!("who holds {lock}?"), answer.as_deref());
        println!(
            "t={}ms:   {question:<20} -> {}",
            self.now_ms,
            shown.unwrap_or("nobody")
        );
        answer
    }
}

fn main() {
    let mut c = Cluster::new(5);
    let first = c.wait_for_leader();
    assert_eq!(c.request(first, "acquire db alice"), "granted");
    assert_eq!(
        c.request(first, "acquire db bob"),
        "refused: alice holds it"
    );
    assert_eq!(c.request(first, "acquire queue carol"), "granted");
    assert_eq!(c.holder(first, "db").as_deref(), Some("alice"));

    println!("t={}ms: the network cuts replica {first} off", c.now_ms);
    c.cut = Some(first);
    // A client on the old leader's side of the cut: it still leads as far as it knows, so it
    // takes a read and a proposal, but can finish neither.
    let stale_read = c.start_read(first, "db");
    let lost = c.propose(first, "acquire db mallory");
    let second = c.wait_for_leader();
    assert_ne!(second, first);
    assert_eq!(c.request(second, "release db alice"), "released");
    assert_eq!(c.request(second, "acquire db bob"), "granted");
    assert_eq!(c.holder(second, "db").as_deref(), Some("bob"));

    // Having heard from no majority for election_timeout_max_ms, the old leader steps down
    // and aborts the read, instead of answering "alice" from its stale table.
    c.run_until("the old leader's read to end", |c| {
        c.server(first).reads_done.contains_key(&stale_read)
    });
    let old = c.server(first);
    assert_eq!(
        old.reads_done[&stale_read],
        Err(None),
        "a cut-off leader served a read"
    );
    let stale_holder = &old.locks["db"];
    println!(
        "t={}ms: replica {first} is a {}; it aborted the read (its table says {stale_holder})",
        c.now_ms,
        old.replica.role()
    );
    let slot = (0..8).find(|&s| {
        old.replica
            .accepted(s)
            .is_some_and(|(_, v)| v.commands().iter().any(|c| c.ends_with(b"mallory")))
    });
    let slot = slot.expect("the old leader gave mallory's acquire a slot");
    println!("  it put mallory's acquire in slot {slot}, but only its own vote is there");

    // Cut off longer, the old leader campaigns alone, promising itself ever higher ballots.
    let until = c.now_ms + 1_500;
    c.run_until("time to pass", |c| c.now_ms >= until);
    println!(
        "t={}ms: replica {first} has promised ballot {}; the cut heals",
        c.now_ms,
        c.server(first).replica.promised()
    );
    c.cut = None;
    // The old leader refuses the new one's heartbeats (its promise is higher), so the new
    // leader re-runs phase 1 above that ballot; the old one promises and catches up.
    c.run_until("every replica to apply the same log", |c| {
        let log = &c.servers[0].history;
        log.len() == 5 && c.servers.iter().all(|s| &s.history == log)
    });
    let leader = c.wait_for_leader();
    assert_eq!(
        c.request(leader, "acquire db carol"),
        "refused: bob holds it"
    );
    assert_eq!(c.holder(leader, "db").as_deref(), Some("bob"));
    c.run_until("every replica to apply the last command", |c| {
        c.servers.iter().all(|s| s.history.len() == 6)
    });

    // Agreement: one history on every replica, and in it no lock is granted while held.
    let history = &c.servers[0].history;
    assert!(
        c.servers.iter().all(|s| &s.history == history),
        "replicas disagree"
    );
    assert!(
        c.servers.iter().all(|s| s.locks == c.servers[0].locks),
        "lock tables differ"
    );
    let mut held: BTreeMap<&str, &str> = BTreeMap::new();
    for (_, command, outcome) in history {
        let w: Vec<&str> = command.split(' ').collect();
        match (w[1], outcome.as_str()) {
            ("acquire", "granted") => {
                assert!(held.insert(w[2], w[3]).is_none(), "{} granted twice", w[2])
            }
            ("release", "released") => assert_eq!(held.remove(w[2]), Some(w[3])),
            _ => {}
        }
    }
    assert!(
        !c.servers.iter().any(|s| s.outcomes.contains_key(&lost)),
        "mallory's acquire was chosen"
    );
    println!("final log, identical on all {} replicas:", c.servers.len());
    for (slot, command, outcome) in history {
        println!("  slot {slot}: {command:<22} {outcome}");
    }
    println!(
        "locks held: {held:?}; mallory's acquire, sent to the cut-off leader, was never chosen"
    );
}
