//! `kvs-server dev`: a whole cluster on loopback in one process, for trying the store out.

use std::path::Path;

use paxos_core::NodeId;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, DevArgs, NodeConfig, ReplicaArgs};
use crate::error::ServerError;
use crate::identity::{self, InitialClusterState};
use crate::node;

/// The node configurations of a dev cluster: each replica's settings are resolved like
/// those of `kvs-server` itself, so they take the same defaults.
pub fn configs(args: &DevArgs) -> Result<Vec<NodeConfig>, ServerError> {
    let max = paxos_core::MEMBERS_MAX as u64;
    if !(1..=max).contains(&args.nodes) {
        return Err(ConfigError::OutOfRange {
            flag: "--nodes",
            min: 1,
            max,
            got: args.nodes,
        }
        .into());
    }
    let port = |base: u16, i: u64| -> Result<u16, ConfigError> {
        u16::try_from(i - 1)
            .ok()
            .and_then(|offset| base.checked_add(offset))
            .ok_or(ConfigError::PortOverflow {
                base,
                offset: i - 1,
            })
    };
    let state = initial_state(&args.data_dir, args.nodes)?;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for i in 1..=args.nodes {
        peers.push(format!("{i}=127.0.0.1:{}", port(args.peer_port, i)?));
        clients.push(format!("{i}=127.0.0.1:{}", port(args.client_port, i)?));
    }
    let replica = |i: NodeId| ReplicaArgs {
        id: Some(i),
        peers: Some(peers.join(",")),
        client_addr: Some(format!("127.0.0.1:{}", args.client_port + (i - 1) as u16)),
        client_addrs: Some(clients.join(",")),
        data_dir: Some(args.data_dir.join(format!("node-{i}"))),
        initial_cluster_state: Some(state),
        acceptor_fail_prob: Some(args.acceptor_fail_prob),
        acceptor_fail_mode: Some(args.acceptor_fail_mode),
        acceptor_down_ms: Some(args.acceptor_down_ms.clone()),
        ..ReplicaArgs::default()
    };
    let configs = (1..=args.nodes)
        .map(|i| replica(i).resolve())
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(configs)
}

/// `new` only if no replica's data dir holds anything yet: the dev command sees every
/// member's directory, so it can tell a first start from a restart. A replica whose
/// directory alone was wiped then refuses to start (and says why) instead of voting.
fn initial_state(data_dir: &Path, nodes: u64) -> Result<InitialClusterState, ServerError> {
    for i in 1..=nodes {
        let dir = data_dir.join(format!("node-{i}"));
        let used = dir.join(identity::FILE_NAME).exists() || identity::has_data(&dir)?;
        if used {
            return Ok(InitialClusterState::Existing);
        }
    }
    Ok(InitialClusterState::New)
}

/// Tells the user what runs where and how to try it.
fn print_banner(args: &DevArgs, endpoints: &[String]) {
    let data = args.data_dir.display();
    println!("kvs dev cluster: {} replicas, data in {data}", args.nodes);
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
    println!(
        "  KVS_ENDPOINTS={} kvs-client get greeting --stale",
        endpoints.join(",")
    );
    println!();
    println!("Ctrl-C stops the cluster; its data stays in {data} for the next start.");
}

/// Runs the dev cluster until Ctrl-C or SIGTERM, then stops every replica gracefully.
pub async fn run(args: DevArgs) -> Result<(), ServerError> {
    let configs = configs(&args)?;
    let endpoints: Vec<String> = configs.iter().map(|c| c.client_addr.clone()).collect();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for cfg in configs {
        let shutdown = shutdown.clone();
        let id = cfg.id;
        tasks.push(tokio::spawn(async move {
            let result = node::run(cfg, shutdown).await;
            if let Err(e) = &result {
                // Said at once, not only at Ctrl-C: the others keep running without it.
                tracing::error!(id, error = %e, "replica stopped");
            }
            (id, result)
        }));
    }
    print_banner(&args, &endpoints);
    crate::wait_for_signal().await;
    println!("stopping...");
    shutdown.cancel();
    let mut failed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => failed.push((id, e)),
            Err(e) => failed.push((i as NodeId + 1, ServerError::Task(e))),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ServerError::Replicas(failed))
    }
}
