//! The durable identity of a data directory: which cluster it belongs to, as which member,
//! with which membership, and whether it may vote.
//!
//! # Why
//!
//! An acceptor's promises live in its data directory. A replica whose directory was wiped
//! comes back with ballot 0.0 and no accepted values: if it voted, it could help choose a
//! second value for a slot it had already helped to choose. So a directory carries an
//! [`Identity`] file (`IDENTITY`), and a replica votes only with a directory that is known
//! to its peers as the one that made its promises.
//!
//! # The pieces
//!
//! - **Cluster identity** ([`Identity::cluster_uid`]): a 128-bit id derived by
//!   [`cluster_uid`] from the cluster name (`--cluster-id`), the sorted member ids and the
//!   bootstrap token (`--initial-cluster-token`, as etcd names it). Being derived, every
//!   member computes the same id at bootstrap without talking to the others first (there is
//!   no seed member whose absence would block the bootstrap); a new token gives a cluster
//!   re-created on the same members another identity. Once written, the stored id wins:
//!   flags are checked against it, never the other way around.
//! - **Instance id** ([`Identity::instance`]): random, created with the directory. A wiped
//!   or replaced directory has another one, whatever flags it is started with.
//! - **Known instances** ([`Identity::known`]): the instance of every peer, recorded (and
//!   made durable) by this replica the first time the peer connected to it. A peer that
//!   later presents another instance is refused with
//!   [`wire::HandshakeRefusal::MemberReplaced`]: its promises are lost.
//! - **Joined** ([`Identity::joined`]): a directory created by `new` may vote only once a
//!   majority of the *other* members recorded its instance ([`Identity::join_quorum`]). Two
//!   majorities of the others intersect, so the peers that recorded an earlier directory of
//!   this member and the peers a later one would need always share one, which refuses the
//!   later one. (A majority that counted the member itself would not do: its own record is
//!   the one that was lost.) The cost: a `new` directory waits until that many peers are up
//!   once, after which restarts need nobody.
//!
//! - **Joining a running cluster** ([`Origin`]): a directory created by `existing` belongs
//!   to a member added with `kvs-client member add`. It knows neither the cluster identity
//!   nor the bootstrap members: its replica dials the members given in `--peers` with a
//!   *joining* hello, and a member that admits it (its id is in the membership and no other
//!   data dir is recorded for it) records its instance and tells it the cluster identity.
//!   It may take part only once a majority of the other voters recorded it; a member that
//!   knows its id by another data dir refuses it, and then this directory is a member's
//!   lost disk restarted empty: it stops ([`IdentityError::LostData`]).
//!
//! The member ids stored here are the ones the cluster was *bootstrapped* with, which its
//! identity was derived from. The membership itself is replicated state, kept in the
//! snapshot and the log (see [`crate::node`]); once a directory exists, `--peers` no longer
//! decides who is a member.
//!
//! # Bootstrap ([`open`])
//!
//! | data dir | `--initial-cluster-state` | outcome |
//! |---|---|---|
//! | has `IDENTITY` | ignored | the stored identity, if the flags agree with it (cluster name, member id); a difference is named and refused |
//! | empty | `new` (the default) | a new identity with a new instance, written durably before any connection; not joined |
//! | empty | `existing` | a joining identity with a new instance, written durably before any connection; the cluster identity is learned from the members |
//! | log or snapshot, no `IDENTITY` | either | a directory of an earlier version: the configured identity is adopted, joined (it is the directory that made its promises) |
//!
//! The file is text (`key value` lines, readable with `cat`), ends with a CRC32C of all
//! the lines before it, and is replaced atomically: temporary file, fsync, rename, fsync of
//! the directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::RngCore;
use wire::Uid;

/// The file in a data directory that holds its identity.
pub const FILE_NAME: &str = "IDENTITY";
const TEMP_NAME: &str = "IDENTITY.tmp";
const HEADER: &str = "kvs-identity 1";

/// How a replica with an empty data directory is to start (`--initial-cluster-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    /// Bootstrap a new cluster (or join one being bootstrapped): create an identity.
    #[default]
    New,
    /// Join a running cluster as a member added with `kvs-client member add`: the cluster
    /// identity is learned from the members given in `--peers`. A member whose id the
    /// cluster knows by another data directory (its disk was lost) is refused.
    Existing,
}

/// How a data directory came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    /// Created by `--initial-cluster-state new` (or adopted from an earlier version): the
    /// identity was derived from the flags.
    #[default]
    Bootstrapped,
    /// Created by `--initial-cluster-state existing`, and no member has told it the
    /// cluster identity yet (`cluster_uid` is zero, `members` holds this member only).
    Joining,
    /// Created by `--initial-cluster-state existing`, the cluster identity learned from a
    /// member. Until its first snapshot is installed it holds no membership.
    Joined,
}

/// What a data directory knows about itself. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's name (`--cluster-id`), checked by clients and peers.
    pub cluster_name: String,
    /// The cluster identity.
    pub cluster_uid: Uid,
    /// This member's id.
    pub member_id: u64,
    /// This directory's instance id.
    pub instance: Uid,
    /// The member ids, ascending.
    pub members: Vec<u64>,
    /// Whether this directory may vote (see the module docs).
    pub joined: bool,
    /// The instance of each peer, as first seen by this replica.
    pub known: BTreeMap<u64, Uid>,
    /// How the directory came to be.
    pub origin: Origin,
}

/// Why an identity cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file or its directory failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged: a bad checksum or a line that does not parse.
    #[error(
        "{} is damaged ({reason}); refusing to start: this replica cannot prove which \
         member it is. Restore the file from a backup, or replace this member (README: \
         \"a replica whose disk was lost\")",
        .path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data dir was empty (`--initial-cluster-state existing`), and a member knows this
    /// member's id by another data dir: this member lost its data, and with it its promises.
    #[error(
        "data dir {} was empty, but member {peer} knows member {member_id} of cluster \
         \"{cluster}\" by another data dir: member {member_id} has lost its data, and with it \
         the promises it made to the other members, so it must not vote. Leave it stopped: \
         the cluster keeps serving on the other members while a majority of them is up. \
         Replace this member (README: \"replacing a replica whose disk was lost\"): remove \
         id {member_id} and add a new id, rather than restarting it empty. If this is the \
         first start of a new cluster, use --initial-cluster-state new",
        .dir.display()
    )]
    LostData {
        /// The data dir.
        dir: PathBuf,
        /// `--id`.
        member_id: u64,
        /// `--cluster-id`.
        cluster: String,
        /// The member that knows this id by another data dir.
        peer: u64,
    },
    /// The flags disagree with the identity stored in the data dir, which wins.
    #[error(
        "{mismatch}; the data dir's identity ({}) wins over flags: fix the flags, or use \
         another data dir",
        .file.display()
    )]
    FlagsDisagree {
        /// The identity file.
        file: PathBuf,
        /// What differs.
        mismatch: Mismatch,
    },
    /// A peer refused this replica: it knows this member by another data dir, so this
    /// replica's promises are lost and it must not vote.
    #[error("peer {peer} refused this replica: {refusal}")]
    ReplacedAtPeer {
        /// The refusing peer.
        peer: u64,
        /// Its refusal.
        refusal: wire::HandshakeRefusal,
    },
    /// An updated identity could not be written durably. Retrying is not safe (after a
    /// failed fsync the kernel may have dropped the data), so the replica stops.
    #[error("cannot record the cluster identity: {}: {source}", .path.display())]
    Record {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What differs between the flags and a stored identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// `--id` names another member.
    #[error("--id is {flag}, but this data dir belongs to member {stored}")]
    Member {
        /// `--id`.
        flag: u64,
        /// The stored member id.
        stored: u64,
    },
    /// `--cluster-id` names another cluster.
    #[error("--cluster-id is \"{flag}\", but this data dir belongs to cluster \"{stored}\"")]
    Cluster {
        /// `--cluster-id`.
        flag: String,
        /// The stored cluster name.
        stored: String,
    },
}

/// What the flags say about the cluster, to bootstrap or check an identity with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// `--cluster-id`.
    pub cluster_name: String,
    /// `--id`.
    pub member_id: u64,
    /// The ids of `--peers`, ascending.
    pub members: Vec<u64>,
    /// `--initial-cluster-token`; the cluster name when not given.
    pub token: Option<String>,
    /// `--initial-cluster-state`; `new` when not given.
    pub state: Option<InitialClusterState>,
}

/// How [`open`] came by the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Read from the data directory.
    Stored,
    /// Created for an empty directory with `new`.
    Bootstrapped,
    /// Created for a directory of an earlier version that has a log or a snapshot.
    Adopted,
    /// Created for an empty directory with `existing`: it joins a running cluster.
    Joining,
}

/// Derives the cluster identity: FNV-1a (128 bits) over a version tag, the name, the
/// sorted member ids and the token. Stable across builds and platforms (it is stored).
pub fn cluster_uid(name: &str, members: &[u64], token: &str) -> Uid {
    let mut text = format!("kvs-cluster-v1\0{name}\0");
    for id in members {
        let _ = write!(text, "{id},");
    }
    text.push('\0');
    text.push_str(token);
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in text.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    Uid(hash.to_be_bytes())
}

/// A random instance id.
pub fn random_uid() -> Uid {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    Uid(bytes)
}

impl Identity {
    /// How many other members must record this directory before it may vote: a majority
    /// of the others (none for a single-member cluster).
    pub fn join_quorum(&self) -> usize {
        let others = self.members.len().saturating_sub(1);
        if others == 0 {
            0
        } else {
            others / 2 + 1
        }
    }

    /// What this replica states in its peer handshake. The configuration it knows and its
    /// peer address are the links' to fill in ([`crate::net::peers::Dialer`]).
    pub fn wire(&self, sessions_max: usize) -> wire::ReplicaIdentity {
        if self.origin == Origin::Joining {
            return wire::ReplicaIdentity::joining(self.instance, sessions_max as u64);
        }
        wire::ReplicaIdentity {
            cluster_uid: self.cluster_uid,
            instance: self.instance,
            members: self.members.clone(),
            sessions_max: sessions_max as u64,
            joining: false,
            configuration: 0,
            peer_addr: String::new(),
        }
    }

    /// The file's text, checksum line included.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{HEADER}");
        let _ = writeln!(s, "cluster_name {}", self.cluster_name);
        let _ = writeln!(s, "cluster_uid {}", self.cluster_uid);
        let _ = writeln!(s, "member_id {}", self.member_id);
        let _ = writeln!(s, "instance {}", self.instance);
        let ids: Vec<String> = self.members.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "members {}", ids.join(","));
        let _ = writeln!(s, "joined {}", self.joined);
        for (id, uid) in &self.known {
            let _ = writeln!(s, "known {id} {uid}");
        }
        // Absent for a bootstrapped directory, as in the files of earlier versions.
        match self.origin {
            Origin::Bootstrapped => {}
            Origin::Joining => {
                let _ = writeln!(s, "origin joining");
            }
            Origin::Joined => {
                let _ = writeln!(s, "origin joined");
            }
        }
        let crc = crc32c::crc32c(s.as_bytes());
        let _ = writeln!(s, "crc32c {crc:08x}");
        s
    }

    /// Parses the file's text; the error says what is wrong.
    pub fn decode(text: &str) -> Result<Identity, String> {
        // The checksum line is the last line, exactly; the body is everything before it.
        let without_newline = text
            .strip_suffix('\n')
            .ok_or("no final newline (truncated?)")?;
        let body_end = without_newline
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("too short")?;
        let (body, last) = text.split_at(body_end);
        if !last.starts_with("crc32c ") {
            return Err("no checksum line at the end (truncated?)".into());
        }
        if last != format!("crc32c {:08x}\n", crc32c::crc32c(body.as_bytes())) {
            return Err("checksum mismatch".into());
        }
        // Split at '\n' only, as `encode` writes: `str::lines` would also drop a '\r' ending
        // a value (a cluster name may end with one).
        let mut lines = body.split_terminator('\n');
        if lines.next() != Some(HEADER) {
            return Err(format!("the first line is not {HEADER:?}"));
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        let mut known = BTreeMap::new();
        for line in lines {
            let (key, value) = line.split_once(' ').ok_or(format!("bad line {line:?}"))?;
            if key == "known" {
                let (id, uid) = value.split_once(' ').ok_or(format!("bad line {line:?}"))?;
                known.insert(parse_id(id)?, uid.parse()?);
            } else if fields.insert(key, value).is_some() {
                return Err(format!("{key} appears twice"));
            }
        }
        let mut field = |k: &str| fields.remove(k).ok_or(format!("{k} is missing"));
        let members = field("members")?
            .split(',')
            .map(parse_id)
            .collect::<Result<Vec<u64>, String>>()?;
        if members.is_empty() || members.windows(2).any(|w| w[0] >= w[1]) {
            return Err("members are not distinct and ascending".into());
        }
        let identity = Identity {
            cluster_name: field("cluster_name")?.to_owned(),
            cluster_uid: field("cluster_uid")?.parse()?,
            member_id: parse_id(field("member_id")?)?,
            instance: field("instance")?.parse()?,
            joined: match field("joined")? {
                "true" => true,
                "false" => false,
                other => return Err(format!("joined is {other:?}")),
            },
            members,
            known,
            origin: match fields.remove("origin") {
                None => Origin::Bootstrapped,
                Some("joining") => Origin::Joining,
                Some("joined") => Origin::Joined,
                Some(other) => return Err(format!("origin is {other:?}")),
            },
        };
        if let Some(extra) = fields.keys().next() {
            return Err(format!("unknown field {extra}"));
        }
        Ok(identity)
    }

    /// Reads the identity of `dir`: `None` if it has no identity file.
    pub fn read(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        Identity::read_on(&crate::disk::RealDisk, dir)
    }

    /// [`Identity::read`] on `disk`.
    pub fn read_on(
        disk: &dyn crate::disk::Disk,
        dir: &Path,
    ) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(FILE_NAME);
        let bytes = match disk.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Err(IdentityError::Corrupt {
                path,
                reason: "not UTF-8".into(),
            });
        };
        Identity::decode(&text)
            .map(Some)
            .map_err(|reason| IdentityError::Corrupt { path, reason })
    }

    /// Writes the identity of `dir` durably: a temporary file, fsync, rename, fsync of
    /// the directory. When this returns `Ok`, a crash cannot lose it.
    pub fn write(&self, dir: &Path) -> Result<(), IdentityError> {
        self.write_on(&crate::disk::RealDisk, dir)
    }

    /// [`Identity::write`] on `disk`.
    pub fn write_on(&self, disk: &dyn crate::disk::Disk, dir: &Path) -> Result<(), IdentityError> {
        let tmp = dir.join(TEMP_NAME);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let mut file = disk
            .open(&tmp, crate::disk::Open::Truncate)
            .map_err(io(&tmp))?;
        file.append(self.encode().as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        let path = dir.join(FILE_NAME);
        disk.rename(&tmp, &path).map_err(io(&path))?;
        disk.sync_dir(dir).map_err(io(dir))
    }
}

fn parse_id(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a node id"))
}

/// Whether `dir` holds a log or a snapshot (the files an earlier version wrote).
pub fn has_data(dir: &Path) -> Result<bool, IdentityError> {
    let io = |path: PathBuf| move |source| IdentityError::Io { path, source };
    if dir.join(crate::snapshot::FILE_NAME).exists() {
        return Ok(true);
    }
    let wal = dir.join(crate::storage::WAL_DIR_NAME);
    match std::fs::read_dir(&wal) {
        Ok(mut entries) => Ok(entries.next().transpose().map_err(io(wal))?.is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(IdentityError::Io {
            path: wal,
            source: e,
        }),
    }
}

/// Opens the identity of `dir` as the table in the [module docs](self) says: reads it and
/// checks it against the flags, or creates and writes it. Call before the log is opened
/// (opening it creates files) and before any connection.
pub fn open(dir: &Path, flags: &Bootstrap) -> Result<(Identity, Opened), IdentityError> {
    if let Some(stored) = Identity::read(dir)? {
        check_stored(&stored, flags, dir)?;
        return Ok((stored, Opened::Stored));
    }
    let legacy = has_data(dir)?;
    if !legacy && flags.state == Some(InitialClusterState::Existing) {
        let identity = Identity {
            cluster_name: flags.cluster_name.clone(),
            cluster_uid: Uid::default(),
            member_id: flags.member_id,
            instance: random_uid(),
            members: vec![flags.member_id],
            joined: false,
            known: BTreeMap::new(),
            origin: Origin::Joining,
        };
        identity.write(dir)?;
        return Ok((identity, Opened::Joining));
    }
    let token = flags.token.as_deref().unwrap_or(&flags.cluster_name);
    let mut identity = Identity {
        cluster_name: flags.cluster_name.clone(),
        cluster_uid: cluster_uid(&flags.cluster_name, &flags.members, token),
        member_id: flags.member_id,
        instance: random_uid(),
        members: flags.members.clone(),
        joined: legacy,
        known: BTreeMap::new(),
        origin: Origin::Bootstrapped,
    };
    identity.joined |= identity.join_quorum() == 0;
    identity.write(dir)?;
    let how = if legacy {
        Opened::Adopted
    } else {
        Opened::Bootstrapped
    };
    Ok((identity, how))
}

/// The member id and cluster name must agree. The member ids of `--peers` are not
/// compared: once the directory exists, the membership comes from its snapshot and log.
fn check_stored(stored: &Identity, flags: &Bootstrap, dir: &Path) -> Result<(), IdentityError> {
    let mismatch = if stored.member_id != flags.member_id {
        Mismatch::Member {
            flag: flags.member_id,
            stored: stored.member_id,
        }
    } else if stored.cluster_name != flags.cluster_name {
        Mismatch::Cluster {
            flag: flags.cluster_name.clone(),
            stored: stored.cluster_name.clone(),
        }
    } else {
        return Ok(());
    };
    Err(IdentityError::FlagsDisagree {
        file: dir.join(FILE_NAME),
        mismatch,
    })
}

/// What the peer links report to the replica about identities.
#[derive(Debug)]
pub enum LinkEvent {
    /// A peer accepted this replica's handshake, so it has recorded this directory's
    /// instance durably (acceptance is sent only after that).
    Admitted(u64),
    /// This replica must stop: a peer knows this member by another data directory
    /// ([`IdentityError::ReplacedAtPeer`]), or the identity file could not be written
    /// ([`IdentityError::Record`]).
    Fatal(IdentityError),
    /// A peer refused this replica as not a member of the cluster: a replica whose removal
    /// was chosen learns this way that the removal is in effect at that peer.
    NotAMember(u64),
    /// A peer refused this replica as removed from the cluster: it knows a later
    /// configuration without this replica, and has delivered every slot this replica
    /// could still vote in ([`wire::HandshakeRefusal::Removed`]).
    Removed {
        /// The peer that said so.
        peer: u64,
        /// The configuration it knows.
        configuration: u64,
    },
}

/// The identity of a running replica, shared by its peer links: it records the instances
/// of peers as they connect and refuses a peer that presents another one.
#[derive(Debug)]
pub struct IdentityStore {
    dir: PathBuf,
    identity: std::sync::Mutex<Identity>,
    events: tokio::sync::mpsc::UnboundedSender<LinkEvent>,
}

impl IdentityStore {
    /// Wraps the identity of `dir` (as [`open`] returned it); reports go to `events`.
    pub fn new(
        dir: PathBuf,
        identity: Identity,
        events: tokio::sync::mpsc::UnboundedSender<LinkEvent>,
    ) -> Self {
        IdentityStore {
            dir,
            identity: std::sync::Mutex::new(identity),
            events,
        }
    }

    /// A copy of the current identity.
    pub fn snapshot(&self) -> Identity {
        self.lock().clone()
    }

    /// Reports an event of the peer links to the replica.
    pub fn report(&self, event: LinkEvent) {
        // The replica is gone if nobody listens; nothing is left to tell.
        let _ = self.events.send(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Identity> {
        // The identity is replaced whole, so a panic elsewhere cannot leave it half-updated.
        self.identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides whether peer `peer` presenting data dir `instance` may connect: yes if it is
    /// the instance recorded for it, or if none is recorded yet, in which case it is
    /// recorded durably first. Blocks on the file write; call from a blocking context.
    pub fn admit(&self, peer: u64, instance: Uid) -> Result<(), wire::HandshakeRefusal> {
        let mut identity = self.lock();
        let known = if peer == identity.member_id {
            // Someone else claims to be this member; nothing about it is to be trusted.
            Some(identity.instance)
        } else {
            identity.known.get(&peer).copied()
        };
        match known {
            Some(known) if known == instance && peer != identity.member_id => Ok(()),
            Some(known) => Err(wire::HandshakeRefusal::MemberReplaced {
                node_id: peer,
                known,
                got: instance,
            }),
            None => {
                let mut next = identity.clone();
                next.known.insert(peer, instance);
                self.replace(&mut identity, next)
                    .map_err(|e| wire::HandshakeRefusal::Other {
                        code: 0,
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Marks this directory as allowed to vote, durably.
    pub fn mark_joined(&self) -> Result<(), IdentityError> {
        let mut identity = self.lock();
        let mut next = identity.clone();
        next.joined = true;
        self.replace(&mut identity, next)
    }

    /// Records durably what a member told this joining directory: the cluster identity and
    /// the bootstrap members; it may take part from now on (a majority of the other voters
    /// recorded it).
    pub fn learned_cluster(&self, cluster: &wire::ClusterInfo) -> Result<(), IdentityError> {
        let mut identity = self.lock();
        let mut next = identity.clone();
        next.cluster_uid = cluster.cluster_uid;
        next.members = cluster.members.clone();
        next.origin = Origin::Joined;
        next.joined = true;
        self.replace(&mut identity, next)
    }

    /// Whether `id` has connected to this replica with a data dir of its own at some point
    /// (so that its id was used, and must not be given to another data dir).
    pub fn knows(&self, id: u64) -> bool {
        self.lock().known.contains_key(&id)
    }

    /// Writes `next` and makes it current. A failed write stops the replica: after a failed
    /// fsync the kernel may have dropped the data, so retrying is not safe. The error is
    /// returned, and reported to the replica as [`LinkEvent::Fatal`].
    fn replace(&self, current: &mut Identity, next: Identity) -> Result<(), IdentityError> {
        match next.write(&self.dir) {
            Ok(()) => {
                *current = next;
                Ok(())
            }
            Err(e) => {
                let (path, source) = match e {
                    IdentityError::Io { path, source } => (path, source),
                    other => (
                        self.dir.join(FILE_NAME),
                        std::io::Error::other(other.to_string()),
                    ),
                };
                // The replica hears of it too (an io::Error cannot be cloned: its kind and
                // text are).
                self.report(LinkEvent::Fatal(IdentityError::Record {
                    path: path.clone(),
                    source: std::io::Error::new(source.kind(), source.to_string()),
                }));
                Err(IdentityError::Record { path, source })
            }
        }
    }
}

#[cfg(test)]
mod tests;
