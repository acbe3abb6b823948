//! The requests a replica has taken and not answered yet: writes waiting for their command
//! to be chosen and applied, linearizable reads waiting for the leader to confirm it
//! still leads, and the membership change waiting to be chosen (one at a time). Each entry keeps the [`Responder`]s of its request, answered exactly once:
//! with the result, with `NotLeader` when the proposal is dropped, with `Timeout` when it
//! waited too long, or when the replica stops or fails.
//!
//! A write's session travels beside its proposal: the table indexes each pending write by
//! the address of the command bytes it proposed, so that when the core hands proposals
//! back undecided (`ProposalsDropped`, the same [`Bytes`] it was given) their writes are
//! found without decoding them again. The entry keeps a clone of those bytes, so no other
//! command can take their address while it waits.
//!
//! Time is a parameter (`now`), so the table is tested without clocks or sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::Reconfig;
use rand::Rng;
use wire::{ErrorReply, RangeRequest, Reply, Session};

use crate::answers::Responder;
use crate::event::ClientIdentity;
use crate::metrics::{Metrics, RequestOp};

/// A write is found by its session: `(client id, seq)`. A write without a session has
/// client id [`wire::NO_CLIENT_ID`] and a random tag as its seq.
pub(crate) type SessionKey = (u64, u64);

/// The key of `session`.
pub(crate) fn key_of(session: &Session) -> SessionKey {
    (session.client_id, session.seq)
}

/// A write whose command was proposed.
struct PendingWrite {
    /// The first request and every retry of it that arrived while it was in flight.
    responders: Vec<Responder>,
    since: Instant,
    /// What kind of write, for its latency.
    op: RequestOp,
    /// The command proposed (see the module docs).
    proposed: Bytes,
}

/// Where a proposal's bytes are: their address and length.
type ProposalId = (usize, usize);

fn proposal_id(raw: &Bytes) -> ProposalId {
    (raw.as_ptr() as usize, raw.len())
}

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadQuery {
    /// One key's value.
    Key(Bytes),
    /// One page of a range.
    Range(RangeRequest),
    /// The users, roles and grants.
    Auth,
}

impl From<Bytes> for ReadQuery {
    fn from(key: Bytes) -> Self {
        ReadQuery::Key(key)
    }
}

/// A linearizable read waiting for the core's `ReadReady`.
struct PendingRead {
    key: ReadQuery,
    /// Who asked: its permission is checked when the read is confirmed.
    identity: Option<ClientIdentity>,
    responder: Responder,
    since: Instant,
}

/// A membership change proposed and waiting to be chosen.
struct PendingChange {
    reconfig: Reconfig,
    /// Who asked.
    responders: Vec<Responder>,
    since: Instant,
}

/// The pending-request table of one replica.
#[derive(Default)]
pub(crate) struct Pending {
    writes: HashMap<SessionKey, PendingWrite>,
    /// The write of each pending proposal.
    proposals: HashMap<ProposalId, SessionKey>,
    reads: HashMap<u64, PendingRead>,
    next_read_id: u64,
    /// The core takes one membership change at a time, so at most one waits here.
    change: Option<PendingChange>,
    /// Where the latency of each answer, and each failed write, is counted.
    metrics: Option<Arc<Metrics>>,
}

impl Pending {
    /// From now on answers are measured in `metrics`.
    pub(crate) fn observe(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// True when no request waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty() && self.change.is_none()
    }

    /// Records the membership change the core just took. A change still waiting is
    /// answered `Timeout` first (its outcome is unknown); the core refuses a second change
    /// while one is in flight, so this happens only after the first was lost track of.
    pub(crate) fn insert_change(&mut self, reconfig: Reconfig, responder: Responder, now: Instant) {
        if let Some(old) = self.change.take() {
            debug_assert!(false, "a second membership change while one waits");
            for r in old.responders {
                r.respond(Err(ErrorReply::Timeout));
            }
        }
        self.change = Some(PendingChange {
            reconfig,
            responders: vec![responder],
            since: now,
        });
    }

    /// Answers the change waiting here if it is `reconfig` (chosen and applied or refused,
    /// or dropped). Returns whether it was.
    pub(crate) fn answer_change(
        &mut self,
        reconfig: &Reconfig,
        answer: &Result<Reply, ErrorReply>,
    ) -> bool {
        match self.change.take() {
            Some(c) if c.reconfig == *reconfig => {
                for r in c.responders {
                    r.respond(answer.clone());
                }
                true
            }
            other => {
                self.change = other;
                false
            }
        }
    }

    /// Requests waiting: `(writes, reads)`.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.writes.len(), self.reads.len())
    }

    /// A session for a command without one: the reserved client id and a random tag that no
    /// pending write uses.
    pub(crate) fn sessionless_tag(&self, rng: &mut impl Rng) -> Session {
        loop {
            let tag = Session {
                client_id: wire::NO_CLIENT_ID,
                seq: rng.random(),
            };
            if !self.writes.contains_key(&key_of(&tag)) {
                return tag;
            }
        }
    }

    /// If the write `key` is already in flight here (the request is a retry), `responder`
    /// waits with it and `None` is returned; otherwise the responder is handed back.
    pub(crate) fn join_write(
        &mut self,
        key: SessionKey,
        responder: Responder,
    ) -> Option<Responder> {
        match self.writes.get_mut(&key) {
            Some(write) => {
                write.responders.push(responder);
                None
            }
            None => Some(responder),
        }
    }

    /// Records a put just proposed as the command `proposed`.
    #[cfg(test)]
    pub(crate) fn insert_write(
        &mut self,
        key: SessionKey,
        responder: Responder,
        proposed: Bytes,
        now: Instant,
    ) {
        self.insert_write_of(key, responder, proposed, now, RequestOp::Put);
    }

    /// Records a write of kind `op` just proposed as the command `proposed`.
    pub(crate) fn insert_write_of(
        &mut self,
        key: SessionKey,
        responder: Responder,
        proposed: Bytes,
        now: Instant,
        op: RequestOp,
    ) {
        debug_assert!(
            !proposed.is_empty(),
            "an empty command has no address of its own"
        );
        let by_address = self.proposals.insert(proposal_id(&proposed), key);
        debug_assert!(by_address.is_none(), "two pending commands at one address");
        let write = PendingWrite {
            responders: vec![responder],
            since: now,
            op,
            proposed,
        };
        let previous = self.writes.insert(key, write);
        debug_assert!(previous.is_none(), "a write proposed twice: {key:?}");
    }

    /// The write that proposed `raw` (the very bytes, as the core hands them back), if it
    /// still waits.
    pub(crate) fn proposal(&self, raw: &Bytes) -> Option<SessionKey> {
        let key = *self.proposals.get(&proposal_id(raw))?;
        let write = self.writes.get(&key)?;
        (proposal_id(&write.proposed) == proposal_id(raw)).then_some(key)
    }

    /// Answers the write `key` (every request waiting for it) with `answer`; false if no
    /// such write waits here.
    pub(crate) fn answer_write(
        &mut self,
        key: SessionKey,
        answer: &Result<Reply, ErrorReply>,
    ) -> bool {
        let Some(write) = self.writes.remove(&key) else {
            return false;
        };
        self.proposals.remove(&proposal_id(&write.proposed));
        if let Some(m) = &self.metrics {
            m.observe_request(write.op, write.since.elapsed());
            if answer.is_err() {
                m.proposals_failed.inc();
            }
        }
        for r in write.responders {
            r.respond(answer.clone());
        }
        true
    }

    /// The id for the next linearizable read.
    pub(crate) fn next_read_id(&mut self) -> u64 {
        let id = self.next_read_id;
        self.next_read_id += 1;
        id
    }

    /// Records a read of `key` by `identity` handed to the core as `id`.
    pub(crate) fn insert_read(
        &mut self,
        id: u64,
        key: impl Into<ReadQuery>,
        identity: Option<ClientIdentity>,
        responder: Responder,
        now: Instant,
    ) {
        let read = PendingRead {
            key: key.into(),
            identity,
            responder,
            since: now,
        };
        let previous = self.reads.insert(id, read);
        debug_assert!(previous.is_none(), "read id {id} used twice");
    }

    /// Takes the read `id`: its key, its responder and who asked.
    pub(crate) fn take_read(
        &mut self,
        id: u64,
    ) -> Option<(ReadQuery, Responder, Option<ClientIdentity>)> {
        let read = self.reads.remove(&id)?;
        if let Some(m) = &self.metrics {
            let op = match read.key {
                ReadQuery::Key(_) => RequestOp::Get,
                ReadQuery::Range(_) => RequestOp::Range,
                ReadQuery::Auth => RequestOp::Auth,
            };
            m.observe_request(op, read.since.elapsed());
        }
        Some((read.key, read.responder, read.identity))
    }

    /// Answers `Timeout` to every request that has waited longer than `limit` at `now`
    /// (a write's outcome is then unknown). Returns how many were answered.
    pub(crate) fn expire(&mut self, now: Instant, limit: Duration) -> usize {
        let waited_too_long = |since: Instant| now.saturating_duration_since(since) > limit;
        let writes: Vec<SessionKey> = self
            .writes
            .iter()
            .filter(|(_, w)| waited_too_long(w.since))
            .map(|(k, _)| *k)
            .collect();
        let reads: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| waited_too_long(r.since))
            .map(|(id, _)| *id)
            .collect();
        let change = self
            .change
            .as_ref()
            .is_some_and(|c| waited_too_long(c.since));
        if change {
            if let Some(c) = self.change.take() {
                for r in c.responders {
                    r.respond(Err(ErrorReply::Timeout));
                }
            }
        }
        let expired = writes.len() + reads.len() + usize::from(change);
        for key in writes {
            self.answer_write(key, &Err(ErrorReply::Timeout));
        }
        for id in reads {
            if let Some((_, responder, _)) = self.take_read(id) {
                responder.respond(Err(ErrorReply::Timeout));
            }
        }
        expired
    }

    /// Answers everything still waiting: writes and membership changes with `Timeout`
    /// (they may still be chosen), reads with `Unavailable` (a read that is not served has
    /// no effect).
    pub(crate) fn fail_all(&mut self) {
        self.proposals.clear();
        if let Some(c) = self.change.take() {
            for r in c.responders {
                r.respond(Err(ErrorReply::Timeout));
            }
        }
        for (_, write) in self.writes.drain() {
            for r in write.responders {
                r.respond(Err(ErrorReply::Timeout));
            }
        }
        for (_, read) in self.reads.drain() {
            read.responder.respond(Err(ErrorReply::Unavailable {
                reason: "the replica stopped before confirming the read".into(),
            }));
        }
    }
}

#[cfg(test)]
mod tests;
