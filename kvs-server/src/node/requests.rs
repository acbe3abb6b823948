//! Routing a client request: answered at once (status, stale reads, settled retries,
//! refusals), or handed to the consensus core (linearizable reads, writes) and recorded in
//! the pending-request table until the core's outputs answer it.

use std::time::Instant;

use bytes::Bytes;
use wire::{
    ClientRequest, Command, ErrorReply, MemberChange, Op, RangeRequest, ReadConsistency, Reply,
    Session, WriteOp,
};

use super::pending::{key_of, ReadQuery};
use super::permissions::{check_at_receipt, origin_for, read_needs};
use super::Node;
use crate::answers::Responder;
use crate::event::ClientIdentity;
use crate::metrics::RequestOp;

/// Where a valid request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The replica's status, answered at once.
    Status,
    /// A read answered from the local state, as stale as it may be.
    ReadStale(Bytes),
    /// A linearizable read answered from the local state without confirming leadership:
    /// the planted bug of `--unsafe-local-reads`, for the checker to catch.
    ReadLocalUnsafe(Bytes),
    /// A linearizable read: the leader confirms it still leads, then answers.
    ReadIndex(Bytes),
    /// A range read answered from the local state, as stale as it may be.
    RangeStale(RangeRequest),
    /// A linearizable range read, served like [`Route::ReadIndex`].
    RangeIndex(RangeRequest),
    /// A write, proposed to the log; with the client's session if it gave one for a
    /// change (registrations and writes without a session get a tag instead).
    Write(Option<Session>, WriteOp),
    /// The member list: from the leader, or this replica's own view without one.
    MemberList,
    /// A membership change, proposed on the leader.
    MemberChange {
        /// The configuration the client saw.
        expected: u64,
        /// The change.
        change: MemberChange,
        /// Skip the quorum check.
        force: bool,
    },
    /// A snapshot stream to open (a backup), on the leader.
    SnapshotSave,
    /// The next chunk of a snapshot stream.
    SnapshotRead {
        /// The stream.
        stream: u64,
        /// Where the chunk starts.
        offset: u64,
    },
    /// The users, roles and grants: read like a linearizable read.
    AuthStatus,
    /// Refused at once.
    Refuse(ErrorReply),
}

/// Where `req` goes. Pure: the caller has already checked the request's sizes.
pub(crate) fn route(req: ClientRequest, unsafe_local_reads: bool) -> Route {
    let write = match req.op {
        Op::Status => return Route::Status,
        Op::Get {
            key,
            consistency: ReadConsistency::Stale,
        } => return Route::ReadStale(key),
        Op::Get { key, .. } if unsafe_local_reads => return Route::ReadLocalUnsafe(key),
        Op::Get { key, .. } => return Route::ReadIndex(key),
        Op::Range(req) if req.consistency == ReadConsistency::Stale => {
            return Route::RangeStale(req)
        }
        Op::Range(req) => return Route::RangeIndex(req),
        Op::DeleteRange { from, to } => WriteOp::DeleteRange { from, to },
        Op::Txn(txn) => WriteOp::Txn(txn),
        Op::Put { key, value } => WriteOp::Put { key, value },
        Op::Delete { key } => WriteOp::Delete { key },
        Op::Cas { key, expected, new } => WriteOp::Cas { key, expected, new },
        Op::RegisterSession => WriteOp::RegisterSession,
        Op::Auth(change) => WriteOp::Auth(change),
        Op::AuthStatus => return Route::AuthStatus,
        Op::MemberList => return Route::MemberList,
        Op::SnapshotSave => return Route::SnapshotSave,
        Op::SnapshotRead { stream, offset } => return Route::SnapshotRead { stream, offset },
        Op::MemberChange {
            expected,
            change,
            force,
        } => {
            return Route::MemberChange {
                expected,
                change,
                force,
            }
        }
    };
    let changes_a_key = !matches!(write, WriteOp::RegisterSession);
    match req.session {
        Some(session) if changes_a_key && session.client_id == wire::NO_CLIENT_ID => {
            Route::Refuse(ErrorReply::Invalid {
                reason: format!("client id {} is reserved", wire::NO_CLIENT_ID),
            })
        }
        Some(session) if changes_a_key => Route::Write(Some(session), write),
        // A registration, or a write without a session: no session-table entry, only a
        // tag to find this client when the command is applied.
        _ => Route::Write(None, write),
    }
}

impl Node {
    /// Takes a client request from `identity`: answers it, or hands it to the core and
    /// records it.
    pub(super) fn on_client(
        &mut self,
        req: ClientRequest,
        responder: Responder,
        identity: Option<ClientIdentity>,
    ) {
        if let Err(e) = wire::validate(&req.op) {
            responder.respond(Err(e));
            return;
        }
        if self.faults.is_down() && !matches!(req.op, Op::Status) {
            responder.respond(Err(ErrorReply::Unavailable {
                reason: "this replica is recovering from an injected acceptor failure".into(),
            }));
            return;
        }
        let taken = Instant::now();
        let unsafe_reads = self.cfg.unsafe_local_reads;
        let route = route(req, unsafe_reads);
        let asker = identity.as_deref();
        if let Err(denied) = check_at_receipt(self.sm.auth(), &route, asker, unsafe_reads) {
            responder.respond(Err(denied));
            return;
        }
        match route {
            Route::Status => {
                responder.respond(Ok(Reply::Status(Box::new(self.status()))));
                self.answered_at_once(RequestOp::Status, taken);
            }
            Route::ReadStale(key) => {
                responder.respond(Ok(Reply::Value {
                    value: self.sm.get_bytes(&key),
                    stale: true,
                }));
                self.answered_at_once(RequestOp::GetStale, taken);
            }
            Route::ReadLocalUnsafe(key) => responder.respond(Ok(Reply::Value {
                value: self.sm.get_bytes(&key),
                stale: false,
            })),
            Route::ReadIndex(key) => self.start_read(key, identity, responder),
            Route::RangeStale(req) => {
                responder.respond(Ok(self.answer_read(&ReadQuery::Range(req), true)));
                self.answered_at_once(RequestOp::Range, taken);
            }
            Route::RangeIndex(req) if unsafe_reads => {
                responder.respond(Ok(self.answer_read(&ReadQuery::Range(req), false)));
            }
            Route::RangeIndex(req) => self.start_read(ReadQuery::Range(req), identity, responder),
            Route::AuthStatus => self.start_read(ReadQuery::Auth, identity, responder),
            Route::Write(session, op) => {
                let origin = identity.map(|i| i.to_string());
                self.propose_write(session, op, origin, responder)
            }
            Route::MemberList => self.list_members(responder),
            Route::MemberChange {
                expected,
                change,
                force,
            } => self.change_members(expected, change, force, responder),
            Route::SnapshotSave => self.start_backup(responder),
            Route::SnapshotRead { stream, offset } => self.read_backup(stream, offset, responder),
            Route::Refuse(e) => responder.respond(Err(e)),
        }
    }

    /// Measures a request answered without waiting for consensus.
    fn answered_at_once(&self, op: RequestOp, taken: Instant) {
        self.monitor.metrics.observe_request(op, taken.elapsed());
    }

    /// The answer to a read from the local state (`stale`: without confirming it is
    /// current).
    pub(super) fn answer_read(&self, query: &ReadQuery, stale: bool) -> Reply {
        match query {
            ReadQuery::Key(key) => Reply::Value {
                value: self.sm.get_bytes(key),
                stale,
            },
            ReadQuery::Range(req) => Reply::Range(self.sm.range(req, stale)),
            ReadQuery::Auth => Reply::AuthStatus(Box::new(self.sm.auth().status())),
        }
    }

    /// Answers a linearizable read the leader has confirmed, if `identity` may make it
    /// (as of the state now applied, at least as new as the read).
    pub(super) fn answer_confirmed_read(
        &self,
        query: &ReadQuery,
        identity: Option<&str>,
    ) -> Result<Reply, ErrorReply> {
        self.sm.auth().authorize(identity, [read_needs(query)])?;
        Ok(self.answer_read(query, false))
    }

    /// Asks the core to confirm leadership for a read of `key` by `identity`.
    fn start_read(
        &mut self,
        key: impl Into<ReadQuery>,
        identity: Option<ClientIdentity>,
        responder: Responder,
    ) {
        let id = self.pending.next_read_id();
        match self.replica.read(self.now_ms(), id) {
            Ok(()) => self
                .pending
                .insert_read(id, key, identity, responder, Instant::now()),
            Err(e) => responder.respond(Err(self.propose_error(e))),
        }
    }

    /// Proposes a write on behalf of `identity`, unless its answer is already settled or it
    /// is a retry of a write in flight here (which then waits with it).
    fn propose_write(
        &mut self,
        session: Option<Session>,
        op: WriteOp,
        identity: Option<String>,
        responder: Responder,
    ) {
        let session = match session {
            Some(session) => {
                // Answered without the log when applying could not change the answer.
                if let Some(answer) = self.sm.settled(&session) {
                    responder.respond(answer);
                    return;
                }
                session
            }
            None => self.pending.sessionless_tag(&mut self.rng),
        };
        let key = key_of(&session);
        let kind = match &op {
            WriteOp::Put { .. } => RequestOp::Put,
            WriteOp::Delete { .. } => RequestOp::Del,
            WriteOp::Cas { .. } => RequestOp::Cas,
            WriteOp::RegisterSession => RequestOp::Session,
            WriteOp::DeleteRange { .. } => RequestOp::DelRange,
            WriteOp::Txn(_) => RequestOp::Txn,
            WriteOp::Auth(_) => RequestOp::Auth,
        };
        let Some(responder) = self.pending.join_write(key, responder) else {
            return; // a retry of a write still in flight here
        };
        let origin = origin_for(self.sm.auth(), &op, identity);
        let raw = match (Command {
            session,
            op,
            origin,
        })
        .encode()
        {
            Ok(raw) => raw,
            Err(e) => {
                responder.respond(Err(ErrorReply::Invalid {
                    reason: e.to_string(),
                }));
                return;
            }
        };
        // The core takes the bytes; the table keeps a clone to know them when they come
        // back undecided.
        match self.replica.propose(self.now_ms(), raw.clone()) {
            Ok(()) => self
                .pending
                .insert_write_of(key, responder, raw, Instant::now(), kind),
            Err(e) => {
                self.monitor.metrics.proposals_failed.inc();
                responder.respond(Err(self.propose_error(e)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(session: Option<Session>, op: Op) -> ClientRequest {
        ClientRequest { id: 1, session, op }
    }

    fn key() -> Bytes {
        Bytes::from_static(b"k")
    }

    const SESSION: Session = Session {
        client_id: 5,
        seq: 9,
    };

    #[test]
    fn reads_go_where_their_consistency_says() {
        let stale = Op::Get {
            key: key(),
            consistency: ReadConsistency::Stale,
        };
        let linearizable = Op::Get {
            key: key(),
            consistency: ReadConsistency::Linearizable,
        };
        assert_eq!(route(req(None, Op::Status), false), Route::Status);
        assert_eq!(route(req(None, stale), false), Route::ReadStale(key()));
        assert_eq!(
            route(req(None, linearizable.clone()), false),
            Route::ReadIndex(key())
        );
        assert_eq!(
            route(req(Some(SESSION), linearizable), true),
            Route::ReadLocalUnsafe(key())
        );
    }

    #[test]
    fn a_write_keeps_its_session_and_a_registration_gets_none() {
        let put = || Op::Put {
            key: key(),
            value: Bytes::from_static(b"v"),
        };
        let as_write = WriteOp::Put {
            key: key(),
            value: Bytes::from_static(b"v"),
        };
        assert_eq!(
            route(req(Some(SESSION), put()), false),
            Route::Write(Some(SESSION), as_write.clone())
        );
        assert_eq!(route(req(None, put()), false), Route::Write(None, as_write));
        assert_eq!(
            route(req(Some(SESSION), Op::RegisterSession), false),
            Route::Write(None, WriteOp::RegisterSession),
            "a registration is not a write of the session it names"
        );
        assert_eq!(
            route(req(None, Op::Delete { key: key() }), false),
            Route::Write(None, WriteOp::Delete { key: key() })
        );
    }

    #[test]
    fn membership_requests_go_to_the_membership() {
        assert_eq!(route(req(None, Op::MemberList), false), Route::MemberList);
        let change = MemberChange::Remove { id: 3 };
        let op = Op::MemberChange {
            expected: 2,
            change: change.clone(),
            force: true,
        };
        assert_eq!(
            route(req(None, op), false),
            Route::MemberChange {
                expected: 2,
                change,
                force: true
            }
        );
    }

    #[test]
    fn the_reserved_client_id_is_refused_for_a_change() {
        let reserved = Session {
            client_id: wire::NO_CLIENT_ID,
            seq: 1,
        };
        let routed = route(req(Some(reserved), Op::Delete { key: key() }), false);
        assert!(
            matches!(&routed, Route::Refuse(ErrorReply::Invalid { reason }) if reason.contains("reserved")),
            "{routed:?}"
        );
        // A registration never uses the session it carries.
        assert_eq!(
            route(req(Some(reserved), Op::RegisterSession), false),
            Route::Write(None, WriteOp::RegisterSession)
        );
    }
}
