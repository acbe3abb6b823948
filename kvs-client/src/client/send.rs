//! One request through the cluster: the attempts at one node after another until one
//! answers definitely, over the pooled connections.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wire::{ErrorReply, Op, Reply, Session};

use super::{lock, Client};
use crate::backoff::Backoff;
use crate::connection::{Answer, CallError, ConnectError, Connection};
use crate::{endpoint, format_duration, Error, RetryHandle};

/// Endpoints the connection pool remembers at most; addresses learned from redirects
/// beyond this are forgotten first.
const POOL_ENDPOINTS_MAX: usize = 64;

/// The connection to one endpoint, if open; locked while one is being opened, so that
/// tasks asking at once share a single attempt.
pub(super) type ConnectionSlot = tokio::sync::Mutex<Option<Arc<Connection>>>;

/// Which nodes may serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Only the leader: writes and linearizable reads.
    Leader,
    /// Any node: stale reads.
    AnyReplica,
}

/// How one attempt at one node failed, before any answer.
pub(super) enum AttemptError {
    /// Nothing was sent: the node is unreachable or the connection is unusable.
    NotSent(String),
    /// Nothing was sent: nothing listens at the endpoint (the connection was refused).
    NoListener(String),
    /// Nothing was sent: no connection could be opened (timed out, no route, the
    /// handshake broke off).
    NoConnection(String),
    /// The request was sent, then the connection broke.
    Lost(String),
    /// Retrying cannot help.
    Fatal(Error),
}

/// How [`Client::send`] failed.
pub(super) enum SendError {
    /// A definite failure of this attempt (of the whole write unless it was a retry).
    Failed(Error),
    /// A write may have been applied: its outcome is unknown, for this reason.
    Unknown(String),
    /// The cluster does not know the write's session, and no attempt of it was applied.
    SessionUnknown,
}

/// What [`Client::send`] does after an attempt: go on with the search, or return.
type Step = ControlFlow<Result<(String, Reply), SendError>>;

/// Where one [`Client::send`] stands: the node it tries next and what the attempts so far
/// found.
struct Search {
    route: Route,
    /// Whether the request is a write (carries a session).
    is_write: bool,
    /// Whether an attempt of this write may have been applied already.
    maybe_applied: bool,
    /// The endpoint of the next attempt.
    target: String,
    /// Endpoints tried in this round; coming back to one of them ends the round.
    tried: HashSet<String>,
    /// Endpoints that left an attempt unanswered in this round.
    silent: HashSet<String>,
    /// Endpoints of the list whose latest attempt could not open a connection.
    unreachable: HashSet<String>,
    /// What the latest attempt at each endpoint found, for the final error.
    findings: HashMap<String, String>,
    /// Whether some node answered (a refusal counts) during this search.
    answered: bool,
    /// Endpoints whose latest answer named a leader.
    naming_a_leader: HashSet<String>,
    /// The node whose redirect the current target is, if it is one.
    redirected_by: Option<String>,
    /// How long the next attempt waits for its node.
    patience: Duration,
    backoff: Backoff,
}

impl Client {
    /// Tries nodes until one answers `op` definitely or `deadline` passes. A write carries
    /// `session` (reads and registrations none); `maybe_applied` says whether an earlier
    /// attempt of this write may have been applied already (a retry).
    ///
    /// Each attempt waits for its node at most the attempt timeout (doubling after each
    /// attempt left unanswered), then the node is suspected: it is no longer the leader
    /// hint, the next endpoint is tried, and a redirect to it is not followed before the
    /// next round. Every attempt of a write carries the same session and sequence number,
    /// so however many nodes it reaches, the cluster applies it at most once.
    pub(super) async fn send(
        &self,
        op: &Op,
        route: Route,
        session: Option<Session>,
        maybe_applied: bool,
        deadline: Instant,
    ) -> Result<(String, Reply), SendError> {
        debug_assert_eq!(
            session.is_some(),
            op.is_write(),
            "writes, and only they, carry a session"
        );
        let mut search = Search {
            route,
            is_write: session.is_some(),
            maybe_applied,
            target: self.first_target(route),
            tried: HashSet::new(),
            silent: HashSet::new(),
            unreachable: HashSet::new(),
            findings: HashMap::new(),
            answered: false,
            naming_a_leader: HashSet::new(),
            redirected_by: None,
            patience: self.inner.options.attempt_timeout,
            backoff: Backoff::new(),
        };
        loop {
            if search.tried.contains(&search.target) {
                // A full round without success (or a redirect loop): wait a little first.
                let delay = search.backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Err(self.give_up(&search));
                }
                tokio::time::sleep(delay).await;
                search.tried.clear();
                search.silent.clear();
            }
            let target = search.target.clone();
            search.tried.insert(target.clone());
            let sent = Arc::new(AtomicBool::new(false));
            let attempt = self.attempt(&target, op.clone(), session, &sent);
            let attempt_deadline = Instant::now()
                .checked_add(search.patience)
                .map_or(deadline, |limit| limit.min(deadline));
            let answer = tokio::time::timeout_at(attempt_deadline, attempt).await;
            // The attempt is dropped by now: a request the writer had not taken is never sent.
            let sent = sent.load(Ordering::Acquire);
            if !matches!(
                answer,
                Ok(Err(
                    AttemptError::NoListener(_) | AttemptError::NoConnection(_)
                ))
            ) {
                search.unreachable.remove(&target);
            }
            let step = match answer {
                Ok(answer) => self.on_answer(&mut search, answer),
                Err(_elapsed) => self.on_silence(&mut search, sent, attempt_deadline >= deadline),
            };
            if let ControlFlow::Break(result) = step {
                return result;
            }
        }
    }

    /// The attempt at `search.target` got no answer in time; `sent` says whether the
    /// request went out, `out_of_time` whether the whole budget is spent.
    fn on_silence(&self, search: &mut Search, sent: bool, out_of_time: bool) -> Step {
        let target = search.target.clone();
        // Whatever the node is doing (paused, overloaded, cut off), it is not serving this
        // client now: the next request must not start there.
        self.went_silent(&target);
        if out_of_time {
            let after = self.inner.options.request_timeout;
            return ControlFlow::Break(Err(if search.is_write && (sent || search.maybe_applied) {
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
                search.note(&target, "connection timed out".to_owned());
                self.give_up(search)
            }));
        }
        let patience = search.patience;
        tracing::debug!(endpoint = %target, ?patience, sent, "no answer in time");
        search.maybe_applied |= search.is_write && sent;
        let finding = if sent {
            format!("no answer within {}", format_duration(patience))
        } else {
            format!("not sent within {}", format_duration(patience))
        };
        search.note(&target, finding);
        search.redirected_by = None;
        search.patience = patience.saturating_mul(2);
        search.target = self.next_endpoint(&target);
        search.silent.insert(target);
        ControlFlow::Continue(())
    }

    /// The attempt at `search.target` ended in time, with `answer`.
    fn on_answer(&self, search: &mut Search, answer: Result<Answer, AttemptError>) -> Step {
        let target = search.target.clone();
        if answer.is_ok() {
            self.answered(&target);
            search.answered = true;
        }
        match answer {
            Ok(Ok(reply)) => {
                if search.route == Route::Leader {
                    self.leader_hint().leader = Some(target.clone());
                }
                ControlFlow::Break(Ok((target, reply)))
            }
            Ok(Err(refusal)) => self.on_refusal(search, refusal),
            Err(error) => self.on_failure(search, error),
        }
    }

    /// The node at `search.target` refused the request.
    fn on_refusal(&self, search: &mut Search, refusal: ErrorReply) -> Step {
        let target = search.target.clone();
        tracing::debug!(endpoint = %target, %refusal, "request refused");
        search.note(&target, refusal.to_string());
        search.redirected_by = None;
        if matches!(
            refusal,
            ErrorReply::NotLeader {
                leader: Some(_),
                ..
            }
        ) {
            search.naming_a_leader.insert(target.clone());
        }
        match refusal {
            ErrorReply::NotLeader {
                leader_addr: Some(leader),
                ..
            } if endpoint::validate(&leader).is_ok()
                && !search.silent.contains(&leader)
                && !search.tried.contains(&leader) =>
            {
                self.leader_hint().leader = Some(leader.clone());
                search.redirected_by = Some(target);
                search.target = leader;
            }
            // A redirect to a node that just left an attempt unanswered (the others have
            // not noticed yet) or could not be connected to counts as no leader named; so
            // does one to an address tried in this round already (the node itself, as a
            // container may see the leader's published address): the next endpoint is
            // tried instead.
            ErrorReply::NotLeader { .. }
            | ErrorReply::Unavailable { .. }
            | ErrorReply::ShuttingDown => {
                self.forget_leader(&target);
                search.target = self.next_endpoint(&target);
            }
            ErrorReply::Busy => {}
            ErrorReply::Timeout => search.maybe_applied |= search.is_write,
            ErrorReply::SessionExpired { client_id, seq } => {
                return ControlFlow::Break(Err(if search.maybe_applied {
                    SendError::Failed(Error::SessionExpired { client_id, seq })
                } else {
                    SendError::SessionUnknown
                }));
            }
            ErrorReply::PermissionDenied { identity, reason } => {
                let error = Error::PermissionDenied { identity, reason };
                return ControlFlow::Break(Err(unknown_if(search.maybe_applied, error)));
            }
            // Refused for what it is, not where it went (a membership change refused by
            // the leader among them).
            ErrorReply::TooLarge { .. }
            | ErrorReply::AuthRefused { .. }
            | ErrorReply::Invalid { .. }
            | ErrorReply::ChangeInProgress
            | ErrorReply::StaleConfig { .. }
            | ErrorReply::LearnerNotReady { .. }
            | ErrorReply::WouldLoseQuorum { .. }
            | ErrorReply::UnknownMember { .. }
            | ErrorReply::MemberExists { .. }
            | ErrorReply::AlreadyVoter { .. }
            | ErrorReply::LastVoter { .. }
            | ErrorReply::TooManyMembers { .. }
            | ErrorReply::SnapshotBusy { .. } => {
                let error = Error::Rejected(refusal);
                return ControlFlow::Break(Err(unknown_if(search.maybe_applied, error)));
            }
        }
        ControlFlow::Continue(())
    }

    /// The attempt at `search.target` failed before any answer.
    fn on_failure(&self, search: &mut Search, error: AttemptError) -> Step {
        let target = search.target.clone();
        let reason = match error {
            AttemptError::Fatal(error) => {
                return ControlFlow::Break(Err(unknown_if(search.maybe_applied, error)));
            }
            AttemptError::NotSent(reason) => {
                tracing::debug!(endpoint = %target, %reason, "not sent");
                reason
            }
            AttemptError::NoListener(reason) | AttemptError::NoConnection(reason) => {
                tracing::debug!(endpoint = %target, %reason, "cannot connect");
                return self.on_no_connection(search, reason);
            }
            AttemptError::Lost(reason) => {
                tracing::debug!(endpoint = %target, %reason, "connection lost");
                search.maybe_applied |= search.is_write;
                reason
            }
        };
        search.note(&target, reason);
        self.forget_leader(&target);
        let after = search
            .redirected_by
            .take()
            .unwrap_or_else(|| target.clone());
        search.target = self.next_endpoint(&after);
        ControlFlow::Continue(())
    }

    /// No connection to `search.target` could be opened. Once no endpoint of the list can
    /// be connected to, the search ends at once: no node is there to answer before the
    /// deadline. A redirect target that cannot be reached is not followed again in this
    /// round, and the search goes on after the node that named it.
    fn on_no_connection(&self, search: &mut Search, reason: String) -> Step {
        let target = search.target.clone();
        search.note(&target, reason);
        self.forget_leader(&target);
        if self.inner.endpoints.contains(&target) {
            search.unreachable.insert(target.clone());
        } else {
            search.silent.insert(target.clone());
        }
        if search.unreachable.len() == self.inner.endpoints.len() {
            return ControlFlow::Break(Err(self.nobody_reachable(search)));
        }
        let after = search.redirected_by.take().unwrap_or(target);
        search.target = self.next_endpoint(&after);
        ControlFlow::Continue(())
    }

    /// One request to one node, over its pooled connection (opened if needed).
    pub(super) async fn attempt(
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
            self.inner.tls.as_ref(),
        )
        .await
        .map_err(|e| match e {
            ConnectError::NoListener(reason) => AttemptError::NoListener(reason),
            ConnectError::Unreachable(reason) => AttemptError::NoConnection(reason),
            ConnectError::Refused(source) => AttemptError::Fatal(Error::Handshake {
                endpoint: endpoint.to_owned(),
                source,
            }),
            ConnectError::Config(error) => AttemptError::Fatal(error),
        })?;
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// The error for an operation that could connect to no endpoint: reported at once,
    /// since no node is there to answer before the deadline. Names every endpoint's error.
    fn nobody_reachable(&self, search: &Search) -> SendError {
        let endpoints = self.inner.endpoints.join(",");
        let findings = self.findings(search);
        if search.maybe_applied {
            return SendError::Unknown(format!(
                "an earlier attempt got no answer, then no replica was reachable at \
                 {endpoints}: {findings}"
            ));
        }
        SendError::Failed(Error::Unavailable {
            reason: format!("no replica reachable at {endpoints}: {findings}"),
        })
    }

    /// The error for an operation whose time ran out between attempts: no leader with a
    /// quorum if nodes answered and none names a leader in its latest answer, else no
    /// leader (or replica) reachable; with what each endpoint said last.
    fn give_up(&self, search: &Search) -> SendError {
        let after = format_duration(self.inner.options.request_timeout);
        let findings = self.findings(search);
        if search.maybe_applied {
            return SendError::Unknown(format!("no definite answer within {after}: {findings}"));
        }
        let endpoints = self.inner.endpoints.join(",");
        let leaderless = search.answered && search.naming_a_leader.is_empty();
        let what = match (search.route, leaderless) {
            (Route::Leader, true) => "no leader with a quorum",
            (Route::Leader, false) => "no leader reachable",
            (Route::AnyReplica, _) => "no replica reachable",
        };
        SendError::Failed(Error::Unavailable {
            reason: format!("{what} at {endpoints} after {after}: {findings}"),
        })
    }

    /// What the latest attempt at each endpoint found, the listed endpoints first and in
    /// their order, then any address a redirect led to: `A: ...; B: ...`.
    fn findings(&self, search: &Search) -> String {
        let listed = &self.inner.endpoints;
        let mut others: Vec<&String> = search
            .findings
            .keys()
            .filter(|e| !listed.contains(e))
            .collect();
        others.sort();
        let parts: Vec<String> = listed
            .iter()
            .chain(others)
            .filter_map(|e| search.findings.get(e).map(|f| format!("{e}: {f}")))
            .collect();
        if parts.is_empty() {
            "no attempt finished".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

impl Search {
    /// Records what the latest attempt at `endpoint` found.
    fn note(&mut self, endpoint: &str, finding: String) {
        self.naming_a_leader.remove(endpoint);
        self.findings.insert(endpoint.to_owned(), finding);
    }
}

impl SendError {
    /// The error of write `session` doing `op`.
    pub(super) fn into_error(self, session: Session, op: &Op) -> Error {
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
    pub(super) fn into_read_error(self) -> Error {
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
