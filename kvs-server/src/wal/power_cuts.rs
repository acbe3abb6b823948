//! Seeded power cuts of the real WAL code on a simulated disk.
//!
//! Each seed drives a log through appends, group commits, segment roll-overs and rewrites,
//! and cuts the power at a random point: between calls, or inside one (mid-append, between
//! a write and its fdatasync, while a rewrite publishes its segment). After each cut the
//! log is reopened, and the check is exact: it must open (whatever was damaged was never
//! reported durable), every record whose `sync` returned `Ok` must be there, intact and in
//! order, and past them only a prefix of what was appended since (nothing after a gap).
//! `WAL_POWER_CUT_SEEDS` sets the number of seeds (a soak: `WAL_POWER_CUT_SEEDS=100000`).

use std::path::Path;
use std::sync::Arc;

use super::{Wal, WalOptions};
use crate::disk::{SharedDisk, SimDisk};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the log must hold after a cut.
#[derive(Default)]
struct Model {
    /// Records reported durable, in order.
    acked: Vec<Vec<u8>>,
    /// Records appended since the last successful sync.
    unsynced: Vec<Vec<u8>>,
    /// A rewrite that did not return: the log may be the old one or exactly this.
    rewriting: Option<Vec<Vec<u8>>>,
}

impl Model {
    fn check(&self, seed: u64, cycle: u32, got: &[Vec<u8>]) -> Result<(), String> {
        let old_ok = got.len() >= self.acked.len()
            && got[..self.acked.len()] == self.acked[..]
            && got.len() - self.acked.len() <= self.unsynced.len()
            && got[self.acked.len()..] == self.unsynced[..got.len() - self.acked.len()];
        let new_ok = self.rewriting.as_deref() == Some(got);
        if old_ok || new_ok {
            return Ok(());
        }
        let first_bad = got
            .iter()
            .zip(&self.acked)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(self.acked.len()));
        Err(format!(
            "seed {seed} cycle {cycle}: recovered {} records, {} acknowledged, {} unsynced; first difference at record {first_bad}",
            got.len(),
            self.acked.len(),
            self.unsynced.len()
        ))
    }
}

fn payload(rng: &mut Rng, n: u64) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(200) as usize,
        _ => rng.below(1500) as usize,
    };
    // Never all zeros, so a lost sector shows.
    (0..len).map(|i| (n as usize + i) as u8 | 1).collect()
}

/// One seed: three cycles of work and a cut, each followed by recovery and the check.
fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let sim = SimDisk::new(seed);
    let disk: SharedDisk = Arc::new(sim.clone());
    let dir = Path::new("/data/wal");
    let options = WalOptions {
        segment_bytes_max: 1024 + rng.below(4096),
        write_buffer_bytes: 64 + rng.below(2048) as usize,
    };
    let mut model = Model::default();
    let mut counter = 0u64;
    for cycle in 0..3u32 {
        let opened = Wal::open_on(disk.clone(), dir, options.clone());
        let (mut wal, got) = match opened {
            Ok(x) => x,
            Err(e) => {
                return Err(format!(
                    "seed {seed} cycle {cycle}: the log did not open after a cut that only damaged unsynced data: {e}"
                ))
            }
        };
        model.check(seed, cycle, &got)?;
        model.acked = got;
        model.unsynced.clear();
        model.rewriting = None;
        // Arm a cut somewhere in this cycle's work, or cut between calls at the end.
        let armed = rng.below(3) != 0;
        if armed {
            sim.cut_after(1 + rng.below(60));
        }
        for _ in 0..rng.below(80) {
            let step = match rng.below(20) {
                0..=11 => {
                    counter += 1;
                    let p = payload(&mut rng, counter);
                    let r = wal.append(&p);
                    model.unsynced.push(p);
                    r
                }
                12..=18 => {
                    let r = wal.sync();
                    if r.is_ok() {
                        model.acked.append(&mut model.unsynced);
                    }
                    r
                }
                _ => {
                    let keep: Vec<Vec<u8>> = model
                        .acked
                        .iter()
                        .chain(&model.unsynced)
                        .skip(rng.below(3) as usize)
                        .cloned()
                        .collect();
                    model.rewriting = Some(keep.clone());
                    let r = wal.rewrite(&keep);
                    if r.is_ok() {
                        model.acked = keep;
                        model.unsynced.clear();
                        model.rewriting = None;
                    }
                    r
                }
            };
            if step.is_err() {
                break;
            }
        }
        drop(wal);
        if !sim.is_down() {
            sim.power_cut();
        }
        sim.power_on();
    }
    let (_, got) = Wal::open_on(disk, dir, options)
        .map_err(|e| format!("seed {seed}: the log did not open at the end: {e}"))?;
    model.check(seed, 3, &got)
}

#[test]
fn the_log_survives_power_cuts_at_every_kind_of_point() {
    let seeds: u64 = std::env::var("WAL_POWER_CUT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
