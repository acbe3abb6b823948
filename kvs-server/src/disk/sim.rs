//! [`SimDisk`]: a deterministic simulated disk with power cuts and injected faults.
//!
//! The model is strict POSIX, the least a real disk promises:
//! - a file's data is durable only after `sync_data`/`sync_all` of that file;
//! - a creation, rename or removal is durable only after `sync_dir` of its directory
//!   (directories themselves are durable as soon as they are created);
//! - on a power cut, each unsynced write reaches the disk sector by sector, each sector
//!   independently (so a write is torn at a sector boundary, and a later sector can land
//!   while an earlier one does not, leaving zeros before non-zero bytes); unsynced
//!   truncations land or not; a prefix of the unsynced directory changes lands, in order.
//!   Each cut also draws how much of the unsynced data lands: none (only what was synced),
//!   all of it (as after `kill -9`), or a random half.
//!
//! After a cut every handle opened before it fails with EIO: the process that held it is
//! gone. Everything random comes from the seed given to [`SimDisk::new`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, DiskFile, Open, SECTOR_BYTES};

/// Faults a [`SimDisk`] injects, each drawn from its seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimFaults {
    /// Chance that an fsync (of a file or a directory) fails with EIO.
    pub fsync_eio: f64,
    /// The most bytes the disk holds (all files' lengths together); a write past it fails
    /// with ENOSPC.
    pub capacity: Option<u64>,
    /// Chance that a read returns its data with one bit flipped.
    pub read_bit_flip: f64,
    /// Chance that a read returns its data with one sector zeroed.
    pub read_zero_sector: f64,
}

/// What a [`SimDisk`] did, for tests to check that a fault really happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Power cuts.
    pub power_cuts: u64,
    /// Unsynced sectors lost to power cuts.
    pub sectors_lost: u64,
    /// Unsynced sectors that reached the disk anyway at a power cut.
    pub sectors_landed: u64,
    /// Fsyncs failed with EIO.
    pub fsync_errors: u64,
    /// Writes refused for lack of space.
    pub full_disk_errors: u64,
    /// Reads returned damaged.
    pub read_corruptions: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What a reader sees now.
    current: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Changes since the last sync, oldest first.
    unsynced: Vec<Op>,
}

#[derive(Clone, Debug)]
enum NsOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf, usize),
}

impl NsOp {
    fn touches(&self, dir: &Path) -> bool {
        let parent = |p: &Path| p.parent() == Some(dir);
        match self {
            NsOp::Link(p, _) | NsOp::Unlink(p) => parent(p),
            NsOp::Rename(a, b, _) => parent(a) || parent(b),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            NsOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            NsOp::Unlink(p) => {
                names.remove(p);
            }
            NsOp::Rename(from, to, ino) => {
                names.remove(from);
                names.insert(to.clone(), *ino);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    ns_unsynced: Vec<NsOp>,
    rng: u64,
    faults: SimFaults,
    generation: u64,
    stats: SimStats,
    /// Changes left before an armed power cut.
    cut_in: Option<u64>,
    /// The power is off (after an armed cut, until `power_on`).
    down: bool,
}

impl State {
    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn used(&self) -> u64 {
        self.names
            .values()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|&i| self.inodes.get(i).map_or(0, |n| n.current.len() as u64))
            .sum()
    }

    fn fsync_fails(&mut self) -> bool {
        let p = self.faults.fsync_eio;
        if self.chance(p) {
            self.stats.fsync_errors += 1;
            true
        } else {
            false
        }
    }

    fn cut(&mut self) {
        let s = self;
        s.stats.power_cuts += 1;
        s.generation += 1;
        // How much of the unsynced data lands this time.
        let landing = s.below(3);
        let keep = [0.0, 1.0, 0.5][landing as usize];
        for i in 0..s.inodes.len() {
            let ops = std::mem::take(&mut s.inodes[i].unsynced);
            let mut data = s.inodes[i].durable.clone();
            for op in ops {
                match op {
                    Op::Write {
                        offset,
                        data: bytes,
                    } => {
                        let mut at = 0usize;
                        while at < bytes.len() {
                            let pos = offset + at as u64;
                            let room = (SECTOR_BYTES - pos % SECTOR_BYTES) as usize;
                            let end = (at + room).min(bytes.len());
                            if s.chance(keep) {
                                write_into(&mut data, pos, &bytes[at..end]);
                                s.stats.sectors_landed += 1;
                            } else {
                                s.stats.sectors_lost += 1;
                            }
                            at = end;
                        }
                    }
                    Op::Truncate(len) => {
                        if s.chance(keep) {
                            data.resize(len as usize, 0);
                        }
                    }
                }
            }
            s.inodes[i].current = data.clone();
            s.inodes[i].durable = data;
        }
        let ops = std::mem::take(&mut s.ns_unsynced);
        let landed = match landing {
            0 => 0,
            1 => ops.len(),
            _ => s.below(ops.len() as u64 + 1) as usize,
        };
        let mut names = s.durable_names.clone();
        for op in &ops[..landed] {
            op.apply(&mut names);
        }
        s.durable_names = names.clone();
        s.names = names;
    }

    /// Counts one change against an armed cut; fails if the power is off or goes off now.
    fn tick(&mut self, what: &str) -> io::Result<()> {
        if self.down {
            return Err(eio(&format!("{what}: the disk has no power")));
        }
        if let Some(n) = self.cut_in {
            if n <= 1 {
                self.cut_in = None;
                self.cut();
                self.down = true;
                return Err(eio(&format!("{what}: the power went off")));
            }
            self.cut_in = Some(n - 1);
        }
        Ok(())
    }

    fn check_up(&self, what: &str) -> io::Result<()> {
        if self.down {
            return Err(eio(&format!("{what}: the disk has no power")));
        }
        Ok(())
    }

    /// Damages `buf` (returned data only) as the read faults say.
    fn damage_read(&mut self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let (flip, zero) = (self.faults.read_bit_flip, self.faults.read_zero_sector);
        if self.chance(flip) {
            let bit = self.below(buf.len() as u64 * 8);
            buf[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.read_corruptions += 1;
        }
        if self.chance(zero) {
            let sectors = (buf.len() as u64).div_ceil(SECTOR_BYTES);
            let start = (self.below(sectors) * SECTOR_BYTES) as usize;
            let end = (start + SECTOR_BYTES as usize).min(buf.len());
            buf[start..end].fill(0);
            self.stats.read_corruptions += 1;
        }
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    if data.len() < offset + bytes.len() {
        data.resize(offset + bytes.len(), 0);
    }
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!(
        "{what}: Input/output error (os error 5, simulated)"
    ))
}

fn enospc() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "No space left on device (os error 28, simulated)",
    )
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file (simulated)", path.display()),
    )
}

/// A simulated disk; clones share the same disk.
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk whose every random choice follows `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes: Vec::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs: BTreeSet::new(),
                ns_unsynced: Vec::new(),
                rng: seed ^ 0x5D15_C0DE,
                faults: SimFaults::default(),
                generation: 0,
                stats: SimStats::default(),
                cut_in: None,
                down: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a consistent state: every
        // change is made in one step under it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the faults injected from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// What the disk did so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Cuts the power: only what was synced survives, plus whatever unsynced sectors and
    /// directory changes happen to land (see the module notes). Every open handle is dead
    /// afterwards.
    pub fn power_cut(&self) {
        self.lock().cut();
    }

    /// Arms a power cut that happens at the `ops`-th change from now (a write, truncation,
    /// sync, creation, rename or removal; 1 means the next one), which then fails, as does
    /// everything after it until [`power_on`](Self::power_on): the cut lands inside
    /// whatever the code was doing (mid-append, between a write and its fsync, between a
    /// rename and the directory sync, ...).
    pub fn cut_after(&self, ops: u64) {
        self.lock().cut_in = Some(ops.max(1));
    }

    /// Whether an armed cut has happened and the power is still off.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Restores power after a cut (armed or not); handles opened before stay dead.
    pub fn power_on(&self) {
        let mut s = self.lock();
        s.down = false;
        s.cut_in = None;
    }

    /// Damages what is stored at rest: flips bit `bit` of `path`'s content (durable and
    /// current alike), as a failing medium would. For repair tests.
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let n = &mut s.inodes[ino];
        let byte = (bit / 8) as usize;
        for data in [&mut n.current, &mut n.durable] {
            if let Some(b) = data.get_mut(byte) {
                *b ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// The content of `path` that would survive a power cut that lands nothing unsynced,
    /// or `None` if its name would not survive.
    pub fn durable_content(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = *s.durable_names.get(path)?;
        s.inodes.get(ino).map(|n| n.durable.clone())
    }

    fn handle(&self, ino: usize, path: &Path, writable: bool) -> Box<dyn DiskFile> {
        let generation = self.lock().generation;
        Box::new(SimFile {
            disk: self.clone(),
            ino,
            path: path.to_path_buf(),
            writable,
            generation,
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick("create directory")?;
        for d in dir.ancestors() {
            if !d.as_os_str().is_empty() {
                s.dirs.insert(d.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let s = self.lock();
        s.check_up("list")?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn DiskFile>> {
        let ino = {
            let mut s = self.lock();
            if how == Open::Read {
                s.check_up("open")?;
            } else {
                s.tick("open")?;
            }
            match (s.names.get(path).copied(), how) {
                (Some(ino), Open::Truncate) => {
                    let n = &mut s.inodes[ino];
                    n.current.clear();
                    n.unsynced.push(Op::Truncate(0));
                    ino
                }
                (Some(ino), _) => ino,
                (None, Open::Read) => return Err(not_found(path)),
                (None, _) => {
                    let parent = path.parent().unwrap_or(Path::new(""));
                    if !parent.as_os_str().is_empty() && !s.dirs.contains(parent) {
                        return Err(not_found(parent));
                    }
                    s.inodes.push(Inode::default());
                    let ino = s.inodes.len() - 1;
                    s.names.insert(path.to_path_buf(), ino);
                    s.ns_unsynced.push(NsOp::Link(path.to_path_buf(), ino));
                    ino
                }
            }
        };
        Ok(self.handle(ino, path, how != Open::Read))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.check_up("read")?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let mut data = s.inodes[ino].current.clone();
        s.damage_read(&mut data);
        Ok(data)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick("rename")?;
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        s.ns_unsynced
            .push(NsOp::Rename(from.to_path_buf(), to.to_path_buf(), ino));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick("remove")?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.ns_unsynced.push(NsOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick("fsync directory")?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        if s.fsync_fails() {
            return Err(eio(&format!("fsync {}", dir.display())));
        }
        let ops = std::mem::take(&mut s.ns_unsynced);
        let mut names = s.durable_names.clone();
        let mut rest = Vec::new();
        for op in ops {
            if op.touches(dir) {
                op.apply(&mut names);
            } else {
                rest.push(op);
            }
        }
        s.durable_names = names;
        s.ns_unsynced = rest;
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        !s.down && s.names.contains_key(path) || s.dirs.contains(path)
    }
}

#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    ino: usize,
    path: PathBuf,
    writable: bool,
    generation: u64,
}

impl SimFile {
    /// The disk's state, if this handle survived every power cut since it was opened.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        s.check_up("file")?;
        if s.generation != self.generation {
            return Err(eio(&format!(
                "{}: the disk lost power since this file was opened",
                self.path.display()
            )));
        }
        Ok(s)
    }

    fn write(&mut self, offset: Option<u64>, data: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: opened read-only", self.path.display()),
            ));
        }
        let ino = self.ino;
        let mut s = self.live()?;
        s.tick("write")?;
        let len = s.inodes[ino].current.len() as u64;
        let offset = offset.unwrap_or(len);
        let growth = (offset + data.len() as u64).saturating_sub(len);
        if let Some(cap) = s.faults.capacity {
            if s.used() + growth > cap {
                s.stats.full_disk_errors += 1;
                return Err(enospc());
            }
        }
        let n = &mut s.inodes[ino];
        write_into(&mut n.current, offset, data);
        n.unsynced.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let ino = self.ino;
        let mut s = self.live()?;
        s.tick("fsync")?;
        if s.fsync_fails() {
            return Err(eio(&format!("fsync {}", self.path.display())));
        }
        let n = &mut s.inodes[ino];
        n.durable = n.current.clone();
        n.unsynced.clear();
        Ok(())
    }
}

impl DiskFile for SimFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(None, data)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(Some(offset), data)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let ino = self.ino;
        let mut s = self.live()?;
        let data = &s.inodes[ino].current;
        let start = (offset as usize).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        s.damage_read(&mut buf[..n]);
        Ok(n)
    }

    fn len(&mut self) -> io::Result<u64> {
        let ino = self.ino;
        Ok(self.live()?.inodes[ino].current.len() as u64)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let ino = self.ino;
        let mut s = self.live()?;
        s.tick("truncate")?;
        let n = &mut s.inodes[ino];
        n.current.resize(len as usize, 0);
        n.unsynced.push(Op::Truncate(len));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync()
    }
}
