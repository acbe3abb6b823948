//! Random acceptor failures (`--acceptor-fail-prob`, `--acceptor-fail-mode`): when they
//! happen and what they lose.
//!
//! A failure is drawn on a timer, independently of load: `--acceptor-fail-prob P` is the
//! chance that a replica fails within each second it is up, whether it leads, follows or
//! idles. Each draw covers the time since the previous one, so a late timer tick does not
//! change the rate. What a failure loses depends on the [`FailMode`]; in both modes the
//! replica then stays down for a while and rebuilds itself from what is on disk (its log,
//! read back from the files, and its snapshot), then catches up from its peers.

use std::time::{Duration, Instant};

use rand::Rng;

/// How often the event loop draws whether its acceptor fails.
pub const DRAW_INTERVAL: Duration = Duration::from_millis(100);

/// What an injected acceptor failure loses (`--acceptor-fail-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// A crash: the replica loses its memory, and every log record handed to the log writer
    /// but not yet reported durable is dropped, never written (a batch the writer is
    /// writing at that instant completes: the crash came just after it). No reply that
    /// depended on a dropped record was sent, since replies wait for the disk.
    #[default]
    Crash,
    /// Amnesia: the replica loses its memory only; the log writer still writes every
    /// record handed to it before the failure.
    Amnesia,
}

impl std::fmt::Display for FailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailMode::Crash => "crash",
            FailMode::Amnesia => "amnesia",
        })
    }
}

/// The chance of at least one failure within `elapsed`, when the chance of failing within
/// one second is `prob_per_sec` (failures independent from one instant to the next):
/// `1 - (1 - P)^seconds`. Out-of-range or NaN probabilities count as 0.
pub fn chance_within(prob_per_sec: f64, elapsed: Duration) -> f64 {
    if prob_per_sec.is_nan() || prob_per_sec <= 0.0 {
        return 0.0;
    }
    if prob_per_sec >= 1.0 {
        return if elapsed.is_zero() { 0.0 } else { 1.0 };
    }
    let chance = 1.0 - (1.0 - prob_per_sec).powf(elapsed.as_secs_f64());
    chance.clamp(0.0, 1.0)
}

/// Draws failures at a rate per second of uptime.
#[derive(Debug)]
pub struct FailureClock {
    prob_per_sec: f64,
    /// The end of the time already drawn for; `None` while the replica is down.
    drawn_until: Option<Instant>,
}

impl FailureClock {
    /// A clock failing with probability `prob_per_sec` within each second of uptime,
    /// starting now.
    pub fn new(prob_per_sec: f64, now: Instant) -> FailureClock {
        FailureClock {
            prob_per_sec,
            drawn_until: Some(now),
        }
    }

    /// Whether failures are injected at all.
    pub fn enabled(&self) -> bool {
        self.prob_per_sec > 0.0
    }

    /// Draws whether the replica fails in the time since the last draw. After a failure
    /// it draws nothing until [`FailureClock::resume`]: a replica that is down cannot fail.
    pub fn draw(&mut self, now: Instant, rng: &mut impl Rng) -> bool {
        let Some(since) = self.drawn_until else {
            return false;
        };
        let chance = chance_within(self.prob_per_sec, now.saturating_duration_since(since));
        self.drawn_until = Some(now.max(since));
        if rng.random_bool(chance) {
            self.drawn_until = None;
            return true;
        }
        false
    }

    /// The replica is up again (recovered at `now`): draws resume from there.
    pub fn resume(&mut self, now: Instant) {
        self.drawn_until = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_probability_is_per_second_however_the_time_is_sliced() {
        let p = 0.05;
        assert!(close(chance_within(p, Duration::from_secs(1)), p));
        // Ten draws of 100 ms each add up to the chance of one second.
        let survive_tick = 1.0 - chance_within(p, DRAW_INTERVAL);
        assert!(close(1.0 - survive_tick.powi(10), p));
        assert!(chance_within(p, DRAW_INTERVAL) < p / 9.0);
        assert!(close(chance_within(p, Duration::ZERO), 0.0));
        assert!(close(chance_within(0.0, Duration::from_secs(9)), 0.0));
        assert!(close(chance_within(f64::NAN, Duration::from_secs(9)), 0.0));
        assert!(close(chance_within(1.0, DRAW_INTERVAL), 1.0));
    }

    #[test]
    fn failures_come_at_the_rate_per_second_of_uptime() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut clock = FailureClock::new(0.05, start);
        // 20,000 simulated seconds of uptime in 100 ms ticks: about 1,000 failures.
        let mut failures = 0u32;
        for tick in 1..=200_000u32 {
            let now = start + DRAW_INTERVAL * tick;
            if clock.draw(now, &mut rng) {
                failures += 1;
                clock.resume(now);
            }
        }
        assert!((850..1150).contains(&failures), "{failures} failures");
    }

    #[test]
    fn a_failed_replica_draws_nothing_until_it_resumes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let start = Instant::now();
        let mut clock = FailureClock::new(1.0, start);
        assert!(clock.enabled());
        assert!(clock.draw(start + DRAW_INTERVAL, &mut rng));
        // Down: a long time passes without failures, and it does not count afterwards.
        assert!(!clock.draw(start + Duration::from_secs(60), &mut rng));
        clock.resume(start + Duration::from_secs(60));
        assert!(!clock.draw(start + Duration::from_secs(60), &mut rng));
        assert!(clock.draw(start + Duration::from_secs(61), &mut rng));
        assert!(!FailureClock::new(0.0, start).enabled());
    }
}
