//! The write-ahead log's append path: records of 256-byte values, made durable in groups
//! (one fdatasync per group), as the storage thread does under load.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvs_server::wal::{Wal, WalOptions};

fn append_and_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_sync");
    group.sample_size(20);
    let record = vec![0x5au8; 300];
    for per_sync in [1usize, 64, 512] {
        group.throughput(Throughput::Elements(per_sync as u64));
        group.bench_with_input(BenchmarkId::from_parameter(per_sync), &per_sync, |b, &n| {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => panic!("tempdir: {e}"),
            };
            let (mut wal, _) = match Wal::open(dir.path(), WalOptions::default()) {
                Ok(w) => w,
                Err(e) => panic!("open: {e}"),
            };
            b.iter(|| {
                for _ in 0..n {
                    if let Err(e) = wal.append(&record) {
                        panic!("append: {e}");
                    }
                }
                if let Err(e) = wal.sync() {
                    panic!("sync: {e}");
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append_and_sync);
criterion_main!(benches);
