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
//! - [`Proxy::heal`]: clears every fault.
//!
//! The proxy's tasks run on a small runtime owned by this module (see [`Proxy::start`]), so a
//! test that blocks its own thread (a sync wait, a `#[tokio::test]` on a current-thread runtime
//! doing blocking work) never stalls the network. Dropping the [`Proxy`] ends every one of its
//! tasks: they all watch the control channel, whose only sender the `Proxy` owns.

#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

/// The fault configuration, published to every task through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Control {
    cut: bool,
    discard: [bool; 2],
    delay: Duration,
    /// Bumped by `drop_connections`; a connection accepted under an older epoch closes.
    drop_epoch: u64,
}

impl Control {
    fn discards(&self, direction: Direction) -> bool {
        self.discard[direction.index()]
    }
}

/// Counters shared by the proxy handle and its tasks.
#[derive(Debug, Default)]
struct Shared {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    forwarded_bytes: [AtomicU64; 2],
    discarded_bytes: [AtomicU64; 2],
    live_tasks: AtomicUsize,
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted on the listening socket (including the ones reset because the
    /// proxy was cut).
    pub accepted: u64,
    /// Connections accepted while the proxy was cut, and reset at once.
    pub refused: u64,
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
    /// they are accepted, until [`Proxy::heal`].
    pub fn cut(&self) {
        self.control.send_modify(|c| c.cut = true);
    }

    /// Silently discards bytes travelling in `direction` (on current and new connections) while
    /// the other direction keeps flowing; cumulative, so cutting both directions makes a black
    /// hole that keeps the TCP connections open. An end-of-stream in a discarded direction is
    /// not propagated either.
    pub fn cut_direction(&self, direction: Direction) {
        self.control
            .send_modify(|c| c.discard[direction.index()] = true);
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

    /// Clears every fault: no cut, nothing discarded, no delay.
    pub fn heal(&self) {
        self.control.send_modify(|c| {
            *c = Control {
                drop_epoch: c.drop_epoch,
                ..Control::default()
            }
        });
    }

    /// Whether [`Proxy::cut`] is in force.
    pub fn is_cut(&self) -> bool {
        self.control.borrow().cut
    }

    /// Whether bytes travelling in `direction` are being discarded.
    pub fn is_direction_cut(&self, direction: Direction) -> bool {
        self.control.borrow().discards(direction)
    }

    /// The delay currently applied to new chunks.
    pub fn delay(&self) -> Duration {
        self.control.borrow().delay
    }

    /// Whether any fault (cut, one-way cut, delay) is in force.
    pub fn is_faulty(&self) -> bool {
        let c = self.control.borrow();
        c.cut || c.discard.iter().any(|d| *d) || !c.delay.is_zero()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: load(&s.accepted),
            refused: load(&s.refused),
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
                    let (cut, epoch) = {
                        let c = control.borrow();
                        (c.cut, c.drop_epoch)
                    };
                    if cut {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
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
/// (each chunk is held until its deadline; the queue keeps the order) and the one-way cut
/// (checked when a chunk is due, so chunks already queued are discarded too).
///
/// Returns when `from` reached its end and everything queued was handled, or on the first IO
/// error of either side.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
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
        let i = direction.index();
        while let Some((deadline, chunk)) = due.recv().await {
            tokio::time::sleep_until(deadline).await;
            let len = chunk.len() as u64;
            if control.borrow().discards(direction) {
                shared.discarded_bytes[i].fetch_add(len, Ordering::Relaxed);
                continue;
            }
            to.write_all(&chunk).await?;
            shared.forwarded_bytes[i].fetch_add(len, Ordering::Relaxed);
        }
        if !control.borrow().discards(direction) {
            to.shutdown().await?;
        }
        Ok::<(), io::Error>(())
    };
    try_join(read_side, write_side).await.map(|_| ())
}
