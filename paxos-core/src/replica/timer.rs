//! The replica's timers: one deadline per kind of timer, so that
//! [`Replica::poll_timeout`](crate::Replica::poll_timeout) is the earliest armed deadline
//! and [`Replica::handle_timeout`](crate::Replica::handle_timeout) is one loop over the
//! expired ones (the shape of quinn-proto's `TimerTable`).
//!
//! Which timers are armed follows the proposer's role: a follower waits only for its
//! election timeout; a candidate for its election timeout and its Prepare resend; a leader
//! only for its heartbeat. An outstanding catch-up request arms [`Timer::CatchUp`] in any
//! role.

/// A kind of timer a replica arms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    /// An outstanding catch-up request is given up, so another may be sent.
    CatchUp,
    /// A follower or candidate that heard from no leader starts an election.
    Election,
    /// A leader checks that a majority still answers, sends heartbeats (which carry the
    /// commit index and the read round) and retransmits unacknowledged Accepts.
    Heartbeat,
    /// A candidate resends its Prepare to the acceptors that have not answered.
    PrepareResend,
    /// A repairing replica asks its peers again, and for the chosen values it lacks.
    Repair,
}

impl Timer {
    /// How many kinds of timer there are.
    const COUNT: usize = 5;

    /// Every timer, in the order an expired one is handled.
    pub(crate) const ALL: [Timer; Timer::COUNT] = [
        Timer::CatchUp,
        Timer::Election,
        Timer::Heartbeat,
        Timer::PrepareResend,
        Timer::Repair,
    ];

    /// The timer's place in a [`TimerTable`].
    fn index(self) -> usize {
        match self {
            Timer::CatchUp => 0,
            Timer::Election => 1,
            Timer::Heartbeat => 2,
            Timer::PrepareResend => 3,
            Timer::Repair => 4,
        }
    }
}

/// The deadline of every timer, in the host's milliseconds; `None` when it is stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TimerTable {
    /// Indexed by [`Timer::index`].
    deadlines_ms: [Option<u64>; Timer::COUNT],
}

impl TimerTable {
    /// Arms `timer` to expire at `deadline_ms` (replacing any earlier deadline).
    pub(crate) fn set(&mut self, timer: Timer, deadline_ms: u64) {
        self.deadlines_ms[timer.index()] = Some(deadline_ms);
    }

    /// Stops `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines_ms[timer.index()] = None;
    }

    /// When `timer` expires, if it is armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<u64> {
        self.deadlines_ms[timer.index()]
    }

    /// Whether `timer` is armed and its deadline has come at `now_ms`.
    pub(crate) fn is_expired(&self, timer: Timer, now_ms: u64) -> bool {
        self.get(timer).is_some_and(|deadline| deadline <= now_ms)
    }

    /// Whether `timer` is armed and its deadline is still ahead at `now_ms`.
    pub(crate) fn is_pending(&self, timer: Timer, now_ms: u64) -> bool {
        self.get(timer).is_some_and(|deadline| now_ms < deadline)
    }

    /// The earliest deadline of any armed timer.
    pub(crate) fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines_ms.iter().flatten().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_armed_one() {
        let mut t = TimerTable::default();
        assert_eq!(t.next_deadline_ms(), None);
        t.set(Timer::Election, 300);
        t.set(Timer::PrepareResend, 50);
        assert_eq!(t.next_deadline_ms(), Some(50));
        t.stop(Timer::PrepareResend);
        assert_eq!(t.next_deadline_ms(), Some(300));
        assert!(!t.is_expired(Timer::Election, 299));
        assert!(t.is_pending(Timer::Election, 299));
        assert!(t.is_expired(Timer::Election, 300));
        assert!(!t.is_pending(Timer::Election, 300));
        assert!(
            !t.is_expired(Timer::Heartbeat, u64::MAX),
            "a stopped timer never expires"
        );
    }

    #[test]
    fn every_timer_has_its_own_slot() {
        let mut t = TimerTable::default();
        for (i, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(timer.index(), i);
            t.set(timer, i as u64 + 10);
        }
        for (i, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(t.get(timer), Some(i as u64 + 10));
        }
    }
}
