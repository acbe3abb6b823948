//! The admin HTTP listener of real replicas: `/metrics` is a Prometheus exposition with the
//! documented metrics and plausible values after some writes, `/health` is 200 on every
//! replica of a healthy cluster and 503 with a reason on a replica left alone, `/ready`
//! stays 200 there, `/status` lists the members and `/` is an HTML page naming the leader.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::admin::*;
use common::*;
use tests::cluster::{wait_for, Cluster, ClusterOptions};

/// Writes made before the metrics are read.
const WRITES: usize = 20;

/// Bound on every replica reporting healthy, and on the survivor reporting unhealthy.
const HEALTH_BOUND: Duration = Duration::from_secs(20);

/// Metric names every replica exposes (histograms and counters by their sample names).
const NAMES: &[&str] = &[
    "kvs_server_has_leader",
    "kvs_server_is_leader",
    "kvs_server_leader_changes_seen_total",
    "kvs_server_proposals_committed_total",
    "kvs_server_proposals_applied_total",
    "kvs_server_proposals_failed_total",
    "kvs_server_proposals_pending",
    "kvs_server_commit_slot",
    "kvs_server_applied_slot",
    "kvs_server_ballot_round",
    "kvs_server_elections_started_total",
    "kvs_server_elections_won_total",
    "kvs_disk_wal_fsync_duration_seconds_count",
    "kvs_debugging_snapshot_save_total_duration_seconds_count",
    "kvs_network_snapshot_send_total_duration_seconds_count",
    "kvs_network_snapshot_sent_bytes_total",
    "kvs_network_snapshot_send_success_total",
    "kvs_network_snapshot_send_failures_total",
    "kvs_server_snapshot_installed_total",
    "kvs_server_client_connections",
    "kvs_server_keys",
    "kvs_server_data_bytes",
    "kvs_server_acceptor_failures_total",
    "kvs_server_acceptor_recoveries_total",
];

async fn metrics_of(cluster: &Cluster, addr: SocketAddr) -> BTreeMap<String, f64> {
    let answer = http_get(addr, "/metrics")
        .await
        .or_fail(cluster, "GET /metrics");
    check!(cluster, answer.status == 200, "GET /metrics: {answer:?}");
    parse_prometheus(&answer.body).or_fail(cluster, "parsing /metrics")
}

/// Waits until `/health` of `addr` answers `status`, and returns that answer's body.
async fn wait_health(cluster: &Cluster, id: u64, addr: SocketAddr, status: u16) -> String {
    wait_for(
        &format!("node {id} to answer {status} on /health"),
        HEALTH_BOUND,
        POLL,
        || async move {
            let answer = http_get(addr, "/health").await.ok()?;
            (answer.status == status).then_some(answer.body)
        },
    )
    .await
    .or_fail(cluster, "health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_health_status_and_the_page() {
    let cluster = common::start(ClusterOptions {
        nodes: 3,
        extra_args: stable_admin_args(),
        ..ClusterOptions::default()
    });
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let client = client(&cluster, CHECK_TIMEOUT);
    for i in 0..WRITES {
        client
            .put(format!("key-{i}"), format!("value-{i}"))
            .await
            .or_fail(&cluster, "put");
    }
    wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    let mut admin = BTreeMap::new();
    for &id in &ids {
        admin.insert(id, admin_addr(&cluster, id).await);
    }

    // Every replica is healthy and ready.
    for (&id, &addr) in &admin {
        let body = wait_health(&cluster, id, addr, 200).await;
        check!(
            &cluster,
            body.contains("\"health\":true"),
            "node {id}: {body}"
        );
        let ready = http_get(addr, "/ready")
            .await
            .or_fail(&cluster, "GET /ready");
        check!(&cluster, ready.status == 200, "node {id} /ready: {ready:?}");
    }

    // The metrics: every name, and values that follow from the writes. The keys gauge is
    // published with the status (every 200 ms), so it is waited for.
    for (&id, &addr) in &admin {
        let keys = wait_for(
            &format!("node {id} to publish {WRITES} keys"),
            HEALTH_BOUND,
            POLL,
            || async move {
                let m = http_get(addr, "/metrics").await.ok()?;
                let m = parse_prometheus(&m.body).ok()?;
                (value(&m, "kvs_server_keys") == Some(WRITES as f64)).then_some(())
            },
        )
        .await;
        keys.or_fail(&cluster, "keys gauge");
        let m = metrics_of(&cluster, addr).await;
        for name in NAMES {
            check!(
                &cluster,
                value(&m, name).is_some(),
                "node {id}: no {name} in /metrics: {m:?}"
            );
        }
        let v = |name: &str| value(&m, name).unwrap_or(f64::NAN);
        check!(
            &cluster,
            v("kvs_server_has_leader") == 1.0,
            "node {id}: {m:?}"
        );
        check!(
            &cluster,
            v("kvs_server_is_leader") == f64::from(u8::from(id == leader)),
            "node {id} (leader {leader}): {m:?}"
        );
        let progressed = v("kvs_server_proposals_committed_total") > 0.0
            && v("kvs_server_proposals_applied_total") > 0.0;
        check!(
            &cluster,
            progressed,
            "node {id}: nothing committed or applied: {m:?}"
        );
        let slots = v("kvs_server_commit_slot") >= v("kvs_server_applied_slot")
            && v("kvs_server_applied_slot") > 0.0;
        check!(&cluster, slots, "node {id}: slots {m:?}");
        let synced = v("kvs_disk_wal_fsync_duration_seconds_count") > 0.0;
        check!(&cluster, synced, "node {id}: no fsync measured: {m:?}");
        let changes = v("kvs_server_leader_changes_seen_total") >= 1.0;
        check!(&cluster, changes, "node {id}: {m:?}");
        let peers = ids.iter().filter(|&&p| p != id);
        for p in peers {
            let reachable = format!("kvs_network_peer_reachable{{To=\"{p}\"}}");
            check!(
                &cluster,
                v(&reachable) == 1.0,
                "node {id}: {reachable} in {m:?}"
            );
            let sent_failures = format!("kvs_network_peer_sent_failures_total{{To=\"{p}\"}}");
            let counted = v(&sent_failures) >= 0.0;
            check!(&cluster, counted, "node {id}: {m:?}");
        }
    }
    let m = metrics_of(&cluster, admin[&leader]).await;
    let puts = value(&m, "kvs_server_request_duration_seconds_count{op=\"put\"}");
    let measured = puts >= Some(WRITES as f64);
    check!(
        &cluster,
        measured,
        "leader {leader}: {puts:?} puts measured: {m:?}"
    );
    for p in ids.iter().filter(|&&p| p != leader) {
        let rtt = format!("kvs_network_peer_round_trip_time_seconds_count{{To=\"{p}\"}}");
        let timed = value(&m, &rtt).unwrap_or(0.0) > 0.0;
        check!(
            &cluster,
            timed,
            "leader {leader}: no round trip to {p}: {m:?}"
        );
    }
    let won = sum_of(&m, "kvs_server_elections_won_total") >= 1.0;
    check!(&cluster, won, "leader {leader}: {m:?}");

    // /status lists the members and the leader; the page names the leader.
    for (&id, &addr) in &admin {
        let answer = http_get(addr, "/status")
            .await
            .or_fail(&cluster, "GET /status");
        check!(&cluster, answer.status == 200, "node {id}: {answer:?}");
        let status = json(&answer).or_fail(&cluster, "/status");
        let members: Vec<u64> = status["members"]
            .as_array()
            .map(|ms| ms.iter().filter_map(|m| m["id"].as_u64()).collect())
            .unwrap_or_default();
        check!(&cluster, members == ids, "node {id}: members {status}");
        check!(
            &cluster,
            status["leader"].as_u64() == Some(leader) && status["id"].as_u64() == Some(id),
            "node {id}: {status}"
        );
        check!(
            &cluster,
            status["events"].as_array().is_some_and(|e| !e.is_empty()),
            "node {id}: no events: {status}"
        );
        let page = http_get(addr, "/").await.or_fail(&cluster, "GET /");
        check!(
            &cluster,
            page.status == 200
                && page
                    .content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("text/html")),
            "node {id}: {:?} {:?}",
            page.status,
            page.content_type
        );
        check!(
            &cluster,
            page.body
                .contains(&format!("<b id=\"leader\">{leader}</b>"))
                && page.body.contains("HEALTHY"),
            "node {id}: the page does not name leader {leader}: {}",
            page.body
        );
    }

    // Alone, a replica is unhealthy (and says why) but still ready.
    let survivor = ids.iter().copied().find(|&id| id != leader).unwrap_or(1);
    for &id in ids.iter().filter(|&&id| id != survivor) {
        cluster.kill(id).or_fail(&cluster, "kill");
    }
    let addr = admin[&survivor];
    let body = wait_health(&cluster, survivor, addr, 503).await;
    let verdict: serde_json::Value = serde_json::from_str(&body).or_fail(&cluster, "/health body");
    let reason = verdict["reason"].as_str().unwrap_or_default();
    check!(
        &cluster,
        verdict["health"] == serde_json::Value::Bool(false) && !reason.is_empty(),
        "survivor {survivor}: {body}"
    );
    eprintln!("  survivor {survivor} /health: {body}");
    let ready = http_get(addr, "/ready")
        .await
        .or_fail(&cluster, "GET /ready");
    check!(
        &cluster,
        ready.status == 200,
        "survivor {survivor} is not ready: {ready:?}"
    );
    // Its log says why, at warn: the links lost and the quorum it cannot reach.
    let said = wait_for(
        &format!("survivor {survivor} to log the lost quorum"),
        HEALTH_BOUND,
        POLL,
        || async {
            let log = cluster.log_tail(survivor, 64 * 1024).ok()?;
            let lost = ids
                .iter()
                .filter(|&&id| id != survivor)
                .all(|id| log.contains(&format!("lost the link to peer {id}")));
            (lost && log.contains("no quorum: cannot reach 2 of 3 voters")).then_some(())
        },
    )
    .await;
    said.or_fail(&cluster, "notable events in the log");
    let page = http_get(addr, "/").await.or_fail(&cluster, "GET /");
    check!(
        &cluster,
        !page.body.contains(">HEALTHY<"),
        "survivor {survivor}'s page still says healthy: {}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_that_cannot_be_bound_stops_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let cluster = common::start(ClusterOptions {
        nodes: 1,
        extra_args: vec!["--admin-addr".into(), addr.to_string()],
        ..ClusterOptions::default()
    });
    let exit = wait_for(
        "the replica to exit",
        Duration::from_secs(20),
        POLL,
        || async { cluster.last_exit(1) },
    )
    .await
    .or_fail(&cluster, "a replica whose admin port is taken kept running");
    check!(&cluster, !exit.success(), "it exited with success: {exit}");
    let log = cluster.log_tail(1, 8192).or_fail(&cluster, "log");
    let expected = format!("cannot listen for admin HTTP on {addr}");
    check!(
        &cluster,
        log.contains(&expected),
        "no {expected:?} in its log:\n{log}"
    );
    drop(taken);
}
