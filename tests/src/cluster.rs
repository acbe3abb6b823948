//! A cluster of real `kvs-server` processes on loopback, with fault injection.
//!
//! [`Cluster::start`] reserves loopback ports, puts a [`Proxy`] on every one-way peer link and
//! in front of every client address (unless [`ClusterOptions::proxies`] is off), and spawns the
//! nodes with their data under a temporary directory:
//!
//! ```text
//! <root>/node-N/      data dir of node N (--data-dir)
//! <root>/node-N.log   stdout + stderr of node N, appended across restarts
//! ```
//!
//! Faults: processes ([`Cluster::kill`], [`Cluster::restart`], [`Cluster::pause`],
//! [`Cluster::resume`], [`Cluster::terminate`]) and the network ([`Cluster::cut_link`],
//! [`Cluster::isolate`], [`Cluster::partition`], [`Cluster::ring`], [`Cluster::bridge`],
//! [`Cluster::cut_client`], [`Cluster::heal_all`]). Healing reports what crossed each blocked
//! proxy while it was cut ([`HealReport`]): nothing, unless a cut did not take effect.
//! [`Cluster::kill_verified`] proves that a killed node is gone. Every method takes `&self`, so a nemesis
//! task can share the cluster (in an `Arc`) with client tasks. Process methods block the
//! calling thread briefly (reaping a killed process; [`Cluster::terminate`] up to its bound);
//! the proxies run on their own runtime and keep working meanwhile.
//!
//! No orphans: dropping the cluster (also while unwinding from a panic) SIGKILLs and reaps every
//! node, and the nodes carry a parent-death signal in case the test process dies outright. When
//! dropped during a panic, the data directory is kept and its path printed, so the logs of a
//! failed test can be read; [`Cluster::keep_data`] keeps it unconditionally.

mod binary;
mod layout;
mod network;
mod options;
mod process;
mod tls;
mod wait;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{ensure, Context};
use tempfile::TempDir;

use crate::proxy::{Leak, Proxy};

pub use binary::{find_server_binary, SERVER_BIN_ENV};
pub use layout::{Layout, ReservedPort};
pub use network::Link;
pub use options::ClusterOptions;
pub use process::{process_exists, process_start_ticks, send_signal, wait_child_exit};
pub use tls::{TlsFiles, TlsPki, TLS_CLIENT, TLS_SPARE_NODES};
pub use wait::{wait_for, wait_until, wait_until_blocking};

/// Network shapes as sets of links to cut (pure functions, usable without a cluster).
pub mod shapes {
    pub use super::network::{all_links, bridge, isolate, links_where, partition, ring};
}

/// How long [`Cluster::terminate`] waits for a node to exit after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running test cluster. See the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    /// Dropped (killed) explicitly in `Drop`, before the proxies and the directory go.
    nodes: BTreeMap<u64, Mutex<process::NodeProcess>>,
    layout: Layout,
    peer_proxies: BTreeMap<Link, Proxy>,
    client_proxies: BTreeMap<u64, Proxy>,
    cut: Mutex<BTreeSet<Link>>,
    /// The CA of a cluster with TLS.
    pki: Option<TlsPki>,
    /// Addresses held for nodes to add later ([`Cluster::reserve_node`]).
    reserved: BTreeMap<u64, (ReservedPort, ReservedPort)>,
    root: PathBuf,
    /// `None` once the directory was kept.
    temp_dir: Mutex<Option<TempDir>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not make cleanup impossible.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// Starts `opts.nodes` servers (ids `1..=nodes`) and, if enabled, their proxies. It does not
    /// wait for the servers to be ready: use [`Cluster::wait_listening`] or a client request in
    /// [`wait_until`].
    ///
    /// Each node's ports stay reserved (bound by this process) until just before that node is
    /// spawned. If any node fails to spawn, the ones already started are killed.
    pub fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        ensure!(opts.nodes >= 1, "a cluster needs at least one node");
        let program = find_server_binary(opts.binary.as_deref())?;
        let ids: Vec<u64> = (1..=opts.nodes as u64).collect();

        let mut reserved: BTreeMap<u64, (ReservedPort, ReservedPort)> = BTreeMap::new();
        for &id in &ids {
            reserved.insert(id, (ReservedPort::new()?, ReservedPort::new()?));
        }
        let peer_listen: BTreeMap<u64, SocketAddr> = reserved
            .iter()
            .map(|(&id, (p, _))| (id, p.addr()))
            .collect();
        let client_listen: BTreeMap<u64, SocketAddr> = reserved
            .iter()
            .map(|(&id, (_, c))| (id, c.addr()))
            .collect();

        let mut peer_proxies = BTreeMap::new();
        let mut client_proxies = BTreeMap::new();
        if opts.proxies {
            for link @ (_, to) in network::all_links(&ids) {
                peer_proxies.insert(link, Proxy::start(peer_listen[&to])?);
            }
            for &id in &ids {
                client_proxies.insert(id, Proxy::start(client_listen[&id])?);
            }
            for proxy in peer_proxies.values().chain(client_proxies.values()) {
                proxy.set_fake_faults(opts.fake_network_faults);
            }
        }
        let temp_dir = tempfile::Builder::new()
            .prefix("kvs-cluster-")
            .tempdir()
            .context("cannot create the cluster's temporary directory")?;
        let root = temp_dir.path().to_path_buf();
        let pki = match opts.tls {
            false => None,
            true => Some(TlsPki::generate(
                &root.join("tls"),
                opts.nodes + TLS_SPARE_NODES,
                &[TLS_CLIENT],
            )?),
        };
        let layout = Layout {
            tls: pki.as_ref().map(|pki| pki.files().clone()),
            peer_listen,
            client_listen,
            peer_proxies: opts
                .proxies
                .then(|| peer_proxies.iter().map(|(&l, p)| (l, p.addr())).collect()),
            client_proxies: opts.proxies.then(|| {
                client_proxies
                    .iter()
                    .map(|(&id, p)| (id, p.addr()))
                    .collect()
            }),
        };

        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let data_dir = node_data_dir(&root, id);
            fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let node = process::NodeProcess::new(
                id,
                program.clone(),
                layout.node_args(id, &data_dir, &opts),
                root.clone(),
                node_log_path(&root, id),
            );
            nodes.insert(id, Mutex::new(node));
        }
        let cluster = Cluster {
            nodes,
            layout,
            peer_proxies,
            client_proxies,
            cut: Mutex::new(BTreeSet::new()),
            pki,
            reserved: BTreeMap::new(),
            root,
            temp_dir: Mutex::new(Some(temp_dir)),
        };
        for &id in &ids {
            let (peer, client) = reserved.remove(&id).expect("reserved above");
            peer.release();
            client.release();
            cluster.restart(id)?; // On error, dropping `cluster` kills the nodes started so far.
        }
        Ok(cluster)
    }

    /// The member ids, ascending (every node started or added, removed ones included).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Adds node `id` to the running cluster's processes, with an empty data directory and
    /// `--initial-cluster-state existing`, and starts it: what an operator does after
    /// `kvs-client member add`. Its `--peers` lists every node so far (itself included), and
    /// its other arguments come from `opts` as for the first nodes. Its addresses are
    /// [`Cluster::layout`]'s entries for `id` (reserve them with [`Cluster::reserve_node`]
    /// first, to give them to `member add`).
    ///
    /// With proxies, the new node dials every other node through its own proxies, and the
    /// others have a proxy to it too; but the nodes already running reach it at the address
    /// its membership records (given to `member add`) until they are restarted with
    /// [`Cluster::relink`]. Only then can every link to it be cut.
    pub fn add_node(&mut self, id: u64, opts: &ClusterOptions) -> anyhow::Result<()> {
        ensure!(!self.nodes.contains_key(&id), "node {id} exists already");
        let (peer, client) = match self.reserved.remove(&id) {
            Some(ports) => ports,
            None => {
                self.reserve_node(id)?;
                self.reserved
                    .remove(&id)
                    .context("ports reserved just above")?
            }
        };
        let program = find_server_binary(opts.binary.as_deref())?;
        let data_dir = node_data_dir(&self.root, id);
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let mut args = self.layout.node_args(id, &data_dir, opts);
        args.extend(["--initial-cluster-state".into(), "existing".into()]);
        let node = process::NodeProcess::new(
            id,
            program,
            args,
            self.root.clone(),
            node_log_path(&self.root, id),
        );
        self.nodes.insert(id, Mutex::new(node));
        peer.release();
        client.release();
        self.restart(id)
    }

    /// Reserves the peer and client addresses of a node to add later as `id` (they are in
    /// [`Cluster::layout`] from now on, and held until [`Cluster::add_node`] starts it).
    ///
    /// With proxies, it also starts the proxies of the links between `id` and every node
    /// so far, both ways, and a client proxy for it.
    pub fn reserve_node(&mut self, id: u64) -> anyhow::Result<()> {
        ensure!(!self.nodes.contains_key(&id), "node {id} exists already");
        if self.reserved.contains_key(&id) {
            return Ok(());
        }
        let (peer, client) = (ReservedPort::new()?, ReservedPort::new()?);
        let others = self.layout.ids();
        self.layout.peer_listen.insert(id, peer.addr());
        self.layout.client_listen.insert(id, client.addr());
        if let Some(layout_proxies) = self.layout.peer_proxies.as_mut() {
            for other in others {
                for link @ (_, to) in [(id, other), (other, id)] {
                    let proxy = Proxy::start(self.layout.peer_listen[&to])?;
                    layout_proxies.insert(link, proxy.addr());
                    self.peer_proxies.insert(link, proxy);
                }
            }
        }
        if let Some(client_proxies) = self.layout.client_proxies.as_mut() {
            let proxy = Proxy::start(client.addr())?;
            client_proxies.insert(id, proxy.addr());
            self.client_proxies.insert(id, proxy);
        }
        self.reserved.insert(id, (peer, client));
        Ok(())
    }

    /// Gives node `id`, from its next start on, the command line of the current layout:
    /// its `--peers` then names every node added since it started, through its proxies.
    /// A node added with [`Cluster::add_node`] keeps its `--initial-cluster-state existing`.
    pub fn relink(&self, id: u64, opts: &ClusterOptions) -> anyhow::Result<()> {
        let data_dir = node_data_dir(&self.root, id);
        let mut args = self.layout.node_args(id, &data_dir, opts);
        let mut node = self.node(id)?;
        if node.args().iter().any(|a| a == "existing") {
            args.extend(["--initial-cluster-state".into(), "existing".into()]);
        }
        node.set_args(args);
        Ok(())
    }

    /// Every address of the cluster.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The certificates of a cluster started with [`ClusterOptions::tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.layout.tls.as_ref()
    }

    /// The CA of a cluster started with [`ClusterOptions::tls`], to issue more certificates
    /// it trusts.
    pub fn tls_pki(&self) -> Option<&TlsPki> {
        self.pki.as_ref()
    }

    /// Client options for this cluster: the defaults, with TLS (the CA, and the
    /// [`TLS_CLIENT`] certificate) when the cluster runs with it.
    pub fn client_options(&self) -> kvs_client::ClientOptions {
        kvs_client::ClientOptions {
            tls: self.tls().map(|tls| tls.client_options(TLS_CLIENT)),
            ..kvs_client::ClientOptions::default()
        }
    }

    /// The `kvs-client` flags that give it this cluster's TLS (none without TLS).
    pub fn client_tls_args(&self) -> Vec<std::ffi::OsString> {
        self.tls()
            .map(|tls| tls.client_args(TLS_CLIENT))
            .unwrap_or_default()
    }

    /// The addresses clients should use, in id order (the client proxies when enabled).
    pub fn client_endpoints(&self) -> Vec<String> {
        self.ids()
            .into_iter()
            .map(|id| self.layout.client_endpoint(id).to_string())
            .collect()
    }

    /// The address clients should use for node `id`.
    pub fn client_endpoint(&self, id: u64) -> anyhow::Result<String> {
        self.check_id(id)?;
        Ok(self.layout.client_endpoint(id).to_string())
    }

    fn check_id(&self, id: u64) -> anyhow::Result<()> {
        ensure!(
            self.nodes.contains_key(&id),
            "no node {id} in cluster {:?}",
            self.ids()
        );
        Ok(())
    }

    fn node(&self, id: u64) -> anyhow::Result<MutexGuard<'_, process::NodeProcess>> {
        self.check_id(id)?;
        Ok(lock(&self.nodes[&id]))
    }

    /// Kills node `id` with SIGKILL and reaps it. Fails if it is not running.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        self.node(id)?.kill().map(drop)
    }

    /// Kills node `id` with SIGKILL, reaps it, and proves that it is gone: it ended by SIGKILL,
    /// its pid no longer names it (no `/proc/<pid>`, or one of a process started later), and
    /// its client address refuses connections. Fails, saying which, if any of that is not so.
    pub fn kill_verified(&self, id: u64) -> anyhow::Result<KillEvidence> {
        let (pid, started) = {
            let mut node = self.node(id)?;
            ensure!(node.is_running(), "node {id} is not running");
            let pid = node.pid().context("a running node has a pid")?;
            (pid, process_start_ticks(pid))
        };
        let status = self.node(id)?.kill()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "node {id} (pid {pid}) did not end by SIGKILL: {status:?}"
        );
        let now = process_start_ticks(pid);
        ensure!(
            now.is_none() || now != started,
            "node {id}'s pid {pid} still names the same process after SIGKILL and reaping"
        );
        let addr = self.layout.client_listen[&id];
        let refused = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        };
        ensure!(
            refused,
            "node {id} was SIGKILLed and reaped, yet its client address {addr} did not refuse a \
             connection"
        );
        Ok(KillEvidence { id, pid, status })
    }

    /// Kills every running node (SIGKILL) and reaps them.
    pub fn kill_all(&self) {
        for node in self.nodes.values() {
            lock(node).kill_quietly();
        }
    }

    /// Starts node `id` again with the same command line and data directory. Fails if it is
    /// still running (kill or terminate it first).
    pub fn restart(&self, id: u64) -> anyhow::Result<()> {
        self.node(id)?.start()
    }

    /// Stops node `id` with SIGSTOP; it keeps its sockets but processes nothing.
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.node(id)?.pause()
    }

    /// Continues a node stopped by [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        self.node(id)?.resume()
    }

    /// Asks node `id` to shut down (SIGTERM) and waits up to [`TERMINATE_TIMEOUT`] for it.
    pub fn terminate(&self, id: u64) -> anyhow::Result<ExitStatus> {
        self.terminate_within(id, TERMINATE_TIMEOUT)
    }

    /// [`Cluster::terminate`] with an explicit bound; a node still alive at the bound is
    /// SIGKILLed and an error returned.
    pub fn terminate_within(&self, id: u64, bound: Duration) -> anyhow::Result<ExitStatus> {
        self.node(id)?.terminate(bound)
    }

    /// Whether node `id`'s process is alive (paused counts as alive). Panics on an unknown id.
    pub fn is_running(&self, id: u64) -> bool {
        self.expect_node(id).is_running()
    }

    /// Whether node `id` is paused. Panics on an unknown id.
    pub fn is_paused(&self, id: u64) -> bool {
        self.expect_node(id).is_paused()
    }

    /// Node `id`'s pid while it runs. Panics on an unknown id.
    pub fn pid(&self, id: u64) -> Option<u32> {
        let mut node = self.expect_node(id);
        if node.is_running() {
            node.pid()
        } else {
            None
        }
    }

    /// How node `id`'s last process ended, once it has been reaped. Panics on an unknown id.
    pub fn last_exit(&self, id: u64) -> Option<ExitStatus> {
        let mut node = self.expect_node(id);
        node.is_running(); // Reaps a process that exited on its own.
        node.last_exit()
    }

    fn expect_node(&self, id: u64) -> MutexGuard<'_, process::NodeProcess> {
        self.node(id).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits (blocking) until node `id` accepts TCP connections on its real client address.
    /// Each check opens and closes a connection there.
    pub fn wait_listening(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let addr = *self
            .layout
            .client_listen
            .get(&id)
            .with_context(|| format!("no node {id}"))?;
        wait_until_blocking(
            &format!("node {id} to listen for clients on {addr}"),
            timeout,
            Duration::from_millis(20),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        )
    }

    // --- network faults -------------------------------------------------------------------

    fn require_proxies(&self) -> anyhow::Result<()> {
        ensure!(
            self.layout.peer_proxies.is_some(),
            "network faults need ClusterOptions::proxies"
        );
        Ok(())
    }

    /// The proxy carrying node `from`'s messages to node `to`, if proxies are enabled.
    pub fn peer_proxy(&self, from: u64, to: u64) -> Option<&Proxy> {
        self.peer_proxies.get(&(from, to))
    }

    /// The proxy in front of node `id`'s client address, if proxies are enabled.
    pub fn client_proxy(&self, id: u64) -> Option<&Proxy> {
        self.client_proxies.get(&id)
    }

    /// Adds cuts: every link in `links` stops carrying messages (its proxy is cut).
    pub fn cut_links(&self, links: &BTreeSet<Link>) -> anyhow::Result<()> {
        self.require_proxies()?;
        for link in links {
            ensure!(
                self.peer_proxies.contains_key(link),
                "no link {link:?} in cluster {:?}",
                self.ids()
            );
        }
        let mut cut = lock(&self.cut);
        for link in links {
            self.peer_proxies[link].cut();
            cut.insert(*link);
        }
        Ok(())
    }

    /// One-way partition: node `from`'s messages to node `to` are lost (the connection `from`
    /// dials to `to` is reset and cannot be re-established); `to` → `from` keeps working.
    pub fn cut_link(&self, from: u64, to: u64) -> anyhow::Result<()> {
        self.cut_links(&BTreeSet::from([(from, to)]))
    }

    /// Restores the link `from` → `to` (clears every fault of its proxy); returns what crossed
    /// it while it was blocked, `None` if it was not.
    pub fn heal_link(&self, from: u64, to: u64) -> anyhow::Result<Option<Leak>> {
        self.require_proxies()?;
        let proxy = self
            .peer_proxies
            .get(&(from, to))
            .with_context(|| format!("no link ({from}, {to})"))?;
        let leak = proxy.heal();
        lock(&self.cut).remove(&(from, to));
        Ok(leak)
    }

    /// Adds cuts: every link into and out of node `id`.
    pub fn isolate(&self, id: u64) -> anyhow::Result<()> {
        self.cut_links(&network::isolate(&self.ids(), id)?)
    }

    /// Adds cuts: every link between different groups. The groups must name every node once,
    /// e.g. `cluster.partition(&[&[1, 2], &[3]])`. Cuts add up; call [`Cluster::heal_all`]
    /// first to start from a fully connected network.
    pub fn partition(&self, groups: &[&[u64]]) -> anyhow::Result<()> {
        self.cut_links(&network::partition(&self.ids(), groups)?)
    }

    /// Adds cuts so that, in the ring `order` (every node once), each node reaches only its two
    /// neighbours.
    pub fn ring(&self, order: &[u64]) -> anyhow::Result<()> {
        self.cut_links(&network::ring(&self.ids(), order)?)
    }

    /// Adds cuts so that `left` and `right` cannot reach each other while node `bridge` reaches
    /// both. Together they must name every node once.
    pub fn bridge(&self, left: &[u64], bridge: u64, right: &[u64]) -> anyhow::Result<()> {
        self.cut_links(&network::bridge(&self.ids(), left, bridge, right)?)
    }

    /// The links currently cut through this API, as `(from, to)`.
    pub fn cut_link_set(&self) -> BTreeSet<Link> {
        lock(&self.cut).clone()
    }

    /// Blocks clients from node `id`: its client proxy resets current and new connections.
    pub fn cut_client(&self, id: u64) -> anyhow::Result<()> {
        self.client_proxy_of(id)?.cut();
        Ok(())
    }

    /// Lets clients reach node `id` again; returns what crossed its client proxy while it was
    /// blocked, `None` if it was not.
    pub fn heal_client(&self, id: u64) -> anyhow::Result<Option<Leak>> {
        Ok(self.client_proxy_of(id)?.heal())
    }

    fn client_proxy_of(&self, id: u64) -> anyhow::Result<&Proxy> {
        self.check_id(id)?;
        self.client_proxies
            .get(&id)
            .context("client cuts need ClusterOptions::proxies")
    }

    /// Clears every network fault: all peer and client proxies are healed (including delays
    /// and one-way cuts set directly on a proxy). Returns what crossed every proxy that was
    /// blocked, while it was.
    pub fn heal_all(&self) -> HealReport {
        let mut cut = lock(&self.cut);
        let mut report = HealReport::default();
        for (&link, proxy) in &self.peer_proxies {
            if let Some(leak) = proxy.heal() {
                report.links.insert(link, leak);
            }
        }
        for (&id, proxy) in &self.client_proxies {
            if let Some(leak) = proxy.heal() {
                report.clients.insert(id, leak);
            }
        }
        cut.clear();
        report
    }

    // --- files ----------------------------------------------------------------------------

    /// The root directory holding every node's data and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Node `id`'s `--data-dir`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        node_data_dir(&self.root, id)
    }

    /// The file receiving node `id`'s stdout and stderr.
    pub fn log_path(&self, id: u64) -> PathBuf {
        node_log_path(&self.root, id)
    }

    /// The last `max_bytes` of node `id`'s log (lossily decoded), for failure messages.
    pub fn log_tail(&self, id: u64, max_bytes: u64) -> anyhow::Result<String> {
        let path = self.node(id)?.log_path().to_path_buf();
        let mut file =
            fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Keeps the data directory after the cluster is dropped and returns its path (print it
    /// from a failing test to point at the logs).
    pub fn keep_data(&self) -> PathBuf {
        if let Some(dir) = lock(&self.temp_dir).take() {
            let _ = dir.keep();
        }
        self.root.clone()
    }
}

/// What crossed the proxies that a heal unblocked, while they were blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Every peer link that was blocked, with what crossed it.
    pub links: BTreeMap<Link, Leak>,
    /// Every client proxy that was blocked (by node), with what crossed it.
    pub clients: BTreeMap<u64, Leak>,
}

impl HealReport {
    /// Number of proxies that were blocked.
    pub fn blocked(&self) -> usize {
        self.links.len() + self.clients.len()
    }

    /// One line per blocked proxy that let something through; empty when every cut held.
    pub fn leaks(&self) -> Vec<String> {
        let links = self
            .links
            .iter()
            .filter(|(_, leak)| !leak.is_empty())
            .map(|((from, to), leak)| format!("link n{from}->n{to} carried {leak} while cut"));
        let clients = self
            .clients
            .iter()
            .filter(|(_, leak)| !leak.is_empty())
            .map(|(id, leak)| format!("client link of n{id} carried {leak} while cut"));
        links.chain(clients).collect()
    }
}

/// The proof that [`Cluster::kill_verified`] gives of a killed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillEvidence {
    /// The node.
    pub id: u64,
    /// The pid it had.
    pub pid: u32,
    /// How the reaped process ended (by SIGKILL).
    pub status: ExitStatus,
}

impl fmt::Display for KillEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n{} (pid {}) reaped with {}, pid gone, client port refusing",
            self.id, self.pid, self.status
        )
    }
}

fn node_data_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node-{id}"))
}

fn node_log_path(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node-{id}.log"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            if let Some(dir) = lock(&self.temp_dir).take() {
                let path = dir.keep();
                eprintln!(
                    "test cluster dropped during a panic; data and node logs kept in {}",
                    path.display()
                );
            }
        }
    }
}
