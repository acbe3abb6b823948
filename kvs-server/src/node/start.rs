//! Start-up, in order: lock the data dir, open (or bootstrap) its identity, learn the
//! cluster identity from the members if this data dir joins a running cluster, recover the
//! state machine and the membership from the snapshot and the consensus state from the
//! log, bind the listeners, start the peer links, join the cluster if this data dir is new,
//! then start serving clients.
//!
//! The membership comes from the data dir: the snapshot carries it (and the log the
//! changes since). A new cluster's first membership is written as a snapshot of slot 0
//! before the replica first runs, built from the bootstrap member ids of its identity and
//! the addresses of the flags; after that, `--peers` only gives addresses. A data dir that
//! joins a running cluster holds no membership until the leader sends it a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{
    Membership, MembershipLog, NodeId, RecoveredState, Replica, RECONFIG_DELAY_DEFAULT,
};
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::faults::Faults;
use super::monitor::Monitor;
use super::pending::Pending;
use super::snapshots::Snapshots;
use super::{note_values, Node, NodeConfig, Seen};
use crate::admin::{Admin, Notables, Status};
use crate::dir_lock::DirLock;
use crate::error::ServerError;
use crate::event::{Event, Report};
use crate::identity::{self, IdentityError, IdentityStore, LinkEvent, Origin};
use crate::metrics::Metrics;
use crate::net::clients::{self, ClientService, Outbox, ValueBytesSeen};
use crate::net::peers::{self, Acceptor, Dialer, Links, PeerRegistry};
use crate::snapshot;
use crate::snapshot::transfer::{Credits, Outgoing};
use crate::state_machine::StateMachine;
use crate::storage::{self, Storage, WAL_DIR_NAME};
use crate::tls::{ClientTls, PeerTls};
use crate::wal::WalOptions;

/// Events the inbox of the event loop holds at most: network tasks wait when it is full.
const INBOX_EVENTS_MAX: usize = 16 * 1024;

/// How long a replica that stops while joining waits for its peer links to end.
const LINKS_FINISH_MAX: Duration = Duration::from_secs(2);

/// How long a replica joining a running cluster waits between rounds of asking the
/// members given in `--peers` to admit it.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// A replica ready to run its event loop.
pub(super) struct Started {
    pub(super) node: Node,
    /// Network events: client requests and peer messages.
    pub(super) inbox: mpsc::Receiver<Event>,
    /// Reports of the storage thread and of snapshot work.
    pub(super) reports: mpsc::UnboundedReceiver<Report>,
    /// Reports of the peer links about identities.
    pub(super) links: mpsc::UnboundedReceiver<LinkEvent>,
    /// Ends the peer links, once the loop has stopped (they stay up while requests in
    /// flight finish at shutdown).
    pub(super) links_stop: CancellationToken,
    /// Every network task: listeners, client connections, peer links.
    pub(super) tasks: TaskTracker,
    /// Ends the client listener and connections: on shutdown (a child of its token), or
    /// when the replica stops for any other reason (a fatal error).
    pub(super) clients_stop: CancellationToken,
    /// Ends the admin listener when dropped, once the replica has stopped.
    pub(super) _admin: DropGuard,
    /// Ends the checks of the TLS files when dropped.
    pub(super) _tls: DropGuard,
    pub(super) _lock: DirLock,
}

/// Starts a replica: everything up to its event loop. `None` if `shutdown` came while it
/// waited to join.
pub(super) async fn start(
    cfg: NodeConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::Io {
        op: "create data dir",
        path: cfg.data_dir.clone(),
        source,
    })?;
    let lock = DirLock::acquire(&cfg.data_dir)?;
    let paxos_config = cfg.paxos_config();
    paxos_config.validate()?;
    // The admin listener first, so that a replica recovering or joining answers `/ready`.
    let monitoring = Monitoring::start(&cfg).await?;
    let tls = NodeTls::start(&cfg, &monitoring.metrics)?;
    // The identity first: it decides whether this directory may be used at all, and it
    // must be durable before any connection (opening the log creates files).
    let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkEvent>();
    let store = Arc::new(open_identity(&cfg, link_tx)?);
    if store.snapshot().origin == Origin::Joining
        && !learn_cluster(&cfg, &store, tls.peer.clone(), shutdown).await?
    {
        return Ok(None);
    }
    let (reports_tx, reports) = mpsc::unbounded_channel::<Report>();
    crate::metrics::register_wal_dir(&cfg.data_dir.join(WAL_DIR_NAME), &monitoring.metrics);
    let (sm, state, storage) =
        recover(&cfg, &store, reports_tx.clone()).map_err(|e| damaged(&cfg, e))?;
    let mut rng = StdRng::from_os_rng();
    let replica = if crate::repair::is_marked(&cfg.data_dir) {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            "repairing: this replica votes for nothing until it has relearned the log from its peers"
        );
        Replica::recover_for_repair(paxos_config, rng.random(), 0, &state)?
    } else if state.membership.is_none() {
        tracing::info!(
            id = cfg.id,
            "joining a running cluster: waiting for a snapshot from the leader, which carries \
             the membership"
        );
        Replica::join(paxos_config, rng.random(), 0)?
    } else {
        Replica::recover(paxos_config, rng.random(), 0, &state)?
    };
    warn_if_flags_differ(&cfg, &replica);
    let core = Core {
        replica,
        sm,
        storage,
        reports: reports_tx,
        rng,
    };

    let (peer_listener, client_listener) = bind(&cfg).await?;
    let (inbox_tx, inbox) = mpsc::channel::<Event>(INBOX_EVENTS_MAX);
    let peers = PeerNetwork::start(
        &cfg,
        &store,
        &core.replica,
        peer_listener,
        inbox_tx.clone(),
        &monitoring,
        tls.peer.clone(),
    );
    if !store.snapshot().joined && !join(&store, &mut link_rx, shutdown).await? {
        core.storage.close();
        peers.stop().await;
        return Ok(None);
    }
    let clients_stop = shutdown.child_token();
    let clients = ClientSide::start(
        &cfg,
        &core.sm,
        ClientPort {
            listener: client_listener,
            tls: tls.client.clone(),
        },
        inbox_tx,
        &clients_stop,
        &peers.tasks,
        &monitoring.metrics.client_connections,
    );
    let network = PeerSide {
        links: peers.links,
        outgoing: peers.outgoing,
        registry: peers.registry,
        credits: peers.credits,
        store,
    };
    let (monitor, admin_stop) = monitoring.into_monitor();
    let mut node = Node::assemble(cfg, core, clients, network, monitor);
    node.sync_peers();
    node.publish_status();
    Ok(Some(Started {
        node,
        inbox,
        reports,
        links: link_rx,
        links_stop: peers.links_stop,
        tasks: peers.tasks,
        clients_stop,
        _admin: admin_stop,
        _tls: tls.watch,
        _lock: lock,
    }))
}

/// The peer side of the network, as the event loop sees it.
struct PeerSide {
    links: Links,
    outgoing: Outgoing,
    registry: Arc<PeerRegistry>,
    credits: Credits,
    store: Arc<IdentityStore>,
}

/// The peer side of the network: the links dialled to every peer, and the listener for
/// theirs, on tasks of their own.
struct PeerNetwork {
    links: Links,
    outgoing: Outgoing,
    /// Who may connect.
    registry: Arc<PeerRegistry>,
    /// Room for received snapshot chunks, shared by the connections and the event loop.
    credits: Credits,
    /// Ends the links and the peer listener.
    links_stop: CancellationToken,
    /// Every network task (the client side joins it).
    tasks: TaskTracker,
}

impl PeerNetwork {
    /// Starts the listener and the links to the members `replica` knows now (the event
    /// loop follows the membership from then on, [`Node::sync_peers`]).
    fn start(
        cfg: &NodeConfig,
        store: &Arc<IdentityStore>,
        replica: &Replica,
        listener: TcpListener,
        inbox: mpsc::Sender<Event>,
        monitoring: &Monitoring,
        tls: Option<Arc<PeerTls>>,
    ) -> PeerNetwork {
        let tasks = TaskTracker::new();
        let links_stop = CancellationToken::new();
        let identity = store.snapshot();
        let own = identity.wire(cfg.sessions_max);
        let mut stated = own.clone();
        if !stated.joining {
            stated.peer_addr = super::membership::own_peer_addr(cfg, replica).unwrap_or_default();
        }
        let dialer = Dialer {
            hello: wire::Hello::replica(cfg.cluster_id.clone(), cfg.id, stated),
            configuration: Arc::new(AtomicU64::new(replica.membership_log().latest().id)),
            store: Arc::clone(store),
            shutdown: links_stop.clone(),
            tasks: tasks.clone(),
            tls: tls.clone(),
        };
        let mut links = Links::new(dialer);
        // Before the first link starts, so that its first connection is recorded.
        links.observe(
            Arc::clone(&monitoring.metrics),
            Arc::clone(&monitoring.events),
        );
        let mut outgoing = Outgoing::default();
        for (peer, addr) in super::membership::wanted_peers(cfg, replica) {
            links.connect(peer, &addr, &mut outgoing);
        }
        let registry = Arc::new(PeerRegistry::default());
        let (allowed, cluster, configuration) =
            super::membership::admission(cfg, &identity, replica);
        registry.set(allowed, cluster, configuration);
        let credits = Credits::default();
        let acceptor = Acceptor {
            my_id: cfg.id,
            expect: wire::HandshakeExpectation::replicas_of(cfg.cluster_id.clone(), own),
            registry: Arc::clone(&registry),
            credits: credits.clone(),
            store: Arc::clone(store),
            events: inbox,
            frame_bytes_max: wire::FRAME_BYTES_MAX_CEILING,
            shutdown: links_stop.clone(),
            tls,
        };
        tasks.spawn(peers::listen(listener, Arc::new(acceptor), tasks.clone()));
        PeerNetwork {
            links,
            outgoing,
            registry,
            credits,
            links_stop,
            tasks,
        }
    }

    /// Ends the links (a replica that stops before it joined).
    async fn stop(self) {
        self.links_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(LINKS_FINISH_MAX, self.tasks.wait()).await;
    }
}

/// The client listener and its TLS, if any.
struct ClientPort {
    listener: TcpListener,
    tls: Option<Arc<ClientTls>>,
}

/// The client side of the network, as the event loop sees it.
struct ClientSide {
    outbox: Outbox,
    values: ValueBytesSeen,
}

impl ClientSide {
    /// Starts serving clients on `listener` (tasks on `tasks`, until `shutdown`).
    fn start(
        cfg: &NodeConfig,
        sm: &StateMachine,
        port: ClientPort,
        inbox: mpsc::Sender<Event>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
        connections: &Gauge,
    ) -> ClientSide {
        let ClientPort { listener, tls } = port;
        let outbox = Outbox::default();
        let values = ValueBytesSeen::default();
        note_values(sm, &values);
        let service = ClientService {
            my_id: cfg.id,
            events: inbox,
            outbox: outbox.clone(),
            limits: cfg.limits.clone(),
            values: values.clone(),
            connections: connections.clone(),
            tls,
        };
        let cluster = cfg.cluster_id.clone();
        tasks.spawn(clients::listen(
            listener,
            cluster,
            service,
            shutdown.clone(),
            tasks.clone(),
        ));
        ClientSide { outbox, values }
    }
}

/// The state the event loop owns, recovered from disk.
struct Core {
    replica: Replica,
    sm: StateMachine,
    storage: Storage,
    /// Where the storage thread and snapshot work report.
    reports: mpsc::UnboundedSender<Report>,
    rng: StdRng,
}

impl Node {
    /// The node of a replica just started.
    fn assemble(
        cfg: NodeConfig,
        core: Core,
        clients: ClientSide,
        mut network: PeerSide,
        mut monitor: Monitor,
    ) -> Node {
        let now = Instant::now();
        monitor.baseline(core.replica.commit_index(), core.sm.applied());
        network
            .outgoing
            .observe(Arc::clone(&monitor.metrics), Arc::clone(&monitor.events));
        let mut pending = Pending::default();
        pending.observe(Arc::clone(&monitor.metrics));
        Node {
            faults: Faults::new(cfg.acceptor_fail_prob, now),
            snapshots: Snapshots::new(core.sm.applied(), network.outgoing, network.credits),
            cfg,
            replica: core.replica,
            sm: core.sm,
            storage: core.storage,
            start: now,
            pending,
            links: network.links,
            registry: network.registry,
            store: network.store,
            members: super::membership::MemberView::default(),
            removed: false,
            leaving: None,
            outbox: clients.outbox,
            values: clients.values,
            reports: core.reports,
            rng: core.rng,
            fatal: None,
            seen: Seen {
                storage_backlogged: false,
            },
            monitor,
        }
    }
}

/// TLS on the client port and on the peer links, as configured, and the task that
/// reloads their files when they change.
struct NodeTls {
    client: Option<Arc<ClientTls>>,
    peer: Option<Arc<PeerTls>>,
    /// Ends the checks of the files when dropped.
    watch: DropGuard,
}

impl NodeTls {
    /// Loads the TLS material (a file that changed since the settings were checked is
    /// checked again) and starts checking the files for changes, with their expiry in
    /// `metrics`.
    fn start(cfg: &NodeConfig, metrics: &Arc<Metrics>) -> Result<NodeTls, ServerError> {
        let stop = CancellationToken::new();
        let client = match &cfg.client_tls {
            Some(settings) => Some(watched(settings.clone(), metrics, &stop)?),
            None => None,
        };
        let peer = match &cfg.peer_tls {
            Some(settings) => Some(watched(settings.clone(), metrics, &stop)?),
            None => None,
        };
        if client.is_some() || peer.is_some() {
            tracing::info!(
                client_tls = client.is_some(),
                peer_tls = peer.is_some(),
                "TLS on; its files are checked for changes every {} s",
                crate::tls::RELOAD_POLL.as_secs()
            );
        }
        Ok(NodeTls {
            client,
            peer,
            watch: stop.drop_guard(),
        })
    }
}

/// `settings` loaded, with a task that reloads them when their files change (until
/// `stop`) and keeps their expiry metric.
fn watched<S: crate::tls::Settings>(
    settings: S,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<Arc<crate::tls::Tls<S>>, ServerError> {
    let tls = Arc::new(crate::tls::Tls::new(settings)?);
    let metrics = Arc::clone(metrics);
    tokio::spawn(crate::tls::watch(
        Arc::clone(&tls),
        crate::tls::RELOAD_POLL,
        stop.clone(),
        move |not_after| metrics.set_tls_certificate_expiry(S::LINK.as_str(), not_after),
    ));
    Ok(tls)
}

/// The replica's metrics, notable events and published status, and the admin listener
/// that serves them (if `--admin-addr` is given), from the start of start-up on.
struct Monitoring {
    metrics: Arc<Metrics>,
    events: Arc<Notables>,
    status: watch::Sender<Status>,
    /// Ends the admin listener when dropped: at once if start-up fails or stops early.
    stop: DropGuard,
}

impl Monitoring {
    /// Binds and starts the admin listener, if any: a bind failure is a start-up error
    /// naming the address.
    async fn start(cfg: &NodeConfig) -> Result<Monitoring, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let events = Arc::new(Notables::new(cfg.id));
        let (status, status_rx) = watch::channel(Status::starting(cfg.id, Instant::now()));
        let stop = CancellationToken::new();
        if let Some(addr) = &cfg.admin_addr {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen {
                    what: "admin HTTP",
                    addr: addr.clone(),
                    source,
                })?;
            let local = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.clone());
            tracing::info!(id = cfg.id, admin = %local, "admin HTTP listener: /metrics, /health, /ready, /status, /");
            let admin = Arc::new(Admin {
                status: status_rx,
                metrics: Arc::clone(&metrics),
                events: Arc::clone(&events),
            });
            tokio::spawn(crate::admin::serve(listener, admin, stop.clone()));
        }
        Ok(Monitoring {
            metrics,
            events,
            status,
            stop: stop.drop_guard(),
        })
    }

    /// The event loop's side of monitoring, and what ends the admin listener when dropped.
    fn into_monitor(self) -> (Monitor, DropGuard) {
        let monitor = Monitor::new(self.metrics, self.events, self.status, Instant::now());
        (monitor, self.stop)
    }
}

/// Opens (or bootstraps) the data dir's identity and says how, see [`crate::identity`].
fn open_identity(
    cfg: &NodeConfig,
    links: mpsc::UnboundedSender<LinkEvent>,
) -> Result<IdentityStore, ServerError> {
    let flags = identity::Bootstrap {
        cluster_name: cfg.cluster_id.clone(),
        member_id: cfg.id,
        members: cfg.peers.keys().copied().collect(),
        token: cfg.initial_cluster_token.clone(),
        state: cfg.initial_cluster_state,
    };
    let (ident, opened) = identity::open(&cfg.data_dir, &flags)?;
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
        identity::Opened::Joining => tracing::info!(
            id = cfg.id,
            %instance,
            "empty data dir with --initial-cluster-state existing: joining a running cluster"
        ),
    }
    Ok(IdentityStore::new(cfg.data_dir.clone(), ident, links))
}

/// A damaged log or snapshot becomes [`ServerError::Damaged`], which names the repair.
fn damaged(cfg: &NodeConfig, e: ServerError) -> ServerError {
    let is_damage = matches!(
        &e,
        ServerError::Storage(storage::StorageError::Open(
            crate::wal::WalError::Corrupt { .. }
        )) | ServerError::Storage(storage::StorageError::Undecodable { .. })
            | ServerError::Snapshot(_)
    );
    if is_damage {
        ServerError::Damaged {
            dir: cfg.data_dir.clone(),
            source: Box::new(e),
        }
    } else {
        e
    }
}

/// Recovery: the state machine and the membership from the snapshot, then the consensus
/// state from the log on top of it; starts the storage thread, which reports on `reports`.
fn recover(
    cfg: &NodeConfig,
    store: &IdentityStore,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<(StateMachine, RecoveredState, Storage), ServerError> {
    let snapshot = snapshot::read_file(&cfg.data_dir)?;
    let had_snapshot = snapshot.is_some();
    let mut sm = snapshot.unwrap_or_default();
    sm.set_sessions_max(cfg.sessions_max);
    let identity = store.snapshot();
    let joined_without_snapshot = identity.origin == Origin::Joined && !had_snapshot;
    if sm.membership().is_none() && !joined_without_snapshot {
        // A new cluster's first start (or a data dir of an earlier version): the first
        // membership, made durable before the replica runs so that every later start
        // takes it from the data dir.
        sm.set_membership(first_membership(cfg, &identity.members)?);
        if !had_snapshot {
            snapshot::write_file(&cfg.data_dir, &sm)?;
            tracing::info!(
                id = cfg.id,
                members = ?identity.members,
                "recorded the cluster's first membership in the data dir"
            );
        }
    }
    let wal_dir = cfg.data_dir.join(WAL_DIR_NAME);
    let (mut state, storage) = storage::open(&wal_dir, WalOptions::default(), move |e| {
        let _ = reports.send(Report::Storage(e));
    })?;
    state.snapshot_slot = sm.applied();
    state.membership = sm.membership().cloned();
    tracing::info!(
        id = cfg.id,
        snapshot_slot = state.snapshot_slot,
        commit = state.commit,
        promised = %state.promised,
        records = state.accepted.len(),
        configuration = state.membership.as_ref().map(|m| m.latest().id),
        "recovered durable state"
    );
    Ok((sm, state, storage))
}

/// The first membership of a cluster bootstrapped with `members`: each a voter, with the
/// addresses the flags give for it (its `--peers` entry and its `--client-addrs` entry;
/// this replica's own client address is `--client-addr` if `--client-addrs` has none).
fn first_membership(cfg: &NodeConfig, members: &[NodeId]) -> Result<MembershipLog, ServerError> {
    let mut client_addrs = cfg.client_addrs.clone();
    client_addrs
        .entry(cfg.id)
        .or_insert_with(|| cfg.client_addr.clone());
    initial_membership(members, &cfg.peers, &client_addrs)
}

/// The first membership of a cluster of `members`, each a voter, recorded with its peer
/// address (from `peers`) and client address (from `client_addrs`, if there). Also the
/// membership `kvs-server restore` gives a restored cluster.
pub fn initial_membership(
    members: &[NodeId],
    peers: &BTreeMap<NodeId, String>,
    client_addrs: &BTreeMap<NodeId, String>,
) -> Result<MembershipLog, ServerError> {
    let mut metas: BTreeMap<NodeId, Bytes> = BTreeMap::new();
    for &id in members {
        let Some(peer_addr) = peers.get(&id) else {
            tracing::warn!(
                member = id,
                "--peers gives no address for a member of the cluster: it is recorded without one"
            );
            continue;
        };
        let addrs = wire::MemberAddrs {
            peer_addr: peer_addr.clone(),
            client_addr: client_addrs.get(&id).cloned(),
        };
        let meta = addrs.encode().map_err(|e| ServerError::Membership {
            reason: format!("member {id}: {e}"),
        })?;
        metas.insert(id, meta);
    }
    Ok(MembershipLog::new(
        RECONFIG_DELAY_DEFAULT,
        Membership::initial(members, &metas),
    ))
}

/// Logs at warn when `--peers` lists other members than the data dir's membership: the
/// data dir wins, the flags only give addresses.
fn warn_if_flags_differ(cfg: &NodeConfig, replica: &Replica) {
    if replica.joining() {
        return;
    }
    let flags: BTreeSet<NodeId> = cfg.peers.keys().copied().collect();
    let members: BTreeSet<NodeId> = replica
        .membership_log()
        .latest()
        .members
        .keys()
        .copied()
        .collect();
    if flags != members {
        tracing::warn!(
            id = cfg.id,
            flags = ?flags,
            members = ?members,
            "--peers lists other members than this data dir's membership, which wins (the \
             membership changes through `kvs-client member`; --peers only gives addresses)"
        );
    }
}

/// A data dir created with `--initial-cluster-state existing`: asks the members given in
/// `--peers` to admit it until a majority of the other voters recorded it, and records the
/// cluster identity they tell. Returns `Ok(false)` on shutdown. A member that knows this
/// id by another data dir stops it: this is a member whose disk was lost.
async fn learn_cluster(
    cfg: &NodeConfig,
    store: &IdentityStore,
    tls: Option<Arc<PeerTls>>,
    shutdown: &CancellationToken,
) -> Result<bool, ServerError> {
    let identity = store.snapshot();
    let hello = wire::Hello::replica(
        cfg.cluster_id.clone(),
        cfg.id,
        wire::ReplicaIdentity::joining(identity.instance, cfg.sessions_max as u64),
    );
    let targets: Vec<(NodeId, String)> = cfg
        .peers
        .iter()
        .filter(|(&id, _)| id != cfg.id)
        .map(|(&id, addr)| (id, addr.clone()))
        .collect();
    if targets.is_empty() {
        return Err(ServerError::Membership {
            reason: "--initial-cluster-state existing needs the addresses of members of the \
                     running cluster in --peers"
                .into(),
        });
    }
    let mut join = JoinProgress {
        tls,
        ..JoinProgress::default()
    };
    loop {
        for (id, addr) in &targets {
            join.ask(cfg, *id, addr, &hello).await?;
        }
        if let Some(cluster) = join.done(cfg.id) {
            store
                .learned_cluster(&cluster)
                .map_err(ServerError::JoinRefused)?;
            tracing::info!(
                id = cfg.id,
                cluster = %cluster.cluster_uid,
                recorded_by = ?join.admitted,
                voters = ?join.voters,
                "admitted by the members: this data dir belongs to the cluster"
            );
            return Ok(true);
        }
        tokio::select! {
            _ = tokio::time::sleep(JOIN_RETRY) => {}
            _ = shutdown.cancelled() => return Ok(false),
        }
    }
}

/// What a joining replica learned from the members so far.
#[derive(Default)]
struct JoinProgress {
    cluster: Option<wire::ClusterInfo>,
    /// The members that admitted (recorded) this data dir.
    admitted: BTreeSet<NodeId>,
    /// Every voter the admitting members named.
    voters: BTreeSet<NodeId>,
    /// The last refusal logged per member, to log changes only.
    said: BTreeMap<NodeId, String>,
    /// Mutual TLS with the members, if peer TLS is on.
    tls: Option<Arc<PeerTls>>,
}

impl JoinProgress {
    /// Asks member `id` at `addr` to admit this data dir, unless it did.
    async fn ask(
        &mut self,
        cfg: &NodeConfig,
        id: NodeId,
        addr: &str,
        hello: &wire::Hello,
    ) -> Result<(), ServerError> {
        if self.admitted.contains(&id) {
            return Ok(());
        }
        let refusal = match peers::ask_to_join(addr, hello, self.tls.as_deref(), id).await {
            Ok(accepted) => return self.accepted(id, accepted),
            Err(wire::WireError::PeerRefused(wire::HandshakeRefusal::MemberReplaced {
                ..
            })) => {
                return Err(ServerError::JoinRefused(IdentityError::LostData {
                    dir: cfg.data_dir.clone(),
                    member_id: cfg.id,
                    cluster: cfg.cluster_id.clone(),
                    peer: id,
                }));
            }
            Err(wire::WireError::PeerRefused(wire::HandshakeRefusal::UnknownNode { .. })) => {
                format!(
                    "member {id} does not know node {} as a member (yet): add it first with \
                     `kvs-client member add {} --peer-addr HOST:PORT --client-addr HOST:PORT`",
                    cfg.id, cfg.id
                )
            }
            Err(e) => e.to_string(),
        };
        if self.said.get(&id) != Some(&refusal) {
            tracing::warn!(peer = id, %addr, reason = %refusal, "not admitted yet");
            self.said.insert(id, refusal);
        }
        Ok(())
    }

    /// Member `id` admitted this data dir.
    fn accepted(&mut self, id: NodeId, accepted: wire::Accepted) -> Result<(), ServerError> {
        let Some(cluster) = accepted.cluster else {
            return Err(ServerError::Membership {
                reason: format!("member {id} admitted this joining replica without telling the cluster identity"),
            });
        };
        if let Some(known) = &self.cluster {
            if known.cluster_uid != cluster.cluster_uid {
                return Err(ServerError::Membership {
                    reason: format!(
                        "the members in --peers belong to different clusters ({} and {}, the \
                         latter told by member {id}); give members of one cluster",
                        known.cluster_uid, cluster.cluster_uid
                    ),
                });
            }
        }
        tracing::info!(peer = id, voters = ?cluster.voters, "admitted by a member");
        if accepted.node_id != id {
            tracing::warn!(
                peer = id,
                answered = accepted.node_id,
                "--peers names another member at this address"
            );
        }
        self.admitted.insert(accepted.node_id);
        self.voters.extend(cluster.voters.iter().copied());
        self.cluster = Some(cluster);
        Ok(())
    }

    /// The cluster identity, once a majority of the other voters admitted this data dir
    /// (so that a later data dir under the same id would be refused by at least one of
    /// the members that recorded this one).
    fn done(&self, me: NodeId) -> Option<wire::ClusterInfo> {
        let others: BTreeSet<NodeId> = self.voters.iter().copied().filter(|&v| v != me).collect();
        let need = (others.len() / 2 + 1).min(others.len()).max(1);
        let have = self.admitted.intersection(&others).count();
        (have >= need).then(|| self.cluster.clone()).flatten()
    }
}

/// Binds the peer listener (on `--peers`' own entry, or `peer_listen`) and the client
/// listener.
async fn bind(cfg: &NodeConfig) -> Result<(TcpListener, TcpListener), ServerError> {
    let peer_listen = cfg
        .peer_listen
        .clone()
        .or_else(|| cfg.peers.get(&cfg.id).cloned())
        .ok_or(ServerError::NoPeerEntry { id: cfg.id })?;
    let listen = |what, addr: &str| {
        let addr = addr.to_string();
        move |source| ServerError::Listen { what, addr, source }
    };
    let peers = TcpListener::bind(&peer_listen)
        .await
        .map_err(listen("peers", &peer_listen))?;
    let clients = TcpListener::bind(&cfg.client_addr)
        .await
        .map_err(listen("clients", &cfg.client_addr))?;
    let client_local = clients.local_addr().map_err(|source| ServerError::Io {
        op: "read the address of",
        path: "the client listener".into(),
        source,
    })?;
    tracing::info!(id = cfg.id, peers = %peer_listen, clients = %client_local, "listening");
    Ok((peers, clients))
}

/// Waits until a majority of the other members recorded this data dir, then records that
/// it may vote. Until then no peer message reaches the consensus core and no client is
/// served. Returns `Ok(false)` on shutdown, and an error if a peer knows this member by
/// another data dir.
async fn join(
    store: &IdentityStore,
    links: &mut mpsc::UnboundedReceiver<LinkEvent>,
    shutdown: &CancellationToken,
) -> Result<bool, ServerError> {
    let need = store.snapshot().join_quorum();
    tracing::info!(
        need,
        "joining: this data dir votes once {need} other members have recorded it"
    );
    let mut admitted = BTreeSet::new();
    while admitted.len() < need {
        tokio::select! {
            ev = links.recv() => match ev {
                Some(LinkEvent::Admitted(peer)) => {
                    admitted.insert(peer);
                }
                Some(LinkEvent::Fatal(reason)) => return Err(ServerError::JoinRefused(reason)),
                Some(LinkEvent::NotAMember(_) | LinkEvent::Removed { .. }) => {}
                None => return Err(ServerError::LinksStopped),
            },
            _ = shutdown.cancelled() => return Ok(false),
        }
    }
    store.mark_joined().map_err(ServerError::JoinRefused)?;
    tracing::info!(recorded_by = ?admitted, "joined: this data dir may vote");
    Ok(true)
}
