//! `kvs-server dev`: a whole cluster on loopback in one process, for trying the store out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::clients::ClientLimits;
use crate::config::{check_fail_prob, parse_range, DevArgs, SNAPSHOT_EVERY_DEFAULT};
use crate::identity::{self, InitialClusterState};
use crate::node::{self, NodeConfig};

/// The node configurations of a dev cluster.
pub fn configs(args: &DevArgs) -> Result<Vec<NodeConfig>, String> {
    if !(1..=paxos_core::MEMBERS_MAX as u64).contains(&args.nodes) {
        return Err(format!(
            "--nodes must be between 1 and {}, got {}",
            paxos_core::MEMBERS_MAX,
            args.nodes
        ));
    }
    check_fail_prob(args.acceptor_fail_prob)?;
    let down = parse_range(&args.acceptor_down_ms, "--acceptor-down-ms")?;
    let port = |base: u16, i: u64| -> Result<u16, String> {
        base.checked_add((i - 1) as u16)
            .ok_or_else(|| format!("port {base} + {} is out of range", i - 1))
    };
    let state = initial_state(&args.data_dir, args.nodes)?;
    let mut peers = BTreeMap::new();
    let mut clients = BTreeMap::new();
    for i in 1..=args.nodes {
        peers.insert(i, format!("127.0.0.1:{}", port(args.peer_port, i)?));
        clients.insert(i, format!("127.0.0.1:{}", port(args.client_port, i)?));
    }
    Ok((1..=args.nodes)
        .map(|i| NodeConfig {
            id: i,
            peers: peers.clone(),
            peer_listen: None,
            client_addr: clients[&i].clone(),
            client_addrs: clients.clone(),
            data_dir: args.data_dir.join(format!("node-{i}")),
            cluster_id: "kvs".into(),
            initial_cluster_state: Some(state),
            initial_cluster_token: None,
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            sessions_max: crate::state_machine::SESSIONS_MAX,
            acceptor_fail_prob: args.acceptor_fail_prob,
            acceptor_fail_mode: args.acceptor_fail_mode,
            acceptor_down_ms: down,
            heartbeat_interval_ms: 100,
            election_timeout_ms: (1000, 2000),
            request_timeout: Duration::from_secs(10),
            limits: ClientLimits::default(),
            wal_segment_bytes_max: 64 * 1024 * 1024,
            unsafe_local_reads: false,
        })
        .collect())
}

/// `new` only if no replica's data dir holds anything yet: the dev command sees every
/// member's directory, so it can tell a first start from a restart. A replica whose
/// directory alone was wiped then refuses to start (and says why) instead of voting.
fn initial_state(data_dir: &Path, nodes: u64) -> Result<InitialClusterState, String> {
    for i in 1..=nodes {
        let dir = data_dir.join(format!("node-{i}"));
        let used = dir.join(identity::FILE_NAME).exists()
            || identity::has_data(&dir).map_err(|e| e.to_string())?;
        if used {
            return Ok(InitialClusterState::Existing);
        }
    }
    Ok(InitialClusterState::New)
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> Result<(), String> {
    let configs = configs(&args)?;
    let endpoints: Vec<String> = configs.iter().map(|c| c.client_addr.clone()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for cfg in configs {
        let rx = stop_rx.clone();
        let id = cfg.id;
        tasks.push(tokio::spawn(async move {
            let result = node::run(cfg, rx).await;
            if let Err(e) = &result {
                // Said at once, not only at Ctrl-C: the others keep running without it.
                tracing::error!(id, error = %e, "replica stopped");
            }
            (id, result)
        }));
    }
    let list = endpoints.join(",");
    println!(
        "kvs dev cluster: {} replicas, data in {}",
        args.nodes,
        args.data_dir.display()
    );
    for (i, e) in endpoints.iter().enumerate() {
        println!("  replica {}: clients at {e}", i + 1);
    }
    if args.acceptor_fail_prob > 0.0 {
        println!(
            "  random acceptor failures: each replica fails with probability {} per second \
             ({} mode), down for {} ms",
            args.acceptor_fail_prob, args.acceptor_fail_mode, args.acceptor_down_ms
        );
    }
    println!();
    println!("Try it (kvs-client uses these endpoints by default):");
    println!("  kvs-client put greeting hello");
    println!("  kvs-client get greeting");
    println!("  kvs-client status");
    println!("  KVS_ENDPOINTS={list} kvs-client get greeting --stale");
    println!();
    println!(
        "Ctrl-C stops the cluster; its data stays in {} for the next start.",
        args.data_dir.display()
    );
    crate::wait_for_signal().await;
    println!("stopping...");
    let _ = stop_tx.send(true);
    let mut failed = Vec::new();
    for t in tasks {
        match t.await {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => failed.push(format!("replica {id}: {e}")),
            Err(e) => failed.push(format!("a replica task failed: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
