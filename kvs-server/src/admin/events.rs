//! Notable events: elections, leader changes, links lost and restored, quorum lost,
//! acceptor failures, snapshots, membership changes. One hook ([`Notables::record`]) both
//! logs an event (at info or warn, with this replica's id) and keeps it in a bounded ring
//! buffer for the status page, so the log and the page tell the same story.
//!
//! Events are rare (a handful a minute at worst), so the ring is behind a plain mutex; no
//! hot path records one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::PerMinute;

/// Events the ring keeps; the oldest goes first.
pub const EVENTS_MAX: usize = 100;

/// How serious an event is: also its log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Expected in normal operation.
    Info,
    /// Something an operator may have to look at.
    Warn,
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Elections started, won, lost.
    Election,
    /// The leader this replica knows changed or was lost.
    Leader,
    /// A link to a peer was lost or restored.
    Link,
    /// A quorum of voters cannot be reached, or can again.
    Quorum,
    /// An injected acceptor failure or its recovery.
    Acceptor,
    /// A snapshot saved, sent or installed.
    Snapshot,
    /// A membership change.
    Membership,
}

/// One notable event.
#[derive(Clone, Debug, Serialize)]
pub struct Notable {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// How serious.
    pub level: Level,
    /// About what.
    pub kind: Kind,
    /// What happened, in words.
    pub text: String,
}

/// The notable events of one replica: the ring of the latest ones, and counts per minute
/// of leader changes and acceptor failures.
#[derive(Debug)]
pub struct Notables {
    id: u64,
    ring: Mutex<VecDeque<Notable>>,
    /// Leader changes, per minute.
    pub leader_changes: PerMinute,
    /// Injected acceptor failures, per minute.
    pub acceptor_failures: PerMinute,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Notables {
    /// No event yet, for replica `id`.
    pub fn new(id: u64) -> Notables {
        Notables {
            id,
            ring: Mutex::new(VecDeque::with_capacity(EVENTS_MAX)),
            leader_changes: PerMinute::default(),
            acceptor_failures: PerMinute::default(),
        }
    }

    /// Logs an event and keeps it.
    pub fn record(&self, level: Level, kind: Kind, text: String) {
        let id = self.id;
        match level {
            Level::Info => tracing::info!(id, event = ?kind, "{text}"),
            Level::Warn => tracing::warn!(id, event = ?kind, "{text}"),
        }
        self.keep(level, kind, text);
    }

    /// Keeps an event that its code path has logged already (with more fields).
    pub fn keep(&self, level: Level, kind: Kind, text: String) {
        let event = Notable {
            at_unix_ms: unix_ms(),
            level,
            kind,
            text,
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= EVENTS_MAX {
            ring.pop_front();
        }
        ring.push_back(event);
        debug_assert!(ring.len() <= EVENTS_MAX);
    }

    /// Counts a change of the leader this replica knows (for the per-minute bars).
    pub fn count_leader_change(&self) {
        self.leader_changes.add(unix_ms() / 60_000);
    }

    /// Counts an injected acceptor failure (for the per-minute bars).
    pub fn count_acceptor_failure(&self) {
        self.acceptor_failures.add(unix_ms() / 60_000);
    }

    /// Logs an informational event and keeps it.
    pub fn info(&self, kind: Kind, text: String) {
        self.record(Level::Info, kind, text);
    }

    /// Logs a warning event and keeps it.
    pub fn warn(&self, kind: Kind, text: String) {
        self.record(Level::Warn, kind, text);
    }

    /// The events kept, newest first.
    pub fn latest(&self) -> Vec<Notable> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_latest_events_newest_first() {
        let n = Notables::new(1);
        for i in 0..(EVENTS_MAX + 5) {
            n.info(Kind::Link, format!("event {i}"));
        }
        let latest = n.latest();
        assert_eq!(latest.len(), EVENTS_MAX);
        assert_eq!(latest[0].text, format!("event {}", EVENTS_MAX + 4));
        assert_eq!(latest[EVENTS_MAX - 1].text, "event 5");
    }

    #[test]
    fn leader_changes_and_failures_are_counted_per_minute() {
        let n = Notables::new(1);
        n.count_leader_change();
        n.count_leader_change();
        n.count_acceptor_failure();
        assert_eq!(n.leader_changes.total(), 2);
        assert_eq!(n.acceptor_failures.total(), 1);
        let minute = unix_ms() / 60_000;
        assert_eq!(n.leader_changes.last_minutes(minute).iter().sum::<u32>(), 2);
    }
}
