//! The `kvs-client` binary against fake nodes: stdout, stderr and exit codes.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{answer_with, dead_endpoint, node_status, store_script, Action, FakeServer, Script};
use serde_json::{json, Value};
use wire::{ErrorReply, NodeRole, Op, Reply};

/// Fake nodes served by a background runtime while the test thread runs the binary.
struct Harness {
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Harness { runtime }
    }

    fn fake(&self, node_id: u64, script: Script) -> FakeServer {
        self.runtime
            .block_on(FakeServer::start_as("kvs", node_id, script))
    }
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("UTF-8 stdout")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).expect("one JSON object on stdout")
    }
}

fn kvs<S: AsRef<OsStr>>(endpoints: &str, args: &[S]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-client"))
        .env_remove("KVS_ENDPOINTS")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .expect("run kvs-client");
    Run {
        code: output.status.code().expect("exited"),
        stdout: output.stdout,
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

#[test]
fn put_is_quiet_and_get_prints_the_bare_value() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let put = kvs(&node.addr, &["put", "greeting", "hello world"]);
    assert_eq!((put.code, put.stdout(), put.stderr.as_str()), (0, "", ""));
    let get = kvs(&node.addr, &["get", "greeting"]);
    assert_eq!(
        (get.code, get.stdout(), get.stderr.as_str()),
        (0, "hello world\n", "")
    );
    let stale = kvs(&node.addr, &["get", "--stale", "greeting"]);
    assert_eq!((stale.code, stale.stdout()), (0, "hello world\n"));
    let ops: Vec<Op> = node.requests().into_iter().map(|r| r.op).collect();
    assert!(matches!(
        ops[2],
        Op::Get {
            consistency: wire::ReadConsistency::Stale,
            ..
        }
    ));
}

#[test]
fn a_missing_key_exits_1_with_empty_stdout() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let get = kvs(&node.addr, &["get", "nope"]);
    assert_eq!(get.code, 1);
    assert_eq!(get.stdout(), "");
    assert_eq!(get.stderr, "key not found: \"nope\"\n");
    let del = kvs(&node.addr, &["del", "nope"]);
    assert_eq!((del.code, del.stdout()), (1, ""));
    assert_eq!(del.stderr, "key not found: \"nope\"\n");
}

#[test]
fn json_output_has_the_documented_shapes() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let put = kvs(&node.addr, &["-o", "json", "put", "k", "v"]);
    assert_eq!((put.code, put.json()), (0, json!({ "ok": true })));
    let get = kvs(&node.addr, &["get", "k", "--output", "json"]);
    assert_eq!(
        (get.code, get.json()),
        (
            0,
            json!({ "key": "k", "found": true, "value": "v", "value_encoding": "utf8" })
        )
    );
    let missing = kvs(&node.addr, &["-o", "json", "get", "nope"]);
    assert_eq!(
        (missing.code, missing.json()),
        (
            1,
            json!({ "key": "nope", "found": false, "value": null, "value_encoding": null })
        )
    );
    let del = kvs(&node.addr, &["-o", "json", "del", "k"]);
    assert_eq!(
        (del.code, del.json()),
        (0, json!({ "key": "k", "existed": true }))
    );
    let del = kvs(&node.addr, &["-o", "json", "del", "k"]);
    assert_eq!(
        (del.code, del.json()),
        (1, json!({ "key": "k", "existed": false }))
    );
}

#[test]
fn binary_values_are_raw_in_text_and_base64_in_json() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let raw: &[u8] = b"\xff\xfebin";
    let args = [OsStr::new("put"), OsStr::new("b"), OsStr::from_bytes(raw)];
    assert_eq!(kvs(&node.addr, &args).code, 0);
    let get = kvs(&node.addr, &["get", "b"]);
    assert_eq!(
        (get.code, get.stdout.as_slice()),
        (0, &b"\xff\xfebin\n"[..])
    );
    let get = kvs(&node.addr, &["-o", "json", "get", "b"]);
    assert_eq!(
        get.json(),
        json!({ "key": "b", "found": true, "value": "//5iaW4=", "value_encoding": "base64" })
    );
}

#[test]
fn cas_swaps_or_exits_1_on_a_mismatch() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let absent = kvs(&node.addr, &["cas", "k", "--absent", "v1"]);
    assert_eq!(
        (absent.code, absent.stdout(), absent.stderr.as_str()),
        (0, "", "")
    );
    let mismatch = kvs(&node.addr, &["cas", "k", "wrong", "v2"]);
    assert_eq!((mismatch.code, mismatch.stdout()), (1, ""));
    assert_eq!(mismatch.stderr, "mismatch: \"k\" is \"v1\"\n");
    let swap = kvs(&node.addr, &["cas", "k", "v1", "v2"]);
    assert_eq!(swap.code, 0);
    assert_eq!(kvs(&node.addr, &["get", "k"]).stdout(), "v2\n");
    let json_mismatch = kvs(&node.addr, &["-o", "json", "cas", "k", "--absent", "v3"]);
    assert_eq!(
        (json_mismatch.code, json_mismatch.json()),
        (
            1,
            json!({ "key": "k", "swapped": false, "current": "v2", "current_encoding": "utf8" })
        )
    );
    let json_swap = kvs(&node.addr, &["-o", "json", "cas", "k", "v2", "v3"]);
    assert_eq!(
        (json_swap.code, json_swap.json()),
        (
            0,
            json!({ "key": "k", "swapped": true, "current": null, "current_encoding": null })
        )
    );
    let requests = node.requests();
    let expected: Vec<Option<&[u8]>> = requests
        .iter()
        .filter_map(|r| match &r.op {
            Op::Cas { expected, .. } => Some(expected.as_deref()),
            _ => None,
        })
        .collect();
    assert_eq!(
        expected,
        [None, Some(&b"wrong"[..]), Some(b"v1"), None, Some(b"v2")]
    );
}

fn status_script(id: u64, role: NodeRole) -> Script {
    answer_with(move |request| match request.op {
        Op::Status => Ok(Reply::Status(Box::new(node_status(
            id,
            &format!("node-{id}:6000"),
            role,
        )))),
        _ => panic!("only status is asked"),
    })
}

#[test]
fn status_prints_a_table_and_the_leader() {
    let harness = Harness::new();
    let leader = harness.fake(1, status_script(1, NodeRole::Leader));
    let follower = harness.fake(2, status_script(2, NodeRole::Follower));
    let dead = dead_endpoint();
    let endpoints = format!("{},{},{dead}", leader.addr, follower.addr);

    let text = kvs(&endpoints, &["status"]);
    assert_eq!(text.code, 0);
    let lines: Vec<&str> = text.stdout().lines().collect();
    let cells: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 5, "{}", text.stdout());
    assert_eq!(
        cells[0],
        [
            "ID",
            "ADDR",
            "ROLE",
            "BALLOT",
            "COMMIT",
            "APPLIED",
            "REACHABLE",
            "ACC_FAILURES",
            "ACC_RECOVERIES",
            "ACC_DOWN",
            "PEERS"
        ]
    );
    assert_eq!(
        cells[1],
        [
            "1",
            "node-1:6000",
            "leader",
            "3.1",
            "41",
            "31",
            "yes",
            "1",
            "2",
            "no",
            "2:up,3:down"
        ]
    );
    assert_eq!(cells[2][..3], ["2", "node-2:6000", "follower"]);
    assert_eq!(
        cells[3],
        [
            "-",
            dead.as_str(),
            "-",
            "-",
            "-",
            "-",
            "no",
            "-",
            "-",
            "-",
            "-"
        ]
    );
    assert_eq!(lines[4], "leader: node 1 at node-1:6000 (ballot 3.1)");
    assert!(
        text.stderr.starts_with(&format!("unreachable: {dead}: ")),
        "{}",
        text.stderr
    );

    let json = kvs(&endpoints, &["status", "-o", "json"]).json();
    assert_eq!(json["leader"], json!(1));
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let first = &nodes[0];
    for (field, value) in [
        ("id", json!(1)),
        ("addr", json!("node-1:6000")),
        ("endpoint", json!(leader.addr)),
        ("role", json!("leader")),
        ("ballot", json!({ "round": 3, "node": 1 })),
        ("commit_index", json!(41)),
        ("applied_index", json!(31)),
        ("reachable", json!(true)),
        ("acceptor_failures", json!(1)),
        ("acceptor_recoveries", json!(2)),
        ("acceptor_down", json!(false)),
    ] {
        assert_eq!(first[field], value, "{field}");
    }
    assert_eq!(nodes[1]["role"], json!("follower"));
    assert_eq!(nodes[2]["reachable"], json!(false));
    assert_eq!(nodes[2]["id"], Value::Null);
    assert_eq!(nodes[2]["addr"], json!(dead));
    assert!(nodes[2]["error"].is_string());
}

#[test]
fn status_with_no_node_reachable_exits_3_and_json_leader_is_null() {
    let (a, b) = (dead_endpoint(), dead_endpoint());
    let run = kvs(&format!("{a},{b}"), &["-o", "json", "status"]);
    assert_eq!(run.code, 3);
    let json = run.json();
    assert_eq!(json["leader"], Value::Null);
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(2));
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("error: no replica reachable: {a}: unreachable: ")),
        "{}",
        run.stderr
    );
    assert!(last.contains(&format!("; {b}: unreachable: ")), "{last}");
}

#[test]
fn unreachable_endpoints_exit_3_with_one_error_line() {
    let (a, b) = (dead_endpoint(), dead_endpoint());
    let run = kvs(&format!("{a},{b}"), &["--timeout-ms", "300", "get", "k"]);
    assert_eq!((run.code, run.stdout()), (3, ""));
    let prefix = format!("error: no replica reachable at {a},{b}: {a}: ");
    assert!(run.stderr.starts_with(&prefix), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_write_without_an_answer_exits_4() {
    let harness = Harness::new();
    let node = harness.fake(1, Arc::new(|_, _| Action::Close));
    let run = kvs(&node.addr, &["--timeout-ms", "300", "put", "k", "v"]);
    assert_eq!((run.code, run.stdout()), (4, ""));
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].starts_with("error: outcome unknown: "),
        "{}",
        run.stderr
    );
    assert!(lines[0].ends_with("the write may or may not have been applied"));
    assert!(
        lines[1].starts_with("retry: kvs-client retry "),
        "{}",
        run.stderr
    );
}

/// The token printed with exit 4.
fn retry_token(run: &Run) -> String {
    let line = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("retry: kvs-client retry "))
        .unwrap_or_else(|| panic!("no retry token in {:?}", run.stderr));
    line.to_owned()
}

/// A fake that closes the connection on every write until `answer` is set, then answers
/// with `reply`.
fn flaky(harness: &Harness, answer: &Arc<AtomicBool>, reply: Reply) -> FakeServer {
    let answer = Arc::clone(answer);
    harness.fake(
        1,
        Arc::new(move |request, _| {
            if answer.load(Ordering::SeqCst) {
                common::respond(request, Ok(reply.clone()))
            } else {
                Action::Close
            }
        }),
    )
}

#[test]
fn the_retry_token_resends_the_same_write_and_reports_like_the_command() {
    let harness = Harness::new();
    let answer = Arc::new(AtomicBool::new(false));
    let node = flaky(&harness, &answer, Reply::Deleted { existed: true });
    let run = kvs(&node.addr, &["--timeout-ms", "300", "del", "k"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let token = retry_token(&run);
    let first = node.requests();
    answer.store(true, Ordering::SeqCst);

    let retry = kvs(&node.addr, &["retry", &token]);
    assert_eq!(
        (retry.code, retry.stdout(), retry.stderr.as_str()),
        (0, "", "")
    );
    let all = node.requests();
    assert_eq!(all.len(), first.len() + 1);
    assert!(all
        .iter()
        .all(|r| r.session == first[0].session && r.op == first[0].op));
    assert_eq!(
        node.registrations(),
        1,
        "the retry is the same session's write"
    );

    let json = kvs(&node.addr, &["-o", "json", "retry", &token]);
    assert_eq!(json.code, 0);
    assert_eq!(json.json(), json!({"key": "k", "existed": true}));
}

#[test]
fn a_retried_cas_reports_its_first_result() {
    let harness = Harness::new();
    let answer = Arc::new(AtomicBool::new(false));
    let mismatch = Reply::Mismatch {
        current: Some(bytes::Bytes::from("x")),
    };
    let node = flaky(&harness, &answer, mismatch);
    let run = kvs(&node.addr, &["--timeout-ms", "300", "cas", "k", "a", "b"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    answer.store(true, Ordering::SeqCst);
    let retry = kvs(&node.addr, &["retry", &retry_token(&run)]);
    assert_eq!((retry.code, retry.stdout()), (1, ""));
    assert_eq!(retry.stderr, "mismatch: \"k\" is \"x\"\n");
}

#[test]
fn a_retry_the_cluster_no_longer_remembers_exits_5() {
    let harness = Harness::new();
    let expired = Arc::new(AtomicBool::new(false));
    let node = harness.fake(
        1,
        Arc::new({
            let expired = Arc::clone(&expired);
            move |request, _| {
                if !expired.load(Ordering::SeqCst) {
                    return Action::Close;
                }
                let s = request.session.expect("a write carries its session");
                common::respond(
                    request,
                    Err(ErrorReply::SessionExpired {
                        client_id: s.client_id,
                        seq: s.seq,
                    }),
                )
            }
        }),
    );
    let run = kvs(&node.addr, &["--timeout-ms", "300", "put", "k", "v"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    expired.store(true, Ordering::SeqCst);
    let retry = kvs(&node.addr, &["retry", &retry_token(&run)]);
    assert_eq!((retry.code, retry.stdout()), (5, ""));
    assert!(
        retry.stderr.starts_with("error: session expired: "),
        "{}",
        retry.stderr
    );
    assert_eq!(retry.stderr.lines().count(), 1, "{}", retry.stderr);
}

#[test]
fn a_bad_retry_token_exits_2() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    for token in ["not base64!", "AQID", ""] {
        let run = kvs(&node.addr, &["retry", token]);
        assert_eq!(run.code, 2, "{token:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("error: invalid retry handle: "),
            "{}",
            run.stderr
        );
    }
    assert!(node.requests().is_empty());
}

#[test]
fn a_wrong_cluster_id_exits_3_naming_the_mismatch() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let run = kvs(&node.addr, &["--cluster-id", "other", "get", "k"]);
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("cluster id mismatch"), "{}", run.stderr);
}

#[test]
fn endpoints_come_from_the_environment() {
    let harness = Harness::new();
    let node = harness.fake(1, store_script(1));
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-client"))
        .env("KVS_ENDPOINTS", &node.addr)
        .args(["put", "k", "v"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(node.requests().len(), 1);
}

#[test]
fn usage_errors_exit_2() {
    let endpoint = dead_endpoint();
    for args in [
        &["frobnicate"][..],
        &["get"],
        &["--output", "yaml", "get", "k"],
        &["--timeout-ms", "0", "get", "k"],
        &["cas", "k"],
        &["cas", "k", "new"],
        &["cas", "k", "a", "b", "--absent"],
        &["cas", "k", "a", "b", "c"],
        &["get", ""],
    ] {
        let run = kvs(&endpoint, args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout(), "", "{args:?}");
        assert!(!run.stderr.is_empty(), "{args:?}");
    }
    let run = kvs("nohost", &["get", "k"]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "error: invalid endpoint \"nohost\": expected host:port\n"
    );
}

/// A node that answers status requests as `status` and every read with `read`.
fn node_script(
    status: wire::NodeStatus,
    read: impl Fn() -> Result<Reply, ErrorReply> + Send + Sync + 'static,
) -> Script {
    answer_with(move |request| match request.op {
        Op::Status => Ok(Reply::Status(Box::new(status.clone()))),
        Op::Get { .. } => read(),
        _ => panic!("only status and reads are asked"),
    })
}

fn empty_read() -> Result<Reply, ErrorReply> {
    Ok(Reply::Value {
        value: None,
        stale: false,
    })
}

#[test]
fn status_without_a_leader_with_a_quorum_exits_3_and_says_why() {
    let harness = Harness::new();
    // A leader that reaches neither peer: it says it leads, but no quorum follows it.
    let mut lonely = node_status(1, "node-1:6000", NodeRole::Leader);
    lonely.peers.iter_mut().for_each(|p| p.reachable = false);
    let leader = harness.fake(1, node_script(lonely, empty_read));
    let run = kvs(&leader.addr, &["status"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stdout()
            .ends_with("leader: node 1 at node-1:6000 (ballot 3.1)\n"),
        "the table keeps its format: {}",
        run.stdout()
    );
    assert!(
        run.stderr.starts_with(
            "error: no leader with a quorum: node 1 leads but reaches only 1 of 3 members"
        ),
        "{}",
        run.stderr
    );

    // A candidate that knows no leader.
    let mut candidate = node_status(2, "node-2:6000", NodeRole::Candidate);
    candidate.leader = None;
    let node = harness.fake(2, node_script(candidate, empty_read));
    let run = kvs(&node.addr, &["-o", "json", "status"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let json = run.json();
    assert_eq!(json["leader"], Value::Null);
    let error = json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("node 2 (candidate) knows no leader"),
        "{error}"
    );
}

#[test]
fn status_through_a_follower_linked_to_the_leader_exits_0() {
    let harness = Harness::new();
    // Node 2 follows node 1 and its link to node 1 is up (node_status's peers).
    let follower = harness.fake(2, status_script(2, NodeRole::Follower));
    let run = kvs(&follower.addr, &["status"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout()
            .ends_with("leader: node 1, linked to the reachable nodes (not among the endpoints)\n"),
        "{}",
        run.stdout()
    );
}

#[test]
fn endpoint_status_has_one_row_per_endpoint_and_exits_3_if_one_is_down() {
    let harness = Harness::new();
    let leader = harness.fake(1, status_script(1, NodeRole::Leader));
    let dead = dead_endpoint();
    let endpoints = format!("{},{dead}", leader.addr);
    let run = kvs(&endpoints, &["endpoint", "status"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let rows: Vec<Vec<&str>> = run
        .stdout()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ENDPOINT", "ID", "LEADER", "ROLE", "BALLOT", "COMMIT", "APPLIED", "MEMBERS", "ERRORS"]
    );
    assert_eq!(
        rows[1],
        [
            leader.addr.as_str(),
            "1",
            "1",
            "leader",
            "3.1",
            "41",
            "31",
            "3",
            "(2",
            "reachable)",
            "-"
        ]
    );
    assert_eq!(rows[2][..2], [dead.as_str(), "-"]);
    assert!(rows[2].join(" ").contains("refused"), "{:?}", rows[2]);

    let json = kvs(&leader.addr, &["-o", "json", "endpoint", "status"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let row = &json.json()["endpoints"][0];
    assert_eq!(row["endpoint"], json!(leader.addr));
    assert_eq!(row["id"], json!(1));
    assert_eq!(row["leader"], json!(1));
    assert_eq!(row["commit_index"], json!(41));
    assert_eq!(row["members"], json!(3));
    assert_eq!(row["error"], Value::Null);
}

#[test]
fn endpoint_health_reads_through_the_leader_from_each_endpoint() {
    let harness = Harness::new();
    let leader = harness.fake(
        1,
        node_script(node_status(1, "x:1", NodeRole::Leader), empty_read),
    );
    let leader_addr = leader.addr.clone();
    let follower = harness.fake(
        2,
        node_script(node_status(2, "x:2", NodeRole::Follower), move || {
            Err(ErrorReply::NotLeader {
                leader: Some(1),
                leader_addr: Some(leader_addr.clone()),
            })
        }),
    );
    let dead = dead_endpoint();
    let endpoints = format!("{},{},{dead}", follower.addr, leader.addr);
    let run = kvs(&endpoints, &["endpoint", "health"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout().lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout());
    for (line, endpoint) in lines.iter().zip([&follower.addr, &leader.addr]) {
        let healthy = format!("{endpoint} is healthy: successfully committed proposal: took = ");
        assert!(line.starts_with(&healthy) && line.ends_with("ms"), "{line}");
    }
    assert!(
        lines[2].starts_with(&format!("{dead} is unhealthy: unreachable: ")),
        "{}",
        lines[2]
    );
    // The follower's read reached the leader, by its redirect.
    let reads = |node: &FakeServer| {
        node.requests()
            .iter()
            .filter(|r| matches!(r.op, Op::Get { .. }))
            .count()
    };
    assert_eq!((reads(&follower), reads(&leader)), (1, 2));

    let json = kvs(&follower.addr, &["-o", "json", "endpoint", "health"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let json = json.json();
    assert_eq!(json["healthy"], json!(true));
    assert_eq!(json["endpoints"][0]["endpoint"], json!(follower.addr));
    assert_eq!(json["endpoints"][0]["health"], json!(true));
    assert!(json["endpoints"][0]["took_ms"].is_u64());
}

#[test]
fn endpoint_health_is_bounded_and_can_reach_the_leader_via_other_addresses() {
    let harness = Harness::new();
    let leader = harness.fake(
        1,
        node_script(node_status(1, "x:1", NodeRole::Leader), empty_read),
    );
    // The follower names a leader address that cannot be reached from here (a container's
    // view of the host, say).
    let unreachable = dead_endpoint();
    let follower = harness.fake(
        2,
        node_script(node_status(2, "x:2", NodeRole::Follower), move || {
            Err(ErrorReply::NotLeader {
                leader: Some(1),
                leader_addr: Some(unreachable.clone()),
            })
        }),
    );
    let started = std::time::Instant::now();
    let run = kvs(
        &follower.addr,
        &[
            "--timeout-ms",
            "20000",
            "endpoint",
            "health",
            "--check-timeout-ms",
            "800",
        ],
    );
    let took = started.elapsed();
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stdout().starts_with(&format!(
            "{} is unhealthy: no leader reachable at ",
            follower.addr
        )),
        "{}",
        run.stdout()
    );
    // The check's own bound applies, not the 20 s request budget.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");

    let via = kvs(
        &follower.addr,
        &["endpoint", "health", "--via", leader.addr.as_str()],
    );
    assert_eq!(via.code, 0, "{}{}", via.stdout(), via.stderr);
    assert!(via
        .stdout()
        .starts_with(&format!("{} is healthy", follower.addr)));

    // A follower that names its own address as the leader's (in a container, the leader's
    // published port can be the container's own): the check goes on through --via.
    let own: Arc<std::sync::Mutex<String>> = Arc::default();
    let named = Arc::clone(&own);
    let confused = harness.fake(
        3,
        node_script(node_status(3, "x:3", NodeRole::Follower), move || {
            Err(ErrorReply::NotLeader {
                leader: Some(1),
                leader_addr: Some(named.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            })
        }),
    );
    *own.lock().unwrap_or_else(|p| p.into_inner()) = confused.addr.clone();
    let via = kvs(
        &confused.addr,
        &["endpoint", "health", "--via", leader.addr.as_str()],
    );
    assert_eq!(via.code, 0, "{}{}", via.stdout(), via.stderr);
}

/// Output to a closed stdout and stderr (`kvs-client ... | head -1`, a log collector gone)
/// is dropped: the tool still exits with the code of what it did, never with a panic.
#[test]
fn closed_stdout_and_stderr_do_not_make_the_tool_panic() {
    let exit_code = |args: &[&str]| {
        let (out_reader, out_writer) = std::io::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
        let (err_reader, err_writer) = std::io::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
        // Nobody reads: every write the tool makes fails with a broken pipe.
        drop(out_reader);
        drop(err_reader);
        let status = Command::new(env!("CARGO_BIN_EXE_kvs-client"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out_writer)
            .stderr(err_writer)
            .status()
            .unwrap_or_else(|e| panic!("cannot run kvs-client: {e}"));
        status.code()
    };
    // Nothing listens on port 1: an error on stderr, exit 3.
    assert_eq!(
        exit_code(&["--endpoints", "127.0.0.1:1", "get", "k"]),
        Some(3)
    );
    assert_eq!(
        exit_code(&["--endpoints", "127.0.0.1:1", "-o", "json", "status"]),
        Some(3)
    );
}

#[test]
fn tls_flags_come_in_pairs_and_name_an_unusable_file() {
    let harness = Harness::new();
    let fake = harness.fake(1, store_script(1));
    let endpoint = fake.addr.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_str().expect("UTF-8 path");
    for (args, wanted) in [
        (
            vec!["--cacert", missing, "--cert", "c.pem", "get", "k"],
            "--key",
        ),
        (
            vec!["--cacert", missing, "--key", "k.pem", "get", "k"],
            "--cert",
        ),
        (
            vec!["--cert", "c.pem", "--key", "k.pem", "get", "k"],
            "--cacert",
        ),
    ] {
        let run = kvs(&endpoint, &args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(wanted), "{args:?}: {}", run.stderr);
    }
    let run = kvs(&endpoint, &["--cacert", missing, "get", "k"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("CA certificate file") && run.stderr.contains("missing-ca.pem"),
        "{}",
        run.stderr
    );
    // The same from the environment, for a subcommand's own flags too.
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-client"))
        .env("KVS_ENDPOINTS", &endpoint)
        .env("KVS_CACERT", missing)
        .env("KVS_CERT", "c.pem")
        .env_remove("KVS_KEY")
        .args(["member", "list"])
        .output()
        .expect("run kvs-client");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--key"));
    // A TLS client at this plain fake node is told so, and exits 3.
    let ca = dir.path().join("ca.pem");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA");
    std::fs::write(&ca, cert.pem()).expect("write");
    let run = kvs(
        &endpoint,
        &["--cacert", ca.to_str().expect("UTF-8"), "get", "k"],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is not a TLS port: connect without --cacert"),
        "{}",
        run.stderr
    );
}

/// A fake leader with auth enabled: alice may write under `patient/` only, `role add admin`
/// is refused, and the auth state is one role and one user.
fn auth_script() -> Script {
    use bytes::Bytes;
    use wire::auth::{Grant, RoleInfo, UserInfo};
    use wire::{AuthChange, AuthStatus, Permission};
    answer_with(move |request| match &request.op {
        Op::Put { key, .. } if key.starts_with(b"patient/") => Ok(Reply::Written),
        Op::Put { key, .. } => Err(ErrorReply::PermissionDenied {
            identity: Some("alice".into()),
            reason: format!(
                "\"alice\" may not write \"{}\" (no role grants write on it)",
                key.escape_ascii()
            ),
        }),
        Op::Auth(AuthChange::RoleAdd { role }) if role == "admin" => Err(ErrorReply::AuthRefused {
            reason: "role \"admin\" exists".into(),
        }),
        Op::Auth(_) => Ok(Reply::AuthChanged),
        Op::AuthStatus => Ok(Reply::AuthStatus(Box::new(AuthStatus {
            enabled: true,
            roles: vec![RoleInfo {
                name: "doctors".into(),
                grants: vec![Grant {
                    prefix: Bytes::from_static(b"patient/"),
                    perm: Permission::ReadWrite,
                }],
            }],
            users: vec![UserInfo {
                name: "alice".into(),
                roles: vec!["doctors".into()],
            }],
        }))),
        other => panic!("unexpected {other:?}"),
    })
}

#[test]
fn permission_denied_exits_6_and_auth_commands_report_what_they_did() {
    let harness = Harness::new();
    let node = harness.fake(1, auth_script());
    let allowed = kvs(&node.addr, &["put", "patient/1", "v"]);
    assert_eq!((allowed.code, allowed.stderr.as_str()), (0, ""));
    let denied = kvs(&node.addr, &["put", "billing/1", "v"]);
    assert_eq!(denied.code, 6, "{}", denied.stderr);
    assert_eq!(
        denied.stderr,
        "error: permission denied: \"alice\" may not write \"billing/1\" (no role grants write \
         on it)\n"
    );
    let grant = kvs(
        &node.addr,
        &[
            "role",
            "grant",
            "doctors",
            "--prefix",
            "patient/",
            "--perm",
            "readwrite",
        ],
    );
    assert_eq!(
        (grant.code, grant.stdout()),
        (
            0,
            "role \"doctors\" granted readwrite on prefix \"patient/\"\n"
        )
    );
    let added = kvs(&node.addr, &["-o", "json", "user", "add", "alice"]);
    assert_eq!((added.code, added.json()), (0, json!({ "ok": true })));
    let refused = kvs(&node.addr, &["role", "add", "admin"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert_eq!(
        refused.stderr,
        "error: rejected: auth change refused: role \"admin\" exists\n"
    );
    let users = kvs(&node.addr, &["user", "list"]);
    assert_eq!(
        (users.code, users.stdout()),
        (0, "USER   ROLES\nalice  doctors\n")
    );
    let status = kvs(&node.addr, &["-o", "json", "auth", "status"]);
    assert_eq!(status.code, 0);
    assert_eq!(status.json()["enabled"], true);
    assert_eq!(
        status.json()["roles"][0]["grants"][0],
        json!({ "prefix": "patient/", "prefix_encoding": "utf8", "perm": "readwrite" })
    );
    let hex = kvs(
        &node.addr,
        &["--hex", "role", "revoke", "doctors", "--prefix", "zz"],
    );
    assert_eq!(hex.code, 2, "bad hex is a usage error: {}", hex.stderr);
    assert!(hex.stderr.contains("not hex"), "{}", hex.stderr);
}
