//! State-machine snapshots on disk, written and read as streams (a snapshot is never held
//! in memory as a whole: a large store would need twice its size otherwise).
//!
//! Format (little-endian), checked end to end by a trailing CRC32C:
//! ```text
//! magic "KVSSNAP5" | slot u64 | (key len u32 > 0, key, value len u32, value)* in key order
//! | 0u32 (end of keys) | sessions registered u64 | id salt u64 | session count u64
//! | (client u64, last slot u64, floor u64, n u32, (seq u64, len u32, outcome)*)*
//! | membership len u32 | membership log (empty: unknown)
//! | auth len u32 | auth state (wire::AuthStatus)
//! | crc32c u32 over everything before it
//! ```
//! An outcome is a `Result<wire::Reply, wire::ErrorReply>` (a write denied when applied is
//! remembered with its refusal). Earlier formats are still read: "KVSSNAP4" has no auth
//! state (read as auth disabled, no users or roles) and sessions remember replies only;
//! "KVSSNAP3" has no membership either; "KVSSNAP2" has no registration counter, salt or
//! floors (a session's floor is then taken as just below its oldest result if its window is
//! full, else 0).
//! A new snapshot is the previous snapshot file merged with the keys changed since (the
//! state machine's delta), streamed from one file to the next: taking a snapshot never
//! copies the store in memory.
//! A snapshot is written to a temporary file, fsynced, renamed over the previous one, and
//! the directory is fsynced, so a crash leaves either the old or the new snapshot.

mod file;
mod format;
pub mod transfer;

#[cfg(test)]
mod power_cuts;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use file::{install_incoming, publish_incoming, read_file, write_file, write_merged};
pub use format::{
    decode, decode_from, encode, encode_to, SnapshotReader, SnapshotTail, SnapshotWriter,
};

/// The snapshot's file name inside the data directory.
pub const FILE_NAME: &str = "snapshot";
/// Where a snapshot is written before it is renamed over [`FILE_NAME`].
const TEMP_NAME: &str = "snapshot.tmp";
/// Where a snapshot received from a peer is assembled before it is checked and installed.
pub const INCOMING_NAME: &str = "snapshot.incoming";

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("snapshot {op} failed for {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The bytes are not a valid snapshot.
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt {
        /// The file (or the peer it came from).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
