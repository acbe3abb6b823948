//! The command line: global flags and subcommands.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::bench::BenchArgs;

/// The syntax of a transaction file, shown by `kvs-client txn --help`.
const TXN_SYNTAX: &str = "Transaction syntax (one item per line, '#' starts a comment):
  value(\"KEY\") = \"VALUE\"   the key holds exactly VALUE
  exists(\"KEY\")              the key exists
  absent(\"KEY\")              the key is absent
  (blank line)
  put KEY VALUE                applied if every compare holds
  del KEY
  (blank line)
  put KEY VALUE                applied otherwise
  del KEY
A KEY or VALUE is a word without spaces, or a double-quoted string with the escapes
\\\" \\\\ \\n \\t \\r and \\xHH.";

/// Command-line client of the replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvs-client", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success; 1 key not found, CAS mismatch, transaction \
    FAILURE, or a membership change refused (nothing changed); 2 usage error or invalid \
    input; 3 unavailable, \
    timeout or connection error (nothing applied); 4 outcome unknown (a write may or may \
    not have been applied: retry it with the token printed, `kvs-client retry TOKEN`, not \
    by running it again; a membership change: see `kvs-client member list`); 5 session \
    expired (the retry came too late: not applied now, never will be; read the key); 6 \
    permission denied (auth is enabled and this client's certificate name may not do \
    it: nothing applied). An auth change refused by the cluster (unknown role, user \
    exists, last admin, ...) exits 1.\n\n\
    TLS: --cacert FILE, and --cert FILE --key FILE where the replicas require client \
    certificates (or KVS_CACERT, KVS_CERT, KVS_KEY); a refused certificate or a port of \
    the other kind exits 3 at once."
)]
pub struct Args {
    /// Client addresses of the nodes, host:port, comma-separated.
    #[arg(
        long,
        env = "KVS_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003",
        global = true
    )]
    pub endpoints: Vec<String>,

    /// The cluster id every node checks in the handshake.
    #[arg(long, default_value = "kvs", global = true)]
    pub cluster_id: String,

    /// Time budget of the whole operation, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// Connect over TLS, trusting the CA certificates in this PEM file to sign the nodes'
    /// certificates (which must name the endpoint's host). Without it: plain TCP.
    #[arg(long, env = "KVS_CACERT", value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,

    /// Present this client certificate (PEM) to the nodes; its subject Common Name is the
    /// client's identity. Needed where the nodes run with --client-cert-auth. Needs --key
    /// and --cacert.
    #[arg(long = "cert", env = "KVS_CERT", value_name = "FILE", global = true,
          requires_all = ["key_file", "cacert"])]
    pub cert_file: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(
        long = "key",
        env = "KVS_KEY",
        value_name = "FILE",
        global = true,
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text, global = true)]
    pub output: Format,

    /// Keys are given in hex (for keys that are not UTF-8): key arguments, --prefix and
    /// --to; keys are then printed in hex too.
    #[arg(long, global = true)]
    pub hex: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people and shell substitution.
    Text,
    /// One JSON object.
    Json,
    /// Aligned columns with a header (text where a command prints no rows).
    Table,
}

/// A subcommand and its arguments.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE (`-`: the bytes of stdin), or to the bytes of a file.
    Put {
        /// The key.
        key: String,
        /// The value (any bytes the shell can pass); `-` reads it from stdin.
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        value: Option<OsString>,
        /// Read the value from this file (at most the server's value limit, 1 MiB).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Print KEY's value (exit 1 if absent), or the keys of a range: --prefix P, or KEY
    /// --to END (`[KEY, END)`), with --limit, --keys-only or --count-only.
    Get {
        /// The key (with --to: the first key of the range).
        #[arg(required_unless_present = "prefix")]
        key: Option<String>,
        /// Read from any node, which may lag behind the leader.
        #[arg(long)]
        stale: bool,
        /// Every key starting with P.
        #[arg(long, value_name = "P", conflicts_with_all = ["key", "to"])]
        prefix: Option<String>,
        /// Every key from KEY (inclusive) to END (exclusive).
        #[arg(long, value_name = "END", requires = "key")]
        to: Option<String>,
        /// At most N keys (at least 1).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Print only how many keys the range holds.
        #[arg(long, conflicts_with = "keys_only")]
        count_only: bool,
        /// Write the value's exact bytes, without a newline (one key only).
        #[arg(long, conflicts_with_all = ["prefix", "to", "keys_only", "count_only", "limit"])]
        raw: bool,
    },
    /// Remove KEY (exit 1 if it did not exist), or every key of a range as one write
    /// (--prefix P, or KEY --to END), printing how many were removed.
    #[command(alias = "delete")]
    Del {
        /// The key (with --to: the first key of the range).
        #[arg(required_unless_present = "prefix")]
        key: Option<String>,
        /// Every key starting with P.
        #[arg(long, value_name = "P", conflicts_with_all = ["key", "to"])]
        prefix: Option<String>,
        /// Every key from KEY (inclusive) to END (exclusive).
        #[arg(long, value_name = "END", requires = "key")]
        to: Option<String>,
    },
    /// Apply a transaction read from stdin or --file: compares, a blank line, the
    /// operations if they all hold, a blank line, the operations otherwise. Prints
    /// SUCCESS (exit 0) or FAILURE (exit 1); a malformed file exits 2 naming the line.
    #[command(after_help = TXN_SYNTAX)]
    Txn {
        /// Read the transaction from this file instead of stdin.
        #[arg(long, value_name = "F")]
        file: Option<PathBuf>,
    },
    /// Compare-and-swap: set KEY to NEW if its value is EXPECTED, or with --absent if KEY is
    /// absent (exit 1 on a mismatch).
    #[command(
        override_usage = "kvs-client cas KEY EXPECTED NEW\n       kvs-client cas KEY --absent NEW"
    )]
    Cas {
        /// The key.
        key: String,
        /// EXPECTED NEW, or only NEW with --absent.
        #[arg(value_name = "VALUES", num_args = 1..=2, required = true)]
        values: Vec<OsString>,
        /// Expect KEY to be absent.
        #[arg(long)]
        absent: bool,
    },
    /// Show every node's status and the leader (exit 3 unless a leader with a quorum is
    /// known and reachable).
    Status,
    /// Check or describe endpoints one by one (like `etcdctl endpoint`).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Send again, exactly, a write whose outcome was unknown (exit 4), with the token it
    /// printed. Applied at most once over all attempts; exit 5 if the cluster no longer
    /// remembers it.
    Retry {
        /// The token printed on stderr with exit code 4.
        token: String,
    },
    /// Measure throughput and latency with closed-loop load (like etcd's benchmark).
    Bench(BenchArgs),
    /// List and change the cluster's members (one change at a time).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Back up the whole store to a file, or describe a backup file.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Turn permission checks on or off, or show users, roles and grants.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Add, delete, list roles; grant and revoke their permissions on key prefixes.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Add, delete, list users (named as their client certificate's common name); give
    /// them roles and take them away.
    #[command(subcommand)]
    User(UserCommand),
}

/// `auth` subcommands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum AuthCommand {
    /// Turn permission checks on: refused unless this client's certificate names a user
    /// holding the admin role (so that someone can still administer the cluster).
    Enable,
    /// Turn permission checks off: every request is allowed (needs the admin role).
    Disable,
    /// Whether auth is enabled, every role with its grants, every user with its roles
    /// (needs the admin role while auth is enabled).
    Status,
}

/// `role` subcommands. The role `admin` is built in: it grants everything and the admin
/// operations, and cannot be deleted or changed.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum RoleCommand {
    /// Add a role without permissions.
    Add {
        /// The role's name.
        name: String,
    },
    /// Delete a role (users holding it lose it).
    Delete {
        /// The role's name.
        name: String,
    },
    /// Grant a role a permission on every key starting with a prefix (replacing its
    /// permission on that prefix, if it had one).
    Grant {
        /// The role's name.
        name: String,
        /// The key prefix ("" for every key; hex with --hex).
        #[arg(long, value_name = "P")]
        prefix: String,
        /// What it allows.
        #[arg(long, value_enum)]
        perm: PermArg,
    },
    /// Take a role's permission on exactly this prefix away.
    Revoke {
        /// The role's name.
        name: String,
        /// The key prefix of the permission (hex with --hex).
        #[arg(long, value_name = "P")]
        prefix: String,
    },
    /// List the roles and their permissions.
    List,
}

/// A permission on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PermArg {
    /// Get and range reads, and the compares of a transaction.
    Read,
    /// Put, delete, compare-and-swap (which also needs read), range deletes, transaction
    /// operations.
    Write,
    /// Both.
    Readwrite,
}

/// `user` subcommands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum UserCommand {
    /// Add a user without roles; its name is the common name (CN) of its client
    /// certificate.
    Add {
        /// The user's name.
        name: String,
    },
    /// Delete a user (refused for the last user holding admin while auth is enabled).
    Delete {
        /// The user's name.
        name: String,
    },
    /// Give a user a role.
    GrantRole {
        /// The user's name.
        name: String,
        /// The role's name.
        role: String,
    },
    /// Take a role from a user.
    RevokeRole {
        /// The user's name.
        name: String,
        /// The role's name.
        role: String,
    },
    /// List the users and their roles.
    List,
}

/// `endpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// For each endpoint, a linearizable read through the leader, reached from that
    /// endpoint (its redirect): `HOST:PORT is healthy: ...` or `is unhealthy: REASON`.
    /// Exit 0 only if every endpoint is healthy, 3 otherwise.
    Health {
        /// The time one endpoint's check may take, in milliseconds.
        #[arg(long, default_value_t = 3000,
              value_parser = clap::value_parser!(u64).range(1..))]
        check_timeout_ms: u64,
        /// Check the client address of every member (from the member list) instead of
        /// the endpoints given.
        #[arg(long)]
        cluster: bool,
        /// Other client addresses of the cluster, HOST:PORT comma-separated, to reach the
        /// leader through when the address an endpoint redirects to cannot be reached from
        /// here (inside a container, say). Never checked themselves.
        #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
        via: Vec<String>,
    },
    /// One row per endpoint: its id, the leader it knows, role, ballot, commit and applied
    /// slots, members, and the error if it did not answer. Exit 0 only if every endpoint
    /// answered, 3 otherwise.
    Status {
        /// Describe the client address of every member (from the member list) instead of
        /// the endpoints given.
        #[arg(long)]
        cluster: bool,
    },
}

/// `member` subcommands. Each change reads the latest configuration first and names it
/// (a compare-and-swap): a change racing another is refused, and one sent again after no
/// answer is reported done if the member list shows it.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members: id, peer and client addresses, voter or learner, the slot each
    /// has applied and its lag behind the leader.
    List,
    /// Add a member as a learner: it receives the log and votes only once promoted. Start
    /// it with an empty data dir and --initial-cluster-state existing.
    Add {
        /// The new member's id (never used before in this cluster).
        id: u64,
        /// Where the other replicas reach it, HOST:PORT (its --peers entry).
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: String,
        /// Where clients reach it, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        client_addr: String,
    },
    /// Make a learner a voter; refused while it lags behind the leader (the lag is shown).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member (a voter, the leader included, or a learner); refused if the voters
    /// the leader hears from would no longer be a majority, unless --force.
    Remove {
        /// The member's id.
        id: u64,
        /// Remove it even if the voters answering the leader would no longer be a majority
        /// (to remove members that are down for good).
        #[arg(long)]
        force: bool,
    },
}

/// `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a consistent snapshot of the whole store from the leader (at least as new as
    /// every write acknowledged before it started) into FILE, written atomically with a
    /// checksum. Progress on stderr when it is a terminal. Waits at least 60 s (or
    /// --timeout-ms if longer) for the leader to prepare it and for each chunk. Exit 3 if
    /// the cluster cannot serve it (busy: at most 2 saves at once per replica), 1 if FILE
    /// cannot be written.
    Save {
        /// The backup file to write (replaced if it exists).
        file: std::path::PathBuf,
    },
    /// Check a backup file in full and show its slot, keys, bytes, checksum, cluster and
    /// format version. Exit 2, naming the file and the defect, if it is damaged or
    /// truncated.
    Status {
        /// The backup file.
        file: std::path::PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn args_are_consistent() {
        Args::command().debug_assert();
    }

    fn parse(line: &[&str]) -> Result<Command, String> {
        let argv = std::iter::once("kvs-client").chain(line.iter().copied());
        Args::try_parse_from(argv)
            .map(|a| a.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn auth_role_and_user_commands_parse() {
        assert!(matches!(
            parse(&["auth", "enable"]),
            Ok(Command::Auth(AuthCommand::Enable))
        ));
        assert!(matches!(
            parse(&["auth", "status", "-o", "json"]),
            Ok(Command::Auth(AuthCommand::Status))
        ));
        let grant = parse(&[
            "role",
            "grant",
            "doctors",
            "--prefix",
            "patient/",
            "--perm",
            "readwrite",
        ]);
        assert!(
            matches!(&grant, Ok(Command::Role(RoleCommand::Grant { name, prefix, perm: PermArg::Readwrite }))
                if name == "doctors" && prefix == "patient/"),
            "{grant:?}"
        );
        let everything = parse(&["role", "grant", "r", "--prefix", "", "--perm", "read"]);
        assert!(
            matches!(&everything, Ok(Command::Role(RoleCommand::Grant { prefix, .. })) if prefix.is_empty())
        );
        assert!(matches!(
            parse(&["role", "revoke", "r", "--prefix", "p/"]),
            Ok(Command::Role(RoleCommand::Revoke { .. }))
        ));
        assert!(matches!(
            parse(&["role", "list"]),
            Ok(Command::Role(RoleCommand::List))
        ));
        assert!(matches!(
            parse(&["user", "grant-role", "alice", "doctors"]),
            Ok(Command::User(UserCommand::GrantRole { .. }))
        ));
        assert!(matches!(
            parse(&["user", "revoke-role", "alice", "doctors"]),
            Ok(Command::User(UserCommand::RevokeRole { .. }))
        ));
        assert!(matches!(
            parse(&["user", "add", "alice"]),
            Ok(Command::User(UserCommand::Add { .. }))
        ));
        // What is wrong is named.
        let bad_perm = parse(&["role", "grant", "r", "--prefix", "p", "--perm", "all"]);
        assert!(
            matches!(&bad_perm, Err(e) if e.contains("--perm")),
            "{bad_perm:?}"
        );
        assert!(
            parse(&["role", "grant", "r", "--perm", "read"]).is_err(),
            "--prefix is required"
        );
        assert!(
            parse(&["user", "grant-role", "alice"]).is_err(),
            "the role is required"
        );
        assert!(parse(&["auth", "on"]).is_err());
    }
}
