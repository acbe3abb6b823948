//! Command-line flags and the TOML configuration file, resolved into a [`NodeConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::acceptor_failures::FailMode;
use crate::clients::ClientLimits;
use crate::identity::InitialClusterState;
use crate::node::NodeConfig;

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
    /// Start a whole cluster on loopback in this process, for trying the store out.
    Dev(DevArgs),
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
    /// Random acceptor failures: the chance that a replica fails within each second it is
    /// up, drawn every 100 ms whatever the load (0 disables; 0.05 fails a replica about
    /// once every 20 seconds).
    #[arg(long, default_value_t = 0.0)]
    pub acceptor_fail_prob: f64,
    /// What a random acceptor failure loses: `crash` drops the memory and every log write
    /// not yet durable; `amnesia` drops the memory only.
    #[arg(long, value_enum, default_value_t = FailMode::Crash)]
    pub acceptor_fail_mode: FailMode,
    /// How long a failed acceptor stays down, as MIN..MAX milliseconds.
    #[arg(long, default_value = "200..2000")]
    pub acceptor_down_ms: String,
    /// Log filter (e.g. info, debug, kvs_server=debug).
    #[arg(long, default_value = "info", env = "KVS_LOG")]
    pub log_level: String,
}

/// Settings of one replica. Every flag can also come from the `--config` TOML file (same
/// names with underscores); flags win.
#[derive(Args, Debug, Clone, Default)]
pub struct ReplicaArgs {
    /// TOML file with any of the settings below.
    #[arg(long)]
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
    /// Log filter (e.g. info, debug, kvs_server=debug).
    #[arg(long, env = "KVS_LOG")]
    pub log_level: Option<String>,
    /// TESTING ONLY, UNSAFE: answer linearizable reads from local state without confirming
    /// leadership. Exists so the test suite can show that its checker catches stale reads.
    #[arg(long, hide = true)]
    pub unsafe_local_reads: bool,
}

/// The TOML file: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    peers: Option<String>,
    client_addr: Option<String>,
    client_addrs: Option<String>,
    data_dir: Option<PathBuf>,
    cluster_id: Option<String>,
    initial_cluster_state: Option<InitialClusterState>,
    initial_cluster_token: Option<String>,
    snapshot_every: Option<u64>,
    sessions_max: Option<usize>,
    acceptor_fail_prob: Option<f64>,
    acceptor_fail_mode: Option<FailMode>,
    acceptor_down_ms: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<String>,
    request_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_frame_bytes: Option<usize>,
    client_held_bytes_max: Option<usize>,
    client_stall_timeout_ms: Option<u64>,
    log_level: Option<String>,
}

/// The default snapshot interval, in applied slots.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;

impl ReplicaArgs {
    /// Merges the config file (if any) under the flags.
    pub fn merged(&self) -> Result<ReplicaArgs, String> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let f: FileConfig = toml::from_str(&text)
            .map_err(|e| format!("invalid config file {}: {e}", path.display()))?;
        Ok(ReplicaArgs {
            config: self.config.clone(),
            id: self.id.or(f.id),
            peers: self.peers.clone().or(f.peers),
            client_addr: self.client_addr.clone().or(f.client_addr),
            client_addrs: self.client_addrs.clone().or(f.client_addrs),
            data_dir: self.data_dir.clone().or(f.data_dir),
            cluster_id: self.cluster_id.clone().or(f.cluster_id),
            initial_cluster_state: self.initial_cluster_state.or(f.initial_cluster_state),
            initial_cluster_token: self
                .initial_cluster_token
                .clone()
                .or(f.initial_cluster_token),
            snapshot_every: self.snapshot_every.or(f.snapshot_every),
            sessions_max: self.sessions_max.or(f.sessions_max),
            acceptor_fail_prob: self.acceptor_fail_prob.or(f.acceptor_fail_prob),
            acceptor_fail_mode: self.acceptor_fail_mode.or(f.acceptor_fail_mode),
            acceptor_down_ms: self.acceptor_down_ms.clone().or(f.acceptor_down_ms),
            heartbeat_ms: self.heartbeat_ms.or(f.heartbeat_ms),
            election_timeout_ms: self.election_timeout_ms.clone().or(f.election_timeout_ms),
            request_timeout_ms: self.request_timeout_ms.or(f.request_timeout_ms),
            max_connections: self.max_connections.or(f.max_connections),
            max_frame_bytes: self.max_frame_bytes.or(f.max_frame_bytes),
            client_held_bytes_max: self.client_held_bytes_max.or(f.client_held_bytes_max),
            client_stall_timeout_ms: self.client_stall_timeout_ms.or(f.client_stall_timeout_ms),
            log_level: self.log_level.clone().or(f.log_level),
            unsafe_local_reads: self.unsafe_local_reads,
        })
    }

    /// Resolves the settings into a node configuration, naming the first problem.
    pub fn resolve(&self) -> Result<NodeConfig, String> {
        let a = self.merged()?;
        let id = a.id.ok_or("missing --id (this replica's id)")?;
        let peers = parse_members(a.peers.as_deref().ok_or("missing --peers")?, "--peers")?;
        if !peers.contains_key(&id) {
            return Err(format!("--peers has no entry for --id {id}"));
        }
        let client_addr = a.client_addr.ok_or("missing --client-addr")?;
        check_addr(&client_addr, "--client-addr")?;
        let client_addrs = match &a.client_addrs {
            Some(s) => parse_members(s, "--client-addrs")?,
            None => BTreeMap::new(),
        };
        let data_dir = a.data_dir.ok_or("missing --data-dir")?;
        let fail = a.acceptor_fail_prob.unwrap_or(0.0);
        check_fail_prob(fail)?;
        let down = parse_range(
            a.acceptor_down_ms.as_deref().unwrap_or("200..2000"),
            "--acceptor-down-ms",
        )?;
        let election = parse_range(
            a.election_timeout_ms.as_deref().unwrap_or("1000..2000"),
            "--election-timeout-ms",
        )?;
        let heartbeat = a.heartbeat_ms.unwrap_or(100);
        if heartbeat == 0 || heartbeat >= election.0 {
            return Err(format!(
                "--heartbeat-ms ({heartbeat}) must be above 0 and below the election timeout minimum ({})",
                election.0
            ));
        }
        let snapshot_every = a.snapshot_every.unwrap_or(SNAPSHOT_EVERY_DEFAULT);
        if snapshot_every == 0 {
            return Err("--snapshot-every must be at least 1".into());
        }
        let sessions_max = a.sessions_max.unwrap_or(crate::state_machine::SESSIONS_MAX);
        if sessions_max == 0 {
            return Err("--sessions-max must be at least 1".into());
        }
        let frame = a.max_frame_bytes.unwrap_or(wire::FRAME_BYTES_MAX_DEFAULT);
        if !(wire::FRAME_BYTES_MAX_MIN..=wire::FRAME_BYTES_MAX_CEILING).contains(&frame) {
            return Err(format!(
                "--max-frame-bytes must be between {} and {}, got {frame}",
                wire::FRAME_BYTES_MAX_MIN,
                wire::FRAME_BYTES_MAX_CEILING
            ));
        }
        let limits = ClientLimits {
            connections_max: a.max_connections.unwrap_or(4096).max(1),
            frame_bytes_max: frame,
            held_bytes_max: a
                .client_held_bytes_max
                .unwrap_or(crate::clients::HELD_BYTES_MAX_DEFAULT)
                .max(1),
            stall_timeout: a
                .client_stall_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(crate::clients::STALL_TIMEOUT_DEFAULT)
                .max(Duration::from_millis(1)),
            ..ClientLimits::default()
        };
        Ok(NodeConfig {
            id,
            peers,
            peer_listen: None,
            client_addr,
            client_addrs,
            data_dir,
            cluster_id: a.cluster_id.unwrap_or_else(|| "kvs".into()),
            initial_cluster_state: a.initial_cluster_state,
            initial_cluster_token: a.initial_cluster_token,
            snapshot_every,
            sessions_max,
            acceptor_fail_prob: fail,
            acceptor_fail_mode: a.acceptor_fail_mode.unwrap_or_default(),
            acceptor_down_ms: down,
            heartbeat_interval_ms: heartbeat,
            election_timeout_ms: election,
            request_timeout: Duration::from_millis(a.request_timeout_ms.unwrap_or(10_000)),
            limits,
            wal_segment_bytes_max: 64 * 1024 * 1024,
            unsafe_local_reads: a.unsafe_local_reads,
        })
    }
}

/// Checks `--acceptor-fail-prob`: a probability per second, from 0 to 1.
pub fn check_fail_prob(prob_per_sec: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&prob_per_sec) {
        Ok(())
    } else {
        Err(format!(
            "--acceptor-fail-prob is a probability per second, between 0 and 1, got \
             {prob_per_sec}"
        ))
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str, flag: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{flag}: expected ID=HOST:PORT, got {part:?}"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{flag}: {id:?} is not a node id (a whole number)"))?;
        check_addr(addr.trim(), flag)?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("{flag}: node {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err(format!("{flag} lists no members"));
    }
    if out.len() > paxos_core::MEMBERS_MAX {
        return Err(format!(
            "{flag}: a cluster has at most {} members, got {}",
            paxos_core::MEMBERS_MAX,
            out.len()
        ));
    }
    Ok(out)
}

fn check_addr(addr: &str, flag: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{flag}: {addr:?} is not HOST:PORT")),
    }
}

/// Parses `MIN..MAX` (or a single number).
pub fn parse_range(s: &str, flag: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{flag}: expected MIN..MAX milliseconds, got {s:?}");
    let (lo, hi) = match s.split_once("..") {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let v: u64 = s.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("{flag}: minimum {lo} is above maximum {hi}"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<NodeConfig, String> {
        let mut v = vec!["kvs-server"];
        v.extend_from_slice(extra);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        cli.replica.resolve()
    }

    const OK: &[&str] = &[
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        "--client-addr",
        "127.0.0.1:6001",
        "--data-dir",
        "/tmp/x",
    ];

    #[test]
    fn flags_resolve_with_defaults() {
        let c = args(OK).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.id, 1);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.cluster_id, "kvs");
        assert_eq!(c.initial_cluster_state, None);
        assert_eq!(c.initial_cluster_token, None);
        assert_eq!(c.election_timeout_ms, (1000, 2000));
        assert_eq!(c.snapshot_every, SNAPSHOT_EVERY_DEFAULT);
        assert_eq!(c.acceptor_fail_prob, 0.0);
        assert_eq!(c.acceptor_fail_mode, FailMode::Crash);
    }

    #[test]
    fn acceptor_failure_settings_from_flags_and_file() {
        let mut v = OK.to_vec();
        v.extend_from_slice(&[
            "--acceptor-fail-prob",
            "0.05",
            "--acceptor-fail-mode",
            "amnesia",
        ]);
        let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.acceptor_fail_prob, c.acceptor_fail_mode),
            (0.05, FailMode::Amnesia)
        );
        let mut v = OK.to_vec();
        v.extend_from_slice(&["--acceptor-fail-mode", "sometimes"]);
        let err = args(&v).err().unwrap_or_default();
        assert!(err.contains("possible values: crash, amnesia"), "{err}");
        let mut v = OK.to_vec();
        v.extend_from_slice(&["--acceptor-fail-prob", "NaN"]);
        let err = args(&v).err().unwrap_or_default();
        assert!(err.contains("probability per second"), "{err}");

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("kvs.toml");
        let toml = "acceptor_fail_prob = 0.1\nacceptor_fail_mode = \"amnesia\"\n";
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
        let p = path.to_string_lossy().to_string();
        let mut v = OK.to_vec();
        v.extend_from_slice(&["--config", &p]);
        let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.acceptor_fail_prob, c.acceptor_fail_mode),
            (0.1, FailMode::Amnesia)
        );
        v.extend_from_slice(&["--acceptor-fail-mode", "crash"]);
        let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.acceptor_fail_mode, FailMode::Crash);
    }

    #[test]
    fn bad_input_names_the_flag() {
        let mut v = OK.to_vec();
        v[3] = "1=127.0.0.1:7001,x=1.2.3.4:5";
        assert!(args(&v)
            .err()
            .unwrap_or_default()
            .contains("\"x\" is not a node id"));
        let mut v = OK.to_vec();
        v[1] = "9";
        assert!(args(&v)
            .err()
            .unwrap_or_default()
            .contains("no entry for --id 9"));
        let mut v = OK.to_vec();
        v[5] = "localhost";
        assert!(args(&v).err().unwrap_or_default().contains("--client-addr"));
        let mut v = OK.to_vec();
        v.extend_from_slice(&["--acceptor-fail-prob", "1.5"]);
        assert!(args(&v)
            .err()
            .unwrap_or_default()
            .contains("between 0 and 1"));
        let mut v = OK.to_vec();
        v.extend_from_slice(&["--election-timeout-ms", "500..100"]);
        assert!(args(&v).err().unwrap_or_default().contains("above maximum"));
        assert!(args(&["--id", "1"])
            .err()
            .unwrap_or_default()
            .contains("missing --peers"));
    }

    #[test]
    fn config_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("kvs.toml");
        let toml = "id = 2\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002\"\nclient_addr = \"127.0.0.1:6002\"\ndata_dir = \"/tmp/d\"\nsnapshot_every = 50\n";
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
        let p = path.to_string_lossy().to_string();
        let c = args(&["--config", &p, "--snapshot-every", "70"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.id, c.snapshot_every, c.peers.len()), (2, 70, 2));
        std::fs::write(
            &path,
            format!("{toml}initial_cluster_state = \"existing\"\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = args(&["--config", &p]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.initial_cluster_state, Some(InitialClusterState::Existing));
        let c = args(&["--config", &p, "--initial-cluster-state", "new"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.initial_cluster_state, Some(InitialClusterState::New));
        let err = args(&["--config", &p, "--initial-cluster-state", "old"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("possible values: new, existing"), "{err}");
        std::fs::write(&path, "idd = 3\n").unwrap_or_else(|e| panic!("{e}"));
        let err = args(&["--config", &p]).err().unwrap_or_default();
        assert!(err.contains("unknown field"), "{err}");
    }
}
