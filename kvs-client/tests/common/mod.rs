//! A fake kvs node for tests: a real TCP listener that runs wire's server handshake, then
//! answers each request as the test's script says, and records everything it receives.
//! Session registrations are answered by the fake itself (client ids 7, 8, 9, ... per fake
//! node), counted apart and not shown to the script.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::codec::Framed;
use wire::{
    BallotInfo, ClientRequest, ClientResponse, ErrorReply, HandshakeExpectation, NodeRole,
    NodeStatus, Op, PeerReachability, Reply,
};

/// What the fake does with one request.
pub enum Action {
    /// Send these responses now (for this request or earlier held ones, in this order).
    Respond(Vec<ClientResponse>),
    /// Close the connection without answering.
    Close,
    /// Do nothing (the request stays unanswered, or was held for later).
    Nothing,
}

/// The per-connection state a script may use, for example to hold requests and answer
/// them later in another order.
#[derive(Default)]
pub struct ConnState {
    pub held: Vec<ClientRequest>,
}

/// A test's script: called for every request, in arrival order.
pub type Script = Arc<dyn Fn(&ClientRequest, &mut ConnState) -> Action + Send + Sync>;

/// Builds a script from a function answering each request right away.
pub fn answer_with(
    f: impl Fn(&ClientRequest) -> Result<Reply, ErrorReply> + Send + Sync + 'static,
) -> Script {
    Arc::new(move |request, _| respond(request, f(request)))
}

/// One immediate answer to `request`.
pub fn respond(request: &ClientRequest, result: Result<Reply, ErrorReply>) -> Action {
    Action::Respond(vec![ClientResponse {
        id: request.id,
        result,
    }])
}

/// The client id a fake node hands out first.
pub const FIRST_CLIENT_ID: u64 = 7;

struct Recorder {
    requests: Mutex<Vec<ClientRequest>>,
    registrations: AtomicUsize,
    connections: AtomicUsize,
    changed: Notify,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A fake node listening on 127.0.0.1; stops when dropped.
pub struct FakeServer {
    pub addr: String,
    recorder: Arc<Recorder>,
}

impl FakeServer {
    /// A node of cluster "kvs" with id 1.
    pub async fn start(script: Script) -> FakeServer {
        FakeServer::start_as("kvs", 1, script).await
    }

    /// A node of `cluster_id` with id `node_id`.
    pub async fn start_as(cluster_id: &str, node_id: u64, script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let recorder = Arc::new(Recorder {
            requests: Mutex::new(Vec::new()),
            registrations: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            changed: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let expected = HandshakeExpectation::clients(cluster_id);
        let accept = tokio::spawn({
            let recorder = Arc::clone(&recorder);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    recorder.connections.fetch_add(1, Ordering::SeqCst);
                    let task = tokio::spawn(serve(
                        stream,
                        expected.clone(),
                        node_id,
                        Arc::clone(&script),
                        Arc::clone(&recorder),
                    ));
                    recorder.tasks.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        recorder.tasks.lock().unwrap().push(accept.abort_handle());
        FakeServer { addr, recorder }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ClientRequest> {
        self.recorder.requests.lock().unwrap().clone()
    }

    /// Session registrations answered so far.
    pub fn registrations(&self) -> usize {
        self.recorder.registrations.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.recorder.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived (panics after 5 s).
    pub async fn wait_for_requests(&self, n: usize) {
        let wait = async {
            loop {
                let changed = self.recorder.changed.notified();
                if self.requests().len() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} requests arrived"));
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        for task in self.recorder.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    expected: HandshakeExpectation,
    node_id: u64,
    script: Script,
    recorder: Arc<Recorder>,
) {
    let mut framed = Framed::new(stream, wire::frame_codec());
    if wire::server_handshake(&mut framed, &expected, node_id, Duration::from_secs(5))
        .await
        .is_err()
    {
        return;
    }
    let mut state = ConnState::default();
    while let Some(Ok(frame)) = framed.next().await {
        let request: ClientRequest = wire::decode(&frame).expect("a valid request");
        let action = if request.op == Op::RegisterSession {
            let n = recorder.registrations.fetch_add(1, Ordering::SeqCst) as u64;
            let client_id = FIRST_CLIENT_ID + n;
            respond(&request, Ok(Reply::SessionRegistered { client_id }))
        } else {
            recorder.requests.lock().unwrap().push(request.clone());
            script(&request, &mut state)
        };
        recorder.changed.notify_waiters();
        match action {
            Action::Respond(responses) => {
                for response in responses {
                    let payload = wire::encode(&response).expect("encodable");
                    if framed.send(payload).await.is_err() {
                        return;
                    }
                }
            }
            Action::Close => return,
            Action::Nothing => {}
        }
    }
}

/// An address nothing listens on (a port just released).
pub fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

/// A node status as a fake answers it.
pub fn node_status(id: u64, addr: &str, role: NodeRole) -> NodeStatus {
    NodeStatus {
        id,
        client_addr: addr.to_owned(),
        role,
        ballot: BallotInfo { round: 3, node: 1 },
        commit_index: 40 + id,
        applied_index: 30 + id,
        leader: Some(1),
        peers: [1, 2, 3]
            .into_iter()
            .filter(|&p| p != id)
            .map(|p| PeerReachability {
                id: p,
                reachable: p != 3,
            })
            .collect(),
        acceptor_failures: id,
        acceptor_recoveries: 2 * id,
        acceptor_down: id == 3,
        uptime_ms: 1000,
    }
}

/// A script for a working leader: an in-memory store shared by all its connections.
pub fn store_script(id: u64) -> Script {
    let data: Arc<Mutex<BTreeMap<Bytes, Bytes>>> = Arc::default();
    answer_with(move |request| {
        let mut data = data.lock().unwrap();
        Ok(match &request.op {
            Op::Get { key, consistency } => Reply::Value {
                value: data.get(key).cloned(),
                stale: *consistency == wire::ReadConsistency::Stale,
            },
            Op::Put { key, value } => {
                data.insert(key.clone(), value.clone());
                Reply::Written
            }
            Op::Delete { key } => Reply::Deleted {
                existed: data.remove(key).is_some(),
            },
            Op::Cas { key, expected, new } => {
                let current = data.get(key).cloned();
                if current == *expected {
                    data.insert(key.clone(), new.clone());
                    Reply::Swapped
                } else {
                    Reply::Mismatch { current }
                }
            }
            Op::Status => Reply::Status(Box::new(node_status(id, "fake", NodeRole::Leader))),
            Op::RegisterSession => unreachable!("the fake answers registrations itself"),
            Op::MemberList | Op::MemberChange { .. } => {
                return Err(ErrorReply::Invalid {
                    reason: "this fake keeps no membership".into(),
                })
            }
            Op::SnapshotSave | Op::SnapshotRead { .. } => {
                return Err(ErrorReply::Invalid {
                    reason: "this fake keeps no snapshots".into(),
                })
            }
            Op::Range(_) | Op::DeleteRange { .. } | Op::Txn(_) => {
                return Err(ErrorReply::Invalid {
                    reason: "this fake serves no ranges or transactions".into(),
                })
            }
            Op::Auth(_) | Op::AuthStatus => {
                return Err(ErrorReply::Invalid {
                    reason: "this fake keeps no users or roles".into(),
                })
            }
        })
    })
}

/// The membership of a fake leader: a configuration id and the members, changed by
/// compare-and-swap as a real leader does.
#[derive(Clone, Debug)]
pub struct FakeMembers {
    pub config_id: u64,
    /// id → (voter, peer address, client address).
    pub members: BTreeMap<u64, (bool, String, String)>,
    /// Refuse this many changes with "in progress" first.
    pub busy_for: usize,
    /// Apply a change, then close the connection instead of answering, this many times.
    pub lose_answers: usize,
    /// The lag of each learner as the leader reports it.
    pub lag: BTreeMap<u64, u64>,
}

impl FakeMembers {
    /// Voters 1, 2 and 3 in configuration 1.
    pub fn three() -> FakeMembers {
        let member = |id: u64| {
            (
                id,
                (true, format!("h:{}", 7000 + id), format!("h:{}", 6000 + id)),
            )
        };
        FakeMembers {
            config_id: 1,
            members: (1..=3).map(member).collect(),
            busy_for: 0,
            lose_answers: 0,
            lag: BTreeMap::new(),
        }
    }

    fn list(&self) -> wire::MemberList {
        wire::MemberList {
            config_id: self.config_id,
            in_effect: true,
            served_by: 1,
            leader: Some(1),
            members: self
                .members
                .iter()
                .map(|(&id, (voter, peer, client))| wire::MemberInfo {
                    id,
                    peer_addr: Some(peer.clone()),
                    client_addr: Some(client.clone()),
                    voter: *voter,
                    applied: Some(100),
                    lag: Some(self.lag.get(&id).copied().unwrap_or(0)),
                })
                .collect(),
        }
    }

    fn change(&mut self, expected: u64, change: &wire::MemberChange) -> Result<Reply, ErrorReply> {
        if self.busy_for > 0 {
            self.busy_for -= 1;
            return Err(ErrorReply::ChangeInProgress);
        }
        if expected != self.config_id {
            return Err(ErrorReply::StaleConfig {
                expected,
                current: self.config_id,
            });
        }
        match change {
            wire::MemberChange::Add {
                id,
                peer_addr,
                client_addr,
            } => {
                if self.members.contains_key(id) {
                    return Err(ErrorReply::MemberExists { id: *id });
                }
                self.members
                    .insert(*id, (false, peer_addr.clone(), client_addr.clone()));
            }
            wire::MemberChange::Promote { id } => match self.members.get_mut(id) {
                None => return Err(ErrorReply::UnknownMember { id: *id }),
                Some((true, ..)) => return Err(ErrorReply::AlreadyVoter { id: *id }),
                Some(m) => {
                    if let Some(&lag) = self.lag.get(id).filter(|&&l| l > 128) {
                        return Err(ErrorReply::LearnerNotReady {
                            id: *id,
                            lag: Some(lag),
                            allowed: 128,
                        });
                    }
                    m.0 = true;
                }
            },
            wire::MemberChange::Remove { id } => {
                if self.members.remove(id).is_none() {
                    return Err(ErrorReply::UnknownMember { id: *id });
                }
            }
        }
        self.config_id += 1;
        Ok(Reply::MemberChanged {
            config_id: self.config_id,
            effective_from_slot: 1000,
        })
    }
}

/// A script for a leader that keeps `members`.
pub fn members_script(members: Arc<Mutex<FakeMembers>>) -> Script {
    Arc::new(move |request, _| {
        let mut m = members.lock().unwrap();
        match &request.op {
            Op::MemberList => respond(request, Ok(Reply::Members(Box::new(m.list())))),
            Op::MemberChange {
                expected, change, ..
            } => {
                let answer = m.change(*expected, change);
                if answer.is_ok() && m.lose_answers > 0 {
                    m.lose_answers -= 1;
                    return Action::Close;
                }
                respond(request, answer)
            }
            _ => respond(
                request,
                Err(ErrorReply::Invalid {
                    reason: "this fake only keeps a membership".into(),
                }),
            ),
        }
    })
}
