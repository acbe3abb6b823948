//! `kvs-server restore`: bootstraps the data dir of a member of a new cluster from a backup
//! file (`kvs-client snapshot save`), as `etcdutl snapshot restore` does.
//!
//! 1. The whole file is checked first (header, length, checksum); a damaged file is
//!    refused, naming it, before anything is written.
//! 2. The data dir must be absent or empty.
//! 3. The snapshot is copied out of the file, its keys and sessions as they are, with a
//!    fresh membership: the members of `--peers`, each a voter, as a bootstrap records it.
//! 4. The identity is the one a bootstrap writes (not joined: the member votes once a
//!    majority of the others recorded its data dir), with a new cluster identity derived
//!    from the cluster name, the member ids and the token mixed with the backup's checksum
//!    and slot. Every member restored from the same file with the same flags derives the
//!    same one, and it differs from the identity of the cluster the backup came from, so
//!    the two can never be taken for each other.
//!
//! Everything is written into a temporary directory beside the data dir, fsynced, and
//! renamed into place (over an empty data dir) with the parent directory fsynced: a crash
//! leaves either no data dir or a whole one.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use paxos_core::NodeId;
use std::collections::BTreeMap;
use wire::backup::{BackupError, BackupHeader};

use crate::identity::{self, Identity, IdentityError, Origin};
use crate::snapshot::{self, SnapshotError, SnapshotReader, SnapshotWriter};

/// What to restore, from the flags.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The backup file.
    pub from: PathBuf,
    /// The new member's data dir (absent or empty).
    pub data_dir: PathBuf,
    /// The new member's id, one of `peers`.
    pub id: NodeId,
    /// Every member of the new cluster and its peer address.
    pub peers: BTreeMap<NodeId, String>,
    /// Client addresses of the members, recorded in the membership.
    pub client_addrs: BTreeMap<NodeId, String>,
    /// The new cluster's name (`--cluster-id`).
    pub cluster_name: String,
    /// `--initial-cluster-token`; the cluster name when not given.
    pub token: Option<String>,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The backup's header.
    pub header: BackupHeader,
    /// The new cluster's identity.
    pub cluster_uid: wire::Uid,
    /// The snapshot's size in the data dir.
    pub snapshot_bytes: u64,
}

/// Why a restore failed; nothing is left in the data dir then.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup file is damaged, truncated or not a backup.
    #[error("backup file {}: {source}; nothing was written", .path.display())]
    Backup {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: BackupError,
    },
    /// The snapshot inside the backup does not read, or disagrees with the header.
    #[error("backup file {}: the snapshot inside is invalid: {reason}; nothing was written", .path.display())]
    Body {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data dir holds something.
    #[error(
        "data dir {} is not empty (it holds {entry}): restore only bootstraps a new, empty \
         data dir; nothing was written",
        .dir.display()
    )]
    NotEmpty {
        /// The data dir.
        dir: PathBuf,
        /// One of its entries.
        entry: String,
    },
    /// `--id` is not in `--peers`.
    #[error("--id {id} is not one of the members of --peers")]
    NotAMember {
        /// `--id`.
        id: NodeId,
    },
    /// The membership cannot be built from the flags.
    #[error("invalid membership: {0}")]
    Membership(String),
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Writing the identity failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RestoreError {
    let path = path.to_path_buf();
    move |source| RestoreError::Io { op, path, source }
}

/// The cluster identity of a cluster restored from the backup `header`: every member
/// restored from the same file with the same flags derives the same one.
pub fn restored_cluster_uid(
    cluster_name: &str,
    members: &[NodeId],
    token: &str,
    header: &BackupHeader,
) -> wire::Uid {
    let token = format!(
        "{token}\0restored from backup {:08x} of slot {} of cluster {}",
        header.body_crc32c, header.slot, header.cluster_uid
    );
    identity::cluster_uid(cluster_name, members, &token)
}

/// Checks the backup file in full and returns its header; nothing else is read into memory.
pub fn verify_file(path: &Path) -> Result<BackupHeader, RestoreError> {
    let backup = |source| RestoreError::Backup {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| backup(BackupError::Io(e)))?;
    wire::backup::verify(BufReader::with_capacity(1 << 20, file)).map_err(backup)
}

/// Restores as the [module docs](self) say.
pub fn restore(o: &RestoreOptions) -> Result<Restored, RestoreError> {
    if !o.peers.contains_key(&o.id) {
        return Err(RestoreError::NotAMember { id: o.id });
    }
    let header = verify_file(&o.from)?;
    check_empty(&o.data_dir)?;
    let members: Vec<NodeId> = o.peers.keys().copied().collect();
    let membership = crate::node::initial_membership(&members, &o.peers, &o.client_addrs)
        .map_err(|e| RestoreError::Membership(e.to_string()))?;
    let token = o.token.as_deref().unwrap_or(&o.cluster_name);
    let cluster_uid = restored_cluster_uid(&o.cluster_name, &members, token, &header);
    let mut ident = Identity {
        cluster_name: o.cluster_name.clone(),
        cluster_uid,
        member_id: o.id,
        instance: identity::random_uid(),
        members,
        joined: false,
        known: BTreeMap::new(),
        origin: Origin::Bootstrapped,
    };
    ident.joined = ident.join_quorum() == 0;
    let tmp = temp_dir(&o.data_dir)?;
    let written = write_dir(o, &tmp, &header, &membership, &ident);
    let snapshot_bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    publish(&tmp, &o.data_dir)?;
    Ok(Restored {
        header,
        cluster_uid,
        snapshot_bytes,
    })
}

/// Refuses a data dir that holds anything.
fn check_empty(dir: &Path) -> Result<(), RestoreError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(entry) => {
                let entry = entry.map_err(io_err("read", dir))?;
                Err(RestoreError::NotEmpty {
                    dir: dir.to_path_buf(),
                    entry: entry.file_name().to_string_lossy().into_owned(),
                })
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("read", dir)(e)),
    }
}

/// A new, empty temporary directory beside `dir` (a leftover of an interrupted restore is
/// removed first).
fn temp_dir(dir: &Path) -> Result<PathBuf, RestoreError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_owned());
    let parent = parent_of(dir);
    fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
    let tmp = parent.join(format!(".{name}.restoring"));
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp)(e)),
    }
    fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    Ok(tmp)
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes the snapshot and the identity into `tmp`, durably; returns the snapshot's size.
fn write_dir(
    o: &RestoreOptions,
    tmp: &Path,
    header: &BackupHeader,
    membership: &paxos_core::MembershipLog,
    ident: &Identity,
) -> Result<u64, RestoreError> {
    let bytes = copy_snapshot(&o.from, header, &tmp.join(snapshot::FILE_NAME), membership)?;
    ident.write(tmp)?;
    File::open(tmp)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", tmp))?;
    Ok(bytes)
}

/// Copies the snapshot in the backup at `from` to `to`, with `membership` in place of the
/// one it had; checks it against the header.
fn copy_snapshot(
    from: &Path,
    header: &BackupHeader,
    to: &Path,
    membership: &paxos_core::MembershipLog,
) -> Result<u64, RestoreError> {
    let body = |reason: String| RestoreError::Body {
        path: from.to_path_buf(),
        reason,
    };
    let mut input =
        BufReader::with_capacity(1 << 20, File::open(from).map_err(io_err("open", from))?);
    BackupHeader::read_from(&mut input).map_err(|source| RestoreError::Backup {
        path: from.to_path_buf(),
        source,
    })?;
    let mut reader = SnapshotReader::new(input.take(header.body_bytes), from)
        .map_err(|e| body(e.to_string()))?;
    if reader.slot != header.slot {
        return Err(body(format!(
            "it covers slot {}, the header says {}",
            reader.slot, header.slot
        )));
    }
    let file = File::create(to).map_err(io_err("create", to))?;
    let mut writer = SnapshotWriter::new(BufWriter::with_capacity(1 << 20, file), header.slot)
        .map_err(io_err("write", to))?;
    let mut keys = 0u64;
    while let Some((k, v)) = reader.next_entry().map_err(|e| body(e.to_string()))? {
        writer.entry(&k, &v).map_err(|e| body(e.to_string()))?;
        keys += 1;
    }
    // The sessions and the auth state carry over; the membership is the new cluster's.
    let tail = reader.finish().map_err(|e| body(e.to_string()))?;
    if keys != header.keys {
        return Err(body(format!(
            "it holds {keys} keys, the header says {}",
            header.keys
        )));
    }
    let (mut out, bytes) = writer
        .finish(&tail.sessions, Some(membership), &tail.auth)
        .map_err(io_err("write", to))?;
    out.flush().map_err(io_err("write", to))?;
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", to)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", to))?;
    Ok(bytes)
}

/// Renames the complete temporary dir to `dir` (absent or empty) and fsyncs the parent.
fn publish(tmp: &Path, dir: &Path) -> Result<(), RestoreError> {
    if let Err(e) = fs::rename(tmp, dir) {
        let _ = fs::remove_dir_all(tmp);
        return Err(io_err("rename the restored data dir to", dir)(e));
    }
    let parent = parent_of(dir);
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", &parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::StateMachine;

    /// A backup file of `sm` at `path`.
    fn backup_of(sm: &StateMachine, path: &Path) -> BackupHeader {
        let body = snapshot::encode(sm).expect("encodes");
        let header = BackupHeader {
            version: wire::backup::VERSION,
            cluster_uid: wire::Uid([3; 16]),
            cluster_name: "old".into(),
            slot: sm.applied(),
            keys: sm.len() as u64,
            body_bytes: body.len() as u64,
            body_crc32c: wire::backup::crc32c_append(wire::backup::body_crc32c_start(), &body),
        };
        let mut bytes = header.encode().expect("encodes");
        bytes.extend_from_slice(&body);
        fs::write(path, bytes).expect("write");
        header
    }

    fn store() -> StateMachine {
        let mut data = BTreeMap::new();
        for i in 0..50u32 {
            data.insert(
                format!("key-{i:03}").into_bytes().into(),
                format!("value-{i}").into_bytes().into(),
            );
        }
        StateMachine::from_parts(77, data, Default::default())
    }

    fn options(dir: &Path, from: &Path, id: NodeId) -> RestoreOptions {
        let peers = (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        RestoreOptions {
            from: from.to_path_buf(),
            data_dir: dir.join(format!("node-{id}")),
            id,
            peers,
            client_addrs: BTreeMap::new(),
            cluster_name: "kvs".into(),
            token: None,
        }
    }

    #[test]
    fn every_member_restores_the_same_data_under_one_new_cluster_identity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = tmp.path().join("backup.kvs");
        let header = backup_of(&store(), &from);
        let mut uids = Vec::new();
        for id in 1..=3 {
            let o = options(tmp.path(), &from, id);
            let restored = restore(&o).expect("restores");
            let sm = snapshot::read_file(&o.data_dir)
                .expect("reads")
                .expect("a snapshot");
            assert_eq!(sm.applied(), 77);
            assert_eq!(sm.len(), 50);
            let voters: Vec<NodeId> = sm
                .membership()
                .expect("membership")
                .latest()
                .voters()
                .collect();
            assert_eq!(voters, vec![1, 2, 3]);
            let ident = Identity::read(&o.data_dir)
                .expect("reads")
                .expect("identity");
            assert_eq!(ident.member_id, id);
            assert!(!ident.joined);
            assert_eq!(ident.cluster_uid, restored.cluster_uid);
            uids.push(ident.cluster_uid);
        }
        assert!(uids.windows(2).all(|w| w[0] == w[1]), "{uids:?}");
        let bootstrapped = identity::cluster_uid("kvs", &[1, 2, 3], "kvs");
        assert_ne!(
            uids[0], bootstrapped,
            "not the identity of a plain bootstrap"
        );
        assert_ne!(uids[0], header.cluster_uid);
    }

    #[test]
    fn a_non_empty_data_dir_or_a_damaged_file_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = tmp.path().join("backup.kvs");
        backup_of(&store(), &from);
        let o = options(tmp.path(), &from, 1);
        fs::create_dir_all(&o.data_dir).expect("mkdir");
        fs::write(o.data_dir.join("something"), b"x").expect("write");
        let err = restore(&o).expect_err("not empty");
        assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("something"), "{err}");

        let bytes = fs::read(&from).expect("read");
        let cut = tmp.path().join("cut.kvs");
        fs::write(&cut, &bytes[..bytes.len() - 10]).expect("write");
        let o = options(tmp.path(), &cut, 2);
        let err = restore(&o).expect_err("truncated");
        assert!(err.to_string().contains("cut.kvs"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(!o.data_dir.exists(), "nothing written");
    }

    #[test]
    fn an_id_outside_the_peers_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = tmp.path().join("backup.kvs");
        backup_of(&store(), &from);
        let err = restore(&options(tmp.path(), &from, 9)).expect_err("not a member");
        assert!(matches!(err, RestoreError::NotAMember { id: 9 }));
    }
}
