use super::format::{header, MAGIC_V2, MAGIC_V3, MAGIC_V4};
use super::*;
use crate::state_machine::StateMachine;
use bytes::Bytes;
use std::fs;
use std::path::Path;
use wire::{Command, Session, WriteOp};

/// Three sessions (registered in slot 0) with a few writes each.
fn sample() -> StateMachine {
    let mut sm = StateMachine::new();
    let register = Command {
        session: Session {
            client_id: wire::NO_CLIENT_ID,
            seq: 12345,
        },
        op: WriteOp::RegisterSession,
        origin: None,
    };
    let ids: Vec<u64> = (0..3)
        .filter_map(|_| match sm.apply(0, register.clone()).reply {
            Ok(wire::Reply::SessionRegistered { client_id }) => Some(client_id),
            _ => None,
        })
        .collect();
    sm.finish_slot(0);
    for i in 1..20u64 {
        let c = Command {
            session: Session {
                client_id: ids[i as usize % 3],
                seq: i / 3 + 1,
            },
            op: WriteOp::Put {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(vec![i as u8; i as usize]),
            },
            origin: None,
        };
        sm.apply(i, c);
        sm.finish_slot(i);
    }
    sm.set_membership(membership());
    sm
}

/// A membership log with a change in it.
fn membership() -> paxos_core::MembershipLog {
    let first = paxos_core::Membership::initial(&[1, 2, 3], &std::collections::BTreeMap::new());
    let mut log = paxos_core::MembershipLog::new(4, first);
    let add = paxos_core::Reconfig {
        expected: 1,
        change: paxos_core::Change::AddLearner {
            id: 4,
            meta: Bytes::from_static(b"meta"),
        },
    };
    log.apply_chosen(10, &add).unwrap_or_else(|e| panic!("{e}"));
    log
}

/// Bytes of the membership part of `sm`'s snapshot (length and log).
fn membership_bytes(sm: &StateMachine) -> usize {
    4 + sm
        .membership()
        .map(|m| wire::encode(m).map(|b| b.len()).unwrap_or(0))
        .unwrap_or(0)
}

/// `sm` in format 4, as the previous version wrote it: sessions remember replies only, and
/// no auth state follows the membership.
fn encode_v4(sm: &StateMachine) -> Vec<u8> {
    let mut out = MAGIC_V4.to_vec();
    out.extend_from_slice(&sm.applied().to_le_bytes());
    for (k, v) in sm.data() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    let table = sm.sessions();
    out.extend_from_slice(&table.registered().to_le_bytes());
    out.extend_from_slice(&table.salt().to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (client, s) in table.sessions() {
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&s.last_slot.to_le_bytes());
        out.extend_from_slice(&s.floor.to_le_bytes());
        out.extend_from_slice(&(s.results.len() as u32).to_le_bytes());
        for (seq, outcome) in &s.results {
            out.extend_from_slice(&seq.to_le_bytes());
            let r = v4_reply(outcome);
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(&r);
        }
    }
    let membership = sm
        .membership()
        .map(|m| wire::membership::encode_membership_log(m).unwrap_or_default())
        .unwrap_or_default();
    out.extend_from_slice(&(membership.len() as u32).to_le_bytes());
    out.extend_from_slice(&membership);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A session's outcome as format 4 (and earlier) stored it: the reply alone.
fn v4_reply(outcome: &crate::state_machine::Outcome) -> Vec<u8> {
    match outcome {
        Ok(reply) => wire::encode(reply).map(|b| b.to_vec()).unwrap_or_default(),
        Err(e) => panic!("format 4 cannot hold a refusal: {e}"),
    }
}

#[test]
fn the_sample_has_sessions() {
    let sm = sample();
    assert_eq!(sm.sessions().len(), 3);
    assert!(sm
        .sessions()
        .sessions()
        .values()
        .all(|s| !s.results.is_empty()));
}

#[test]
fn a_snapshot_of_the_previous_format_is_read() {
    let sm = sample();
    let bytes = encode_v4(&sm);
    // Rewrite as format 2: no counter, salt or floors.
    let mut old = MAGIC_V2.to_vec();
    let keys_end = bytes.len() - 4 - membership_bytes(&sm) - sessions_bytes(&sm);
    old.extend_from_slice(&bytes[8..keys_end]);
    old.extend_from_slice(&(sm.sessions().len() as u64).to_le_bytes());
    for (client, s) in sm.sessions().sessions() {
        old.extend_from_slice(&client.to_le_bytes());
        old.extend_from_slice(&s.last_slot.to_le_bytes());
        old.extend_from_slice(&(s.results.len() as u32).to_le_bytes());
        for (seq, outcome) in &s.results {
            old.extend_from_slice(&seq.to_le_bytes());
            let r = v4_reply(outcome);
            old.extend_from_slice(&(r.len() as u32).to_le_bytes());
            old.extend_from_slice(&r);
        }
    }
    let crc = crc32c::crc32c(&old);
    old.extend_from_slice(&crc.to_le_bytes());
    let back = decode(&old, Path::new("old")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.data(), sm.data());
    assert_eq!(back.sessions().sessions(), sm.sessions().sessions());
    assert_eq!(back.sessions().registered(), 0);
    assert_eq!(back.membership(), None);
}

#[test]
fn a_snapshot_of_version_3_is_read_without_a_membership() {
    let sm = sample();
    let bytes = encode_v4(&sm);
    // Version 3 is version 4 without the membership.
    let mut old = MAGIC_V3.to_vec();
    old.extend_from_slice(&bytes[8..bytes.len() - 4 - membership_bytes(&sm)]);
    let crc = crc32c::crc32c(&old);
    old.extend_from_slice(&crc.to_le_bytes());
    let back = decode(&old, Path::new("old")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.data(), sm.data());
    assert_eq!(back.sessions(), sm.sessions());
    assert_eq!(back.membership(), None);
}

#[test]
fn the_membership_roundtrips_and_a_newer_format_is_named() {
    let sm = sample();
    let bytes = encode(&sm).unwrap_or_default();
    let back = decode(&bytes, Path::new("s")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.membership(), Some(&membership()));
    let mut newer = bytes.clone();
    newer[7] = b'6';
    let err = decode(&newer, Path::new("s"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("snapshot format version 6 is not one this build reads (versions 2 to 5)"),
        "{err}"
    );
    let mut other = bytes;
    other[0] = b'X';
    let err = decode(&other, Path::new("s"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("not a snapshot file (bad magic)"), "{err}");
}

#[test]
fn a_snapshot_of_version_4_is_read_with_auth_disabled_and_empty() {
    let sm = sample();
    let old = encode_v4(&sm);
    let back = decode(&old, Path::new("old")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, sm);
    assert!(back.auth().is_empty());
    // Rewritten in the current format, it reads back the same.
    let again = encode(&back).unwrap_or_default();
    assert_eq!(&again[..8], b"KVSSNAP5");
    assert_eq!(decode(&again, Path::new("new")).ok(), Some(sm));
}

/// Bytes of the session part of a snapshot of `sm` in format 4 (counter, salt and
/// sessions).
fn sessions_bytes(sm: &StateMachine) -> usize {
    let mut n = 8 + 8 + 8;
    for s in sm.sessions().sessions().values() {
        n += 8 + 8 + 8 + 4;
        for outcome in s.results.values() {
            n += 8 + 4 + v4_reply(outcome).len();
        }
    }
    n
}

#[test]
fn roundtrip_through_a_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sm = sample();
    let size = write_file(dir.path(), &sm).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(size, encode(&sm).map(|b| b.len() as u64).unwrap_or(0));
    let back = read_file(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, Some(sm));
}

#[test]
fn every_flipped_bit_and_truncation_is_refused() {
    let bytes = encode(&sample()).unwrap_or_default();
    let origin = Path::new("snapshot");
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(decode(&bad, origin).is_err(), "flip at {i} accepted");
    }
    for len in [0, 5, 12, bytes.len() - 1] {
        assert!(
            decode(&bytes[..len], origin).is_err(),
            "truncation to {len} accepted"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer, origin).is_err(), "trailing byte accepted");
    let msg = decode(&bytes[..bytes.len() - 1], origin)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("corrupt snapshot snapshot"), "{msg}");
}

#[test]
fn a_hostile_length_is_refused_before_allocating() {
    let mut bytes = header(5).to_vec();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = decode(&bytes, Path::new("x"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("exceeds the limit"), "{err}");
}

#[test]
fn incoming_snapshots_are_checked_before_they_replace_the_current_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sm = sample();
    write_file(dir.path(), &sm).unwrap_or_else(|e| panic!("{e}"));
    let mut bad = encode(&StateMachine::new()).unwrap_or_default();
    bad[10] ^= 1;
    fs::write(dir.path().join(INCOMING_NAME), &bad).unwrap_or_else(|e| panic!("{e}"));
    assert!(install_incoming(dir.path(), Path::new("peer 2")).is_err());
    assert_eq!(read_file(dir.path()).ok().flatten(), Some(sm));
    let good = encode(&StateMachine::new()).unwrap_or_default();
    fs::write(dir.path().join(INCOMING_NAME), &good).unwrap_or_else(|e| panic!("{e}"));
    assert!(install_incoming(dir.path(), Path::new("peer 2")).is_ok());
    assert_eq!(
        read_file(dir.path()).ok().flatten(),
        Some(StateMachine::new())
    );
}

#[test]
fn missing_snapshot_is_none_and_temp_files_are_cleaned() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.path().join(TEMP_NAME), b"half written").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(read_file(dir.path()), Ok(None)));
    assert!(!dir.path().join(TEMP_NAME).exists());
}

fn apply_all(sm: &mut StateMachine, from: u64, ops: &[(&str, Option<&str>)]) {
    for (n, (k, v)) in ops.iter().enumerate() {
        let slot = from + n as u64;
        let op = match v {
            Some(v) => WriteOp::Put {
                key: Bytes::from(k.to_string()),
                value: Bytes::from(v.to_string()),
            },
            None => WriteOp::Delete {
                key: Bytes::from(k.to_string()),
            },
        };
        let c = Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq: slot,
            },
            op,
            origin: None,
        };
        sm.apply(slot, c);
        sm.finish_slot(slot);
    }
}

#[test]
fn merged_snapshots_equal_a_full_snapshot_of_the_same_state() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sm = StateMachine::new();
    apply_all(
        &mut sm,
        0,
        &[("b", Some("1")), ("d", Some("2")), ("f", Some("3"))],
    );
    // First snapshot: no file yet, so the delta is everything.
    let d = sm.take_delta();
    write_merged(
        dir.path(),
        sm.applied(),
        &d,
        sm.sessions(),
        sm.membership(),
        sm.auth(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Changes: insert before, between and after; replace one; delete one; delete a key
    // that never existed in the file.
    apply_all(
        &mut sm,
        3,
        &[
            ("a", Some("0")),
            ("c", Some("x")),
            ("d", Some("22")),
            ("f", None),
            ("g", Some("9")),
            ("zz", Some("z")),
            ("zz", None),
        ],
    );
    let d = sm.take_delta();
    let size = write_merged(
        dir.path(),
        sm.applied(),
        &d,
        sm.sessions(),
        sm.membership(),
        sm.auth(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let on_disk = std::fs::read(dir.path().join(FILE_NAME)).unwrap_or_default();
    assert_eq!(
        on_disk,
        encode(&sm).unwrap_or_default(),
        "merge differs from a full snapshot"
    );
    assert_eq!(size, on_disk.len() as u64);
    let back = read_file(dir.path()).ok().flatten();
    assert_eq!(back.as_ref().map(|s| s.get(b"d")), Some(Some(&b"22"[..])));
    assert_eq!(back.as_ref().map(|s| s.get(b"f")), Some(None));
}

#[test]
fn a_corrupt_base_fails_the_merge_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sm = StateMachine::new();
    apply_all(&mut sm, 0, &[("a", Some("1")), ("b", Some("2"))]);
    let d = sm.take_delta();
    write_merged(
        dir.path(),
        sm.applied(),
        &d,
        sm.sessions(),
        sm.membership(),
        sm.auth(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap_or_default();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    apply_all(&mut sm, 2, &[("c", Some("3"))]);
    let d = sm.take_delta();
    let err = write_merged(
        dir.path(),
        sm.applied(),
        &d,
        sm.sessions(),
        sm.membership(),
        sm.auth(),
    )
    .err()
    .map(|e| e.to_string());
    assert!(
        err.is_some_and(|e| e.contains("corrupt snapshot")),
        "a corrupt base must not be merged"
    );
    assert_eq!(
        std::fs::read(&path).unwrap_or_default(),
        bytes,
        "the old file is untouched"
    );
}
