//! The consensus core's own cost, with no network or disk: three replicas in one thread,
//! messages delivered at once, persistence reported durable at once. Measures how many
//! commands per second the pure state machine can order, at two batch sizes.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::{Config, Message, NodeId, Output, Replica, Role};

struct Cluster {
    replicas: Vec<Replica>,
    network: VecDeque<(NodeId, NodeId, Message)>,
    now_ms: u64,
    committed: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let members: Vec<NodeId> = vec![1, 2, 3];
        let replicas = members
            .iter()
            .map(
                |&id| match Replica::new(Config::new(id, members.clone()), 1, 0) {
                    Ok(r) => r,
                    Err(e) => panic!("config: {e}"),
                },
            )
            .collect();
        let mut c = Cluster {
            replicas,
            network: VecDeque::new(),
            now_ms: 0,
            committed: 0,
        };
        while !c.replicas.iter().any(|r| r.role() == Role::Leader) {
            c.now_ms += 10;
            for r in &mut c.replicas {
                if r.poll_timeout() <= c.now_ms {
                    r.handle_timeout(c.now_ms);
                }
            }
            c.pump();
        }
        c
    }

    fn leader(&self) -> usize {
        self.replicas
            .iter()
            .position(|r| r.role() == Role::Leader)
            .unwrap_or(0)
    }

    /// Carries out every output until the cluster is quiet.
    fn pump(&mut self) {
        loop {
            let mut idle = true;
            for i in 0..self.replicas.len() {
                let id = self.replicas[i].id();
                while let Some(out) = self.replicas[i].poll_output() {
                    idle = false;
                    match out {
                        Output::Send { to, message } => self.network.push_back((id, to, message)),
                        Output::Persist { id: batch, .. } => {
                            self.replicas[i].handle_durable(self.now_ms, batch)
                        }
                        Output::Committed { value, .. } => {
                            self.committed += value.commands().len() as u64
                        }
                        _ => {}
                    }
                }
            }
            while let Some((from, to, m)) = self.network.pop_front() {
                idle = false;
                let idx = (to - 1) as usize;
                self.replicas[idx].handle_message(self.now_ms, from, m);
            }
            if idle {
                return;
            }
        }
    }
}

fn order_commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("three_replicas_order");
    let command = Bytes::from(vec![7u8; 256]);
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut cluster = Cluster::new();
            let leader = cluster.leader();
            b.iter(|| {
                for _ in 0..batch {
                    let now = cluster.now_ms;
                    if cluster.replicas[leader]
                        .propose(now, command.clone())
                        .is_err()
                    {
                        panic!("the leader refused a proposal");
                    }
                }
                cluster.pump();
            });
            assert!(cluster.committed > 0);
        });
    }
    group.finish();
}

criterion_group!(benches, order_commands);
criterion_main!(benches);
