//! The replicated state machine: an ordered map of byte keys to byte values, plus the
//! client sessions that make retried writes exactly-once.
//!
//! Every replica applies the same commands in the same slot order, so everything here must
//! be deterministic: no clocks, no randomness, no hash-map iteration order.

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use wire::{Command, Reply, Session, WriteOp};

/// How many results a session keeps: a client may have up to this many writes in flight
/// and still retry any of them safely.
pub const SESSION_RESULTS_MAX: usize = wire::SESSION_WINDOW as usize;

/// How many client sessions are kept; the least recently active one is forgotten first.
pub const SESSIONS_MAX: usize = 10_000;

/// A key or value as stored: one exact-size allocation behind a 16-byte handle (a `Bytes`
/// handle is 32 bytes, and sharing one adds another allocation per key and per value).
pub type Blob = Box<[u8]>;

/// Keys changed since the last snapshot: the new value, or `None` for a deleted key.
pub type Delta = BTreeMap<Blob, Option<Blob>>;

/// Results of one client's recent writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionResults {
    /// The slot of this client's latest applied write (for forgetting idle sessions).
    pub last_slot: u64,
    /// seq -> the reply first given.
    pub results: BTreeMap<u64, Reply>,
}

/// The store's data and sessions.
#[derive(Debug, Default)]
pub struct StateMachine {
    data: BTreeMap<Blob, Blob>,
    /// Keys changed since the last snapshot: the next snapshot is the previous one with
    /// these keys' current values merged in, so taking one never copies the whole store.
    /// A hash set: every write checks it, and a tree would add a walk through nodes that
    /// are seldom in cache; the order is only needed once per snapshot (`take_delta`).
    changed: HashSet<Blob>,
    sessions: BTreeMap<u64, SessionResults>,
    /// Clients by last activity, to find the idlest session quickly: (last_slot, client_id).
    activity: VecDeque<(u64, u64)>,
    /// Every slot below this has been applied.
    applied: u64,
    /// Bytes held by keys and values (for the status and memory figures).
    data_bytes: u64,
}

/// Two stores are equal when they hold the same data and sessions at the same slot (the
/// activity index is derived state, rebuilt compactly from a snapshot).
impl PartialEq for StateMachine {
    fn eq(&self, other: &Self) -> bool {
        self.applied == other.applied && self.data == other.data && self.sessions == other.sessions
    }
}

impl Eq for StateMachine {}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The session of the command.
    pub session: Session,
    /// The reply for the client.
    pub reply: Reply,
    /// False if the command was a retry of one applied earlier (and was not applied again).
    pub fresh: bool,
}

impl StateMachine {
    /// An empty store.
    pub fn new() -> Self {
        StateMachine::default()
    }

    /// Rebuilds a store from snapshot contents.
    pub fn from_parts(
        applied: u64,
        data: BTreeMap<Blob, Blob>,
        sessions: BTreeMap<u64, SessionResults>,
    ) -> Self {
        let data_bytes = data.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let mut activity: Vec<(u64, u64)> =
            sessions.iter().map(|(&c, s)| (s.last_slot, c)).collect();
        activity.sort_unstable();
        StateMachine {
            data,
            changed: HashSet::new(),
            sessions,
            activity: activity.into(),
            applied,
            data_bytes,
        }
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

    /// The sessions, by client id.
    pub fn sessions(&self) -> &BTreeMap<u64, SessionResults> {
        &self.sessions
    }

    /// The first reply given to this session's write, if it was applied and is remembered.
    pub fn result_of(&self, session: &Session) -> Option<&Reply> {
        self.sessions
            .get(&session.client_id)?
            .results
            .get(&session.seq)
    }

    /// Marks `slot` applied without a command (a no-op or an undecodable value).
    pub fn skip(&mut self, slot: u64) {
        debug_assert_eq!(slot, self.applied, "slots are applied in order");
        self.applied = slot + 1;
    }

    /// Applies one command chosen in `slot`. The caller applies every command of a slot in
    /// order, then calls [`StateMachine::finish_slot`].
    pub fn apply(&mut self, slot: u64, command: Command) -> Applied {
        let session = command.session;
        if let Some(reply) = self.result_of(&session) {
            return Applied {
                session,
                reply: reply.clone(),
                fresh: false,
            };
        }
        let reply = self.execute(command.op);
        self.remember(slot, session, reply.clone());
        Applied {
            session,
            reply,
            fresh: true,
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
        }
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

    fn remember(&mut self, slot: u64, session: Session, reply: Reply) {
        let entry = self.sessions.entry(session.client_id).or_default();
        entry.last_slot = slot;
        entry.results.insert(session.seq, reply);
        while entry.results.len() > SESSION_RESULTS_MAX {
            entry.results.pop_first();
        }
        self.activity.push_back((slot, session.client_id));
        // Forget the idlest sessions beyond the limit. `activity` may hold stale pairs for
        // clients active again since; those are skipped.
        while self.sessions.len() > SESSIONS_MAX {
            let Some((at, client)) = self.activity.pop_front() else {
                break;
            };
            if self
                .sessions
                .get(&client)
                .is_some_and(|s| s.last_slot == at)
            {
                self.sessions.remove(&client);
            }
        }
        // Keep the activity queue from growing without bound under a steady load.
        if self.activity.len() > 4 * SESSIONS_MAX.max(self.sessions.len()) {
            let sessions = &self.sessions;
            self.activity
                .retain(|(at, c)| sessions.get(c).is_some_and(|s| s.last_slot == *at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client_id: u64, seq: u64, op: WriteOp) -> Command {
        Command {
            session: Session { client_id, seq },
            op,
        }
    }

    fn put(k: &'static str, v: &'static str) -> WriteOp {
        WriteOp::Put {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::from_static(v.as_bytes()),
        }
    }

    #[test]
    fn put_delete_cas() {
        let mut sm = StateMachine::new();
        assert_eq!(sm.apply(0, cmd(1, 1, put("k", "a"))).reply, Reply::Written);
        let cas = |expected: Option<&'static str>, new: &'static str| WriteOp::Cas {
            key: Bytes::from_static(b"k"),
            expected: expected.map(|e| Bytes::from_static(e.as_bytes())),
            new: Bytes::from_static(new.as_bytes()),
        };
        assert_eq!(
            sm.apply(1, cmd(1, 2, cas(Some("x"), "b"))).reply,
            Reply::Mismatch {
                current: Some(Bytes::from_static(b"a"))
            }
        );
        assert_eq!(
            sm.apply(2, cmd(1, 3, cas(Some("a"), "b"))).reply,
            Reply::Swapped
        );
        assert_eq!(sm.get(b"k"), Some(&b"b"[..]));
        assert_eq!(
            sm.apply(3, cmd(1, 4, cas(None, "c"))).reply,
            Reply::Mismatch {
                current: Some(Bytes::from_static(b"b"))
            }
        );
        let del = WriteOp::Delete {
            key: Bytes::from_static(b"k"),
        };
        assert_eq!(
            sm.apply(4, cmd(1, 5, del.clone())).reply,
            Reply::Deleted { existed: true }
        );
        assert_eq!(
            sm.apply(5, cmd(1, 6, del)).reply,
            Reply::Deleted { existed: false }
        );
        assert_eq!(sm.apply(6, cmd(1, 7, cas(None, "d"))).reply, Reply::Swapped);
        assert_eq!(sm.data_bytes(), 2);
    }

    #[test]
    fn a_retried_write_is_applied_once_and_answers_its_first_result() {
        let mut sm = StateMachine::new();
        let first = sm.apply(0, cmd(7, 1, put("k", "v1")));
        assert!(first.fresh);
        // Someone else overwrites; then the first write is retried.
        sm.apply(1, cmd(8, 1, put("k", "v2")));
        let retry = sm.apply(2, cmd(7, 1, put("k", "v1")));
        assert!(!retry.fresh);
        assert_eq!(retry.reply, Reply::Written);
        assert_eq!(sm.get(b"k"), Some(&b"v2"[..]));
    }

    #[test]
    fn sessions_remember_a_bounded_window() {
        let mut sm = StateMachine::new();
        for seq in 0..(SESSION_RESULTS_MAX as u64 + 10) {
            sm.apply(seq, cmd(1, seq, put("k", "v")));
        }
        let s = Session {
            client_id: 1,
            seq: 0,
        };
        assert_eq!(sm.result_of(&s), None);
        let recent = Session {
            client_id: 1,
            seq: SESSION_RESULTS_MAX as u64 + 9,
        };
        assert_eq!(sm.result_of(&recent), Some(&Reply::Written));
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
                client_id: 1,
                seq: 0,
            },
            op: WriteOp::Put {
                key: Bytes::from_static(k.as_bytes()),
                value: Bytes::from_static(v.as_bytes()),
            },
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
                client_id: 1,
                seq: 0,
            },
            op: WriteOp::Delete {
                key: Bytes::from_static(b"b"),
            },
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
