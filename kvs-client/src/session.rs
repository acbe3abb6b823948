//! Write sessions: the `(client_id, seq)` that makes a retried write exactly-once.
//!
//! A client opens a session by registering it with the cluster ([`wire::Op::RegisterSession`],
//! one round through the replicated log, on the first write); the cluster assigns the
//! client id. Nodes remember the reply to each of the session's recent writes by `seq`,
//! keeping the highest [`WRITE_WINDOW`] sequence numbers; a retried write with a remembered
//! `seq` is answered from memory instead of being applied again, and one the cluster no
//! longer remembers is refused as expired, never applied. So that the reply to a write still
//! being retried is never forgotten, a new `seq` is handed out only while it is less than
//! [`WRITE_WINDOW`] above the oldest write still in progress: at most [`WRITE_WINDOW`]
//! sequence numbers from the oldest in-progress write on can ever have been applied.
//!
//! When the cluster has forgotten the whole session (it holds a bounded number and forgets
//! the least recently active first), the client registers a new one; writes in progress
//! under the old id finish under it (as retries) or are refused as expired.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use wire::Session;

/// How far ahead of the oldest write in progress a new write's `seq` may be. Matches the
/// number of results a node keeps per session (`SESSION_RESULTS_MAX` in the server).
pub const WRITE_WINDOW: u64 = wire::SESSION_WINDOW;

/// Hands out sequence numbers of the client's current session.
#[derive(Debug)]
pub(crate) struct Sessions {
    state: Mutex<WindowState>,
    freed: Notify,
    /// Held while a session is being registered, so that tasks writing at once share one
    /// registration.
    pub(crate) registering: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct WindowState {
    /// The registered session's id; `None` before the first registration and after the
    /// cluster forgot the session.
    client_id: Option<u64>,
    next_seq: u64,
    in_progress: BTreeSet<u64>,
}

/// A write's session, held until the write is finished (succeeded or given up).
#[derive(Debug)]
pub(crate) struct SessionGuard {
    sessions: Arc<Sessions>,
    session: Session,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Sessions {
            state: Mutex::new(WindowState {
                client_id: None,
                next_seq: 1,
                in_progress: BTreeSet::new(),
            }),
            freed: Notify::new(),
            registering: tokio::sync::Mutex::new(()),
        }
    }

    /// The current session's id, if one is registered.
    pub(crate) fn client_id(&self) -> Option<u64> {
        self.lock().client_id
    }

    /// Starts using the newly registered session `client_id`: its writes count from 1.
    pub(crate) fn install(&self, client_id: u64) {
        let mut state = self.lock();
        state.client_id = Some(client_id);
        state.next_seq = 1;
        state.in_progress.clear();
        drop(state);
        self.freed.notify_waiters();
    }

    /// The cluster no longer knows session `client_id`: the next write registers a new one
    /// (unless that already happened).
    pub(crate) fn forget(&self, client_id: u64) {
        let mut state = self.lock();
        if state.client_id == Some(client_id) {
            state.client_id = None;
            state.in_progress.clear();
        }
        drop(state);
        self.freed.notify_waiters();
    }

    /// Takes the next sequence number of the current session, waiting while it would leave
    /// the window. `None` if no session is registered.
    pub(crate) async fn begin(self: &Arc<Self>) -> Option<SessionGuard> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register for the wake-up before checking, so a release in between is not lost.
            freed.as_mut().enable();
            match self.try_begin() {
                Ok(session) => {
                    return Some(SessionGuard {
                        sessions: Arc::clone(self),
                        session,
                    })
                }
                Err(Unregistered) => return None,
                Err(WindowFull) => freed.await,
            }
        }
    }

    fn try_begin(&self) -> Result<Session, BeginError> {
        let mut state = self.lock();
        let Some(client_id) = state.client_id else {
            return Err(Unregistered);
        };
        let seq = state.next_seq;
        if let Some(&oldest) = state.in_progress.first() {
            if seq - oldest >= WRITE_WINDOW {
                return Err(WindowFull);
            }
        }
        state.next_seq += 1;
        state.in_progress.insert(seq);
        Ok(Session { client_id, seq })
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        // The state stays consistent even if a holder panicked: every change is one step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why no sequence number was handed out.
#[derive(Debug, PartialEq, Eq)]
enum BeginError {
    /// No session is registered.
    Unregistered,
    /// The window is full: wait for the oldest write in progress.
    WindowFull,
}
use BeginError::{Unregistered, WindowFull};

impl SessionGuard {
    pub(crate) fn session(&self) -> Session {
        self.session
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut state = self.sessions.lock();
        // A write of a session since forgotten holds no place in the current window.
        if state.client_id == Some(self.session.client_id) {
            let removed = state.in_progress.remove(&self.session.seq);
            debug_assert!(removed, "a session is released once");
        }
        drop(state);
        self.sessions.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seqs_increase_and_stay_within_the_window() {
        let sessions = Arc::new(Sessions::new());
        assert!(
            sessions.begin().await.is_none(),
            "no session registered yet"
        );
        sessions.install(7);
        let first = sessions.begin().await;
        assert_eq!(
            first.as_ref().map(SessionGuard::session),
            Some(Session {
                client_id: 7,
                seq: 1
            })
        );
        let mut held = Vec::new();
        for seq in 2..=WRITE_WINDOW {
            let guard = sessions.begin().await;
            assert_eq!(guard.as_ref().map(|g| g.session().seq), Some(seq));
            held.push(guard);
        }
        // seq 1025 would be 1024 above the oldest in progress (1): it must wait.
        assert_eq!(sessions.try_begin(), Err(WindowFull));
        let waiter = tokio::spawn({
            let sessions = Arc::clone(&sessions);
            async move { sessions.begin().await.map(|g| g.session().seq) }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.ok().flatten(), Some(WRITE_WINDOW + 1));
    }

    #[tokio::test]
    async fn a_forgotten_session_is_replaced_and_old_guards_do_not_touch_the_new_one() {
        let sessions = Arc::new(Sessions::new());
        sessions.install(7);
        let old = sessions.begin().await;
        sessions.forget(8); // not the current session: no effect
        assert_eq!(sessions.client_id(), Some(7));
        sessions.forget(7);
        assert!(sessions.begin().await.is_none());
        sessions.install(9);
        let new = sessions.begin().await;
        assert_eq!(
            new.as_ref().map(SessionGuard::session),
            Some(Session {
                client_id: 9,
                seq: 1
            })
        );
        drop(old);
        assert_eq!(sessions.lock().in_progress.len(), 1);
    }
}
