//! Scenario 8: the `kvs-client` command-line tool against a real three-node cluster: every
//! subcommand, its output and its exit code.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tests::cluster::{find_server_binary, wait_for, Cluster};

/// Environment variable naming the CLI executable.
const CLIENT_BIN_ENV: &str = "KVS_CLIENT_BIN";
/// The CLI's own time budget (`--timeout-ms`) in most calls.
const CLI_TIMEOUT_MS: u64 = 5_000;
/// How long one CLI run may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(15);

/// `$KVS_CLIENT_BIN`, else `kvs-client` next to the server executable.
fn client_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(CLIENT_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{} (from {CLIENT_BIN_ENV}) does not exist; run `cargo build --bins` first",
            path.display()
        );
        return path;
    }
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    let path = server.with_file_name("kvs-client");
    assert!(
        path.is_file(),
        "kvs-client executable not found at {} (next to the server); run `cargo build \
         --bins` first, or set {CLIENT_BIN_ENV}",
        path.display()
    );
    path
}

/// One finished CLI run.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    took: Duration,
}

impl Run {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// The tool bound to one cluster's endpoints.
struct Cli<'a> {
    bin: PathBuf,
    cluster: &'a Cluster,
}

impl Cli<'_> {
    /// Runs the tool against every endpoint.
    async fn run(&self, args: &[&OsStr]) -> Run {
        self.run_with(
            &self.cluster.client_endpoints().join(","),
            CLI_TIMEOUT_MS,
            args,
        )
        .await
    }

    /// Runs the tool with `--endpoints endpoints --timeout-ms timeout_ms` and `args`.
    async fn run_with(&self, endpoints: &str, timeout_ms: u64, args: &[&OsStr]) -> Run {
        let mut full: Vec<&OsStr> = vec![
            OsStr::new("--endpoints"),
            OsStr::new(endpoints),
            OsStr::new("--timeout-ms"),
        ];
        let timeout = timeout_ms.to_string();
        full.push(OsStr::new(&timeout));
        full.extend_from_slice(args);
        let shown: Vec<String> = full
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let started = Instant::now();
        let child = tokio::process::Command::new(&self.bin)
            .args(&full)
            .env_remove("KVS_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .or_fail(self.cluster, &format!("spawning {}", self.bin.display()));
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
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            took: started.elapsed(),
        }
    }

    /// Runs and checks the exit code and the exact stdout.
    async fn expect(&self, args: &[&str], code: i32, stdout: &str) -> Run {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let run = self.run(&args).await;
        self.check(&run, code, Some(stdout.as_bytes()));
        run
    }

    fn check(&self, run: &Run, code: i32, stdout: Option<&[u8]>) {
        check!(
            self.cluster,
            run.code == Some(code) && stdout.is_none_or(|s| run.stdout == s),
            "kvs-client {:?}: want exit {code} and stdout {:?}; got exit {:?}, stdout {:?}, \
             stderr {:?}",
            run.args,
            stdout.map(String::from_utf8_lossy),
            run.code,
            run.stdout_text(),
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subcommands_and_exit_codes() {
    let started = Instant::now();
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let cli = Cli {
        bin: client_binary(),
        cluster: &cluster,
    };
    let mut runs = 0u32;

    // put / get / overwrite.
    cli.expect(
        &["put", "patient/1042", "{\"arm\":\"B\",\"visit\":3}"],
        0,
        "",
    )
    .await;
    cli.expect(&["get", "patient/1042"], 0, "{\"arm\":\"B\",\"visit\":3}\n")
        .await;
    cli.expect(&["put", "color", "blue"], 0, "").await;
    cli.expect(&["put", "color", "red"], 0, "").await;
    cli.expect(&["get", "color"], 0, "red\n").await;
    runs += 5;

    // get --stale through each single endpoint eventually sees the value.
    for &id in &ids {
        let endpoint = cluster.client_endpoint(id).or_fail(&cluster, "endpoint");
        let last = std::sync::Mutex::new(None);
        let seen = wait_for(
            &format!("`get color --stale` via node {id} to print red"),
            Duration::from_secs(10),
            POLL,
            || {
                let (cli, endpoint, last) = (&cli, &endpoint, &last);
                async move {
                    let run = cli
                        .run_with(
                            endpoint,
                            CLI_TIMEOUT_MS,
                            &[
                                OsStr::new("get"),
                                OsStr::new("color"),
                                OsStr::new("--stale"),
                            ],
                        )
                        .await;
                    let ok = run.code == Some(0) && run.stdout == b"red\n";
                    *last.lock().unwrap() = Some(run);
                    ok.then_some(())
                }
            },
        )
        .await;
        runs += 1;
        if let Err(e) = seen {
            fail(
                &cluster,
                format!("{e:#}; last run: {:?}", last.lock().unwrap()),
            );
        }
    }

    // A missing key: exit 1, nothing on stdout, one line on stderr.
    let run = cli.expect(&["get", "no-such-key"], 1, "").await;
    check!(
        &cluster,
        run.stderr_lines().len() == 1 && run.stderr.contains("not found"),
        "get of a missing key should print one `not found` line on stderr: {:?}",
        run.stderr
    );
    cli.expect(&["get", "no-such-key", "--stale"], 1, "").await;
    runs += 2;

    // del: 0 if it existed, 1 if not; the key is gone afterwards.
    cli.expect(&["del", "color"], 0, "").await;
    let run = cli.expect(&["del", "color"], 1, "").await;
    check!(
        &cluster,
        run.stderr_lines().len() == 1,
        "del of a missing key: one stderr line expected, got {:?}",
        run.stderr
    );
    cli.expect(&["get", "color"], 1, "").await;
    runs += 3;

    // cas, both forms.
    cli.expect(&["cas", "lock/site-7", "--absent", "me"], 0, "")
        .await;
    let run = cli
        .expect(&["cas", "lock/site-7", "--absent", "you"], 1, "")
        .await;
    check!(
        &cluster,
        run.stderr_lines().len() == 1 && run.stderr.contains("mismatch"),
        "cas --absent on a present key should report a mismatch on stderr: {:?}",
        run.stderr
    );
    cli.expect(&["cas", "lock/site-7", "me", "you"], 0, "")
        .await;
    let run = cli
        .expect(&["cas", "lock/site-7", "me", "them"], 1, "")
        .await;
    check!(
        &cluster,
        run.stderr.contains("mismatch") && run.stderr.contains("you"),
        "a CAS mismatch should name the current value: {:?}",
        run.stderr
    );
    cli.expect(&["get", "lock/site-7"], 0, "you\n").await;
    runs += 5;

    // JSON output of each command.
    let json = |args: &[&str]| {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let cases: [JsonCase; 6] = [
        (json(&["put", "j", "1"]), 0, vec![("ok", Json::Bool(true))]),
        (
            json(&["get", "j"]),
            0,
            vec![
                ("found", Json::Bool(true)),
                ("value", Json::Str("1".into())),
                ("value_encoding", Json::Str("utf8".into())),
            ],
        ),
        (
            json(&["get", "missing"]),
            1,
            vec![("found", Json::Bool(false)), ("value", Json::Null)],
        ),
        (
            json(&["cas", "j", "2", "3"]),
            1,
            vec![
                ("swapped", Json::Bool(false)),
                ("current", Json::Str("1".into())),
            ],
        ),
        (
            json(&["cas", "j", "1", "3"]),
            0,
            vec![("swapped", Json::Bool(true))],
        ),
        (json(&["del", "j"]), 0, vec![("existed", Json::Bool(true))]),
    ];
    for (args, code, fields) in cases {
        let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let run = cli.run(&os).await;
        runs += 1;
        cli.check(&run, code, None);
        let parsed = Json::parse(&run.stdout_text())
            .unwrap_or_else(|e| fail(&cluster, format!("{args:?}: bad JSON ({e}): {run:?}")));
        for (field, want) in fields {
            check!(
                &cluster,
                parsed.get(field) == Some(&want),
                "{args:?}: field {field:?} is {:?}, want {want:?}; output {}",
                parsed.get(field),
                run.stdout_text()
            );
        }
    }

    // Values that are not UTF-8: raw bytes in text mode, base64 in JSON.
    let raw: &[u8] = &[0xff, 0xfe, b'a'];
    let run = cli
        .run(&[OsStr::new("put"), OsStr::new("bin"), OsStr::from_bytes(raw)])
        .await;
    cli.check(&run, 0, Some(b""));
    let run = cli.run(&[OsStr::new("get"), OsStr::new("bin")]).await;
    cli.check(&run, 0, Some(&[0xff, 0xfe, b'a', b'\n']));
    let args: Vec<&OsStr> = ["-o", "json", "get", "bin"].map(OsStr::new).to_vec();
    let run = cli.run(&args).await;
    let parsed = Json::parse(&run.stdout_text()).unwrap_or(Json::Null);
    check!(
        &cluster,
        parsed.get("value") == Some(&Json::Str("//5h".into()))
            && parsed.get("value_encoding") == Some(&Json::Str("base64".into())),
        "a binary value should be shown as base64 in JSON: {}",
        run.stdout_text()
    );
    runs += 3;

    // status, as a table and as JSON.
    let run = cli.run(&[OsStr::new("status")]).await;
    cli.check(&run, 0, None);
    let table = run.stdout_text();
    check!(
        &cluster,
        table.starts_with("ID")
            && table.lines().filter(|l| l.contains("yes")).count() == 3
            && table.contains(&format!("leader: node {leader}")),
        "status table should list 3 reachable nodes and name leader {leader}:\n{table}"
    );
    let args: Vec<&OsStr> = ["-o", "json", "status"].map(OsStr::new).to_vec();
    let run = cli.run(&args).await;
    cli.check(&run, 0, None);
    let status = Json::parse(&run.stdout_text())
        .unwrap_or_else(|e| fail(&cluster, format!("status JSON ({e}): {run:?}")));
    let nodes = match status.get("nodes") {
        Some(Json::Arr(nodes)) => nodes.clone(),
        other => fail(
            &cluster,
            format!("status JSON without a nodes array: {other:?}"),
        ),
    };
    let reported_leader = match status.get("leader") {
        Some(Json::Num(n)) => *n as u64,
        other => fail(
            &cluster,
            format!("status JSON: leader should be a node id, got {other:?}"),
        ),
    };
    let mut ids_seen: Vec<u64> = nodes
        .iter()
        .filter_map(|n| match n.get("id") {
            Some(Json::Num(id)) => Some(*id as u64),
            _ => None,
        })
        .collect();
    ids_seen.sort_unstable();
    check!(
        &cluster,
        nodes.len() == 3
            && ids_seen == ids
            && nodes
                .iter()
                .all(|n| n.get("reachable") == Some(&Json::Bool(true)))
            && reported_leader == leader,
        "status JSON should show 3 reachable nodes {ids:?} and leader {leader}: {}",
        run.stdout_text()
    );
    runs += 2;

    // endpoint health: a linearizable read through the leader from each endpoint.
    let run = cli
        .run(&[OsStr::new("endpoint"), OsStr::new("health")])
        .await;
    cli.check(&run, 0, None);
    let text = run.stdout_text();
    let endpoints = cluster.client_endpoints();
    check!(
        &cluster,
        text.lines().count() == 3
            && endpoints.iter().all(|e| text.contains(&format!(
                "{e} is healthy: successfully committed proposal: took = "
            ))),
        "endpoint health should call every endpoint healthy:\n{text}"
    );
    // endpoint status: a header and one row per endpoint, each naming the leader.
    let run = cli
        .run(&[OsStr::new("endpoint"), OsStr::new("status")])
        .await;
    cli.check(&run, 0, None);
    let text = run.stdout_text();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    check!(
        &cluster,
        text.starts_with("ENDPOINT")
            && rows.len() == 3
            && rows
                .iter()
                .all(|r| r.get(2) == Some(&leader.to_string().as_str())),
        "endpoint status should have one row per endpoint naming leader {leader}:\n{text}"
    );
    runs += 2;

    // Usage errors exit 2.
    let run = cli
        .run(&[OsStr::new("cas"), OsStr::new("k"), OsStr::new("v")])
        .await;
    cli.check(&run, 2, Some(b""));
    let run = cli
        .run_with(
            "not-an-endpoint",
            CLI_TIMEOUT_MS,
            &[OsStr::new("get"), OsStr::new("k")],
        )
        .await;
    cli.check(&run, 2, Some(b""));
    runs += 2;

    eprintln!(
        "SUMMARY cli: {runs} kvs-client runs against a real 3-node cluster, all with the \
         expected exit code and output; elapsed={:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_with_every_node_down_fails_with_exit_3_or_4() {
    let started = Instant::now();
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    wait_leader(&cluster, &ids).await;
    let cli = Cli {
        bin: client_binary(),
        cluster: &cluster,
    };
    cli.expect(&["put", "k", "before"], 0, "").await;
    cluster.kill_all();

    let timeout_ms = 2_000;
    let endpoints = cluster.client_endpoints().join(",");
    let mut figures = Vec::new();
    for (args, allowed) in [
        (["put", "k", "after"], [3, 4]),
        (["get", "k", "--stale"], [3, 3]),
    ] {
        let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let run = cli.run_with(&endpoints, timeout_ms, &os).await;
        let lines = run.stderr_lines();
        check!(
            &cluster,
            run.code.is_some_and(|c| allowed.contains(&c))
                && run.took < Duration::from_millis(timeout_ms) + Duration::from_secs(5)
                && run.stdout.is_empty()
                && lines.len() == 1
                && lines[0].starts_with("error: "),
            "with every node down, `kvs-client {args:?}` should exit with {allowed:?} within \
             the {timeout_ms} ms budget and print one `error:` line; got exit {:?} after \
             {:?}, stdout {:?}, stderr {:?}",
            run.code,
            run.took,
            run.stdout_text(),
            run.stderr
        );
        figures.push(format!(
            "{} -> exit {:?} in {:.1?} ({})",
            args.join(" "),
            run.code,
            run.took,
            lines[0]
        ));
    }
    let run = cli
        .run_with(&endpoints, timeout_ms, &[OsStr::new("status")])
        .await;
    cli.check(&run, 3, None);

    // Nothing listens at any endpoint (ports bound, then closed): the command fails at
    // once, far within its 20 s budget, naming every endpoint and its error.
    let closed: Vec<String> = (0..3)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").or_fail(&cluster, "bind");
            let addr = listener.local_addr().or_fail(&cluster, "local addr");
            addr.to_string()
        })
        .collect();
    let closed_list = closed.join(",");
    let budget_ms = 20_000;
    let run = cli
        .run_with(
            &closed_list,
            budget_ms,
            &[OsStr::new("get"), OsStr::new("k")],
        )
        .await;
    let line = run.stderr_lines().first().map(|l| l.to_string());
    let line = line.unwrap_or_default();
    let every_endpoint_named = closed
        .iter()
        .all(|e| line.contains(&format!("{e}: Connection refused")));
    check!(
        &cluster,
        run.code == Some(3)
            && run.took < Duration::from_secs(5)
            && line.starts_with(&format!("error: no replica reachable at {closed_list}: "))
            && every_endpoint_named,
        "with nothing listening, `get` should exit 3 well within its {budget_ms} ms budget \
         naming every endpoint; got exit {:?} after {:?}: {:?}",
        run.code,
        run.took,
        run.stderr
    );
    eprintln!(
        "SUMMARY cli all-down: {}; status -> exit 3; get with a {budget_ms} ms budget and \
         every port closed -> exit 3 in {:.1?}; elapsed={:.1?}",
        figures.join("; "),
        run.took,
        started.elapsed()
    );
}

/// A `-o json` run: arguments, exit code, and fields the output must have.
type JsonCase = (Vec<String>, i32, Vec<(&'static str, Json)>);

/// Just enough JSON to check the tool's output.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            chars: text.trim().chars().collect(),
            at: 0,
        };
        let value = p.value()?;
        if p.at != p.chars.len() {
            return Err(format!("trailing characters at {}", p.at));
        }
        Ok(value)
    }

    fn get(&self, field: &str) -> Option<&Json> {
        match self {
            Json::Obj(map) => map.get(field),
            _ => None,
        }
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&mut self) -> Option<char> {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, want: char) -> Result<(), String> {
        match self.peek() {
            Some(c) if c == want => {
                self.at += 1;
                Ok(())
            }
            other => Err(format!("expected {want:?} at {}, found {other:?}", self.at)),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        let end = self.at + word.len();
        if end <= self.chars.len() && self.chars[self.at..end].iter().copied().eq(word.chars()) {
            self.at = end;
            Ok(value)
        } else {
            Err(format!("bad literal at {}", self.at))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.peek() {
            Some('n') => self.literal("null", Json::Null),
            Some('t') => self.literal("true", Json::Bool(true)),
            Some('f') => self.literal("false", Json::Bool(false)),
            Some('"') => self.string().map(Json::Str),
            Some('[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.peek() == Some(']') {
                    self.at += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.peek() == Some(',') {
                        self.at += 1;
                    } else {
                        self.eat(']')?;
                        return Ok(Json::Arr(items));
                    }
                }
            }
            Some('{') => {
                self.at += 1;
                let mut map = BTreeMap::new();
                if self.peek() == Some('}') {
                    self.at += 1;
                    return Ok(Json::Obj(map));
                }
                loop {
                    self.peek();
                    let key = self.string()?;
                    self.eat(':')?;
                    map.insert(key, self.value()?);
                    if self.peek() == Some(',') {
                        self.at += 1;
                    } else {
                        self.eat('}')?;
                        return Ok(Json::Obj(map));
                    }
                }
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_digit() || "+-.eE".contains(*c))
                {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                text.parse()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number {text:?}: {e}"))
            }
            other => Err(format!("unexpected {other:?} at {}", self.at)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat('"')?;
        let mut out = String::new();
        loop {
            let c = *self.chars.get(self.at).ok_or("unterminated string")?;
            self.at += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = *self.chars.get(self.at).ok_or("unterminated escape")?;
                    self.at += 1;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'u' => {
                            let hex: String = self
                                .chars
                                .get(self.at..self.at + 4)
                                .ok_or("short \\u")?
                                .iter()
                                .collect();
                            self.at += 4;
                            let code = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
    }
}

#[test]
fn json_parser_reads_the_tools_shapes() {
    let v = Json::parse(r#"{"leader":2,"nodes":[{"id":1,"ok":true,"x":null,"s":"a\"\u0041"}]}"#)
        .unwrap();
    assert_eq!(v.get("leader"), Some(&Json::Num(2.0)));
    let Some(Json::Arr(nodes)) = v.get("nodes") else {
        panic!("{v:?}")
    };
    assert_eq!(nodes[0].get("s"), Some(&Json::Str("a\"A".into())));
    assert_eq!(nodes[0].get("x"), Some(&Json::Null));
    assert!(Json::parse("{\"a\":").is_err());
    assert!(Json::parse("[1,2] x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_with_one_of_three_replicas_up_says_no_leader_with_a_quorum() {
    let started = Instant::now();
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let cli = Cli {
        bin: client_binary(),
        cluster: &cluster,
    };
    cli.expect(&["put", "k", "before"], 0, "").await;
    let survivor = ids
        .iter()
        .copied()
        .find(|&id| id != leader)
        .unwrap_or(leader);
    for &id in ids.iter().filter(|&&id| id != survivor) {
        cluster.kill(id).or_fail(&cluster, "kill -9");
    }
    let endpoints = cluster.client_endpoints().join(",");
    let survivor_endpoint = cluster
        .client_endpoint(survivor)
        .or_fail(&cluster, "endpoint");

    // `status` exits 3 and says why; the survivor knows no leader once its election
    // timeout has passed.
    let last = std::sync::Mutex::new(None);
    wait_for(
        "`status` to exit 3 with no leader with a quorum",
        Duration::from_secs(10),
        POLL,
        || {
            let (cli, endpoints, last) = (&cli, &endpoints, &last);
            async move {
                let run = cli
                    .run_with(endpoints, CLI_TIMEOUT_MS, &[OsStr::new("status")])
                    .await;
                let said = run.stderr.contains("error: no leader with a quorum: ")
                    && run.stderr.contains("knows no leader");
                let done = run.code == Some(3) && said;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
                done.then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner());
        fail(&cluster, format!("{e:#}; last run: {last:?}"))
    });

    // A write: exit 3, no leader with a quorum, with what the survivor said.
    let timeout_ms = 3_000;
    let os: Vec<&OsStr> = ["put", "k", "after"].iter().map(OsStr::new).collect();
    let run = cli.run_with(&endpoints, timeout_ms, &os).await;
    let lines = run.stderr_lines();
    let first = lines.first().copied().unwrap_or_default();
    check!(
        &cluster,
        run.code == Some(3)
            && lines.len() == 1
            && first.starts_with(&format!("error: no leader with a quorum at {endpoints} "))
            && first.contains(&format!("{survivor_endpoint}: unavailable: "))
            && run.took < Duration::from_millis(timeout_ms) + Duration::from_secs(5),
        "with one replica of three up, `put` should exit 3 saying no leader with a quorum \
         and what the survivor said; got exit {:?} after {:?}: {:?}",
        run.code,
        run.took,
        run.stderr
    );

    // endpoint health: the survivor is unhealthy (no leader), the others unreachable.
    let run = cli
        .run_with(
            &endpoints,
            CLI_TIMEOUT_MS,
            &[OsStr::new("endpoint"), OsStr::new("health")],
        )
        .await;
    let text = run.stdout_text();
    check!(
        &cluster,
        run.code == Some(3)
            && text.lines().count() == 3
            && text.lines().all(|l| l.contains(" is unhealthy: "))
            && text.contains(&format!("{survivor_endpoint} is unhealthy: no leader")),
        "endpoint health with one replica of three should call all unhealthy: exit {:?}\n{text}",
        run.code
    );
    eprintln!(
        "SUMMARY cli one-of-three: status, put and endpoint health exit 3 ({first}); \
         elapsed={:.1?}",
        started.elapsed()
    );
}
