//! What a replica reports about itself (`kvs-client status`).

use paxos_core::Role;
use wire::{BallotInfo, NodeRole, NodeStatus};

use super::Node;

impl Node {
    /// This replica's status.
    pub(super) fn status(&self) -> NodeStatus {
        let down = self.faults.is_down();
        let role = match self.replica.role() {
            _ if down => NodeRole::Down,
            Role::Leader => NodeRole::Leader,
            Role::Candidate => NodeRole::Candidate,
            Role::Follower => NodeRole::Follower,
        };
        let ballot = self.replica.ballot();
        let (failures, recoveries) = self.faults.counts();
        NodeStatus {
            id: self.cfg.id,
            client_addr: self.cfg.client_addr.clone(),
            role,
            ballot: BallotInfo {
                round: ballot.round,
                node: ballot.node,
            },
            commit_index: self.replica.commit_index(),
            applied_index: self.sm.applied(),
            leader: if down {
                None
            } else {
                self.replica.leader_hint()
            },
            peers: self.links.reachability(),
            acceptor_failures: failures,
            acceptor_recoveries: recoveries,
            acceptor_down: down,
            uptime_ms: self.start.elapsed().as_millis() as u64,
        }
    }
}
