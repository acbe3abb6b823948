//! What can be wrong with the settings: each error names the flag (or config file) at fault.

use std::path::PathBuf;

/// A setting that is missing or invalid. The message names the flag; a setting from the
/// config file is named by its flag too (the key is the flag's name with underscores).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A TLS file is missing, unreadable, or holds nothing usable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// TLS settings that do not go together (half a pair, a requirement without what it
    /// needs).
    #[error("{0}")]
    TlsSettings(String),
    /// `--cluster-id` or `--initial-cluster-token` is empty, too long, or holds a control
    /// character (it is written as one line of the data dir's identity file, and sent in
    /// every handshake).
    #[error("{flag} {value:?}: {reason}")]
    BadClusterName {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required setting is missing.
    #[error("missing {flag}{about}")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// What it is, if the flag does not say (with a leading space), or empty.
        about: &'static str,
    },
    /// `--id` is not one of `--peers`.
    #[error("--peers has no entry for --id {id}")]
    NotAMember {
        /// `--id`.
        id: u64,
    },
    /// An entry of a member list is not `ID=HOST:PORT`.
    #[error("{flag}: expected ID=HOST:PORT, got {entry:?}")]
    BadMember {
        /// The flag.
        flag: String,
        /// The entry.
        entry: String,
    },
    /// A node id is not a whole number.
    #[error("{flag}: {id:?} is not a node id (a whole number)")]
    BadNodeId {
        /// The flag.
        flag: String,
        /// What was given.
        id: String,
    },
    /// A node id is listed twice.
    #[error("{flag}: node {id} is listed twice")]
    DuplicateMember {
        /// The flag.
        flag: String,
        /// The id.
        id: u64,
    },
    /// A member list is empty.
    #[error("{flag} lists no members")]
    NoMembers {
        /// The flag.
        flag: String,
    },
    /// A member list is longer than a cluster may be.
    #[error("{flag}: a cluster has at most {max} members, got {got}")]
    TooManyMembers {
        /// The flag.
        flag: String,
        /// The most members a cluster may have.
        max: usize,
        /// How many were listed.
        got: usize,
    },
    /// An address is not `HOST:PORT`.
    #[error("{flag}: {addr:?} is not HOST:PORT")]
    BadAddress {
        /// The flag.
        flag: String,
        /// What was given.
        addr: String,
    },
    /// A range is not `MIN..MAX` milliseconds.
    #[error("{flag}: expected MIN..MAX milliseconds, got {text:?}")]
    BadRange {
        /// The flag.
        flag: String,
        /// What was given.
        text: String,
    },
    /// A range's minimum is above its maximum.
    #[error("{flag}: minimum {min} is above maximum {max}")]
    RangeInverted {
        /// The flag.
        flag: String,
        /// The minimum given.
        min: u64,
        /// The maximum given.
        max: u64,
    },
    /// The heartbeat would not keep followers from standing for election.
    #[error(
        "--heartbeat-ms ({heartbeat_ms}) must be above 0 and below the election timeout \
         minimum ({election_min_ms})"
    )]
    Heartbeat {
        /// `--heartbeat-ms`.
        heartbeat_ms: u64,
        /// The minimum of `--election-timeout-ms`.
        election_min_ms: u64,
    },
    /// A count that must be positive is 0.
    #[error("{flag} must be at least 1")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// A number is outside its range.
    #[error("{flag} must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
        /// What was given.
        got: u64,
    },
    /// `--acceptor-fail-prob` is not a probability.
    #[error("--acceptor-fail-prob is a probability per second, between 0 and 1, got {got}")]
    FailProbability {
        /// What was given.
        got: f64,
    },
    /// A port of a dev cluster member would be above 65535.
    #[error("port {base} + {offset} is out of range")]
    PortOverflow {
        /// The first member's port.
        base: u16,
        /// The member's offset from it.
        offset: u64,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the known settings.
    #[error("invalid config file {}: {source}", .path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: toml::de::Error,
    },
    /// The flags could not be laid over the config file's settings.
    #[error("{0}")]
    Flags(#[from] clap::Error),
}
