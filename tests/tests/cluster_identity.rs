//! A voter is who it claims to be, with the memory it claims to have: real processes.
//!
//! - A replica whose data dir was wiped, restarted with `--initial-cluster-state existing`,
//!   asks its peers to admit it as a joining member; they know its id by the earlier data
//!   dir and refuse, and it stops, saying why; restarted as `new` (the default for an empty
//!   dir) it is refused by its peers the same way, and stops. The cluster serves
//!   throughout.
//! - A second process claiming node 2 with an empty data dir, while node 2 runs, is refused
//!   by the real peers (logged at warn there) and stops without ever voting.
//! - A replica restarted with another `--peers` list starts with the membership of its data
//!   dir (the flags only give addresses) and says so at warn; a fresh replica bootstrapped
//!   with another membership is refused in the handshake, naming the difference.
//! - A fresh cluster bootstraps as `new`, keeps its identity across restarts, and a client
//!   of another cluster is told both cluster ids.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvs_client::{Client, ClientOptions};
use tests::cluster::{find_server_binary, Cluster, ClusterOptions, ReservedPort};

/// Bound on a refused replica stopping by itself.
const REFUSAL_BOUND: Duration = Duration::from_secs(20);

fn options() -> ClusterOptions {
    ClusterOptions {
        proxies: false,
        ..fast_options(3)
    }
}

/// A server process outside the cluster's control, killed when dropped.
struct OneOff {
    child: Child,
    log: PathBuf,
}

impl OneOff {
    fn spawn(args: Vec<OsString>, log: PathBuf) -> OneOff {
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let program = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn kvs-server: {e}"));
        OneOff { child, log }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        None
    }

    /// Waits until its output contains `needle`.
    fn wait_output(&self, needle: &str, bound: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < bound {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }
}

impl Drop for OneOff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let port = ReservedPort::new().unwrap_or_else(|e| panic!("{e}"));
    port.release().to_string()
}

/// Node `id`'s own command line, with `extra` appended.
fn node_args(cluster: &Cluster, id: u64, data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = cluster.layout().node_args(id, data_dir, &options());
    args.extend(extra.iter().map(OsString::from));
    args
}

/// A command line claiming node `id`, listening on fresh addresses, with its own data dir
/// and `--peers` giving `members` (the cluster's real peer addresses for the others).
fn claimant_args(cluster: &Cluster, id: u64, members: &[u64], data_dir: &Path) -> Vec<OsString> {
    let listen = &cluster.layout().peer_listen;
    let peers: Vec<String> = members
        .iter()
        .map(|&m| match listen.get(&m) {
            Some(addr) if m != id => format!("{m}={addr}"),
            _ => format!("{m}={}", free_addr()),
        })
        .collect();
    let mut args: Vec<OsString> = [
        "--id".to_owned(),
        id.to_string(),
        "--peers".to_owned(),
        peers.join(","),
        "--client-addr".to_owned(),
        free_addr(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend(fast_timing().into_iter().map(OsString::from));
    args
}

async fn put(cluster: &Cluster, key: &str, value: &str) {
    client(cluster, CHECK_TIMEOUT)
        .put(key.to_owned(), value.to_owned())
        .await
        .or_fail(cluster, &format!("put {key}"));
}

async fn get(cluster: &Cluster, key: &str) -> Option<String> {
    client(cluster, CHECK_TIMEOUT)
        .get(key.to_owned())
        .await
        .or_fail(cluster, &format!("get {key}"))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn wipe(dir: &Path) {
    fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_replica_never_votes_and_the_cluster_keeps_serving() {
    let cluster = start(options());
    wait_leader(&cluster, &[1, 2, 3]).await;
    put(&cluster, "before", "1").await;
    cluster.kill(2).or_fail(&cluster, "kill 2");
    let dir = cluster.data_dir(2);
    wipe(&dir);

    // `existing` with an empty data dir: asks to join, is refused by the peers that know
    // id 2 by its earlier data dir, and stops, saying why and what to do.
    let log = cluster.root().join("node-2-existing.log");
    let args = node_args(&cluster, 2, &dir, &["--initial-cluster-state", "existing"]);
    let mut existing = OneOff::spawn(args, log);
    let status = existing.wait_exit(REFUSAL_BOUND);
    let out = existing.output();
    if status.is_none_or(|s| s.success()) {
        fail(
            &cluster,
            format!("`existing` on an empty dir did not refuse: {status:?}\n{out}"),
        );
    }
    for needle in ["has lost its data", "must not vote", "Replace this member"] {
        if !out.contains(needle) {
            fail(
                &cluster,
                format!("the refusal does not say {needle:?}:\n{out}"),
            );
        }
    }
    put(&cluster, "while-refused", "2").await;

    // The default (`new`) with the wiped dir: the peers knew node 2 by its earlier data
    // dir and refuse it; it stops without having voted.
    wipe(&dir);
    let log = cluster.root().join("node-2-new.log");
    let mut renewed = OneOff::spawn(node_args(&cluster, 2, &dir, &[]), log);
    let status = renewed.wait_exit(REFUSAL_BOUND);
    let out = renewed.output();
    if status.is_none_or(|s| s.success()) {
        fail(
            &cluster,
            format!("a wiped node 2 was not stopped: {status:?}\n{out}"),
        );
    }
    if !out.contains("is known here by data dir instance")
        || out.contains("joined: this data dir may vote")
    {
        fail(
            &cluster,
            format!("node 2 did not stop as a replaced member:\n{out}"),
        );
    }
    for id in [1, 3] {
        if !log_contains(&cluster, id, "WARN")
            || !log_contains(&cluster, id, "node 2 is known here by data dir instance")
        {
            fail(
                &cluster,
                format!("node {id} did not log its refusal of the wiped node 2"),
            );
        }
    }
    put(&cluster, "after", "3").await;
    for (key, value) in [("before", "1"), ("while-refused", "2"), ("after", "3")] {
        assert_eq!(get(&cluster, key).await.as_deref(), Some(value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_claiming_a_member_is_refused_by_the_real_peers() {
    let cluster = start(options());
    wait_leader(&cluster, &[1, 2, 3]).await;
    put(&cluster, "k", "v").await;

    let dir = cluster.root().join("impostor-2");
    fs::create_dir_all(&dir).or_fail(&cluster, "impostor dir");
    let args = claimant_args(&cluster, 2, &[1, 2, 3], &dir);
    let mut impostor = OneOff::spawn(args, cluster.root().join("impostor-2.log"));
    let status = impostor.wait_exit(REFUSAL_BOUND);
    let out = impostor.output();
    if status.is_none_or(|s| s.success()) {
        fail(
            &cluster,
            format!("the impostor was not stopped: {status:?}\n{out}"),
        );
    }
    // It never got to vote: it was stopped while joining, and the real peers refused every
    // connection it opened, so nothing it sent reached a proposer.
    if !out.contains("joining: this data dir votes once 2 other members have recorded it")
        || out.contains("joined: this data dir may vote")
        || !out.contains("must not vote")
    {
        fail(
            &cluster,
            format!("the impostor's output does not show a refused join:\n{out}"),
        );
    }
    // The impostor stops at the first refusal, so the other peer may see its connection
    // close before its own handshake check runs: at least one real peer must have refused
    // it by name, and neither may have let it join (its own output shows it never did).
    let refused: Vec<u64> = [1, 3]
        .into_iter()
        .filter(|&id| log_contains(&cluster, id, "node 2 is known here by data dir instance"))
        .collect();
    if refused.is_empty() {
        fail(&cluster, "no real peer refused the impostor".to_string());
    }
    // The real node 2 is untouched and still a voter: a write needs it once node 3 is gone.
    cluster.kill(3).or_fail(&cluster, "kill 3");
    put(&cluster, "k2", "v2").await;
    assert_eq!(get(&cluster, "k").await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_peers_list_is_ignored_at_restart_and_refused_in_the_handshake() {
    let cluster = start(options());
    wait_leader(&cluster, &[1, 2, 3]).await;
    put(&cluster, "k", "v").await;

    // Node 3 restarted with a fourth member: its data dir's membership wins, and it says so.
    cluster.kill(3).or_fail(&cluster, "kill 3");
    let mut args = node_args(&cluster, 3, &cluster.data_dir(3), &[]);
    let Some(peers) = args.iter().position(|a| a == "--peers") else {
        fail(&cluster, "no --peers in the node's arguments");
    };
    let mut list = args[peers + 1].to_string_lossy().into_owned();
    list.push_str(&format!(",4={}", free_addr()));
    args[peers + 1] = list.into();
    let restarted = OneOff::spawn(args, cluster.root().join("node-3-peers.log"));
    let warned = "--peers lists other members than this data dir's membership, which wins";
    if !restarted.wait_output(warned, REFUSAL_BOUND) {
        fail(
            &cluster,
            format!(
                "node 3 with a fourth peer did not warn:\n{}",
                restarted.output()
            ),
        );
    }
    // It is the same voter: a write needs it once node 2 is gone.
    cluster.kill(2).or_fail(&cluster, "kill 2");
    put(&cluster, "k3", "v3").await;
    let members = client(&cluster, CHECK_TIMEOUT)
        .member_list()
        .await
        .or_fail(&cluster, "member list");
    let ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
    if ids != [1, 2, 3] {
        fail(&cluster, format!("the members are {ids:?}, not 1, 2, 3"));
    }
    drop(restarted);
    cluster.restart(2).or_fail(&cluster, "restart 2");
    cluster.restart(3).or_fail(&cluster, "restart 3");

    // A fresh node 3 (elsewhere) that believes in members {1, 3, 4}: the real peers refuse
    // it in the handshake, naming the difference on both sides.
    let dir = cluster.root().join("fresh-3");
    fs::create_dir_all(&dir).or_fail(&cluster, "fresh dir");
    let args = claimant_args(&cluster, 3, &[1, 3, 4], &dir);
    let fresh = OneOff::spawn(args, cluster.root().join("fresh-3.log"));
    let named = "the accepting node's members are {1, 2, 3}, the connecting node's are {1, 3, 4} \
                 (only the accepting node lists {2}, only the connecting node lists {4})";
    if !fresh.wait_output(named, REFUSAL_BOUND) {
        fail(
            &cluster,
            format!(
                "the fresh node was not told the difference:\n{}",
                fresh.output()
            ),
        );
    }
    if !fresh.output().contains("WARN") || fresh.output().contains("joined: this data dir may vote")
    {
        fail(
            &cluster,
            format!(
                "the refusal is not a warning, or it joined:\n{}",
                fresh.output()
            ),
        );
    }
    if !log_contains(&cluster, 1, named) {
        fail(&cluster, "node 1 did not log the membership difference");
    }
    drop(fresh);
    wait_leader(&cluster, &[1, 2, 3]).await;
    assert_eq!(get(&cluster, "k").await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_bootstraps_and_keeps_its_identity_across_restarts() {
    let cluster = start(options());
    wait_leader(&cluster, &[1, 2, 3]).await;
    put(&cluster, "k", "v").await;
    let identity = |id: u64| {
        fs::read_to_string(cluster.data_dir(id).join("IDENTITY")).or_fail(&cluster, "read IDENTITY")
    };
    let uid = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("cluster_uid "))
            .map(str::to_owned)
    };
    let first = identity(1);
    for id in [1, 2, 3] {
        let text = identity(id);
        assert!(text.contains("joined true"), "node {id}:\n{text}");
        assert_eq!(uid(&text), uid(&first), "node {id}");
    }
    for id in [1, 2, 3] {
        cluster.kill(id).or_fail(&cluster, "kill");
    }
    for id in [1, 2, 3] {
        cluster.restart(id).or_fail(&cluster, "restart");
    }
    wait_leader(&cluster, &[1, 2, 3]).await;
    assert_eq!(get(&cluster, "k").await.as_deref(), Some("v"));
    put(&cluster, "k", "w").await;
    for id in [1, 2, 3] {
        // The same identity, the same instance: a restart is not a new data dir.
        let text = identity(id);
        let instance = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("instance "))
                .map(str::to_owned)
        };
        assert_eq!(uid(&text), uid(&first));
        assert!(instance(&text).is_some());
    }

    // A client of another cluster is told both ids.
    let stranger = Client::connect(
        cluster.client_endpoints(),
        ClientOptions {
            cluster_id: "other".into(),
            request_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .or_fail(&cluster, "client");
    let err = stranger
        .get("k".to_owned())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("cluster \"kvs\"") && err.contains("says \"other\""),
        "{err}"
    );
}
