//! Ballots, node ids and slot numbers.

/// The id of a replica. Ids are chosen by the operator and must be unique within a cluster.
pub type NodeId = u64;

/// A position in the replicated log. Slot numbers start at 0 and grow without gaps.
pub type Slot = u64;

/// A Paxos ballot: a round number made unique by the id of the node that owns it.
///
/// Ballots are totally ordered, first by `round`, then by `node`, so two proposers can never
/// use the same ballot. [`Ballot::ZERO`] is lower than every ballot a proposer uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Ballot {
    /// The round; a proposer starting an election picks a round above every round it has seen.
    pub round: u64,
    /// The node that owns this ballot; only that node proposes values under it.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot every acceptor starts with; no proposer ever uses it.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// Builds a ballot.
    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 3) < Ballot::new(2, 1));
        assert!(Ballot::new(2, 1) < Ballot::new(2, 2));
        assert!(Ballot::ZERO < Ballot::new(1, 0));
        assert_eq!(Ballot::new(7, 2).to_string(), "7.2");
    }
}
