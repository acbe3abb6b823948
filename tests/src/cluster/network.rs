//! Network shapes as sets of one-way links to cut.
//!
//! A replica sends only on the connection it dials, so the link `(from, to)` is exactly the
//! proxy `P(from→to)`: cutting it stops `from`'s messages to `to` and nothing else. Every
//! shape here is a pure function of the member ids, so it is unit-tested without processes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure};

/// A one-way link `(from, to)`: the messages node `from` sends to node `to`.
pub type Link = (u64, u64);

/// Every link between distinct members.
pub fn all_links(ids: &[u64]) -> BTreeSet<Link> {
    links_where(ids, |_, _| true)
}

/// The links `(a, b)` between distinct members for which `cut(a, b)` holds.
pub fn links_where(ids: &[u64], mut cut: impl FnMut(u64, u64) -> bool) -> BTreeSet<Link> {
    let mut links = BTreeSet::new();
    for &from in ids {
        for &to in ids {
            if from != to && cut(from, to) {
                links.insert((from, to));
            }
        }
    }
    links
}

/// All links into and out of `id`.
pub fn isolate(ids: &[u64], id: u64) -> anyhow::Result<BTreeSet<Link>> {
    ensure!(ids.contains(&id), "node {id} is not a member of {ids:?}");
    Ok(links_where(ids, |a, b| a == id || b == id))
}

/// Every link between members of different groups. The groups must cover every member exactly
/// once (name a lone node as a group of one).
pub fn partition(ids: &[u64], groups: &[&[u64]]) -> anyhow::Result<BTreeSet<Link>> {
    let group_of = group_index(ids, groups)?;
    Ok(links_where(ids, |a, b| group_of[&a] != group_of[&b]))
}

/// A ring over `order` (a permutation of the members, at least three): each node keeps the
/// links with its two neighbours in the ring and loses every other one.
pub fn ring(ids: &[u64], order: &[u64]) -> anyhow::Result<BTreeSet<Link>> {
    ensure!(
        order.len() >= 3,
        "a ring needs at least three nodes, got {order:?}"
    );
    group_index(ids, &[order])?; // Checks that `order` is a permutation of `ids`.
    let position: BTreeMap<u64, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let n = order.len();
    Ok(links_where(ids, |a, b| {
        let distance = position[&a].abs_diff(position[&b]);
        distance != 1 && distance != n - 1
    }))
}

/// A bridge: `left` and `right` cannot talk to each other, while `bridge` talks to both sides.
/// Together they must cover every member exactly once.
pub fn bridge(
    ids: &[u64],
    left: &[u64],
    bridge: u64,
    right: &[u64],
) -> anyhow::Result<BTreeSet<Link>> {
    let group_of = group_index(ids, &[left, &[bridge], right])?;
    let (left_group, right_group) = (0, 2);
    Ok(links_where(ids, |a, b| {
        let (ga, gb) = (group_of[&a], group_of[&b]);
        (ga == left_group && gb == right_group) || (ga == right_group && gb == left_group)
    }))
}

/// Maps each member to the index of its group, checking that the groups cover every member
/// exactly once.
fn group_index(ids: &[u64], groups: &[&[u64]]) -> anyhow::Result<BTreeMap<u64, usize>> {
    let mut group_of = BTreeMap::new();
    for (index, group) in groups.iter().enumerate() {
        for &id in group.iter() {
            if !ids.contains(&id) {
                bail!("node {id} is not a member of {ids:?}");
            }
            if group_of.insert(id, index).is_some() {
                bail!("node {id} appears more than once in {groups:?}");
            }
        }
    }
    let missing: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !group_of.contains_key(id))
        .collect();
    ensure!(
        missing.is_empty(),
        "nodes {missing:?} are in no group of {groups:?}; every member must be placed"
    );
    Ok(group_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(u64, u64)]) -> BTreeSet<Link> {
        pairs.iter().copied().collect()
    }

    /// Both directions of every listed pair.
    fn both_ways(pairs: &[(u64, u64)]) -> BTreeSet<Link> {
        pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect()
    }

    #[test]
    fn all_links_of_three_nodes() {
        assert_eq!(
            all_links(&[1, 2, 3]),
            links(&[(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)])
        );
    }

    #[test]
    fn isolate_cuts_every_link_in_and_out() {
        assert_eq!(
            isolate(&[1, 2, 3], 2).unwrap(),
            links(&[(1, 2), (2, 1), (2, 3), (3, 2)])
        );
        assert!(isolate(&[1, 2, 3], 4).is_err());
    }

    #[test]
    fn partition_cuts_links_between_groups_only() {
        let ids = [1, 2, 3, 4, 5];
        assert_eq!(
            partition(&ids, &[&[1, 2], &[3, 4, 5]]).unwrap(),
            both_ways(&[(1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)])
        );
        assert_eq!(
            partition(&ids, &[&[1], &[2], &[3, 4, 5]]).unwrap(),
            both_ways(&[(1, 2), (1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)])
        );
        assert!(partition(&ids, &[&[1, 2, 3, 4, 5]]).unwrap().is_empty());
    }

    #[test]
    fn partition_rejects_bad_groups() {
        let ids = [1, 2, 3];
        let missing = partition(&ids, &[&[1], &[2]]).unwrap_err().to_string();
        assert!(missing.contains("[3]"), "{missing}");
        let twice = partition(&ids, &[&[1, 2], &[2, 3]])
            .unwrap_err()
            .to_string();
        assert!(twice.contains("node 2 appears more than once"), "{twice}");
        let unknown = partition(&ids, &[&[1, 2, 3], &[9]])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("node 9 is not a member"), "{unknown}");
    }

    #[test]
    fn ring_of_five_keeps_only_neighbours() {
        let ids = [1, 2, 3, 4, 5];
        let cut = ring(&ids, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(cut, both_ways(&[(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)]));
        // Every node still reaches exactly its two neighbours.
        for &a in &ids {
            let reachable = ids
                .iter()
                .filter(|&&b| b != a && !cut.contains(&(a, b)))
                .count();
            assert_eq!(reachable, 2, "node {a}");
        }
        // The order decides who the neighbours are.
        assert_eq!(
            ring(&ids, &[1, 3, 5, 2, 4]).unwrap(),
            both_ways(&[(1, 2), (1, 5), (2, 3), (3, 4), (4, 5)])
        );
    }

    #[test]
    fn ring_of_three_cuts_nothing_and_bad_orders_fail() {
        assert!(ring(&[1, 2, 3], &[3, 1, 2]).unwrap().is_empty());
        assert!(ring(&[1, 2], &[1, 2]).is_err());
        assert!(ring(&[1, 2, 3, 4], &[1, 2, 3]).is_err());
    }

    #[test]
    fn bridge_node_sees_both_halves() {
        let ids = [1, 2, 3, 4, 5];
        assert_eq!(
            bridge(&ids, &[1, 2], 3, &[4, 5]).unwrap(),
            both_ways(&[(1, 4), (1, 5), (2, 4), (2, 5)])
        );
        assert_eq!(
            bridge(&[1, 2, 3], &[1], 2, &[3]).unwrap(),
            both_ways(&[(1, 3)])
        );
        assert!(bridge(&ids, &[1, 2], 3, &[4]).is_err());
        assert!(bridge(&ids, &[1, 2, 3], 3, &[4, 5]).is_err());
    }
}
