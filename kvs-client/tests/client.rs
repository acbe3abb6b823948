//! The library against scripted fake nodes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{answer_with, dead_endpoint, node_status, respond, store_script, Action, FakeServer};
use kvs_client::{CasOutcome, Client, ClientOptions, Error, RetryHandle, WriteOutcome};
use wire::{ClientResponse, ErrorReply, NodeRole, Op, Reply, Session, WireError};

fn client(endpoints: &[&str], timeout_ms: u64) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(timeout_ms),
        ..ClientOptions::default()
    };
    Client::connect(endpoints.iter().copied(), options).expect("valid endpoints")
}

/// A client whose attempts wait `attempt_ms` for one node, within `timeout_ms` in all.
fn patient_client(endpoints: &[&str], timeout_ms: u64, attempt_ms: u64) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(timeout_ms),
        attempt_timeout: Duration::from_millis(attempt_ms),
        ..ClientOptions::default()
    };
    Client::connect(endpoints.iter().copied(), options).expect("valid endpoints")
}

/// A leader that answers its first request (a write) and then nothing at all, like a
/// process stopped with SIGSTOP: its connection stays open, requests reach it, no answer
/// comes back.
async fn leader_that_freezes() -> FakeServer {
    let calls = Arc::new(AtomicUsize::new(0));
    FakeServer::start(Arc::new(move |request, _| {
        match calls.fetch_add(1, Ordering::SeqCst) {
            0 => respond(request, Ok(Reply::Written)),
            _ => Action::Nothing,
        }
    }))
    .await
}

fn sessions(fake: &FakeServer) -> Vec<Option<Session>> {
    fake.requests().iter().map(|r| r.session).collect()
}

#[tokio::test]
async fn concurrent_requests_answered_out_of_order_reach_their_callers() {
    const N: usize = 8;
    // Hold every get until N have arrived, then answer them newest first, value = key.
    let fake = FakeServer::start(Arc::new(|request, conn| {
        conn.held.push(request.clone());
        if conn.held.len() < N {
            return Action::Nothing;
        }
        let responses = conn
            .held
            .drain(..)
            .rev()
            .map(|held| ClientResponse {
                id: held.id,
                result: Ok(Reply::Value {
                    value: held.op.key().cloned(),
                    stale: false,
                }),
            })
            .collect();
        Action::Respond(responses)
    }))
    .await;
    let client = client(&[&fake.addr], 5000);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.get(format!("key-{i}")).await) })
        })
        .collect();
    for task in tasks {
        let (i, got) = task.await.expect("task");
        assert_eq!(
            got.expect("answered"),
            Some(Bytes::from(format!("key-{i}")))
        );
    }
    // All on one multiplexed connection, with distinct ids.
    assert_eq!(fake.connections(), 1);
    let mut ids: Vec<u64> = fake.requests().iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N);
}

#[tokio::test]
async fn not_leader_with_an_address_is_followed_even_outside_the_list() {
    let leader = FakeServer::start_as("kvs", 3, store_script(3)).await;
    let leader_addr = leader.addr.clone();
    let follower = FakeServer::start_as(
        "kvs",
        1,
        answer_with(move |_| {
            Err(ErrorReply::NotLeader {
                leader: Some(3),
                leader_addr: Some(leader_addr.clone()),
            })
        }),
    )
    .await;
    let client = client(&[&follower.addr], 5000);
    assert_eq!(client.leader(), None);
    client
        .put("k", "v")
        .await
        .expect("put through the redirect");
    assert_eq!(client.leader(), Some(leader.addr.clone()));
    assert_eq!(follower.requests().len(), 1);
    assert_eq!(leader.requests().len(), 1);
    // The redirected write is the same write: same session.
    assert_eq!(sessions(&follower), sessions(&leader));
    assert!(sessions(&leader)[0].is_some());

    // The next leader request goes straight to the remembered leader.
    assert_eq!(client.get("k").await.expect("get"), Some(Bytes::from("v")));
    assert_eq!(follower.requests().len(), 1);
    assert_eq!(leader.requests().len(), 2);
}

#[tokio::test]
async fn not_leader_without_an_address_tries_the_next_endpoint() {
    let follower = FakeServer::start(answer_with(|_| {
        Err(ErrorReply::NotLeader {
            leader: None,
            leader_addr: None,
        })
    }))
    .await;
    let leader = FakeServer::start(store_script(2)).await;
    let client = client(&[&follower.addr, &leader.addr], 5000);
    assert!(!client.delete("k").await.expect("delete"));
    assert_eq!(follower.requests().len(), 1);
    assert_eq!(leader.requests().len(), 1);
    assert_eq!(sessions(&follower), sessions(&leader));
    assert_eq!(client.leader(), Some(leader.addr.clone()));

    client.put("k", "v").await.expect("put");
    assert_eq!(follower.requests().len(), 1, "the leader is remembered");
    assert_eq!(leader.requests().len(), 2);
}

#[tokio::test]
async fn unavailable_is_retried_with_backoff_until_success() {
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeServer::start(answer_with({
        let calls = Arc::clone(&calls);
        move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Err(ErrorReply::Unavailable {
                reason: "election in progress".to_owned(),
            }),
            _ => Ok(Reply::Written),
        }
    }))
    .await;
    let client = client(&[&fake.addr], 5000);
    let started = Instant::now();
    client.put("k", "v").await.expect("put after two refusals");
    // Backoff: at least half of 20 ms, then half of 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(30));
    let sessions = sessions(&fake);
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| *s == sessions[0] && s.is_some()));
}

#[tokio::test]
async fn a_write_whose_connection_drops_is_retried_with_the_same_session() {
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeServer::start(Arc::new({
        let calls = Arc::clone(&calls);
        move |request, _| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Action::Close, // received, maybe applied, never answered
            _ => respond(request, Ok(Reply::Written)),
        }
    }))
    .await;
    let client = client(&[&fake.addr], 5000);
    client.put("k", "v").await.expect("the retry is answered");
    assert_eq!(fake.connections(), 2);
    let first = Session {
        client_id: client.client_id().expect("registered"),
        seq: 1,
    };
    assert_eq!(first.client_id, common::FIRST_CLIENT_ID);
    assert_eq!(fake.registrations(), 1);
    assert_eq!(sessions(&fake), vec![Some(first), Some(first)]);

    // A new write is a new session.
    client.put("k", "w").await.expect("second put");
    let second = Session { seq: 2, ..first };
    assert_eq!(
        sessions(&fake),
        vec![Some(first), Some(first), Some(second)]
    );
}

#[tokio::test]
async fn a_write_whose_connection_always_drops_has_an_unknown_outcome() {
    let fake = FakeServer::start(Arc::new(|_, _| Action::Close)).await;
    let client = client(&[&fake.addr], 300);
    let error = client.put("k", "v").await.expect_err("never answered");
    assert!(
        matches!(error, Error::OutcomeUnknown { .. }),
        "got {error:?}"
    );
    assert!(error.outcome_unknown());
    assert!(!error.is_definite_failure());
    assert!(error
        .to_string()
        .contains("may or may not have been applied"));
    // Every attempt carried the same session, so at most one of them can be applied.
    let sessions = sessions(&fake);
    assert!(sessions.len() >= 2, "retried: {sessions:?}");
    let expected = Session {
        client_id: client.client_id().expect("registered"),
        seq: 1,
    };
    assert!(sessions.iter().all(|s| *s == Some(expected)));
    let handle = error.retry_handle().expect("a retry handle");
    assert_eq!(handle.session(), expected);
    assert_eq!(
        handle.op(),
        &Op::Put {
            key: Bytes::from("k"),
            value: Bytes::from("v")
        }
    );
}

#[tokio::test]
async fn a_write_that_times_out_is_unknown_and_a_read_that_times_out_is_a_timeout() {
    let fake = FakeServer::start(Arc::new(|_, _| Action::Nothing)).await;
    let client = client(&[&fake.addr], 200);

    let started = Instant::now();
    let error = client.put("k", "v").await.expect_err("no answer");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    match &error {
        Error::OutcomeUnknown { reason, .. } => {
            assert_eq!(
                reason,
                &format!("no answer from {} within 200ms", fake.addr)
            );
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }

    let error = client.get("k").await.expect_err("no answer");
    match &error {
        Error::Timeout { after, waiting_for } => {
            assert_eq!(*after, Duration::from_millis(200));
            assert_eq!(waiting_for, &format!("an answer from {}", fake.addr));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(error.is_definite_failure());
    assert_eq!(fake.requests().len(), 2, "each sent once, not retried");
}

#[tokio::test]
async fn a_server_timeout_followed_by_refusals_stays_unknown() {
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeServer::start(answer_with({
        let calls = Arc::clone(&calls);
        move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Err(ErrorReply::Timeout),
            _ => Err(ErrorReply::Unavailable {
                reason: "no quorum".to_owned(),
            }),
        }
    }))
    .await;
    let client = client(&[&fake.addr], 200);
    let error = client
        .put("k", "v")
        .await
        .expect_err("never applied for sure");
    assert!(error.outcome_unknown(), "got {error:?}");
    assert!(fake.requests().len() >= 2);
}

#[tokio::test]
async fn a_refused_handshake_is_reported_at_once() {
    let fake = FakeServer::start_as("other", 1, store_script(1)).await;
    let client = client(&[&fake.addr], 5000);
    let started = Instant::now();
    let error = client.put("k", "v").await.expect_err("wrong cluster");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    match &error {
        Error::Handshake {
            endpoint,
            source: WireError::PeerRefused(_),
        } => assert_eq!(endpoint, &fake.addr),
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!(
            "handshake with {} failed: the peer refused our handshake: cluster id mismatch: \
             the accepting node is in cluster \"other\", the connecting side says \"kvs\"",
            fake.addr
        )
    );
    assert!(error.is_definite_failure());
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn invalid_requests_are_rejected_without_network_traffic() {
    let fake = FakeServer::start(store_script(1)).await;
    let client = client(&[&fake.addr], 5000);
    let too_big = Bytes::from(vec![b'x'; wire::VALUE_BYTES_MAX + 1]);
    match client.put("k", too_big).await {
        Err(Error::Rejected(ErrorReply::TooLarge { what, size, max })) => {
            assert_eq!(what, "value");
            assert_eq!(size, wire::VALUE_BYTES_MAX as u64 + 1);
            assert_eq!(max, wire::VALUE_BYTES_MAX as u64);
        }
        other => panic!("expected a local TooLarge, got {other:?}"),
    }
    assert!(matches!(
        client.get("").await,
        Err(Error::Rejected(ErrorReply::Invalid { .. }))
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.connections(), 0);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn endpoints_that_all_refuse_the_connection_fail_at_once() {
    let (a, b) = (dead_endpoint(), dead_endpoint());
    // A budget far longer than the bound below: the failure must not wait for it.
    let client = client(&[&a, &b], 20_000);
    for read in [false, true] {
        let started = Instant::now();
        let error = if read {
            client.get("k").await.map(drop)
        } else {
            client.put("k", "v").await
        }
        .expect_err("nobody there");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} though nothing listens anywhere",
            started.elapsed()
        );
        let Error::Unavailable { reason } = &error else {
            panic!("expected Unavailable, got {error:?}");
        };
        // Every endpoint is named with its own error, not only the last one tried.
        let prefix = format!("no replica reachable at {a},{b}: {a}: ");
        assert!(reason.starts_with(&prefix), "{reason}");
        assert!(reason.contains(&format!("; {b}: ")), "{reason}");
        assert_eq!(reason.matches("refused (os error").count(), 2, "{reason}");
        assert!(error.is_definite_failure());
        assert_eq!(error.to_string(), *reason);
    }
}

#[tokio::test]
async fn one_refusing_endpoint_among_silent_ones_does_not_fail_at_once() {
    let dead = dead_endpoint();
    let silent = FakeServer::start(Arc::new(|_, _| Action::Nothing)).await;
    let client = patient_client(&[&dead, &silent.addr], 600, 100);
    let started = Instant::now();
    let error = client.get("k").await.expect_err("nobody answers");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "gave up after {:?} though a node is there",
        started.elapsed()
    );
    assert!(error.is_definite_failure(), "a read: {error:?}");
    assert!(
        !error.to_string().contains("no replica reachable"),
        "{error}"
    );
    assert!(
        silent.requests().len() >= 2,
        "the silent node was tried again"
    );
}

#[tokio::test]
async fn a_leader_that_stops_answering_is_left_for_the_next_endpoint_with_the_same_write() {
    let frozen = leader_that_freezes().await;
    let good = FakeServer::start(store_script(2)).await;
    // Attempts wait 200 ms for one node, within a 4 s budget.
    let client = patient_client(&[&frozen.addr, &good.addr], 4000, 200);
    client
        .put("k", "v1")
        .await
        .expect("the first leader answers");
    assert_eq!(client.leader(), Some(frozen.addr.clone()));

    // It freezes. The next write waits 200 ms for it, then goes on to the other node,
    // under the same session and sequence number: the cluster applies it at most once.
    client
        .put("k", "v2")
        .await
        .expect("answered by the other node within the budget");
    assert_eq!(client.leader(), Some(good.addr.clone()));
    let second = Session {
        client_id: client.client_id().expect("registered"),
        seq: 2,
    };
    assert_eq!(sessions(&frozen)[1..], [Some(second)]);
    assert_eq!(sessions(&good), vec![Some(second)]);

    // Reads and writes now go straight to the node that answered.
    assert_eq!(client.get("k").await.expect("get"), Some(Bytes::from("v2")));
    client.put("k", "v3").await.expect("put");
    assert_eq!(
        frozen.requests().len(),
        2,
        "the frozen node is not asked again"
    );
    assert_eq!(good.requests().len(), 3);
}

#[tokio::test]
async fn a_redirect_back_to_the_node_that_left_the_request_unanswered_is_not_followed() {
    let frozen = leader_that_freezes().await;
    let frozen_addr = frozen.addr.clone();
    // A follower that has not noticed yet: it still names the frozen node.
    let behind = FakeServer::start_as(
        "kvs",
        2,
        answer_with(move |_| {
            Err(ErrorReply::NotLeader {
                leader: Some(1),
                leader_addr: Some(frozen_addr.clone()),
            })
        }),
    )
    .await;
    let new_leader = FakeServer::start_as("kvs", 3, store_script(3)).await;
    let client = patient_client(&[&frozen.addr, &behind.addr, &new_leader.addr], 4000, 200);
    client
        .put("k", "v1")
        .await
        .expect("the first leader answers");

    assert_eq!(client.get("k").await.expect("get"), None);
    assert_eq!(client.leader(), Some(new_leader.addr.clone()));
    assert_eq!(frozen.requests().len(), 2, "the redirect was not followed");
    assert_eq!(behind.requests().len(), 1);
    assert_eq!(new_leader.requests().len(), 1);
}

#[tokio::test]
async fn stale_reads_avoid_a_node_that_left_one_unanswered() {
    let silent = FakeServer::start(Arc::new(|_, _| Action::Nothing)).await;
    let good = FakeServer::start(store_script(2)).await;
    let client = patient_client(&[&silent.addr, &good.addr], 4000, 200);
    // The first stale read starts at the silent node, waits 200 ms, then asks the other.
    for _ in 0..6 {
        assert_eq!(client.get_stale("k").await.expect("stale read"), None);
    }
    assert_eq!(silent.requests().len(), 1, "asked once, then avoided");
    assert_eq!(good.requests().len(), 6);
}

#[tokio::test]
async fn a_leader_that_used_up_the_whole_budget_is_no_longer_the_first_one_asked() {
    let frozen = leader_that_freezes().await;
    let good = FakeServer::start(store_script(2)).await;
    // One attempt may take the whole 300 ms budget.
    let client = patient_client(&[&frozen.addr, &good.addr], 300, 10_000);
    client
        .put("k", "v1")
        .await
        .expect("the first leader answers");
    assert_eq!(client.leader(), Some(frozen.addr.clone()));

    let error = client.put("k", "v2").await.expect_err("no answer in time");
    assert!(error.outcome_unknown(), "{error:?}");
    assert_eq!(client.leader(), None, "the silent leader is forgotten");

    // The next request starts at the other endpoint, although the frozen one is first.
    assert_eq!(client.get("k").await.expect("get"), None);
    assert_eq!(client.leader(), Some(good.addr.clone()));
    assert_eq!(frozen.requests().len(), 2);
}

#[test]
fn connect_checks_endpoints_and_options() {
    let none: [&str; 0] = [];
    for endpoints in [&none[..], &["nohost"], &["h:0"], &["127.0.0.1:1", "x:"]] {
        assert!(
            matches!(
                Client::connect(endpoints.iter().copied(), ClientOptions::default()),
                Err(Error::InvalidEndpoint { .. })
            ),
            "{endpoints:?}"
        );
    }
    let bad_cluster = ClientOptions {
        cluster_id: String::new(),
        ..ClientOptions::default()
    };
    assert!(matches!(
        Client::connect(["127.0.0.1:1"], bad_cluster),
        Err(Error::InvalidOptions { .. })
    ));
    let no_patience = ClientOptions {
        attempt_timeout: Duration::ZERO,
        ..ClientOptions::default()
    };
    assert!(matches!(
        Client::connect(["127.0.0.1:1"], no_patience),
        Err(Error::InvalidOptions { reason }) if reason == "the attempt timeout is zero"
    ));
    // A node that is down does not fail construction; duplicates are dropped.
    let client = Client::connect(
        ["127.0.0.1:1", "127.0.0.1:1", "[::1]:2"],
        ClientOptions::default(),
    )
    .expect("lazy");
    assert_eq!(client.endpoints(), ["127.0.0.1:1", "[::1]:2"]);
}

#[tokio::test]
async fn writes_carry_increasing_sequence_numbers_and_reads_none() {
    let fake = FakeServer::start(store_script(1)).await;
    let client = client(&[&fake.addr], 5000);
    let cas = client
        .compare_and_swap("k", None, "a")
        .await
        .expect("cas absent");
    assert_eq!(cas, CasOutcome::Swapped);
    let cas = client
        .compare_and_swap("k", Some(Bytes::from("b")), "c")
        .await
        .expect("cas mismatch");
    assert_eq!(
        cas,
        CasOutcome::Mismatch {
            current: Some(Bytes::from("a"))
        }
    );
    assert_eq!(client.get("k").await.expect("get"), Some(Bytes::from("a")));
    assert!(client.delete("k").await.expect("delete"));
    assert!(!client.delete("k").await.expect("delete again"));
    let seqs: Vec<Option<u64>> = sessions(&fake).iter().map(|s| s.map(|s| s.seq)).collect();
    assert_eq!(seqs, vec![Some(1), Some(2), None, Some(3), Some(4)]);
    assert!(matches!(
        fake.requests()[1].op,
        Op::Cas {
            expected: Some(_),
            ..
        }
    ));
}

#[tokio::test]
async fn stale_reads_go_to_any_node_and_status_asks_every_endpoint() {
    let follower = FakeServer::start_as(
        "kvs",
        2,
        answer_with(|request| match request.op {
            Op::Status => Ok(Reply::Status(Box::new(node_status(
                2,
                "follower",
                NodeRole::Follower,
            )))),
            _ => Ok(Reply::Value {
                value: Some(Bytes::from("old")),
                stale: true,
            }),
        }),
    )
    .await;
    let leader = FakeServer::start(store_script(1)).await;
    let dead = dead_endpoint();
    let client = client(&[&follower.addr, &leader.addr, &dead], 2000);

    assert_eq!(
        client.get_stale("k").await.expect("stale read"),
        Some(Bytes::from("old"))
    );
    assert_eq!(follower.requests()[0].session, None);

    let statuses = client.status().await;
    let endpoints: Vec<&str> = statuses.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        endpoints,
        [follower.addr.as_str(), leader.addr.as_str(), dead.as_str()]
    );
    assert_eq!(statuses[0].1.as_ref().map(|s| s.id).ok(), Some(2));
    assert_eq!(
        statuses[1].1.as_ref().map(|s| s.role).ok(),
        Some(NodeRole::Leader)
    );
    match &statuses[2].1 {
        Err(Error::Unavailable { reason }) => assert!(reason.starts_with(&dead), "{reason}"),
        other => panic!("expected the dead node to be unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_outcome_is_retried_with_its_handle_as_the_same_write() {
    let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fake = FakeServer::start(Arc::new({
        let answering = Arc::clone(&answering);
        move |request, _| {
            if answering.load(Ordering::SeqCst) {
                respond(request, Ok(Reply::Deleted { existed: true }))
            } else {
                Action::Close
            }
        }
    }))
    .await;
    let client = client(&[&fake.addr], 300);
    let error = client.delete("k").await.expect_err("never answered");
    let handle = error.retry_handle().expect("a retry handle").clone();
    let sent_before = fake.requests().len();

    // Later, through the handle (here carried through bytes, as across processes), by
    // another client: the same session and sequence number, no new registration.
    answering.store(true, Ordering::SeqCst);
    let other = self::client(&[&fake.addr], 2000);
    let handle = RetryHandle::from_bytes(&handle.to_bytes()).expect("roundtrip");
    let outcome = other.retry(&handle).await.expect("answered");
    assert_eq!(outcome, WriteOutcome::Deleted { existed: true });
    let sessions = sessions(&fake);
    assert_eq!(sessions.len(), sent_before + 1);
    assert!(sessions.iter().all(|s| *s == Some(handle.session())));
    assert_eq!(fake.registrations(), 1, "a retry registers nothing");
    assert_eq!(other.client_id(), None);
}

#[tokio::test]
async fn a_retry_that_fails_again_stays_unknown_with_the_same_handle() {
    let fake = FakeServer::start(answer_with(|_| {
        Err(ErrorReply::Unavailable {
            reason: "no quorum".to_owned(),
        })
    }))
    .await;
    let client = client(&[&fake.addr], 200);
    let session = Session {
        client_id: 99,
        seq: 5,
    };
    let op = Op::Put {
        key: Bytes::from("k"),
        value: Bytes::from("v"),
    };
    let handle = RetryHandle::new(session, op).expect("a write");
    // The first attempt may have been applied: a refusal now does not make it definite.
    let error = client.retry(&handle).await.expect_err("refused");
    assert!(error.outcome_unknown(), "got {error:?}");
    assert_eq!(error.retry_handle(), Some(&handle));
}

#[tokio::test]
async fn a_retry_of_a_forgotten_session_is_session_expired() {
    let fake = FakeServer::start(answer_with(|request| {
        let s = request.session.expect("a write carries its session");
        Err(ErrorReply::SessionExpired {
            client_id: s.client_id,
            seq: s.seq,
        })
    }))
    .await;
    let client = client(&[&fake.addr], 2000);
    let session = Session {
        client_id: 99,
        seq: 5,
    };
    let handle = RetryHandle::new(session, Op::Delete { key: "k".into() }).expect("a write");
    let error = client.retry(&handle).await.expect_err("expired");
    assert!(
        matches!(
            error,
            Error::SessionExpired {
                client_id: 99,
                seq: 5
            }
        ),
        "got {error:?}"
    );
    assert!(
        error.outcome_unknown(),
        "the first attempt may have been applied"
    );
    assert_eq!(error.retry_handle(), None, "retrying cannot help");
    assert!(
        error.to_string().starts_with("session expired: "),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn a_new_write_whose_session_was_forgotten_registers_a_new_one() {
    let fake = FakeServer::start(answer_with(|request| {
        let s = request.session.expect("a write carries its session");
        if s.client_id == common::FIRST_CLIENT_ID {
            Err(ErrorReply::SessionExpired {
                client_id: s.client_id,
                seq: s.seq,
            })
        } else {
            Ok(Reply::Written)
        }
    }))
    .await;
    let client = client(&[&fake.addr], 2000);
    client
        .put("k", "v")
        .await
        .expect("applied under a new session");
    let renewed = common::FIRST_CLIENT_ID + 1;
    assert_eq!(client.client_id(), Some(renewed));
    assert_eq!(fake.registrations(), 2);
    let s = |client_id| Some(Session { client_id, seq: 1 });
    assert_eq!(
        sessions(&fake),
        vec![s(common::FIRST_CLIENT_ID), s(renewed)]
    );
}

#[tokio::test]
async fn a_write_lost_then_refused_as_expired_is_session_expired_not_renewed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeServer::start(Arc::new({
        let calls = Arc::clone(&calls);
        move |request, _| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Action::Close, // maybe applied
            _ => {
                let s = request.session.expect("a write carries its session");
                respond(
                    request,
                    Err(ErrorReply::SessionExpired {
                        client_id: s.client_id,
                        seq: s.seq,
                    }),
                )
            }
        }
    }))
    .await;
    let client = client(&[&fake.addr], 2000);
    let error = client.put("k", "v").await.expect_err("expired");
    assert!(
        matches!(error, Error::SessionExpired { seq: 1, .. }),
        "got {error:?}"
    );
    assert_eq!(
        fake.registrations(),
        1,
        "sending it again could apply it twice"
    );
}

#[tokio::test]
async fn concurrent_first_writes_share_one_registration() {
    let fake = FakeServer::start(store_script(1)).await;
    let client = client(&[&fake.addr], 5000);
    let writes = (0..16).map(|i| {
        let client = client.clone();
        async move { client.put(format!("k{i}"), "v").await }
    });
    for result in futures::future::join_all(writes).await {
        result.expect("put");
    }
    assert_eq!(fake.registrations(), 1);
    let mut seqs: Vec<u64> = sessions(&fake).iter().flatten().map(|s| s.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
}

#[tokio::test]
async fn replicas_without_a_leader_are_reported_with_what_each_said() {
    let candidate = FakeServer::start(answer_with(|_| {
        Err(ErrorReply::Unavailable {
            reason: "no leader elected yet".to_owned(),
        })
    }))
    .await;
    let dead = dead_endpoint();
    let client = client(&[&candidate.addr, &dead], 600);
    let error = client.get("k").await.expect_err("no leader");
    let Error::Unavailable { reason } = &error else {
        panic!("expected Unavailable, got {error:?}");
    };
    let expected = format!(
        "no leader with a quorum at {},{dead} after 600ms: {}: unavailable: no leader elected \
         yet; {dead}: ",
        candidate.addr, candidate.addr
    );
    assert!(reason.starts_with(&expected), "{reason}");
    assert!(reason.contains("refused"), "{reason}");
}
