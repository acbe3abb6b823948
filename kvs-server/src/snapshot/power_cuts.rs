//! Seeded power cuts while snapshots are written and published, on a simulated disk.
//!
//! Each seed writes a series of snapshots (whole, or merged into the previous file) with a
//! power cut armed at a random point: while the temporary file is written, before or after
//! its fsync, between the rename and the directory fsync. After each cut the snapshot is
//! read back: it must be exactly the last one whose write returned `Ok`, or the one being
//! written when the power went (once its rename was made durable), never an error and
//! never a mix. The same holds while a snapshot received from a peer is written, fsynced,
//! checked and published. `SNAPSHOT_POWER_CUT_SEEDS` sets the number of seeds.

use std::path::Path;

use bytes::Bytes;
use wire::{Command, Session, WriteOp};

use super::encode;
use super::file::{read_file_on, write_file_on, write_merged_on};
use crate::disk::{Disk, SimDisk};
use crate::state_machine::StateMachine;

fn put(sm: &mut StateMachine, slot: u64, key: u64, len: usize) {
    let c = Command {
        session: Session {
            client_id: wire::NO_CLIENT_ID,
            seq: slot,
        },
        op: WriteOp::Put {
            key: Bytes::from(format!("key{key}")),
            value: Bytes::from(vec![(slot % 251) as u8 | 1; len]),
        },
        origin: None,
    };
    sm.apply(slot, c);
    sm.finish_slot(slot);
}

fn run_seed(seed: u64) -> Result<(), String> {
    let disk = SimDisk::new(seed);
    let dir = Path::new("/data");
    disk.create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    let mut sm = StateMachine::new();
    let mut slot = 0;
    // What a reader may find: the last snapshot published, or the one in progress.
    let mut published: Option<Vec<u8>> = None;
    let bytes = |sm: &StateMachine| encode(sm).unwrap_or_default();
    for round in 0..6 {
        for _ in 0..1 + next(40) {
            put(&mut sm, slot, next(60), 1 + next(300) as usize);
            slot += 1;
        }
        let armed = next(2) == 0;
        if armed {
            disk.cut_after(1 + next(12));
        }
        let delta = sm.take_delta();
        let result = if next(2) == 0 {
            write_file_on(&disk, dir, &sm)
        } else {
            write_merged_on(
                &disk,
                dir,
                sm.applied(),
                &delta,
                sm.sessions(),
                sm.membership(),
                sm.auth(),
            )
        };
        let done = result.is_ok();
        if !disk.is_down() {
            disk.power_cut();
        }
        disk.power_on();
        let back = read_file_on(&disk, dir)
            .map_err(|e| format!("seed {seed} round {round}: unreadable after a cut: {e}"))?;
        let writing = bytes(&sm);
        let found = back.as_ref().map(bytes);
        let ok = match &found {
            None => published.is_none(),
            Some(b) => Some(b) == published.as_ref() || *b == writing,
        };
        if !ok {
            return Err(format!(
                "seed {seed} round {round}: read back a snapshot at slot {:?}, neither the published one ({:?} bytes) nor the one written (slot {}); write {}",
                back.as_ref().map(|b| b.applied()),
                published.as_ref().map(Vec::len),
                sm.applied(),
                if done { "returned Ok" } else { "was cut" }
            ));
        }
        if done && found.as_ref() != Some(&writing) {
            return Err(format!(
                "seed {seed} round {round}: a snapshot whose write returned Ok was lost"
            ));
        }
        // Carry on from what is on disk, as a restarted replica does.
        match back {
            Some(b) => {
                sm = b;
                let _ = sm.take_delta();
                published = found;
            }
            None => {
                sm = StateMachine::new();
                slot = 0;
                published = None;
            }
        }
        slot = slot.max(sm.applied());
    }
    Ok(())
}

/// Runs `seed_run` for every seed (`SNAPSHOT_POWER_CUT_SEEDS`, 500 by default) and fails
/// with the first failures.
fn all_seeds(seed_run: fn(u64) -> Result<(), String>) {
    let seeds: u64 = std::env::var("SNAPSHOT_POWER_CUT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let failures: Vec<String> = (0..seeds).filter_map(|s| seed_run(s).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(6)].join("\n")
    );
}

#[test]
fn snapshots_survive_power_cuts_while_they_are_published() {
    all_seeds(run_seed);
}

/// One seed of a received snapshot: chunks written as the transfer writes them, fsynced and
/// checked, then published over the current snapshot, with a cut armed anywhere in there.
fn run_install_seed(seed: u64) -> Result<(), String> {
    let disk = SimDisk::new(seed);
    let dir = Path::new("/data");
    disk.create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut old = StateMachine::new();
    for slot in 0..20 {
        put(&mut old, slot, slot % 7, 100);
    }
    write_file_on(&disk, dir, &old).map_err(|e| format!("seed {seed}: {e}"))?;
    let mut new = StateMachine::new();
    for slot in 0..40 + seed % 50 {
        put(&mut new, slot, slot % 13, 200 + (seed % 300) as usize);
    }
    let bytes = encode(&new).unwrap_or_default();
    disk.cut_after(1 + seed % 40);
    let path = dir.join(format!("{}.{seed}", super::INCOMING_NAME));
    let (tx, mut rx) = tokio::sync::mpsc::channel(bytes.len() / 700 + 2);
    for chunk in bytes.chunks(700) {
        let _ = tx.try_send(Bytes::copy_from_slice(chunk));
    }
    drop(tx);
    let total = bytes.len() as u64;
    let credits = super::transfer::Credits::default();
    let published = super::transfer::write_chunks(&disk, &path, &mut rx, total, &credits)
        .map_err(|e| e.to_string())
        .and_then(|complete| {
            if !complete {
                return Err("incomplete".into());
            }
            super::transfer::check(&disk, &path, 2)
        })
        .and_then(|_| {
            super::file::publish_incoming_on(&disk, dir, &path).map_err(|e| e.to_string())
        })
        .is_ok();
    if !disk.is_down() {
        disk.power_cut();
    }
    disk.power_on();
    let back = read_file_on(&disk, dir)
        .map_err(|e| format!("seed {seed}: unreadable after a cut while installing: {e}"))?
        .map(|b| encode(&b).unwrap_or_default());
    let old_bytes = encode(&old).unwrap_or_default();
    match back {
        Some(b) if b == bytes => Ok(()),
        Some(b) if b == old_bytes && !published => Ok(()),
        Some(_) => Err(format!(
            "seed {seed}: after a cut while installing, the snapshot is {}",
            if published {
                "not the published one"
            } else {
                "neither the old nor the new one"
            }
        )),
        None => Err(format!("seed {seed}: the snapshot vanished")),
    }
}

#[test]
fn received_snapshots_survive_power_cuts_while_they_are_installed() {
    all_seeds(run_install_seed);
}
