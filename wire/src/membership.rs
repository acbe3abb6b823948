//! Membership on the wire: what the store records about each member in the replicated
//! membership (its addresses, [`MemberAddrs`]), the encoding of a membership log kept in a
//! snapshot, and the client protocol's membership requests and replies ([`MemberChange`],
//! [`MemberList`]).
//!
//! The consensus core keeps, for every member, an opaque `meta` byte string
//! (`paxos_core::Member::meta`). The store puts the member's addresses there, encoded by
//! [`MemberAddrs::encode`]:
//!
//! ```text
//! version u8 = 1 | peer_len u8 (1..=255) | peer_addr UTF-8
//!                | client_len u8 (0: unknown) | client_addr UTF-8
//! ```
//!
//! An empty meta (a member of a cluster bootstrapped before addresses were recorded) means
//! "addresses unknown". Decoding never panics and refuses trailing bytes.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::membership::LEARNERS_MAX;
use paxos_core::{MembershipLog, MEMBERS_MAX};
use serde::{Deserialize, Serialize};

use crate::WireError;

/// Longest address, in bytes.
pub const ADDR_BYTES_MAX: usize = 255;

/// The version byte of [`MemberAddrs::encode`].
const ADDRS_VERSION: u8 = 1;

/// The addresses of a member, as the replicated membership records them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// Where the other replicas reach it (`HOST:PORT`).
    pub peer_addr: String,
    /// Where clients reach it (`HOST:PORT`), if known.
    pub client_addr: Option<String>,
}

impl MemberAddrs {
    /// The bytes to keep as the member's meta. Fails if an address is not `HOST:PORT` of
    /// at most [`ADDR_BYTES_MAX`] bytes.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        let bad = |reason: String| WireError::Encode(format!("member addresses: {reason}"));
        check_addr(&self.peer_addr).map_err(bad)?;
        if let Some(client) = &self.client_addr {
            check_addr(client).map_err(bad)?;
        }
        let client = self.client_addr.as_deref().unwrap_or("");
        let mut out = BytesMut::with_capacity(3 + self.peer_addr.len() + client.len());
        out.put_u8(ADDRS_VERSION);
        out.put_u8(self.peer_addr.len() as u8);
        out.put_slice(self.peer_addr.as_bytes());
        out.put_u8(client.len() as u8);
        out.put_slice(client.as_bytes());
        Ok(out.freeze())
    }

    /// Reads a member's meta: `None` for an empty one (addresses unknown). A pure function
    /// that never panics.
    pub fn decode(meta: &[u8]) -> Result<Option<MemberAddrs>, WireError> {
        let bad = |reason: &str| WireError::Decode(format!("member addresses: {reason}"));
        let Some((&version, mut rest)) = meta.split_first() else {
            return Ok(None);
        };
        if version != ADDRS_VERSION {
            return Err(WireError::Decode(format!(
                "member addresses: unknown version {version} (this build reads {ADDRS_VERSION})"
            )));
        }
        let mut text = |what: &str| -> Result<String, WireError> {
            let (&len, tail) = rest
                .split_first()
                .ok_or_else(|| bad(&format!("no length for the {what}")))?;
            let len = usize::from(len);
            if tail.len() < len {
                return Err(bad(&format!("the {what} is cut short")));
            }
            let (bytes, tail) = tail.split_at(len);
            rest = tail;
            String::from_utf8(bytes.to_vec()).map_err(|_| bad(&format!("the {what} is not UTF-8")))
        };
        let peer_addr = text("peer address")?;
        let client_addr = text("client address")?;
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes {
                used: meta.len() - rest.len(),
                trailing: rest.len(),
            });
        }
        check_addr(&peer_addr).map_err(|r| bad(&r))?;
        let client_addr = (!client_addr.is_empty()).then_some(client_addr);
        if let Some(client) = &client_addr {
            check_addr(client).map_err(|r| bad(&r))?;
        }
        Ok(Some(MemberAddrs {
            peer_addr,
            client_addr,
        }))
    }
}

/// Checks that `addr` looks like `HOST:PORT` (`[v6]:PORT` for an IPv6 address), with a
/// port from 1 to 65535 and at most [`ADDR_BYTES_MAX`] bytes, without resolving the host.
/// The error says what is wrong.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.len() > ADDR_BYTES_MAX {
        return Err(format!(
            "{addr:?} is {} bytes long, the most is {ADDR_BYTES_MAX}",
            addr.len()
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{addr:?} has no host"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.contains(':') && !bracketed {
        return Err(format!(
            "{addr:?}: an IPv6 address must be written in brackets, as [::1]:7001"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{addr:?}: the port is not a number from 1 to 65535"
        )),
    }
}

/// Encodes a membership log (to keep it in a snapshot).
pub fn encode_membership_log(log: &MembershipLog) -> Result<Bytes, WireError> {
    crate::encode(log)
}

/// Decodes a membership log written by [`encode_membership_log`], and checks what the
/// consensus core relies on: a delay of at least one slot, at least one membership, ids
/// and first slots strictly increasing, at most [`MEMBERS_MAX`] voters and
/// [`LEARNERS_MAX`] learners in each. A pure function that never panics.
pub fn decode_membership_log(bytes: &[u8]) -> Result<MembershipLog, WireError> {
    let log: MembershipLog = crate::decode(bytes)?;
    let bad = |reason: String| Err(WireError::Decode(format!("membership log: {reason}")));
    if log.delay() == 0 {
        return bad("the reconfiguration delay is 0".into());
    }
    let mut previous: Option<(u64, u64)> = None;
    for (from, membership) in log.epochs() {
        if let Some((prev_from, prev_id)) = previous {
            if from <= prev_from || membership.id <= prev_id {
                return bad(format!(
                    "membership {} from slot {from} does not follow membership {prev_id} from \
                     slot {prev_from}",
                    membership.id
                ));
            }
        }
        let voters = membership.voters().count();
        let learners = membership.learners().count();
        if voters > MEMBERS_MAX || learners > LEARNERS_MAX {
            return bad(format!(
                "membership {} has {voters} voters and {learners} learners (at most \
                 {MEMBERS_MAX} and {LEARNERS_MAX})",
                membership.id
            ));
        }
        previous = Some((from, membership.id));
    }
    if previous.is_none() {
        return bad("it holds no membership".into());
    }
    Ok(log)
}

/// A change of membership asked by a client ([`crate::Op::MemberChange`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add `id` as a learner: it receives the log and snapshots, and does not vote.
    Add {
        /// The new member's id (never used before in this cluster).
        id: u64,
        /// Where the other replicas reach it (`HOST:PORT`).
        peer_addr: String,
        /// Where clients reach it (`HOST:PORT`).
        client_addr: String,
    },
    /// Make learner `id` a voter; refused while it lags behind the leader.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove member `id` (a voter, the leader included, or a learner).
    Remove {
        /// The member.
        id: u64,
    },
}

impl MemberChange {
    /// The member the change is about.
    pub fn id(&self) -> u64 {
        match self {
            MemberChange::Add { id, .. }
            | MemberChange::Promote { id }
            | MemberChange::Remove { id } => *id,
        }
    }

    /// Whether `list` already shows the change made: the member added with these
    /// addresses, promoted, or gone. A client that retried a change and was told the
    /// configuration moved on uses this to tell its own change from another's.
    pub fn holds_in(&self, list: &MemberList) -> bool {
        let member = list.members.iter().find(|m| m.id == self.id());
        match (self, member) {
            (
                MemberChange::Add {
                    peer_addr,
                    client_addr,
                    ..
                },
                Some(m),
            ) => {
                m.peer_addr.as_deref() == Some(peer_addr.as_str())
                    && m.client_addr.as_deref() == Some(client_addr.as_str())
            }
            (MemberChange::Promote { .. }, Some(m)) => m.voter,
            (MemberChange::Remove { .. }, None) => true,
            _ => false,
        }
    }
}

/// The members of the cluster as one node sees them ([`crate::Reply::Members`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// The id of the latest configuration (what a change must name as `expected`).
    pub config_id: u64,
    /// Whether the latest configuration governs the log already; false while a change
    /// waits for the slots it takes to come into effect.
    pub in_effect: bool,
    /// The node that answered.
    pub served_by: u64,
    /// The leader, if known to the node that answered. Applied slots and lags are known
    /// only when the leader answered.
    pub leader: Option<u64>,
    /// Every member of the latest configuration, in id order.
    pub members: Vec<MemberInfo>,
}

/// One member in a [`MemberList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's id.
    pub id: u64,
    /// Where the other replicas reach it, if recorded.
    pub peer_addr: Option<String>,
    /// Where clients reach it, if recorded.
    pub client_addr: Option<String>,
    /// A voter (counted in quorums), or a learner.
    pub voter: bool,
    /// The slot up to which the member holds the log (every slot below is known chosen
    /// there), as it last told the leader; the leader's own is its applied slot. `None`
    /// when unknown (the member has not answered the leader, or a follower answered).
    pub applied: Option<u64>,
    /// How many slots the member is behind the leader's commit index; `None` when unknown.
    pub lag: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paxos_core::{Change, Membership, Reconfig};

    use super::*;

    fn addrs(client: Option<&str>) -> MemberAddrs {
        MemberAddrs {
            peer_addr: "10.0.0.4:7001".into(),
            client_addr: client.map(str::to_owned),
        }
    }

    #[test]
    fn addresses_roundtrip_and_the_layout_is_pinned() {
        let a = addrs(Some("10.0.0.4:6001"));
        let bytes = a.encode().unwrap();
        let mut expected = vec![1, 13];
        expected.extend_from_slice(b"10.0.0.4:7001");
        expected.push(13);
        expected.extend_from_slice(b"10.0.0.4:6001");
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(MemberAddrs::decode(&bytes).unwrap(), Some(a));
        let no_client = addrs(None);
        let bytes = no_client.encode().unwrap();
        assert_eq!(MemberAddrs::decode(&bytes).unwrap(), Some(no_client));
        assert_eq!(MemberAddrs::decode(&[]).unwrap(), None, "empty: unknown");
    }

    #[test]
    fn malformed_addresses_are_errors_never_panics() {
        let good = addrs(Some("h:1")).encode().unwrap();
        for len in 1..good.len() {
            assert!(MemberAddrs::decode(&good[..len]).is_err(), "cut to {len}");
        }
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            MemberAddrs::decode(&long),
            Err(WireError::TrailingBytes { .. })
        ));
        assert!(
            MemberAddrs::decode(&[2, 1, b'x']).is_err(),
            "unknown version"
        );
        assert!(
            MemberAddrs::decode(&[1, 2, 0xff, 0xfe, 0]).is_err(),
            "not UTF-8"
        );
        assert!(
            MemberAddrs::decode(&[1, 1, b'x', 0]).is_err(),
            "not HOST:PORT"
        );
        for junk in 0..=255u8 {
            let _ = MemberAddrs::decode(&[1, junk, junk, junk]);
        }
        for bad in ["nohost", ":7001", "h:0", "h:70000", "::1:7001", "a b:1"] {
            assert!(check_addr(bad).is_err(), "{bad}");
            let a = MemberAddrs {
                peer_addr: bad.into(),
                client_addr: None,
            };
            assert!(a.encode().is_err(), "{bad}");
        }
        assert!(check_addr(&format!("{}:1", "h".repeat(ADDR_BYTES_MAX))).is_err());
        for ok in ["h:1", "[::1]:7001", "10.0.0.1:65535"] {
            assert_eq!(check_addr(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn membership_logs_roundtrip_and_bad_ones_are_refused() {
        let first = Membership::initial(&[1, 2, 3], &BTreeMap::new());
        let mut log = MembershipLog::new(4, first);
        let add = Reconfig {
            expected: 1,
            change: Change::AddLearner {
                id: 4,
                meta: addrs(None).encode().unwrap(),
            },
        };
        log.apply_chosen(10, &add).unwrap();
        let bytes = encode_membership_log(&log).unwrap();
        assert_eq!(decode_membership_log(&bytes).unwrap(), log);
        for len in 0..bytes.len() {
            assert!(
                decode_membership_log(&bytes[..len]).is_err(),
                "cut to {len}"
            );
        }
        // The same fields, but no membership: refused rather than kept (the core would
        // index an empty list).
        #[derive(Serialize)]
        struct Raw {
            delay: u64,
            epochs: Vec<(u64, Membership)>,
        }
        let empty = crate::encode(&Raw {
            delay: 4,
            epochs: vec![],
        })
        .unwrap();
        assert!(decode_membership_log(&empty).is_err());
        let zero_delay = crate::encode(&Raw {
            delay: 0,
            epochs: vec![(0, Membership::initial(&[1], &BTreeMap::new()))],
        })
        .unwrap();
        assert!(decode_membership_log(&zero_delay).is_err());
        let m = Membership::initial(&[1], &BTreeMap::new());
        let backwards = crate::encode(&Raw {
            delay: 4,
            epochs: vec![(5, m.clone()), (5, m)],
        })
        .unwrap();
        assert!(decode_membership_log(&backwards).is_err());
    }

    #[test]
    fn a_change_holds_once_the_list_shows_it() {
        let info = |id, voter| MemberInfo {
            id,
            peer_addr: Some("h:1".into()),
            client_addr: Some("h:2".into()),
            voter,
            applied: None,
            lag: None,
        };
        let list = MemberList {
            config_id: 3,
            in_effect: true,
            served_by: 1,
            leader: Some(1),
            members: vec![info(1, true), info(4, false)],
        };
        let add = |peer: &str| MemberChange::Add {
            id: 4,
            peer_addr: peer.into(),
            client_addr: "h:2".into(),
        };
        assert!(add("h:1").holds_in(&list));
        assert!(!add("h:9").holds_in(&list), "another member under that id");
        assert!(!MemberChange::Promote { id: 4 }.holds_in(&list));
        assert!(MemberChange::Promote { id: 1 }.holds_in(&list));
        assert!(MemberChange::Remove { id: 7 }.holds_in(&list));
        assert!(!MemberChange::Remove { id: 4 }.holds_in(&list));
    }
}
