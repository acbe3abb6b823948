//! The event loop: the one task that owns the `paxos_core::Replica` and the state machine.
//!
//! Network tasks and the storage thread talk to it over one channel. It never blocks on IO
//! except for writing a snapshot (see the note on `take_snapshot`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{NodeId, Output, ProposeError, RecoveredState, Replica, Role, Value};
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use wire::{
    BallotInfo, ClientRequest, Command, ErrorReply, NodeRole, NodeStatus, Op, PeerMessage,
    PeerReachability, ReadConsistency, Reply, Session, WriteOp,
};

use crate::acceptor_failures::{self, FailMode, FailureClock};
use crate::clients::{self, ClientLimits, Outbox, Responder, ValueBytesSeen};
use crate::identity::{self, IdentityStore, InitialClusterState, LinkEvent};
use crate::peers;
use crate::snapshot;
use crate::state_machine::StateMachine;
use crate::storage::{self, Storage, StorageCmd, StorageEvent};
use crate::wal::WalOptions;

/// Everything a replica needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This replica's id.
    pub id: NodeId,
    /// For every member (this one included): the address to dial to send it messages. This
    /// replica listens for peers on its own entry (or on `peer_listen` if set).
    pub peers: BTreeMap<NodeId, String>,
    /// Where to listen for peers, if not this replica's entry in `peers`.
    pub peer_listen: Option<String>,
    /// Where to listen for clients.
    pub client_addr: String,
    /// Client addresses of the members, for telling clients where the leader is.
    pub client_addrs: BTreeMap<NodeId, String>,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// Peers and clients must present the same cluster id.
    pub cluster_id: String,
    /// How to start with an empty data dir (`None`: `new`). See [`crate::identity`].
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Mixed into the cluster identity at bootstrap (`None`: the cluster id).
    pub initial_cluster_token: Option<String>,
    /// Take a snapshot (and compact the log) every this many applied slots.
    pub snapshot_every: u64,
    /// Client sessions the state machine remembers (the same on every replica).
    pub sessions_max: usize,
    /// Random acceptor failures: the chance of failing within each second of uptime,
    /// drawn on a timer (see [`crate::acceptor_failures`]); 0 disables.
    pub acceptor_fail_prob: f64,
    /// What an injected acceptor failure loses.
    pub acceptor_fail_mode: FailMode,
    /// How long a failed acceptor stays down, in ms (a random time in this range).
    pub acceptor_down_ms: (u64, u64),
    /// Consensus tuning (ids and members are filled in from the fields above).
    pub heartbeat_interval_ms: u64,
    /// Election timeout range, ms.
    pub election_timeout_ms: (u64, u64),
    /// How long the server keeps an unanswered write or read before answering `Timeout`.
    pub request_timeout: Duration,
    /// Client limits.
    pub limits: ClientLimits,
    /// WAL segment size.
    pub wal_segment_bytes_max: u64,
    /// Testing only, unsafe: serve linearizable reads locally (a planted bug for the checker).
    pub unsafe_local_reads: bool,
}

impl NodeConfig {
    fn paxos_config(&self) -> paxos_core::Config {
        let mut c = paxos_core::Config::new(self.id, self.peers.keys().copied().collect());
        c.heartbeat_interval_ms = self.heartbeat_interval_ms;
        c.election_timeout_min_ms = self.election_timeout_ms.0;
        c.election_timeout_max_ms = self.election_timeout_ms.1;
        // A slot's batch, a catch-up reply and a Promise (bounded by the in-flight bytes)
        // must each fit in a peer frame (the frame ceiling) with room to spare.
        c.batch_bytes_max = 256 * 1024;
        c.inflight_bytes_max = 4 * 1024 * 1024;
        c
    }
}

/// Inputs of the event loop.
pub enum Event {
    /// A message from a peer.
    Peer {
        /// Who sent it.
        from: NodeId,
        /// The message.
        msg: PeerMessage,
    },
    /// A client request, with the way to answer it.
    Client {
        /// The request.
        req: ClientRequest,
        /// Where the answer goes.
        responder: Responder,
    },
    /// The storage thread reports.
    Storage(StorageEvent),
}

/// Reports from work the event loop handed off: the storage thread and snapshot writers.
enum Internal {
    Storage(StorageEvent),
    SnapshotWritten {
        slot: u64,
        /// The size written, or why it failed and the changes it was to include.
        result: Result<u64, (String, crate::state_machine::Delta)>,
        started: Instant,
        keys: usize,
    },
    /// A snapshot from a peer was received, checked and decoded off the loop.
    SnapshotReceived(snapshot::transfer::Received),
}

struct PendingWrite {
    responders: Vec<Responder>,
    since: Instant,
}

struct PendingRead {
    key: Bytes,
    responder: Responder,
    since: Instant,
}

/// Also snapshot once this many command bytes were applied since the last snapshot, so the
/// log kept in memory stays bounded however many commands a slot carries.
const SNAPSHOT_LOG_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Counters of the random acceptor failure mode.
#[derive(Default, Debug, Clone)]
struct FailureStats {
    failures: u64,
    recoveries: u64,
    /// Log batches the storage thread had dropped when the last failure hit.
    dropped_batches_at_failure: u64,
}

struct Node {
    cfg: NodeConfig,
    replica: Replica,
    sm: StateMachine,
    storage: Storage,
    incarnation: u64,
    start: Instant,
    peers_out: BTreeMap<NodeId, mpsc::Sender<PeerMessage>>,
    reachable: BTreeMap<NodeId, Arc<AtomicBool>>,
    pending_writes: HashMap<(u64, u64), PendingWrite>,
    pending_reads: HashMap<u64, PendingRead>,
    next_read_id: u64,
    last_snapshot_slot: u64,
    /// Command bytes applied since the last snapshot.
    applied_bytes_since_snapshot: u64,
    /// A snapshot is being written in the background.
    snapshot_in_progress: bool,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// The snapshot being received from a peer, if any (one at a time).
    incoming: Option<snapshot::transfer::Incoming>,
    /// Snapshots being sent to peers (one per peer at a time).
    outgoing: snapshot::transfer::Outgoing,
    down_until: Option<Instant>,
    failure_stats: FailureStats,
    /// When the next injected acceptor failure comes.
    failure_clock: FailureClock,
    rng: rand::rngs::StdRng,
    fatal: Option<String>,
    /// The role and ballot last logged, to log changes.
    last_role: (Role, paxos_core::Ballot),
    /// Answers to clients, written at the end of each turn of the loop.
    outbox: Outbox,
    /// The largest value in the store, for bounding what client connections hold.
    values: ValueBytesSeen,
    /// The log was behind at the last look (for logging changes).
    storage_was_backlogged: bool,
}

/// Runs a replica until `shutdown` turns true or a fatal error (such as a failed fsync).
pub async fn run(cfg: NodeConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    let _lock = DirLock::acquire(&cfg.data_dir)?;
    let paxos_config = cfg.paxos_config();
    paxos_config
        .validate()
        .map_err(|e| format!("invalid cluster configuration: {e}"))?;
    // The identity first: it decides whether this directory may be used at all, and it
    // must be durable before any connection (opening the log creates files).
    let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkEvent>();
    let store = Arc::new(open_identity(&cfg, link_tx)?);

    let (events_tx, mut events_rx) = mpsc::channel::<Event>(16 * 1024);

    // Recovery: snapshot first, then the log on top of it.
    let snap = snapshot::read_file(&cfg.data_dir).map_err(|e| format!("{e}; refusing to start"))?;
    // Storage reports on a channel of its own, unbounded (at most one report per fsync), so
    // the storage thread never waits on the event loop while the loop waits on it.
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel::<Internal>();
    let storage_tx = internal_tx.clone();
    let wal_dir = cfg.data_dir.join("wal");
    let wal_options = WalOptions {
        segment_bytes_max: cfg.wal_segment_bytes_max,
        ..WalOptions::default()
    };
    let (mut state, storage) = storage::open(&wal_dir, wal_options, move |e| {
        let _ = storage_tx.send(Internal::Storage(e));
    })?;
    let mut sm = snap.unwrap_or_default();
    sm.set_sessions_max(cfg.sessions_max);
    state.snapshot_slot = sm.applied();
    tracing::info!(
        id = cfg.id,
        snapshot_slot = state.snapshot_slot,
        commit = state.commit,
        promised = %state.promised,
        records = state.accepted.len(),
        "recovered durable state"
    );
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let replica = Replica::recover(paxos_config, rng.random(), 0, &state)
        .map_err(|e| format!("invalid cluster configuration: {e}"))?;

    // Network.
    let peer_listen = cfg
        .peer_listen
        .clone()
        .or_else(|| cfg.peers.get(&cfg.id).cloned())
        .ok_or_else(|| format!("--peers has no entry for this node ({})", cfg.id))?;
    let peer_listener = TcpListener::bind(&peer_listen)
        .await
        .map_err(|e| format!("cannot listen for peers on {peer_listen}: {e}"))?;
    let client_listener = TcpListener::bind(&cfg.client_addr)
        .await
        .map_err(|e| format!("cannot listen for clients on {}: {e}", cfg.client_addr))?;
    let client_local: SocketAddr = client_listener
        .local_addr()
        .map_err(|e| format!("client listener: {e}"))?;
    tracing::info!(id = cfg.id, peers = %peer_listen, clients = %client_local, "listening");

    let own = store.snapshot().wire(cfg.sessions_max);
    let hello = wire::Hello::replica(cfg.cluster_id.clone(), cfg.id, own.clone());
    let mut peers_out = BTreeMap::new();
    let mut outgoing = snapshot::transfer::Outgoing::default();
    let mut reachable = BTreeMap::new();
    for (&peer, addr) in &cfg.peers {
        if peer == cfg.id {
            continue;
        }
        let (tx, rx) = mpsc::channel(peers::PEER_QUEUE_MAX);
        let (chunks_tx, chunks) = mpsc::channel(peers::SNAPSHOT_QUEUE_CHUNKS);
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        outgoing.add_peer(peer, chunks_tx, epoch.clone());
        let flag = Arc::new(AtomicBool::new(false));
        tokio::spawn(peers::outbound(
            peer,
            addr.clone(),
            hello.clone(),
            store.clone(),
            rx,
            peers::SnapshotLane { chunks, epoch },
            flag.clone(),
            shutdown.clone(),
        ));
        peers_out.insert(peer, tx);
        reachable.insert(peer, flag);
    }
    tokio::spawn(peers::listen(
        peer_listener,
        cfg.id,
        wire::HandshakeExpectation::replicas_of(cfg.cluster_id.clone(), own),
        store.clone(),
        events_tx.clone(),
        wire::FRAME_BYTES_MAX_CEILING,
        shutdown.clone(),
    ));
    if !store.snapshot().joined && !join(&store, &mut link_rx, &mut shutdown).await? {
        storage.close();
        return Ok(());
    }
    let outbox = Outbox::default();
    let values = ValueBytesSeen::default();
    note_values(&sm, &values);
    tokio::spawn(clients::listen(
        client_listener,
        cfg.cluster_id.clone(),
        clients::ClientService {
            my_id: cfg.id,
            events: events_tx.clone(),
            outbox: outbox.clone(),
            limits: cfg.limits.clone(),
            values: values.clone(),
        },
        shutdown.clone(),
    ));
    drop(events_tx);

    let failure_clock = FailureClock::new(cfg.acceptor_fail_prob, Instant::now());
    let mut node = Node {
        last_snapshot_slot: sm.applied(),
        cfg,
        replica,
        sm,
        storage,
        incarnation: 0,
        start: Instant::now(),
        peers_out,
        reachable,
        pending_writes: HashMap::new(),
        pending_reads: HashMap::new(),
        next_read_id: 0,
        applied_bytes_since_snapshot: 0,
        snapshot_in_progress: false,
        internal_tx,
        incoming: None,
        outgoing,
        down_until: None,
        failure_stats: FailureStats::default(),
        failure_clock,
        rng,
        fatal: None,
        last_role: (Role::Follower, paxos_core::Ballot::ZERO),
        outbox,
        values,
        storage_was_backlogged: false,
    };
    node.drain();

    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Injected failures are drawn on a timer of their own, whatever the load.
    let mut failure_draws = tokio::time::interval(acceptor_failures::DRAW_INTERVAL);
    failure_draws.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutting_down: Option<Instant> = None;
    loop {
        if let Some(reason) = node.fatal.take() {
            node.fail_all_pending();
            return Err(reason);
        }
        let deadline = node.deadline();
        // Backpressure: while the log is behind, no new work is taken (network tasks wait,
        // then TCP pushes back), so a stalled disk cannot queue records without bound. The
        // storage report that ends the backlog wakes the loop.
        let backlogged = node.storage_backlogged();
        tokio::select! {
            ev = events_rx.recv(), if !backlogged => {
                let Some(ev) = ev else { break };
                node.handle(ev);
                // Take whatever else is already queued before draining, so proposals share
                // slots and persist records share one fsync.
                for _ in 0..1024 {
                    if node.storage.is_backlogged() {
                        break;
                    }
                    match events_rx.try_recv() {
                        Ok(ev) => node.handle(ev),
                        Err(_) => break,
                    }
                }
            }
            ev = internal_rx.recv() => {
                match ev {
                    Some(Internal::Storage(ev)) => node.handle(Event::Storage(ev)),
                    Some(Internal::SnapshotWritten { slot, result, started, keys }) => {
                        node.snapshot_written(slot, result, started, keys);
                    }
                    Some(Internal::SnapshotReceived(received)) => node.snapshot_received(received),
                    None => break,
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => node.on_timer().await,
            _ = failure_draws.tick(), if node.failure_clock.enabled() => node.draw_failure(),
            _ = sweep.tick() => {
                node.expire_pending();
                if let Some(t) = shutting_down {
                    let idle = node.pending_writes.is_empty() && node.pending_reads.is_empty();
                    if idle || t.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                }
            }
            ev = link_rx.recv() => {
                if let Some(LinkEvent::Fatal(reason)) = ev {
                    node.fatal = Some(reason);
                }
            }
            _ = shutdown.changed(), if shutting_down.is_none() => {
                tracing::info!(id = node.cfg.id, "shutting down: finishing in-flight requests");
                shutting_down = Some(Instant::now());
            }
        }
        node.drain();
    }
    node.fail_all_pending();
    node.storage.close();
    tracing::info!(id = node.cfg.id, "stopped");
    Ok(())
}

/// Opens (or bootstraps) the data dir's identity and says how, see [`crate::identity`].
fn open_identity(
    cfg: &NodeConfig,
    links: mpsc::UnboundedSender<LinkEvent>,
) -> Result<IdentityStore, String> {
    let flags = identity::Bootstrap {
        cluster_name: cfg.cluster_id.clone(),
        member_id: cfg.id,
        members: cfg.peers.keys().copied().collect(),
        token: cfg.initial_cluster_token.clone(),
        state: cfg.initial_cluster_state,
    };
    let (ident, opened) = identity::open(&cfg.data_dir, &flags).map_err(|e| e.to_string())?;
    let uid = ident.cluster_uid.to_string();
    let instance = ident.instance.to_string();
    match opened {
        identity::Opened::Stored => {
            tracing::info!(id = cfg.id, cluster = %uid, %instance, joined = ident.joined, "cluster identity");
        }
        identity::Opened::Bootstrapped => tracing::info!(
            id = cfg.id,
            cluster = %uid,
            %instance,
            "bootstrapped a new cluster identity for an empty data dir"
        ),
        identity::Opened::Adopted => tracing::warn!(
            id = cfg.id,
            cluster = %uid,
            %instance,
            "this data dir has a log but no identity (an earlier version wrote it): adopted \
             the configured cluster and membership"
        ),
    }
    Ok(IdentityStore::new(cfg.data_dir.clone(), ident, links))
}

/// Waits until a majority of the other members recorded this data dir, then records that
/// it may vote. Until then no peer message reaches the consensus core and no client is
/// served. Returns `Ok(false)` on shutdown, and an error if a peer knows this member by
/// another data dir.
async fn join(
    store: &IdentityStore,
    links: &mut mpsc::UnboundedReceiver<LinkEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, String> {
    let need = store.snapshot().join_quorum();
    tracing::info!(
        need,
        "joining: this data dir votes once {need} other members have recorded it"
    );
    let mut admitted = std::collections::BTreeSet::new();
    while admitted.len() < need {
        tokio::select! {
            ev = links.recv() => match ev {
                Some(LinkEvent::Admitted(peer)) => {
                    admitted.insert(peer);
                }
                Some(LinkEvent::Fatal(reason)) => {
                    return Err(format!("{reason}; refusing to start"));
                }
                None => return Err("the peer links stopped while joining".into()),
            },
            _ = shutdown.changed() => return Ok(false),
        }
    }
    store.mark_joined()?;
    tracing::info!(recorded_by = ?admitted, "joined: this data dir may vote");
    Ok(true)
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn deadline(&self) -> Instant {
        if let Some(t) = self.down_until {
            return t;
        }
        self.start + Duration::from_millis(self.replica.poll_timeout())
    }

    fn is_down(&self) -> bool {
        self.down_until.is_some()
    }

    /// True while the log is too far behind to take new work; logs the changes.
    fn storage_backlogged(&mut self) -> bool {
        let backlogged = self.storage.is_backlogged();
        if backlogged != self.storage_was_backlogged {
            self.storage_was_backlogged = backlogged;
            if backlogged {
                tracing::warn!(
                    id = self.cfg.id,
                    bytes = self.storage.backlog_bytes(),
                    "the log is behind: taking no new requests or messages until it catches up"
                );
            } else {
                tracing::info!(id = self.cfg.id, "the log caught up");
            }
        }
        backlogged
    }

    async fn on_timer(&mut self) {
        if let Some(t) = self.down_until {
            if Instant::now() >= t {
                if self.snapshot_in_progress {
                    // Recover from the snapshot being written, once it is on disk.
                    self.down_until = Some(Instant::now() + Duration::from_millis(20));
                } else {
                    self.recover_acceptor().await;
                }
            }
            return;
        }
        let now = self.now_ms();
        self.replica.handle_timeout(now);
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Peer { from, msg } => {
                if self.is_down() {
                    return; // a failed acceptor hears nothing
                }
                match msg {
                    PeerMessage::Paxos(m) => {
                        let now = self.now_ms();
                        self.replica.handle_message(now, from, m);
                    }
                    PeerMessage::SnapshotChunk {
                        slot,
                        total_bytes,
                        offset,
                        data,
                    } => self.on_snapshot_chunk(from, slot, total_bytes, offset, data),
                }
            }
            Event::Client { req, responder } => self.on_client(req, responder),
            Event::Storage(StorageEvent::Durable { incarnation, id }) => {
                if incarnation == self.incarnation && !self.is_down() {
                    let now = self.now_ms();
                    self.replica.handle_durable(now, id);
                }
            }
            Event::Storage(StorageEvent::Fatal(reason)) => {
                tracing::error!(id = self.cfg.id, %reason, "stopping: the log can no longer be trusted");
                self.fatal = Some(reason);
            }
        }
    }

    /// Carries out every output of the replica.
    fn drain(&mut self) {
        if self.is_down() {
            self.outbox.flush();
            return;
        }
        while let Some(out) = self.replica.poll_output() {
            match out {
                Output::Send { to, message } => {
                    if let Some(tx) = self.peers_out.get(&to) {
                        let _ = tx.try_send(PeerMessage::Paxos(message));
                    }
                }
                Output::Persist { id, entries } => {
                    let cmd = StorageCmd::Append {
                        incarnation: self.incarnation,
                        id,
                        entries,
                    };
                    if let Err(e) = self.storage.send(cmd) {
                        self.fatal = Some(e);
                        return;
                    }
                }
                Output::Committed { slot, value } => self.apply(slot, value),
                Output::ReadReady { id } => {
                    if let Some(r) = self.pending_reads.remove(&id) {
                        let value = self.sm.get_bytes(&r.key);
                        r.responder.respond(Ok(Reply::Value {
                            value,
                            stale: false,
                        }));
                    }
                }
                Output::ReadAborted { id, leader_hint } => {
                    if let Some(r) = self.pending_reads.remove(&id) {
                        r.responder.respond(Err(self.not_leader(leader_hint)));
                    }
                }
                Output::ProposalsDropped {
                    commands,
                    leader_hint,
                } => {
                    for raw in commands {
                        let Ok(c) = Command::decode(&raw) else {
                            continue;
                        };
                        let key = (c.session.client_id, c.session.seq);
                        if let Some(p) = self.pending_writes.remove(&key) {
                            for r in p.responders {
                                r.respond(Err(self.not_leader(leader_hint)));
                            }
                        }
                    }
                }
                Output::SendSnapshot { to } => self.ship_snapshot(to),
            }
        }
        let role = (self.replica.role(), self.replica.ballot());
        if role.0 != self.last_role.0 {
            tracing::info!(
                id = self.cfg.id,
                role = %role.0,
                ballot = %role.1,
                leader = ?self.replica.leader_hint(),
                commit = self.replica.commit_index(),
                "role changed"
            );
        }
        self.last_role = role;
        self.outbox.flush();
    }

    fn apply(&mut self, slot: u64, value: Value) {
        if let Value::Commands(cmds) = value {
            for raw in cmds {
                self.applied_bytes_since_snapshot += raw.len() as u64;
                match Command::decode(&raw) {
                    Ok(c) => {
                        match &c.op {
                            WriteOp::Put { value, .. } => self.values.observe(value.len()),
                            WriteOp::Cas { new, .. } => self.values.observe(new.len()),
                            _ => {}
                        }
                        let applied = self.sm.apply(slot, c);
                        let key = (applied.session.client_id, applied.session.seq);
                        if let Some(p) = self.pending_writes.remove(&key) {
                            for r in p.responders {
                                r.respond(applied.reply.clone());
                            }
                        }
                    }
                    Err(e) => {
                        // Every replica skips the same bytes, so they stay in agreement.
                        tracing::error!(slot, error = %e, "skipping an undecodable command");
                    }
                }
            }
        }
        self.sm.finish_slot(slot);
        // Replicas snapshot at different points (offset by id), so they never all pause
        // to write one at the same moment.
        let stagger = self.cfg.snapshot_every / 8 * (self.cfg.id % 8);
        let first = self.last_snapshot_slot == 0;
        let due_slot =
            self.last_snapshot_slot + self.cfg.snapshot_every + if first { stagger } else { 0 };
        let stagger_bytes = SNAPSHOT_LOG_BYTES_MAX / 8 * (self.cfg.id % 8);
        if self.sm.applied() >= due_slot
            || self.applied_bytes_since_snapshot >= SNAPSHOT_LOG_BYTES_MAX + stagger_bytes
        {
            self.take_snapshot();
        }
    }

    /// Writes a snapshot of the state machine, then lets the core and the log forget what
    /// it covers. This writes and fsyncs on the event loop; with a large store that is a
    /// pause, which a background writer over a frozen copy would avoid.
    fn take_snapshot(&mut self) {
        if self.snapshot_in_progress {
            return;
        }
        // The next snapshot is the previous file with the changes since merged in, written
        // by a blocking thread; the loop only hands over the changes and the sessions.
        let delta = self.sm.take_delta();
        let sessions = self.sm.sessions().clone();
        let slot = self.sm.applied();
        let keys = self.sm.len();
        let dir = self.cfg.data_dir.clone();
        let tx = self.internal_tx.clone();
        self.snapshot_in_progress = true;
        self.applied_bytes_since_snapshot = 0;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let result = match snapshot::write_merged(&dir, slot, &delta, &sessions) {
                Ok(size) => Ok(size),
                Err(e) => Err((e.to_string(), delta)),
            };
            let _ = tx.send(Internal::SnapshotWritten {
                slot,
                result,
                started,
                keys,
            });
        });
    }

    /// A background snapshot is durable (or failed): let the core and the log forget what
    /// it covers.
    fn snapshot_written(
        &mut self,
        slot: u64,
        result: Result<u64, (String, crate::state_machine::Delta)>,
        started: Instant,
        keys: usize,
    ) {
        self.snapshot_in_progress = false;
        let size = match result {
            Ok(size) => size,
            Err((e, delta)) => {
                // A snapshot is an optimisation: the log still holds everything. The changes
                // go back into the delta so the next snapshot includes them.
                self.sm.restore_delta(delta);
                tracing::error!(error = %e, "cannot write a snapshot; keeping the full log");
                return;
            }
        };
        tracing::info!(
            slot,
            bytes = size,
            keys,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        if slot <= self.last_snapshot_slot {
            return;
        }
        self.last_snapshot_slot = slot;
        self.replica.compact(slot);
        if let Err(e) = self.storage.send(StorageCmd::Compact { slot }) {
            self.fatal = Some(e);
        }
    }

    /// Streams the current snapshot file to a lagging peer, from a blocking thread: one
    /// transfer per peer at a time, an older one cancelled when a newer snapshot exists.
    fn ship_snapshot(&mut self, to: NodeId) {
        let path = self.cfg.data_dir.join(snapshot::FILE_NAME);
        let slot = self.last_snapshot_slot;
        if self.outgoing.start(to, path, slot) == snapshot::transfer::Start::Started {
            tracing::info!(peer = to, slot, "shipping a snapshot to a lagging peer");
        }
    }

    /// A chunk of a snapshot from a peer: checked here, written and checked off the loop.
    fn on_snapshot_chunk(&mut self, from: NodeId, slot: u64, total: u64, offset: u64, data: Bytes) {
        use snapshot::transfer::{Chunk, Incoming};
        // While a local snapshot is being written, a received one could be overwritten by
        // that older one; the sender retries later.
        if slot <= self.sm.applied() || self.snapshot_in_progress {
            return;
        }
        if offset == 0 {
            match &self.incoming {
                // The file of a complete one is being checked: let that finish first.
                Some(i) if i.is_complete() => return,
                // One at a time: a newer (or restarted) transfer replaces the current one.
                Some(i) if i.from() != from && i.slot() >= slot => return,
                _ => {}
            }
            let tx = self.internal_tx.clone();
            self.incoming = Some(Incoming::start(
                &self.cfg.data_dir,
                from,
                slot,
                total,
                move |received| {
                    let _ = tx.send(Internal::SnapshotReceived(received));
                },
            ));
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return;
        };
        match incoming.accept(from, slot, total, offset, data) {
            Chunk::Queued | Chunk::Complete | Chunk::Ignored => {}
            Chunk::Broken(reason) => {
                tracing::info!(peer = from, slot, %reason, "dropping a snapshot being received");
                self.incoming = None;
            }
        }
    }

    /// A received snapshot was written, fsynced and decoded off the loop: publish it and
    /// install it, unless this replica has moved past it meanwhile.
    fn snapshot_received(&mut self, received: snapshot::transfer::Received) {
        let snapshot::transfer::Received {
            from,
            slot,
            path,
            result,
        } = received;
        let ours = self
            .incoming
            .as_ref()
            .is_some_and(|i| i.from() == from && i.slot() == slot && i.is_complete());
        if !ours {
            let _ = std::fs::remove_file(&path);
            return;
        }
        self.incoming = None;
        let sm = match result {
            Ok(sm) => sm,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(peer = from, error = %e, "discarding a received snapshot");
                return;
            }
        };
        if self.is_down() || sm.applied() <= self.sm.applied() || self.snapshot_in_progress {
            let _ = std::fs::remove_file(&path);
            return;
        }
        if sm.applied() != slot {
            tracing::warn!(
                peer = from,
                slot,
                "a received snapshot's slot does not match its header"
            );
        }
        if let Err(e) = snapshot::publish_incoming(&self.cfg.data_dir, &path) {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(peer = from, error = %e, "cannot install a received snapshot");
            return;
        }
        let slot = sm.applied();
        tracing::info!(
            peer = from,
            slot,
            keys = sm.len(),
            "installed a snapshot from a peer"
        );
        note_values(&sm, &self.values);
        self.sm = sm;
        self.sm.set_sessions_max(self.cfg.sessions_max);
        self.last_snapshot_slot = slot;
        self.applied_bytes_since_snapshot = 0;
        let now = self.now_ms();
        self.replica.install_snapshot(now, slot);
        if let Err(e) = self.storage.send(StorageCmd::Compact { slot }) {
            self.fatal = Some(e);
        }
    }

    fn not_leader(&self, hint: Option<NodeId>) -> ErrorReply {
        let hint = hint.filter(|&h| h != self.cfg.id);
        match hint {
            Some(l) => ErrorReply::NotLeader {
                leader: Some(l),
                leader_addr: self.cfg.client_addrs.get(&l).cloned(),
            },
            None => ErrorReply::Unavailable {
                reason: "no leader elected yet".into(),
            },
        }
    }

    fn propose_error(&self, e: ProposeError) -> ErrorReply {
        match e {
            ProposeError::NotLeader { leader_hint } => self.not_leader(leader_hint),
            ProposeError::Busy => ErrorReply::Busy,
        }
    }

    fn on_client(&mut self, req: ClientRequest, responder: Responder) {
        let op = req.op;
        if let Err(e) = wire::validate(&op) {
            responder.respond(Err(e));
            return;
        }
        if self.is_down() && !matches!(op, Op::Status) {
            responder.respond(Err(ErrorReply::Unavailable {
                reason: "this replica is recovering from an injected acceptor failure".into(),
            }));
            return;
        }
        let write = match op {
            Op::Status => {
                let status = self.status();
                responder.respond(Ok(Reply::Status(Box::new(status))));
                return;
            }
            Op::Get {
                key,
                consistency: ReadConsistency::Stale,
            } => {
                let value = self.sm.get_bytes(&key);
                responder.respond(Ok(Reply::Value { value, stale: true }));
                return;
            }
            Op::Get {
                key,
                consistency: ReadConsistency::Linearizable,
            } if self.cfg.unsafe_local_reads => {
                // The planted bug: claim linearizability without confirming leadership.
                let value = self.sm.get_bytes(&key);
                responder.respond(Ok(Reply::Value {
                    value,
                    stale: false,
                }));
                return;
            }
            Op::Get {
                key,
                consistency: ReadConsistency::Linearizable,
            } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                let now = self.now_ms();
                match self.replica.read(now, id) {
                    Ok(()) => {
                        self.pending_reads.insert(
                            id,
                            PendingRead {
                                key,
                                responder,
                                since: Instant::now(),
                            },
                        );
                    }
                    Err(e) => responder.respond(Err(self.propose_error(e))),
                }
                return;
            }
            Op::Put { key, value } => WriteOp::Put { key, value },
            Op::Delete { key } => WriteOp::Delete { key },
            Op::Cas { key, expected, new } => WriteOp::Cas { key, expected, new },
            Op::RegisterSession => WriteOp::RegisterSession,
        };
        let session = match (req.session, &write) {
            (Some(session), WriteOp::Put { .. } | WriteOp::Delete { .. } | WriteOp::Cas { .. }) => {
                if session.client_id == wire::NO_CLIENT_ID {
                    responder.respond(Err(ErrorReply::Invalid {
                        reason: format!("client id {} is reserved", wire::NO_CLIENT_ID),
                    }));
                    return;
                }
                // Answered without the log when applying could not change the answer.
                if let Some(answer) = self.sm.settled(&session) {
                    responder.respond(answer);
                    return;
                }
                session
            }
            // A registration, or a write without a session: no session-table entry, only a
            // tag to find this client when the command is applied.
            _ => self.sessionless_tag(),
        };
        let key = (session.client_id, session.seq);
        if let Some(p) = self.pending_writes.get_mut(&key) {
            p.responders.push(responder); // a retry of a write still in flight here
            return;
        }
        let raw = match (Command { session, op: write }).encode() {
            Ok(r) => r,
            Err(e) => {
                responder.respond(Err(ErrorReply::Invalid {
                    reason: e.to_string(),
                }));
                return;
            }
        };
        let now = self.now_ms();
        match self.replica.propose(now, raw) {
            Ok(()) => {
                self.pending_writes.insert(
                    key,
                    PendingWrite {
                        responders: vec![responder],
                        since: Instant::now(),
                    },
                );
            }
            Err(e) => responder.respond(Err(self.propose_error(e))),
        }
    }

    /// A session for a command without one: the reserved client id and a random tag no
    /// pending command uses.
    fn sessionless_tag(&mut self) -> Session {
        loop {
            let tag = Session {
                client_id: wire::NO_CLIENT_ID,
                seq: self.rng.random(),
            };
            if !self.pending_writes.contains_key(&(tag.client_id, tag.seq)) {
                return tag;
            }
        }
    }

    /// Answers requests that waited too long. A write's outcome is then unknown.
    fn expire_pending(&mut self) {
        let limit = self.cfg.request_timeout;
        let expired: Vec<(u64, u64)> = self
            .pending_writes
            .iter()
            .filter(|(_, p)| p.since.elapsed() > limit)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(p) = self.pending_writes.remove(&k) {
                for r in p.responders {
                    r.respond(Err(ErrorReply::Timeout));
                }
            }
        }
        let expired: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, p)| p.since.elapsed() > limit)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(p) = self.pending_reads.remove(&k) {
                p.responder.respond(Err(ErrorReply::Timeout));
            }
        }
    }

    /// Answers everything still waiting: writes with `Timeout` (they may still be chosen),
    /// reads with `Unavailable` (a read that is not served has no effect).
    fn fail_all_pending(&mut self) {
        for (_, p) in self.pending_writes.drain() {
            for r in p.responders {
                r.respond(Err(ErrorReply::Timeout));
            }
        }
        for (_, p) in self.pending_reads.drain() {
            p.responder.respond(Err(ErrorReply::Unavailable {
                reason: "the replica stopped before confirming the read".into(),
            }));
        }
        self.outbox.flush();
    }

    /// Draws whether the acceptor fails now (the chance covers the time since the last
    /// draw; a replica that is down does not draw).
    fn draw_failure(&mut self) {
        if self.is_down() {
            return;
        }
        if self.failure_clock.draw(Instant::now(), &mut self.rng) {
            self.fail_acceptor();
        }
    }

    /// The built-in fault mode: the acceptor loses everything it holds in memory (and, in
    /// [`FailMode::Crash`], every log record not yet reported durable) and stays down for
    /// a while. No reply that depended on a lost record was sent: the core releases
    /// Promise and Accepted only once their batch is reported durable, reports of a failed
    /// incarnation are ignored, and clients are answered only for chosen commands.
    fn fail_acceptor(&mut self) {
        let (lo, hi) = self.cfg.acceptor_down_ms;
        let down_ms = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        self.failure_stats.failures += 1;
        self.incarnation += 1;
        self.failure_stats.dropped_batches_at_failure = self.storage.dropped_batches();
        if self.cfg.acceptor_fail_mode == FailMode::Crash {
            self.storage.crash(self.incarnation);
        }
        self.down_until = Some(Instant::now() + Duration::from_millis(down_ms));
        self.incoming = None;
        self.outgoing.cancel_all();
        self.fail_all_pending();
        tracing::warn!(
            id = self.cfg.id,
            down_ms,
            mode = %self.cfg.acceptor_fail_mode,
            failures = self.failure_stats.failures,
            "injected acceptor failure: in-memory state dropped (in crash mode, log records \
             not yet durable too)"
        );
    }

    /// Rebuilds the replica from disk: the log, read back from its files, and the latest
    /// snapshot.
    async fn recover_acceptor(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = self.storage.send(StorageCmd::DurableState { reply: tx }) {
            self.fatal = Some(e);
            return;
        }
        let mut state: RecoveredState = match rx.await {
            Ok(s) => s,
            Err(_) => {
                self.fatal = Some("the log writer stopped during recovery".into());
                return;
            }
        };
        let sm = match snapshot::read_file(&self.cfg.data_dir) {
            Ok(Some(sm)) => sm,
            Ok(None) => StateMachine::new(),
            Err(e) => {
                self.fatal = Some(format!("cannot reload the snapshot: {e}"));
                return;
            }
        };
        state.snapshot_slot = sm.applied();
        self.last_snapshot_slot = sm.applied();
        self.applied_bytes_since_snapshot = 0;
        note_values(&sm, &self.values);
        self.sm = sm;
        self.sm.set_sessions_max(self.cfg.sessions_max);
        let seed = self.rng.random();
        let now = self.now_ms();
        match Replica::recover(self.cfg.paxos_config(), seed, now, &state) {
            Ok(r) => self.replica = r,
            Err(e) => {
                self.fatal = Some(format!("cannot rebuild the replica: {e}"));
                return;
            }
        }
        self.down_until = None;
        self.failure_clock.resume(Instant::now());
        self.failure_stats.recoveries += 1;
        // The durable state came after every append queued before the failure was handled.
        let lost_batches = self
            .storage
            .dropped_batches()
            .saturating_sub(self.failure_stats.dropped_batches_at_failure);
        tracing::warn!(
            id = self.cfg.id,
            snapshot_slot = state.snapshot_slot,
            commit = state.commit,
            recoveries = self.failure_stats.recoveries,
            lost_batches,
            "acceptor recovered from disk; catching up from peers"
        );
    }

    fn status(&self) -> NodeStatus {
        let role = if self.is_down() {
            NodeRole::Down
        } else {
            match self.replica.role() {
                Role::Leader => NodeRole::Leader,
                Role::Candidate => NodeRole::Candidate,
                Role::Follower => NodeRole::Follower,
            }
        };
        let ballot = self.replica.ballot();
        NodeStatus {
            id: self.cfg.id,
            client_addr: self.cfg.client_addr.clone(),
            role,
            ballot: BallotInfo {
                round: ballot.round,
                node: ballot.node,
            },
            commit_index: self.replica.commit_index(),
            applied_index: self.sm.applied(),
            leader: if self.is_down() {
                None
            } else {
                self.replica.leader_hint()
            },
            peers: self
                .reachable
                .iter()
                .map(|(&id, f)| PeerReachability {
                    id,
                    reachable: f.load(Ordering::Relaxed),
                })
                .collect(),
            acceptor_failures: self.failure_stats.failures,
            acceptor_recoveries: self.failure_stats.recoveries,
            acceptor_down: self.is_down(),
            uptime_ms: self.start.elapsed().as_millis() as u64,
        }
    }
}

/// Notes the largest value of a loaded or received state machine.
fn note_values(sm: &StateMachine, values: &ValueBytesSeen) {
    values.observe(sm.data().values().map(|v| v.len()).max().unwrap_or(0));
}

/// An exclusive lock on a data directory, so two servers never share one.
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    fn acquire(dir: &std::path::Path) -> Result<Self, String> {
        use std::os::fd::AsRawFd;
        let path = dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a valid descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "data dir {} is in use by another kvs-server (could not lock {})",
                dir.display(),
                path.display()
            ));
        }
        Ok(DirLock { _file: file })
    }
}
