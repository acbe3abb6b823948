//! The event loop: wait for the next network event, report, timer or link event; handle it;
//! carry out the core's outputs; repeat. And the way out: graceful shutdown.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use wire::ErrorReply;

use super::start::Started;
use crate::acceptor_failures;
use crate::admin::PUBLISH_INTERVAL;
use crate::error::ServerError;
use crate::event::Event;
use crate::identity::LinkEvent;

/// How long a replica that is shutting down lets the requests in flight finish before it
/// answers the rest (writes `Timeout`, reads `Unavailable`).
pub(crate) const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(3);

/// How long a stopped replica waits for its client connections to deliver their last
/// answers and for its peer links to end.
const TASKS_FINISH_MAX: Duration = Duration::from_secs(3);

/// How often requests waiting for consensus are checked for expiry.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Events taken from the inbox in one turn at most, so that proposals share slots and
/// records share one fsync while the loop still gets to its timers.
const EVENTS_PER_TURN_MAX: usize = 1024;

impl Started {
    /// Runs the event loop until shutdown (then `Ok`) or a fatal error, then stops the
    /// replica gracefully either way.
    pub(super) async fn run(mut self, shutdown: &CancellationToken) -> Result<(), ServerError> {
        let result = self.turns(shutdown).await;
        self.stop().await;
        result
    }

    /// The loop. Returns once shutdown has been asked for and no request is waiting any
    /// more (or [`SHUTDOWN_DRAIN_MAX`] has passed), or with the first fatal error.
    async fn turns(&mut self, shutdown: &CancellationToken) -> Result<(), ServerError> {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Injected failures are drawn on a timer of their own, whatever the load.
        let mut failure_draws = tokio::time::interval(acceptor_failures::DRAW_INTERVAL);
        failure_draws.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The status for the admin listener is published on a timer too, so that it stays
        // fresh (and a lost quorum is noticed) while nothing else happens.
        let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
        publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopping: Option<Instant> = None;
        self.node.drain();
        loop {
            if let Some(e) = self.node.fatal.take() {
                return Err(e);
            }
            if self.node.removed && stopping.is_none() {
                // Removed from the cluster: stop as on a shutdown, and exit with success.
                stopping = Some(Instant::now());
            }
            if let Some(since) = stopping {
                if self.node.pending.is_empty() || since.elapsed() > SHUTDOWN_DRAIN_MAX {
                    return Ok(());
                }
            }
            let deadline = self.node.deadline();
            // Backpressure: while the log is behind, no new work is taken (network tasks
            // wait, then TCP pushes back), so a stalled disk cannot queue records without
            // bound. The storage report that ends the backlog wakes the loop.
            let backlogged = self.node.storage_backlogged();
            tokio::select! {
                ev = self.inbox.recv(), if !backlogged => {
                    let Some(ev) = ev else { return Ok(()) };
                    self.node.handle(ev);
                    self.take_queued();
                }
                report = self.reports.recv() => {
                    let Some(report) = report else { return Ok(()) };
                    self.node.on_report(report);
                }
                _ = tokio::time::sleep_until(deadline.into()) => self.node.on_timer().await,
                _ = failure_draws.tick(), if self.node.faults.enabled() => self.node.draw_failure(),
                _ = publish.tick() => {}
                _ = sweep.tick() => {
                    let limit = self.node.cfg.request_timeout;
                    self.node.pending.expire(Instant::now(), limit);
                }
                Some(event) = self.links.recv() => match event {
                    LinkEvent::Fatal(e) => self.node.fatal = Some(ServerError::Identity(e)),
                    LinkEvent::NotAMember(peer) => self.node.refused_as_non_member(peer),
                    LinkEvent::Removed { peer, configuration } => {
                        self.node.refused_as_removed(peer, configuration);
                    }
                    LinkEvent::Admitted(_) => {}
                },
                _ = shutdown.cancelled(), if stopping.is_none() => {
                    let (writes, reads) = self.node.pending.len();
                    tracing::info!(id = self.node.cfg.id, writes, reads, "shutting down: finishing in-flight requests");
                    stopping = Some(Instant::now());
                    self.node.monitor.set_stopping();
                    self.node.publish_status();
                }
            }
            self.node.drain();
            self.node.publish_if_due();
        }
    }

    /// Takes whatever else is already queued before draining, so that proposals share
    /// slots and persist records share one fsync.
    fn take_queued(&mut self) {
        for _ in 0..EVENTS_PER_TURN_MAX {
            if self.node.storage.is_backlogged() {
                break;
            }
            match self.inbox.try_recv() {
                Ok(ev) => self.node.handle(ev),
                Err(_) => break,
            }
        }
    }

    /// Stops the replica: answers every request still waiting or queued, writes out the
    /// log, ends the peer links, and waits (bounded) for the client connections to deliver
    /// their last answers.
    async fn stop(self) {
        let Started {
            mut node,
            mut inbox,
            links_stop,
            tasks,
            clients_stop,
            ..
        } = self;
        node.pending.fail_all();
        // Requests read but not handled: no new work is taken any more.
        inbox.close();
        while let Ok(ev) = inbox.try_recv() {
            if let Event::Client { responder, .. } = ev {
                responder.respond(Err(ErrorReply::Unavailable {
                    reason: "the replica is shutting down".into(),
                }));
            }
        }
        node.outbox.flush();
        let id = node.cfg.id;
        node.storage.close();
        links_stop.cancel();
        // After a fatal error nobody asked the clients to stop: the listener would keep
        // accepting connections it can no longer serve.
        clients_stop.cancel();
        tasks.close();
        if tokio::time::timeout(TASKS_FINISH_MAX, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                id,
                tasks = tasks.len(),
                "stopping with connections still open after {} ms",
                TASKS_FINISH_MAX.as_millis()
            );
        }
        tracing::info!(id, "stopped");
    }
}
