//! `Wal::open`'s work: find the live segments, replay them, repair a torn tail.

use std::path::Path;

use super::dir;
use super::error::{corrupt, io_err, Corruption, WalError};
use super::options::WalOptions;
use super::reader::{read_last_segment_header, read_segment_header, scan_records, HeaderRead};
use super::segment::{segment_file_name, SegmentHeader, SEGMENT_FORMAT_VERSION};
use super::writer::SegmentWriter;
use crate::disk::{Disk, Open};

/// A sealed (no longer appended to) segment, tracked for size accounting and deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedSegment {
    pub sequence: u64,
    pub len_bytes: u64,
}

/// Everything `open` needs to build a `Wal`.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub payloads: Vec<Vec<u8>>,
    pub sealed: Vec<SealedSegment>,
    pub active: SegmentWriter,
    pub chain_crc: u32,
}

/// The segments recovery reads, and the stale ones it deletes afterwards.
#[derive(Debug)]
struct LiveSegments {
    /// Older than the newest superseding segment: obsolete, never read.
    stale: Vec<u64>,
    /// Live segments before the last one, with their (valid) headers.
    sealed: Vec<(u64, SegmentHeader)>,
    /// The last segment.
    last: (u64, HeaderRead),
}

/// Replays the log in `dir` (which exists) and leaves it ready for appending.
pub(crate) fn recover(
    disk: &dyn Disk,
    dir: &Path,
    options: &WalOptions,
) -> Result<Recovered, WalError> {
    let listing = dir::list(disk, dir)?;
    remove_temp_files(disk, dir, &listing.temp_paths)?;
    let Some(&last_sequence) = listing.segment_sequences.last() else {
        let genesis = SegmentHeader {
            sequence: 1,
            chain_seed: 0,
            supersedes: false,
            version: SEGMENT_FORMAT_VERSION,
        };
        return Ok(Recovered {
            payloads: Vec::new(),
            sealed: Vec::new(),
            active: create_segment(disk, dir, genesis, options)?,
            chain_crc: 0,
        });
    };
    let live = find_live_segments(disk, dir, &listing.segment_sequences, last_sequence)?;
    check_contiguous(dir, &live)?;

    let mut payloads = Vec::new();
    let mut sealed = Vec::new();
    let mut chain = 0;
    for (index, &(sequence, header)) in live.sealed.iter().enumerate() {
        let path = dir.join(segment_file_name(sequence));
        check_chain_seed(&path, index == 0, header, chain)?;
        // Not the last segment: any defect is an error, so nothing is ever torn here.
        let scanned = scan_records(disk, &path, &header, false, &mut payloads)?;
        chain = scanned.chain_end;
        sealed.push(SealedSegment {
            sequence,
            len_bytes: scanned.valid_end,
        });
    }

    let (sequence, last_read) = live.last;
    let path = dir.join(segment_file_name(sequence));
    let active = match last_read {
        HeaderRead::Blank => {
            // It cannot hold a record. Recreating it through temp-and-rename replaces
            // the blank file atomically.
            tracing::warn!(path = %path.display(), "WAL segment has no header and no records; recreating it");
            let header = SegmentHeader {
                sequence,
                chain_seed: chain,
                supersedes: false,
                version: SEGMENT_FORMAT_VERSION,
            };
            create_segment(disk, dir, header, options)?
        }
        HeaderRead::Valid(header) => {
            check_chain_seed(&path, live.sealed.is_empty(), header, chain)?;
            let scanned = scan_records(disk, &path, &header, true, &mut payloads)?;
            chain = scanned.chain_end;
            if let Some(reason) = scanned.torn {
                tracing::warn!(
                    path = %path.display(),
                    offset = scanned.valid_end,
                    %reason,
                    "truncating torn WAL tail (never acknowledged)"
                );
                truncate(disk, &path, scanned.valid_end)?;
            }
            if header.version == SEGMENT_FORMAT_VERSION {
                let buffer_bytes = options.write_buffer_bytes;
                SegmentWriter::open_existing(disk, path, sequence, scanned.valid_end, buffer_bytes)?
            } else {
                // A segment of the first format takes no sync markers: the log goes on in
                // a new segment of the current one.
                sealed.push(SealedSegment {
                    sequence,
                    len_bytes: scanned.valid_end,
                });
                let next = SegmentHeader {
                    sequence: sequence + 1,
                    chain_seed: chain,
                    supersedes: false,
                    version: SEGMENT_FORMAT_VERSION,
                };
                create_segment(disk, dir, next, options)?
            }
        }
    };
    // Only now that the live log has replayed cleanly: finish an interrupted rewrite.
    remove_stale_segments(disk, dir, &live.stale)?;
    Ok(Recovered {
        payloads,
        sealed,
        active,
        chain_crc: chain,
    })
}

/// The first live segment starts the chain: a superseding one from its own seed, the
/// genesis segment from 0 (any other first segment means older ones were lost). Every
/// later segment must continue from its predecessor's last checksum.
fn check_chain_seed(
    path: &Path,
    is_first: bool,
    header: SegmentHeader,
    chain: u32,
) -> Result<(), WalError> {
    let expected = match (is_first, header.supersedes) {
        (true, true) => header.chain_seed,
        (true, false) => 0,
        (false, _) => chain,
    };
    if header.chain_seed != expected {
        let reason = Corruption::ChainSeedMismatch {
            expected,
            found: header.chain_seed,
        };
        return Err(corrupt(path, 0, reason));
    }
    Ok(())
}

/// Finds the newest superseding segment: it and everything after it are live, everything
/// before it is stale. Headers are read newest first, stopping there, so stale segments
/// are never read at all (a half-deleted one must not stop the node).
fn find_live_segments(
    disk: &dyn Disk,
    dir: &Path,
    sequences: &[u64],
    last_sequence: u64,
) -> Result<LiveSegments, WalError> {
    let last_path = dir.join(segment_file_name(last_sequence));
    let last_read = read_last_segment_header(disk, &last_path, last_sequence)?;
    let mut sealed = Vec::new();
    let mut base_index = sequences.len() - 1;
    let last_supersedes = matches!(last_read, HeaderRead::Valid(h) if h.supersedes);
    if !last_supersedes {
        base_index = 0;
        for (index, &sequence) in sequences.iter().enumerate().rev().skip(1) {
            let path = dir.join(segment_file_name(sequence));
            let header = read_segment_header(disk, &path, sequence)?;
            sealed.push((sequence, header));
            if header.supersedes {
                base_index = index;
                break;
            }
        }
        sealed.reverse();
    }
    Ok(LiveSegments {
        stale: sequences[..base_index].to_vec(),
        sealed,
        last: (last_sequence, last_read),
    })
}

/// A gap in sequence numbers means a segment was lost.
fn check_contiguous(dir: &Path, live: &LiveSegments) -> Result<(), WalError> {
    let sequences: Vec<u64> = live
        .sealed
        .iter()
        .map(|&(sequence, _)| sequence)
        .chain([live.last.0])
        .collect();
    for pair in sequences.windows(2) {
        let expected = pair[0].saturating_add(1);
        if pair[1] != expected {
            let path = dir.join(segment_file_name(pair[1]));
            return Err(corrupt(&path, 0, Corruption::MissingSegment { expected }));
        }
    }
    Ok(())
}

/// Temp files are segments that were never published: nothing in them was acknowledged.
fn remove_temp_files(
    disk: &dyn Disk,
    dir: &Path,
    temp_paths: &[std::path::PathBuf],
) -> Result<(), WalError> {
    if temp_paths.is_empty() {
        return Ok(());
    }
    for path in temp_paths {
        tracing::info!(path = %path.display(), "removing unpublished WAL segment");
        dir::remove_file(disk, path)?;
    }
    dir::sync_dir(disk, dir)
}

fn remove_stale_segments(disk: &dyn Disk, dir: &Path, stale: &[u64]) -> Result<(), WalError> {
    if stale.is_empty() {
        return Ok(());
    }
    for &sequence in stale {
        let path = dir.join(segment_file_name(sequence));
        tracing::info!(path = %path.display(), "removing WAL segment superseded by a rewrite");
        dir::remove_file(disk, &path)?;
    }
    dir::sync_dir(disk, dir)
}

/// Cuts a torn tail off, durably: later appends must not land behind garbage.
fn truncate(disk: &dyn Disk, path: &Path, len_bytes: u64) -> Result<(), WalError> {
    let mut file = disk
        .open(path, Open::Write)
        .map_err(io_err("open for truncation", path))?;
    file.truncate(len_bytes).map_err(io_err("truncate", path))?;
    // fsync, not fdatasync: the change is to the file's size.
    file.sync_all().map_err(io_err("fsync", path))
}

/// Creates and publishes a segment with no records.
pub(crate) fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    header: SegmentHeader,
    options: &WalOptions,
) -> Result<SegmentWriter, WalError> {
    let mut writer = SegmentWriter::create_temp(disk, dir, header, options.write_buffer_bytes)?;
    writer.publish(disk, dir)?;
    Ok(writer)
}
