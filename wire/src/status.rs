//! A node's self-description, the answer to [`Op::Status`](crate::Op::Status).

use serde::{Deserialize, Serialize};

/// How a node sees itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// The address clients connect to.
    pub client_addr: String,
    /// The node's current role.
    pub role: NodeRole,
    /// The highest ballot the node has seen.
    pub ballot: BallotInfo,
    /// The highest log slot known to be chosen (committed).
    pub commit_index: u64,
    /// The highest log slot applied to the state machine.
    pub applied_index: u64,
    /// The leader's node id, if the node knows one.
    pub leader: Option<u64>,
    /// Whether each other member is reachable from this node, in ascending id order.
    pub peers: Vec<PeerReachability>,
    /// How many times this node's acceptor was failed on purpose (failure injection).
    pub acceptor_failures: u64,
    /// How many times this node's acceptor recovered from such a failure.
    pub acceptor_recoveries: u64,
    /// Whether this node's acceptor is failed right now.
    pub acceptor_down: bool,
    /// Time since the node started, in milliseconds.
    pub uptime_ms: u64,
}

/// A node's role, as shown by a status request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// The node leads: it proposes and serves linearizable reads.
    Leader,
    /// The node follows a leader.
    Follower,
    /// The node is trying to become leader.
    Candidate,
    /// The node does not take part (for example, its acceptor is failed).
    Down,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
            NodeRole::Candidate => "candidate",
            NodeRole::Down => "down",
        })
    }
}

/// A Paxos ballot as shown by a status request: ordered by `round`, then `node`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BallotInfo {
    /// The ballot's round.
    pub round: u64,
    /// The node that owns the ballot.
    pub node: u64,
}

impl std::fmt::Display for BallotInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// Whether one other member is reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerReachability {
    /// The member's node id.
    pub id: u64,
    /// Whether its peer link is up.
    pub reachable: bool,
}
