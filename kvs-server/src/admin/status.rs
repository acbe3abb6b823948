//! The status the event loop publishes for the admin listener ([`Status`], through a
//! `tokio::sync::watch`), and the health and readiness decisions made from it. The
//! decisions are pure functions of a status and the current time, so they are tested
//! without a cluster.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where a replica is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Starting up: recovering from disk, or waiting to be admitted by the members.
    Starting,
    /// Joining a running cluster: no membership yet (it comes with a snapshot).
    Joining,
    /// Relearning a damaged log from its peers; it votes for nothing meanwhile.
    Repairing,
    /// The acceptor is down (an injected failure) and recovers later.
    AcceptorDown,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
}

/// A replica's role as the status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleView {
    /// It leads.
    Leader,
    /// It follows.
    Follower,
    /// It stands for election.
    Candidate,
    /// It takes no part (starting, or its acceptor is down).
    Down,
}

impl std::fmt::Display for RoleView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoleView::Leader => "leader",
            RoleView::Follower => "follower",
            RoleView::Candidate => "candidate",
            RoleView::Down => "down",
        })
    }
}

/// A member of the cluster as this replica sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberView {
    /// Its id.
    pub id: u64,
    /// A voter (or a learner).
    pub voter: bool,
    /// This replica.
    pub this: bool,
    /// Its peer address, if known.
    pub addr: Option<String>,
    /// Whether the link to it is connected (`None` for this replica).
    pub link_up: Option<bool>,
    /// When a message from it last arrived (`None`: never; for this replica, always now).
    pub last_heard: Option<Instant>,
    /// The latest heartbeat round trip to it, ms (leader only).
    pub rtt_ms: Option<f64>,
    /// Its commit index as the leader last heard it (leader only).
    pub commit: Option<u64>,
}

/// What the event loop publishes about the replica.
#[derive(Clone, Debug)]
pub struct Status {
    /// This replica's id.
    pub id: u64,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its role.
    pub role: RoleView,
    /// Its ballot: (round, node).
    pub ballot: (u64, u64),
    /// The leader it knows.
    pub leader: Option<u64>,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// The first slot of the log it keeps (older ones are in the snapshot).
    pub log_start: u64,
    /// The configuration id of its membership.
    pub configuration: Option<u64>,
    /// Every member (this replica included), in id order.
    pub members: Vec<MemberView>,
    /// Votes needed for a quorum.
    pub quorum: usize,
    /// The longest election timeout: how long a leader may go unheard.
    pub election_timeout: Duration,
    /// Keys in the store.
    pub keys: u64,
    /// Writes and reads waiting for consensus.
    pub pending: (usize, usize),
    /// When it started.
    pub started: Instant,
    /// When this status was published.
    pub published: Instant,
}

impl Status {
    /// The status of replica `id` before its event loop runs.
    pub fn starting(id: u64, now: Instant) -> Status {
        Status {
            id,
            phase: Phase::Starting,
            role: RoleView::Down,
            ballot: (0, 0),
            leader: None,
            commit: 0,
            applied: 0,
            log_start: 0,
            configuration: None,
            members: Vec::new(),
            quorum: 0,
            election_timeout: Duration::from_secs(2),
            keys: 0,
            pending: (0, 0),
            started: now,
            published: now,
        }
    }

    /// Voters heard from within the election timeout at `now`, this one included.
    pub fn voters_heard(&self, now: Instant) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.voter && (m.this || self.heard_recently(m, now)))
            .map(|m| m.id)
            .collect()
    }

    fn heard_recently(&self, m: &MemberView, now: Instant) -> bool {
        m.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) <= self.election_timeout)
    }
}

/// Seconds as "3.2 s".
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Whether the replica is healthy at `now`: it knows a leader and that leader has
/// confirmed a quorum recently. On the leader: a quorum of voters (itself included) heard
/// from within the election timeout. On a follower: the leader heard from within the
/// election timeout. `Err` says what is wrong.
pub fn health(s: &Status, now: Instant) -> Result<(), String> {
    not_in_a_phase(s)?;
    let Some(leader) = s.leader else {
        return Err(match s.role {
            RoleView::Candidate => format!(
                "no leader known: an election is running (ballot {}.{})",
                s.ballot.0, s.ballot.1
            ),
            _ => "no leader known".into(),
        });
    };
    if leader == s.id {
        let heard = s.voters_heard(now);
        if heard.len() < s.quorum {
            let voters = s.members.iter().filter(|m| m.voter).count();
            return Err(format!(
                "this replica leads but has heard from only {} of {} voters within {} (a quorum is {})",
                heard.len(),
                voters,
                secs(s.election_timeout),
                s.quorum
            ));
        }
        return Ok(());
    }
    match s.members.iter().find(|m| m.id == leader) {
        Some(m) => match m.last_heard {
            Some(t) if now.saturating_duration_since(t) <= s.election_timeout => Ok(()),
            Some(t) => Err(format!(
                "leader {leader} has not been heard from for {}",
                secs(now.saturating_duration_since(t))
            )),
            None => Err(format!("leader {leader} has not been heard from")),
        },
        None => Err(format!(
            "leader {leader} is not a member this replica knows"
        )),
    }
}

/// Whether the replica is ready: started, recovered, and able to serve (not repairing, not
/// joining without a membership, its acceptor up). `Err` says why not.
pub fn readiness(s: &Status) -> Result<(), String> {
    not_in_a_phase(s)
}

fn not_in_a_phase(s: &Status) -> Result<(), String> {
    match s.phase {
        Phase::Running => Ok(()),
        Phase::Starting => Err("this replica is starting: recovering or waiting to be admitted".into()),
        Phase::Joining => {
            Err("this replica is joining: it has no membership yet (waiting for a snapshot from the leader)".into())
        }
        Phase::Repairing => Err("this replica is repairing: relearning its log from its peers".into()),
        Phase::AcceptorDown => {
            Err("this replica's acceptor is down (injected failure); it recovers from disk".into())
        }
        Phase::Stopping => Err("this replica is stopping".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, this: bool, last_heard: Option<Instant>) -> MemberView {
        MemberView {
            id,
            voter: true,
            this,
            addr: None,
            link_up: (!this).then_some(last_heard.is_some()),
            last_heard,
            rtt_ms: None,
            commit: None,
        }
    }

    /// Replica 1 of three, `role`, knowing `leader`, having heard from 2 and 3 at those
    /// times.
    fn status(now: Instant, leader: Option<u64>, heard: [Option<Instant>; 2]) -> Status {
        let mut s = Status::starting(1, now);
        s.phase = Phase::Running;
        s.role = match leader {
            Some(1) => RoleView::Leader,
            Some(_) => RoleView::Follower,
            None => RoleView::Candidate,
        };
        s.ballot = (4, leader.unwrap_or(1));
        s.leader = leader;
        s.quorum = 2;
        s.members = vec![
            member(1, true, Some(now)),
            member(2, false, heard[0]),
            member(3, false, heard[1]),
        ];
        s
    }

    #[test]
    fn a_leader_is_healthy_while_it_hears_from_a_quorum() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let recent = Some(now - Duration::from_millis(100));
        let old = Some(now - Duration::from_secs(5));
        assert_eq!(health(&status(now, Some(1), [recent, None]), now), Ok(()));
        assert_eq!(health(&status(now, Some(1), [old, recent]), now), Ok(()));
        let err = health(&status(now, Some(1), [old, None]), now).err();
        let err = err.unwrap_or_default();
        assert!(err.contains("heard from only 1 of 3 voters"), "{err}");
    }

    #[test]
    fn a_follower_is_healthy_while_it_hears_from_its_leader() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let recent = Some(now - Duration::from_millis(100));
        let old = Some(now - Duration::from_millis(3200));
        assert_eq!(health(&status(now, Some(2), [recent, None]), now), Ok(()));
        assert_eq!(
            health(&status(now, Some(2), [old, recent]), now),
            Err("leader 2 has not been heard from for 3.2 s".into())
        );
        assert_eq!(
            health(&status(now, Some(3), [recent, None]), now),
            Err("leader 3 has not been heard from".into())
        );
    }

    #[test]
    fn no_leader_or_a_phase_other_than_running_is_unhealthy() {
        let now = Instant::now();
        let s = status(now, None, [None, None]);
        let err = health(&s, now).err().unwrap_or_default();
        assert!(err.starts_with("no leader known"), "{err}");
        assert_eq!(readiness(&s), Ok(()), "a candidate is ready");
        let mut s = status(now, Some(1), [Some(now), Some(now)]);
        s.phase = Phase::Repairing;
        assert_eq!(
            health(&s, now),
            Err("this replica is repairing: relearning its log from its peers".into())
        );
        assert!(readiness(&s).is_err());
        assert!(readiness(&Status::starting(1, now)).is_err());
        s.phase = Phase::Joining;
        let err = readiness(&s).err().unwrap_or_default();
        assert!(err.contains("joining"), "{err}");
    }
}
