//! The client protocol: requests, replies, errors and size limits.
//!
//! A client sends [`ClientRequest`]s and receives [`ClientResponse`]s, one frame each,
//! encoded with [`crate::encode`]. A connection may carry many requests at once: responses
//! may come back in any order and are matched by [`ClientRequest::id`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthChange, AuthStatus};
use crate::codec::FRAME_BYTES_MAX_DEFAULT;
use crate::kv::{self, RangePage, RangeRequest, Txn};
use crate::membership::{check_addr, MemberChange, MemberList};
use crate::status::NodeStatus;

/// Longest key, in bytes (4 KiB). Keys are at least one byte long.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// How many recent write results a replica remembers per client session. A client must
/// not have more than this many writes in flight (sequence numbers spanning more than this
/// window): a write more than this many sequence numbers below the session's newest
/// applied write is answered [`ErrorReply::SessionExpired`] and never applied.
pub const SESSION_WINDOW: u64 = 1024;

/// The client id that means "no session": the replicated log uses it for writes sent
/// without a session and for [`Op::RegisterSession`]. Registered sessions never get it,
/// and a request carrying it in its [`Session`] is refused as invalid.
pub const NO_CLIENT_ID: u64 = 0;

/// Longest value, in bytes (1 MiB).
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

// The largest request (a compare-and-swap with a maximal key and two maximal values) and the
// largest response fit in a default frame with room for the envelope.
const _: () = assert!(KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX + 1024 <= FRAME_BYTES_MAX_DEFAULT);

/// One request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the client, unique among the requests of one connection; the response
    /// carries it back.
    pub id: u64,
    /// For exactly-once writes: a write retried (on this or another connection) carries the
    /// same session, and the cluster applies it at most once. The session's client id must
    /// have been obtained with [`Op::RegisterSession`]; a write of a session the cluster
    /// does not know (never registered, or forgotten since) is answered
    /// [`ErrorReply::SessionExpired`] and not applied.
    ///
    /// `None` for reads, for [`Op::RegisterSession`], and for writes that may be applied
    /// twice when retried (they take no room in the cluster's session table).
    pub session: Option<Session>,
    /// What to do.
    pub op: Op,
}

/// Identifies a write for deduplication: the `seq`-th write of client `client_id`.
///
/// `client_id` is assigned by the cluster ([`Reply::SessionRegistered`]); `seq` starts at 1
/// and increases by one per new write of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The session's id, assigned by the cluster when the session was registered.
    pub client_id: u64,
    /// The write's sequence number within the client, increasing by one per new write.
    pub seq: u64,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// The read reflects every write completed before it started (confirmed by the leader).
    Linearizable,
    /// The read is served from the receiving replica's state, which may lag.
    Stale,
}

/// An operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Reads a key. Answered with [`Reply::Value`].
    Get {
        /// The key.
        key: Bytes,
        /// How fresh the read must be.
        consistency: ReadConsistency,
    },
    /// Sets a key to a value. Answered with [`Reply::Written`].
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes a key. Answered with [`Reply::Deleted`].
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Sets a key to `new` if its value is `expected`. Answered with [`Reply::Swapped`] or
    /// [`Reply::Mismatch`].
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must have; `None`: the key must be absent.
        expected: Option<Bytes>,
        /// The value to set.
        new: Bytes,
    },
    /// Asks the receiving node how it is. Answered with [`Reply::Status`].
    Status,
    /// Opens a write session: goes through the replicated log like a write and is answered
    /// with [`Reply::SessionRegistered`] carrying a client id never handed out before.
    /// Sent without a session. Retrying it is harmless: at worst it registers a session
    /// nobody uses, which the cluster forgets in time.
    RegisterSession,
    /// Lists the members of the cluster. Answered with [`Reply::Members`] by the leader;
    /// a follower that knows the leader answers [`ErrorReply::NotLeader`], one that knows
    /// none answers with its own view (applied slots and lags unknown). Version 3.
    MemberList,
    /// Changes the membership: one change at a time, agreed through the replicated log.
    /// Answered with [`Reply::MemberChanged`] once the change is chosen, by the leader
    /// only. Sent without a session: `expected` makes a retry safe (a change already made
    /// is refused as [`ErrorReply::StaleConfig`]). Version 3.
    MemberChange {
        /// The id of the latest configuration the client saw ([`MemberList::config_id`]);
        /// the change is refused if the configuration is another (compare-and-swap).
        expected: u64,
        /// The change.
        change: MemberChange,
        /// Skip the check that the voters answering the leader lately stay a majority
        /// after the change (to remove members that are down for good).
        force: bool,
    },
    /// Reads one page of a key range (or counts its keys). Answered with [`Reply::Range`];
    /// served like [`Op::Get`] (linearizable through the leader unless stale). Version 4:
    /// a server that predates it cannot decode it and closes the connection.
    Range(RangeRequest),
    /// Removes every key in `[from, to)` (`to`: `None`, to the last key) as one write,
    /// one slot of the log. Answered with [`Reply::DeletedRange`]. Version 4.
    DeleteRange {
        /// The first key removed (inclusive).
        from: Bytes,
        /// The end of the range (exclusive); `None`: to the last key.
        to: Option<Bytes>,
    },
    /// A multi-key transaction, applied atomically as one write. Answered with
    /// [`Reply::TxnDone`]. Version 4.
    Txn(Txn),
    /// Starts streaming a consistent snapshot of the whole store (a backup), by the
    /// leader: the state at a slot at least as new as every write acknowledged before the
    /// request arrived (linearizable). Answered with [`Reply::SnapshotStream`]; the bytes
    /// then come with [`Op::SnapshotRead`] on the same connection. At most
    /// [`SNAPSHOT_SAVES_MAX`] at once per replica ([`ErrorReply::SnapshotBusy`]).
    SnapshotSave,
    /// Reads the next chunk of a snapshot stream opened with [`Op::SnapshotSave`], from
    /// the replica that opened it. Answered with [`Reply::SnapshotChunk`] of at most
    /// [`SNAPSHOT_STREAM_CHUNK_BYTES`]; reading the last byte ends the stream, and a stream
    /// nobody reads for a while is dropped.
    SnapshotRead {
        /// The stream ([`SnapshotStream::stream`]).
        stream: u64,
        /// Where the chunk starts in the snapshot.
        offset: u64,
    },
    /// Changes the users, roles or grants, or turns auth on or off ([`crate::auth`]):
    /// goes through the replicated log like a write (with a session, exactly once) and is
    /// answered [`Reply::AuthChanged`], or [`ErrorReply::AuthRefused`] when the change
    /// does not apply (an unknown role, a user that exists, ...). While auth is enabled it
    /// needs the [`crate::auth::ADMIN_ROLE`]. Version 4: a server that predates it cannot
    /// decode it and closes the connection.
    Auth(AuthChange),
    /// Reads the whole auth state, linearizably through the leader. Answered with
    /// [`Reply::AuthStatus`]; while auth is enabled it needs the
    /// [`crate::auth::ADMIN_ROLE`].
    AuthStatus,
}

/// Largest chunk of a snapshot stream ([`Reply::SnapshotChunk`]): well inside a default
/// frame.
pub const SNAPSHOT_STREAM_CHUNK_BYTES: usize = 1024 * 1024;

/// How many snapshot streams ([`Op::SnapshotSave`]) a replica serves at once.
pub const SNAPSHOT_SAVES_MAX: usize = 2;

/// A snapshot stream opened by [`Op::SnapshotSave`]: what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStream {
    /// The stream's id, for [`Op::SnapshotRead`].
    pub stream: u64,
    /// The snapshot covers every slot below this one.
    pub slot: u64,
    /// Keys in the snapshot.
    pub keys: u64,
    /// The snapshot's length in bytes.
    pub bytes: u64,
    /// The cluster's name (`--cluster-id`).
    pub cluster_name: String,
    /// The cluster's identity.
    pub cluster_uid: [u8; 16],
}

impl Op {
    /// The key this operation is about, if any.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => Some(key),
            Op::Status
            | Op::RegisterSession
            | Op::MemberList
            | Op::MemberChange { .. }
            | Op::SnapshotSave
            | Op::SnapshotRead { .. }
            | Op::Range(_)
            | Op::DeleteRange { .. }
            | Op::Txn(_)
            | Op::Auth(_)
            | Op::AuthStatus => None,
        }
    }

    /// Whether this operation changes the store (and so goes through the replicated log).
    /// [`Op::RegisterSession`] goes through the log too, but changes no key: it is not a
    /// write. [`Op::Auth`] is one (it changes replicated state, exactly once).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Put { .. }
                | Op::Delete { .. }
                | Op::Cas { .. }
                | Op::DeleteRange { .. }
                | Op::Txn(_)
                | Op::Auth(_)
        )
    }
}

/// The answer to one [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// The [`ClientRequest::id`] of the request answered.
    pub id: u64,
    /// The outcome.
    pub result: Result<Reply, ErrorReply>,
}

/// A successful outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The answer to [`Op::Get`].
    Value {
        /// The key's value, or `None` if the key is absent.
        value: Option<Bytes>,
        /// True if the read was served from this replica's local state without
        /// confirming it is current ([`ReadConsistency::Stale`]).
        stale: bool,
    },
    /// The answer to [`Op::Put`]: the value is written.
    Written,
    /// The answer to [`Op::Delete`]: the key is absent now.
    Deleted {
        /// Whether the key existed before.
        existed: bool,
    },
    /// The answer to [`Op::Cas`] when the key had the expected value: `new` is written.
    Swapped,
    /// The answer to [`Op::Cas`] when the key did not have the expected value: nothing
    /// changed.
    Mismatch {
        /// The key's value when the operation was applied (`None`: absent).
        current: Option<Bytes>,
    },
    /// The answer to [`Op::Status`].
    Status(Box<NodeStatus>),
    /// The answer to [`Op::RegisterSession`]: the new session's client id (never
    /// [`NO_CLIENT_ID`]). Its first write has `seq` 1.
    SessionRegistered {
        /// The id to put in every [`Session`] of this session's writes.
        client_id: u64,
    },
    /// The answer to [`Op::MemberList`].
    Members(Box<MemberList>),
    /// The answer to [`Op::MemberChange`]: the change is chosen and applied.
    MemberChanged {
        /// The id of the configuration the change made.
        config_id: u64,
        /// The first slot the new configuration governs (it takes effect a fixed number
        /// of slots after the one it was chosen in).
        effective_from_slot: u64,
    },
    /// The answer to [`Op::Range`]: one page.
    Range(RangePage),
    /// The answer to [`Op::DeleteRange`].
    DeletedRange {
        /// How many keys it removed.
        count: u64,
    },
    /// The answer to [`Op::Txn`].
    TxnDone {
        /// True if every compare held and the success operations were applied; false if
        /// the failure operations were.
        succeeded: bool,
    },
    /// The answer to [`Op::SnapshotSave`]: a stream is open.
    SnapshotStream(Box<SnapshotStream>),
    /// The answer to [`Op::SnapshotRead`]: the bytes from the offset asked for (empty at
    /// the end).
    SnapshotChunk {
        /// The bytes.
        data: Bytes,
    },
    /// The answer to [`Op::Auth`]: the change is applied.
    AuthChanged,
    /// The answer to [`Op::AuthStatus`].
    AuthStatus(Box<AuthStatus>),
}

/// A failed outcome. The text of each is meant to be printed by a command-line client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorReply {
    /// This node is not the leader; retry at the leader if one is known. The operation was
    /// not applied.
    #[error("not the leader{}", leader_hint(*.leader, .leader_addr.as_deref()))]
    NotLeader {
        /// The leader's node id, if known.
        leader: Option<u64>,
        /// The leader's client address, if known.
        leader_addr: Option<String>,
    },
    /// The cluster cannot serve the request now (no quorum reachable, election in
    /// progress). The operation was not applied.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// Something is larger than its limit (a key, a value, a frame).
    #[error("{what} too large: {size} bytes, the maximum is {max} bytes")]
    TooLarge {
        /// What is too large: "key", "value", "frame", ...
        what: String,
        /// Its size, in bytes.
        size: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// Too many requests in flight; retry later. The operation was not applied.
    #[error("busy: too many requests in flight, retry later")]
    Busy,
    /// The request is not valid (for example, an empty key).
    #[error("invalid request: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// The node is shutting down. The operation was not applied.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The operation did not complete in time, and it may or may not have been applied.
    #[error("timed out: the outcome is unknown (the operation may or may not have been applied)")]
    Timeout,
    /// The write's session is not known to the cluster (it was forgotten to make room for
    /// newer sessions, or never registered), or its sequence number is older than the
    /// results the session still remembers. The cluster can no longer tell whether an
    /// earlier attempt of this write was applied, so this attempt was **not** applied, and
    /// no later attempt with the same session and sequence number ever will be. Read the
    /// data to learn whether an earlier attempt took effect; a new write needs a new
    /// session ([`Op::RegisterSession`]) if the session itself is unknown.
    #[error(
        "session expired: write {seq} of session {client_id} is no longer remembered, so it \
         was not applied now (an earlier attempt may or may not have been)"
    )]
    SessionExpired {
        /// The session's client id.
        client_id: u64,
        /// The write's sequence number.
        seq: u64,
    },
    /// Another membership change is waiting, in flight, or not in effect yet: one change
    /// at a time. Nothing changed; retry once it has taken effect.
    #[error("another membership change is in progress; retry once it has taken effect")]
    ChangeInProgress,
    /// The membership change named another configuration than the latest: another change
    /// came first. Nothing changed; list the members and decide again.
    #[error(
        "stale configuration: the change expected configuration {expected}, the latest is \
         {current}; list the members and try again"
    )]
    StaleConfig {
        /// The configuration the change named.
        expected: u64,
        /// The latest configuration.
        current: u64,
    },
    /// The learner to promote lags behind the leader (or has not answered it lately):
    /// promoting it could stall the cluster. Nothing changed; wait for it to catch up.
    #[error("{}", learner_not_ready(*.id, *.lag, *.allowed))]
    LearnerNotReady {
        /// The learner.
        id: u64,
        /// How many slots it is behind the leader's commit index; `None` if it has not
        /// answered the leader lately.
        lag: Option<u64>,
        /// The most it may lag to be promoted.
        allowed: u64,
    },
    /// After the change, the voters that answered the leader lately would not be a
    /// majority, and the cluster would stop. Nothing changed; force it to override.
    #[error(
        "refused: after this change only {live} live voters would remain where {needed} are \
         needed for a majority (use --force to override)"
    )]
    WouldLoseQuorum {
        /// Voters after the change that answered the leader lately.
        live: u64,
        /// Voters needed for a majority after the change.
        needed: u64,
    },
    /// The id is not a member. Nothing changed.
    #[error("node {id} is not a member")]
    UnknownMember {
        /// The id.
        id: u64,
    },
    /// The id to add is a member already (or was one: ids are never reused). Nothing
    /// changed.
    #[error("node {id} is already a member")]
    MemberExists {
        /// The id.
        id: u64,
    },
    /// The learner to promote is a voter already. Nothing changed.
    #[error("node {id} is already a voter")]
    AlreadyVoter {
        /// The id.
        id: u64,
    },
    /// Removing the last voter would leave nobody to agree on anything. Nothing changed.
    #[error("node {id} is the last voter and cannot be removed")]
    LastVoter {
        /// The id.
        id: u64,
    },
    /// The membership would exceed its limits. Nothing changed.
    #[error("a membership holds at most {voters_max} voters and {learners_max} learners")]
    TooManyMembers {
        /// The most voters.
        voters_max: u64,
        /// The most learners.
        learners_max: u64,
    },
    /// The replica streams as many snapshots as it may at once; retry once one ends.
    #[error(
        "busy: this replica already streams {saves_max} snapshots, the most it serves at \
         once; retry once one of them ends"
    )]
    SnapshotBusy {
        /// How many it streams at once at most.
        saves_max: u64,
    },
    /// Auth is enabled and the request's identity may not do this: it has none (no client
    /// certificate), it is not a user, or none of its roles grants what the request
    /// needs. Nothing was applied. The text names the identity, what it asked for and why,
    /// for example `permission denied: "alice" may not write "patient/1" (no role grants
    /// write on it)`.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// The identity of the request (its certificate's common name), if it had one.
        identity: Option<String>,
        /// What was refused and why.
        reason: String,
    },
    /// An auth change ([`Op::Auth`]) that does not apply to the auth state as it is: an
    /// unknown user or role, one that exists already, a change to the built-in admin role,
    /// removing the last user holding admin while auth is enabled, ... Nothing changed.
    #[error("auth change refused: {reason}")]
    AuthRefused {
        /// Why.
        reason: String,
    },
}

fn learner_not_ready(id: u64, lag: Option<u64>, allowed: u64) -> String {
    match lag {
        Some(lag) => format!(
            "learner {id} is not ready: it is {lag} slots behind the leader (at most {allowed} \
             allowed); wait for it to catch up"
        ),
        None => format!(
            "learner {id} is not ready: it has not answered the leader lately (is it running \
             and reachable?)"
        ),
    }
}

impl ErrorReply {
    /// Whether this error refuses a membership change for what the change is (a stale or
    /// busy configuration, a lagging learner, a lost quorum, an id that is or is not a
    /// member): nothing changed, and resending the same change cannot help before the
    /// cluster changes.
    pub fn is_membership_refusal(&self) -> bool {
        matches!(
            self,
            ErrorReply::ChangeInProgress
                | ErrorReply::StaleConfig { .. }
                | ErrorReply::LearnerNotReady { .. }
                | ErrorReply::WouldLoseQuorum { .. }
                | ErrorReply::UnknownMember { .. }
                | ErrorReply::MemberExists { .. }
                | ErrorReply::AlreadyVoter { .. }
                | ErrorReply::LastVoter { .. }
                | ErrorReply::TooManyMembers { .. }
        )
    }
}

fn leader_hint(leader: Option<u64>, leader_addr: Option<&str>) -> String {
    match (leader, leader_addr) {
        (Some(id), Some(addr)) => format!("; the leader is node {id} at {addr}"),
        (Some(id), None) => format!("; the leader is node {id}"),
        (None, Some(addr)) => format!("; the leader is at {addr}"),
        (None, None) => "; the leader is unknown".to_owned(),
    }
}

/// Checks an operation against the size limits: a pure function.
///
/// Keys must be 1 to [`KEY_BYTES_MAX`] bytes long, values at most [`VALUE_BYTES_MAX`]
/// bytes (both the new and the expected value of a compare-and-swap).
pub fn validate(op: &Op) -> Result<(), ErrorReply> {
    if let Some(key) = op.key() {
        if key.is_empty() {
            return Err(ErrorReply::Invalid {
                reason: "the key is empty".to_owned(),
            });
        }
        check_size("key", key, KEY_BYTES_MAX)?;
    }
    match op {
        Op::Put { value, .. } => check_size("value", value, VALUE_BYTES_MAX),
        Op::Cas { expected, new, .. } => {
            if let Some(expected) = expected {
                check_size("expected value", expected, VALUE_BYTES_MAX)?;
            }
            check_size("value", new, VALUE_BYTES_MAX)
        }
        Op::MemberChange { change, .. } => validate_change(change),
        Op::SnapshotSave | Op::SnapshotRead { .. } => Ok(()),
        Op::Range(req) => kv::validate_range(req),
        Op::DeleteRange { from, to } => kv::validate_bounds(from, to.as_ref()),
        Op::Txn(txn) => kv::validate_txn(txn),
        Op::Auth(change) => change.validate(),
        Op::Get { .. }
        | Op::Delete { .. }
        | Op::Status
        | Op::RegisterSession
        | Op::MemberList
        | Op::AuthStatus => Ok(()),
    }
}

/// A member id must not be 0, and the addresses of a new member must be `HOST:PORT`.
fn validate_change(change: &MemberChange) -> Result<(), ErrorReply> {
    let invalid = |reason: String| Err(ErrorReply::Invalid { reason });
    if change.id() == 0 {
        return invalid("member id 0 is reserved; use 1 or more".to_owned());
    }
    if let MemberChange::Add {
        peer_addr,
        client_addr,
        ..
    } = change
    {
        if let Err(e) = check_addr(peer_addr) {
            return invalid(format!("peer address: {e}"));
        }
        if let Err(e) = check_addr(client_addr) {
            return invalid(format!("client address: {e}"));
        }
    }
    Ok(())
}

fn check_size(what: &str, bytes: &Bytes, max: usize) -> Result<(), ErrorReply> {
    if bytes.len() <= max {
        return Ok(());
    }
    Err(ErrorReply::TooLarge {
        what: what.to_owned(),
        size: bytes.len() as u64,
        max: max as u64,
    })
}
