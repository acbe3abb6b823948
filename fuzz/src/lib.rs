//! Fuzz targets of every decoder that reads bytes from outside: see `fuzz/README.md`.
//!
//! [`run`] wraps each target: it records the largest single allocation made while the
//! input is decoded and fails if it exceeds what the input's length allows, so that a
//! hostile length field cannot make a decoder reserve memory out of proportion.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "checks.rs"]
pub mod checks;

/// Largest single allocation allowed while decoding an input of `len` bytes: fixed read
/// buffers (the snapshot and backup readers use up to 1 MiB) plus 64 times the input.
pub fn allocation_bound(len: usize) -> usize {
    (4 << 20) + len.saturating_mul(64)
}

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a size is recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `check` on `data`, then fails if any single allocation during it was larger than
/// [`allocation_bound`] of the input's length.
pub fn run(check: fn(&[u8]), data: &[u8]) {
    LARGEST.store(0, Ordering::Relaxed);
    check(data);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= allocation_bound(data.len()),
        "an input of {} bytes made an allocation of {largest} bytes",
        data.len()
    );
}
