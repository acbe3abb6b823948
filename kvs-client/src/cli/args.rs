//! The command line: global flags and subcommands.

use std::ffi::OsString;

use clap::{Parser, Subcommand, ValueEnum};

use super::bench::BenchArgs;

/// Command-line client of the replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvs-client", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success; 1 key not found or CAS mismatch; \
    2 usage error or invalid input; 3 unavailable, timeout or connection error (nothing \
    applied); 4 outcome unknown (a write may or may not have been applied: retry it with \
    the token printed, `kvs-client retry TOKEN`, not by running it again); 5 session \
    expired (the retry came too late: not applied now, never will be; read the key)."
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

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text, global = true)]
    pub output: Format,

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
}

/// A subcommand and its arguments.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value (any bytes the shell can pass).
        value: OsString,
    },
    /// Print KEY's value (exit 1 if absent).
    Get {
        /// The key.
        key: String,
        /// Read from any node, which may lag behind the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY (exit 1 if it did not exist).
    #[command(alias = "delete")]
    Del {
        /// The key.
        key: String,
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
    /// Show every node's status and the leader.
    Status,
    /// Send again, exactly, a write whose outcome was unknown (exit 4), with the token it
    /// printed. Applied at most once over all attempts; exit 5 if the cluster no longer
    /// remembers it.
    Retry {
        /// The token printed on stderr with exit code 4.
        token: String,
    },
    /// Measure throughput and latency with closed-loop load (like etcd's benchmark).
    Bench(BenchArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    #[test]
    fn args_are_consistent() {
        Args::command().debug_assert();
    }
}
