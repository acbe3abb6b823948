//! The handshake that opens every connection.
//!
//! The connecting side sends a [`Hello`]; the accepting side checks it with [`check_hello`]
//! and answers with a [`HelloReply`]: accepted, or refused with a [`HandshakeRefusal`] that
//! both sides can print. Only then do frames (see [`crate::codec`]) flow.
//!
//! A replica's hello also carries its [`ReplicaIdentity`]: the durable cluster identity it
//! was bootstrapped with, the instance id of its data directory, the membership it believes
//! in and its session-table size. [`check_hello`] refuses a replica whose cluster identity,
//! membership or session-table size differs from the accepting node's, naming what differs;
//! the host adds its own check of the instance id (see [`server_handshake_with`]), so that a
//! member whose data directory was lost or replaced is refused by the peers that knew it.
//!
//! Both records have a fixed layout defined byte by byte in [`layout`], not the message
//! encoding, and they are sent before framing starts, so a peer of any protocol version,
//! or a program that is not a kvs node at all, is recognised and refused with a reason.
//! [`client_handshake`] and [`server_handshake`] run the exchange over a framed stream.

use std::collections::BTreeSet;
use std::time::Duration;

pub mod layout;

mod exchange;

pub use exchange::{client_handshake, refuse_handshake, server_handshake, server_handshake_with};

/// The first four bytes of every connection, in both directions.
pub const MAGIC: [u8; 4] = *b"KVSW";

/// The protocol version this build speaks, and the highest it accepts.
///
/// Version 2 added the replica's [`ReplicaIdentity`] to the hello. A version-1 replica
/// cannot prove who it is, so version 1 is no longer accepted: a node of either version is
/// refused by the other with [`HandshakeRefusal::UnsupportedVersion`], which names both
/// versions (the reply layout is shared by all versions).
///
/// Version 3 changed the replica-to-replica messages (membership changes: a catch-up
/// request says whether its sender joins the cluster, a leader hands over), added the
/// joining replica's hello ([`ReplicaIdentity::joining`]) and the cluster's identity in
/// the acceptance of one ([`Accepted::cluster`]), and added the membership requests to the
/// client protocol.
///
/// Version 4 added, to a member's hello, the latest configuration it knows and the address
/// it accepts peer connections on ([`ReplicaIdentity::configuration`],
/// [`ReplicaIdentity::peer_addr`]): a replica that was down while members were added admits
/// one that knows a later configuration, and links back to it (see
/// [`HandshakeExpectation::configuration`]). Replicas must speak version 4
/// ([`PEER_PROTOCOL_VERSION_MIN`]); clients of version 2 and 3 are still served (the
/// client protocol only grew).
pub const PROTOCOL_VERSION: u16 = 4;

/// The lowest protocol version this build accepts (from a client; a replica needs
/// [`PEER_PROTOCOL_VERSION_MIN`]).
pub const PROTOCOL_VERSION_MIN: u16 = 2;

/// The lowest protocol version this build accepts from a replica: the hellos of earlier
/// versions do not say which configuration their sender knows.
pub const PEER_PROTOCOL_VERSION_MIN: u16 = 4;

/// Longest [`ReplicaIdentity::peer_addr`], in bytes of UTF-8.
pub const PEER_ADDR_BYTES_MAX: usize = 255;

/// Most members a [`ReplicaIdentity`] may list (the consensus core's limit).
pub const IDENTITY_MEMBERS_MAX: usize = paxos_core::MEMBERS_MAX;

/// A 128-bit identifier: a cluster's identity or a data directory's instance id.
///
/// Shown and parsed as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uid(pub [u8; 16]);

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Uid {
    type Err = String;

    /// Parses exactly 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a 128-bit id (32 hex digits)");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Uid(out))
    }
}

/// What a replica states about itself in its hello, checked by the accepting replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaIdentity {
    /// The cluster identity stored in the replica's data directory at bootstrap.
    pub cluster_uid: Uid,
    /// The instance id of the replica's data directory: random, created with the directory,
    /// so a wiped or replaced directory has another one.
    pub instance: Uid,
    /// The ids the cluster was bootstrapped with (the ones its identity was derived from),
    /// ascending, 1 to [`IDENTITY_MEMBERS_MAX`]. The membership itself changes with the
    /// replicated log; this list does not.
    pub members: Vec<u64>,
    /// The replica's session-table size (`--sessions-max`): replicas that differ here would
    /// evict different sessions and their state machines would diverge.
    pub sessions_max: u64,
    /// The replica joins a running cluster with an empty data directory
    /// (`--initial-cluster-state existing`) and knows neither the cluster identity nor the
    /// bootstrap members yet: `cluster_uid` and `members` are not sent (they decode as
    /// zero and empty). A member that admits it answers with them ([`Accepted::cluster`]).
    /// Version 3 and later.
    pub joining: bool,
    /// The id of the latest configuration (membership) the replica knows; 0 when it knows
    /// none yet (it joins, and has not been sent a membership). Version 4 and later
    /// (decoded as 0 from earlier versions).
    pub configuration: u64,
    /// Where the replica accepts peer connections (`HOST:PORT`, at most
    /// [`PEER_ADDR_BYTES_MAX`] bytes), so that a member that does not know it yet can link
    /// back to it; empty when not known or joining. Version 4 and later.
    pub peer_addr: String,
}

impl ReplicaIdentity {
    /// The identity of a replica joining a running cluster (see
    /// [`ReplicaIdentity::joining`]).
    pub fn joining(instance: Uid, sessions_max: u64) -> Self {
        ReplicaIdentity {
            cluster_uid: Uid::default(),
            instance,
            members: Vec::new(),
            sessions_max,
            joining: true,
            configuration: 0,
            peer_addr: String::new(),
        }
    }
}

/// The cluster's identity, as a member tells it to a replica that joins
/// ([`Accepted::cluster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster identity.
    pub cluster_uid: Uid,
    /// The ids the cluster was bootstrapped with, ascending (see
    /// [`ReplicaIdentity::members`]).
    pub members: Vec<u64>,
    /// The voters of the latest membership the accepting member knows, ascending: a
    /// joining replica waits until a majority of them (itself left out) recorded its data
    /// directory.
    pub voters: Vec<u64>,
}

/// Renders member ids as `{1, 2, 3}`.
fn member_list(ids: &[u64]) -> String {
    let inner: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The ids in `a` that are not in `b`, as `{..}`.
fn only_in(a: &[u64], b: &[u64]) -> String {
    let ids: Vec<u64> = a.iter().filter(|i| !b.contains(i)).copied().collect();
    member_list(&ids)
}

/// Longest cluster id, in bytes of UTF-8. Cluster ids are at least one byte long.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// A reasonable default for the `timeout` of [`client_handshake`] and [`server_handshake`].
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Who is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// A client of the key-value store.
    Client,
    /// A replica of the cluster, with its node id.
    Replica(u64),
}

impl std::fmt::Display for PeerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerRole::Client => f.write_str("client"),
            PeerRole::Replica(id) => write!(f, "replica {id}"),
        }
    }
}

/// The first record a connecting side sends. See [`layout`] for its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Must be [`MAGIC`]; anything else is not a kvs peer.
    pub magic: [u8; 4],
    /// The protocol version the connecting side speaks, normally [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The cluster the connecting side believes it talks to, 1 to [`CLUSTER_ID_BYTES_MAX`]
    /// bytes of UTF-8.
    pub cluster_id: String,
    /// Who is connecting.
    pub role: PeerRole,
    /// A replica's identity; `None` for a client (a client carrying one is malformed).
    pub identity: Option<ReplicaIdentity>,
}

impl Hello {
    /// A hello with [`MAGIC`] and [`PROTOCOL_VERSION`].
    pub fn new(cluster_id: impl Into<String>, role: PeerRole) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            role,
            identity: None,
        }
    }

    /// A replica's hello with its identity, with [`MAGIC`] and [`PROTOCOL_VERSION`].
    pub fn replica(cluster_id: impl Into<String>, node_id: u64, identity: ReplicaIdentity) -> Self {
        Hello {
            identity: Some(identity),
            ..Hello::new(cluster_id, PeerRole::Replica(node_id))
        }
    }
}

/// What the accepting side learned about itself and the connection when it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The accepting node's id.
    pub node_id: u64,
    /// The protocol version both sides speak from now on.
    pub version: u16,
    /// The cluster's identity, told to a replica that joins
    /// ([`ReplicaIdentity::joining`]); `None` otherwise. Version 3 and later.
    pub cluster: Option<ClusterInfo>,
}

/// The accepting side's answer to a [`Hello`]. See [`layout`] for its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloReply {
    /// The connection is open; frames follow.
    Accepted(Accepted),
    /// The connection is refused, for this reason; the accepting side closes it.
    Refused(HandshakeRefusal),
}

/// Why a handshake was refused. The text is phrased so that either side can print it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefusal {
    /// The first bytes are not [`MAGIC`]: the other side does not speak this protocol.
    #[error("not a kvs peer (bad magic \"{}\")", .got.escape_ascii())]
    BadMagic {
        /// The first bytes received (up to 4).
        got: Vec<u8>,
    },
    /// The protocol version is outside the range the accepting side supports.
    #[error(
        "unsupported protocol version {got}: the accepting node supports versions {min} to {max}"
    )]
    UnsupportedVersion {
        /// The version the connecting side asked for.
        got: u16,
        /// The lowest version the accepting side supports.
        min: u16,
        /// The highest version the accepting side supports.
        max: u16,
    },
    /// The two sides belong to different clusters.
    #[error("cluster id mismatch: the accepting node is in cluster \"{expected}\", the connecting side says \"{got}\"")]
    ClusterMismatch {
        /// The accepting side's cluster id.
        expected: String,
        /// The connecting side's cluster id.
        got: String,
    },
    /// A replica connected with a node id that is not a member of the cluster (never
    /// added, not yet known to the accepting node, or removed).
    #[error(
        "unknown node id {node_id}: not a member of the accepting node's cluster (a removed \
         member, or one not added yet: add it with `kvs-client member add`)"
    )]
    UnknownNode {
        /// The node id the replica gave.
        node_id: u64,
    },
    /// The connecting side's role is not served on this port (a client on the peer port,
    /// or a replica on the client port).
    #[error("a {got} is not accepted on this port (client port and peer port mixed up?)")]
    UnexpectedRole {
        /// The role the connecting side gave.
        got: PeerRole,
    },
    /// The two replicas believe in different memberships.
    #[error(
        "membership mismatch: the accepting node's members are {}, the connecting node's are {} \
         (only the accepting node lists {}, only the connecting node lists {})",
        member_list(expected),
        member_list(got),
        only_in(expected, got),
        only_in(got, expected)
    )]
    MembershipMismatch {
        /// The accepting node's member ids, ascending.
        expected: Vec<u64>,
        /// The connecting node's member ids, ascending.
        got: Vec<u64>,
    },
    /// The two replicas use different session-table sizes.
    #[error(
        "--sessions-max mismatch: the accepting node uses {expected}, the connecting node \
         {got}; every replica of a cluster must use the same value"
    )]
    SessionsMaxMismatch {
        /// The accepting node's `--sessions-max`.
        expected: u64,
        /// The connecting node's `--sessions-max`.
        got: u64,
    },
    /// Same cluster name and members, but another cluster identity: bootstrapped apart.
    #[error(
        "cluster identity mismatch: the accepting node belongs to cluster {expected}, the \
         connecting node to cluster {got} (bootstrapped separately: another \
         --initial-cluster-token, or a data dir of another cluster)"
    )]
    ClusterUidMismatch {
        /// The accepting node's cluster identity.
        expected: Uid,
        /// The connecting node's cluster identity.
        got: Uid,
    },
    /// A member connected with another data directory than the one the accepting node
    /// knows it by: its directory was wiped or replaced, and its promises are lost.
    #[error(
        "node {node_id} is known here by data dir instance {known}, but connected with \
         instance {got}: its data dir was lost or replaced, so it has forgotten the promises \
         it made and must not vote; replace this member (wipe-and-replace procedure in the \
         README) instead of restarting it"
    )]
    MemberReplaced {
        /// The connecting member's id.
        node_id: u64,
        /// The instance the accepting node recorded for it.
        known: Uid,
        /// The instance it presented now.
        got: Uid,
    },
    /// A replica connected without a cluster identity.
    #[error("replica {node_id} presented no cluster identity")]
    MissingIdentity {
        /// The replica's id.
        node_id: u64,
    },
    /// A replica of this cluster connected that is not a member of the later configuration
    /// the accepting node knows: it was removed from the cluster, and the accepting node
    /// has delivered every slot it could still vote in. See [`is_removed`].
    #[error(
        "node {node_id} was removed from the cluster: it is not a member of configuration \
         {configuration}, which the accepting node knows (a later one than the connecting \
         node's)"
    )]
    Removed {
        /// The removed replica's id.
        node_id: u64,
        /// The accepting node's latest configuration id.
        configuration: u64,
    },
    /// A plain connection reached a port that requires TLS. The accepting side sends this
    /// refusal in plain, then closes.
    #[error(
        "this port requires TLS: connect with --cacert (and --cert/--key if client \
         certificates are required); a replica needs --peer-cert-file, --peer-key-file and \
         --peer-trusted-ca-file"
    )]
    TlsRequired,
    /// A replica claimed a member id that its TLS certificate does not name: a valid
    /// certificate of one member cannot be used to act as another.
    #[error(
        "replica {claimed} presented the certificate of member {certified}: a replica's \
         certificate must name its own member id (URI SAN urn:kvs:member:<id>)"
    )]
    CertificateMismatch {
        /// The member id the hello claims.
        claimed: u64,
        /// The member id the certificate names.
        certified: u64,
    },
    /// A replica presented a TLS certificate that names no single member id.
    #[error("replica {claimed} presented a certificate that cannot be a replica's: {reason}")]
    CertificateNamesNoMember {
        /// The member id the hello claims.
        claimed: u64,
        /// What is wrong with the certificate.
        reason: String,
    },
    /// The record starts well but is not a valid hello or reply.
    #[error("malformed handshake: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// A refusal this build does not know, from a newer peer; its text is the peer's own.
    #[error("{message} (refusal code {code})")]
    Other {
        /// The refusal's code on the wire.
        code: u8,
        /// The peer's description of the refusal.
        message: String,
    },
}

/// What an accepting side requires of a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeExpectation {
    /// The cluster this node belongs to.
    pub cluster_id: String,
    /// Whether clients may connect here.
    pub accept_clients: bool,
    /// The node ids of replicas that may connect here, or `None` if no replica may.
    pub replicas: Option<BTreeSet<u64>>,
    /// This node's own identity, if replicas must present a matching one (cluster identity,
    /// membership and session-table size; the instance id is the host's to check).
    pub identity: Option<ReplicaIdentity>,
    /// What to tell a replica that joins ([`ReplicaIdentity::joining`]) when it is
    /// accepted; joining replicas are refused when `None`.
    pub cluster: Option<ClusterInfo>,
    /// The id of the latest configuration this node knows, if it admits newcomers: a
    /// member whose id is not in `replicas` is then accepted when it knows a later
    /// configuration and says where to reach it (see [`is_newcomer`]). This node may have
    /// been down while that member was added; the newcomer's messages are how it catches
    /// up. `None`: only the ids in `replicas`.
    pub configuration: Option<u64>,
}

impl HandshakeExpectation {
    /// The expectation of a client port: clients of `cluster_id` only.
    pub fn clients(cluster_id: impl Into<String>) -> Self {
        HandshakeExpectation {
            cluster_id: cluster_id.into(),
            accept_clients: true,
            replicas: None,
            identity: None,
            cluster: None,
            configuration: None,
        }
    }

    /// The expectation of a peer port: replicas of `cluster_id` with one of the given ids.
    pub fn replicas(cluster_id: impl Into<String>, ids: impl IntoIterator<Item = u64>) -> Self {
        HandshakeExpectation {
            cluster_id: cluster_id.into(),
            accept_clients: false,
            replicas: Some(ids.into_iter().collect()),
            identity: None,
            cluster: None,
            configuration: None,
        }
    }

    /// The expectation of a peer port whose replicas must present an identity matching
    /// `local` (this node's own): the members are `local.members`.
    pub fn replicas_of(cluster_id: impl Into<String>, local: ReplicaIdentity) -> Self {
        HandshakeExpectation {
            identity: Some(local.clone()),
            ..HandshakeExpectation::replicas(cluster_id, local.members)
        }
    }

    /// The expectation of a peer port of a running cluster member: replicas with one of
    /// the ids in `members` (the current membership), presenting an identity matching
    /// `local`, or joining (they are then told `cluster`).
    pub fn members_of(
        cluster_id: impl Into<String>,
        local: ReplicaIdentity,
        members: impl IntoIterator<Item = u64>,
        cluster: ClusterInfo,
    ) -> Self {
        HandshakeExpectation {
            identity: Some(local),
            cluster: Some(cluster),
            ..HandshakeExpectation::replicas(cluster_id, members)
        }
    }
}

/// Decides whether to accept a [`Hello`]: a pure function.
///
/// Checks, in order: the magic, the version (within
/// [`PROTOCOL_VERSION_MIN`]`..=`[`PROTOCOL_VERSION`], and at least
/// [`PEER_PROTOCOL_VERSION_MIN`] for a replica), the cluster id, the role, then, for a
/// replica where `expected.identity` is set, its identity: the membership first (the most
/// useful difference to name), then the session-table size, then the cluster identity. A
/// joining replica ([`ReplicaIdentity::joining`]) is checked for its session-table size
/// only, and only where `expected.cluster` is set.
pub fn check_hello(hello: &Hello, expected: &HandshakeExpectation) -> Result<(), HandshakeRefusal> {
    check_header(hello, expected)?;
    if matches!(hello.role, PeerRole::Replica(_)) && hello.version < PEER_PROTOCOL_VERSION_MIN {
        return Err(HandshakeRefusal::UnsupportedVersion {
            got: hello.version,
            min: PEER_PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION,
        });
    }
    if let Err(refusal) = check_role(hello, expected) {
        return Err(removed(hello, expected).unwrap_or(refusal));
    }
    match (hello.role, &expected.identity) {
        (PeerRole::Replica(node_id), Some(local)) => match &hello.identity {
            Some(remote) if remote.joining && expected.cluster.is_none() => {
                Err(HandshakeRefusal::Malformed {
                    reason: format!(
                        "replica {node_id} joins the cluster, but this node takes no joining \
                         replica (it is joining itself)"
                    ),
                })
            }
            Some(remote) => check_identity(local, remote),
            None => Err(HandshakeRefusal::MissingIdentity { node_id }),
        },
        _ => Ok(()),
    }
}

/// Compares a connecting replica's identity with this node's, all but the instance id.
/// A joining replica's is compared for its session-table size only: it knows nothing
/// else yet.
pub fn check_identity(
    local: &ReplicaIdentity,
    remote: &ReplicaIdentity,
) -> Result<(), HandshakeRefusal> {
    if remote.joining {
        if remote.sessions_max != local.sessions_max {
            return Err(HandshakeRefusal::SessionsMaxMismatch {
                expected: local.sessions_max,
                got: remote.sessions_max,
            });
        }
        return Ok(());
    }
    if remote.members != local.members {
        return Err(HandshakeRefusal::MembershipMismatch {
            expected: local.members.clone(),
            got: remote.members.clone(),
        });
    }
    if remote.sessions_max != local.sessions_max {
        return Err(HandshakeRefusal::SessionsMaxMismatch {
            expected: local.sessions_max,
            got: remote.sessions_max,
        });
    }
    if remote.cluster_uid != local.cluster_uid {
        return Err(HandshakeRefusal::ClusterUidMismatch {
            expected: local.cluster_uid,
            got: remote.cluster_uid,
        });
    }
    Ok(())
}

fn check_header(hello: &Hello, expected: &HandshakeExpectation) -> Result<(), HandshakeRefusal> {
    if hello.magic != MAGIC {
        return Err(HandshakeRefusal::BadMagic {
            got: hello.magic.to_vec(),
        });
    }
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&hello.version) {
        return Err(HandshakeRefusal::UnsupportedVersion {
            got: hello.version,
            min: PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION,
        });
    }
    if hello.cluster_id != expected.cluster_id {
        return Err(HandshakeRefusal::ClusterMismatch {
            expected: expected.cluster_id.clone(),
            got: hello.cluster_id.clone(),
        });
    }
    Ok(())
}

/// Whether `hello` is from a *newcomer*: a member whose id is not among
/// `expected.replicas`, that knows a later configuration than `expected.configuration`
/// and says where it accepts peer connections. Such a replica was added while this node
/// was down or cut off, so this node admits it (and may link back to it) rather than
/// refuse the very member it needs to catch up from. A replica removed from the cluster
/// knows an earlier configuration than the members that removed it, so they still refuse
/// it.
pub fn is_newcomer(hello: &Hello, expected: &HandshakeExpectation) -> bool {
    let (PeerRole::Replica(node_id), Some(ids), Some(local)) =
        (hello.role, &expected.replicas, expected.configuration)
    else {
        return false;
    };
    match &hello.identity {
        Some(remote) => {
            !ids.contains(&node_id)
                && !remote.joining
                && remote.configuration > local
                && !remote.peer_addr.is_empty()
        }
        None => false,
    }
}

/// Whether `hello` is from a replica that was removed: a member of this cluster (its
/// identity matches this node's, and it has a membership: it is not joining) whose id is
/// not among `expected.replicas`, and that knows a configuration (not 0: a replica that
/// joined has none until it is sent one), but an earlier one than
/// `expected.configuration`. Ids are never reused, and a node that knows a configuration
/// also knows the ones before it, so the connecting replica was a member of an earlier
/// configuration and is not one of the later one. `expected.replicas` holds a removed
/// member until the accepting node has delivered every slot it could vote in, so the
/// removal is in effect: the removed replica may stop.
pub fn is_removed(hello: &Hello, expected: &HandshakeExpectation) -> bool {
    removed(hello, expected).is_some()
}

/// The [`HandshakeRefusal::Removed`] for `hello`, if it is from a removed replica (see
/// [`is_removed`]).
fn removed(hello: &Hello, expected: &HandshakeExpectation) -> Option<HandshakeRefusal> {
    let (PeerRole::Replica(node_id), Some(ids), Some(local), Some(configuration)) = (
        hello.role,
        &expected.replicas,
        &expected.identity,
        expected.configuration,
    ) else {
        return None;
    };
    let remote = hello.identity.as_ref()?;
    let removed = !ids.contains(&node_id)
        && !remote.joining
        && remote.configuration != 0
        && remote.configuration < configuration
        && check_identity(local, remote).is_ok();
    removed.then_some(HandshakeRefusal::Removed {
        node_id,
        configuration,
    })
}

fn check_role(hello: &Hello, expected: &HandshakeExpectation) -> Result<(), HandshakeRefusal> {
    match (hello.role, &expected.replicas) {
        (PeerRole::Client, _) if expected.accept_clients => Ok(()),
        (PeerRole::Replica(node_id), Some(ids)) if !ids.contains(&node_id) => {
            if is_newcomer(hello, expected) {
                return Ok(());
            }
            Err(HandshakeRefusal::UnknownNode { node_id })
        }
        (PeerRole::Replica(_), Some(_)) => Ok(()),
        (got, _) => Err(HandshakeRefusal::UnexpectedRole { got }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> HandshakeExpectation {
        HandshakeExpectation::replicas("prod", [1, 2, 3])
    }

    #[test]
    fn accepts_members_and_clients_where_expected() {
        assert_eq!(
            check_hello(&Hello::new("prod", PeerRole::Replica(2)), &peers()),
            Ok(())
        );
        let clients = HandshakeExpectation::clients("prod");
        assert_eq!(
            check_hello(&Hello::new("prod", PeerRole::Client), &clients),
            Ok(())
        );
    }

    /// A member of a later configuration than this node knows is admitted (it was added
    /// while this node was away); one of the same or an earlier configuration (a removed
    /// member), one that does not say where to reach it, and a joining replica are not.
    #[test]
    fn newcomers_know_a_later_configuration() {
        let identity = |configuration: u64, peer_addr: &str| ReplicaIdentity {
            cluster_uid: Uid([1; 16]),
            instance: Uid([2; 16]),
            members: vec![1, 2, 3],
            sessions_max: 10,
            joining: false,
            configuration,
            peer_addr: peer_addr.into(),
        };
        let mut expected = HandshakeExpectation::replicas_of("prod", identity(5, "h:1"));
        let hello = |id: u64, configuration: u64, addr: &str| {
            Hello::replica("prod", id, identity(configuration, addr))
        };
        let unknown = |h: &Hello, e: &HandshakeExpectation| {
            check_hello(h, e) == Err(HandshakeRefusal::UnknownNode { node_id: 4 })
        };
        // Without a configuration of its own, the node admits members only.
        assert!(!is_newcomer(&hello(4, 6, "h:4"), &expected));
        assert!(unknown(&hello(4, 6, "h:4"), &expected));
        expected.configuration = Some(5);
        assert!(is_newcomer(&hello(4, 6, "h:4"), &expected));
        assert_eq!(check_hello(&hello(4, 6, "h:4"), &expected), Ok(()));
        for refused in [hello(4, 5, "h:4"), hello(4, 9, "")] {
            assert!(!is_newcomer(&refused, &expected), "{refused:?}");
            assert!(unknown(&refused, &expected), "{refused:?}");
        }
        // An earlier configuration: a removed member (see `removed_members_are_told_so`).
        assert!(!is_newcomer(&hello(4, 2, "h:4"), &expected));
        assert!(is_removed(&hello(4, 2, "h:4"), &expected));
        // A member is a member, whatever configuration it knows.
        assert!(!is_newcomer(&hello(2, 9, "h:2"), &expected));
        assert_eq!(check_hello(&hello(2, 1, "h:2"), &expected), Ok(()));
        let joining = Hello::replica("prod", 4, ReplicaIdentity::joining(Uid([3; 16]), 10));
        assert!(!is_newcomer(&joining, &expected));
    }

    /// A member of this cluster that knows an earlier configuration and is not in this
    /// node's is told it was removed; one of another cluster, a joining replica, and a
    /// node whose own configuration is unknown are told "unknown node".
    #[test]
    fn removed_members_are_told_so() {
        let identity = |configuration: u64| ReplicaIdentity {
            cluster_uid: Uid([1; 16]),
            instance: Uid([2; 16]),
            members: vec![1, 2, 3],
            sessions_max: 10,
            joining: false,
            configuration,
            peer_addr: "h:2".into(),
        };
        let mut expected = HandshakeExpectation::replicas_of("prod", identity(6));
        expected.replicas = Some(BTreeSet::from([1, 3, 4]));
        let hello = |configuration: u64| Hello::replica("prod", 2, identity(configuration));
        let unknown = Err(HandshakeRefusal::UnknownNode { node_id: 2 });
        assert_eq!(check_hello(&hello(4), &expected), unknown);
        expected.configuration = Some(6);
        let removed = Err(HandshakeRefusal::Removed {
            node_id: 2,
            configuration: 6,
        });
        assert_eq!(check_hello(&hello(4), &expected), removed);
        assert!(is_removed(&hello(5), &expected));
        // A later configuration: a newcomer, admitted.
        assert_eq!(check_hello(&hello(7), &expected), Ok(()));
        // The same configuration without it cannot be; not "removed" either.
        assert_eq!(check_hello(&hello(6), &expected), unknown);
        // A replica that joined and knows the cluster, but no membership yet: not removed
        // (this node may not know yet that it was added).
        assert_eq!(check_hello(&hello(0), &expected), unknown);
        let mut other = hello(4);
        if let Some(i) = other.identity.as_mut() {
            i.cluster_uid = Uid([9; 16]);
        }
        assert_eq!(check_hello(&other, &expected), unknown);
        let joining = Hello::replica("prod", 2, ReplicaIdentity::joining(Uid([3; 16]), 10));
        assert!(!is_removed(&joining, &expected));
        // A member is never "removed".
        assert!(!is_removed(
            &Hello::replica("prod", 1, identity(1)),
            &expected
        ));
    }

    #[test]
    fn refusals_come_in_order() {
        let mut hello = Hello::new("test", PeerRole::Replica(9));
        hello.magic = *b"HTTP";
        hello.version = 7;
        let check = |h: &Hello| check_hello(h, &peers()).unwrap_err();
        assert!(matches!(check(&hello), HandshakeRefusal::BadMagic { .. }));
        hello.magic = MAGIC;
        assert!(matches!(
            check(&hello),
            HandshakeRefusal::UnsupportedVersion { got: 7, .. }
        ));
        hello.version = PROTOCOL_VERSION;
        assert!(matches!(
            check(&hello),
            HandshakeRefusal::ClusterMismatch { .. }
        ));
        hello.cluster_id = "prod".into();
        assert_eq!(check(&hello), HandshakeRefusal::UnknownNode { node_id: 9 });
        hello.role = PeerRole::Client;
        assert_eq!(
            check(&hello),
            HandshakeRefusal::UnexpectedRole {
                got: PeerRole::Client
            }
        );
        let replica = Hello::new("prod", PeerRole::Replica(1));
        assert_eq!(
            check_hello(&replica, &HandshakeExpectation::clients("prod")),
            Err(HandshakeRefusal::UnexpectedRole {
                got: PeerRole::Replica(1)
            })
        );
    }

    #[test]
    fn refusals_read_well() {
        let bad = HandshakeRefusal::BadMagic {
            got: b"GET ".to_vec(),
        };
        assert_eq!(bad.to_string(), "not a kvs peer (bad magic \"GET \")");
        let version = HandshakeRefusal::UnsupportedVersion {
            got: 2,
            min: 1,
            max: 1,
        };
        assert_eq!(
            version.to_string(),
            "unsupported protocol version 2: the accepting node supports versions 1 to 1"
        );
        let role = HandshakeRefusal::UnexpectedRole {
            got: PeerRole::Replica(4),
        };
        assert!(role
            .to_string()
            .starts_with("a replica 4 is not accepted on this port"));
    }
}
