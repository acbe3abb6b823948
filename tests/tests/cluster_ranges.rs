//! Range reads, range deletes and multi-key transactions against a real three-node
//! cluster: through the client library (paging, limits, exactly-once, atomicity) and
//! through the command-line tool (flags, output, exit codes, byte-exact values).

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kvs_client::{
    Client, Compare, Entry, Error, KeyRange, RangeOptions, RetryHandle, Txn, TxnOp, WriteOutcome,
};
use tests::cluster::{find_server_binary, Cluster};
use tokio::io::AsyncWriteExt;
use wire::{Op, Session};

/// How long one CLI run may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(15);
/// The most pages a range read in these tests may take (every loop is bounded).
const PAGES_MAX: usize = 1_000;

/// Every entry of a range, page by page; also how many pages it took.
async fn read_all(
    cluster: &Cluster,
    client: &Client,
    range: KeyRange,
    options: RangeOptions,
) -> (Vec<Entry>, usize) {
    let mut pager = client.range(range, options);
    let mut entries = Vec::new();
    for pages in 0..PAGES_MAX {
        match pager.next_page().await.or_fail(cluster, "a range page") {
            Some(page) => {
                check!(cluster, !page.is_empty(), "an empty page");
                entries.extend(page);
            }
            None => return (entries, pages),
        }
    }
    fail(cluster, format!("a range took more than {PAGES_MAX} pages"))
}

fn keys(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.key).into_owned())
        .collect()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_page_and_filter_and_delete_ranges_apply_once() {
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    wait_leader(&cluster, &ids).await;
    let client = client(&cluster, CHECK_TIMEOUT);
    for i in 0..100 {
        client
            .put(format!("r/{i:04}"), format!("v{i}"))
            .await
            .or_fail(&cluster, "put");
    }
    for key in ["q/x", "s/y"] {
        client.put(key, "other").await.or_fail(&cluster, "put");
    }
    let all = RangeOptions::default();

    // A prefix: every key once, in order, with its value.
    let (entries, _) = read_all(&cluster, &client, KeyRange::prefix("r/"), all).await;
    let want: Vec<String> = (0..100).map(|i| format!("r/{i:04}")).collect();
    check!(
        &cluster,
        keys(&entries) == want,
        "prefix r/: {:?}",
        keys(&entries)
    );
    check!(
        &cluster,
        entries[42].value.as_deref() == Some(&b"v42"[..]),
        "value of r/0042: {:?}",
        entries[42].value
    );

    // [from, to), a limit, keys only.
    let (entries, _) = read_all(
        &cluster,
        &client,
        KeyRange::between("r/0010", "r/0020"),
        all,
    )
    .await;
    check!(
        &cluster,
        keys(&entries) == want[10..20],
        "between: {:?}",
        keys(&entries)
    );
    let limited = RangeOptions {
        limit: Some(5),
        keys_only: true,
        ..all
    };
    let (entries, _) = read_all(&cluster, &client, KeyRange::prefix("r/"), limited).await;
    check!(
        &cluster,
        keys(&entries) == want[..5],
        "limit 5: {:?}",
        keys(&entries)
    );
    check!(
        &cluster,
        entries.iter().all(|e| e.value.is_none()),
        "keys only carried values"
    );

    // Counts, an empty range, a limit of 0.
    let count = client
        .count(KeyRange::prefix("r/"), None, false)
        .await
        .or_fail(&cluster, "count");
    check!(&cluster, count == 100, "count r/: {count}");
    let count = client
        .count(KeyRange::prefix(""), None, false)
        .await
        .or_fail(&cluster, "count");
    check!(&cluster, count == 102, "count of every key: {count}");
    let count = client
        .count(KeyRange::prefix("r/"), Some(7), false)
        .await
        .or_fail(&cluster, "count");
    check!(&cluster, count == 7, "count with limit 7: {count}");
    let (entries, pages) = read_all(&cluster, &client, KeyRange::between("r/5", "r/1"), all).await;
    check!(
        &cluster,
        entries.is_empty() && pages == 0,
        "an inverted range returned {entries:?}"
    );
    let zero = RangeOptions {
        limit: Some(0),
        ..all
    };
    let refused = client.range(KeyRange::prefix("r/"), zero).next_page().await;
    check!(
        &cluster,
        matches!(
            refused,
            Err(Error::Rejected(wire::ErrorReply::Invalid { .. }))
        ),
        "a limit of 0: {refused:?}"
    );

    // A stale range from a follower sees the keys in time.
    let stale = RangeOptions { stale: true, ..all };
    let mut seen = 0;
    for _ in 0..200 {
        let (entries, _) = read_all(&cluster, &client, KeyRange::prefix("r/"), stale).await;
        seen = entries.len();
        if seen == 100 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    check!(&cluster, seen == 100, "a stale range saw {seen} keys");

    // Larger than a page: 40 values of 100 KiB take several pages, each key once in order.
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    for i in 0..40 {
        client
            .put(format!("big/{i:02}"), big.clone())
            .await
            .or_fail(&cluster, "put big");
    }
    let (entries, pages) = read_all(&cluster, &client, KeyRange::prefix("big/"), all).await;
    let want_big: Vec<String> = (0..40).map(|i| format!("big/{i:02}")).collect();
    check!(
        &cluster,
        keys(&entries) == want_big,
        "paged keys: {:?}",
        keys(&entries)
    );
    check!(&cluster, pages >= 4, "4 MB of values came in {pages} pages");
    check!(
        &cluster,
        entries.iter().all(|e| e.value.as_ref() == Some(&big)),
        "a paged value differs"
    );

    // Delete a range as one write, exactly once: a fresh client's first write is seq 1.
    let deleter = common::client(&cluster, CHECK_TIMEOUT);
    let removed = deleter
        .delete_range(KeyRange::prefix("r/"))
        .await
        .or_fail(&cluster, "delete range");
    check!(&cluster, removed == 100, "delete range removed {removed}");
    client
        .put("r/late", "after")
        .await
        .or_fail(&cluster, "put after");
    let Some(client_id) = deleter.client_id() else {
        fail(&cluster, "the deleter has no session");
    };
    let op = Op::DeleteRange {
        from: b("r/"),
        to: wire::prefix_end(b"r/"),
    };
    let handle = RetryHandle::new(Session { client_id, seq: 1 }, op).or_fail(&cluster, "handle");
    let again = deleter
        .retry(&handle)
        .await
        .or_fail(&cluster, "retry of the delete range");
    check!(
        &cluster,
        again == WriteOutcome::DeletedRange { count: 100 },
        "the retried delete range answered {again:?}"
    );
    let late = client.get("r/late").await.or_fail(&cluster, "get r/late");
    check!(
        &cluster,
        late == Some(b("after")),
        "the retry was applied again: r/late is {late:?}"
    );
    let count = client
        .count(KeyRange::prefix(""), None, false)
        .await
        .or_fail(&cluster, "count");
    check!(&cluster, count == 2 + 1 + 40, "keys left: {count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_apply_one_branch_atomically_and_once() {
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    wait_leader(&cluster, &ids).await;
    let client = client(&cluster, CHECK_TIMEOUT);
    client.put("acct/a", "10").await.or_fail(&cluster, "put");
    client.put("lock", "held").await.or_fail(&cluster, "put");
    let txn = || Txn {
        compares: vec![
            Compare::Value {
                key: b("acct/a"),
                value: b("10"),
            },
            Compare::Exists { key: b("lock") },
            Compare::Absent { key: b("acct/b") },
        ],
        success: vec![
            TxnOp::Put {
                key: b("acct/a"),
                value: b("0"),
            },
            TxnOp::Put {
                key: b("acct/b"),
                value: b("10"),
            },
            TxnOp::Delete { key: b("lock") },
        ],
        failure: vec![TxnOp::Put {
            key: b("failures"),
            value: b("1"),
        }],
    };
    let first = client.txn(txn()).await.or_fail(&cluster, "txn");
    check!(&cluster, first, "the first txn failed");
    let second = client.txn(txn()).await.or_fail(&cluster, "txn again");
    check!(&cluster, !second, "the second txn succeeded");
    let (entries, _) = read_all(
        &cluster,
        &client,
        KeyRange::prefix(""),
        RangeOptions::default(),
    )
    .await;
    let got: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            let value = e.value.as_deref().unwrap_or_default();
            (
                String::from_utf8_lossy(&e.key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [("acct/a", "0"), ("acct/b", "10"), ("failures", "1")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    check!(&cluster, got == want, "after the transactions: {got:?}");

    // A retried transaction is applied once: it answers its first result.
    let Some(client_id) = client.client_id() else {
        fail(&cluster, "no session");
    };
    // Writes so far: two puts, two txns; the first txn was seq 3.
    let handle =
        RetryHandle::new(Session { client_id, seq: 3 }, Op::Txn(txn())).or_fail(&cluster, "handle");
    let again = client.retry(&handle).await.or_fail(&cluster, "retry");
    check!(
        &cluster,
        again == WriteOutcome::Txn { succeeded: true },
        "the retried txn: {again:?}"
    );
    let failures = client.get("failures").await.or_fail(&cluster, "get");
    check!(&cluster, failures == Some(b("1")), "failures: {failures:?}");

    // Too many operations: refused before anything is sent.
    let huge = Txn {
        success: (0..=wire::TXN_OPS_MAX)
            .map(|i| TxnOp::Delete {
                key: b(&format!("k{i}")),
            })
            .collect(),
        ..Txn::default()
    };
    let refused = client.txn(huge).await;
    check!(
        &cluster,
        matches!(refused, Err(Error::Rejected(_))),
        "a huge txn: {refused:?}"
    );

    // Compare-and-swap still works beside transactions.
    let cas = client
        .compare_and_swap("acct/a", Some(b("0")), "5")
        .await
        .or_fail(&cluster, "cas");
    check!(
        &cluster,
        cas == kvs_client::CasOutcome::Swapped,
        "cas: {cas:?}"
    );
}

/// `kvs-client` next to the server executable.
fn client_binary() -> PathBuf {
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    server.with_file_name("kvs-client")
}

/// One finished CLI run: exit code, stdout, stderr.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the tool against the cluster with `args`, feeding `stdin`.
async fn cli(cluster: &Cluster, args: &[&str], stdin: &[u8]) -> Run {
    let endpoints = cluster.client_endpoints().join(",");
    let mut child = tokio::process::Command::new(client_binary())
        .args(["--endpoints", &endpoints, "--timeout-ms", "5000"])
        .args(args)
        .env_remove("KVS_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .or_fail(cluster, "spawning kvs-client");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .await
            .or_fail(cluster, "writing stdin");
    }
    let output = match tokio::time::timeout(RUN_BOUND, child.wait_with_output()).await {
        Ok(output) => output.or_fail(cluster, "waiting for kvs-client"),
        Err(_) => fail(
            cluster,
            format!("kvs-client {args:?} ran longer than {RUN_BOUND:?}"),
        ),
    };
    Run {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs and checks the exit code and the exact stdout.
async fn expect(cluster: &Cluster, args: &[&str], stdin: &[u8], code: i32, stdout: &[u8]) -> Run {
    let run = cli(cluster, args, stdin).await;
    check!(
        cluster,
        run.code == Some(code) && run.stdout == stdout,
        "kvs-client {args:?}: want exit {code} and stdout {:?}; got exit {:?}, stdout {:?}, \
         stderr {:?}",
        String::from_utf8_lossy(stdout),
        run.code,
        String::from_utf8_lossy(&run.stdout),
        run.stderr
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_and_deletes_ranges_runs_transactions_and_carries_raw_bytes() {
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    wait_leader(&cluster, &ids).await;
    let c = &cluster;
    for (k, v) in [
        ("app/a", "1"),
        ("app/b", "2"),
        ("app/c", "3"),
        ("apq", "x"),
        ("zz", "y"),
    ] {
        expect(c, &["put", k, v], b"", 0, b"").await;
    }

    // Ranges.
    expect(
        c,
        &["get", "--prefix", "app/"],
        b"",
        0,
        b"app/a\n1\napp/b\n2\napp/c\n3\n",
    )
    .await;
    expect(
        c,
        &["get", "app/b", "--to", "zz"],
        b"",
        0,
        b"app/b\n2\napp/c\n3\napq\nx\n",
    )
    .await;
    expect(
        c,
        &["get", "--prefix", "app/", "--keys-only"],
        b"",
        0,
        b"app/a\napp/b\napp/c\n",
    )
    .await;
    expect(
        c,
        &["get", "--prefix", "app/", "--limit", "2", "--keys-only"],
        b"",
        0,
        b"app/a\napp/b\n",
    )
    .await;
    expect(
        c,
        &["get", "--prefix", "app/", "--count-only"],
        b"",
        0,
        b"3\n",
    )
    .await;
    expect(
        c,
        &["get", "--prefix", "app/", "--count-only", "--stale"],
        b"",
        0,
        b"3\n",
    )
    .await;
    expect(c, &["get", "--prefix", "nothing/"], b"", 0, b"").await;
    expect(c, &["get", "zz", "--to", "app/"], b"", 0, b"").await;
    let zero = expect(c, &["get", "--prefix", "app/", "--limit", "0"], b"", 2, b"").await;
    check!(
        c,
        zero.stderr.contains("at least 1"),
        "limit 0: {:?}",
        zero.stderr
    );
    expect(
        c,
        &["-o", "json", "get", "--prefix", "app/", "--limit", "1"],
        b"",
        0,
        b"{\"kvs\":[{\"key\":\"app/a\",\"key_encoding\":\"utf8\",\"value\":\"1\",\"value_encoding\":\"utf8\"}],\"count\":1}\n",
    )
    .await;
    expect(
        c,
        &["-o", "table", "get", "--prefix", "app/", "--limit", "2"],
        b"",
        0,
        b"KEY    VALUE\napp/a  \"1\"\napp/b  \"2\"\n",
    )
    .await;

    // Delete a prefix: prints the count.
    expect(c, &["del", "--prefix", "app/"], b"", 0, b"3\n").await;
    expect(
        c,
        &["get", "--prefix", "ap", "--keys-only"],
        b"",
        0,
        b"apq\n",
    )
    .await;
    expect(
        c,
        &["-o", "json", "del", "--prefix", "app/"],
        b"",
        0,
        b"{\"deleted\":0}\n",
    )
    .await;

    // Transactions from stdin and from a file.
    let txn = b"value(\"apq\") = \"x\"\nabsent(\"new\")\n\nput new \"made by txn\"\ndel zz\n\nput failed yes\n";
    expect(c, &["txn"], txn, 0, b"SUCCESS\n").await;
    expect(c, &["get", "new"], b"", 0, b"made by txn\n").await;
    expect(c, &["get", "zz"], b"", 1, b"").await;
    let dir = tempfile::tempdir().or_fail(c, "a temporary directory");
    let file = dir.path().join("txn.txt");
    std::fs::write(&file, txn).or_fail(c, "writing the txn file");
    let path = file.to_string_lossy().into_owned();
    expect(c, &["txn", "--file", &path], b"", 1, b"FAILURE\n").await;
    expect(c, &["get", "failed"], b"", 0, b"yes\n").await;
    std::fs::write(&file, b"exists(\"a\")\n\nput a\n").or_fail(c, "writing a bad txn file");
    let bad = expect(c, &["txn", "--file", &path], b"", 2, b"").await;
    check!(
        c,
        bad.stderr.contains("line 3"),
        "a malformed txn file: {:?}",
        bad.stderr
    );

    // Values from a file and from stdin, byte-exact with get --raw, non-UTF-8 included.
    let bytes: Vec<u8> = (0..=255u8).chain([b'\n', 0, 0xff]).collect();
    let value_file = dir.path().join("value.bin");
    std::fs::write(&value_file, &bytes).or_fail(c, "writing the value file");
    let value_path = value_file.to_string_lossy().into_owned();
    expect(c, &["put", "blob", "--from-file", &value_path], b"", 0, b"").await;
    expect(c, &["get", "blob", "--raw"], b"", 0, &bytes).await;
    expect(c, &["put", "piped", "-"], &bytes, 0, b"").await;
    expect(c, &["get", "piped", "--raw"], b"", 0, &bytes).await;
    // A key that is not UTF-8, given in hex.
    expect(c, &["--hex", "put", "00ff6b", "-"], b"\xfe\x00", 0, b"").await;
    expect(c, &["--hex", "get", "00ff6b", "--raw"], b"", 0, b"\xfe\x00").await;
    expect(
        c,
        &["--hex", "get", "--prefix", "00ff", "--keys-only"],
        b"",
        0,
        b"00ff6b\n",
    )
    .await;
    expect(c, &["--hex", "del", "--prefix", "00"], b"", 0, b"1\n").await;
    let odd = expect(c, &["--hex", "get", "0"], b"", 2, b"").await;
    check!(
        c,
        odd.stderr.contains("not hex"),
        "an odd hex key: {:?}",
        odd.stderr
    );
    // The benchmark writes under its prefix and removes it all with one range delete.
    let bench = cli(
        c,
        &[
            "bench",
            "--clients",
            "2",
            "--conns",
            "1",
            "--ops",
            "20",
            "--keys",
            "10",
        ]
        .into_iter()
        .chain(["--prefix", "bench/", "--cleanup"])
        .collect::<Vec<_>>(),
        b"",
    )
    .await;
    let removed = bench
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("cleanup: removed "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    check!(
        c,
        bench.code == Some(0) && removed.is_some_and(|n| n > 0),
        "bench --cleanup: exit {:?}, stderr {:?}",
        bench.code,
        bench.stderr
    );
    expect(
        c,
        &["get", "--prefix", "bench/", "--count-only"],
        b"",
        0,
        b"0\n",
    )
    .await;

    // Larger than the value limit: a clear error, exit 2.
    let too_big = dir.path().join("big.bin");
    std::fs::write(&too_big, vec![0u8; wire::VALUE_BYTES_MAX + 1]).or_fail(c, "writing");
    let big_path = too_big.to_string_lossy().into_owned();
    let refused = expect(c, &["put", "big", "--from-file", &big_path], b"", 2, b"").await;
    check!(
        c,
        refused.stderr.contains("value limit"),
        "too big: {:?}",
        refused.stderr
    );
}
