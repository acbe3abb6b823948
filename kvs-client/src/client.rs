//! The client: its public operations; how they run is in the submodules (`operations`:
//! reads and writes under a session, `send`: attempts at one node after another,
//! `routing`: where the next attempt goes).

mod auth;
mod members;
mod operations;
mod ranges;
mod routing;
mod send;
mod snapshot;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::time::Instant;
use wire::{ErrorReply, Hello, NodeStatus, Op, PeerRole, ReadConsistency, Reply};

use tokio_rustls::TlsConnector;

use crate::connection::Tls;
use crate::session::Sessions;
use crate::{endpoint, ClientOptions, Error, RetryHandle, WriteOutcome};
pub use members::{MemberChangeOutcome, MemberChanged};
pub use ranges::{Entry, KeyRange, RangeOptions, RangePager};
use routing::LeaderHint;
use send::{AttemptError, ConnectionSlot, Route};
pub use snapshot::SnapshotSource;

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
/// of it is bounded by [`ClientOptions::request_timeout`], except that when no endpoint
/// can be connected to (every one refuses the connection or cannot be reached) the request
/// fails at once with [`Error::Unavailable`], naming every endpoint and its error.
///
/// Every write carries a [`Session`]: a client id the cluster assigned (the client registers
/// a session with its first write, one extra round through the log) and a sequence number
/// that is new for each write and reused by each of its retries, so that the cluster
/// applies a write at most once however often it is retried. A call retries within its own
/// time budget; after it returns [`Error::OutcomeUnknown`], [`Client::retry`] retries the
/// same write later. If the cluster has forgotten the session (it keeps a bounded number,
/// the least recently active forgotten first), a new write registers a new one by itself.
///
/// [`Session`]: wire::Session
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    hello: Hello,
    /// Built once from [`ClientOptions::tls`]; `None`: plain TCP.
    tls: Option<Tls>,
    sessions: Arc<Sessions>,
    /// Where leader-only requests go first.
    leader: Mutex<LeaderHint>,
    pool: Mutex<HashMap<String, Arc<ConnectionSlot>>>,
    /// Spreads stale reads over the endpoints.
    next_replica: AtomicUsize,
    /// Endpoints that left an attempt unanswered, and until when stale reads avoid them.
    suspects: Mutex<HashMap<String, Instant>>,
}

impl Client {
    /// Creates a client of the cluster reachable at `endpoints` (`host:port` client
    /// addresses of some or all of its nodes).
    ///
    /// Checks the endpoints (at least one, each `host:port`) and the options, reads the TLS
    /// files if [`ClientOptions::tls`] names any ([`Error::TlsConfig`] names a file that
    /// cannot be used), and connects nothing yet: connections are opened on first use, so a node that is down does not
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
        let tls = match &options.tls {
            None => None,
            Some(tls) => Some(Tls {
                connector: TlsConnector::from(tls.client_config()?),
                presents_certificate: tls.identity.is_some(),
            }),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                hello: Hello::new(options.cluster_id.clone(), PeerRole::Client),
                tls,
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
    ///
    /// [`Session`]: wire::Session
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
            (Op::DeleteRange { .. }, Reply::DeletedRange { count }) => {
                Ok(WriteOutcome::DeletedRange { count })
            }
            (Op::Txn(_), Reply::TxnDone { succeeded }) => Ok(WriteOutcome::Txn { succeeded }),
            (Op::Auth(_), Reply::AuthChanged) => Ok(WriteOutcome::AuthChanged),
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
                    | AttemptError::NoConnection(reason)
                    | AttemptError::Lost(reason),
                ) => format!("{endpoint}: {reason}"),
            };
            if !first {
                return Err(Error::Unavailable { reason });
            }
        }
        unreachable!("the second try always returns")
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

fn unexpected(endpoint: String, wanted: &str, got: &Reply) -> Error {
    Error::Protocol {
        endpoint,
        reason: format!("expected {wanted}, got {got:?}"),
    }
}

/// A write answered with a reply of the wrong kind (checked before, by
/// [`operations::answers`]).
fn unexpected_to_write(endpoint: String, wanted: &str, got: &Reply) -> Error {
    unexpected(endpoint, wanted, got)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single assignment or lookup: a panic cannot leave
    // the data half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
