//! `kvs-client`: the command-line client of the replicated key-value store.
//!
//! ```text
//! kvs-client [--endpoints A,B,C] [--cluster-id ID] [--timeout-ms MS] [-o text|json] COMMAND
//!   put KEY VALUE            set KEY to VALUE
//!   get KEY [--stale]        read KEY (linearizable; --stale: from any node, maybe behind)
//!   del KEY                  remove KEY
//!   cas KEY EXPECTED NEW     set KEY to NEW if its value is EXPECTED
//!   cas KEY --absent NEW     set KEY to NEW if it is absent
//!   status                   every node's view of the cluster
//!   retry TOKEN              send again, exactly, a write whose outcome was unknown (exit 4)
//! ```
//!
//! Output (text, the default): on success `put`, `del` and `cas` print nothing; `get` prints
//! the bare value and a newline, raw bytes included, so `$(kvs-client get k)` is the value.
//! A missing key (`get`, `del`) or a CAS mismatch prints nothing on stdout and one line on
//! stderr. `status` prints a table and a line naming the leader.
//!
//! Output with `-o json`: one JSON object on stdout, also for a missing key or a mismatch.
//! Values are JSON strings when they are UTF-8 (`"value_encoding": "utf8"`), otherwise
//! standard base64 (`"value_encoding": "base64"`); an absent value is `null`.
//! `put`: `{"ok":true}`. `get`: `{"key","found","value","value_encoding"}`.
//! `del`: `{"key","existed"}`. `cas`: `{"key","swapped","current","current_encoding"}`
//! (`current` only meaningful on a mismatch). `status`: `{"leader": id or null, "nodes":
//! [...]}` with one node per endpoint, unreachable ones with `"reachable": false`.
//!
//! Errors go to stderr as one line, `error: ...`, in both modes; an unknown outcome adds a
//! second line with the retry token.
//!
//! Exit codes: 0 success; 1 key not found (`get`, `del`) or CAS mismatch; 2 usage error or
//! invalid input (bad flags, bad endpoint, value too large, bad retry token); 3 unavailable,
//! timed out, unreachable, refused handshake (e.g. wrong cluster id) or protocol error:
//! nothing was applied; 4 outcome unknown (a write was sent but no answer came: it may or
//! may not have been applied); 5 session expired (a `retry` came too late: the cluster no
//! longer remembers the write, so it was not applied now and never will be; whether the
//! first attempt was applied is unknown: read the key).
//!
//! ## Retrying after exit 4
//!
//! Running the same `put`/`del`/`cas` again is **not** a retry: it is a second write (each
//! run is a new client), which is applied even if the first one was. A second `del` then
//! exits 1 (not found), a second `cas` finds its own new value and exits 1 (mismatch).
//! Instead, exit 4 prints a retry token on stderr:
//!
//! ```text
//! error: outcome unknown: ...; the write may or may not have been applied
//! retry: kvs-client retry a2V5cy4uLg==
//! ```
//!
//! `kvs-client retry TOKEN` sends that very write again (same session, same sequence
//! number): it answers the first attempt's result if that was applied (a retried `del`
//! exits 0 if the key existed when the first attempt ran), applies the write if not, and
//! exits 5 if the cluster has forgotten the write's session (it remembers a bounded number
//! of sessions, the least recently active forgotten first); it may exit 4 again, with the
//! same token. Output and exit codes are those of the original command.

mod cli {
    pub mod base64;
    pub mod bench;
    pub mod output;
}

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use kvs_client::{CasOutcome, Client, ClientOptions, Error, RetryHandle, WriteOutcome};
use serde_json::{json, Map, Value};

use cli::output;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Success.
const EXIT_OK: u8 = 0;
/// Key not found, or CAS mismatch.
const EXIT_NOT_FOUND: u8 = 1;
/// Usage error or invalid input.
const EXIT_USAGE: u8 = 2;
/// Unavailable, timed out, or connection error: nothing was applied.
const EXIT_UNAVAILABLE: u8 = 3;
/// A write may or may not have been applied.
const EXIT_OUTCOME_UNKNOWN: u8 = 4;
/// A retried write's session expired: not applied now, never applicable again.
const EXIT_SESSION_EXPIRED: u8 = 5;

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
struct Args {
    /// Client addresses of the nodes, host:port, comma-separated.
    #[arg(
        long,
        env = "KVS_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003",
        global = true
    )]
    endpoints: Vec<String>,

    /// The cluster id every node checks in the handshake.
    #[arg(long, default_value = "kvs", global = true)]
    cluster_id: String,

    /// Time budget of the whole operation, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text, global = true)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people and shell substitution.
    Text,
    /// One JSON object.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The benchmark spreads its clients over every core; one request needs only one thread.
    let runtime = if matches!(args.command, Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    ExitCode::from(runtime.block_on(run(args)))
}

async fn run(args: Args) -> u8 {
    let options = ClientOptions {
        cluster_id: args.cluster_id.clone(),
        request_timeout: Duration::from_millis(args.timeout_ms),
        ..ClientOptions::default()
    };
    let client = match Client::connect(args.endpoints.iter().map(|e| e.trim()), options) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let json = args.output == Format::Json;
    match args.command {
        Command::Put { key, value } => {
            match client
                .put(key, Bytes::from(value.into_encoded_bytes()))
                .await
            {
                Ok(()) => {
                    if json {
                        print_json(&json!({ "ok": true }));
                    }
                    EXIT_OK
                }
                Err(e) => fail(&e),
            }
        }
        Command::Get { key, stale } => {
            let read = if stale {
                client.get_stale(key.clone()).await
            } else {
                client.get(key.clone()).await
            };
            match read {
                Ok(value) => get_result(&key, value.as_deref(), json),
                Err(e) => fail(&e),
            }
        }
        Command::Del { key } => match client.delete(key.clone()).await {
            Ok(existed) => del_result(&key, existed, json),
            Err(e) => fail(&e),
        },
        Command::Cas {
            key,
            values,
            absent,
        } => {
            let (expected, new) = match cas_values(values, absent) {
                Ok(pair) => pair,
                Err(message) => {
                    Args::command()
                        .error(clap::error::ErrorKind::WrongNumberOfValues, message)
                        .exit();
                }
            };
            match client.compare_and_swap(key.clone(), expected, new).await {
                Ok(outcome) => cas_result(&key, &outcome, json),
                Err(e) => fail(&e),
            }
        }
        Command::Status => status(&client, json).await,
        Command::Retry { token } => retry(&client, &token, json).await,
        Command::Bench(bench) => {
            let options = client.options().clone();
            cli::bench::run(&args.endpoints, options, bench, json).await
        }
    }
}

/// Splits the positional values of `cas` into (expected, new).
fn cas_values(values: Vec<OsString>, absent: bool) -> Result<(Option<Bytes>, Bytes), String> {
    let mut values = values
        .into_iter()
        .map(|v| Bytes::from(v.into_encoded_bytes()));
    match (absent, values.next(), values.next()) {
        (true, Some(new), None) => Ok((None, new)),
        (true, _, _) => Err("with --absent, give only KEY and NEW".to_owned()),
        (false, Some(expected), Some(new)) => Ok((Some(expected), new)),
        (false, _, _) => Err("give KEY EXPECTED NEW, or KEY --absent NEW".to_owned()),
    }
}

/// Resends the write of a retry token; reports like the original command.
async fn retry(client: &Client, token: &str, json: bool) -> u8 {
    let handle = match cli::base64::decode(token.trim()) {
        Some(bytes) => RetryHandle::from_bytes(&bytes),
        None => Err(Error::InvalidRetry {
            reason: "the token is not base64".to_owned(),
        }),
    };
    let handle = match handle {
        Ok(handle) => handle,
        Err(e) => return fail(&e),
    };
    let key = handle
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    match client.retry(&handle).await {
        Ok(WriteOutcome::Written) => {
            if json {
                print_json(&json!({ "ok": true }));
            }
            EXIT_OK
        }
        Ok(WriteOutcome::Deleted { existed }) => del_result(&key, existed, json),
        Ok(WriteOutcome::Cas(outcome)) => cas_result(&key, &outcome, json),
        Err(e) => fail(&e),
    }
}

fn del_result(key: &str, existed: bool, json: bool) -> u8 {
    if json {
        print_json(&json!({ "key": key, "existed": existed }));
    } else if !existed {
        eprintln!("key not found: {key:?}");
    }
    if existed {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

fn get_result(key: &str, value: Option<&[u8]>, json: bool) -> u8 {
    if json {
        let mut object = Map::new();
        object.insert("key".to_owned(), json!(key));
        object.insert("found".to_owned(), json!(value.is_some()));
        output::put_bytes(&mut object, "value", value);
        print_json(&Value::Object(object));
    } else if let Some(value) = value {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head -c1`) is not an error worth reporting.
        let _ = stdout
            .write_all(value)
            .and_then(|()| stdout.write_all(b"\n"));
        let _ = stdout.flush();
    } else {
        eprintln!("key not found: {key:?}");
    }
    if value.is_some() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

fn cas_result(key: &str, outcome: &CasOutcome, json: bool) -> u8 {
    let current = match outcome {
        CasOutcome::Swapped => None,
        CasOutcome::Mismatch { current } => Some(current.as_deref()),
    };
    if json {
        let mut object = Map::new();
        object.insert("key".to_owned(), json!(key));
        object.insert("swapped".to_owned(), json!(current.is_none()));
        output::put_bytes(&mut object, "current", current.flatten());
        print_json(&Value::Object(object));
    } else {
        match current {
            None => {}
            Some(None) => eprintln!("mismatch: {key:?} is absent"),
            Some(Some(value)) => {
                eprintln!("mismatch: {key:?} is {}", output::quoted(value));
            }
        }
    }
    if current.is_none() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

async fn status(client: &Client, json: bool) -> u8 {
    let entries = client.status().await;
    if json {
        print_json(&output::status_json(&entries));
    } else {
        print!("{}", output::status_table(&entries));
        for (endpoint, status) in &entries {
            if let Err(e) = status {
                let message = e.to_string();
                if message.contains(endpoint.as_str()) {
                    eprintln!("unreachable: {message}");
                } else {
                    eprintln!("unreachable: {endpoint}: {message}");
                }
            }
        }
    }
    if entries.iter().any(|(_, status)| status.is_ok()) {
        EXIT_OK
    } else {
        eprintln!(
            "error: no node reachable at {}",
            client.endpoints().join(",")
        );
        EXIT_UNAVAILABLE
    }
}

fn print_json(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

/// Prints the error as one line on stderr (and the retry token on a second line for an
/// unknown outcome) and returns its exit code.
fn fail(error: &Error) -> u8 {
    eprintln!("error: {error}");
    match error {
        Error::InvalidEndpoint { .. }
        | Error::InvalidOptions { .. }
        | Error::Rejected(_)
        | Error::InvalidRetry { .. } => EXIT_USAGE,
        Error::OutcomeUnknown { retry, .. } => {
            let token = cli::base64::encode(&retry.to_bytes());
            eprintln!("retry: kvs-client retry {token}");
            EXIT_OUTCOME_UNKNOWN
        }
        Error::SessionExpired { .. } => EXIT_SESSION_EXPIRED,
        Error::Unavailable { .. }
        | Error::Timeout { .. }
        | Error::Handshake { .. }
        | Error::Protocol { .. } => EXIT_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_values_follow_the_two_forms() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            cas_values(v(&["a", "b"]), false),
            Ok((Some(Bytes::from("a")), Bytes::from("b")))
        );
        assert_eq!(cas_values(v(&["b"]), true), Ok((None, Bytes::from("b"))));
        assert!(cas_values(v(&["a", "b"]), true).is_err());
        assert!(cas_values(v(&["b"]), false).is_err());
    }

    #[test]
    fn args_are_consistent() {
        Args::command().debug_assert();
    }
}
