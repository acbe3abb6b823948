//! An exclusive lock on a data directory, so that two servers never share one.

use std::fs::{File, OpenOptions};
use std::path::Path;

use fs4::TryLockError;

use crate::error::ServerError;

/// The lock file inside a data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Holds the lock on a data directory until dropped (or the process ends: the kernel
/// releases an advisory `flock` with the last descriptor of the file).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` without waiting: an error names the directory if another
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, ServerError> {
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ServerError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
        // Called through the trait: std's own `File::try_lock` needs a newer Rust.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(ServerError::DataDirLocked {
                dir: dir.to_path_buf(),
                lock: path,
            }),
            Err(TryLockError::Error(source)) => Err(ServerError::Io {
                op: "lock",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = DirLock::acquire(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let second = DirLock::acquire(dir.path());
        assert!(
            matches!(&second, Err(ServerError::DataDirLocked { dir: d, .. }) if d == dir.path()),
            "{second:?}"
        );
        drop(first);
        assert!(DirLock::acquire(dir.path()).is_ok());
    }
}
