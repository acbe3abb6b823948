//! A user-space TCP proxy for fault injection.
//!
//! Kernel packet shaping (`tc`, `iptables`) may be missing or forbidden in the test machine, so
//! every link of a test cluster goes through one of these proxies instead. A [`Proxy`] listens
//! on `127.0.0.1:<ephemeral>` and forwards every accepted connection to a fixed target, both
//! ways. Faults are switched on and off with cheap synchronous calls (usable from sync and async
//! code alike):
//!
//! - [`Proxy::cut`]: both directions blocked. Existing connections are **reset** (closed with
//!   `SO_LINGER = 0`, i.e. an RST), and new connections are accepted and reset at once. We
//!   chose resetting over holding connections open without forwarding because the peer notices
//!   at its very next read or write, which keeps reconnect logic exercised and tests fast; a
//!   silent black hole is still available by cutting both directions with
//!   [`Proxy::cut_direction`].
//! - [`Proxy::cut_direction`]: bytes travelling one way are silently discarded (the TCP
//!   connection stays up, the other direction keeps flowing).
//! - [`Proxy::set_delay`]: every forwarded chunk is held this long; order is preserved.
//! - [`Proxy::drop_connections`]: resets every current connection once; new ones are allowed.
//! - [`Proxy::heal`]: clears every fault, and reports what crossed the proxy while it blocked
//!   traffic ([`Leak`]; nothing, unless the proxy is broken or its faults are fake).
//!
//! **A fault takes effect at the instant it is set.** Every forwarding decision (admitting a
//! connection, writing bytes to either side) is taken under the read lock of the proxy's
//! gate, and every fault change under its write lock; counters are bumped under the read lock. So once [`Proxy::cut`] returns, not one more byte or connection is forwarded, also not
//! bytes read before the cut and still queued (they are dropped with the connection), and the
//! counters taken inside the write lock at the cut are exact. [`Proxy::leak`] and
//! [`Proxy::heal`] compare the counters with those taken when the fault was set, which is how a
//! nemesis proves that a cut link really carried nothing.
//!
//! [`Proxy::set_fake_faults`] exists to test those checks: faults are then recorded (and
//! reported by [`Proxy::is_cut`]) but not applied, so traffic keeps flowing and the leak shows.
//!
//! The proxy's tasks run on a small runtime owned by this module (see [`Proxy::start`]), so a
//! test that blocks its own thread (a sync wait, a `#[tokio::test]` on a current-thread runtime
//! doing blocking work) never stalls the network. Dropping the [`Proxy`] ends every one of its
//! tasks: they all watch the control channel, whose only sender the `Proxy` owns.

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Largest chunk read from one side before it is queued for the other.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks queued per direction of a connection (in flight or held by a delay); bounds memory
/// and turns a slow reader into back-pressure instead of unbounded buffering.
const QUEUE_CHUNKS_MAX: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop never spins.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Worker threads of the shared proxy runtime (the test machine has two cores).
const RUNTIME_WORKER_THREADS: usize = 2;

/// Which way bytes travel through a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the side that connected to the proxy towards the target.
    Forward,
    /// From the target back to the side that connected to the proxy.
    Backward,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Backward => 1,
        }
    }
}

/// What the proxy's tasks must react to, published through a `watch` channel so that they
/// wake up: an effective cut (close every connection), the delay, and dropped connections.
/// Whether bytes may cross is decided by the [`Gate`], not by this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Control {
    cut: bool,
    delay: Duration,
    /// Bumped by `drop_connections`; a connection accepted under an older epoch closes.
    drop_epoch: u64,
}

/// The blocking faults in force, and the counters at the instant each one began.
///
/// Read-locked around every forwarding decision and counter update, write-locked around every
/// change (see the module docs): the fault and the counters change atomically together.
#[derive(Debug, Default)]
struct Gate {
    cut: bool,
    discard: [bool; 2],
    /// Record faults but do not apply them (to test the harness' own checks).
    fake: bool,
    /// Forwarded bytes per direction when that direction became blocked.
    bytes_at_block: [Option<u64>; 2],
    /// Connections dialed when the proxy was cut.
    dialed_at_cut: Option<u64>,
}

impl Gate {
    /// Whether nothing may cross (an effective cut).
    fn blocks_all(&self) -> bool {
        self.cut && !self.fake
    }

    /// Whether bytes travelling in `direction` are to be discarded.
    fn discards(&self, direction: Direction) -> bool {
        self.discard[direction.index()] && !self.fake
    }

    /// Whether `direction` is blocked as far as the caller asked (fake or not).
    fn blocked(&self, direction: Direction) -> bool {
        self.cut || self.discard[direction.index()]
    }

    /// Starts the leak accounting of `direction` unless it already runs.
    fn start_blocking(&mut self, direction: Direction, shared: &Shared) {
        let i = direction.index();
        let now = shared.forwarded_bytes[i].load(Ordering::Relaxed);
        self.bytes_at_block[i].get_or_insert(now);
    }

    /// What crossed since the blocking faults began; `None` if none is in force.
    fn leak(&self, shared: &Shared) -> Option<Leak> {
        if !self.cut && !self.discard.iter().any(|d| *d) {
            return None;
        }
        let since = |i: usize| {
            self.bytes_at_block[i]
                .map(|at| shared.forwarded_bytes[i].load(Ordering::Relaxed) - at)
                .unwrap_or(0)
        };
        let dialed = self
            .dialed_at_cut
            .map(|at| shared.dialed.load(Ordering::Relaxed) - at)
            .unwrap_or(0);
        Some(Leak {
            forward_bytes: since(Direction::Forward.index()),
            backward_bytes: since(Direction::Backward.index()),
            dialed,
        })
    }
}

/// What crossed a proxy while a fault blocked it: bytes delivered in a blocked direction
/// (counted from the instant that direction was blocked), and connections dialed to the
/// target after a cut. A working proxy leaks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leak {
    /// Bytes delivered to the target after the forward direction was blocked.
    pub forward_bytes: u64,
    /// Bytes delivered back to the connecting side after the backward direction was blocked.
    pub backward_bytes: u64,
    /// Connections dialed to the target after the proxy was cut.
    pub dialed: u64,
}

impl Leak {
    /// Whether nothing crossed.
    pub fn is_empty(&self) -> bool {
        *self == Leak::default()
    }
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes forward, {} bytes backward, {} connections dialed",
            self.forward_bytes, self.backward_bytes, self.dialed
        )
    }
}

/// Counters shared by the proxy handle and its tasks, and the [`Gate`].
#[derive(Debug, Default)]
struct Shared {
    gate: RwLock<Gate>,
    accepted: AtomicU64,
    refused: AtomicU64,
    dialed: AtomicU64,
    active: AtomicU64,
    forwarded_bytes: [AtomicU64; 2],
    discarded_bytes: [AtomicU64; 2],
    live_tasks: AtomicUsize,
}

impl Shared {
    fn gate(&self) -> RwLockReadGuard<'_, Gate> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn gate_mut(&self) -> RwLockWriteGuard<'_, Gate> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides whether a newly accepted connection may be forwarded, and counts it as dialed
    /// or refused, atomically with respect to faults.
    fn admit(&self) -> bool {
        let gate = self.gate();
        if gate.blocks_all() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            self.dialed.fetch_add(1, Ordering::Relaxed);
            true
        }
    }
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted on the listening socket (including the ones reset because the
    /// proxy was cut).
    pub accepted: u64,
    /// Connections accepted while the proxy was cut, and reset at once.
    pub refused: u64,
    /// Connections forwarded: admitted and dialed to the target (a dial may still fail).
    pub dialed: u64,
    /// Connections currently being served.
    pub active: u64,
    /// Bytes delivered to the target.
    pub forward_bytes: u64,
    /// Bytes delivered back to the connecting side.
    pub backward_bytes: u64,
    /// Bytes read from the connecting side and discarded by a one-way cut.
    pub discarded_forward_bytes: u64,
    /// Bytes read from the target and discarded by a one-way cut.
    pub discarded_backward_bytes: u64,
}

/// Counts the proxy's live background tasks; outlives the [`Proxy`] so a test can check that
/// dropping the proxy really ended them.
#[derive(Debug, Clone)]
pub struct ProxyTasks(Arc<Shared>);

impl ProxyTasks {
    /// Number of the proxy's tasks (accept loop and connection tasks) still alive.
    pub fn live(&self) -> usize {
        self.0.live_tasks.load(Ordering::SeqCst)
    }
}

/// Keeps [`Shared::live_tasks`] accurate: created before a task is spawned, dropped with it.
struct TaskGuard(Arc<Shared>);

impl TaskGuard {
    fn new(shared: &Arc<Shared>) -> TaskGuard {
        shared.live_tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(Arc::clone(shared))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live_tasks.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps [`Shared::active`] accurate for the lifetime of a connection task.
struct ActiveGuard<'a>(&'a Shared);

impl<'a> ActiveGuard<'a> {
    fn new(shared: &'a Shared) -> ActiveGuard<'a> {
        shared.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP proxy from `127.0.0.1:<ephemeral>` to a fixed target, with switchable faults.
///
/// Dropping it closes the listener and every proxied connection, and ends all its tasks.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy to `target` on the module's shared runtime (two worker threads, created
    /// on first use and parked when idle). Callable from sync code and from inside any runtime.
    ///
    /// The target need not be listening yet: each accepted connection dials it afresh, and a
    /// failed dial closes the accepted connection.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        Proxy::start_on(proxy_runtime(), target)
    }

    /// Starts a proxy to `target` whose tasks run on `runtime`.
    pub fn start_on(runtime: &Handle, target: SocketAddr) -> io::Result<Proxy> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            // Registers the socket with `runtime`'s reactor rather than the caller's.
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (control, control_rx) = watch::channel(Control::default());
        let shared = Arc::new(Shared::default());
        let guard = TaskGuard::new(&shared);
        runtime.spawn(accept_loop(
            listener,
            target,
            control_rx,
            Arc::clone(&shared),
            guard,
        ));
        Ok(Proxy {
            addr,
            target,
            control,
            shared,
        })
    }

    /// The address to connect to (the proxy's listening socket).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Blocks both directions: resets every current connection, and resets new ones as soon as
    /// they are accepted, until [`Proxy::heal`]. Not one byte or connection is forwarded once
    /// this returns (see the module docs).
    pub fn cut(&self) {
        let effective = {
            let mut gate = self.shared.gate_mut();
            gate.cut = true;
            gate.start_blocking(Direction::Forward, &self.shared);
            gate.start_blocking(Direction::Backward, &self.shared);
            let dialed = self.shared.dialed.load(Ordering::Relaxed);
            gate.dialed_at_cut.get_or_insert(dialed);
            gate.blocks_all()
        };
        // Wakes the connection tasks, which close their connections.
        self.control.send_modify(|c| c.cut = effective);
    }

    /// Silently discards bytes travelling in `direction` (on current and new connections) while
    /// the other direction keeps flowing; cumulative, so cutting both directions makes a black
    /// hole that keeps the TCP connections open. An end-of-stream in a discarded direction is
    /// not propagated either. Bytes already queued are discarded too.
    pub fn cut_direction(&self, direction: Direction) {
        let mut gate = self.shared.gate_mut();
        gate.discard[direction.index()] = true;
        gate.start_blocking(direction, &self.shared);
    }

    /// Holds every chunk read from now on for `delay` before forwarding it (both directions;
    /// order is preserved). `Duration::ZERO` stops delaying new chunks.
    pub fn set_delay(&self, delay: Duration) {
        self.control.send_modify(|c| c.delay = delay);
    }

    /// Resets every current connection once; new connections are served normally.
    pub fn drop_connections(&self) {
        self.control.send_modify(|c| c.drop_epoch += 1);
    }

    /// Clears every fault (no cut, nothing discarded, no delay) and returns what crossed the
    /// proxy while it was blocked ([`Proxy::leak`] at the instant of healing); `None` if no
    /// cut or one-way cut was in force.
    pub fn heal(&self) -> Option<Leak> {
        let leak = {
            let mut gate = self.shared.gate_mut();
            let leak = gate.leak(&self.shared);
            *gate = Gate {
                fake: gate.fake,
                ..Gate::default()
            };
            leak
        };
        self.control.send_modify(|c| {
            *c = Control {
                drop_epoch: c.drop_epoch,
                ..Control::default()
            }
        });
        leak
    }

    /// What crossed the proxy since the cut or one-way cuts in force began; `None` if none is
    /// in force. Empty unless the proxy is broken or its faults are fake.
    pub fn leak(&self) -> Option<Leak> {
        self.shared.gate().leak(&self.shared)
    }

    /// Fake faults (for testing the checks built on [`Proxy::leak`]): while on, cuts and
    /// one-way cuts are recorded and reported ([`Proxy::is_cut`], [`Proxy::leak`]) but not
    /// applied, so traffic keeps flowing. Affects faults set after the call.
    pub fn set_fake_faults(&self, fake: bool) {
        self.shared.gate_mut().fake = fake;
    }

    /// Whether [`Proxy::cut`] is in force.
    pub fn is_cut(&self) -> bool {
        self.shared.gate().cut
    }

    /// Whether bytes travelling in `direction` are being discarded.
    pub fn is_direction_cut(&self, direction: Direction) -> bool {
        self.shared.gate().discard[direction.index()]
    }

    /// The delay currently applied to new chunks.
    pub fn delay(&self) -> Duration {
        self.control.borrow().delay
    }

    /// Whether any fault (cut, one-way cut, delay) is in force.
    pub fn is_faulty(&self) -> bool {
        let blocked = {
            let gate = self.shared.gate();
            gate.blocked(Direction::Forward) || gate.blocked(Direction::Backward)
        };
        blocked || !self.control.borrow().delay.is_zero()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: load(&s.accepted),
            refused: load(&s.refused),
            dialed: load(&s.dialed),
            active: load(&s.active),
            forward_bytes: load(&s.forwarded_bytes[0]),
            backward_bytes: load(&s.forwarded_bytes[1]),
            discarded_forward_bytes: load(&s.discarded_bytes[0]),
            discarded_backward_bytes: load(&s.discarded_bytes[1]),
        }
    }

    /// A handle counting this proxy's live tasks, valid after the proxy is dropped.
    pub fn tasks(&self) -> ProxyTasks {
        ProxyTasks(Arc::clone(&self.shared))
    }
}

/// The runtime that [`Proxy::start`] uses; built on first use and never dropped.
fn proxy_runtime() -> &'static Handle {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_WORKER_THREADS)
                .thread_name("test-proxy")
                .enable_all()
                .build()
                .expect("cannot build the test proxy runtime")
        })
        .handle()
}

/// Closes `stream` with an RST so that the peer's next read or write fails at once.
fn reset(stream: TcpStream) {
    // Ignoring the error: the socket may already be dead, and then a plain close is just as good.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    _guard: TaskGuard,
) {
    loop {
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return; // The Proxy was dropped.
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let epoch = control.borrow().drop_epoch;
                    if !shared.admit() {
                        reset(stream);
                        continue;
                    }
                    let guard = TaskGuard::new(&shared);
                    tokio::spawn(serve(stream, target, control.clone(), Arc::clone(&shared), epoch, guard));
                }
                Err(_) => tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await,
            },
        }
    }
}

/// Completes when the connection accepted under `epoch` must be reset: the proxy was cut, its
/// connections were dropped, or the proxy itself was dropped.
async fn close_requested(mut control: watch::Receiver<Control>, epoch: u64) {
    loop {
        {
            let c = control.borrow_and_update();
            if c.cut || c.drop_epoch != epoch {
                return;
            }
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(
    mut inbound: TcpStream,
    target: SocketAddr,
    control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    epoch: u64,
    _guard: TaskGuard,
) {
    let _active = ActiveGuard::new(&shared);
    let closed = close_requested(control.clone(), epoch);
    tokio::pin!(closed);
    let mut outbound = tokio::select! {
        dialed = TcpStream::connect(target) => match dialed {
            Ok(stream) => stream,
            Err(_) => return reset(inbound),
        },
        () = &mut closed => return reset(inbound),
    };
    // Latency matters more than throughput for protocol messages.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let finished_cleanly = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let forward = pipe(in_read, out_write, Direction::Forward, &control, &shared);
        let backward = pipe(out_read, in_write, Direction::Backward, &control, &shared);
        tokio::select! {
            both = try_join(forward, backward) => both.is_ok(),
            () = &mut closed => false,
        }
    };
    if !finished_cleanly {
        reset(inbound);
        reset(outbound);
    }
}

/// Copies `from` to `to` through a queue of timestamped chunks, which implements the delay
/// (each chunk is held until its deadline; the queue keeps the order). Writes go through a
/// [`Gated`] writer, which applies the cuts at the instant of each write, so chunks already
/// queued are blocked or discarded too.
///
/// Returns when `from` reached its end and everything queued was handled, or on the first IO
/// error of either side (a cut is one).
async fn pipe<R, W>(
    mut from: R,
    to: W,
    direction: Direction,
    control: &watch::Receiver<Control>,
    shared: &Shared,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut due) = mpsc::channel::<(Instant, Bytes)>(QUEUE_CHUNKS_MAX);
    let read_side = async move {
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // Dropping `queue` tells the write side to finish.
            }
            let deadline = Instant::now() + control.borrow().delay;
            if queue
                .send((deadline, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write_side = async {
        let mut to = Gated {
            inner: to,
            direction,
            shared,
        };
        while let Some((deadline, chunk)) = due.recv().await {
            tokio::time::sleep_until(deadline).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await?;
        Ok::<(), io::Error>(())
    };
    try_join(read_side, write_side).await.map(|_| ())
}

/// The error a write into a cut proxy fails with (it ends the connection).
fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the proxy is cut")
}

/// A writer that takes every write decision under the proxy's [`Gate`]: fails while the proxy
/// is cut, swallows (and counts) the bytes of a discarded direction, and counts the bytes it
/// forwards. The lock is held only for the non-blocking `poll_write` call, never across an
/// await.
struct Gated<'a, W> {
    inner: W,
    direction: Direction,
    shared: &'a Shared,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Gated<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let shared = this.shared;
        let i = this.direction.index();
        let gate = shared.gate();
        if gate.blocks_all() {
            return Poll::Ready(Err(cut_error()));
        }
        if gate.discards(this.direction) {
            shared.discarded_bytes[i].fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            shared.forwarded_bytes[i].fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Propagates the end of the stream unless the direction is blocked.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let shared = this.shared;
        let gate = shared.gate();
        if gate.blocks_all() {
            return Poll::Ready(Err(cut_error()));
        }
        if gate.discards(this.direction) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
