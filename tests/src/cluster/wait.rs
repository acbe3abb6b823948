//! Bounded waiting for a condition, used instead of fixed sleeps.
//!
//! Every wait has a deadline, and the error names what was awaited, so a hung cluster test
//! fails with "timed out after 10s waiting for a leader" rather than hanging or failing later
//! with a confusing assertion.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;

/// Shortest pause between two checks, so a zero poll interval cannot spin.
const POLL_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// Checks `condition` every `poll_interval` until it holds, for at most `timeout`.
///
/// The condition is also checked once at the deadline, and each check is itself bounded by
/// the time left, so a condition that never completes (a request to a paused server) still
/// ends the wait on time. The error names `what`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, poll_interval, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Like [`wait_until`], but the probe returns `Some(value)` when the wait is over, and that
/// value is returned (for example the id of the node that became leader).
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll_interval = poll_interval.max(POLL_INTERVAL_MIN);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // `timeout` polls the probe before looking at the clock, so a probe that is ready
        // immediately succeeds even when no time is left.
        match tokio::time::timeout(left, probe()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => break, // The probe itself ran past the deadline.
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(poll_interval.min(deadline - now)).await;
    }
    Err(timed_out(what, timeout, attempts))
}

/// Blocking variant of [`wait_until`] for sync code: sleeps the calling thread between checks.
///
/// A check that blocks forever cannot be interrupted, so keep checks short and bounded. Do not
/// call it on an async runtime thread that other tasks of the test depend on.
pub fn wait_until_blocking<F>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> bool,
{
    let poll_interval = poll_interval.max(POLL_INTERVAL_MIN);
    let deadline = Instant::now() + timeout;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        if condition() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(what, timeout, attempts));
        }
        std::thread::sleep(poll_interval.min(deadline - now));
    }
}

fn timed_out(what: &str, timeout: Duration, attempts: u64) -> anyhow::Error {
    anyhow!("timed out after {timeout:?} waiting for {what} ({attempts} checks)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let checks = Cell::new(0);
        wait_until(
            "third check",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                checks.set(checks.get() + 1);
                let done = checks.get() >= 3;
                async move { done }
            },
        )
        .await
        .unwrap();
        assert_eq!(checks.get(), 3);
    }

    #[tokio::test]
    async fn wait_for_returns_the_probed_value() {
        let value = wait_for(
            "a value",
            Duration::from_secs(1),
            Duration::ZERO,
            || async { Some(42) },
        )
        .await
        .unwrap();
        assert_eq!(value, 42);
    }

    #[tokio::test]
    async fn timeout_error_names_what_was_awaited() {
        let started = Instant::now();
        let err = wait_until(
            "the impossible",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || async { false },
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let msg = err.to_string();
        assert!(msg.contains("waiting for the impossible"), "{msg}");
        assert!(msg.contains("50ms"), "{msg}");
    }

    #[tokio::test]
    async fn a_check_that_never_completes_is_bounded() {
        let err = wait_until(
            "a hung check",
            Duration::from_millis(50),
            Duration::from_millis(10),
            futures::future::pending::<bool>,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("a hung check"));
    }

    #[tokio::test]
    async fn zero_timeout_still_checks_once() {
        wait_until("ready", Duration::ZERO, Duration::ZERO, || async { true })
            .await
            .unwrap();
    }

    #[test]
    fn blocking_variant_succeeds_and_times_out() {
        let mut n = 0;
        wait_until_blocking(
            "n reaches 2",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                n >= 2
            },
        )
        .unwrap();
        let err = wait_until_blocking(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("waiting for never"));
    }
}
