//! The membership operations of the library against fake nodes: a change names the
//! configuration it read, a change sent again after no answer is found done by the list,
//! a race is refused, a change in progress is waited for, and refusals say why.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{members_script, FakeMembers, FakeServer};
use kvs_client::{Client, ClientOptions, Error, ErrorReply, MemberChange, MemberChangeOutcome};
use wire::Op;

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    }
}

fn add(id: u64) -> MemberChange {
    MemberChange::Add {
        id,
        peer_addr: format!("h:{}", 7000 + id),
        client_addr: format!("h:{}", 6000 + id),
    }
}

async fn leader(members: FakeMembers) -> (FakeServer, Arc<Mutex<FakeMembers>>, Client) {
    let state = Arc::new(Mutex::new(members));
    let fake = FakeServer::start(members_script(Arc::clone(&state))).await;
    let client = Client::connect([fake.addr.clone()], options()).unwrap();
    (fake, state, client)
}

#[tokio::test]
async fn a_change_names_the_configuration_it_read() {
    let (fake, state, client) = leader(FakeMembers::three()).await;
    let outcome = client.member_change(add(4), false).await.unwrap();
    assert!(matches!(outcome, MemberChangeOutcome::Changed(c) if c.config_id == 2));
    let requests = fake.requests();
    assert_eq!(requests[0].op, Op::MemberList);
    assert_eq!(
        requests[1].op,
        Op::MemberChange {
            expected: 1,
            change: add(4),
            force: false
        }
    );
    assert!(requests.iter().all(|r| r.session.is_none()));
    let list = client.member_list().await.unwrap();
    let four = list.members.iter().find(|m| m.id == 4).unwrap();
    assert!(!four.voter);
    assert_eq!(state.lock().unwrap().config_id, 2);
}

#[tokio::test]
async fn a_change_sent_again_after_no_answer_is_found_done() {
    let mut members = FakeMembers::three();
    members.lose_answers = 1;
    let (fake, state, client) = leader(members).await;
    let outcome = client.member_change(add(4), false).await.unwrap();
    // Applied once (configuration 2), the retry refused as stale, the list shows it.
    assert_eq!(outcome, MemberChangeOutcome::AlreadyDone { config_id: 2 });
    assert_eq!(state.lock().unwrap().config_id, 2);
    let changes = fake
        .requests()
        .iter()
        .filter(|r| matches!(r.op, Op::MemberChange { .. }))
        .count();
    assert_eq!(changes, 2, "sent twice, applied once");
}

#[tokio::test]
async fn a_change_racing_another_is_refused_and_nothing_changes() {
    // The configuration moves on between the list and the change.
    let state = Arc::new(Mutex::new(FakeMembers::three()));
    let racing = Arc::clone(&state);
    let inner = members_script(Arc::clone(&state));
    let script: common::Script = Arc::new(move |request, conn| {
        if matches!(request.op, Op::MemberChange { .. }) {
            let mut m = racing.lock().unwrap();
            if m.config_id == 1 {
                m.config_id = 2; // someone else's change
            }
        }
        inner(request, conn)
    });
    let fake = FakeServer::start(script).await;
    let client = Client::connect([fake.addr.clone()], options()).unwrap();
    let err = client
        .member_change(MemberChange::Remove { id: 3 }, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected(ErrorReply::StaleConfig {
                expected: 1,
                current: 2
            })
        ),
        "{err}"
    );
    assert!(state.lock().unwrap().members.contains_key(&3));
    assert!(err.is_definite_failure());
}

#[tokio::test]
async fn a_change_in_progress_is_waited_for() {
    let mut members = FakeMembers::three();
    members.busy_for = 2;
    let (_fake, state, client) = leader(members).await;
    let outcome = client.member_change(add(5), false).await.unwrap();
    assert!(matches!(outcome, MemberChangeOutcome::Changed(_)));
    assert!(state.lock().unwrap().members.contains_key(&5));
}

#[tokio::test]
async fn refusals_say_why_and_change_nothing() {
    let mut members = FakeMembers::three();
    members
        .members
        .insert(4, (false, "h:7004".into(), "h:6004".into()));
    members.lag.insert(4, 5000);
    let (_fake, state, client) = leader(members).await;
    let err = client
        .member_change(MemberChange::Promote { id: 4 }, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rejected: learner 4 is not ready: it is 5000 slots behind the leader (at most 128 \
         allowed); wait for it to catch up"
    );
    let err = client
        .member_change(MemberChange::Remove { id: 9 }, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Rejected(ErrorReply::UnknownMember { id: 9 })),
        "{err}"
    );
    let err = client.member_change(add(2), false).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected(ErrorReply::MemberExists { id: 2 })),
        "{err}"
    );
    assert_eq!(state.lock().unwrap().config_id, 1, "nothing changed");
    // Bad input never leaves the client.
    let err = client
        .member_change(
            MemberChange::Add {
                id: 6,
                peer_addr: "no-port".into(),
                client_addr: "h:1".into(),
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("peer address"), "{err}");
}

#[tokio::test]
async fn a_follower_sends_the_client_to_the_leader() {
    let (leader_fake, state, _) = leader(FakeMembers::three()).await;
    let leader_addr = leader_fake.addr.clone();
    let follower = FakeServer::start(common::answer_with(move |_| {
        Err(ErrorReply::NotLeader {
            leader: Some(1),
            leader_addr: Some(leader_addr.clone()),
        })
    }))
    .await;
    let client = Client::connect([follower.addr.clone()], options()).unwrap();
    client.member_change(add(4), false).await.unwrap();
    assert!(state.lock().unwrap().members.contains_key(&4));
    // The list was redirected; the change then went to the leader directly.
    assert_eq!(follower.requests().len(), 1);
}
