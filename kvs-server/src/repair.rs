//! Repairing a replica whose log or snapshot is damaged, from its peers.
//!
//! When the log holds damage that a later sync marker proves was synced (a record that may
//! have been acknowledged), or the snapshot cannot be read, the replica refuses to start
//! and names one command: `kvs-server repair --data-dir DIR`. It moves the damaged files
//! aside (nothing is deleted), keeps the snapshot if it reads, and leaves a durable
//! [`MARK_NAME`] file. A replica started on a data dir with that mark runs the core's
//! repair ([`paxos_core::Replica::recover_for_repair`]): it votes for nothing, relearns
//! the chosen log from its peers, and votes again only once what it may have forgotten
//! can no longer matter; then the mark is removed. Every other member must be reachable
//! for the repair to finish (they are asked for their promises).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ServerError;
use crate::storage::WAL_DIR_NAME;

/// The mark of a data dir under repair: while it exists, the replica votes for nothing
/// until the core reports it repaired.
pub const MARK_NAME: &str = "REPAIRING";

/// Whether the data dir `dir` is under repair.
pub fn is_marked(dir: &Path) -> bool {
    dir.join(MARK_NAME).exists()
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_path_buf();
    move |source| ServerError::Io { op, path, source }
}

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// What [`prepare`] did, for the operator.
#[derive(Debug)]
pub struct Prepared {
    /// Where the damaged log was moved, if there was one.
    pub log_moved_to: Option<PathBuf>,
    /// Where an unreadable snapshot was moved, if it was.
    pub snapshot_moved_to: Option<PathBuf>,
}

/// `kvs-server repair`: moves the damaged log (and an unreadable snapshot) of `dir` aside
/// and marks the data dir for repair, durably. The data dir must hold an identity (it is
/// a member's); the caller holds its lock.
pub fn prepare(dir: &Path) -> Result<Prepared, ServerError> {
    if !dir.join(crate::identity::FILE_NAME).exists() {
        return Err(ServerError::NotAMemberDir {
            dir: dir.to_path_buf(),
        });
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut prepared = Prepared {
        log_moved_to: None,
        snapshot_moved_to: None,
    };
    // The mark first: from here on, a start never votes with what is left.
    let mark = dir.join(MARK_NAME);
    let text =
        "this replica lost durable state and votes for nothing until repaired from its peers\n";
    fs::write(&mark, text).map_err(io("write", &mark))?;
    fs::File::open(&mark)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", &mark))?;
    sync_dir(dir)?;
    let wal = dir.join(WAL_DIR_NAME);
    if wal.exists() {
        let aside = aside_path(dir, WAL_DIR_NAME, stamp);
        fs::rename(&wal, &aside).map_err(io("move aside", &wal))?;
        prepared.log_moved_to = Some(aside);
    }
    if crate::snapshot::read_file(dir).is_err() {
        let snap = dir.join(crate::snapshot::FILE_NAME);
        let aside = aside_path(dir, crate::snapshot::FILE_NAME, stamp);
        fs::rename(&snap, &aside).map_err(io("move aside", &snap))?;
        prepared.snapshot_moved_to = Some(aside);
    }
    sync_dir(dir)?;
    Ok(prepared)
}

/// A name for damaged `name` that nothing in `dir` has yet, so moving it aside never
/// replaces an earlier one: `NAME.damaged-SECS`, then `NAME.damaged-SECS-2`, ...
fn aside_path(dir: &Path, name: &str, stamp: u64) -> PathBuf {
    let mut n = 1u32;
    loop {
        let candidate = if n == 1 {
            dir.join(format!("{name}.damaged-{stamp}"))
        } else {
            dir.join(format!("{name}.damaged-{stamp}-{n}"))
        };
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// The repair is over: removes the mark, durably.
pub fn finish(dir: &Path) -> Result<(), ServerError> {
    let mark = dir.join(MARK_NAME);
    match fs::remove_file(&mark) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &mark)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_moves_the_log_aside_and_marks_the_dir() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        assert!(matches!(
            prepare(dir),
            Err(ServerError::NotAMemberDir { .. })
        ));
        fs::write(dir.join(crate::identity::FILE_NAME), "x").unwrap_or_else(|e| panic!("{e}"));
        fs::create_dir(dir.join(WAL_DIR_NAME)).unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join(crate::snapshot::FILE_NAME), "not a snapshot")
            .unwrap_or_else(|e| panic!("{e}"));
        let p = prepare(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(is_marked(dir));
        assert!(!dir.join(WAL_DIR_NAME).exists());
        assert!(p.log_moved_to.is_some_and(|p| p.exists()));
        assert!(p.snapshot_moved_to.is_some_and(|p| p.exists()));
        finish(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!is_marked(dir));
    }

    #[test]
    fn a_second_repair_in_the_same_second_keeps_both_damaged_copies() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        fs::write(dir.join(crate::identity::FILE_NAME), "x").unwrap_or_else(|e| panic!("{e}"));
        let mut moved = Vec::new();
        for content in ["one", "two"] {
            fs::create_dir(dir.join(WAL_DIR_NAME)).unwrap_or_else(|e| panic!("{e}"));
            fs::write(dir.join(crate::snapshot::FILE_NAME), content)
                .unwrap_or_else(|e| panic!("{e}"));
            let p = prepare(dir).unwrap_or_else(|e| panic!("{e}"));
            moved.push((p.log_moved_to, p.snapshot_moved_to));
        }
        assert_ne!(moved[0], moved[1]);
        for (log, snap) in &moved {
            assert!(log.as_ref().is_some_and(|p| p.exists()));
            assert!(snap.as_ref().is_some_and(|p| p.exists()));
        }
        let kept: Vec<String> = moved
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect();
        assert_eq!(kept, ["one", "two"]);
    }
}
