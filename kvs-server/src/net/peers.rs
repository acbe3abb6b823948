//! Links between replicas.
//!
//! A replica sends only on the connections it dials (one per peer) and receives only on
//! the connections it accepts. Every direction of every link is therefore its own TCP
//! connection, and cutting one (a one-way partition) affects one direction only.
//!
//! Every connection opens with the handshake: the dialing replica presents its identity
//! (cluster identity, data dir instance, members, `--sessions-max`), the accepting replica
//! checks it ([`wire::check_hello`]) and the instance against the one it recorded for that
//! member ([`IdentityStore::admit`]), and only then accepts. So a refusal is seen on both
//! sides: the accepting side logs it at warn, and the dialing side logs the reason it was
//! given at warn. A refusal saying that this member is known by another data dir stops
//! this replica ([`LinkEvent::Fatal`]): its promises are lost and it must not vote.
//!
//! The links follow the membership, which changes with the replicated log: the event loop
//! opens a link to a member that joined ([`Links::connect`], at the address the membership
//! records) and closes the link to one that left ([`Links::disconnect`]), and it tells the
//! [`PeerRegistry`] who may connect: a replica whose id is not a member is refused by
//! name, and the connections of a member that left are closed. The one exception is a
//! *newcomer* ([`wire::is_newcomer`]): a replica this one does not know that states a later
//! configuration than this one knows, and its peer address. This replica was away while it
//! was added, so it admits it, and the event loop links back to it at that address until
//! it has caught up with that configuration; it is then a member like any other, or gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use paxos_core::{Message, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::{
    Accepted, ClusterInfo, HandshakeExpectation, HandshakeRefusal, Hello, PeerMessage,
    PeerReachability, PeerRole, WireError,
};

use prometheus_client::metrics::counter::Counter;

use super::frames::PeerFrames;
use super::stream::Stream;
use crate::admin::events::{Kind, Notables};
use crate::event::Event;
use crate::identity::{IdentityError, IdentityStore, LinkEvent};
use crate::metrics::Metrics;
use crate::snapshot::transfer::{Credits, Outgoing};
use crate::tls::identity::MemberIdError;
use crate::tls::PeerTls;

/// How many messages may wait for a peer link; beyond that they are dropped (the consensus
/// core retransmits what matters).
pub const PEER_QUEUE_MAX: usize = 8192;

/// How many snapshot chunks may wait for a peer link, in a queue of their own: a transfer
/// waits for room rather than growing memory, and never crowds out consensus messages,
/// which are always written first.
pub const SNAPSHOT_QUEUE_CHUNKS: usize = 4;

/// The snapshot side of a peer link: chunks to send, and a count of the connections made,
/// so that a transfer can stop when the connection it was streaming over is gone.
pub struct SnapshotLane {
    /// Chunks to send (encoded) when no consensus message waits.
    pub chunks: mpsc::Receiver<Bytes>,
    /// Goes up every time the link connects or is lost.
    pub epoch: Arc<AtomicU64>,
}

/// The shortest pause before redialling a peer; it doubles per failure up to
/// [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// The longest pause before redialling a peer.
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// How long connecting to a peer, and each side of a peer handshake, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

type Frames = Framed<Stream, LengthDelimitedCodec>;

/// The event loop's side of the links to its peers: where to queue messages for each, and
/// whether each is reachable. Messages are encoded here, once per message however many
/// peers it goes to ([`PeerFrames`]); the links only write frames.
pub struct Links {
    queues: BTreeMap<NodeId, mpsc::Sender<Bytes>>,
    reachable: BTreeMap<NodeId, Arc<AtomicBool>>,
    /// Each link's address, and what ends it alone.
    links: BTreeMap<NodeId, (String, CancellationToken)>,
    frames: PeerFrames,
    dialer: Dialer,
    /// Metrics and notable events, once the replica has them ([`Links::observe`]).
    telemetry: Arc<OnceLock<LinkTelemetry>>,
    /// `kvs_network_peer_sent_failures_total` of each peer, looked up once.
    failures: BTreeMap<NodeId, Counter>,
}

/// Where the links report: metrics, and notable events (a link lost or restored).
pub struct LinkTelemetry {
    /// The replica's metrics.
    pub metrics: Arc<Metrics>,
    /// The replica's notable events.
    pub events: Arc<Notables>,
}

impl Links {
    /// No link yet; [`Links::connect`] opens them with `dialer`.
    pub fn new(dialer: Dialer) -> Links {
        Links {
            queues: BTreeMap::new(),
            reachable: BTreeMap::new(),
            links: BTreeMap::new(),
            frames: PeerFrames::default(),
            dialer,
            telemetry: Arc::new(OnceLock::new()),
            failures: BTreeMap::new(),
        }
    }

    /// From now on the links (those running too) count their failures in `metrics` and
    /// record links lost and restored in `events`. Only the first call counts.
    pub fn observe(&mut self, metrics: Arc<Metrics>, events: Arc<Notables>) {
        let _ = self.telemetry.set(LinkTelemetry { metrics, events });
    }

    /// The peers linked, with their addresses.
    pub fn addrs(&self) -> BTreeMap<NodeId, String> {
        self.links
            .iter()
            .map(|(&id, (addr, _))| (id, addr.clone()))
            .collect()
    }

    /// Starts the outbound link to `peer` at `addr` (and its snapshot lane in `outgoing`),
    /// unless one to that address runs; a link to another address is replaced.
    pub fn connect(&mut self, peer: NodeId, addr: &str, outgoing: &mut Outgoing) {
        match self.links.get(&peer) {
            Some((current, _)) if current == addr => return,
            Some(_) => self.disconnect(peer, outgoing),
            None => {}
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        let (chunks_tx, chunks) = mpsc::channel(SNAPSHOT_QUEUE_CHUNKS);
        let epoch = Arc::new(AtomicU64::new(0));
        outgoing.add_peer(peer, chunks_tx, Arc::clone(&epoch));
        let reachable = Arc::new(AtomicBool::new(false));
        let stop = self.dialer.shutdown.child_token();
        let link = Outbound {
            to: peer,
            addr: addr.to_owned(),
            tls: self.dialer.tls.clone(),
            hello: self.dialer.hello.clone(),
            configuration: Arc::clone(&self.dialer.configuration),
            store: Arc::clone(&self.dialer.store),
            reachable: Arc::clone(&reachable),
            shutdown: stop.clone(),
            telemetry: Arc::clone(&self.telemetry),
        };
        self.dialer
            .tasks
            .spawn(link.run(rx, SnapshotLane { chunks, epoch }));
        self.queues.insert(peer, tx);
        self.reachable.insert(peer, reachable);
        self.links.insert(peer, (addr.to_owned(), stop));
    }

    /// Sets the configuration id this replica's hellos state from now on (the latest one
    /// it knows): a peer that was away while this replica was added admits it by that.
    pub fn set_configuration(&self, id: u64) {
        self.dialer.configuration.store(id, Ordering::Relaxed);
    }

    /// Ends the outbound link to `peer` (no longer a member) and its snapshot lane.
    pub fn disconnect(&mut self, peer: NodeId, outgoing: &mut Outgoing) {
        if let Some((_, stop)) = self.links.remove(&peer) {
            stop.cancel();
        }
        self.queues.remove(&peer);
        self.reachable.remove(&peer);
        outgoing.remove_peer(peer);
        // Its series go with it (they come back if it joins again).
        self.failures.remove(&peer);
        if let Some(t) = self.telemetry.get() {
            t.metrics.remove_peer(peer);
        }
    }
    /// Queues `message` for `to`, dropping it if the link's queue is full or `to` is
    /// unknown (best effort: the consensus core retransmits what matters).
    pub fn send(&mut self, to: NodeId, message: Message) {
        let Some(tx) = self.queues.get(&to) else {
            return;
        };
        match self.frames.frame(message) {
            Ok(frame) => {
                if tx.try_send(frame).is_err() {
                    self.sent_failure(to, 1);
                }
            }
            Err(e) => tracing::error!(peer = to, error = %e, "cannot encode a message to a peer"),
        }
    }

    /// Counts `n` messages to `to` dropped.
    fn sent_failure(&mut self, to: NodeId, n: u64) {
        let Some(t) = self.telemetry.get() else {
            return;
        };
        self.failures
            .entry(to)
            .or_insert_with(|| t.metrics.peer(to).sent_failures)
            .inc_by(n);
    }

    /// Whether each peer's outbound link is connected, in id order.
    pub fn reachability(&self) -> Vec<PeerReachability> {
        self.reachable
            .iter()
            .map(|(&id, flag)| PeerReachability {
                id,
                reachable: flag.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// What the outbound links of a replica share.
pub struct Dialer {
    /// What this replica presents in every handshake, but for the configuration id.
    pub hello: Hello,
    /// The latest configuration id this replica knows, stated in every hello.
    pub configuration: Arc<AtomicU64>,
    /// Records instances and reports refusals.
    pub store: Arc<IdentityStore>,
    /// Ends the links.
    pub shutdown: CancellationToken,
    /// Where the link tasks run.
    pub tasks: TaskTracker,
    /// Mutual TLS on every link (`--peer-cert-file`, ...); plain when `None`.
    pub tls: Option<Arc<PeerTls>>,
}

/// One outbound link: keeps a connection to peer `to` at `addr`, opened with `hello`.
struct Outbound {
    to: NodeId,
    addr: String,
    tls: Option<Arc<PeerTls>>,
    hello: Hello,
    configuration: Arc<AtomicU64>,
    store: Arc<IdentityStore>,
    reachable: Arc<AtomicBool>,
    shutdown: CancellationToken,
    telemetry: Arc<OnceLock<LinkTelemetry>>,
}

/// What an outbound link last was, for logging its changes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not tried yet.
    New,
    /// Connected, since then.
    Up(Instant),
    /// Down, since then.
    Down(Instant),
}

impl Outbound {
    /// Notes the link's new state: logs and records a change (lost, restored).
    fn note(&self, state: &mut LinkState, up: bool, why: &dyn std::fmt::Display) {
        let (next, change) = link_change(*state, up, Instant::now(), self.to, &self.addr, why);
        *state = next;
        let Some((warn, text)) = change else {
            return;
        };
        let to = self.to;
        match self.telemetry.get() {
            Some(t) if warn => t.events.warn(Kind::Link, text),
            Some(t) => t.events.info(Kind::Link, text),
            None if warn => tracing::warn!(peer = to, "{text}"),
            None => tracing::info!(peer = to, "{text}"),
        }
    }

    /// Counts `n` messages dropped while the link is down.
    fn dropped(&self, n: u64) {
        if let (Some(t), true) = (self.telemetry.get(), n > 0) {
            t.metrics.peer(self.to).sent_failures.inc_by(n);
        }
    }

    /// Connects (again and again) and sends what arrives on `rx` and on the snapshot lane,
    /// until shutdown or until the event loop is gone. Each accepted handshake is reported
    /// as [`LinkEvent::Admitted`].
    async fn run(self, mut rx: mpsc::Receiver<Bytes>, lane: SnapshotLane) {
        let SnapshotLane { mut chunks, epoch } = lane;
        let mut backoff = BACKOFF_MIN;
        let mut last_refusal: Option<String> = None;
        let mut state = LinkState::New;
        while !self.shutdown.is_cancelled() {
            let hello = self.hello_now();
            let connected = tokio::select! {
                c = connect(&self.addr, &hello, self.tls.as_deref(), self.to) => c,
                _ = self.shutdown.cancelled() => return,
            };
            let mut framed = match connected {
                Ok(f) => f,
                Err(e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    self.note(&mut state, false, &e);
                    self.refused(&e, &mut last_refusal);
                    // Messages queued while the peer is unreachable are stale by the time
                    // it is back; the core resends what is still needed.
                    let mut stale = 0;
                    while rx.try_recv().is_ok() {
                        stale += 1;
                    }
                    self.dropped(stale);
                    while chunks.try_recv().is_ok() {}
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            tracing::debug!(peer = self.to, addr = %self.addr, "connected to peer");
            backoff = BACKOFF_MIN;
            last_refusal = None;
            epoch.fetch_add(1, Ordering::AcqRel);
            self.reachable.store(true, Ordering::Relaxed);
            self.note(&mut state, true, &"connected");
            self.store.report(LinkEvent::Admitted(self.to));
            let ended = self.pump(&mut framed, &mut rx, &mut chunks).await;
            self.reachable.store(false, Ordering::Relaxed);
            // A transfer streaming over the lost connection stops (its chunks are dropped).
            epoch.fetch_add(1, Ordering::AcqRel);
            while chunks.try_recv().is_ok() {}
            if ended == Pump::Stop {
                return;
            }
            self.note(&mut state, false, &"the connection broke; reconnecting");
            tracing::debug!(peer = self.to, addr = %self.addr, "peer link lost; reconnecting");
        }
    }

    /// The hello to present now: with the latest configuration id this replica knows.
    fn hello_now(&self) -> Hello {
        let mut hello = self.hello.clone();
        if let Some(identity) = hello.identity.as_mut().filter(|i| !i.joining) {
            identity.configuration = self.configuration.load(Ordering::Relaxed);
        }
        hello
    }

    /// Writes queued messages to one connection until it breaks (`Reconnect`), or until
    /// shutdown or the event loop is gone (`Stop`).
    async fn pump(
        &self,
        framed: &mut Frames,
        rx: &mut mpsc::Receiver<Bytes>,
        chunks: &mut mpsc::Receiver<Bytes>,
    ) -> Pump {
        loop {
            // Consensus messages first; a snapshot chunk only when none waits.
            let first = tokio::select! {
                biased;
                m = rx.recv() => m,
                c = chunks.recv() => c,
                _ = self.shutdown.cancelled() => return Pump::Stop,
                // The receiving side never writes; a read returning means it hung up.
                r = framed.next() => {
                    if r.is_none() || matches!(r, Some(Err(_))) {
                        return Pump::Reconnect;
                    }
                    continue;
                }
            };
            let Some(first) = first else {
                return Pump::Stop; // the node is gone
            };
            // One write syscall per burst: feed everything queued, then flush once.
            let mut failed = framed.feed(first).await.is_err();
            while !failed {
                match rx.try_recv() {
                    Ok(frame) => failed = framed.feed(frame).await.is_err(),
                    Err(_) => break,
                }
            }
            if failed || SinkExt::<Bytes>::flush(framed).await.is_err() {
                return Pump::Reconnect;
            }
        }
    }

    /// Logs why a connection failed: a refusal at warn (once until it changes, the link
    /// retries every second), anything else at debug. A peer that knows this member by
    /// another data dir stops this replica.
    fn refused(&self, error: &WireError, last: &mut Option<String>) {
        let (to, addr) = (self.to, &self.addr);
        let WireError::PeerRefused(refusal) = error else {
            tracing::debug!(peer = to, %addr, %error, "cannot reach peer");
            return;
        };
        let text = refusal.to_string();
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!(peer = to, %addr, reason = %text, "peer refused our handshake");
            *last = Some(text);
        }
        match refusal {
            HandshakeRefusal::MemberReplaced { .. } => {
                self.store
                    .report(LinkEvent::Fatal(IdentityError::ReplacedAtPeer {
                        peer: to,
                        refusal: refusal.clone(),
                    }));
            }
            HandshakeRefusal::UnknownNode { node_id }
                if self.hello.role == PeerRole::Replica(*node_id) =>
            {
                self.store.report(LinkEvent::NotAMember(to));
            }
            HandshakeRefusal::Removed {
                node_id,
                configuration,
            } if self.hello.role == PeerRole::Replica(*node_id) => {
                self.store.report(LinkEvent::Removed {
                    peer: to,
                    configuration: *configuration,
                });
            }
            _ => {}
        }
    }
}

/// The next state of the link to `to` at `addr` when it is found `up` (or not) at `now`,
/// and what to say about it if that is a change: `(warn, text)`. A link stays in a state
/// from the first time it was found so, so that "restored after" counts the whole outage.
fn link_change(
    state: LinkState,
    up: bool,
    now: Instant,
    to: NodeId,
    addr: &str,
    why: &dyn std::fmt::Display,
) -> (LinkState, Option<(bool, String)>) {
    let text = match (state, up) {
        (LinkState::Up(_), true) | (LinkState::Down(_), false) => return (state, None),
        (LinkState::New, true) => (false, format!("link to peer {to} ({addr}) up")),
        (LinkState::Down(since), true) => (
            false,
            format!(
                "link to peer {to} ({addr}) restored after {:.1} s down",
                now.saturating_duration_since(since).as_secs_f64()
            ),
        ),
        (LinkState::New, false) => (true, format!("cannot reach peer {to} ({addr}): {why}")),
        (LinkState::Up(_), false) => (true, format!("lost the link to peer {to} ({addr}): {why}")),
    };
    let next = if up {
        LinkState::Up(now)
    } else {
        LinkState::Down(now)
    };
    (next, Some(text))
}

/// How a connection of an outbound link ended.
#[derive(Debug, PartialEq, Eq)]
enum Pump {
    /// The connection broke: dial again.
    Reconnect,
    /// Shutdown, or the event loop is gone: the link ends.
    Stop,
}

/// Dials `addr` and runs the handshake with `hello` only, then hangs up: how a replica
/// joining a running cluster asks a member to admit it (and learns the cluster identity).
/// With `tls`, the member's certificate must name member `expect`.
pub async fn ask_to_join(
    addr: &str,
    hello: &Hello,
    tls: Option<&PeerTls>,
    expect: NodeId,
) -> Result<Accepted, WireError> {
    let mut framed = Framed::new(dial(addr, tls, expect).await?, wire::frame_codec());
    wire::client_handshake(&mut framed, hello, HANDSHAKE_TIMEOUT).await
}

async fn connect(
    addr: &str,
    hello: &Hello,
    tls: Option<&PeerTls>,
    expect: NodeId,
) -> Result<Frames, WireError> {
    let mut framed = Framed::new(
        dial(addr, tls, expect).await?,
        wire::frame_codec_with_max(wire::FRAME_BYTES_MAX_CEILING)
            .unwrap_or_else(|_| wire::frame_codec()),
    );
    wire::client_handshake(&mut framed, hello, HANDSHAKE_TIMEOUT).await?;
    Ok(framed)
}

/// The name a dialling replica gives in TLS (SNI). Peers are checked by the member id
/// their certificate names, not by a host name.
const PEER_SERVER_NAME: &str = "kvs-peer";

/// Connects to the replica at `addr`; with `tls`, over mutual TLS, accepting only a
/// certificate chained to the peer CA that names member `expect`.
async fn dial(addr: &str, tls: Option<&PeerTls>, expect: NodeId) -> Result<Stream, WireError> {
    let timed_out = || WireError::HandshakeTimeout {
        timeout_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(stream));
    };
    let failed = |e: &dyn std::fmt::Display| {
        WireError::Io(std::io::Error::other(format!(
            "TLS with peer {expect} at {addr} failed: {e}"
        )))
    };
    let config = tls.current().client(Some(expect)).map_err(|e| failed(&e))?;
    let name = rustls_pki_types::ServerName::try_from(PEER_SERVER_NAME).map_err(|e| failed(&e))?;
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(stream)) => Ok(Stream::Dialled(Box::new(stream))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(failed(
            &"the peer closed the connection (is peer TLS on there?)",
        )),
        Ok(Err(e)) => Err(failed(&crate::tls::describe_io_error(&e))),
        Err(_) => Err(timed_out()),
    }
}

/// Who may connect on the peer port, shared by the listener (which reads it at every
/// handshake) and the event loop (which sets it as the membership changes): the member ids,
/// the voters (told to a joining replica) and the connections accepted from each member,
/// closed when it leaves.
#[derive(Debug, Default)]
pub struct PeerRegistry {
    state: std::sync::Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    allowed: BTreeSet<NodeId>,
    /// What to tell a joining replica; `None` while this replica has no membership itself.
    cluster: Option<ClusterInfo>,
    /// The latest configuration id this replica knows; `None` while it joins. A replica
    /// that is not in `allowed` but knows a later configuration is admitted (a newcomer,
    /// see [`wire::is_newcomer`]) until this replica knows that configuration too.
    configuration: Option<u64>,
    /// Connections accepted, by peer: (connection number, what ends it, the configuration
    /// the peer stated).
    inbound: BTreeMap<NodeId, Vec<(u64, CancellationToken, u64)>>,
    /// Newcomers admitted and not yet taken by the event loop: their peer address and
    /// the configuration they stated.
    newcomers: BTreeMap<NodeId, (String, u64)>,
    next_connection: u64,
}

/// A newcomer the registry admitted: a member of a later configuration than this replica
/// knows (see [`wire::is_newcomer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Newcomer {
    /// Its id.
    pub id: NodeId,
    /// Where it accepts peer connections, as it said.
    pub peer_addr: String,
    /// The configuration id it stated.
    pub configuration: u64,
}

impl PeerRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        // Every critical section is a few assignments: a panic cannot leave it half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets who may connect (`allowed`), what a joining replica is told (`cluster`) and
    /// the latest configuration id this replica knows (`configuration`, `None` while it
    /// joins: then it admits no newcomer); closes the connections of the peers no longer
    /// allowed, but for newcomers that still know a later configuration. Returns the peers
    /// whose connections it closed.
    pub fn set(
        &self,
        allowed: BTreeSet<NodeId>,
        cluster: Option<ClusterInfo>,
        configuration: Option<u64>,
    ) -> Vec<NodeId> {
        let mut state = self.lock();
        let newer = |stated: u64| configuration.is_some_and(|c| stated > c);
        let mut gone = Vec::new();
        for (id, connections) in state.inbound.iter_mut() {
            if allowed.contains(id) {
                continue;
            }
            let before = connections.len();
            connections.retain(|(_, stop, stated)| {
                let keep = newer(*stated);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            if connections.len() < before {
                gone.push(*id);
            }
        }
        state
            .inbound
            .retain(|_, connections| !connections.is_empty());
        state.newcomers.retain(|_, (_, stated)| newer(*stated));
        state.allowed = allowed;
        state.cluster = cluster;
        state.configuration = configuration;
        gone
    }

    /// The newcomers admitted since the last call (see [`Newcomer`]).
    pub fn take_newcomers(&self) -> Vec<Newcomer> {
        let mut state = self.lock();
        std::mem::take(&mut state.newcomers)
            .into_iter()
            .map(|(id, (peer_addr, configuration))| Newcomer {
                id,
                peer_addr,
                configuration,
            })
            .collect()
    }

    /// The ids that may connect now.
    pub fn allowed(&self) -> BTreeSet<NodeId> {
        self.lock().allowed.clone()
    }

    /// `base` with the replicas allowed now and what a joining replica is told.
    fn expectation(&self, base: &HandshakeExpectation) -> HandshakeExpectation {
        let state = self.lock();
        HandshakeExpectation {
            replicas: Some(state.allowed.clone()),
            cluster: state.cluster.clone(),
            configuration: state.configuration,
            ..base.clone()
        }
    }

    /// Records a connection accepted from `hello`'s replica: its number and what ends it;
    /// `None` if it is no longer admitted (it left meanwhile, or this replica learned the
    /// configuration the newcomer stated). A newcomer is remembered for
    /// [`PeerRegistry::take_newcomers`].
    fn register(&self, peer: NodeId, hello: &Hello) -> Option<(u64, CancellationToken)> {
        let mut state = self.lock();
        let (stated, peer_addr) = match &hello.identity {
            Some(identity) => (identity.configuration, identity.peer_addr.clone()),
            None => (0, String::new()),
        };
        if !state.allowed.contains(&peer) {
            let expectation = HandshakeExpectation {
                replicas: Some(state.allowed.clone()),
                configuration: state.configuration,
                ..HandshakeExpectation::replicas(hello.cluster_id.clone(), [])
            };
            if !wire::is_newcomer(hello, &expectation) {
                return None;
            }
            state.newcomers.insert(peer, (peer_addr, stated));
        }
        let number = state.next_connection;
        state.next_connection += 1;
        let stop = CancellationToken::new();
        state
            .inbound
            .entry(peer)
            .or_default()
            .push((number, stop.clone(), stated));
        Some((number, stop))
    }

    /// Forgets connection `number` of `peer`, which ended.
    fn unregister(&self, peer: NodeId, number: u64) {
        let mut state = self.lock();
        if let Some(list) = state.inbound.get_mut(&peer) {
            list.retain(|(n, _, _)| *n != number);
            if list.is_empty() {
                state.inbound.remove(&peer);
            }
        }
    }
}

/// What the inbound side of the links needs: accepted connections must meet `expect` (with
/// the replicas `registry` allows now) and present an instance `store` admits; what they
/// carry goes to the event loop on `events`.
pub struct Acceptor {
    /// This replica's id, told in the handshake.
    pub my_id: NodeId,
    /// What a connecting replica must present (the allowed ids come from `registry`).
    pub expect: HandshakeExpectation,
    /// Who may connect now.
    pub registry: Arc<PeerRegistry>,
    /// Room for received snapshot chunks: a chunk waits for it before it is handed on.
    pub credits: Credits,
    /// Records and checks instances.
    pub store: Arc<IdentityStore>,
    /// The event loop's inbox.
    pub events: mpsc::Sender<Event>,
    /// Largest frame accepted from a peer.
    pub frame_bytes_max: usize,
    /// Ends the listener and its connections.
    pub shutdown: CancellationToken,
    /// Mutual TLS on every connection (`--peer-cert-file`, ...); plain when `None`.
    pub tls: Option<Arc<PeerTls>>,
}

/// Accepts peer connections until shutdown; each is served by a task on `tasks`.
pub async fn listen(listener: TcpListener, acceptor: Arc<Acceptor>, tasks: TaskTracker) {
    while let Some((stream, remote)) =
        super::listener::accept(&listener, &acceptor.shutdown, "peer").await
    {
        let acceptor = Arc::clone(&acceptor);
        tasks.spawn(async move { acceptor.receive(stream, remote).await });
    }
}

impl Acceptor {
    /// Runs the handshake on one accepted connection, then forwards its messages.
    async fn receive(&self, stream: TcpStream, remote: SocketAddr) {
        let tls = self.tls.as_ref().map(|t| Arc::clone(&t.current().server));
        let stream = match super::listener::open(stream, tls, HANDSHAKE_TIMEOUT).await {
            Ok(stream) => stream,
            Err(super::listener::OpenError::Nothing) => return,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "refused a peer connection");
                return;
            }
        };
        // With TLS, the member the (verified) certificate names: the hello must claim it.
        let certified = self.tls.as_ref().map(|_| match stream.peer_certificate() {
            Some(cert) => crate::tls::identity::member_id(cert),
            None => Err(MemberIdError::None),
        });
        let codec = wire::frame_codec_with_max(self.frame_bytes_max)
            .unwrap_or_else(|_| wire::frame_codec());
        let mut framed = Framed::new(stream, codec);
        let Some(hello) = self.handshake(&mut framed, remote, certified).await else {
            return;
        };
        let PeerRole::Replica(from) = hello.role else {
            return;
        };
        let Some((number, left)) = self.registry.register(from, &hello) else {
            tracing::info!(peer = from, %remote, "closing a peer connection: no longer a member");
            return;
        };
        self.forward(&mut framed, from, remote, &left).await;
        self.registry.unregister(from, number);
    }

    /// Hands what an accepted connection carries to the event loop, until it ends, the
    /// replica stops, or the peer is no longer a member (`left`).
    async fn forward(
        &self,
        framed: &mut Frames,
        from: NodeId,
        remote: SocketAddr,
        left: &CancellationToken,
    ) {
        loop {
            let frame = tokio::select! {
                f = framed.next() => f,
                _ = self.shutdown.cancelled() => return,
                _ = left.cancelled() => {
                    tracing::info!(peer = from, %remote, "closing a peer connection: no longer a member");
                    return;
                }
            };
            let bytes = match frame {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    // A reset or an abrupt close is what partitions and restarts look like.
                    tracing::info!(peer = from, %remote, error = %e, "peer connection ended");
                    return;
                }
                None => return,
            };
            let msg = match wire::decode::<PeerMessage>(&bytes) {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(peer = from, %remote, error = %e, "closing a peer connection: undecodable message");
                    return;
                }
            };
            if msg.carries_empty_batch() {
                // The log refuses to store one: acting on it would stop this replica.
                tracing::warn!(peer = from, %remote, "closing a peer connection: a message with an empty batch of commands");
                return;
            }
            if let PeerMessage::SnapshotChunk { .. } = msg {
                // Not read on until the writer has room (the event loop gives it back if it
                // drops the chunk): TCP then slows the sender down.
                tokio::select! {
                    _ = self.credits.take() => {}
                    _ = self.shutdown.cancelled() => return,
                    _ = left.cancelled() => return,
                }
            }
            if self.events.send(Event::Peer { from, msg }).await.is_err() {
                return;
            }
        }
    }

    /// The handshake of an accepted connection: the peer's hello if it is a replica whose
    /// hello and instance are accepted and, over TLS, whose certificate names the member id
    /// it claims (`certified`: what the certificate names; `None` without TLS).
    async fn handshake(
        &self,
        framed: &mut Frames,
        remote: SocketAddr,
        certified: Option<Result<NodeId, MemberIdError>>,
    ) -> Option<Hello> {
        let admit = |hello: &Hello| {
            // Before the instance is recorded: a certificate of another member admits
            // nothing.
            let certificate = match (hello.role, certified) {
                (PeerRole::Replica(claimed), Some(certified)) => {
                    certificate_names(claimed, certified)
                }
                _ => Ok(()),
            };
            let claim = match (hello.role, &hello.identity) {
                (PeerRole::Replica(id), Some(identity)) => Some((id, identity.instance)),
                _ => None, // check_hello already refused a replica without an identity
            };
            let store = Arc::clone(&self.store);
            async move {
                certificate?;
                let Some((id, instance)) = claim else {
                    return Ok(());
                };
                tokio::task::spawn_blocking(move || store.admit(id, instance))
                    .await
                    .unwrap_or_else(|e| {
                        Err(HandshakeRefusal::Other {
                            code: 0,
                            message: format!("the accepting node failed: {e}"),
                        })
                    })
            }
        };
        let expect = self.registry.expectation(&self.expect);
        let handshake =
            wire::server_handshake_with(framed, &expect, self.my_id, HANDSHAKE_TIMEOUT, admit);
        match handshake.await {
            Ok(hello) => match hello.role {
                PeerRole::Replica(_) => Some(hello),
                _ => None,
            },
            Err(WireError::Refused(HandshakeRefusal::CertificateMismatch {
                claimed,
                certified,
            })) => {
                tracing::warn!(
                    %remote,
                    claimed,
                    certified,
                    "refused a peer connection: replica {claimed} presented the certificate of member {certified}"
                );
                None
            }
            Err(e) => {
                tracing::warn!(%remote, error = %e, "refused a peer connection");
                None
            }
        }
    }
}

/// Whether a replica claiming member id `claimed` may use a certificate that names
/// `certified`: only if it is the same id.
fn certificate_names(
    claimed: NodeId,
    certified: Result<NodeId, MemberIdError>,
) -> Result<(), HandshakeRefusal> {
    match certified {
        Ok(id) if id == claimed => Ok(()),
        Ok(id) => Err(HandshakeRefusal::CertificateMismatch {
            claimed,
            certified: id,
        }),
        Err(e) => Err(HandshakeRefusal::CertificateNamesNoMember {
            claimed,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_link_is_logged_when_it_changes_and_an_outage_counts_from_its_start() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let why = "refused";
        let (s, said) = link_change(LinkState::New, true, at(0), 2, "h:1", &why);
        assert_eq!(said, Some((false, "link to peer 2 (h:1) up".into())));
        let (s, said) = link_change(s, true, at(10), 2, "h:1", &why);
        assert_eq!(said, None, "still up: nothing to say");
        let (s, said) = link_change(s, false, at(1000), 2, "h:1", &why);
        assert_eq!(
            said,
            Some((true, "lost the link to peer 2 (h:1): refused".into()))
        );
        let (s, said) = link_change(s, false, at(2000), 2, "h:1", &why);
        assert_eq!(said, None, "still down: nothing to say");
        let (s, said) = link_change(s, true, at(3500), 2, "h:1", &why);
        assert_eq!(
            said,
            Some((
                false,
                "link to peer 2 (h:1) restored after 2.5 s down".into()
            ))
        );
        assert_eq!(s, LinkState::Up(at(3500)));
        let (_, said) = link_change(LinkState::New, false, at(0), 3, "h:2", &why);
        assert_eq!(
            said,
            Some((true, "cannot reach peer 3 (h:2): refused".into()))
        );
    }
}
