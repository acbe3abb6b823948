//! The client: operations, leader finding and retries.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::time::Instant;
use wire::{ErrorReply, Hello, NodeStatus, Op, PeerRole, ReadConsistency, Reply, Session};

use crate::backoff::Backoff;
use crate::connection::{Answer, CallError, ConnectError, Connection};
use crate::session::{SessionGuard, Sessions};
use crate::{endpoint, format_duration, ClientOptions, Error, RetryHandle, WriteOutcome};

/// Endpoints the connection pool remembers at most; addresses learned from redirects
/// beyond this are forgotten first.
const POOL_ENDPOINTS_MAX: usize = 64;

/// How long, in attempt timeouts, stale reads avoid a node that left an attempt unanswered
/// (unless every node is avoided); the first stale read after that tries it again.
const SUSPICION_IN_ATTEMPT_TIMEOUTS: u32 = 5;

/// How many times one write registers a new session after the cluster forgot the current
/// one before it gives up (each time, nothing of the write was applied).
const SESSION_RENEWALS_MAX: usize = 3;

/// The outcome of [`Client::compare_and_swap`] when the cluster applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key had the expected value; it now has the new one.
    Swapped,
    /// The key did not have the expected value; nothing changed.
    Mismatch {
        /// The key's value when the operation was applied (`None`: absent).
        current: Option<Bytes>,
    },
}

/// A client of the replicated key-value store.
///
/// Cheap to clone (clones share connections, the leader hint and the write session), and
/// every method takes `&self`, so one client can serve many tasks at once. There is one
/// connection per node, opened on first use and reopened after it breaks; requests from
/// all tasks are multiplexed over it.
///
/// Writes and linearizable reads go to the leader, which the client finds and remembers:
/// it follows `NotLeader` redirects (to any address, even one not in the endpoint list),
/// tries the next endpoint when no leader is named or a node is unreachable, and backs off
/// (20 ms doubling to 500 ms, with jitter) after a full round of failures. A node that
/// does not answer within [`ClientOptions::attempt_timeout`] (a paused or overloaded
/// leader, say) is no longer taken for the leader: the request goes on to the other
/// endpoints, a redirect back to that node is not followed before the next round, and
/// stale reads avoid it for five attempt timeouts (or until it answers something). All
/// of it is bounded by [`ClientOptions::request_timeout`], except that when every endpoint
/// refuses the connection (nothing listens anywhere) the request fails at once with
/// [`Error::Unavailable`].
///
/// Every write carries a [`Session`]: a client id the cluster assigned (the client registers
/// a session with its first write, one extra round through the log) and a sequence number
/// that is new for each write and reused by each of its retries, so that the cluster
/// applies a write at most once however often it is retried. A call retries within its own
/// time budget; after it returns [`Error::OutcomeUnknown`], [`Client::retry`] retries the
/// same write later. If the cluster has forgotten the session (it keeps a bounded number,
/// the least recently active forgotten first), a new write registers a new one by itself.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    hello: Hello,
    sessions: Arc<Sessions>,
    /// Where leader-only requests go first.
    leader: Mutex<LeaderHint>,
    pool: Mutex<HashMap<String, Arc<ConnectionSlot>>>,
    /// Spreads stale reads over the endpoints.
    next_replica: AtomicUsize,
    /// Endpoints that left an attempt unanswered, and until when stale reads avoid them.
    suspects: Mutex<HashMap<String, Instant>>,
}

/// Where leader-only requests go first.
#[derive(Debug, Default)]
struct LeaderHint {
    /// The endpoint that last served a leader-only request, or that a node named as leader;
    /// `None` once it failed (refused the connection, broke it, did not answer in time).
    leader: Option<String>,
    /// Where a search without a leader starts, in the endpoint list: moved past an endpoint
    /// that failed there, so that a node that stopped answering is not the first one every
    /// request waits for.
    start: usize,
}

/// The connection to one endpoint, if open; locked while one is being opened, so that
/// tasks asking at once share a single attempt.
type ConnectionSlot = tokio::sync::Mutex<Option<Arc<Connection>>>;

/// Which nodes may serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Only the leader: writes and linearizable reads.
    Leader,
    /// Any node: stale reads.
    AnyReplica,
}

/// How one attempt at one node failed, before any answer.
enum AttemptError {
    /// Nothing was sent: the node is unreachable or the connection is unusable.
    NotSent(String),
    /// Nothing was sent: nothing listens at the endpoint (the connection was refused).
    NoListener(String),
    /// The request was sent, then the connection broke.
    Lost(String),
    /// Retrying cannot help.
    Fatal(Error),
}

impl Client {
    /// Creates a client of the cluster reachable at `endpoints` (`host:port` client
    /// addresses of some or all of its nodes).
    ///
    /// Checks the endpoints (at least one, each `host:port`) and the options, and connects
    /// nothing yet: connections are opened on first use, so a node that is down does not
    /// fail this call. Duplicate endpoints are ignored.
    pub fn connect(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let mut list: Vec<String> = Vec::new();
        for endpoint in endpoints {
            let endpoint = endpoint.into();
            endpoint::validate(&endpoint)?;
            if !list.contains(&endpoint) {
                list.push(endpoint);
            }
        }
        if list.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".to_owned(),
            });
        }
        options.validate()?;
        Ok(Client {
            inner: Arc::new(Inner {
                hello: Hello::new(options.cluster_id.clone(), PeerRole::Client),
                endpoints: list,
                options,
                sessions: Arc::new(Sessions::new()),
                leader: Mutex::new(LeaderHint::default()),
                pool: Mutex::new(HashMap::new()),
                next_replica: AtomicUsize::new(0),
                suspects: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The endpoints given to [`Client::connect`], without duplicates.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The options given to [`Client::connect`].
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The client id this client's writes carry in their [`Session`], as the cluster
    /// assigned it; `None` before the first write registers a session.
    pub fn client_id(&self) -> Option<u64> {
        self.inner.sessions.client_id()
    }

    /// The endpoint believed to be the leader: the last one that served a write or a
    /// linearizable read, or that a node named as the leader. `None` before the first such
    /// request and after the believed leader failed: refused or broke the connection, or did
    /// not answer within [`ClientOptions::attempt_timeout`].
    pub fn leader(&self) -> Option<String> {
        self.leader_hint().leader.clone()
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), Error> {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
        };
        match self.write(op).await? {
            (_, Reply::Written) => Ok(()),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "Written", &other)),
        }
    }

    /// Reads `key` linearizably (through the leader): the value reflects every write that
    /// completed before this call. `None` if the key is absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        let op = Op::Get {
            key: key.into(),
            consistency: ReadConsistency::Linearizable,
        };
        match self.read(op, Route::Leader).await? {
            (
                _,
                Reply::Value {
                    value,
                    stale: false,
                },
            ) => Ok(value),
            (endpoint, other) => Err(unexpected(endpoint, "a linearizable Value", &other)),
        }
    }

    /// Reads `key` from any node's local state, which may lag behind the leader. Cheaper
    /// than [`Client::get`] and served even without a leader. `None` if the key is absent
    /// (there).
    pub async fn get_stale(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        let op = Op::Get {
            key: key.into(),
            consistency: ReadConsistency::Stale,
        };
        match self.read(op, Route::AnyReplica).await? {
            (_, Reply::Value { value, .. }) => Ok(value),
            (endpoint, other) => Err(unexpected(endpoint, "Value", &other)),
        }
    }

    /// Removes `key`. Returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let op = Op::Delete { key: key.into() };
        match self.write(op).await? {
            (_, Reply::Deleted { existed }) => Ok(existed),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "Deleted", &other)),
        }
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: if the key is absent),
    /// atomically.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<CasOutcome, Error> {
        let op = Op::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        };
        match self.write(op).await? {
            (_, Reply::Swapped) => Ok(CasOutcome::Swapped),
            (_, Reply::Mismatch { current }) => Ok(CasOutcome::Mismatch { current }),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "Swapped or Mismatch", &other)),
        }
    }

    /// Sends again a write whose outcome was unknown, exactly as it was sent (same session,
    /// same sequence number), so that it is applied at most once over all its attempts.
    ///
    /// - If an earlier attempt was applied, the answer is that attempt's result (a retried
    ///   delete answers whether the key existed *then*; the write is not applied again).
    /// - If none was, the write is applied now.
    /// - If the cluster no longer remembers the session's results, the answer is
    ///   [`Error::SessionExpired`]: not applied now, never applicable again; read the data
    ///   to learn whether an earlier attempt took effect.
    /// - If this attempt gets no definite answer either, the error is
    ///   [`Error::OutcomeUnknown`] again, with the same handle. Every other failure is also
    ///   reported as [`Error::OutcomeUnknown`]: the earlier attempt may still have been
    ///   applied.
    ///
    /// Any client of the same cluster may retry a handle, in this process or another
    /// ([`RetryHandle::to_bytes`]).
    pub async fn retry(&self, handle: &RetryHandle) -> Result<WriteOutcome, Error> {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let session = handle.session();
        let (endpoint, reply) = self
            .send(handle.op(), Route::Leader, Some(session), true, deadline)
            .await
            .map_err(|e| e.into_error(session, handle.op()))?;
        match (handle.op(), reply) {
            (Op::Put { .. }, Reply::Written) => Ok(WriteOutcome::Written),
            (Op::Delete { .. }, Reply::Deleted { existed }) => {
                Ok(WriteOutcome::Deleted { existed })
            }
            (Op::Cas { .. }, Reply::Swapped) => Ok(WriteOutcome::Cas(CasOutcome::Swapped)),
            (Op::Cas { .. }, Reply::Mismatch { current }) => {
                Ok(WriteOutcome::Cas(CasOutcome::Mismatch { current }))
            }
            (_, other) => Err(Error::OutcomeUnknown {
                reason: unexpected(endpoint, "the reply to the retried write", &other).to_string(),
                retry: Box::new(handle.clone()),
            }),
        }
    }

    /// Asks every endpoint, concurrently, how it is. Returns one entry per endpoint, in the
    /// order of [`Client::endpoints`]; an unreachable node's entry is an error. Takes at
    /// most [`ClientOptions::request_timeout`].
    pub async fn status(&self) -> Vec<(String, Result<NodeStatus, Error>)> {
        let asks = self
            .inner
            .endpoints
            .iter()
            .map(|endpoint| async move { (endpoint.clone(), self.status_of(endpoint).await) });
        futures::future::join_all(asks).await
    }

    /// Asks the node at `endpoint` (which need not be one of [`Client::endpoints`]) how it
    /// is. A node that cannot be reached is reported at once, without retrying.
    pub async fn status_of(&self, endpoint: &str) -> Result<NodeStatus, Error> {
        endpoint::validate(endpoint)?;
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let after = self.inner.options.request_timeout;
        // Two tries: the first may find a pooled connection the node has closed since.
        for first in [true, false] {
            let sent = Arc::new(AtomicBool::new(false));
            let attempt = self.attempt(endpoint, Op::Status, None, &sent);
            let answer = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(answer) => answer,
                Err(_elapsed) => {
                    return Err(Error::Timeout {
                        after,
                        waiting_for: format!("an answer from {endpoint}"),
                    })
                }
            };
            let reason = match answer {
                Ok(Ok(Reply::Status(status))) => return Ok(*status),
                Ok(Ok(other)) => {
                    return Err(unexpected(endpoint.to_owned(), "Status", &other));
                }
                Ok(Err(e @ (ErrorReply::TooLarge { .. } | ErrorReply::Invalid { .. }))) => {
                    return Err(Error::Rejected(e));
                }
                Ok(Err(e)) => format!("{endpoint}: {e}"),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(
                    AttemptError::NotSent(reason)
                    | AttemptError::NoListener(reason)
                    | AttemptError::Lost(reason),
                ) => format!("{endpoint}: {reason}"),
            };
            if !first {
                return Err(Error::Unavailable { reason });
            }
        }
        unreachable!("the second try always returns")
    }

    /// Runs a read (or a registration) to completion: validates it, then tries nodes until
    /// one answers definitely or the time budget runs out. Returns the answering endpoint
    /// and reply.
    async fn read(&self, op: Op, route: Route) -> Result<(String, Reply), Error> {
        wire::validate(&op).map_err(Error::Rejected)?;
        let deadline = Instant::now() + self.inner.options.request_timeout;
        self.send(&op, route, None, false, deadline)
            .await
            .map_err(SendError::into_read_error)
    }

    /// Runs a write to completion under a session: registers one first if needed, and a
    /// new one if the cluster forgot it before any attempt of this write was applied.
    async fn write(&self, op: Op) -> Result<(String, Reply), Error> {
        wire::validate(&op).map_err(Error::Rejected)?;
        let deadline = Instant::now() + self.inner.options.request_timeout;
        for _ in 0..SESSION_RENEWALS_MAX {
            let guard = self.begin_write(deadline).await?;
            let session = guard.session();
            match self
                .send(&op, Route::Leader, Some(session), false, deadline)
                .await
            {
                Ok((endpoint, reply)) if answers(&op, &reply) => return Ok((endpoint, reply)),
                Ok((endpoint, reply)) => {
                    // A reply of the wrong kind: a bug on one side, and the write may
                    // have been applied.
                    let reason = unexpected(endpoint, "the reply to this write", &reply);
                    return Err(SendError::Unknown(reason.to_string()).into_error(session, &op));
                }
                Err(SendError::SessionUnknown) => {
                    tracing::debug!(
                        client_id = session.client_id,
                        "the cluster forgot this session; registering a new one"
                    );
                    self.inner.sessions.forget(session.client_id);
                }
                Err(e) => return Err(e.into_error(session, &op)),
            }
        }
        Err(Error::Unavailable {
            reason: format!(
                "the cluster forgot this client's write session {SESSION_RENEWALS_MAX} times in \
                 a row (more clients than its session table holds?); nothing was applied"
            ),
        })
    }

    /// The session and sequence number for a new write, registering a session if none is.
    async fn begin_write(&self, deadline: Instant) -> Result<SessionGuard, Error> {
        let after = self.inner.options.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.sessions.begin()).await {
                Ok(Some(guard)) => return Ok(guard),
                Ok(None) => self.register(deadline).await?,
                Err(_elapsed) => {
                    return Err(Error::Timeout {
                        after,
                        waiting_for: "a write slot (too many writes in progress)".to_owned(),
                    })
                }
            }
        }
    }

    /// Registers a write session with the cluster, unless another task just did. Nothing
    /// of any write is applied by this, so its failures are definite.
    async fn register(&self, deadline: Instant) -> Result<(), Error> {
        let sessions = &self.inner.sessions;
        let Ok(_one_at_a_time) =
            tokio::time::timeout_at(deadline, sessions.registering.lock()).await
        else {
            return Err(Error::Timeout {
                after: self.inner.options.request_timeout,
                waiting_for: "a write session to be registered".to_owned(),
            });
        };
        if sessions.client_id().is_some() {
            return Ok(());
        }
        let (endpoint, reply) = self
            .send(&Op::RegisterSession, Route::Leader, None, false, deadline)
            .await
            .map_err(SendError::into_read_error)?;
        match reply {
            Reply::SessionRegistered { client_id } if client_id != wire::NO_CLIENT_ID => {
                sessions.install(client_id);
                Ok(())
            }
            other => Err(unexpected(endpoint, "SessionRegistered", &other)),
        }
    }

    /// Tries nodes until one answers `op` definitely or `deadline` passes. A write carries
    /// `session` (reads and registrations none); `maybe_applied` says whether an earlier
    /// attempt of this write may have been applied already (a retry).
    ///
    /// Each attempt waits for its node at most the attempt timeout (doubling after each
    /// attempt left unanswered), then the node is suspected: it is no longer the leader
    /// hint, the next endpoint is tried, and a redirect to it is not followed before the
    /// next round. Every attempt of a write carries the same session and sequence number,
    /// so however many nodes it reaches, the cluster applies it at most once.
    async fn send(
        &self,
        op: &Op,
        route: Route,
        session: Option<Session>,
        mut maybe_applied: bool,
        deadline: Instant,
    ) -> Result<(String, Reply), SendError> {
        debug_assert_eq!(
            session.is_some(),
            op.is_write(),
            "writes, and only they, carry a session"
        );
        let after = self.inner.options.request_timeout;
        let is_write = session.is_some();
        let mut target = self.first_target(route);
        // Endpoints tried in this round; coming back to one of them ends the round.
        let mut tried: HashSet<String> = HashSet::new();
        // Endpoints that left an attempt unanswered in this round.
        let mut silent: HashSet<String> = HashSet::new();
        // Endpoints of the list whose latest attempt found nothing listening.
        let mut refused: HashSet<String> = HashSet::new();
        let mut patience = self.inner.options.attempt_timeout;
        let mut backoff = Backoff::new();
        let mut last = "no attempt finished".to_owned();
        loop {
            if tried.contains(&target) {
                // A full round without success (or a redirect loop): wait a little first.
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Err(self.give_up(route, maybe_applied, &last));
                }
                tokio::time::sleep(delay).await;
                tried.clear();
                silent.clear();
            }
            tried.insert(target.clone());
            let sent = Arc::new(AtomicBool::new(false));
            let attempt = self.attempt(&target, op.clone(), session, &sent);
            let attempt_deadline = Instant::now()
                .checked_add(patience)
                .map_or(deadline, |limit| limit.min(deadline));
            let answer = tokio::time::timeout_at(attempt_deadline, attempt).await;
            // The attempt is dropped by now: a request the writer had not taken is never sent.
            let sent = sent.load(Ordering::Acquire);
            if !matches!(answer, Ok(Err(AttemptError::NoListener(_)))) {
                refused.remove(&target);
            }
            let Ok(answer) = answer else {
                // Whatever the node is doing (paused, overloaded, cut off), it is not
                // serving this client now: the next request must not start there.
                self.went_silent(&target);
                if attempt_deadline >= deadline {
                    return Err(if is_write && (sent || maybe_applied) {
                        SendError::Unknown(format!(
                            "no answer from {target} within {}",
                            format_duration(after)
                        ))
                    } else if sent {
                        SendError::Failed(Error::Timeout {
                            after,
                            waiting_for: format!("an answer from {target}"),
                        })
                    } else {
                        self.give_up(route, false, &format!("{target}: connection timed out"))
                    });
                }
                tracing::debug!(endpoint = %target, ?patience, sent, "no answer in time");
                maybe_applied |= is_write && sent;
                last = if sent {
                    format!("{target}: no answer within {}", format_duration(patience))
                } else {
                    format!("{target}: not sent within {}", format_duration(patience))
                };
                silent.insert(target.clone());
                patience = patience.saturating_mul(2);
                target = self.next_endpoint(&target);
                continue;
            };
            if answer.is_ok() {
                self.answered(&target);
            }
            match answer {
                Ok(Ok(reply)) => {
                    if route == Route::Leader {
                        self.leader_hint().leader = Some(target.clone());
                    }
                    return Ok((target, reply));
                }
                Ok(Err(refusal)) => {
                    tracing::debug!(endpoint = %target, %refusal, "request refused");
                    last = format!("{target}: {refusal}");
                    match refusal {
                        ErrorReply::NotLeader {
                            leader_addr: Some(leader),
                            ..
                        } if endpoint::validate(&leader).is_ok() && !silent.contains(&leader) => {
                            self.leader_hint().leader = Some(leader.clone());
                            target = leader;
                        }
                        // A redirect to a node that just left an attempt unanswered (the
                        // others have not noticed yet) counts as no leader named.
                        ErrorReply::NotLeader { .. }
                        | ErrorReply::Unavailable { .. }
                        | ErrorReply::ShuttingDown => {
                            self.forget_leader(&target);
                            target = self.next_endpoint(&target);
                        }
                        ErrorReply::Busy => {}
                        ErrorReply::Timeout => maybe_applied |= is_write,
                        ErrorReply::SessionExpired { client_id, seq } => {
                            return Err(if maybe_applied {
                                SendError::Failed(Error::SessionExpired { client_id, seq })
                            } else {
                                SendError::SessionUnknown
                            });
                        }
                        ErrorReply::TooLarge { .. } | ErrorReply::Invalid { .. } => {
                            return Err(unknown_if(maybe_applied, Error::Rejected(refusal)));
                        }
                    }
                }
                Err(AttemptError::NotSent(reason)) => {
                    tracing::debug!(endpoint = %target, %reason, "not sent");
                    last = format!("{target}: {reason}");
                    self.forget_leader(&target);
                    target = self.next_endpoint(&target);
                }
                Err(AttemptError::NoListener(reason)) => {
                    tracing::debug!(endpoint = %target, %reason, "nothing listens");
                    last = format!("{target}: {reason}");
                    self.forget_leader(&target);
                    if self.inner.endpoints.contains(&target) {
                        refused.insert(target.clone());
                    }
                    if refused.len() == self.inner.endpoints.len() {
                        return Err(self.nobody_listens(maybe_applied, &last));
                    }
                    target = self.next_endpoint(&target);
                }
                Err(AttemptError::Lost(reason)) => {
                    tracing::debug!(endpoint = %target, %reason, "connection lost");
                    maybe_applied |= is_write;
                    last = format!("{target}: {reason}");
                    self.forget_leader(&target);
                    target = self.next_endpoint(&target);
                }
                Err(AttemptError::Fatal(error)) => return Err(unknown_if(maybe_applied, error)),
            }
        }
    }

    /// One request to one node, over its pooled connection (opened if needed).
    async fn attempt(
        &self,
        endpoint: &str,
        op: Op,
        session: Option<Session>,
        sent: &Arc<AtomicBool>,
    ) -> Result<Answer, AttemptError> {
        let connection = self.connection(endpoint).await?;
        connection
            .call(session, op, sent)
            .await
            .map_err(|e| match e {
                CallError::NotSent(reason) => AttemptError::NotSent(reason),
                CallError::Lost(reason) => AttemptError::Lost(reason),
                CallError::Rejected(refusal) => AttemptError::Fatal(Error::Rejected(refusal)),
            })
    }

    /// The open connection to `endpoint`, opening one if there is none. Tasks asking for
    /// the same endpoint at once wait for a single connection attempt.
    async fn connection(&self, endpoint: &str) -> Result<Arc<Connection>, AttemptError> {
        let slot = {
            let mut pool = lock(&self.inner.pool);
            if !pool.contains_key(endpoint) && pool.len() >= POOL_ENDPOINTS_MAX {
                let configured = &self.inner.endpoints;
                pool.retain(|known, _| configured.contains(known));
            }
            Arc::clone(pool.entry(endpoint.to_owned()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        *slot = None;
        let options = &self.inner.options;
        let connection = Connection::open(
            endpoint,
            &self.inner.hello,
            options.connect_timeout,
            options.frame_bytes_max,
        )
        .await
        .map_err(|e| match e {
            ConnectError::NoListener(reason) => AttemptError::NoListener(reason),
            ConnectError::Unreachable(reason) => AttemptError::NotSent(reason),
            ConnectError::Refused(source) => AttemptError::Fatal(Error::Handshake {
                endpoint: endpoint.to_owned(),
                source,
            }),
        })?;
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    fn first_target(&self, route: Route) -> String {
        let endpoints = &self.inner.endpoints;
        match route {
            Route::Leader => {
                let hint = self.leader_hint();
                hint.leader
                    .clone()
                    .unwrap_or_else(|| endpoints[hint.start % endpoints.len()].clone())
            }
            Route::AnyReplica => {
                let next = self.inner.next_replica.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let suspects = lock(&self.inner.suspects);
                let trusted = |endpoint: &&String| {
                    suspects
                        .get(endpoint.as_str())
                        .is_none_or(|until| *until <= now)
                };
                (0..endpoints.len())
                    .map(|i| &endpoints[(next + i) % endpoints.len()])
                    .find(trusted)
                    .unwrap_or(&endpoints[next % endpoints.len()])
                    .clone()
            }
        }
    }

    /// `endpoint` left an attempt unanswered: it is no longer the leader hint, a search
    /// without one no longer starts there, and stale reads avoid it for a while.
    fn went_silent(&self, endpoint: &str) {
        self.forget_leader(endpoint);
        let options = &self.inner.options;
        let now = Instant::now();
        let avoid_for = options
            .attempt_timeout
            .saturating_mul(SUSPICION_IN_ATTEMPT_TIMEOUTS);
        let Some(until) = now.checked_add(avoid_for) else {
            return;
        };
        let mut suspects = lock(&self.inner.suspects);
        suspects.retain(|_, until| *until > now);
        suspects.insert(endpoint.to_owned(), until);
    }

    /// `endpoint` answered: stale reads no longer avoid it.
    fn answered(&self, endpoint: &str) {
        let mut suspects = lock(&self.inner.suspects);
        if !suspects.is_empty() {
            suspects.remove(endpoint);
        }
    }

    /// The endpoint after `current` in the list (the first if `current` is not in it).
    fn next_endpoint(&self, current: &str) -> String {
        let endpoints = &self.inner.endpoints;
        let next = endpoints
            .iter()
            .position(|e| e == current)
            .map_or(0, |i| (i + 1) % endpoints.len());
        endpoints[next].clone()
    }

    /// `endpoint` failed a request: it is no longer the leader hint, and a search without
    /// one no longer starts there.
    fn forget_leader(&self, endpoint: &str) {
        let endpoints = &self.inner.endpoints;
        let mut hint = self.leader_hint();
        if hint.leader.as_deref() == Some(endpoint) {
            hint.leader = None;
        }
        if endpoints.get(hint.start).is_some_and(|e| e == endpoint) {
            hint.start = (hint.start + 1) % endpoints.len();
        }
    }

    fn leader_hint(&self) -> MutexGuard<'_, LeaderHint> {
        lock(&self.inner.leader)
    }

    /// The error for an operation that found nothing listening at any endpoint: reported at
    /// once, since no node is there to answer before the deadline.
    fn nobody_listens(&self, maybe_applied: bool, last: &str) -> SendError {
        let endpoints = self.inner.endpoints.join(",");
        if maybe_applied {
            return SendError::Unknown(format!(
                "an earlier attempt got no answer, then every endpoint ({endpoints}) refused \
                 the connection (last: {last})"
            ));
        }
        SendError::Failed(Error::Unavailable {
            reason: format!(
                "no node reachable at {endpoints}: every endpoint refused the connection \
                 (last: {last})"
            ),
        })
    }

    /// The error for an operation whose time ran out between attempts.
    fn give_up(&self, route: Route, maybe_applied: bool, last: &str) -> SendError {
        let after = format_duration(self.inner.options.request_timeout);
        if maybe_applied {
            return SendError::Unknown(format!("no definite answer within {after} (last: {last})"));
        }
        let who = match route {
            Route::Leader => "leader",
            Route::AnyReplica => "replica",
        };
        SendError::Failed(Error::Unavailable {
            reason: format!(
                "no {who} reachable at {} after {after} (last: {last})",
                self.inner.endpoints.join(",")
            ),
        })
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("client_id", &self.client_id())
            .field("leader", &self.leader())
            .finish_non_exhaustive()
    }
}

/// How [`Client::send`] failed.
enum SendError {
    /// A definite failure of this attempt (of the whole write unless it was a retry).
    Failed(Error),
    /// A write may have been applied: its outcome is unknown, for this reason.
    Unknown(String),
    /// The cluster does not know the write's session, and no attempt of it was applied.
    SessionUnknown,
}

impl SendError {
    /// The error of write `session` doing `op`.
    fn into_error(self, session: Session, op: &Op) -> Error {
        match self {
            SendError::Failed(error) => error,
            SendError::Unknown(reason) => Error::OutcomeUnknown {
                reason,
                retry: Box::new(RetryHandle::unchecked(session, op.clone())),
            },
            SendError::SessionUnknown => Error::SessionExpired {
                client_id: session.client_id,
                seq: session.seq,
            },
        }
    }

    /// The error of a read or a registration (which carry no session and are never
    /// "unknown").
    fn into_read_error(self) -> Error {
        match self {
            SendError::Failed(error) => error,
            // `send` reports these for writes only.
            SendError::Unknown(reason) => Error::Protocol {
                endpoint: String::new(),
                reason: format!("a request without a session had an unknown outcome: {reason}"),
            },
            SendError::SessionUnknown => Error::Protocol {
                endpoint: String::new(),
                reason: "a request without a session was refused as session expired".to_owned(),
            },
        }
    }
}

/// `error`, unless a write may already have been applied: then the outcome is unknown.
fn unknown_if(maybe_applied: bool, error: Error) -> SendError {
    if maybe_applied {
        SendError::Unknown(format!("an earlier attempt got no answer, then: {error}"))
    } else {
        SendError::Failed(error)
    }
}

fn unexpected(endpoint: String, wanted: &str, got: &Reply) -> Error {
    Error::Protocol {
        endpoint,
        reason: format!("expected {wanted}, got {got:?}"),
    }
}

/// A write answered with a reply of the wrong kind (checked before, by [`answers`]).
fn unexpected_to_write(endpoint: String, wanted: &str, got: &Reply) -> Error {
    unexpected(endpoint, wanted, got)
}

/// Whether `reply` is of the kind that answers write `op`.
fn answers(op: &Op, reply: &Reply) -> bool {
    matches!(
        (op, reply),
        (Op::Put { .. }, Reply::Written)
            | (Op::Delete { .. }, Reply::Deleted { .. })
            | (Op::Cas { .. }, Reply::Swapped | Reply::Mismatch { .. })
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single assignment or lookup: a panic cannot leave
    // the data half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
