//! `kvs-client`: the command-line client of the replicated key-value store.
//!
//! ```text
//! kvs-client [--endpoints A,B,C] [--cluster-id ID] [--timeout-ms MS] [-o text|json] COMMAND
//!   put KEY VALUE            set KEY to VALUE
//!   get KEY [--stale]        read KEY (linearizable; --stale: from any node, maybe behind)
//!   del KEY                  remove KEY
//!   cas KEY EXPECTED NEW     set KEY to NEW if its value is EXPECTED
//!   cas KEY --absent NEW     set KEY to NEW if it is absent
//!   status                   every node's view of the cluster (exit 3 without a leader)
//!   endpoint health [--cluster] [--check-timeout-ms MS] [--via A,B]
//!                            a linearizable read through the leader from each endpoint
//!   endpoint status [--cluster]   each endpoint's id, leader, role, ballot, slots, members
//!   retry TOKEN              send again, exactly, a write whose outcome was unknown (exit 4)
//!   member list              the members: addresses, voter or learner, applied slot, lag
//!   member add ID --peer-addr HOST:PORT --client-addr HOST:PORT    add a learner
//!   member promote ID        make a caught-up learner a voter
//!   member remove ID [--force]   remove a member (the leader included)
//!   auth enable|disable|status   turn permission checks on or off; users, roles, grants
//!   role add NAME | delete NAME | list
//!   role grant NAME --prefix P --perm read|write|readwrite | revoke NAME --prefix P
//!   user add NAME | delete NAME | list | grant-role NAME ROLE | revoke-role NAME ROLE
//! ```
//!
//! Output (text, the default): on success `put`, `del` and `cas` print nothing; `get` prints
//! the bare value and a newline, raw bytes included, so `$(kvs-client get k)` is the value.
//! A missing key (`get`, `del`) or a CAS mismatch prints nothing on stdout and one line on
//! stderr. `status` prints a table and a line naming the leader. `endpoint health` prints
//! one line per endpoint, `HOST:PORT is healthy: successfully committed proposal: took =
//! 12ms` or `HOST:PORT is unhealthy: REASON`; `endpoint status` a table with one row per
//! endpoint.
//!
//! Output with `-o json`: one JSON object on stdout, also for a missing key or a mismatch.
//! Values are JSON strings when they are UTF-8 (`"value_encoding": "utf8"`), otherwise
//! standard base64 (`"value_encoding": "base64"`); an absent value is `null`.
//! `put`: `{"ok":true}`. `get`: `{"key","found","value","value_encoding"}`.
//! `del`: `{"key","existed"}`. `cas`: `{"key","swapped","current","current_encoding"}`
//! (`current` only meaningful on a mismatch). `status`: `{"leader": id or null, "nodes":
//! [...], "error": null or why no leader with a quorum is known}` with one node per
//! endpoint, unreachable ones with `"reachable": false`. `endpoint health`: `{"healthy",
//! "endpoints":[{"endpoint","health","took_ms","error"}]}`. `endpoint status`:
//! `{"endpoints":[{"endpoint","id","leader","role","ballot","commit_index",
//! "applied_index","members","peers_reachable","error"}]}`.
//! `member list`: `{"config_id","in_effect","leader","served_by","members":[{"id",
//! "peer_addr","client_addr","role":"voter"|"learner","leader","applied","lag"}]}` (unknown
//! values `null`). `member add|promote|remove`: `{"ok":true,"config_id","already_done"}`.
//! `auth enable|disable`, `role add|delete|grant|revoke`, `user add|delete|grant-role|
//! revoke-role`: `{"ok":true}`. `auth status`: `{"enabled","roles":[{"name","builtin",
//! "grants":[{"prefix","prefix_encoding","perm"}]}],"users":[{"name","roles"}]}`; `role
//! list`: `{"roles":[...]}` and `user list`: `{"users":[...]}`, the same shapes.
//!
//! Errors go to stderr as one line, `error: ...`, in both modes; an unknown outcome adds a
//! second line with the retry token.
//!
//! Exit codes: 0 success; 1 key not found (`get`, `del`), CAS mismatch, or a membership
//! change refused (stale configuration, another change in progress, a lagging learner, a
//! lost quorum, an unknown or existing id: nothing changed); 2 usage error or
//! invalid input (bad flags, bad endpoint, value too large, bad retry token); 3 unavailable,
//! timed out, unreachable, refused handshake (e.g. wrong cluster id) or protocol error:
//! nothing was applied (also `status` when no leader with a quorum is known and reachable,
//! `endpoint health` when an endpoint is unhealthy, `endpoint status` when one does not
//! answer); 4 outcome unknown (a write was sent but no answer came: it may or
//! may not have been applied; for a membership change, `member list` shows); 5 session expired (a `retry` came too late: the cluster no
//! longer remembers the write, so it was not applied now and never will be; whether the
//! first attempt was applied is unknown: read the key); 6 permission denied (auth is
//! enabled and the identity of this client's certificate may not do what it asked: it has
//! no certificate, is not a user, or no role of it grants the permission; nothing was
//! applied). An auth change the cluster refuses (an unknown role or user, one that exists,
//! a change to the built-in admin role, the last user holding admin) exits 1: nothing
//! changed.
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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

// What the tool prints goes through these in place of the standard macros, which panic
// when stdout or stderr is closed (`kvs-client get --prefix p | head -1`, or a log
// collector that went away): a write that fails is dropped, and the exit code still says
// how the command went. They are defined before the modules, so every module uses them.
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_out(format_args!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! eprintln {
    () => { $crate::write_err(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout, ignoring a closed or failing stdout.
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
}

/// Writes to stderr, ignoring a closed or failing stderr.
fn write_err(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// The tool's parts: the command line, the subcommands and what they print.
mod cli {
    pub mod args;
    pub mod auth;
    pub mod base64;
    pub mod bench;
    pub mod commands;
    pub mod endpoint;
    pub mod members;
    pub mod output;
    pub mod ranges;
    pub mod snapshot;
    pub mod txn_file;
}

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvs_client::{Client, ClientOptions, TlsOptions};

use cli::args::{Args, Command, EndpointCommand, Format};
use cli::commands::{self, EXIT_UNAVAILABLE};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Runs the command; returns the process exit code.
async fn run(args: Args) -> u8 {
    let tls = args.cacert.as_ref().map(|ca| {
        let tls = TlsOptions::with_ca_file(ca);
        match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => tls.identity_files(cert, key),
            _ => tls, // clap requires both or neither
        }
    });
    let options = ClientOptions {
        cluster_id: args.cluster_id.clone(),
        request_timeout: Duration::from_millis(args.timeout_ms),
        tls,
        ..ClientOptions::default()
    };
    let client = match Client::connect(args.endpoints.iter().map(|e| e.trim()), options) {
        Ok(client) => client,
        Err(e) => return commands::fail(&e),
    };
    let json = args.output == Format::Json;
    let style = cli::ranges::Style {
        hex: args.hex,
        format: args.output,
    };
    let plain = !args.hex && args.output != Format::Table;
    match args.command {
        Command::Put {
            key,
            value: Some(value),
            from_file: None,
        } if plain && value != "-" => commands::put(&client, key, value, json).await,
        Command::Put {
            key,
            value,
            from_file,
        } => cli::ranges::put(&client, &key, value, from_file, style).await,
        Command::Get {
            key,
            stale,
            prefix,
            to,
            limit,
            keys_only,
            count_only,
            raw,
        } => {
            let get = cli::ranges::GetArgs {
                key,
                prefix,
                to,
                limit,
                keys_only,
                count_only,
                stale,
                raw,
            };
            match get.key.clone() {
                Some(key) if plain && !get.raw && !get.is_range() => {
                    commands::get(&client, key, stale, json).await
                }
                _ => cli::ranges::get(&client, get, style).await,
            }
        }
        Command::Del {
            key: Some(key),
            prefix: None,
            to: None,
        } if plain => commands::del(&client, key, json).await,
        Command::Del { key, prefix, to } => cli::ranges::del(&client, key, prefix, to, style).await,
        Command::Txn { file } => cli::ranges::txn(&client, file, style).await,
        Command::Cas {
            key,
            values,
            absent,
        } => commands::cas(&client, key, values, absent, json).await,
        Command::Status => commands::status(&client, json).await,
        Command::Endpoint(EndpointCommand::Health {
            check_timeout_ms,
            cluster,
            via,
        }) => {
            let timeout = Duration::from_millis(check_timeout_ms);
            cli::endpoint::health(&client, cluster, &via, timeout, json).await
        }
        Command::Endpoint(EndpointCommand::Status { cluster }) => {
            cli::endpoint::status(&client, cluster, json).await
        }
        Command::Retry { token } => commands::retry(&client, &token, json).await,
        Command::Member(member) => cli::members::run(&client, member, json).await,
        Command::Snapshot(snapshot) => cli::snapshot::run(&client, snapshot, json).await,
        Command::Auth(auth) => cli::auth::auth(&client, auth, json).await,
        Command::Role(role) => cli::auth::role(&client, role, args.hex, json).await,
        Command::User(user) => cli::auth::user(&client, user, json).await,
        Command::Bench(bench) => {
            let options = client.options().clone();
            cli::bench::run(&args.endpoints, options, bench, json).await
        }
    }
}
