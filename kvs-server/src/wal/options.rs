//! Tuning knobs of a [`Wal`](super::Wal).

/// Default size at which the active segment is sealed and a new one started.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default size of the userspace buffer that collects appends between writes.
pub const WRITE_BUFFER_BYTES_DEFAULT: usize = 256 * 1024;

/// Options for [`Wal::open`](super::Wal::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Once the active segment holds at least this many bytes (header included), the next
    /// append seals it (fdatasync) and starts a new segment. A segment therefore exceeds
    /// this by at most one record; a segment written by `rewrite` may be larger still.
    pub segment_bytes_max: u64,
    /// Appends are collected in a userspace buffer of this size before being written to
    /// the file; `sync` always writes whatever is buffered. A payload at least this large
    /// bypasses the buffer instead of being copied into it.
    pub write_buffer_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
        }
    }
}
