//! Applying puts to the state machine, as every replica does for every committed command:
//! overwrites of 256-byte values spread over a key space, with each client's session
//! results recorded. The larger key space does not fit in cache, as on a loaded server.

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use kvs_server::state_machine::StateMachine;
use wire::{Command, Origin, Session, WriteOp};

const BATCH: u64 = 1024;

fn apply_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_machine_apply_put");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH));
    for keys in [10_000u64, 1_000_000] {
        bench_puts(&mut group, keys, false);
    }
    group.finish();
    // The same with auth enabled: every put is checked against the grants of the user it
    // carries (a role granting readwrite on the keys' prefix).
    let mut group = c.benchmark_group("state_machine_apply_put_auth");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH));
    bench_puts(&mut group, 10_000, true);
    group.finish();
}

/// Enables auth: root holds admin, alice a role granting readwrite on `key-`.
fn enable_auth(sm: &mut StateMachine) {
    use wire::{AuthChange, Permission};
    let changes = [
        AuthChange::UserAdd {
            user: "root".into(),
        },
        AuthChange::UserAdd {
            user: "alice".into(),
        },
        AuthChange::RoleAdd {
            role: "writers".into(),
        },
        AuthChange::RoleGrant {
            role: "writers".into(),
            prefix: Bytes::from_static(b"key-"),
            perm: Permission::ReadWrite,
        },
        AuthChange::UserGrantRole {
            user: "alice".into(),
            role: "writers".into(),
        },
        AuthChange::UserGrantRole {
            user: "root".into(),
            role: wire::ADMIN_ROLE.into(),
        },
        AuthChange::Enable,
    ];
    for (seq, change) in changes.into_iter().enumerate() {
        let tag = Session {
            client_id: wire::NO_CLIENT_ID,
            seq: seq as u64 + 1,
        };
        let applied = sm.apply(
            0,
            Command::new(tag, WriteOp::Auth(change), Some("root".into())),
        );
        assert!(applied.reply.is_ok(), "{:?}", applied.reply);
    }
}

fn bench_puts(group: &mut BenchmarkGroup<'_, WallTime>, keys: u64, auth: bool) {
    let value = Bytes::from(vec![0x5au8; 256]);
    let identity = auth.then(|| "alice".to_owned());
    let origin = auth.then(|| Origin {
        identity: identity.clone(),
    });
    {
        let names: Vec<Bytes> = (0..keys)
            .map(|i| Bytes::from(format!("key-{i:08}")))
            .collect();
        let mut sm = StateMachine::new();
        if auth {
            enable_auth(&mut sm);
        }
        // 64 registered sessions, as 64 clients would have.
        let clients: Vec<u64> = (0..64)
            .filter_map(|_| {
                let register = Command {
                    session: Session {
                        client_id: wire::NO_CLIENT_ID,
                        seq: 1,
                    },
                    op: WriteOp::RegisterSession,
                    origin: origin.clone(),
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
                    origin: origin.clone(),
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
}

criterion_group!(benches, apply_puts);
criterion_main!(benches);
