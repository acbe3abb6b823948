//! The injected acceptor failures of `--acceptor-fail-prob` as the event loop lives them:
//! when one is drawn, the replica drops what it holds in memory (and, in
//! [`FailMode::Crash`], the log records not yet durable), stays down for a while, then
//! rebuilds itself from its files. When failures come is [`crate::acceptor_failures`].

use std::time::{Duration, Instant};

use paxos_core::{RecoveredState, Replica};
use rand::Rng;

use super::Node;
use crate::acceptor_failures::{FailMode, FailureClock};
use crate::admin::events::{Kind, Level};
use crate::error::ServerError;
use crate::storage::StorageCmd;

/// How long a replica due to recover waits for a snapshot being written to reach the disk
/// before it tries again (it recovers from the files).
const RECOVERY_RETRY: Duration = Duration::from_millis(20);

/// The failure state of a replica.
pub(crate) struct Faults {
    /// Goes up with every failure: reports of the storage thread about the batches of an
    /// earlier incarnation are ignored.
    incarnation: u64,
    /// While down: when to recover.
    down_until: Option<Instant>,
    /// When the next failure comes.
    clock: FailureClock,
    /// Failures injected so far.
    failures: u64,
    /// Recoveries so far.
    recoveries: u64,
    /// Log batches the storage thread had dropped when the last failure hit.
    dropped_batches_at_failure: u64,
}

impl Faults {
    /// No failure yet; failures drawn at `prob_per_sec` from `now` on.
    pub(crate) fn new(prob_per_sec: f64, now: Instant) -> Faults {
        Faults {
            incarnation: 0,
            down_until: None,
            clock: FailureClock::new(prob_per_sec, now),
            failures: 0,
            recoveries: 0,
            dropped_batches_at_failure: 0,
        }
    }

    /// Whether the replica is down (failed, not yet recovered).
    pub(crate) fn is_down(&self) -> bool {
        self.down_until.is_some()
    }

    /// When the replica recovers, while it is down.
    pub(crate) fn down_until(&self) -> Option<Instant> {
        self.down_until
    }

    /// The current incarnation.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether failures are injected at all.
    pub(crate) fn enabled(&self) -> bool {
        self.clock.enabled()
    }

    /// `(failures, recoveries)` so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.failures, self.recoveries)
    }
}

impl Node {
    /// Draws whether the acceptor fails now (the chance covers the time since the last
    /// draw; a replica that is down does not draw).
    pub(super) fn draw_failure(&mut self) {
        if self.faults.is_down() {
            return;
        }
        if self.faults.clock.draw(Instant::now(), &mut self.rng) {
            self.fail_acceptor();
        }
    }

    /// The built-in fault mode: the acceptor loses everything it holds in memory (and, in
    /// [`FailMode::Crash`], every log record not yet reported durable) and stays down for
    /// a while. No reply that depended on a lost record was sent: the core releases
    /// Promise and Accepted only once their batch is reported durable, reports of a failed
    /// incarnation are ignored, and clients are answered only for chosen commands.
    pub(super) fn fail_acceptor(&mut self) {
        let (lo, hi) = self.cfg.acceptor_down_ms;
        let down_ms = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        let faults = &mut self.faults;
        faults.failures += 1;
        faults.incarnation += 1;
        faults.dropped_batches_at_failure = self.storage.dropped_batches();
        if self.cfg.acceptor_fail_mode == FailMode::Crash {
            self.storage.crash(faults.incarnation);
        }
        faults.down_until = Some(Instant::now() + Duration::from_millis(down_ms));
        self.snapshots.cancel_transfers();
        self.pending.fail_all();
        self.outbox.flush();
        tracing::warn!(
            id = self.cfg.id,
            down_ms,
            mode = %self.cfg.acceptor_fail_mode,
            failures = self.faults.failures,
            "injected acceptor failure: in-memory state dropped (in crash mode, log records \
             not yet durable too)"
        );
        self.monitor.forget();
        self.monitor.metrics.acceptor_failures.inc();
        self.monitor.events.count_acceptor_failure();
        self.monitor.events.keep(
            Level::Warn,
            Kind::Acceptor,
            format!(
                "injected acceptor failure ({} mode): down for {down_ms} ms",
                self.cfg.acceptor_fail_mode
            ),
        );
        self.publish_status();
    }

    /// A failed replica's time to recover has come: recover, or wait a little longer for
    /// a snapshot being written to reach the disk (the replica recovers from its files).
    pub(super) async fn on_recovery_due(&mut self) {
        if self.snapshots.is_writing() {
            self.faults.down_until = Some(Instant::now() + RECOVERY_RETRY);
            return;
        }
        if let Err(e) = self.recover_acceptor().await {
            self.fatal = Some(e);
        }
    }

    /// Rebuilds the replica from disk: the log, read back from its files, and the latest
    /// snapshot.
    async fn recover_acceptor(&mut self) -> Result<(), ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.storage.send(StorageCmd::DurableState { reply: tx })?;
        let mut state: RecoveredState = rx.await.map_err(|_| ServerError::RecoveryInterrupted)?;
        let sm = self
            .reload_snapshot()
            .map_err(ServerError::SnapshotReload)?;
        state.snapshot_slot = sm.applied();
        state.membership = sm.membership().cloned();
        self.replace_state_machine(sm);
        let seed = self.rng.random();
        let config = self.cfg.paxos_config();
        let now = self.now_ms();
        // A replica still under repair repairs again after an injected failure; one that
        // joined and has no snapshot yet joins again.
        self.replica = if crate::repair::is_marked(&self.cfg.data_dir) {
            Replica::recover_for_repair(config, seed, now, &state)
        } else if state.membership.is_none() {
            Replica::join(config, seed, now)
        } else {
            Replica::recover(config, seed, now, &state)
        }
        .map_err(ServerError::Rebuild)?;
        let faults = &mut self.faults;
        faults.down_until = None;
        faults.clock.resume(Instant::now());
        faults.recoveries += 1;
        // The durable state came after every append queued before the failure was handled.
        let lost_batches = self
            .storage
            .dropped_batches()
            .saturating_sub(faults.dropped_batches_at_failure);
        tracing::warn!(
            id = self.cfg.id,
            snapshot_slot = state.snapshot_slot,
            commit = state.commit,
            recoveries = faults.recoveries,
            lost_batches,
            "acceptor recovered from disk; catching up from peers"
        );
        self.monitor.metrics.acceptor_recoveries.inc();
        self.monitor.events.keep(
            Level::Info,
            Kind::Acceptor,
            format!(
                "acceptor recovered from disk (commit slot {}); catching up from peers",
                state.commit
            ),
        );
        Ok(())
    }
}
