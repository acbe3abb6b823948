//! The default of every replica setting that has one, defined once: the flags, the config
//! file and `kvs-server dev` all resolve through [`super::ReplicaArgs::resolve`], which
//! takes these when a setting is not given. Client limits default to
//! [`crate::net::clients::ClientLimits::default`], the consensus core's batching limits are
//! set in [`super::NodeConfig::paxos_config`].

/// `--cluster-id`: what peers and clients must present.
pub const CLUSTER_ID: &str = "kvs";

/// `--heartbeat-ms`: how often a leader tells followers it is alive, in milliseconds.
pub const HEARTBEAT_MS: u64 = 100;

/// `--election-timeout-ms`: how long a follower waits for a leader before it stands, as
/// `MIN..MAX` milliseconds (a random time in the range).
pub const ELECTION_TIMEOUT_MS: &str = "1000..2000";

/// `--request-timeout-ms`: how long a request may wait for consensus before it is
/// answered with a timeout, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// `--snapshot-every`: applied slots between snapshots.
pub const SNAPSHOT_EVERY_SLOTS: u64 = 10_000;

/// `--sessions-max`: client sessions remembered for exactly-once writes.
pub const SESSIONS_MAX: usize = crate::sessions::SESSIONS_MAX;

/// `--acceptor-fail-prob`: random acceptor failures, as the chance of failing within each
/// second of uptime (0: none).
pub const ACCEPTOR_FAIL_PROB_PER_SEC: f64 = 0.0;

/// `--acceptor-down-ms`: how long a failed acceptor stays down, as `MIN..MAX`
/// milliseconds (a random time in the range).
pub const ACCEPTOR_DOWN_MS: &str = "200..2000";

/// `--log-level` (or `KVS_LOG`): the log filter.
pub const LOG_LEVEL: &str = "info";
