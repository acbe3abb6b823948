//! `kvs-client snapshot save FILE` and `kvs-client snapshot status FILE`: backups.
//!
//! `save` streams a consistent snapshot from the leader chunk by chunk into a temporary
//! file beside FILE, behind a header (see [`kvs_client::backup`]) whose checksum and length
//! are filled in at the end; the file is then checked in full, fsynced, renamed to FILE and
//! the directory fsynced: FILE is either absent, the previous one, or a whole backup.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvs_client::backup::{self, BackupHeader};
use kvs_client::{Client, SnapshotSource};
use serde_json::json;

use super::args::SnapshotCommand;
use super::commands::{fail, print_json, EXIT_OK, EXIT_USAGE};

/// Exit code of a backup file that cannot be written.
const EXIT_WRITE_FAILED: u8 = 1;

/// The least time `snapshot save` gives the leader to prepare the snapshot, and each
/// chunk, whatever `--timeout-ms` says (a large store takes seconds to snapshot).
const STEP_MIN: Duration = Duration::from_secs(60);

/// How often the progress line is redrawn at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Runs a `snapshot` subcommand; returns the exit code.
pub async fn run(client: &Client, command: SnapshotCommand, json: bool) -> u8 {
    match command {
        SnapshotCommand::Save { file } => save(client, &file, json).await,
        SnapshotCommand::Status { file } => status(&file, json),
    }
}

/// `snapshot status FILE`.
fn status(path: &Path, json: bool) -> u8 {
    let header = match verify(path) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if json {
        print_json(&json!({
            "file": path.display().to_string(),
            "format_version": header.version,
            "cluster_name": header.cluster_name,
            "cluster_uid": header.cluster_uid.to_string(),
            "slot": header.slot,
            "keys": header.keys,
            "bytes": header.body_bytes,
            "file_bytes": file_bytes,
            "checksum": checksum(&header),
        }));
    } else {
        println!("file            {}", path.display());
        println!("format version  {}", header.version);
        println!(
            "cluster         {} ({})",
            header.cluster_name, header.cluster_uid
        );
        println!("slot            {}", header.slot);
        println!("keys            {}", header.keys);
        println!("bytes           {} (file {file_bytes})", header.body_bytes);
        println!("checksum        {}", checksum(&header));
    }
    EXIT_OK
}

fn checksum(header: &BackupHeader) -> String {
    format!("crc32c:{:08x}", header.body_crc32c)
}

/// Checks the whole backup at `path`; the error names the file and what is wrong.
fn verify(path: &Path) -> Result<BackupHeader, String> {
    let named = |e: &dyn std::fmt::Display| format!("backup file {}: {e}", path.display());
    let file = File::open(path).map_err(|e| named(&e))?;
    backup::verify(BufReader::with_capacity(1 << 20, file)).map_err(|e| named(&e))
}

/// Why a save failed: the exit code and what to print.
enum SaveError {
    Client(kvs_client::Error),
    File(String),
}

/// `snapshot save FILE`.
async fn save(client: &Client, path: &Path, json: bool) -> u8 {
    let started = Instant::now();
    let tmp = temp_path(path);
    let result = save_to(client, path, &tmp).await;
    let header = match result {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return match e {
                SaveError::Client(e) => fail(&e),
                SaveError::File(reason) => {
                    eprintln!("error: {reason}");
                    EXIT_WRITE_FAILED
                }
            };
        }
    };
    let took = started.elapsed();
    if json {
        print_json(&json!({
            "ok": true,
            "file": path.display().to_string(),
            "slot": header.slot,
            "keys": header.keys,
            "bytes": header.body_bytes,
            "checksum": checksum(&header),
            "cluster_uid": header.cluster_uid.to_string(),
            "ms": took.as_millis() as u64,
        }));
    } else {
        println!(
            "saved a snapshot of slot {} to {}: {} keys, {} bytes, {} in {:.1} s",
            header.slot,
            path.display(),
            header.keys,
            header.body_bytes,
            checksum(&header),
            took.as_secs_f64()
        );
    }
    EXIT_OK
}

/// Where the backup is written before it is renamed to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Streams the snapshot into `tmp`, checks it, and renames it to `path` durably.
async fn save_to(client: &Client, path: &Path, tmp: &Path) -> Result<BackupHeader, SaveError> {
    let file_err = |op: &str, p: &Path, e: &dyn std::fmt::Display| {
        SaveError::File(format!("cannot {op} {}: {e}", p.display()))
    };
    let step = client.options().request_timeout.max(STEP_MIN);
    let mut source = client
        .snapshot_open(step)
        .await
        .map_err(SaveError::Client)?;
    let info = source.info().clone();
    let mut header = BackupHeader {
        version: backup::VERSION,
        cluster_uid: wire::Uid(info.cluster_uid),
        cluster_name: info.cluster_name.clone(),
        slot: info.slot,
        keys: info.keys,
        body_bytes: info.bytes,
        body_crc32c: 0,
    };
    let placeholder = header
        .encode()
        .map_err(|e| SaveError::File(format!("cannot write a backup header: {e}")))?;
    let mut file = File::create(tmp).map_err(|e| file_err("create", tmp, &e))?;
    file.write_all(&placeholder)
        .map_err(|e| file_err("write", tmp, &e))?;
    let crc = receive(&mut source, &mut file, tmp).await?;
    header.body_crc32c = crc;
    let final_header = header
        .encode()
        .map_err(|e| SaveError::File(format!("cannot write a backup header: {e}")))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&final_header))
        .and_then(|_| file.sync_all())
        .map_err(|e| file_err("write", tmp, &e))?;
    drop(file);
    // Never publish a file that does not read back.
    let checked = verify(tmp).map_err(SaveError::File)?;
    std::fs::rename(tmp, path).map_err(|e| file_err("rename to", path, &e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_err("fsync", &dir, &e))?;
    Ok(checked)
}

/// Writes every chunk of `source` to `file`, drawing progress on a terminal; returns the
/// body's CRC32C.
async fn receive(
    source: &mut SnapshotSource,
    file: &mut File,
    tmp: &Path,
) -> Result<u32, SaveError> {
    let total = source.info().bytes;
    let tty = std::io::stderr().is_terminal();
    let mut crc = backup::body_crc32c_start();
    let mut drawn: Option<Instant> = None;
    // Bounded: every chunk is at least one byte of `total` (checked by next_chunk).
    while let Some(chunk) = source.next_chunk().await.map_err(SaveError::Client)? {
        crc = backup::crc32c_append(crc, &chunk);
        file.write_all(&chunk)
            .map_err(|e| SaveError::File(format!("cannot write {}: {e}", tmp.display())))?;
        if tty && drawn.is_none_or(|d| d.elapsed() >= PROGRESS_EVERY) {
            drawn = Some(Instant::now());
            progress(source.received(), total);
        }
    }
    if tty {
        progress(source.received(), total);
        eprintln!();
    }
    Ok(crc)
}

/// One progress line, redrawn in place.
fn progress(done: u64, total: u64) {
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\rsnapshot: {:.1} / {:.1} MiB ({pct:.0}%)",
        done as f64 / 1048576.0,
        total as f64 / 1048576.0
    );
    let _ = err.flush();
}
