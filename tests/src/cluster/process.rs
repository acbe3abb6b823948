//! One node's server process: start, signals, reaping.
//!
//! Children are spawned from a single long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, so
//! even if the test process itself dies without unwinding (killed by a timeout, aborted), the
//! kernel kills its servers. The death signal fires when the *thread* that forked exits, which
//! is why the forking thread must outlive every child: test threads and runtime workers come
//! and go, the spawner thread never returns.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Attempts to spawn while the executable is "busy" (`ETXTBSY`: another thread forked while the
/// file was still open for writing, as happens with scripts written by tests).
const SPAWN_ATTEMPTS_MAX: u32 = 20;
const SPAWN_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Pause between checks while waiting for a terminated process to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from the spawner thread, with the parent-death signal set.
fn spawn_tied_to_this_process(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("test-cluster-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(spawn_retrying(&mut command));
                }
            })
            .expect("cannot start the process spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("process spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("process spawner thread is gone"))?
}

fn spawn_retrying(command: &mut Command) -> io::Result<Child> {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS_MAX => {
                attempt += 1;
                thread::sleep(SPAWN_RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `bound` for `child` to exit; `None` if it still runs (or cannot be waited
/// for).
pub fn wait_child_exit(child: &mut std::process::Child, bound: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < bound {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return None,
        }
    }
    None
}

/// Whether a process with this pid exists (a zombie still counts until it is reaped).
pub fn process_exists(pid: u32) -> bool {
    match send_signal(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() != Some(libc::ESRCH),
    }
}

/// The start time of process `pid` (clock ticks since boot, field 22 of `/proc/<pid>/stat`),
/// or `None` if there is no such process. A pid that names a process with a different start
/// time was reused by another process.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: count fields after it. The
    // state (field 3) comes first, so field 22 is the 20th.
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A node's process slot: how to start it, and the running child if any.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    id: u64,
    program: PathBuf,
    args: Vec<OsString>,
    working_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    starts: u32,
    last_exit: Option<ExitStatus>,
}

impl NodeProcess {
    pub(crate) fn new(
        id: u64,
        program: PathBuf,
        args: Vec<OsString>,
        working_dir: PathBuf,
        log_path: PathBuf,
    ) -> NodeProcess {
        NodeProcess {
            id,
            program,
            args,
            working_dir,
            log_path,
            child: None,
            paused: false,
            starts: 0,
            last_exit: None,
        }
    }

    /// The command line of the next start.
    pub(crate) fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Replaces the command line of the next starts.
    pub(crate) fn set_args(&mut self, args: Vec<OsString>) {
        self.args = args;
    }

    /// Starts the process with its fixed command line, stdout and stderr appended to the log
    /// (after a marker line saying which start this is).
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("node {} is already running", self.id);
        }
        self.starts += 1;
        let mut log = self.open_log()?;
        writeln!(
            log,
            "=== test harness: start #{} of node {}: {} {} ===",
            self.starts,
            self.id,
            self.program.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.working_dir)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied_to_this_process(command).with_context(|| {
            format!("cannot start node {} ({})", self.id, self.program.display())
        })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn open_log(&self) -> anyhow::Result<File> {
        if let Some(parent) = self.log_path.parent() {
            fs::create_dir_all(parent)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))
    }

    /// Whether the process is alive (a stopped process is alive). Reaps it if it exited.
    pub(crate) fn is_running(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.reaped(status);
                false
            }
            // Cannot happen for our own child; treat it as gone rather than loop on it.
            Err(_) => {
                self.child = None;
                self.paused = false;
                false
            }
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.child = None;
        self.paused = false;
        self.last_exit = Some(status);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    pub(crate) fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn running_pid(&mut self) -> anyhow::Result<u32> {
        if !self.is_running() {
            bail!("node {} is not running", self.id);
        }
        Ok(self.pid().expect("a running node has a pid"))
    }

    /// SIGKILL, then reap. Until reaped the pid cannot be reused, so signalling it is safe even
    /// if the process exited on its own meanwhile.
    pub(crate) fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(child) = &mut self.child else {
            bail!("node {} is not running", self.id);
        };
        send_signal(child.id(), libc::SIGKILL)
            .with_context(|| format!("cannot SIGKILL node {}", self.id))?;
        let status = child
            .wait()
            .with_context(|| format!("cannot reap node {}", self.id))?;
        self.reaped(status);
        Ok(status)
    }

    /// SIGSTOP.
    pub(crate) fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.running_pid()?;
        send_signal(pid, libc::SIGSTOP)
            .with_context(|| format!("cannot SIGSTOP node {}", self.id))?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self) -> anyhow::Result<()> {
        let pid = self.running_pid()?;
        send_signal(pid, libc::SIGCONT)
            .with_context(|| format!("cannot SIGCONT node {}", self.id))?;
        self.paused = false;
        Ok(())
    }

    /// SIGTERM (and SIGCONT, so a paused process can handle it), then waits up to `bound` for
    /// the exit. A process still alive at the bound is SIGKILLed and reaped, and the call fails.
    pub(crate) fn terminate(&mut self, bound: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.running_pid()?;
        send_signal(pid, libc::SIGTERM)
            .with_context(|| format!("cannot SIGTERM node {}", self.id))?;
        if self.paused {
            send_signal(pid, libc::SIGCONT)
                .with_context(|| format!("cannot SIGCONT node {}", self.id))?;
            self.paused = false;
        }
        let deadline = Instant::now() + bound;
        loop {
            if !self.is_running() {
                return Ok(self.last_exit.expect("an exited node has a status"));
            }
            if Instant::now() >= deadline {
                self.kill()?;
                bail!(
                    "node {} did not exit within {bound:?} of SIGTERM (it was SIGKILLed)",
                    self.id
                );
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// Kills and reaps the process if there is one, ignoring errors (for cleanup).
    pub(crate) fn kill_quietly(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = send_signal(child.id(), libc::SIGKILL);
            if let Ok(status) = child.wait() {
                self.reaped(status);
            } else {
                self.child = None;
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}
