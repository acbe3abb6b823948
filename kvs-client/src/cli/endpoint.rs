//! `kvs-client endpoint health|status`: each endpoint on its own, like `etcdctl endpoint`.
//! `health` proves that a linearizable read goes through the leader from that endpoint
//! within a bounded time; `status` describes what each endpoint says of itself.

use std::time::Duration;

use kvs_client::{Client, ClientOptions, Error, NodeStatus};
use serde_json::{json, Value};

use super::commands::{fail, print_json, EXIT_OK, EXIT_UNAVAILABLE};
use super::output::{self, layout_table, StatusEntry};

/// The key `endpoint health` reads: a linearizable read needs a leader confirmed by a
/// quorum, whatever the key; reading never changes it.
pub const HEALTH_KEY: &str = "__kvs_health__";

/// How long past its timeout a check is cut off if its clients overrun their bounds.
const CHECK_SLACK: Duration = Duration::from_millis(500);

/// The most endpoints checked at once (the endpoints given, or the members).
const ENDPOINTS_MAX: usize = 64;

/// One endpoint's health: how long its check took, or why it failed.
struct Health {
    endpoint: String,
    took: Duration,
    error: Option<String>,
}

/// `endpoint health`: every endpoint checked concurrently, each within `check_timeout`.
pub async fn health(
    client: &Client,
    cluster: bool,
    via: &[String],
    check_timeout: Duration,
    json: bool,
) -> u8 {
    let endpoints = match targets(client, cluster).await {
        Ok(endpoints) => endpoints,
        Err(e) => return fail(&e),
    };
    let options = client.options();
    if !via.is_empty() {
        // Checked here, so that a bad address is a usage error rather than a sick endpoint.
        if let Err(e) = Client::connect(via.iter().map(|v| v.trim()), options.clone()) {
            return fail(&e);
        }
    }
    let checks = endpoints
        .iter()
        .map(|endpoint| check(endpoint, via, options, check_timeout));
    let results = futures::future::join_all(checks).await;
    if json {
        let list: Vec<Value> = results
            .iter()
            .map(|h| {
                json!({
                    "endpoint": h.endpoint,
                    "health": h.error.is_none(),
                    "took_ms": u64::try_from(h.took.as_millis()).unwrap_or(u64::MAX),
                    "error": h.error,
                })
            })
            .collect();
        let healthy = results.iter().all(|h| h.error.is_none());
        print_json(&json!({ "healthy": healthy, "endpoints": list }));
    } else {
        let mut out = String::new();
        for h in &results {
            match &h.error {
                None => out.push_str(&format!(
                    "{} is healthy: successfully committed proposal: took = {}ms\n",
                    h.endpoint,
                    h.took.as_millis()
                )),
                Some(reason) => {
                    out.push_str(&format!("{} is unhealthy: {reason}\n", h.endpoint));
                }
            }
        }
        print!("{out}");
    }
    if results.iter().all(|h| h.error.is_none()) {
        EXIT_OK
    } else {
        EXIT_UNAVAILABLE
    }
}

/// Checks one endpoint: it must answer a status request, know a leader (or be it), and a
/// linearizable read must complete through the leader (answered, or refused for want of a
/// permission, which the leader checks only once it has confirmed the read), found from its redirect (or at
/// one of `via` when the address it names cannot be reached from here). All of it within
/// `check_timeout`.
async fn check(
    endpoint: &str,
    via: &[String],
    options: &ClientOptions,
    check_timeout: Duration,
) -> Health {
    let started = tokio::time::Instant::now();
    let deadline = started + check_timeout;
    let work = async {
        // One client per part, each given what is left of the check's time.
        let client = |left: Duration| {
            let left = left.max(Duration::from_millis(1));
            let options = ClientOptions {
                request_timeout: left,
                connect_timeout: left.min(options.connect_timeout),
                attempt_timeout: left.min(options.attempt_timeout),
                ..options.clone()
            };
            let routes = std::iter::once(endpoint.to_owned()).chain(via.iter().cloned());
            Client::connect(routes, options).map_err(|e| e.to_string())
        };
        let node = client(check_timeout)?
            .status_of(endpoint)
            .await
            .map_err(|e| format!("unreachable: {}", output::strip_endpoint(endpoint, &e)))?;
        if node.leader.is_none() && node.role != kvs_client::NodeRole::Leader {
            return Err(format!(
                "no leader: node {} ({}) knows no leader",
                node.id, node.role
            ));
        }
        match client(deadline.saturating_duration_since(tokio::time::Instant::now()))?
            .get(HEALTH_KEY)
            .await
        {
            // The leader confirmed the read before it checked the permission (as etcd
            // does): a refusal proves the read went through it, so health needs none.
            Ok(_) | Err(kvs_client::Error::PermissionDenied { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    // The clients bound themselves by the check's time; this is a safety net.
    let error = match tokio::time::timeout(check_timeout + CHECK_SLACK, work).await {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_elapsed) => Some(format!(
            "no answer within {}",
            kvs_client::format_duration(check_timeout)
        )),
    };
    Health {
        endpoint: endpoint.to_owned(),
        took: started.elapsed(),
        error,
    }
}

/// `endpoint status`: one row per endpoint; exit 0 only if every endpoint answered.
pub async fn status(client: &Client, cluster: bool, json: bool) -> u8 {
    let endpoints = match targets(client, cluster).await {
        Ok(endpoints) => endpoints,
        Err(e) => return fail(&e),
    };
    let asks = endpoints
        .iter()
        .map(|endpoint| async move { (endpoint.clone(), client.status_of(endpoint).await) });
    let entries: Vec<StatusEntry> = futures::future::join_all(asks).await;
    if json {
        let rows: Vec<Value> = entries
            .iter()
            .map(|(endpoint, status)| status_row_json(endpoint, status))
            .collect();
        print_json(&json!({ "endpoints": rows }));
    } else {
        print!("{}", status_table(&entries));
    }
    if entries.iter().all(|(_, status)| status.is_ok()) {
        EXIT_OK
    } else {
        EXIT_UNAVAILABLE
    }
}

/// The endpoints to look at: those given, or with `cluster` every member's client address
/// from the member list (the leader's view, or a node's own without a leader).
async fn targets(client: &Client, cluster: bool) -> Result<Vec<String>, Error> {
    if !cluster {
        return Ok(client
            .endpoints()
            .iter()
            .take(ENDPOINTS_MAX)
            .cloned()
            .collect());
    }
    let list = client.member_list().await?;
    let mut endpoints: Vec<String> = list
        .members
        .iter()
        .filter_map(|m| m.client_addr.clone())
        .take(ENDPOINTS_MAX)
        .collect();
    endpoints.dedup();
    if endpoints.is_empty() {
        return Err(Error::Unavailable {
            reason: "the member list holds no client address".to_owned(),
        });
    }
    Ok(endpoints)
}

fn status_row_json(endpoint: &str, status: &Result<NodeStatus, Error>) -> Value {
    match status {
        Ok(node) => json!({
            "endpoint": endpoint,
            "id": node.id,
            "leader": node.leader,
            "role": node.role.to_string(),
            "ballot": { "round": node.ballot.round, "node": node.ballot.node },
            "commit_index": node.commit_index,
            "applied_index": node.applied_index,
            "members": node.peers.len() + 1,
            "peers_reachable": node.peers.iter().filter(|p| p.reachable).count(),
            "error": null,
        }),
        Err(e) => json!({
            "endpoint": endpoint,
            "id": null,
            "leader": null,
            "role": null,
            "ballot": null,
            "commit_index": null,
            "applied_index": null,
            "members": null,
            "peers_reachable": null,
            "error": output::strip_endpoint(endpoint, e),
        }),
    }
}

/// The table of `endpoint status`: one row per endpoint.
fn status_table(entries: &[StatusEntry]) -> String {
    const HEADER: [&str; 9] = [
        "ENDPOINT", "ID", "LEADER", "ROLE", "BALLOT", "COMMIT", "APPLIED", "MEMBERS", "ERRORS",
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for (endpoint, status) in entries {
        rows.push(match status {
            Ok(node) => vec![
                endpoint.clone(),
                node.id.to_string(),
                node.leader.map_or("-".to_owned(), |l| l.to_string()),
                node.role.to_string(),
                node.ballot.to_string(),
                node.commit_index.to_string(),
                node.applied_index.to_string(),
                format!(
                    "{} ({} reachable)",
                    node.peers.len() + 1,
                    node.peers.iter().filter(|p| p.reachable).count() + 1
                ),
                "-".to_owned(),
            ],
            Err(e) => {
                let mut row = vec!["-".to_owned(); HEADER.len()];
                row[0] = endpoint.clone();
                row[8] = output::strip_endpoint(endpoint, e);
                row
            }
        });
    }
    layout_table(&rows, HEADER.len())
}
