//! Users, roles and permissions end to end: a three-replica cluster with TLS everywhere
//! and client certificates required; identities are the certificates' common names.
//!
//! root (the harness's client certificate) becomes a user holding admin and enables auth;
//! alice holds a role granting readwrite on `patient/`, auditor one granting read on it,
//! mallory is no user. Each runs the real `kvs-client` with its own certificate: what is
//! granted works, the rest exits 6 with a message naming who, what and why; a revoke takes
//! effect for the next write; only an admin disables auth; and the auth state survives
//! every replica restarting (from snapshots and the log).

#[macro_use]
mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use kvs_client::{Client, Error};
use kvs_server::certs::{LeafSpec, Validity};
use tests::cluster::{find_server_binary, Cluster, ClusterOptions, TLS_CLIENT};

/// The CLI's own time budget (`--timeout-ms`).
const CLI_TIMEOUT_MS: u64 = 5_000;
/// How long one CLI run may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(20);
/// Exit code of a refused permission.
const EXIT_PERMISSION_DENIED: i32 = 6;
/// Exit code of an auth change the cluster refuses.
const EXIT_REFUSED: i32 = 1;

/// `kvs-client` next to the server executable (or `$KVS_CLIENT_BIN`).
fn client_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KVS_CLIENT_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    server.with_file_name("kvs-client")
}

/// One finished CLI run.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The tool, run as one identity against the cluster.
struct As<'a> {
    cluster: &'a Cluster,
    tls: Vec<OsString>,
}

impl<'a> As<'a> {
    /// Runs as the client certificate `name` (issued by the cluster's CA).
    fn user(cluster: &'a Cluster, name: &str) -> As<'a> {
        let files = cluster.tls().or_fail_none(cluster, "the cluster has TLS");
        As {
            cluster,
            tls: files.client_args(name),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut full: Vec<OsString> = vec![
            "--endpoints".into(),
            self.cluster.client_endpoints().join(",").into(),
            "--timeout-ms".into(),
            CLI_TIMEOUT_MS.to_string().into(),
        ];
        full.extend(self.tls.iter().cloned());
        full.extend(args.iter().map(OsString::from));
        let shown: Vec<String> = full
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let child = tokio::process::Command::new(client_binary())
            .args(&full)
            .env_remove("KVS_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .or_fail(self.cluster, "spawning kvs-client");
        let output = match tokio::time::timeout(RUN_BOUND, child.wait_with_output()).await {
            Ok(output) => output.or_fail(self.cluster, "waiting for kvs-client"),
            Err(_) => fail(
                self.cluster,
                format!("kvs-client {shown:?} ran longer than {RUN_BOUND:?}"),
            ),
        };
        Run {
            args: shown,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `args` and checks the exit code; returns the run.
    async fn expect(&self, args: &[&str], code: i32) -> Run {
        let run = self.run(args).await;
        check!(
            self.cluster,
            run.code == Some(code),
            "kvs-client {:?}: want exit {code}; got {:?}, stdout {:?}, stderr {:?}",
            run.args,
            run.code,
            run.stdout,
            run.stderr
        );
        run
    }

    /// Runs `args`, which must be refused with exit 6 and exactly `stderr`.
    async fn denied(&self, args: &[&str], stderr: &str) {
        let run = self.expect(args, EXIT_PERMISSION_DENIED).await;
        check!(
            self.cluster,
            run.stderr == stderr,
            "kvs-client {:?}: want stderr {stderr:?}, got {:?}",
            run.args,
            run.stderr
        );
    }
}

/// `Option` to value, or [`fail`].
trait OrFailNone<T> {
    fn or_fail_none(self, cluster: &Cluster, what: &str) -> T;
}

impl<T> OrFailNone<T> for Option<T> {
    fn or_fail_none(self, cluster: &Cluster, what: &str) -> T {
        match self {
            Some(value) => value,
            None => fail(cluster, format!("expected: {what}")),
        }
    }
}

/// Issues a client certificate with common name `name` from the cluster's CA.
fn issue(cluster: &Cluster, name: &str) {
    let pki = cluster
        .tls_pki()
        .or_fail_none(cluster, "the cluster has a CA");
    let leaf = LeafSpec::client(name, Validity::days_from_now(30));
    pki.issue(&leaf, &format!("client-{name}"))
        .or_fail(cluster, &format!("issuing a certificate for {name}"));
}

/// A library client presenting `name`'s certificate.
fn library_client(cluster: &Cluster, name: &str) -> Client {
    let files = cluster.tls().or_fail_none(cluster, "the cluster has TLS");
    let options = kvs_client::ClientOptions {
        request_timeout: CHECK_TIMEOUT,
        tls: Some(files.client_options(name)),
        ..kvs_client::ClientOptions::default()
    };
    Client::connect(cluster.client_endpoints(), options).or_fail(cluster, "creating a client")
}

fn denial(name: &str, what: &str, key: &str) -> String {
    format!("error: permission denied: \"{name}\" may not {what} \"{key}\" (no role grants {what} on it)\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_grant_prefixes_to_certificate_identities_and_revokes_take_effect() {
    let cluster = start(ClusterOptions {
        tls: true,
        snapshot_every: Some(8),
        ..fast_options(3)
    });
    wait_leader(&cluster, &cluster.ids()).await;
    for name in ["alice", "auditor", "mallory"] {
        issue(&cluster, name);
    }
    let root = As::user(&cluster, TLS_CLIENT);
    let alice = As::user(&cluster, "alice");
    let auditor = As::user(&cluster, "auditor");
    let mallory = As::user(&cluster, "mallory");

    // Auth is off: anyone may write, and enabling it needs a user holding admin asking.
    alice.expect(&["put", "billing/1", "before"], 0).await;
    let early = root.expect(&["auth", "enable"], EXIT_REFUSED).await;
    check!(
        &cluster,
        early
            .stderr
            .contains("\"root\" is not a user holding the admin role"),
        "{early:?}"
    );
    let setup: &[&[&str]] = &[
        &["user", "add", "root"],
        &["user", "grant-role", "root", "admin"],
        &["role", "add", "doctors"],
        &[
            "role",
            "grant",
            "doctors",
            "--prefix",
            "patient/",
            "--perm",
            "readwrite",
        ],
        &["role", "add", "readers"],
        &[
            "role", "grant", "readers", "--prefix", "patient/", "--perm", "read",
        ],
        &["user", "add", "alice"],
        &["user", "grant-role", "alice", "doctors"],
        &["user", "add", "auditor"],
        &["user", "grant-role", "auditor", "readers"],
    ];
    for args in setup {
        root.expect(args, 0).await;
    }
    let exists = root.expect(&["user", "add", "alice"], EXIT_REFUSED).await;
    check!(
        &cluster,
        exists.stderr.contains("user \"alice\" exists"),
        "{exists:?}"
    );
    root.expect(&["auth", "enable"], 0).await;

    // alice: readwrite under patient/, nothing elsewhere.
    alice.expect(&["put", "patient/1", "v1"], 0).await;
    let read = alice.expect(&["get", "patient/1"], 0).await;
    check!(&cluster, read.stdout == "v1\n", "{read:?}");
    alice
        .denied(
            &["put", "billing/2", "x"],
            &denial("alice", "write", "billing/2"),
        )
        .await;
    // A linearizable read is checked once the leader confirmed it.
    alice
        .denied(&["get", "billing/1"], &denial("alice", "read", "billing/1"))
        .await;
    alice
        .denied(
            &["del", "billing/1"],
            &denial("alice", "write", "billing/1"),
        )
        .await;
    // auditor: reads, cannot write.
    let read = auditor.expect(&["get", "patient/1"], 0).await;
    check!(&cluster, read.stdout == "v1\n", "{read:?}");
    auditor
        .denied(
            &["put", "patient/1", "x"],
            &denial("auditor", "write", "patient/1"),
        )
        .await;
    let range = auditor
        .expect(&["get", "--prefix", "patient/", "--count-only"], 0)
        .await;
    check!(&cluster, range.stdout.trim() == "1", "{range:?}");
    // mallory has a certificate of the cluster's CA but is no user.
    let stranger = mallory
        .expect(&["get", "patient/1"], EXIT_PERMISSION_DENIED)
        .await;
    check!(
        &cluster,
        stranger.stderr.contains("\"mallory\" is not a user"),
        "{stranger:?}"
    );
    // Admin operations need admin.
    alice
        .expect(
            &["user", "grant-role", "alice", "admin"],
            EXIT_PERMISSION_DENIED,
        )
        .await;
    alice
        .expect(&["auth", "status"], EXIT_PERMISSION_DENIED)
        .await;
    // Health needs nothing: the leader confirmed the read it then refused.
    alice.expect(&["endpoint", "health"], 0).await;
    alice.expect(&["member", "list"], 0).await;

    // The library reports the same refusal, typed.
    let lib = library_client(&cluster, "alice");
    match lib.put("billing/3", "x").await {
        Err(Error::PermissionDenied { identity, reason }) => check!(
            &cluster,
            identity.as_deref() == Some("alice") && reason.contains("billing/3"),
            "{identity:?} {reason}"
        ),
        other => fail(
            &cluster,
            format!("a write outside the grant answered {other:?}"),
        ),
    }

    // A revoke takes effect for the next write.
    root.expect(&["role", "revoke", "doctors", "--prefix", "patient/"], 0)
        .await;
    alice
        .denied(
            &["put", "patient/2", "v2"],
            &denial("alice", "write", "patient/2"),
        )
        .await;
    // The last admin stays.
    let last = root
        .expect(&["user", "revoke-role", "root", "admin"], EXIT_REFUSED)
        .await;
    check!(
        &cluster,
        last.stderr.contains("last user holding the admin role"),
        "{last:?}"
    );

    // Every replica restarts: the auth state comes back from snapshots and the log.
    cluster.kill_all();
    for id in cluster.ids() {
        cluster.restart(id).or_fail(&cluster, "restart");
    }
    wait_leader(&cluster, &cluster.ids()).await;
    let status = root.expect(&["-o", "json", "auth", "status"], 0).await;
    let json: serde_json::Value =
        serde_json::from_str(&status.stdout).or_fail(&cluster, "auth status JSON");
    check!(&cluster, json["enabled"] == true, "{json}");
    let doctors = json["roles"]
        .as_array()
        .and_then(|roles| roles.iter().find(|r| r["name"] == "doctors"));
    check!(
        &cluster,
        doctors.is_some_and(|d| d["grants"].as_array().is_some_and(|g| g.is_empty())),
        "doctors lost their grant: {json}"
    );
    alice
        .denied(
            &["put", "patient/3", "v3"],
            &denial("alice", "write", "patient/3"),
        )
        .await;
    let read = auditor.expect(&["get", "patient/1"], 0).await;
    check!(&cluster, read.stdout == "v1\n", "{read:?}");

    // Only an admin disables auth; then everything is allowed again.
    alice
        .expect(&["auth", "disable"], EXIT_PERMISSION_DENIED)
        .await;
    root.expect(&["auth", "disable"], 0).await;
    alice.expect(&["put", "billing/2", "after"], 0).await;
    mallory.expect(&["get", "billing/2"], 0).await;
}
