//! The replicated state machine: an ordered map of byte keys to byte values, plus the
//! client sessions that make retried writes exactly-once ([`crate::sessions`]), plus the
//! membership as of the last applied slot (so that a snapshot carries the membership that
//! governs the slots after it), plus the users, roles and grants ([`crate::auth`]) that
//! every command is checked against when it is applied.
//!
//! Every replica applies the same commands in the same slot order, so everything here must
//! be deterministic: no clocks, no randomness, no hash-map iteration order. A replica
//! restored from a snapshot taken after any slot must then behave exactly like one that
//! applied every slot itself (the property test `tests/session_determinism.rs` checks it).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;
use paxos_core::{ChangeError, MembershipLog, Reconfig};
use wire::{Command, RangeMode, RangePage, RangeRequest, Reply, Session, TxnOp, WriteOp};

use crate::auth::AuthState;
use crate::sessions::{self, Known, SessionTable};
pub use crate::sessions::{Outcome, SessionResults, SESSIONS_MAX, SESSION_RESULTS_MAX};

/// A key or value as stored: one exact-size allocation behind a 16-byte handle (a `Bytes`
/// handle is 32 bytes, and sharing one adds another allocation per key and per value).
pub type Blob = Box<[u8]>;

/// Keys changed since the last snapshot: the new value, or `None` for a deleted key.
pub type Delta = BTreeMap<Blob, Option<Blob>>;

/// The store's data and sessions.
#[derive(Debug, Default)]
pub struct StateMachine {
    data: BTreeMap<Blob, Blob>,
    /// Keys changed since the last snapshot: the next snapshot is the previous one with
    /// these keys' current values merged in, so taking one never copies the whole store.
    /// A hash set: every write checks it, and a tree would add a walk through nodes that
    /// are seldom in cache; the order is only needed once per snapshot (`take_delta`).
    changed: HashSet<Blob>,
    sessions: SessionTable,
    /// Every slot below this has been applied.
    applied: u64,
    /// Bytes held by keys and values (for the status and memory figures).
    data_bytes: u64,
    /// The membership log as of `applied`: the changes chosen in the slots below it are
    /// in. `None` for a replica that joins a cluster and has not installed a snapshot
    /// yet, or a store read from a snapshot of an earlier version.
    membership: Option<MembershipLog>,
    /// Users, roles and grants as of `applied`.
    auth: AuthState,
}

/// Two stores are equal when they hold the same data, sessions, membership and auth state
/// at the same slot.
impl PartialEq for StateMachine {
    fn eq(&self, other: &Self) -> bool {
        self.applied == other.applied
            && self.data == other.data
            && self.sessions == other.sessions
            && self.membership == other.membership
            && self.auth == other.auth
    }
}

impl Eq for StateMachine {}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The session of the command (client id [`wire::NO_CLIENT_ID`] and the proposer's tag
    /// for a command without a session).
    pub session: Session,
    /// The answer for the client: a reply, [`ErrorReply::SessionExpired`],
    /// [`ErrorReply::PermissionDenied`] or [`ErrorReply::AuthRefused`].
    pub reply: Outcome,
    /// True if the command was executed: a write or auth change applied, or a session
    /// registered. False for a retry of a write applied earlier, a write refused as
    /// expired, and a command refused (permission denied, an auth change that does not
    /// apply; a session still remembers that refusal).
    pub fresh: bool,
}

impl StateMachine {
    /// An empty store with a session table of [`SESSIONS_MAX`].
    pub fn new() -> Self {
        StateMachine::default()
    }

    /// An empty store whose session table holds at most `sessions_max` sessions.
    pub fn with_sessions_max(sessions_max: usize) -> Self {
        let mut sm = StateMachine::new();
        sm.set_sessions_max(sessions_max);
        sm
    }

    /// Rebuilds a store from snapshot contents (with a session table of [`SESSIONS_MAX`]
    /// until [`StateMachine::set_sessions_max`] says otherwise).
    pub fn from_parts(applied: u64, data: BTreeMap<Blob, Blob>, sessions: SessionTable) -> Self {
        let data_bytes = data.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        StateMachine {
            data,
            changed: HashSet::new(),
            sessions,
            applied,
            data_bytes,
            membership: None,
            auth: AuthState::default(),
        }
    }

    /// The users, roles and grants as of the last applied slot.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// Sets the users, roles and grants as of the last applied slot (from a snapshot).
    pub fn set_auth(&mut self, auth: AuthState) {
        self.auth = auth;
    }

    /// The membership log as of the last applied slot, if known.
    pub fn membership(&self) -> Option<&MembershipLog> {
        self.membership.as_ref()
    }

    /// Sets the membership log as of the last applied slot (from a snapshot, or the first
    /// membership of a new cluster).
    pub fn set_membership(&mut self, log: MembershipLog) {
        self.membership = Some(log);
    }

    /// Applies the membership change chosen in `slot` (delivered right after the slot
    /// itself, as the consensus core applies it to its own log), so that a snapshot taken
    /// from now on carries it. Returns what the core's own application returned, for the
    /// caller to check they agree; `None` if no membership is known.
    pub fn apply_reconfig(
        &mut self,
        slot: u64,
        reconfig: &Reconfig,
    ) -> Option<Result<u64, ChangeError>> {
        debug_assert!(slot < self.applied, "a change is applied after its slot");
        let log = self.membership.as_mut()?;
        let outcome = log.apply_chosen(slot, reconfig);
        // Keep the memberships the slots from here on still need (as the core does).
        log.forget_before(self.applied);
        Some(outcome)
    }

    /// Sets the session table's capacity. Every replica of a cluster must use the same: it
    /// decides which session is forgotten when.
    pub fn set_sessions_max(&mut self, sessions_max: usize) {
        self.sessions.set_sessions_max(sessions_max);
    }

    /// Every slot below this has been applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(|v| &**v)
    }

    /// The value of `key`, copied out for a reply.
    pub fn get_bytes(&self, key: &[u8]) -> Option<Bytes> {
        self.get(key).map(Bytes::copy_from_slice)
    }

    /// The data, in key order.
    pub fn data(&self) -> &BTreeMap<Blob, Blob> {
        &self.data
    }

    /// Takes the changes made since the last snapshot (for writing the next one): every
    /// changed key with its current value, copied once however often it was written.
    pub fn take_delta(&mut self) -> Delta {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|k| {
                let v = self.data.get(&k).cloned();
                (k, v)
            })
            .collect()
    }

    /// Marks again the keys of a delta whose snapshot failed, so the next one includes them.
    pub fn restore_delta(&mut self, older: Delta) {
        for (k, _) in older {
            self.changed.insert(k);
        }
    }

    /// How many keys changed since the last snapshot.
    pub fn changed_keys(&self) -> usize {
        self.changed.len()
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The first outcome given to this session's write, if it was applied and is
    /// remembered.
    pub fn result_of(&self, session: &Session) -> Option<&Outcome> {
        match self.sessions.known(session) {
            Known::Applied(outcome) => Some(outcome),
            Known::Expired | Known::New => None,
        }
    }

    /// The answer to `session`'s write that applying it could not change: a remembered
    /// reply, or "session expired" when the table has certainly forgotten it. A replica
    /// answers these without going through the log.
    pub fn settled(&self, session: &Session) -> Option<Outcome> {
        self.sessions.settled(session)
    }

    /// Marks `slot` applied without a command (a no-op or an undecodable value).
    pub fn skip(&mut self, slot: u64) {
        debug_assert_eq!(slot, self.applied, "slots are applied in order");
        self.applied = slot + 1;
    }

    /// Applies one command chosen in `slot`. The caller applies every command of a slot in
    /// order, then calls [`StateMachine::finish_slot`].
    ///
    /// A command without a session is executed (or registers a session); a command of a
    /// session is executed only if the session table knows it has never been applied, and
    /// answered from the table or refused as expired otherwise. Either is first checked
    /// against the auth state as of this slot with the identity the command carries: a
    /// command refused changes nothing, and a session remembers the refusal as its
    /// outcome.
    pub fn apply(&mut self, slot: u64, command: Command) -> Applied {
        debug_assert!(slot >= self.applied, "slots are applied in order");
        let session = command.session;
        let identity = command.origin.and_then(|o| o.identity);
        let identity = identity.as_deref();
        if let WriteOp::RegisterSession = command.op {
            if let Err(denied) = self.auth.authorize_write(identity, &command.op) {
                return Applied {
                    session,
                    reply: Err(denied),
                    fresh: false,
                };
            }
            let client_id = self.sessions.register(slot, session.seq);
            return Applied {
                session,
                reply: Ok(Reply::SessionRegistered { client_id }),
                fresh: true,
            };
        }
        if session.client_id == wire::NO_CLIENT_ID {
            let reply = self.execute_as(identity, command.op);
            let fresh = reply.is_ok();
            return Applied {
                session,
                reply,
                fresh,
            };
        }
        self.sessions.touch(slot, session.client_id);
        let (reply, fresh) = match self.sessions.known(&session) {
            Known::Applied(outcome) => (outcome.clone(), false),
            Known::Expired => (Err(sessions::expired(&session)), false),
            Known::New => {
                let reply = self.execute_as(identity, command.op);
                self.sessions.record(slot, session, reply.clone());
                let fresh = reply.is_ok();
                (reply, fresh)
            }
        };
        Applied {
            session,
            reply,
            fresh,
        }
    }

    /// Executes `op` if `identity` may, as of this slot.
    fn execute_as(&mut self, identity: Option<&str>, op: WriteOp) -> Outcome {
        self.auth.authorize_write(identity, &op)?;
        match op {
            WriteOp::Auth(change) => {
                self.auth.apply(&change, identity)?;
                Ok(Reply::AuthChanged)
            }
            op => Ok(self.execute(op)),
        }
    }

    /// Records that every command of `slot` was applied.
    pub fn finish_slot(&mut self, slot: u64) {
        self.applied = self.applied.max(slot + 1);
    }

    fn execute(&mut self, op: WriteOp) -> Reply {
        match op {
            WriteOp::Put { key, value } => {
                self.insert(key, value);
                Reply::Written
            }
            WriteOp::Delete { key } => {
                let existed = self.remove(&key);
                Reply::Deleted { existed }
            }
            WriteOp::Cas { key, expected, new } => {
                let current = self.data.get(&key[..]).map(|v| &**v);
                if current == expected.as_deref() {
                    self.insert(key, new);
                    Reply::Swapped
                } else {
                    Reply::Mismatch {
                        current: current.map(Bytes::copy_from_slice),
                    }
                }
            }
            WriteOp::DeleteRange { from, to } => Reply::DeletedRange {
                count: self.remove_range(&from, to.as_deref()),
            },
            WriteOp::Txn(txn) => {
                let succeeded = txn
                    .compares
                    .iter()
                    .all(|c| c.holds(self.data.get(&c.key()[..]).map(|v| &**v)));
                let ops = if succeeded { txn.success } else { txn.failure };
                for op in ops {
                    match op {
                        TxnOp::Put { key, value } => self.insert(key, value),
                        TxnOp::Delete { key } => {
                            self.remove(&key);
                        }
                    }
                }
                Reply::TxnDone { succeeded }
            }
            // Handled by `apply` and `execute_as` before any data operation; kept total
            // for safety.
            WriteOp::RegisterSession | WriteOp::Auth(_) => Reply::Written,
        }
    }

    /// Removes every key in `[from, to)`; returns how many there were.
    fn remove_range(&mut self, from: &[u8], to: Option<&[u8]>) -> u64 {
        if to.is_some_and(|to| to <= from) {
            return 0; // an empty range (and BTreeMap::range would panic on it)
        }
        let end = to.map_or(Bound::Unbounded, Bound::Excluded);
        let doomed: Vec<Blob> = self
            .data
            .range::<[u8], _>((Bound::Included(from), end))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            if let Some(old) = self.data.remove(key) {
                self.data_bytes -= (key.len() + old.len()) as u64;
            }
            self.note_change(key);
        }
        doomed.len() as u64
    }

    /// Reads one page of a range: at most the request's limit and a page's worth of keys
    /// ([`wire::RANGE_PAGE_KEYS_MAX`] keys, about [`wire::RANGE_PAGE_BYTES_MAX`] bytes, at
    /// least one entry), or counts at most [`wire::RANGE_COUNT_PAGE_MAX`] keys without
    /// copying any. `stale` is copied into the page.
    pub fn range(&self, req: &RangeRequest, stale: bool) -> RangePage {
        let mut page = RangePage {
            stale,
            ..RangePage::default()
        };
        let to = req.to.as_deref();
        if to.is_some_and(|to| to <= &req.from[..]) {
            return page;
        }
        let end = to.map_or(Bound::Unbounded, Bound::Excluded);
        let mut entries = self
            .data
            .range::<[u8], _>((Bound::Included(&req.from[..]), end));
        let page_max = match req.mode {
            RangeMode::Count => wire::RANGE_COUNT_PAGE_MAX,
            RangeMode::Entries | RangeMode::KeysOnly => wire::RANGE_PAGE_KEYS_MAX,
        };
        let max = req.limit.unwrap_or(page_max).clamp(1, page_max);
        let mut bytes = 0usize;
        for (key, value) in entries.by_ref() {
            if page.count == max || bytes >= wire::RANGE_PAGE_BYTES_MAX {
                page.next = Some(Bytes::copy_from_slice(key));
                break;
            }
            page.count += 1;
            match req.mode {
                RangeMode::Count => {}
                RangeMode::KeysOnly => {
                    bytes += key.len();
                    page.keys.push(Bytes::copy_from_slice(key));
                }
                RangeMode::Entries => {
                    bytes += key.len() + value.len();
                    page.keys.push(Bytes::copy_from_slice(key));
                    page.values.push(Bytes::copy_from_slice(value));
                }
            }
        }
        debug_assert!(page.count <= max);
        page
    }

    fn insert(&mut self, key: Bytes, value: Bytes) {
        self.note_change(&key);
        let value: Blob = Vec::from(value).into_boxed_slice();
        match self.data.get_mut(&key[..]) {
            // An overwrite reuses the stored key: no allocation for it.
            Some(v) => {
                self.data_bytes = self.data_bytes - v.len() as u64 + value.len() as u64;
                *v = value;
            }
            None => {
                self.data_bytes += (key.len() + value.len()) as u64;
                self.data.insert(Vec::from(key).into_boxed_slice(), value);
            }
        }
    }

    fn remove(&mut self, key: &Bytes) -> bool {
        match self.data.remove(&key[..]) {
            Some(old) => {
                self.data_bytes -= (key.len() + old.len()) as u64;
                self.note_change(key);
                true
            }
            None => false,
        }
    }

    fn note_change(&mut self, key: &[u8]) {
        if !self.changed.contains(key) {
            self.changed.insert(key.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ErrorReply;

    fn cmd(client_id: u64, seq: u64, op: WriteOp) -> Command {
        Command {
            session: Session { client_id, seq },
            op,
            origin: None,
        }
    }

    fn put(k: &'static str, v: &'static str) -> WriteOp {
        WriteOp::Put {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::from_static(v.as_bytes()),
        }
    }

    /// Registers a session in `slot`; returns its client id.
    fn register(sm: &mut StateMachine, slot: u64) -> u64 {
        let applied = sm.apply(slot, cmd(wire::NO_CLIENT_ID, 77, WriteOp::RegisterSession));
        match applied.reply {
            Ok(Reply::SessionRegistered { client_id }) => client_id,
            other => panic!("registration answered {other:?}"),
        }
    }

    #[test]
    fn put_delete_cas() {
        let mut sm = StateMachine::new();
        let c = register(&mut sm, 0);
        assert_eq!(
            sm.apply(0, cmd(c, 1, put("k", "a"))).reply,
            Ok(Reply::Written)
        );
        let cas = |expected: Option<&'static str>, new: &'static str| WriteOp::Cas {
            key: Bytes::from_static(b"k"),
            expected: expected.map(|e| Bytes::from_static(e.as_bytes())),
            new: Bytes::from_static(new.as_bytes()),
        };
        assert_eq!(
            sm.apply(1, cmd(c, 2, cas(Some("x"), "b"))).reply,
            Ok(Reply::Mismatch {
                current: Some(Bytes::from_static(b"a"))
            })
        );
        assert_eq!(
            sm.apply(2, cmd(c, 3, cas(Some("a"), "b"))).reply,
            Ok(Reply::Swapped)
        );
        assert_eq!(sm.get(b"k"), Some(&b"b"[..]));
        assert_eq!(
            sm.apply(3, cmd(c, 4, cas(None, "c"))).reply,
            Ok(Reply::Mismatch {
                current: Some(Bytes::from_static(b"b"))
            })
        );
        let del = WriteOp::Delete {
            key: Bytes::from_static(b"k"),
        };
        assert_eq!(
            sm.apply(4, cmd(c, 5, del.clone())).reply,
            Ok(Reply::Deleted { existed: true })
        );
        assert_eq!(
            sm.apply(5, cmd(c, 6, del)).reply,
            Ok(Reply::Deleted { existed: false })
        );
        assert_eq!(
            sm.apply(6, cmd(c, 7, cas(None, "d"))).reply,
            Ok(Reply::Swapped)
        );
        assert_eq!(sm.data_bytes(), 2);
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answers_its_first_result() {
        let mut sm = StateMachine::new();
        let a = register(&mut sm, 0);
        let b = register(&mut sm, 0);
        let first = sm.apply(1, cmd(a, 1, put("k", "v1")));
        assert!(first.fresh);
        // Someone else overwrites; then the first write is retried.
        sm.apply(2, cmd(b, 1, put("k", "v2")));
        let retry = sm.apply(3, cmd(a, 1, put("k", "v1")));
        assert!(!retry.fresh);
        assert_eq!(retry.reply, Ok(Reply::Written));
        assert_eq!(sm.get(b"k"), Some(&b"v2"[..]));
        assert_eq!(
            sm.settled(&Session {
                client_id: a,
                seq: 1
            }),
            Some(Ok(Reply::Written))
        );
    }

    #[test]
    fn a_write_of_an_unknown_or_evicted_session_is_refused_not_executed() {
        let mut sm = StateMachine::with_sessions_max(2);
        let a = register(&mut sm, 0);
        let del = WriteOp::Delete {
            key: Bytes::from_static(b"k"),
        };
        assert_eq!(
            sm.apply(1, cmd(a, 1, del.clone())).reply,
            Ok(Reply::Deleted { existed: false })
        );
        // Two newer sessions push `a` out; one of them writes the key.
        let b = register(&mut sm, 2);
        register(&mut sm, 3);
        sm.apply(4, cmd(b, 1, put("k", "later")));
        // The retried delete must not remove the later write.
        let retry = sm.apply(5, cmd(a, 1, del));
        assert_eq!(retry.reply, Err(sessions::expired(&retry.session)));
        assert!(!retry.fresh);
        assert_eq!(sm.get(b"k"), Some(&b"later"[..]));
        // An id never handed out is refused the same way.
        let stranger = sm.apply(6, cmd(a ^ b ^ 1, 1, put("k", "stranger")));
        assert!(matches!(
            stranger.reply,
            Err(ErrorReply::SessionExpired { .. })
        ));
        assert_eq!(sm.get(b"k"), Some(&b"later"[..]));
    }

    #[test]
    fn writes_without_a_session_take_no_room_in_the_session_table() {
        let mut sm = StateMachine::with_sessions_max(2);
        let a = register(&mut sm, 0);
        sm.apply(1, cmd(a, 1, put("k", "a")));
        for slot in 2..100 {
            let applied = sm.apply(slot, cmd(wire::NO_CLIENT_ID, slot, put("other", "x")));
            assert_eq!(applied.reply, Ok(Reply::Written));
        }
        assert_eq!(sm.sessions().len(), 1);
        let retry = sm.apply(100, cmd(a, 1, put("k", "a")));
        assert!(!retry.fresh, "the session is still known");
    }

    #[test]
    fn sessions_remember_a_bounded_window() {
        let mut sm = StateMachine::new();
        let c = register(&mut sm, 0);
        for seq in 1..=(SESSION_RESULTS_MAX as u64 + 10) {
            sm.apply(seq, cmd(c, seq, put("k", "v")));
        }
        let s = Session {
            client_id: c,
            seq: 1,
        };
        assert_eq!(sm.result_of(&s), None);
        assert_eq!(sm.settled(&s), Some(Err(sessions::expired(&s))));
        let recent = Session {
            client_id: c,
            seq: SESSION_RESULTS_MAX as u64 + 9,
        };
        assert_eq!(sm.result_of(&recent), Some(&Ok(Reply::Written)));
    }
}

#[cfg(test)]
mod delta_tests {
    use super::*;
    use wire::{Command, Session, WriteOp};

    #[test]
    fn the_delta_records_the_latest_change_per_key_and_can_be_restored() {
        let mut sm = StateMachine::new();
        let put = |k: &'static str, v: &'static str| Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq: 0,
            },
            op: WriteOp::Put {
                key: Bytes::from_static(k.as_bytes()),
                value: Bytes::from_static(v.as_bytes()),
            },
            origin: None,
        };
        let mut seq = 0;
        let mut apply = |sm: &mut StateMachine, mut c: Command| {
            seq += 1;
            c.session.seq = seq;
            sm.apply(seq, c);
        };
        apply(&mut sm, put("a", "1"));
        apply(&mut sm, put("a", "2"));
        apply(&mut sm, put("b", "x"));
        let del = Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq: 0,
            },
            op: WriteOp::Delete {
                key: Bytes::from_static(b"b"),
            },
            origin: None,
        };
        apply(&mut sm, del);
        let d = sm.take_delta();
        let want: Delta = [
            (Blob::from(&b"a"[..]), Some(Blob::from(&b"2"[..]))),
            (Blob::from(&b"b"[..]), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(d, want);
        assert_eq!(sm.changed_keys(), 0);
        apply(&mut sm, put("a", "3"));
        sm.restore_delta(d);
        let d2 = sm.take_delta();
        assert_eq!(
            d2.get(&b"a"[..]),
            Some(&Some(Blob::from(&b"3"[..]))),
            "newer change wins"
        );
        assert_eq!(d2.get(&b"b"[..]), Some(&None), "older change restored");
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use wire::{Compare, RangeMode, RangeRequest, ReadConsistency, Txn, TxnOp};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn cmd(seq: u64, op: WriteOp) -> Command {
        Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq,
            },
            op,
            origin: None,
        }
    }

    fn filled(keys: &[&str]) -> StateMachine {
        let mut sm = StateMachine::new();
        for (slot, k) in keys.iter().enumerate() {
            let put = WriteOp::Put {
                key: b(k),
                value: b(&format!("v-{k}")),
            };
            sm.apply(slot as u64, cmd(slot as u64, put));
            sm.finish_slot(slot as u64);
        }
        sm
    }

    fn req(from: &str, to: Option<&str>, limit: Option<u64>, mode: RangeMode) -> RangeRequest {
        RangeRequest {
            from: b(from),
            to: to.map(b),
            limit,
            mode,
            consistency: ReadConsistency::Linearizable,
        }
    }

    #[test]
    fn a_range_is_from_inclusive_to_exclusive_with_a_limit_and_a_continuation() {
        let sm = filled(&["a", "b1", "b2", "b3", "c"]);
        let page = sm.range(&req("b", Some("c"), None, RangeMode::Entries), false);
        assert_eq!(page.keys, vec![b("b1"), b("b2"), b("b3")]);
        assert_eq!(page.values, vec![b("v-b1"), b("v-b2"), b("v-b3")]);
        assert_eq!((page.count, page.next), (3, None));
        let limited = sm.range(&req("b", Some("c"), Some(2), RangeMode::KeysOnly), true);
        assert_eq!(limited.keys, vec![b("b1"), b("b2")]);
        assert!(limited.values.is_empty());
        assert_eq!(limited.next, Some(b("b3")));
        assert!(limited.stale);
        let count = sm.range(&req("", None, None, RangeMode::Count), false);
        assert_eq!((count.count, count.keys.len(), count.next), (5, 0, None));
        let empty = sm.range(&req("c", Some("b"), None, RangeMode::Entries), false);
        assert_eq!((empty.count, empty.next), (0, None));
    }

    #[test]
    fn a_page_ends_after_a_page_worth_of_bytes() {
        let mut sm = StateMachine::new();
        let value = Bytes::from(vec![7u8; 300 * 1024]);
        for (slot, k) in ["k1", "k2", "k3", "k4", "k5"].iter().enumerate() {
            let put = WriteOp::Put {
                key: b(k),
                value: value.clone(),
            };
            sm.apply(slot as u64, cmd(slot as u64, put));
        }
        let page = sm.range(&req("", None, None, RangeMode::Entries), false);
        // 4 x 300 KiB crosses 1 MiB: the fourth entry is the last of the page.
        assert_eq!(page.count, 4);
        assert_eq!(page.next, Some(b("k5")));
    }

    #[test]
    fn delete_range_and_txn_are_deterministic_and_exactly_once() {
        let mut a = filled(&["a", "p/1", "p/2", "p/3", "q"]);
        let mut c = filled(&["a", "p/1", "p/2", "p/3", "q"]);
        let client = {
            let r = a.apply(5, cmd(99, WriteOp::RegisterSession));
            c.apply(5, cmd(99, WriteOp::RegisterSession));
            match r.reply {
                Ok(Reply::SessionRegistered { client_id }) => client_id,
                other => panic!("{other:?}"),
            }
        };
        let session = Session {
            client_id: client,
            seq: 1,
        };
        let del = Command {
            session,
            op: WriteOp::DeleteRange {
                from: b("p/"),
                to: wire::prefix_end(b"p/"),
            },
            origin: None,
        };
        let txn = |seq| Command {
            session: Session {
                client_id: client,
                seq,
            },
            op: WriteOp::Txn(Txn {
                compares: vec![
                    Compare::Absent { key: b("p/1") },
                    Compare::Value {
                        key: b("a"),
                        value: b("v-a"),
                    },
                ],
                success: vec![
                    TxnOp::Put {
                        key: b("p/new"),
                        value: b("x"),
                    },
                    TxnOp::Delete { key: b("q") },
                ],
                failure: vec![TxnOp::Put {
                    key: b("failed"),
                    value: b("1"),
                }],
            }),
            origin: None,
        };
        for sm in [&mut a, &mut c] {
            assert_eq!(
                sm.apply(6, del.clone()).reply,
                Ok(Reply::DeletedRange { count: 3 })
            );
            // The same write again: answered from the session table, not applied.
            let retry = sm.apply(7, del.clone());
            assert_eq!(retry.reply, Ok(Reply::DeletedRange { count: 3 }));
            assert!(!retry.fresh);
            assert_eq!(
                sm.apply(8, txn(2)).reply,
                Ok(Reply::TxnDone { succeeded: true })
            );
            // Now p/new exists but p/1 is still absent: the same compares hold; a
            // different txn whose compare fails applies the failure branch.
            let mut failing = txn(3);
            if let WriteOp::Txn(t) = &mut failing.op {
                t.compares = vec![Compare::Exists { key: b("q") }];
            }
            assert_eq!(
                sm.apply(9, failing).reply,
                Ok(Reply::TxnDone { succeeded: false })
            );
            sm.finish_slot(9);
        }
        assert_eq!(a, c, "two replicas applying the same commands agree");
        let keys: Vec<&[u8]> = a.data().keys().map(|k| &**k).collect();
        assert_eq!(keys, vec![&b"a"[..], b"failed", b"p/new"]);
        assert_eq!(a.data_bytes(), c.data_bytes());
        assert_eq!(a.data_bytes(), 1 + 3 + 6 + 1 + 5 + 1);
    }
}

#[cfg(test)]
mod auth_tests {
    use std::path::Path;

    use super::*;
    use wire::{AuthChange, ErrorReply, Permission, ADMIN_ROLE};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Applies `op` from `who` in its own slot, without a session.
    fn run(sm: &mut StateMachine, who: Option<&str>, op: WriteOp) -> Applied {
        let slot = sm.applied();
        let tag = Session {
            client_id: wire::NO_CLIENT_ID,
            seq: slot + 1,
        };
        let applied = sm.apply(slot, Command::new(tag, op, who.map(str::to_owned)));
        sm.finish_slot(slot);
        applied
    }

    fn admin(sm: &mut StateMachine, change: AuthChange) {
        let shown = format!("{change:?}");
        let applied = run(sm, Some("root"), WriteOp::Auth(change));
        assert_eq!(applied.reply, Ok(Reply::AuthChanged), "{shown}");
    }

    fn put(key: &str) -> WriteOp {
        WriteOp::Put {
            key: b(key),
            value: b("v"),
        }
    }

    /// root holds admin, alice the role doctors (readwrite on patient/); auth enabled.
    fn clinic() -> StateMachine {
        let mut sm = StateMachine::new();
        admin(
            &mut sm,
            AuthChange::UserAdd {
                user: "root".into(),
            },
        );
        admin(
            &mut sm,
            AuthChange::UserAdd {
                user: "alice".into(),
            },
        );
        admin(
            &mut sm,
            AuthChange::RoleAdd {
                role: "doctors".into(),
            },
        );
        admin(
            &mut sm,
            AuthChange::RoleGrant {
                role: "doctors".into(),
                prefix: b("patient/"),
                perm: Permission::ReadWrite,
            },
        );
        admin(
            &mut sm,
            AuthChange::UserGrantRole {
                user: "root".into(),
                role: ADMIN_ROLE.into(),
            },
        );
        admin(
            &mut sm,
            AuthChange::UserGrantRole {
                user: "alice".into(),
                role: "doctors".into(),
            },
        );
        admin(&mut sm, AuthChange::Enable);
        sm
    }

    fn is_denied(applied: &Applied) -> bool {
        matches!(applied.reply, Err(ErrorReply::PermissionDenied { .. }))
    }

    #[test]
    fn a_write_is_checked_at_apply_with_the_identity_it_carries() {
        let mut sm = clinic();
        assert_eq!(
            run(&mut sm, Some("alice"), put("patient/1")).reply,
            Ok(Reply::Written)
        );
        let denied = run(&mut sm, Some("alice"), put("billing/1"));
        assert!(is_denied(&denied) && !denied.fresh, "{denied:?}");
        assert_eq!(sm.get(b"billing/1"), None, "a denied write changes nothing");
        assert!(is_denied(&run(&mut sm, None, put("patient/2"))));
        assert!(is_denied(&run(&mut sm, Some("mallory"), put("patient/2"))));
        // A command of the layout before origins carries no identity: refused while
        // auth is enabled.
        let old = Command {
            session: Session {
                client_id: wire::NO_CLIENT_ID,
                seq: 99,
            },
            op: put("patient/3"),
            origin: None,
        };
        let slot = sm.applied();
        assert!(is_denied(&sm.apply(slot, old)));
        assert_eq!(sm.get(b"patient/3"), None);
        // Auth changes need the admin role at apply too.
        let grab = WriteOp::Auth(AuthChange::UserGrantRole {
            user: "alice".into(),
            role: ADMIN_ROLE.into(),
        });
        assert!(is_denied(&run(&mut sm, Some("alice"), grab)));
        // Disabled again, everything goes.
        admin(&mut sm, AuthChange::Disable);
        assert_eq!(
            run(&mut sm, None, put("billing/1")).reply,
            Ok(Reply::Written)
        );
    }

    /// A write proposed while alice held the grant, chosen in a slot after the revoke, is
    /// refused: every replica decides by the state as of the slot, not as the receiving
    /// replica saw it.
    #[test]
    fn a_revoke_chosen_before_a_write_applies_to_it_on_every_replica() {
        let mut a = clinic();
        let c = register(&mut a, Some("alice"));
        let mut other = clinic();
        assert_eq!(register(&mut other, Some("alice")), c);
        let revoke = Command::new(
            tag(500),
            WriteOp::Auth(AuthChange::RoleRevoke {
                role: "doctors".into(),
                prefix: b("patient/"),
            }),
            Some("root".into()),
        );
        let write = Command::new(
            Session {
                client_id: c,
                seq: 1,
            },
            put("patient/9"),
            Some("alice".into()),
        );
        for sm in [&mut a, &mut other] {
            let slot = sm.applied();
            assert_eq!(sm.apply(slot, revoke.clone()).reply, Ok(Reply::AuthChanged));
            let denied = sm.apply(slot, write.clone());
            assert!(is_denied(&denied), "{denied:?}");
            sm.finish_slot(slot);
            assert_eq!(sm.get(b"patient/9"), None);
        }
        assert_eq!(a, other, "replicas agree, refusal remembered included");
        // The session remembers the refusal: a retry after the grant is given back is
        // answered the same and not applied.
        admin(
            &mut a,
            AuthChange::RoleGrant {
                role: "doctors".into(),
                prefix: b("patient/"),
                perm: Permission::ReadWrite,
            },
        );
        let slot = a.applied();
        let retry = a.apply(slot, write.clone());
        assert!(is_denied(&retry) && !retry.fresh);
        assert_eq!(a.get(b"patient/9"), None);
        assert!(matches!(
            a.settled(&write.session),
            Some(Err(ErrorReply::PermissionDenied { .. }))
        ));
        // Without the revoke first, the same write is applied.
        let mut c2 = clinic();
        register(&mut c2, Some("alice"));
        let slot = c2.applied();
        assert_eq!(c2.apply(slot, write).reply, Ok(Reply::Written));
    }

    fn tag(seq: u64) -> Session {
        Session {
            client_id: wire::NO_CLIENT_ID,
            seq,
        }
    }

    fn register(sm: &mut StateMachine, who: Option<&str>) -> u64 {
        match run(sm, who, WriteOp::RegisterSession).reply {
            Ok(Reply::SessionRegistered { client_id }) => client_id,
            other => panic!("registration answered {other:?}"),
        }
    }

    #[test]
    fn registering_a_session_needs_a_user_while_auth_is_enabled() {
        let mut sm = clinic();
        let before = sm.sessions().registered();
        assert!(is_denied(&run(&mut sm, None, WriteOp::RegisterSession)));
        assert!(is_denied(&run(
            &mut sm,
            Some("mallory"),
            WriteOp::RegisterSession
        )));
        assert_eq!(sm.sessions().registered(), before, "nothing registered");
        register(&mut sm, Some("alice"));
    }

    #[test]
    fn the_auth_state_and_remembered_refusals_survive_a_snapshot() {
        let mut sm = clinic();
        let c = register(&mut sm, Some("alice"));
        let slot = sm.applied();
        let denied = sm.apply(
            slot,
            Command::new(
                Session {
                    client_id: c,
                    seq: 1,
                },
                put("billing/1"),
                Some("alice".into()),
            ),
        );
        assert!(is_denied(&denied));
        sm.finish_slot(slot);
        let bytes = crate::snapshot::encode(&sm).unwrap_or_default();
        let back =
            crate::snapshot::decode(&bytes, Path::new("s")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, sm);
        assert!(back.auth().enabled());
        assert_eq!(back.auth().status(), sm.auth().status());
        assert_eq!(
            back.settled(&Session {
                client_id: c,
                seq: 1
            }),
            Some(denied.reply)
        );
    }
}
