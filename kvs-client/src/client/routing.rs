//! Where a request goes: the leader hint, the next endpoint, and the nodes stale reads
//! avoid for a while.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use tokio::time::Instant;

use super::send::Route;
use super::{lock, Client};

/// How long, in attempt timeouts, stale reads avoid a node that left an attempt unanswered
/// (unless every node is avoided); the first stale read after that tries it again.
const SUSPICION_IN_ATTEMPT_TIMEOUTS: u32 = 5;

/// Where leader-only requests go first.
#[derive(Debug, Default)]
pub(super) struct LeaderHint {
    /// The endpoint that last served a leader-only request, or that a node named as leader;
    /// `None` once it failed (refused the connection, broke it, did not answer in time).
    pub(super) leader: Option<String>,
    /// Where a search without a leader starts, in the endpoint list: moved past an endpoint
    /// that failed there, so that a node that stopped answering is not the first one every
    /// request waits for.
    pub(super) start: usize,
}

impl Client {
    /// Where a request's first attempt goes: for the leader, the leader hint, else where a
    /// search without one starts; for a stale read, the next endpoint in turn that stale
    /// reads do not avoid (the next one in turn if they avoid them all).
    pub(super) fn first_target(&self, route: Route) -> String {
        let endpoints = &self.inner.endpoints;
        match route {
            Route::Leader => {
                let hint = self.leader_hint();
                hint.leader
                    .clone()
                    .unwrap_or_else(|| endpoints[hint.start % endpoints.len()].clone())
            }
            Route::AnyReplica => {
                let next = self.inner.next_replica.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let suspects = lock(&self.inner.suspects);
                let trusted = |endpoint: &&String| {
                    suspects
                        .get(endpoint.as_str())
                        .is_none_or(|until| *until <= now)
                };
                (0..endpoints.len())
                    .map(|i| &endpoints[(next + i) % endpoints.len()])
                    .find(trusted)
                    .unwrap_or(&endpoints[next % endpoints.len()])
                    .clone()
            }
        }
    }

    /// `endpoint` left an attempt unanswered: it is no longer the leader hint, a search
    /// without one no longer starts there, and stale reads avoid it for a while.
    pub(super) fn went_silent(&self, endpoint: &str) {
        self.forget_leader(endpoint);
        let options = &self.inner.options;
        let now = Instant::now();
        let avoid_for = options
            .attempt_timeout
            .saturating_mul(SUSPICION_IN_ATTEMPT_TIMEOUTS);
        let Some(until) = now.checked_add(avoid_for) else {
            return;
        };
        let mut suspects = lock(&self.inner.suspects);
        suspects.retain(|_, until| *until > now);
        suspects.insert(endpoint.to_owned(), until);
    }

    /// `endpoint` answered: stale reads no longer avoid it.
    pub(super) fn answered(&self, endpoint: &str) {
        let mut suspects = lock(&self.inner.suspects);
        if !suspects.is_empty() {
            suspects.remove(endpoint);
        }
    }

    /// The endpoint after `current` in the list (the first if `current` is not in it).
    pub(super) fn next_endpoint(&self, current: &str) -> String {
        let endpoints = &self.inner.endpoints;
        let next = endpoints
            .iter()
            .position(|e| e == current)
            .map_or(0, |i| (i + 1) % endpoints.len());
        endpoints[next].clone()
    }

    /// `endpoint` failed a request: it is no longer the leader hint, and a search without
    /// one no longer starts there.
    pub(super) fn forget_leader(&self, endpoint: &str) {
        let endpoints = &self.inner.endpoints;
        let mut hint = self.leader_hint();
        if hint.leader.as_deref() == Some(endpoint) {
            hint.leader = None;
        }
        if endpoints.get(hint.start).is_some_and(|e| e == endpoint) {
            hint.start = (hint.start + 1) % endpoints.len();
        }
    }

    /// The leader hint, locked.
    pub(super) fn leader_hint(&self) -> MutexGuard<'_, LeaderHint> {
        lock(&self.inner.leader)
    }
}
