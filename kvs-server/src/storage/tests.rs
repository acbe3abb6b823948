use super::*;
use paxos_core::{Ballot, Value};
use std::sync::{Arc, Mutex};

fn accepted(slot: u64) -> PersistEntry {
    PersistEntry::Accepted {
        slot,
        ballot: Ballot::new(1, 1),
        value: Value::Noop,
    }
}

#[test]
fn batches_become_durable_and_survive_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let (state, storage) = open(dir.path(), WalOptions::default(), move |e| {
        if let Ok(mut v) = ev.lock() {
            v.push(format!("{e:?}"));
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state, RecoveredState::default());
    let mut entries = vec![PersistEntry::Promised(Ballot::new(1, 1))];
    entries.extend((0..5).map(accepted));
    entries.push(PersistEntry::Committed { upto: 5 });
    let sent = storage.send(StorageCmd::Append {
        incarnation: 0,
        id: 1,
        entries,
    });
    assert!(sent.is_ok());
    assert!(storage.send(StorageCmd::Compact { slot: 3 }).is_ok());
    storage.close();
    let seen = events.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(seen, vec!["Durable { incarnation: 0, id: 1 }".to_string()]);

    let (state, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    storage.close();
    assert_eq!(state.promised, Ballot::new(1, 1));
    assert_eq!(state.commit, 5);
    assert_eq!(
        state.accepted.keys().copied().collect::<Vec<_>>(),
        vec![3, 4]
    );
}

fn batch(id: u64, value_bytes: usize) -> StorageCmd {
    StorageCmd::Append {
        incarnation: 0,
        id,
        entries: vec![PersistEntry::Accepted {
            slot: id,
            ballot: Ballot::new(1, 1),
            value: Value::Commands(vec![bytes::Bytes::from(vec![0u8; value_bytes])]),
        }],
    }
}

#[test]
fn a_stalled_disk_backlogs_the_queue_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The storage thread stalls in its first report until released (the sender is
    // dropped): a stalled disk.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (durable_tx, durable_rx) = std::sync::mpsc::channel();
    let (_, mut storage) = open(dir.path(), WalOptions::default(), move |e| {
        if let StorageEvent::Durable { id, .. } = e {
            if let Ok(rx) = release_rx.lock() {
                let _ = rx.recv(); // the first report waits; later ones pass
            }
            let _ = durable_tx.send(id);
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    storage.set_backlog_bytes_max(100_000);
    assert!(storage.send(batch(1, 10)).is_ok());
    let mut id = 1;
    while !storage.is_backlogged() {
        id += 1;
        assert!(id < 100, "the backlog never passed its bound");
        assert!(storage.send(batch(id, 10_000)).is_ok());
    }
    drop(release_tx);
    // Every report comes once the disk has caught up, and the backlog is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = 0;
    while last < id {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        last = durable_rx
            .recv_timeout(wait)
            .unwrap_or_else(|e| panic!("no durable report: {e}"));
    }
    assert_eq!(storage.backlog_bytes(), 0);
    assert!(!storage.is_backlogged());
    storage.close();
}

/// The durable state the storage thread reports, read back from disk.
fn durable_state(storage: &Storage) -> RecoveredState {
    let (tx, rx) = tokio::sync::oneshot::channel();
    assert!(storage.send(StorageCmd::DurableState { reply: tx }).is_ok());
    rx.blocking_recv()
        .unwrap_or_else(|e| panic!("no durable state: {e}"))
}

fn append(incarnation: u64, id: u64, entries: Vec<PersistEntry>) -> StorageCmd {
    StorageCmd::Append {
        incarnation,
        id,
        entries,
    }
}

#[test]
fn a_crash_drops_the_crashed_incarnations_queued_appends_before_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The writer stalls in its first report until released, so later appends queue.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel::<()>();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let (_, storage) = open(dir.path(), WalOptions::default(), move |e| {
        let _ = stalled_tx.send(());
        if let Ok(rx) = release_rx.lock() {
            let _ = rx.recv(); // the first report waits; later ones pass
        }
        if let Ok(mut v) = seen.lock() {
            v.push(format!("{e:?}"));
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let promise = PersistEntry::Promised(Ballot::new(1, 1));
    assert!(storage.send(append(0, 1, vec![promise])).is_ok());
    stalled_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the first batch was never reported: {e}"));
    assert!(storage.send(append(0, 2, vec![accepted(0)])).is_ok());
    assert!(storage.send(append(0, 3, vec![accepted(1)])).is_ok());
    // Incarnation 0 crashes while batches 2 and 3 wait behind the stalled report.
    storage.crash(1);
    drop(release_tx);
    let state = durable_state(&storage);
    assert_eq!(state.promised, Ballot::new(1, 1));
    assert!(
        state.accepted.is_empty(),
        "appends queued before the crash reached the disk: {state:?}"
    );
    assert_eq!(
        storage.backlog_bytes(),
        0,
        "dropped appends leave the backlog"
    );
    assert_eq!(storage.dropped_batches(), 2);
    // The next incarnation writes as usual.
    assert!(storage.send(append(1, 1, vec![accepted(5)])).is_ok());
    storage.close();
    let reported = events.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(
        reported,
        vec![
            "Durable { incarnation: 0, id: 1 }".to_string(),
            "Durable { incarnation: 1, id: 1 }".to_string(),
        ],
        "a dropped batch is never reported durable"
    );
    let (state, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    storage.close();
    assert_eq!(state.promised, Ballot::new(1, 1));
    assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![5]);
}

#[test]
fn without_a_crash_a_failed_incarnations_appends_are_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(storage.send(append(0, 1, vec![accepted(0)])).is_ok());
    assert!(storage.send(append(0, 2, vec![accepted(1)])).is_ok());
    // The durable state is read back from the files after a reopen, and matches.
    let state = durable_state(&storage);
    assert_eq!(
        state.accepted.keys().copied().collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(storage.send(StorageCmd::Compact { slot: 1 }).is_ok());
    let state = durable_state(&storage);
    assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!((state.commit, state.snapshot_slot), (1, 1));
    storage.close();
}

#[test]
fn undecodable_record_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let (mut wal, _) =
            Wal::open(dir.path(), WalOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(wal.append(b"\xff\xff not a record").is_ok());
        assert!(wal.sync().is_ok());
    }
    let err = open(dir.path(), WalOptions::default(), |_| {}).err();
    assert!(
        matches!(err, Some(StorageError::Undecodable { index: 0, .. })),
        "{err:?}"
    );
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("refusing to start"), "{text}");
}

/// Appends `entries` to the log in `dir` as an earlier release wrote them (in the network
/// encoding).
fn write_legacy(dir: &std::path::Path, entries: &[PersistEntry]) {
    let (mut wal, _) = Wal::open(dir, WalOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    for e in entries {
        let raw = wire::encode(e).unwrap_or_else(|err| panic!("{err}"));
        assert!(wal.append(&raw).is_ok());
    }
    assert!(wal.sync().is_ok());
}

/// The first byte of every record in the log in `dir`.
fn record_versions(dir: &std::path::Path) -> Vec<u8> {
    let (_, records) = Wal::open(dir, WalOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    records.iter().map(|r| r[0]).collect()
}

#[test]
fn a_log_of_an_earlier_release_is_read_then_rewritten_in_the_current_format() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut old = vec![PersistEntry::Promised(Ballot::new(1, 1))];
    old.extend((0..4).map(accepted));
    old.push(PersistEntry::Committed { upto: 4 });
    write_legacy(dir.path(), &old);
    let (state, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.promised, Ballot::new(1, 1));
    assert_eq!((state.accepted.len(), state.commit), (4, 4));
    // New records go on in the current format, after the old ones.
    assert!(storage.send(append(0, 1, vec![accepted(4)])).is_ok());
    storage.close();
    let versions = record_versions(dir.path());
    assert!(versions[..6].iter().all(|v| *v <= 2), "{versions:?}");
    assert_eq!(versions[6], record::RECORD_VERSION);
    let (state, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.accepted.len(), 5);
    // Compaction rewrites the log, in the current format only.
    assert!(storage.send(StorageCmd::Compact { slot: 2 }).is_ok());
    storage.close();
    let versions = record_versions(dir.path());
    assert!(
        versions.iter().all(|v| *v == record::RECORD_VERSION),
        "{versions:?}"
    );
    let (state, storage) =
        open(dir.path(), WalOptions::default(), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    storage.close();
    assert_eq!(
        state.accepted.keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
}

#[test]
fn a_record_of_an_unknown_version_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let (mut wal, _) =
            Wal::open(dir.path(), WalOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut raw = record::encode(&accepted(0)).unwrap_or_default();
        assert!(wal.append(&raw).is_ok());
        raw[0] = 0x17;
        assert!(wal.append(&raw).is_ok());
        assert!(wal.sync().is_ok());
    }
    let err = open(dir.path(), WalOptions::default(), |_| {}).err();
    assert!(
        matches!(
            &err,
            Some(StorageError::Undecodable {
                index: 1,
                source: RecordError::UnknownVersion(0x17),
                ..
            })
        ),
        "{err:?}"
    );
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("version 0x17"), "{text}");
}
