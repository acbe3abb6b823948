//! Client sessions: the replicated table that makes a retried write exactly-once, kept
//! identical on every replica whether it applied the log live or was restored from a
//! snapshot.
//!
//! # The rules
//!
//! - **Registration goes through the log.** A client opens a session with
//!   [`wire::Op::RegisterSession`]; applying it hands out a client id derived from a counter
//!   in this table, so no id is ever handed out twice (a registration replayed or retried
//!   creates another session, never an old one again). Writes sent without a session take
//!   no room here at all.
//! - **A write of an unknown session is never executed.** A session's writes are
//!   deduplicated by sequence number: the table keeps the replies of its most recent
//!   [`SESSION_RESULTS_MAX`] writes, and a `floor` below which every sequence number is
//!   finished (applied and forgotten, or given up by the client). A write whose session is
//!   not in the table, or whose sequence number is at or below the floor and not
//!   remembered, is answered [`wire::ErrorReply::SessionExpired`]: the table can no longer
//!   tell whether it was applied, so it is not applied now.
//! - **Eviction is a function of the table alone.** When a registration finds the table
//!   full, the session whose last command was applied in the lowest slot goes first, ties
//!   broken by the lower client id: the smallest `(last_slot, client_id)`. Those pairs live
//!   in one ordered set, `idle_order`, derived from the sessions and nothing else; it is
//!   maintained by the same code whether commands are applied live or the table is rebuilt
//!   from a snapshot, so every replica evicts the same session at the same point of the log.
//!   (The order in which commands of one slot were applied does not enter it: that is what
//!   diverged replicas before.)
//!
//! - **A denied write is remembered like an applied one.** A write the permission check
//!   refuses when it is applied changes no key, but its refusal is recorded as its outcome:
//!   every replica decides it from the same replicated auth state at the same slot, and a
//!   retry answers the same refusal (a grant given afterwards does not apply it later).
//!
//! Why a capacity bound and not expiry by leader-stamped time (the Raft dissertation's
//! §6.3): a bound limits memory however many clients register, needs no clock in the log,
//! and the least recently active session is the one least likely to retry. Either way the
//! guarantee is the same: an expired session's write is refused, never executed twice.

use std::collections::{BTreeMap, BTreeSet};

use wire::{ErrorReply, Reply, Session};

/// How many results a session keeps: a client may have up to this many writes in flight
/// and still retry any of them safely.
pub const SESSION_RESULTS_MAX: usize = wire::SESSION_WINDOW as usize;

/// How many client sessions the table holds by default; the least recently active one is
/// forgotten first when a new one registers.
pub const SESSIONS_MAX: usize = 10_000;

/// What a session remembers of a write: the reply first given, or the refusal it got when
/// it was applied (a write denied by the permission check at apply time).
pub type Outcome = Result<Reply, ErrorReply>;

/// One session's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionResults {
    /// The slot of this session's latest applied command (its place in the eviction order).
    pub last_slot: u64,
    /// Every sequence number at or below this is finished: a write with one of them that is
    /// not in `results` is answered "session expired". Results are always above it.
    pub floor: u64,
    /// seq -> the outcome first given.
    pub results: BTreeMap<u64, Outcome>,
}

/// What the table knows about one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known<'a> {
    /// Applied before: answer with this outcome, do not apply again.
    Applied(&'a Outcome),
    /// The table cannot tell whether it was applied: refuse it.
    Expired,
    /// Never applied: apply it.
    New,
}

/// The replicated session table. See the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct SessionTable {
    sessions: BTreeMap<u64, SessionResults>,
    /// `(last_slot, client_id)` of every session, smallest first: the eviction order.
    idle_order: BTreeSet<(u64, u64)>,
    /// Sessions registered so far (the counter client ids are derived from).
    registered: u64,
    /// Mixed into client ids so that two clusters (or one cluster wiped and started again)
    /// do not hand out the same ids; taken from the first registration's tag.
    salt: u64,
    /// Capacity (configuration, not replicated state: every replica must use the same).
    sessions_max: usize,
}

/// Two tables are equal when they hold the same replicated state (the eviction order is
/// derived from it, and the capacity is configuration).
impl PartialEq for SessionTable {
    fn eq(&self, other: &Self) -> bool {
        self.registered == other.registered
            && self.salt == other.salt
            && self.sessions == other.sessions
    }
}

impl Eq for SessionTable {}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new(SESSIONS_MAX)
    }
}

impl SessionTable {
    /// An empty table holding at most `sessions_max` sessions (at least one).
    pub fn new(sessions_max: usize) -> Self {
        SessionTable {
            sessions: BTreeMap::new(),
            idle_order: BTreeSet::new(),
            registered: 0,
            salt: 0,
            sessions_max: sessions_max.max(1),
        }
    }

    /// Rebuilds a table from snapshot contents. The eviction order is derived from the
    /// sessions exactly as the live path maintains it.
    pub fn from_parts(registered: u64, salt: u64, sessions: BTreeMap<u64, SessionResults>) -> Self {
        let idle_order = sessions.iter().map(|(&c, s)| (s.last_slot, c)).collect();
        let table = SessionTable {
            sessions,
            idle_order,
            registered,
            salt,
            sessions_max: SESSIONS_MAX,
        };
        table.check_invariants();
        table
    }

    /// Sets the capacity (at least one). A table holding more sessions shrinks at the next
    /// registration.
    pub fn set_sessions_max(&mut self, sessions_max: usize) {
        self.sessions_max = sessions_max.max(1);
    }

    /// The capacity.
    pub fn sessions_max(&self) -> usize {
        self.sessions_max
    }

    /// Sessions registered so far (snapshot contents).
    pub fn registered(&self) -> u64 {
        self.registered
    }

    /// The salt of client ids (snapshot contents).
    pub fn salt(&self) -> u64 {
        self.salt
    }

    /// The sessions, by client id.
    pub fn sessions(&self) -> &BTreeMap<u64, SessionResults> {
        &self.sessions
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// What the table knows about `session`'s write.
    pub fn known(&self, session: &Session) -> Known<'_> {
        let Some(s) = self.sessions.get(&session.client_id) else {
            return Known::Expired;
        };
        match s.results.get(&session.seq) {
            Some(reply) => Known::Applied(reply),
            None if session.seq <= s.floor => Known::Expired,
            None => Known::New,
        }
    }

    /// The answer a replica can give for `session`'s write before it goes through the log,
    /// if that answer cannot change by the time it would be applied: a remembered reply,
    /// or "expired" for a known session's sequence number at or below its floor. An unknown
    /// session is not refused here: this replica may not have applied its registration yet.
    pub fn settled(&self, session: &Session) -> Option<Outcome> {
        self.sessions.get(&session.client_id)?;
        match self.known(session) {
            Known::Applied(outcome) => Some(outcome.clone()),
            Known::Expired => Some(Err(expired(session))),
            Known::New => None,
        }
    }

    /// Registers a new session in `slot`, making room first if the table is full; returns
    /// its client id. `tag` is the registering command's tag (salt of the first one).
    pub fn register(&mut self, slot: u64, tag: u64) -> u64 {
        if self.registered == 0 && self.salt == 0 {
            self.salt = tag;
        }
        let client_id = loop {
            self.registered += 1;
            let id = mix(self.registered.wrapping_add(self.salt));
            // Never the reserved id, never one in use (ids from before a restart of the
            // counter, such as those of an older snapshot format).
            if id != wire::NO_CLIENT_ID && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        while self.sessions.len() >= self.sessions_max {
            self.evict_idlest();
        }
        let fresh = SessionResults {
            last_slot: slot,
            floor: 0,
            results: BTreeMap::new(),
        };
        self.sessions.insert(client_id, fresh);
        self.idle_order.insert((slot, client_id));
        debug_assert!(self.sessions.len() <= self.sessions_max);
        debug_assert_eq!(self.sessions.len(), self.idle_order.len());
        client_id
    }

    /// Records the outcome of `session`'s write, applied in `slot` (the write must be
    /// [`Known::New`]). Forgets the oldest result beyond [`SESSION_RESULTS_MAX`] and raises
    /// the floor to just below the oldest result kept.
    pub fn record(&mut self, slot: u64, session: Session, reply: Outcome) {
        debug_assert_eq!(self.known(&session), Known::New);
        self.touch(slot, session.client_id);
        let Some(s) = self.sessions.get_mut(&session.client_id) else {
            return;
        };
        s.results.insert(session.seq, reply);
        while s.results.len() > SESSION_RESULTS_MAX {
            s.results.pop_first();
            if let Some((&lowest, _)) = s.results.first_key_value() {
                s.floor = s.floor.max(lowest - 1);
            }
        }
        debug_assert!(s.results.keys().all(|&seq| seq > s.floor));
    }

    /// Marks `client_id`'s session active in `slot` (it moves to the back of the eviction
    /// order). Does nothing for an unknown session.
    pub fn touch(&mut self, slot: u64, client_id: u64) {
        let Some(s) = self.sessions.get_mut(&client_id) else {
            return;
        };
        if s.last_slot == slot {
            return;
        }
        let removed = self.idle_order.remove(&(s.last_slot, client_id));
        debug_assert!(removed, "every session is in the eviction order");
        s.last_slot = slot;
        self.idle_order.insert((slot, client_id));
    }

    fn evict_idlest(&mut self) {
        let Some((_, client_id)) = self.idle_order.pop_first() else {
            return;
        };
        let removed = self.sessions.remove(&client_id);
        debug_assert!(removed.is_some(), "the eviction order holds only sessions");
    }

    fn check_invariants(&self) {
        debug_assert_eq!(self.sessions.len(), self.idle_order.len());
        debug_assert!(self
            .sessions
            .iter()
            .all(|(c, s)| self.idle_order.contains(&(s.last_slot, *c))));
    }
}

/// The refusal of `session`'s write.
pub fn expired(session: &Session) -> ErrorReply {
    ErrorReply::SessionExpired {
        client_id: session.client_id,
        seq: session.seq,
    }
}

/// A bijection of `u64` (the splitmix64 finalizer): distinct counters give distinct ids.
fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(client_id: u64, seq: u64) -> Session {
        Session { client_id, seq }
    }

    #[test]
    fn ids_are_distinct_and_an_unknown_session_is_expired() {
        let mut t = SessionTable::new(100);
        let ids: BTreeSet<u64> = (0..50).map(|i| t.register(i, 99)).collect();
        assert_eq!(ids.len(), 50);
        assert!(!ids.contains(&wire::NO_CLIENT_ID));
        let never = (1..).find(|c| !ids.contains(c)).unwrap_or(u64::MAX);
        assert_eq!(t.known(&s(never, 1)), Known::Expired);
        // Not settled before the log: this replica may lag behind a registration.
        assert_eq!(t.settled(&s(never, 1)), None);
    }

    #[test]
    fn the_idlest_session_is_evicted_ties_by_client_id() {
        let mut t = SessionTable::new(3);
        let a = t.register(1, 5);
        let b = t.register(1, 5);
        let c = t.register(2, 5);
        t.record(3, s(a, 1), Ok(Reply::Written));
        // b and c are idler than a; b (slot 1) goes first.
        let d = t.register(4, 5);
        assert_eq!(t.known(&s(b, 1)), Known::Expired);
        assert_eq!(t.known(&s(c, 1)), Known::New);
        let e = t.register(4, 5);
        assert_eq!(t.known(&s(c, 1)), Known::Expired);
        assert_eq!(t.len(), 3);
        // a (slot 3) goes next, then d and e, both of slot 4, lower id first.
        t.register(5, 5);
        assert_eq!(t.known(&s(a, 1)), Known::Expired);
        t.register(5, 5);
        let (first, second) = if d < e { (d, e) } else { (e, d) };
        assert_eq!(t.known(&s(first, 1)), Known::Expired);
        assert_eq!(t.known(&s(second, 1)), Known::New);
    }

    #[test]
    fn old_sequence_numbers_expire_when_the_window_moves_on() {
        let mut t = SessionTable::new(10);
        let a = t.register(0, 1);
        let top = SESSION_RESULTS_MAX as u64 + 5;
        // Sequence number 3 is never applied: a hole.
        for seq in (1..=top).filter(|&q| q != 3) {
            t.record(seq, s(a, seq), Ok(Reply::Written));
        }
        assert_eq!(t.known(&s(a, 3)), Known::Expired, "a hole below the window");
        assert_eq!(t.known(&s(a, 1)), Known::Expired);
        assert_eq!(t.settled(&s(a, 1)), Some(Err(expired(&s(a, 1)))));
        assert_eq!(t.known(&s(a, top)), Known::Applied(&Ok(Reply::Written)));
        assert_eq!(t.known(&s(a, top + 1)), Known::New);
        assert_eq!(t.known(&s(a, 0)), Known::Expired, "0 is never a valid seq");
    }

    #[test]
    fn a_rebuilt_table_evicts_like_the_live_one() {
        let mut live = SessionTable::new(4);
        let ids: Vec<u64> = (0..4).map(|_| live.register(7, 3)).collect();
        let mut rebuilt =
            SessionTable::from_parts(live.registered(), live.salt(), live.sessions().clone());
        rebuilt.set_sessions_max(4);
        assert_eq!(rebuilt, live);
        for t in [&mut live, &mut rebuilt] {
            t.register(8, 0);
        }
        assert_eq!(rebuilt, live);
        let gone = ids.iter().min().copied().unwrap_or_default();
        assert_eq!(live.known(&s(gone, 1)), Known::Expired);
    }
}
