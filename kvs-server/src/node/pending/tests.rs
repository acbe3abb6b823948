use super::*;
use crate::answers::Probe;
use rand::SeedableRng;

const LIMIT: Duration = Duration::from_secs(10);

fn written() -> Result<Reply, ErrorReply> {
    Ok(Reply::Written)
}

/// A command's bytes, in an allocation of their own.
fn command(n: u8) -> Bytes {
    Bytes::from(vec![n; 16])
}

#[test]
fn a_write_and_its_retries_are_answered_once_each_when_applied() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let now = Instant::now();
    let key = (7, 1);
    assert!(
        pending.join_write(key, probe.responder(1)).is_some(),
        "not in flight yet"
    );
    pending.insert_write(key, probe.responder(1), command(1), now);
    // Two retries of the same write join it instead of proposing it again.
    assert!(pending.join_write(key, probe.responder(2)).is_none());
    assert!(pending.join_write(key, probe.responder(3)).is_none());
    assert_eq!(pending.len(), (1, 0));
    assert!(pending.answer_write(key, &written()));
    assert!(!pending.answer_write(key, &written()), "answered once");
    let mut ids: Vec<u64> = probe.answers().into_iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(pending.is_empty());
    assert_eq!(probe.inflight(), 0);
}

#[test]
fn reads_are_numbered_and_taken_once() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let now = Instant::now();
    let (a, b) = (pending.next_read_id(), pending.next_read_id());
    assert_ne!(a, b);
    pending.insert_read(a, Bytes::from_static(b"k"), None, probe.responder(10), now);
    pending.insert_read(b, Bytes::from_static(b"j"), None, probe.responder(11), now);
    let (key, responder, _) = pending.take_read(a).unwrap_or_else(|| panic!("read {a}"));
    assert_eq!(key, ReadQuery::Key(Bytes::from_static(b"k")));
    assert!(pending.take_read(a).is_none());
    responder.respond(Ok(Reply::Value {
        value: None,
        stale: false,
    }));
    assert_eq!(probe.answers().len(), 1);
    assert_eq!(pending.len(), (0, 1));
}

#[test]
fn requests_that_waited_past_the_limit_time_out_and_the_others_wait_on() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let start = Instant::now();
    pending.insert_write((1, 1), probe.responder(1), command(1), start);
    let read = pending.next_read_id();
    pending.insert_read(
        read,
        Bytes::from_static(b"k"),
        None,
        probe.responder(2),
        start,
    );
    pending.insert_write(
        (1, 2),
        probe.responder(3),
        command(2),
        start + Duration::from_secs(5),
    );
    assert_eq!(
        pending.expire(start + LIMIT, LIMIT),
        0,
        "at the limit, not past it"
    );
    let later = start + LIMIT + Duration::from_millis(1);
    assert_eq!(pending.expire(later, LIMIT), 2);
    let mut answers = probe.answers();
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(
        answers,
        vec![(1, Err(ErrorReply::Timeout)), (2, Err(ErrorReply::Timeout))]
    );
    assert_eq!(pending.len(), (1, 0), "the younger write still waits");
}

#[test]
fn a_stopping_replica_answers_everything_that_waits() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let now = Instant::now();
    pending.insert_write((1, 1), probe.responder(1), command(1), now);
    let read = pending.next_read_id();
    pending.insert_read(
        read,
        Bytes::from_static(b"k"),
        None,
        probe.responder(2),
        now,
    );
    pending.fail_all();
    let mut answers = probe.answers();
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(
        answers[0],
        (1, Err(ErrorReply::Timeout)),
        "a write may still be chosen"
    );
    assert!(
        matches!(answers[1], (2, Err(ErrorReply::Unavailable { .. }))),
        "a read had no effect: {answers:?}"
    );
    assert!(pending.is_empty());
    assert_eq!(probe.inflight(), 0);
}

#[test]
fn a_sessionless_tag_is_never_one_in_flight() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let first = pending.sessionless_tag(&mut rng.clone());
    assert_eq!(first.client_id, wire::NO_CLIENT_ID);
    pending.insert_write(
        key_of(&first),
        probe.responder(1),
        command(1),
        Instant::now(),
    );
    // The same random sequence would draw `first` again: it is skipped.
    let second = pending.sessionless_tag(&mut rng);
    assert_ne!(second, first);
    assert_eq!(second.client_id, wire::NO_CLIENT_ID);
}

#[test]
fn a_dropped_proposal_is_found_by_its_bytes_not_by_their_content() {
    let probe = Probe::new();
    let mut pending = Pending::default();
    let now = Instant::now();
    let (a, b) = (command(1), command(1));
    pending.insert_write((1, 1), probe.responder(1), a.clone(), now);
    pending.insert_write((1, 2), probe.responder(2), b.clone(), now);
    // The core hands back the bytes it was given (clones share the address).
    assert_eq!(pending.proposal(&a.clone()), Some((1, 1)));
    assert_eq!(pending.proposal(&b), Some((1, 2)));
    // Equal bytes elsewhere are another command.
    assert_eq!(pending.proposal(&command(1)), None);
    assert!(pending.answer_write((1, 1), &written()));
    assert_eq!(pending.proposal(&a), None, "answered: forgotten");
    pending.fail_all();
    assert_eq!(pending.proposal(&b), None);
}

#[test]
fn a_membership_change_is_answered_once_when_its_own_outcome_comes() {
    use paxos_core::{Change, Reconfig};
    let probe = Probe::new();
    let mut pending = Pending::default();
    let now = Instant::now();
    let mine = Reconfig {
        expected: 3,
        change: Change::Promote { id: 4 },
    };
    let other = Reconfig {
        expected: 3,
        change: Change::Remove { id: 4 },
    };
    pending.insert_change(mine.clone(), probe.responder(1), now);
    assert!(!pending.is_empty());
    let done = Ok(Reply::MemberChanged {
        config_id: 4,
        effective_from_slot: 70,
    });
    assert!(!pending.answer_change(&other, &done), "another change");
    assert!(pending.answer_change(&mine, &done));
    assert!(!pending.answer_change(&mine, &done), "answered once");
    assert!(pending.is_empty());
    assert_eq!(probe.answers(), vec![(1, done)]);
    // One that waits too long: its outcome is unknown.
    pending.insert_change(mine, probe.responder(2), now);
    assert_eq!(
        pending.expire(now + LIMIT + Duration::from_millis(1), LIMIT),
        1
    );
    assert!(pending.is_empty());
    assert_eq!(probe.answers(), vec![(2, Err(ErrorReply::Timeout))]);
}
