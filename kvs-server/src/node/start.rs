//! Start-up, in order: lock the data dir, open (or bootstrap) its identity, recover the
//! state machine from the snapshot and the consensus state from the log, bind the
//! listeners, start the peer links, join the cluster if this data dir is new, then start
//! serving clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_core::{Ballot, RecoveredState, Replica, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::faults::Faults;
use super::pending::Pending;
use super::snapshots::Snapshots;
use super::{note_values, Node, NodeConfig, Seen};
use crate::dir_lock::DirLock;
use crate::error::ServerError;
use crate::event::{Event, Report};
use crate::identity::{self, IdentityStore, LinkEvent};
use crate::net::clients::{self, ClientService, Outbox, ValueBytesSeen};
use crate::net::peers::{self, Acceptor, Dialer, Links};
use crate::snapshot;
use crate::snapshot::transfer::Outgoing;
use crate::state_machine::StateMachine;
use crate::storage::{self, Storage, WAL_DIR_NAME};
use crate::wal::WalOptions;

/// Events the inbox of the event loop holds at most: network tasks wait when it is full.
const INBOX_EVENTS_MAX: usize = 16 * 1024;

/// How long a replica that stops while joining waits for its peer links to end.
const LINKS_FINISH_MAX: Duration = Duration::from_secs(2);

/// A replica ready to run its event loop.
pub(super) struct Started {
    pub(super) node: Node,
    /// Network events: client requests and peer messages.
    pub(super) inbox: mpsc::Receiver<Event>,
    /// Reports of the storage thread and of snapshot work.
    pub(super) reports: mpsc::UnboundedReceiver<Report>,
    /// Reports of the peer links about identities.
    pub(super) links: mpsc::UnboundedReceiver<LinkEvent>,
    /// The identity, shared with the peer links (it holds the sender of `links`).
    pub(super) _store: Arc<IdentityStore>,
    /// Ends the peer links, once the loop has stopped (they stay up while requests in
    /// flight finish at shutdown).
    pub(super) links_stop: CancellationToken,
    /// Every network task: listeners, client connections, peer links.
    pub(super) tasks: TaskTracker,
    /// Ends the client listener and connections: on shutdown (a child of its token), or
    /// when the replica stops for any other reason (a fatal error).
    pub(super) clients_stop: CancellationToken,
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
    // The identity first: it decides whether this directory may be used at all, and it
    // must be durable before any connection (opening the log creates files).
    let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkEvent>();
    let store = Arc::new(open_identity(&cfg, link_tx)?);
    let (reports_tx, reports) = mpsc::unbounded_channel::<Report>();
    let (sm, state, storage) = recover(&cfg, reports_tx.clone()).map_err(|e| damaged(&cfg, e))?;
    let mut rng = StdRng::from_os_rng();
    let replica = if crate::repair::is_marked(&cfg.data_dir) {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            "repairing: this replica votes for nothing until it has relearned the log from its peers"
        );
        Replica::recover_for_repair(paxos_config, rng.random(), 0, &state)?
    } else {
        Replica::recover(paxos_config, rng.random(), 0, &state)?
    };
    let core = Core {
        replica,
        sm,
        storage,
        reports: reports_tx,
        rng,
    };

    let (peer_listener, client_listener) = bind(&cfg).await?;
    let (inbox_tx, inbox) = mpsc::channel::<Event>(INBOX_EVENTS_MAX);
    let peers = PeerNetwork::start(&cfg, &store, peer_listener, inbox_tx.clone());
    if !store.snapshot().joined && !join(&store, &mut link_rx, shutdown).await? {
        core.storage.close();
        peers.stop().await;
        return Ok(None);
    }
    let clients_stop = shutdown.child_token();
    let clients = ClientSide::start(
        &cfg,
        &core.sm,
        client_listener,
        inbox_tx,
        &clients_stop,
        &peers.tasks,
    );
    let node = Node::assemble(cfg, core, clients, peers.links, peers.outgoing);
    Ok(Some(Started {
        node,
        inbox,
        reports,
        links: link_rx,
        _store: store,
        links_stop: peers.links_stop,
        tasks: peers.tasks,
        clients_stop,
        _lock: lock,
    }))
}

/// The peer side of the network: the links dialled to every peer, and the listener for
/// theirs, on tasks of their own.
struct PeerNetwork {
    links: Links,
    outgoing: Outgoing,
    /// Ends the links and the peer listener.
    links_stop: CancellationToken,
    /// Every network task (the client side joins it).
    tasks: TaskTracker,
}

impl PeerNetwork {
    fn start(
        cfg: &NodeConfig,
        store: &Arc<IdentityStore>,
        listener: TcpListener,
        inbox: mpsc::Sender<Event>,
    ) -> PeerNetwork {
        let tasks = TaskTracker::new();
        let links_stop = CancellationToken::new();
        let own = store.snapshot().wire(cfg.sessions_max);
        let dialer = Dialer {
            hello: wire::Hello::replica(cfg.cluster_id.clone(), cfg.id, own.clone()),
            store: Arc::clone(store),
            shutdown: links_stop.clone(),
            tasks: tasks.clone(),
        };
        let (links, outgoing) = peers::dial_all(cfg.id, &cfg.peers, &dialer);
        let acceptor = Acceptor {
            my_id: cfg.id,
            expect: wire::HandshakeExpectation::replicas_of(cfg.cluster_id.clone(), own),
            store: Arc::clone(store),
            events: inbox,
            frame_bytes_max: wire::FRAME_BYTES_MAX_CEILING,
            shutdown: links_stop.clone(),
        };
        tasks.spawn(peers::listen(listener, Arc::new(acceptor), tasks.clone()));
        PeerNetwork {
            links,
            outgoing,
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
        listener: TcpListener,
        inbox: mpsc::Sender<Event>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> ClientSide {
        let outbox = Outbox::default();
        let values = ValueBytesSeen::default();
        note_values(sm, &values);
        let service = ClientService {
            my_id: cfg.id,
            events: inbox,
            outbox: outbox.clone(),
            limits: cfg.limits.clone(),
            values: values.clone(),
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
        links: Links,
        outgoing: Outgoing,
    ) -> Node {
        let now = Instant::now();
        Node {
            faults: Faults::new(cfg.acceptor_fail_prob, now),
            snapshots: Snapshots::new(core.sm.applied(), outgoing),
            cfg,
            replica: core.replica,
            sm: core.sm,
            storage: core.storage,
            start: now,
            pending: Pending::default(),
            links,
            outbox: clients.outbox,
            values: clients.values,
            reports: core.reports,
            rng: core.rng,
            fatal: None,
            seen: Seen {
                role: (Role::Follower, Ballot::ZERO),
                storage_backlogged: false,
            },
        }
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

/// Recovery: the state machine from the snapshot, then the consensus state from the log
/// on top of it; starts the storage thread, which reports on `reports`.
fn recover(
    cfg: &NodeConfig,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<(StateMachine, RecoveredState, Storage), ServerError> {
    let mut sm = snapshot::read_file(&cfg.data_dir)?.unwrap_or_default();
    sm.set_sessions_max(cfg.sessions_max);
    let wal_dir = cfg.data_dir.join(WAL_DIR_NAME);
    let (mut state, storage) = storage::open(&wal_dir, WalOptions::default(), move |e| {
        let _ = reports.send(Report::Storage(e));
    })?;
    state.snapshot_slot = sm.applied();
    tracing::info!(
        id = cfg.id,
        snapshot_slot = state.snapshot_slot,
        commit = state.commit,
        promised = %state.promised,
        records = state.accepted.len(),
        "recovered durable state"
    );
    Ok((sm, state, storage))
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
                None => return Err(ServerError::LinksStopped),
            },
            _ = shutdown.cancelled() => return Ok(false),
        }
    }
    store.mark_joined().map_err(ServerError::JoinRefused)?;
    tracing::info!(recorded_by = ?admitted, "joined: this data dir may vote");
    Ok(true)
}
