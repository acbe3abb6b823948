//! Settings: command-line flags ([`cli`]) and the TOML configuration file, resolved into a
//! [`NodeConfig`], with every default defined once ([`defaults`]).
//!
//! Resolution: the file (if `--config` names one) is read into [`ReplicaArgs`], the flags
//! given on the command line (and `KVS_LOG`) are laid over it, then [`ReplicaArgs::resolve`]
//! fills in the defaults and checks every value, naming the flag at fault
//! ([`ConfigError`]). `kvs-server dev` builds the [`ReplicaArgs`] of each of its replicas and
//! resolves them the same way.

pub mod cli;
pub mod defaults;
mod error;
mod parse;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use paxos_core::NodeId;

pub use cli::{CertsArgs, Cli, Command, DevArgs, ReplicaArgs, RestoreArgs};
pub use error::ConfigError;
pub use parse::{check_fail_prob, parse_members, parse_range};

use crate::acceptor_failures::FailMode;
use crate::identity::InitialClusterState;
use crate::net::clients::ClientLimits;
use crate::tls::{ClientTlsSettings, PeerTlsSettings};

/// The consensus core's batching limits. A slot's batch, a catch-up reply and a Promise
/// (bounded by the in-flight bytes) must each fit in a peer frame
/// ([`wire::FRAME_BYTES_MAX_CEILING`]) with room to spare.
const BATCH_BYTES_MAX: usize = 256 * 1024;
/// See [`BATCH_BYTES_MAX`].
const INFLIGHT_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(BATCH_BYTES_MAX < wire::FRAME_BYTES_MAX_CEILING / 4);
const _: () = assert!(INFLIGHT_BYTES_MAX < wire::FRAME_BYTES_MAX_CEILING / 2);

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
    /// Where to serve the admin HTTP listener (metrics, health, status page); `None`: off.
    pub admin_addr: Option<String>,
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
    /// TLS on the client port; plain when `None`.
    pub client_tls: Option<ClientTlsSettings>,
    /// Mutual TLS on the peer links; plain when `None`.
    pub peer_tls: Option<PeerTlsSettings>,
    /// Testing only, unsafe: serve linearizable reads locally (a planted bug for the checker).
    pub unsafe_local_reads: bool,
}

impl NodeConfig {
    /// The consensus core's configuration.
    pub fn paxos_config(&self) -> paxos_core::Config {
        let mut c = paxos_core::Config::new(self.id, self.peers.keys().copied().collect());
        c.heartbeat_interval_ms = self.heartbeat_interval_ms;
        c.election_timeout_min_ms = self.election_timeout_ms.0;
        c.election_timeout_max_ms = self.election_timeout_ms.1;
        c.batch_bytes_max = BATCH_BYTES_MAX;
        c.inflight_bytes_max = INFLIGHT_BYTES_MAX;
        c
    }
}

impl ReplicaArgs {
    /// The settings of the config file (if `--config` names one) with every flag given on
    /// the command line (or `KVS_LOG`) laid over them; `matches` are the parsed command
    /// line these arguments came from.
    pub fn merged(&self, matches: &ArgMatches) -> Result<ReplicaArgs, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let mut merged: ReplicaArgs =
            toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
                path: path.clone(),
                source,
            })?;
        // Only the arguments present (given, or from the environment) are laid over.
        merged.update_from_arg_matches(matches)?;
        Ok(merged)
    }

    /// Resolves already merged settings into a node configuration: defaults for what is
    /// not given, and every value checked, naming the first problem.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let a = self;
        let (id, peers) = membership(a)?;
        let client_addr = required(&a.client_addr, "--client-addr")?.clone();
        parse::check_addr(&client_addr, "--client-addr")?;
        let client_addrs = match &a.client_addrs {
            Some(s) => parse_members(s, "--client-addrs")?,
            None => BTreeMap::new(),
        };
        if let Some(addr) = &a.admin_addr {
            parse::check_addr(addr, "--admin-addr")?;
        }
        let data_dir = required(&a.data_dir, "--data-dir")?.clone();
        let acceptor_fail_prob = a
            .acceptor_fail_prob
            .unwrap_or(defaults::ACCEPTOR_FAIL_PROB_PER_SEC);
        check_fail_prob(acceptor_fail_prob)?;
        let acceptor_down_ms = parse_range(
            a.acceptor_down_ms
                .as_deref()
                .unwrap_or(defaults::ACCEPTOR_DOWN_MS),
            "--acceptor-down-ms",
        )?;
        let (heartbeat_interval_ms, election_timeout_ms) = timing(a)?;
        Ok(NodeConfig {
            id,
            peers,
            peer_listen: None,
            client_addr,
            client_addrs,
            admin_addr: a.admin_addr.clone(),
            data_dir,
            cluster_id: cluster_name(
                a.cluster_id
                    .clone()
                    .unwrap_or_else(|| defaults::CLUSTER_ID.into()),
                "--cluster-id",
                wire::CLUSTER_ID_BYTES_MAX,
            )?,
            initial_cluster_state: a.initial_cluster_state,
            initial_cluster_token: a
                .initial_cluster_token
                .clone()
                .map(|t| cluster_name(t, "--initial-cluster-token", CLUSTER_TOKEN_BYTES_MAX))
                .transpose()?,
            snapshot_every: at_least_one(
                a.snapshot_every,
                defaults::SNAPSHOT_EVERY_SLOTS,
                "--snapshot-every",
            )?,
            sessions_max: at_least_one(a.sessions_max, defaults::SESSIONS_MAX, "--sessions-max")?,
            acceptor_fail_prob,
            acceptor_fail_mode: a.acceptor_fail_mode.unwrap_or_default(),
            acceptor_down_ms,
            heartbeat_interval_ms,
            election_timeout_ms,
            request_timeout: Duration::from_millis(
                a.request_timeout_ms.unwrap_or(defaults::REQUEST_TIMEOUT_MS),
            ),
            limits: client_limits(a)?,
            client_tls: client_tls(a)?,
            peer_tls: peer_tls(a, id)?,
            unsafe_local_reads: a.unsafe_local_reads,
        })
    }
}

/// The longest `--initial-cluster-token`.
const CLUSTER_TOKEN_BYTES_MAX: usize = 1024;

/// A cluster id (at most [`wire::CLUSTER_ID_BYTES_MAX`] bytes, to fit the handshake) or
/// token: 1 to `max` bytes without control characters, so that it reads back from the
/// identity file as written.
fn cluster_name(value: String, flag: &'static str, max: usize) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::BadClusterName {
        flag,
        value: value.clone(),
        reason,
    };
    if value.is_empty() || value.len() > max {
        return Err(bad(format!(
            "must be 1 to {max} bytes long, not {}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(bad(format!("holds the control character {c:?}")));
    }
    Ok(value)
}

fn required<'a, T>(value: &'a Option<T>, flag: &'static str) -> Result<&'a T, ConfigError> {
    value
        .as_ref()
        .ok_or(ConfigError::Missing { flag, about: "" })
}

/// `--id` and `--peers`, checked against each other.
fn membership(a: &ReplicaArgs) -> Result<(NodeId, BTreeMap<NodeId, String>), ConfigError> {
    let id = a.id.ok_or(ConfigError::Missing {
        flag: "--id",
        about: " (this replica's id)",
    })?;
    let peers = parse_members(required(&a.peers, "--peers")?, "--peers")?;
    if !peers.contains_key(&id) {
        return Err(ConfigError::NotAMember { id });
    }
    Ok((id, peers))
}

/// `--heartbeat-ms` and `--election-timeout-ms`, checked against each other.
fn timing(a: &ReplicaArgs) -> Result<(u64, (u64, u64)), ConfigError> {
    let election = parse_range(
        a.election_timeout_ms
            .as_deref()
            .unwrap_or(defaults::ELECTION_TIMEOUT_MS),
        "--election-timeout-ms",
    )?;
    let heartbeat = a.heartbeat_ms.unwrap_or(defaults::HEARTBEAT_MS);
    if heartbeat == 0 || heartbeat >= election.0 {
        return Err(ConfigError::Heartbeat {
            heartbeat_ms: heartbeat,
            election_min_ms: election.0,
        });
    }
    Ok((heartbeat, election))
}

fn at_least_one<T: Copy + PartialEq + From<u8>>(
    value: Option<T>,
    default: T,
    flag: &'static str,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if value == T::from(0) {
        return Err(ConfigError::Zero { flag });
    }
    Ok(value)
}

/// The client limits: the flags given, [`ClientLimits::default`] for the others.
fn client_limits(a: &ReplicaArgs) -> Result<ClientLimits, ConfigError> {
    let d = ClientLimits::default();
    let frame = a.max_frame_bytes.unwrap_or(d.frame_bytes_max);
    if !(wire::FRAME_BYTES_MAX_MIN..=wire::FRAME_BYTES_MAX_CEILING).contains(&frame) {
        return Err(ConfigError::OutOfRange {
            flag: "--max-frame-bytes",
            min: wire::FRAME_BYTES_MAX_MIN as u64,
            max: wire::FRAME_BYTES_MAX_CEILING as u64,
            got: frame as u64,
        });
    }
    Ok(ClientLimits {
        connections_max: a.max_connections.unwrap_or(d.connections_max).max(1),
        frame_bytes_max: frame,
        held_bytes_max: a.client_held_bytes_max.unwrap_or(d.held_bytes_max).max(1),
        stall_timeout: a
            .client_stall_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.stall_timeout)
            .max(Duration::from_millis(1)),
        inflight_per_connection_max: d.inflight_per_connection_max,
    })
}

/// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth` and
/// `--tls-min-version`, checked together and loaded (files readable, a certificate and a
/// key in them, the key the certificate's, the CA usable).
fn client_tls(a: &ReplicaArgs) -> Result<Option<ClientTlsSettings>, ConfigError> {
    let needs_pair = |flag: &str| {
        ConfigError::TlsSettings(format!(
            "{flag} needs TLS on the client port: give --cert-file and --key-file"
        ))
    };
    let client_cert_auth = a.client_cert_auth.unwrap_or(false);
    let (cert_file, key_file) = match (&a.cert_file, &a.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            if a.trusted_ca_file.is_some() {
                return Err(needs_pair("--trusted-ca-file"));
            }
            if client_cert_auth {
                return Err(needs_pair("--client-cert-auth"));
            }
            if a.tls_min_version.is_some() {
                return Err(needs_pair("--tls-min-version"));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(half_pair("--cert-file", "--key-file")),
        (None, Some(_)) => return Err(half_pair("--key-file", "--cert-file")),
    };
    if client_cert_auth && a.trusted_ca_file.is_none() {
        return Err(ConfigError::TlsSettings(
            "--client-cert-auth needs --trusted-ca-file: the CA that client certificates must \
             be signed by"
                .into(),
        ));
    }
    let settings = ClientTlsSettings {
        cert_file,
        key_file,
        trusted_ca_file: a.trusted_ca_file.clone(),
        client_cert_auth,
        min_version: a.tls_min_version.unwrap_or_default(),
    };
    crate::tls::Settings::load(&settings)?;
    Ok(Some(settings))
}

fn half_pair(given: &str, missing: &str) -> ConfigError {
    ConfigError::TlsSettings(format!(
        "{given} is given without {missing}: give both (or neither)"
    ))
}

/// `--peer-cert-file`, `--peer-key-file` and `--peer-trusted-ca-file`: all three or none,
/// loaded and checked (the certificate must name member `id`).
fn peer_tls(a: &ReplicaArgs, id: NodeId) -> Result<Option<PeerTlsSettings>, ConfigError> {
    let given = [
        ("--peer-cert-file", &a.peer_cert_file),
        ("--peer-key-file", &a.peer_key_file),
        ("--peer-trusted-ca-file", &a.peer_trusted_ca_file),
    ];
    let missing: Vec<&str> = given
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(f, _)| *f)
        .collect();
    let (Some(cert_file), Some(key_file), Some(trusted_ca_file)) =
        (&a.peer_cert_file, &a.peer_key_file, &a.peer_trusted_ca_file)
    else {
        if missing.len() == given.len() {
            return Ok(None);
        }
        return Err(ConfigError::TlsSettings(format!(
            "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
             together; missing {}",
            missing.join(", ")
        )));
    };
    let settings = PeerTlsSettings {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        trusted_ca_file: trusted_ca_file.clone(),
        member_id: id,
    };
    crate::tls::Settings::load(&settings)?;
    Ok(Some(settings))
}
