//! What a test cluster looks like.

use std::path::PathBuf;

/// Options of [`Cluster::start`](super::Cluster::start).
///
/// Start from `ClusterOptions::default()` (three nodes, proxies on) and override fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterOptions {
    /// Number of replicas; their ids are `1..=nodes`.
    pub nodes: usize,
    /// Put a [`Proxy`](crate::proxy::Proxy) on every peer link and in front of every client
    /// address, which partitions and client cuts need. On by default.
    pub proxies: bool,
    /// `--acceptor-fail-prob`: probability that each acceptor fails within a second of
    /// uptime.
    pub acceptor_fail_prob: Option<f64>,
    /// `--acceptor-fail-mode`: what a failure loses, `crash` (the server's default) or
    /// `amnesia`.
    pub acceptor_fail_mode: Option<String>,
    /// `--acceptor-down-ms MIN..MAX`: how long a failed acceptor stays down.
    pub acceptor_down_ms: Option<(u64, u64)>,
    /// `--snapshot-every N`: snapshot the state machine every N applied commands.
    pub snapshot_every: Option<u64>,
    /// Arguments appended to every node's command line (e.g. `--log-level debug`).
    pub extra_args: Vec<String>,
    /// The server executable; when `None`, see
    /// [`find_server_binary`](super::find_server_binary).
    pub binary: Option<PathBuf>,
    /// Make every network fault fake: the proxies record cuts but keep forwarding (see
    /// [`Proxy::set_fake_faults`](crate::proxy::Proxy::set_fake_faults)). Only for proving
    /// that the checks of a fault's effect fail when the fault has none. Off by default.
    pub fake_network_faults: bool,
    /// TLS everywhere: certificates made by `kvs_server::certs` in `<root>/tls` (see
    /// [`TlsFiles`](super::TlsFiles)), client ports with `--client-cert-auth`, peer ports
    /// with mutual TLS. Clients then need [`Cluster::client_options`](super::Cluster::client_options).
    /// Off by default.
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 3,
            proxies: true,
            acceptor_fail_prob: None,
            acceptor_fail_mode: None,
            acceptor_down_ms: None,
            snapshot_every: None,
            extra_args: Vec::new(),
            binary: None,
            fake_network_faults: false,
            tls: false,
        }
    }
}
