//! The invariants that tie a replica's roles together, asserted (in debug builds) after
//! every drain of outputs. Each role asserts its own where it changes its state: the
//! acceptor never records above its promise, the learner's commit index never decreases,
//! the durability gate holds replies only on known batches, a leader's bookkeeping adds
//! up.
//!
//! A planted bug (in this crate's tests) breaks some of them on purpose, for the simulator
//! and the model checker to catch from the outside; the checks here then stand aside.

use super::timer::Timer;
use super::Replica;
use crate::proposer::Role;

impl Replica {
    /// Checks every cross-role invariant. Cheap: nothing here walks the log.
    pub(super) fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let commit = self.learner.commit();
        self.durability.debug_check(commit);
        self.proposer.debug_check();
        self.check_delivery();
        self.check_timers();
        if !self.bug_planted() {
            self.check_ballots();
        }
    }

    /// Delivery: the host holds (in its snapshot or from `Committed` outputs) every slot
    /// below `delivered`, which never passes the commit index; the log still holds every
    /// slot from `delivered` on (compaction stops at what was delivered), so the next
    /// chosen slot to deliver has its value and delivery cannot stall.
    fn check_delivery(&self) {
        let (delivered, commit) = (self.learner.delivered(), self.learner.commit());
        debug_assert!(
            delivered <= commit,
            "delivered {delivered} past commit {commit}"
        );
        debug_assert!(
            self.acceptor.log_start() <= delivered,
            "log compacted to {} past delivered {delivered}",
            self.acceptor.log_start()
        );
        debug_assert!(
            delivered == commit || self.acceptor.get(delivered).is_some(),
            "chosen slot {delivered} has no value to deliver"
        );
    }

    /// Timers follow the role: a follower waits for its election timeout; a candidate for
    /// its election timeout and its Prepare resend; a leader for its heartbeat only.
    fn check_timers(&self) {
        let role = self.proposer.role();
        let armed = |t: Timer| self.timers.get(t).is_some();
        let (election, heartbeat, prepare_resend) = match role {
            // A repairing replica campaigns for nothing.
            Role::Follower => (self.repair.is_none(), false, false),
            Role::Candidate => (true, false, true),
            Role::Leader => (false, true, false),
        };
        debug_assert!(
            armed(Timer::Election) == election
                && armed(Timer::Heartbeat) == heartbeat
                && armed(Timer::PrepareResend) == prepare_resend,
            "timers {:?} armed for a {role}",
            self.timers
        );
    }

    /// Ballots: the durable promise never exceeds the acceptor's promise; a candidate or
    /// leader campaigns or leads under exactly the acceptor's promise (any higher promise
    /// makes it step down first); and a leader's ballot is its durable promise (its own
    /// Prepares, hence every promise it counted, waited for that promise to reach disk),
    /// which is what keeps a ballot from being used twice across a crash.
    fn check_ballots(&self) {
        let promised = self.acceptor.promised();
        let durable = self.durability.promised_durable();
        debug_assert!(
            durable <= promised,
            "durable promise {durable} above the promise {promised}"
        );
        let Some(mine) = self.proposer.ballot() else {
            return;
        };
        debug_assert!(
            mine == promised,
            "a {} under {mine} while promising {promised}",
            self.proposer.role()
        );
        debug_assert!(
            !self.proposer.is_leader() || mine == durable,
            "leading under {mine} with durable promise {durable}"
        );
    }
}
