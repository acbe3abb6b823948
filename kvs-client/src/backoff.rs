//! Exponential backoff with jitter between retries.

use std::time::Duration;

use rand::Rng;

/// The first delay.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(20);

/// The longest delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Delays that double from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`]; each delay is drawn
/// uniformly from the upper half of the current step, so that many clients retrying at once
/// spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            step: BACKOFF_FIRST,
        }
    }

    /// The next delay, in `[step / 2, step]`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_bounds() {
        let mut backoff = Backoff::new();
        let mut step = BACKOFF_FIRST;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff.step, BACKOFF_MAX);
    }
}
