//! The simulated disk keeps what a real disk guarantees and no more; the real disk passes
//! the same basic checks.

use std::path::{Path, PathBuf};

use super::*;

fn dir() -> PathBuf {
    PathBuf::from("/data")
}

fn file(d: &SimDisk, name: &str) -> PathBuf {
    let p = dir().join(name);
    let _ = d.create_dir_all(&dir());
    p
}

fn write(d: &dyn Disk, p: &Path, bytes: &[u8], sync: bool) {
    let mut f = d.open(p, Open::Write).unwrap_or_else(|e| panic!("{e}"));
    f.append(bytes).unwrap_or_else(|e| panic!("{e}"));
    if sync {
        f.sync_data().unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn what_was_synced_survives_every_power_cut() {
    for seed in 0..200 {
        let d = SimDisk::new(seed);
        let p = file(&d, "log");
        write(&d, &p, &[7u8; 3000], true);
        d.sync_dir(&dir()).unwrap_or_else(|e| panic!("{e}"));
        write(&d, &p, &[9u8; 2000], false);
        d.power_cut();
        let got = d.read(&p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(got.len() >= 3000, "seed {seed}: {}", got.len());
        assert_eq!(&got[..3000], &[7u8; 3000][..], "seed {seed}");
        // Whatever landed of the unsynced write landed in whole sectors or not at all,
        // with zeros where a sector did not land.
        for (i, b) in got[3000..].iter().enumerate() {
            assert!(*b == 9 || *b == 0, "seed {seed}: byte {} is {b}", 3000 + i);
        }
    }
}

#[test]
fn power_cuts_lose_tear_and_reorder_unsynced_writes() {
    let (mut none, mut all, mut torn, mut hole) = (0, 0, 0, 0);
    for seed in 0..300 {
        let d = SimDisk::new(seed);
        let p = file(&d, "log");
        write(&d, &p, &[], true);
        d.sync_dir(&dir()).unwrap_or_else(|e| panic!("{e}"));
        write(&d, &p, &[1u8; 4096], false);
        d.power_cut();
        let got = d.read(&p).unwrap_or_else(|e| panic!("{e}"));
        match got.len() {
            0 => none += 1,
            4096 if got.iter().all(|b| *b == 1) => all += 1,
            _ => {
                torn += 1;
                // A sector landed after one that did not: zeros before non-zero bytes.
                let first_zero = got.iter().position(|b| *b == 0);
                if first_zero.is_some_and(|z| got[z..].contains(&1)) {
                    hole += 1;
                }
            }
        }
    }
    assert!(
        none > 0 && all > 0 && torn > 0 && hole > 0,
        "{none} {all} {torn} {hole}"
    );
}

#[test]
fn a_new_name_needs_a_directory_sync() {
    let mut lost = 0;
    for seed in 0..50 {
        let d = SimDisk::new(seed);
        let p = file(&d, "snap.tmp");
        write(&d, &p, b"snapshot", true);
        let q = dir().join("snap");
        d.rename(&p, &q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d.durable_content(&q),
            None,
            "not durable before the directory sync"
        );
        d.power_cut();
        if !d.exists(&q) {
            lost += 1;
            continue;
        }
        assert_eq!(d.read(&q).ok().as_deref(), Some(&b"snapshot"[..]));
    }
    assert!(lost > 0, "an unsynced rename must be able to get lost");
    let d = SimDisk::new(1);
    let p = file(&d, "snap.tmp");
    write(&d, &p, b"snapshot", true);
    let q = dir().join("snap");
    d.rename(&p, &q).unwrap_or_else(|e| panic!("{e}"));
    d.sync_dir(&dir()).unwrap_or_else(|e| panic!("{e}"));
    d.power_cut();
    assert_eq!(d.read(&q).ok().as_deref(), Some(&b"snapshot"[..]));
    assert!(!d.exists(&p));
}

#[test]
fn handles_die_with_the_power() {
    let d = SimDisk::new(3);
    let p = file(&d, "log");
    let mut f = d.open(&p, Open::Write).unwrap_or_else(|e| panic!("{e}"));
    d.power_cut();
    assert!(f.append(b"x").is_err());
    assert!(f.sync_data().is_err());
}

#[test]
fn injected_faults_fail_as_a_real_disk_does() {
    let d = SimDisk::new(9);
    let p = file(&d, "log");
    d.set_faults(SimFaults {
        fsync_eio: 1.0,
        capacity: Some(100),
        ..SimFaults::default()
    });
    let mut f = d.open(&p, Open::Write).unwrap_or_else(|e| panic!("{e}"));
    f.append(&[0u8; 60]).unwrap_or_else(|e| panic!("{e}"));
    let full = f.append(&[0u8; 60]);
    assert_eq!(
        full.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::StorageFull)
    );
    let failed = f.sync_data();
    assert!(failed.is_err_and(|e| e.to_string().contains("Input/output error")));
    let s = d.stats();
    assert_eq!((s.fsync_errors, s.full_disk_errors), (1, 1));
}

#[test]
fn read_faults_damage_what_is_returned_not_what_is_stored() {
    let d = SimDisk::new(4);
    let p = file(&d, "log");
    write(&d, &p, &[0xAAu8; 2048], true);
    d.set_faults(SimFaults {
        read_bit_flip: 1.0,
        read_zero_sector: 1.0,
        ..SimFaults::default()
    });
    let got = d.read(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(got, vec![0xAAu8; 2048]);
    assert_eq!(
        got.iter().filter(|b| **b == 0).count() % 512,
        0,
        "a whole sector zeroed"
    );
    d.set_faults(SimFaults::default());
    assert_eq!(d.read(&p).ok(), Some(vec![0xAAu8; 2048]));
    assert_eq!(d.stats().read_corruptions, 2);
}

#[test]
fn the_same_seed_gives_the_same_disk() {
    let run = |seed| {
        let d = SimDisk::new(seed);
        let p = file(&d, "log");
        for i in 0..20u8 {
            write(&d, &p, &[i; 700], i % 7 == 0);
        }
        d.power_cut();
        (d.read(&p).ok(), d.stats())
    };
    assert_eq!(run(11), run(11));
    assert!((0..20).any(|s| run(s) != run(11)));
}

#[test]
fn the_real_disk_reads_back_what_it_wrote() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = RealDisk;
    let p = tmp.path().join("f");
    write(&d, &p, b"hello", true);
    let mut f = d.open(&p, Open::Write).unwrap_or_else(|e| panic!("{e}"));
    f.write_at(1, b"EL").unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 5];
    assert_eq!(f.read_at(0, &mut buf).ok(), Some(5));
    assert_eq!(&buf, b"hELlo");
    f.truncate(2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.len().ok(), Some(2));
    let q = tmp.path().join("g");
    d.rename(&p, &q).unwrap_or_else(|e| panic!("{e}"));
    d.sync_dir(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.list(tmp.path()).ok(), Some(vec![q.clone()]));
    d.remove(&q).unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.exists(&q));
}
