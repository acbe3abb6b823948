//! The command line: `kvs-server [FLAGS]` runs one replica, `kvs-server dev` a local cluster.
//! [`ReplicaArgs`] is also the schema of the `--config` TOML file (same names with
//! underscores).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use super::defaults;
use crate::acceptor_failures::FailMode;
use crate::identity::InitialClusterState;

/// The replicated key-value store daemon.
#[derive(Parser, Debug)]
#[command(
    name = "kvs-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Run a local development cluster instead of one replica.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of one replica.
    #[command(flatten)]
    pub replica: ReplicaArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a whole cluster on loopback, each replica its own process, for trying the
    /// store out (failover included: `kill -9` a replica's pid).
    Dev(DevArgs),
    /// Prepare a replica whose log or snapshot is damaged for repair from its peers: moves
    /// the damaged files aside (deleting nothing) and marks the data dir; start the replica
    /// again with its usual flags afterwards.
    Repair(RepairArgs),
    /// Bootstrap the data dir of a member of a new cluster from a backup file
    /// (`kvs-client snapshot save`): checks the whole file first, refuses a data dir that
    /// is not empty, and writes the snapshot with a membership of --peers and a new
    /// cluster identity. Restore every member from the same file with the same --peers,
    /// each with its own --id, then start them with those flags.
    Restore(RestoreArgs),
    /// Generate development certificates with a new CA: `ca.pem` and `ca-key.pem`,
    /// `node-<id>.pem` and `node-<id>-key.pem` for ids 1..=--nodes (member id as URI SAN
    /// urn:kvs:member:<id>; DNS localhost, IP 127.0.0.1 and ::1 and every --host; usable
    /// for both the client port and the peer links), `client-<name>.pem` and
    /// `client-<name>-key.pem` for each --client (subject CN = name). Keys are written
    /// mode 0600; existing files are not overwritten without --force.
    Certs(CertsArgs),
}

/// `kvs-server certs` settings.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Where to write the files (created if absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Node certificates for member ids 1..=N.
    #[arg(long, default_value_t = crate::certs::NODES_DEFAULT)]
    pub nodes: u64,
    /// A client certificate with this name as subject Common Name (the identity the
    /// replicas see); repeat for more. Default: one client, "root".
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// One more name for the node certificates, an IP address or a DNS name; repeat for
    /// more.
    #[arg(long = "host", value_name = "H")]
    pub hosts: Vec<String>,
    /// Days every certificate is valid from now.
    #[arg(long, default_value_t = crate::certs::DAYS_DEFAULT)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

impl CertsArgs {
    /// What to generate.
    pub fn spec(&self) -> crate::certs::CertsSpec {
        let mut spec = crate::certs::CertsSpec::new(&self.out);
        spec.nodes = self.nodes;
        if !self.clients.is_empty() {
            spec.clients = self.clients.clone();
        }
        spec.hosts = self.hosts.clone();
        spec.days = self.days;
        spec.force = self.force;
        spec
    }
}

/// `kvs-server restore` settings.
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The new member's data dir; it must be absent or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new member's id (a member of --peers).
    #[arg(long)]
    pub id: u64,
    /// Every member of the new cluster as ID=HOST:PORT, comma-separated.
    #[arg(long)]
    pub peers: String,
    /// Client addresses of the members as ID=HOST:PORT, recorded in the membership so
    /// followers can point clients to the leader.
    #[arg(long)]
    pub client_addrs: Option<String>,
    /// The new cluster's id (what peers and clients present).
    #[arg(long, default_value = "kvs")]
    pub cluster_id: String,
    /// Mixed into the new cluster identity (default: the cluster id), with the backup's
    /// checksum: members restored from one file with the same flags agree on it.
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
}

/// `kvs-server repair` settings.
#[derive(Args, Debug, Clone)]
pub struct RepairArgs {
    /// The damaged replica's data dir (it must not be running).
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// `kvs-server dev` settings.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the replicas keep their data (one folder each); kept across restarts.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// How many replicas (1 to 7).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Client port of replica 1; replica N listens on this + N - 1.
    #[arg(long, default_value_t = 6001)]
    pub client_port: u16,
    /// Peer port of replica 1; replica N listens on this + N - 1.
    #[arg(long, default_value_t = 7001)]
    pub peer_port: u16,
    /// Admin HTTP port of replica 1 (metrics, health, the status page); replica N listens
    /// on this + N - 1.
    #[arg(long, default_value_t = 8001)]
    pub admin_port: u16,
    /// Random acceptor failures: the chance that a replica fails within each second it is
    /// up, drawn every 100 ms whatever the load (0 disables; 0.05 fails a replica about
    /// once every 20 seconds).
    #[arg(long, default_value_t = defaults::ACCEPTOR_FAIL_PROB_PER_SEC)]
    pub acceptor_fail_prob: f64,
    /// What a random acceptor failure loses: `crash` drops the memory and every log write
    /// not yet durable; `amnesia` drops the memory only.
    #[arg(long, value_enum, default_value_t = FailMode::default())]
    pub acceptor_fail_mode: FailMode,
    /// How long a failed acceptor stays down, as MIN..MAX milliseconds.
    #[arg(long, default_value = defaults::ACCEPTOR_DOWN_MS)]
    pub acceptor_down_ms: String,
    /// TLS everywhere: the client port with --client-cert-auth, and mutual TLS between
    /// the replicas, with development certificates in DATA_DIR/certs (made the first time,
    /// as `kvs-server certs` makes them, and kept). The banner tells how kvs-client
    /// connects.
    #[arg(long)]
    pub tls: bool,
    /// Log filter (e.g. info, debug, kvs_server=debug).
    #[arg(long, default_value = defaults::LOG_LEVEL, env = "KVS_LOG")]
    pub log_level: String,
}

/// Settings of one replica. Every flag can also come from the `--config` TOML file (same
/// names with underscores); flags (and `KVS_LOG`) win. The TLS files are read again when
/// they change on disk (certificate rotation without a restart). A setting given nowhere takes its
/// default from [`defaults`] when resolved.
///
/// The one struct is both the flags (clap) and the file (serde): the file is read into it,
/// then the flags given are laid over it ([`super::ReplicaArgs::merged`]), so a new setting
/// is one new field here.
#[derive(Args, Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaArgs {
    /// TOML file with any of the settings below.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This replica's id (a member of --peers).
    #[arg(long)]
    pub id: Option<u64>,
    /// Every member as ID=HOST:PORT, comma-separated, this replica included: where to
    /// reach each for replication. This replica listens on its own entry.
    #[arg(long)]
    pub peers: Option<String>,
    /// Where to listen for clients, HOST:PORT.
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Client addresses of the members as ID=HOST:PORT, so followers can point clients to
    /// the leader.
    #[arg(long)]
    pub client_addrs: Option<String>,
    /// Where to serve the admin HTTP listener, HOST:PORT: `/metrics` (Prometheus),
    /// `/health`, `/ready`, `/status` (JSON) and the status page at `/`. Off when absent.
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Where the write-ahead log and snapshots live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Peers and clients must present this cluster id.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// How to start with an empty data dir: `new` bootstraps (or joins the bootstrap of) a
    /// new cluster; `existing` refuses, since a member of a running cluster that lost its
    /// data must not vote. Ignored once the data dir holds an identity.
    #[arg(long, value_enum)]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// Mixed into the cluster identity at bootstrap (default: the cluster id), so that a
    /// cluster re-created on the same members is a different cluster. Ignored once the data
    /// dir holds an identity.
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// Snapshot and compact the log every this many applied slots.
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Client sessions remembered for exactly-once writes; the least recently active one is
    /// forgotten first. Every replica of a cluster must use the same value.
    #[arg(long)]
    pub sessions_max: Option<usize>,
    /// Random acceptor failures: the chance that this replica fails within each second it
    /// is up, drawn every 100 ms whatever the load (0, the default, disables; 0.05 fails it
    /// about once every 20 seconds). A failed replica stays down for --acceptor-down-ms,
    /// then rebuilds itself from disk and catches up from its peers.
    #[arg(long)]
    pub acceptor_fail_prob: Option<f64>,
    /// What a random acceptor failure loses: `crash` (the default) drops the memory and
    /// every log write not yet durable, as a real crash does; `amnesia` drops the memory
    /// only, and the log writer still writes what it was handed.
    #[arg(long, value_enum)]
    pub acceptor_fail_mode: Option<FailMode>,
    /// How long a failed acceptor stays down, as MIN..MAX milliseconds.
    #[arg(long)]
    pub acceptor_down_ms: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout range as MIN..MAX milliseconds.
    #[arg(long)]
    pub election_timeout_ms: Option<String>,
    /// How long a request may wait for consensus before it is answered with a timeout.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Most client connections served at once.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest frame accepted from a client or peer, in bytes.
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Bytes of answers one client connection may hold before its requests are not read.
    #[arg(long)]
    pub client_held_bytes_max: Option<usize>,
    /// A client connection that takes none of its answers for this long is closed.
    #[arg(long)]
    pub client_stall_timeout_ms: Option<u64>,
    /// TLS on the client port: this replica's certificate (PEM, the chain with its own
    /// certificate first). Needs --key-file. Clients then connect with --cacert; a plain
    /// client is refused with "this port requires TLS".
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that client certificates are verified against: a client that presents
    /// a certificate must have one signed by it, and its subject Common Name is its
    /// identity. Without --client-cert-auth a client may also connect without one.
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require every client to present a certificate signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// The lowest TLS version the client port accepts: 1.3 (the default) or 1.2.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub tls_min_version: Option<crate::tls::TlsVersion>,
    /// Mutual TLS on the peer links: this replica's certificate (PEM), which must name its
    /// member id as URI SAN urn:kvs:member:<id> (`kvs-server certs` makes such). Needs
    /// --peer-key-file and --peer-trusted-ca-file; every replica of the cluster must use
    /// peer TLS then: plain peer connections are neither accepted nor dialled.
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA (PEM) every replica's peer certificate is verified against, both ways: a
    /// replica is accepted only with a certificate signed by it that names the member id
    /// it claims, and a dialled replica only if its certificate names the member dialled.
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Log filter (e.g. info, debug, kvs_server=debug).
    #[arg(long, env = "KVS_LOG")]
    pub log_level: Option<String>,
    /// TESTING ONLY, UNSAFE: answer linearizable reads from local state without confirming
    /// leadership. Exists so the test suite can show that its checker catches stale reads.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub unsafe_local_reads: bool,
}
