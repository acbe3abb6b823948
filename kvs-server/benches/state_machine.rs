//! Applying puts to the state machine, as every replica does for every committed command:
//! overwrites of 256-byte values spread over a key space, with each client's session
//! results recorded. The larger key space does not fit in cache, as on a loaded server.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvs_server::state_machine::StateMachine;
use wire::{Command, Session, WriteOp};

const BATCH: u64 = 1024;

fn apply_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_machine_apply_put");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH));
    let value = Bytes::from(vec![0x5au8; 256]);
    for keys in [10_000u64, 1_000_000] {
        let names: Vec<Bytes> = (0..keys)
            .map(|i| Bytes::from(format!("key-{i:08}")))
            .collect();
        let mut sm = StateMachine::new();
        // 64 registered sessions, as 64 clients would have.
        let clients: Vec<u64> = (0..64)
            .filter_map(|_| {
                let register = Command {
                    session: Session {
                        client_id: wire::NO_CLIENT_ID,
                        seq: 1,
                    },
                    op: WriteOp::RegisterSession,
                    origin: None,
                };
                match sm.apply(0, register).reply {
                    Ok(wire::Reply::SessionRegistered { client_id }) => Some(client_id),
                    _ => None,
                }
            })
            .collect();
        sm.finish_slot(0);
        let mut slot = 1u64;
        let mut seq = 0u64;
        // A fixed stride through the keys: deterministic, and unlike a sequential walk it
        // does not keep touching the same tree nodes.
        let mut at = 0u64;
        let mut next = |sm: &mut StateMachine| {
            for _ in 0..BATCH {
                at = (at + 7_919) % keys;
                seq += 1;
                let cmd = Command {
                    session: Session {
                        client_id: clients[(seq % 64) as usize],
                        seq: seq / 64 + 1,
                    },
                    op: WriteOp::Put {
                        key: names[at as usize].clone(),
                        value: value.clone(),
                    },
                    origin: None,
                };
                sm.apply(slot, cmd);
            }
            sm.finish_slot(slot);
            slot += 1;
        };
        // Fill every key first, so the measured puts are overwrites.
        for _ in 0..keys.div_ceil(BATCH) {
            next(&mut sm);
        }
        group.bench_with_input(BenchmarkId::from_parameter(keys), &keys, |b, _| {
            b.iter(|| next(&mut sm));
        });
    }
    group.finish();
}

criterion_group!(benches, apply_puts);
criterion_main!(benches);
