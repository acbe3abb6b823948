//! Configuration of a replica: who the members are, timing, and the limits on batching.

use crate::ballot::NodeId;

/// The largest cluster the core supports. Majority quorums of up to seven members.
pub const MEMBERS_MAX: usize = 7;

/// The default of [`Config::held_replies_max`].
pub const HELD_REPLIES_MAX_DEFAULT: usize = 65_536;

/// How a [`Replica`](crate::Replica) behaves. All durations are in the host's time unit,
/// milliseconds by convention (`now_ms` in every call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This replica's id; must be one of `members`.
    pub id: NodeId,
    /// The voters a new cluster starts with, this one included (quorums are majorities of
    /// the voters). Used only when the replica has no membership of its own yet: once a
    /// cluster exists, its membership is replicated state (see
    /// [`membership`](crate::membership)) recovered from the host's snapshot and log.
    pub members: Vec<NodeId>,
    /// How often a leader sends heartbeats (which also carry the commit index and read-index
    /// rounds) and retransmits unacknowledged Accepts.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears nothing from a leader for a random time in
    /// `election_timeout_min_ms..=election_timeout_max_ms` starts an election.
    pub election_timeout_min_ms: u64,
    /// Upper end of the election timeout range (before backoff).
    pub election_timeout_max_ms: u64,
    /// A batch (the value of one slot) closes when its commands reach this many bytes.
    pub batch_bytes_max: usize,
    /// A batch closes when it holds this many commands.
    pub batch_commands_max: usize,
    /// How many slots a leader may have proposed but not yet chosen at once (pipelining).
    pub inflight_slots_max: usize,
    /// How many payload bytes those in-flight slots may hold together (at least one slot is
    /// always allowed). Since acceptors mostly hold uncommitted values from a leader's
    /// in-flight window, this also keeps a typical Promise small; it is not a hard bound.
    pub inflight_bytes_max: usize,
    /// How many proposals may wait for a slot before `propose` refuses more.
    pub queued_commands_max: usize,
    /// How many chosen entries one catch-up reply carries at most; a reply also stops once
    /// it holds `batch_bytes_max` payload bytes (it always carries at least one entry).
    pub catchup_entries_max: usize,
    /// A leader asks its host to ship a snapshot to the same peer at most this often.
    pub snapshot_resend_interval_ms: u64,
    /// How many replies (Promise, Accepted, and a candidate's own Prepares) may wait inside
    /// the replica for the persist batch they depend on to become durable. Once this many
    /// wait, the replica takes no work that would hold more: it ignores incoming Prepare and
    /// Accept messages (their senders retry; Paxos tolerates the loss), assigns no new slots
    /// as leader (proposals stay queued) and starts or repeats no election, until
    /// [`Replica::handle_durable`](crate::Replica::handle_durable) releases some. A reply
    /// already held is never dropped, so the count stays within this bound plus what the
    /// single input that reached it added. Default [`HELD_REPLIES_MAX_DEFAULT`].
    pub held_replies_max: usize,
    /// The reconfiguration delay α a new cluster starts with (see
    /// [`MembershipLog`](crate::MembershipLog)); later it comes from the membership log.
    pub reconfig_delay_slots: u64,
    /// A learner may be promoted to voter only while its commit index is at most this many
    /// slots behind the leader's (and it answered the leader recently).
    pub promote_lag_max: u64,
}

impl Config {
    /// A configuration with defaults suited to a LAN or loopback cluster, times in milliseconds.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            id,
            members,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            batch_bytes_max: 256 * 1024,
            batch_commands_max: 4096,
            inflight_slots_max: 64,
            inflight_bytes_max: 4 * 1024 * 1024,
            queued_commands_max: 100_000,
            catchup_entries_max: 256,
            snapshot_resend_interval_ms: 2_000,
            held_replies_max: HELD_REPLIES_MAX_DEFAULT,
            reconfig_delay_slots: crate::membership::RECONFIG_DELAY_DEFAULT,
            promote_lag_max: 128,
        }
    }

    /// Checks that the configuration is usable to start a new cluster's member (the
    /// member list included), naming the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(ConfigError::MemberCount(self.members.len()));
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateMember(w[0]));
        }
        if !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        self.validate_limits()
    }

    /// Checks the timing and limits only (a replica whose membership comes from its
    /// durable state or from the cluster it joins does not use `members`).
    pub fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::Timing("heartbeat_interval_ms must be above 0"));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::Timing(
                "election_timeout_min_ms must be above heartbeat_interval_ms",
            ));
        }
        if self.election_timeout_max_ms < self.election_timeout_min_ms {
            return Err(ConfigError::Timing(
                "election_timeout_max_ms must be at least election_timeout_min_ms",
            ));
        }
        if self.batch_bytes_max == 0
            || self.batch_commands_max == 0
            || self.inflight_slots_max == 0
            || self.inflight_bytes_max == 0
            || self.catchup_entries_max == 0
            || self.held_replies_max == 0
            || self.reconfig_delay_slots == 0
        {
            return Err(ConfigError::Limit(
                "batch, in-flight, catch-up and held-reply limits must be above 0",
            ));
        }
        Ok(())
    }

    /// How many members make a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The member list is empty or longer than [`MEMBERS_MAX`].
    MemberCount(usize),
    /// A node id appears twice in the member list.
    DuplicateMember(NodeId),
    /// `id` is not in `members`.
    NotAMember(NodeId),
    /// Timeouts that cannot work together.
    Timing(&'static str),
    /// A zero limit.
    Limit(&'static str),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::MemberCount(n) => {
                write!(f, "a cluster needs 1 to {MEMBERS_MAX} members, got {n}")
            }
            ConfigError::DuplicateMember(id) => write!(f, "node id {id} is listed twice"),
            ConfigError::NotAMember(id) => write!(f, "node id {id} is not in the member list"),
            ConfigError::Timing(why) | ConfigError::Limit(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert!(Config::new(1, vec![1, 2, 3]).validate().is_ok());
        assert_eq!(
            Config::new(1, vec![]).validate(),
            Err(ConfigError::MemberCount(0))
        );
        assert_eq!(
            Config::new(1, (1..=8).collect()).validate(),
            Err(ConfigError::MemberCount(8))
        );
        assert_eq!(
            Config::new(1, vec![1, 2, 2]).validate(),
            Err(ConfigError::DuplicateMember(2))
        );
        assert_eq!(
            Config::new(4, vec![1, 2, 3]).validate(),
            Err(ConfigError::NotAMember(4))
        );
        let mut c = Config::new(1, vec![1]);
        c.election_timeout_min_ms = c.heartbeat_interval_ms;
        assert!(matches!(c.validate(), Err(ConfigError::Timing(_))));
    }

    #[test]
    fn quorum_is_a_majority() {
        let q = |n: u64| Config::new(1, (1..=n).collect()).quorum();
        assert_eq!((q(1), q(2), q(3), q(4), q(5), q(7)), (1, 2, 2, 3, 3, 4));
    }
}
