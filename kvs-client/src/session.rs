//! Write sessions: the `(client_id, seq)` that makes a retried write exactly-once.
//!
//! Nodes remember the reply to each of a client's recent writes by `seq`, keeping the
//! highest [`WRITE_WINDOW`] sequence numbers; a retried write with a remembered `seq` is
//! answered from memory instead of being applied again. So that the reply to a write still
//! being retried is never forgotten, a new `seq` is handed out only while it is less than
//! [`WRITE_WINDOW`] above the oldest write still in progress: at most [`WRITE_WINDOW`]
//! sequence numbers from the oldest in-progress write on can ever have been applied.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use wire::Session;

/// How far ahead of the oldest write in progress a new write's `seq` may be. Matches the
/// number of results a node keeps per session (`SESSION_RESULTS_MAX` in the server).
pub const WRITE_WINDOW: u64 = wire::SESSION_WINDOW;

/// Hands out sessions for one client id.
#[derive(Debug)]
pub(crate) struct Sessions {
    client_id: u64,
    state: Mutex<WindowState>,
    freed: Notify,
}

#[derive(Debug)]
struct WindowState {
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
    pub(crate) fn new(client_id: u64) -> Self {
        Sessions {
            client_id,
            state: Mutex::new(WindowState {
                next_seq: 1,
                in_progress: BTreeSet::new(),
            }),
            freed: Notify::new(),
        }
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Takes the next sequence number, waiting while it would leave the window.
    pub(crate) async fn begin(self: &Arc<Self>) -> SessionGuard {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register for the wake-up before checking, so a release in between is not lost.
            freed.as_mut().enable();
            if let Some(session) = self.try_begin() {
                return SessionGuard {
                    sessions: Arc::clone(self),
                    session,
                };
            }
            freed.await;
        }
    }

    fn try_begin(&self) -> Option<Session> {
        let mut state = self.lock();
        let seq = state.next_seq;
        if let Some(&oldest) = state.in_progress.first() {
            if seq - oldest >= WRITE_WINDOW {
                return None;
            }
        }
        state.next_seq += 1;
        state.in_progress.insert(seq);
        Some(Session {
            client_id: self.client_id,
            seq,
        })
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        // The state stays consistent even if a holder panicked: every change is one step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionGuard {
    pub(crate) fn session(&self) -> Session {
        self.session
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let removed = self.sessions.lock().in_progress.remove(&self.session.seq);
        debug_assert!(removed, "a session is released once");
        self.sessions.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seqs_increase_and_stay_within_the_window() {
        let sessions = Arc::new(Sessions::new(7));
        let first = sessions.begin().await;
        assert_eq!(
            first.session(),
            Session {
                client_id: 7,
                seq: 1
            }
        );
        let mut held = Vec::new();
        for seq in 2..=WRITE_WINDOW {
            let guard = sessions.begin().await;
            assert_eq!(guard.session().seq, seq);
            held.push(guard);
        }
        // seq 1025 would be 1024 above the oldest in progress (1): it must wait.
        assert!(sessions.try_begin().is_none());
        let waiter = tokio::spawn({
            let sessions = Arc::clone(&sessions);
            async move { sessions.begin().await.session().seq }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.ok(), Some(WRITE_WINDOW + 1));
    }
}
