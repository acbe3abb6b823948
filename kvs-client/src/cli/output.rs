//! What the tool prints: JSON shapes and the status table.

use kvs_client::{Error, NodeRole, NodeStatus};
use serde_json::{json, Map, Value};

use super::base64;

/// One endpoint's answer to a status request.
pub type StatusEntry = (String, Result<NodeStatus, Error>);

/// Adds `"<field>"` and `"<field>_encoding"` for a value: UTF-8 text as a JSON string with
/// encoding `"utf8"`, anything else as base64 with encoding `"base64"`, and an absent value
/// as `null` with encoding `null`.
pub fn put_bytes(object: &mut Map<String, Value>, field: &str, bytes: Option<&[u8]>) {
    let (value, encoding) = match bytes {
        None => (Value::Null, Value::Null),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (json!(text), json!("utf8")),
            Err(_) => (json!(base64::encode(bytes)), json!("base64")),
        },
    };
    object.insert(field.to_owned(), value);
    object.insert(format!("{field}_encoding"), encoding);
}

/// Bytes for a human: printable ASCII as is, the rest escaped, in double quotes.
pub fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// The leader among the reachable nodes: a node that says it leads, with the highest
/// ballot if several do (an old leader may not know yet that it was replaced).
pub fn leader_of(entries: &[StatusEntry]) -> Option<&NodeStatus> {
    entries
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .filter(|node| node.role == NodeRole::Leader)
        .max_by_key(|node| node.ballot)
}

/// Whether the cluster can serve, as the reachable nodes see it: the answer behind the
/// exit code of `status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A leader is known and reachable: `id`, and which node vouches for it.
    Leader {
        /// The leader's node id.
        id: u64,
    },
    /// No leader is known and reachable, or the leader reaches no quorum: why.
    NoLeader(String),
}

/// Judges `entries`: a node that says it leads (the highest ballot if several do) and
/// reaches a majority of the members over its peer links, or else a node that names a
/// leader it reaches over its peer link. Otherwise no leader, with what the nodes said.
pub fn verdict(entries: &[StatusEntry]) -> Verdict {
    if let Some(leader) = leader_of(entries) {
        let members = leader.peers.len() + 1;
        let reached = leader.peers.iter().filter(|p| p.reachable).count() + 1;
        if reached > members / 2 {
            return Verdict::Leader { id: leader.id };
        }
        return Verdict::NoLeader(format!(
            "no leader with a quorum: node {} leads but reaches only {reached} of {members} \
             members (itself included)",
            leader.id
        ));
    }
    let vouched = entries
        .iter()
        .filter_map(|(_, status)| status.as_ref().ok())
        .find_map(|node| {
            let id = node.leader?;
            let linked = node.peers.iter().any(|p| p.id == id && p.reachable);
            linked.then_some(id)
        });
    if let Some(id) = vouched {
        return Verdict::Leader { id };
    }
    let said: Vec<String> = entries
        .iter()
        .map(|(endpoint, status)| match status {
            Ok(node) => match node.leader {
                Some(leader) => format!(
                    "{endpoint}: node {} ({}) names node {leader} but has no link to it",
                    node.id, node.role
                ),
                None => format!(
                    "{endpoint}: node {} ({}) knows no leader",
                    node.id, node.role
                ),
            },
            Err(e) => format!("{endpoint}: unreachable: {}", strip_endpoint(endpoint, e)),
        })
        .collect();
    if entries.iter().all(|(_, status)| status.is_err()) {
        return Verdict::NoLeader(format!("no replica reachable: {}", said.join("; ")));
    }
    Verdict::NoLeader(format!("no leader with a quorum: {}", said.join("; ")))
}

/// The error's message without a leading `ENDPOINT: ` (the caller names the endpoint).
pub fn strip_endpoint(endpoint: &str, error: &Error) -> String {
    let message = error.to_string();
    message
        .strip_prefix(&format!("{endpoint}: "))
        .map(str::to_owned)
        .unwrap_or(message)
}

/// The JSON object of `status -o json`.
pub fn status_json(entries: &[StatusEntry]) -> Value {
    let nodes: Vec<Value> = entries
        .iter()
        .map(|(endpoint, status)| match status {
            Ok(node) => json!({
                "endpoint": endpoint,
                "id": node.id,
                "addr": node.client_addr,
                "role": node.role.to_string(),
                "ballot": { "round": node.ballot.round, "node": node.ballot.node },
                "commit_index": node.commit_index,
                "applied_index": node.applied_index,
                "leader": node.leader,
                "reachable": true,
                "acceptor_failures": node.acceptor_failures,
                "acceptor_recoveries": node.acceptor_recoveries,
                "acceptor_down": node.acceptor_down,
                "peers": node.peers.iter()
                    .map(|p| json!({ "id": p.id, "reachable": p.reachable }))
                    .collect::<Vec<_>>(),
                "uptime_ms": node.uptime_ms,
                "error": null,
            }),
            Err(e) => json!({
                "endpoint": endpoint,
                "id": null,
                "addr": endpoint,
                "role": null,
                "ballot": null,
                "commit_index": null,
                "applied_index": null,
                "leader": null,
                "reachable": false,
                "acceptor_failures": null,
                "acceptor_recoveries": null,
                "acceptor_down": null,
                "peers": [],
                "uptime_ms": null,
                "error": e.to_string(),
            }),
        })
        .collect();
    json!({
        "leader": leader_of(entries).map(|node| node.id),
        "nodes": nodes,
    })
}

/// The table of `status`, one row per endpoint, then a line naming the leader.
pub fn status_table(entries: &[StatusEntry]) -> String {
    const HEADER: [&str; 11] = [
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
        "PEERS",
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for (endpoint, status) in entries {
        rows.push(match status {
            Ok(node) => vec![
                node.id.to_string(),
                node.client_addr.clone(),
                node.role.to_string(),
                node.ballot.to_string(),
                node.commit_index.to_string(),
                node.applied_index.to_string(),
                "yes".to_owned(),
                node.acceptor_failures.to_string(),
                node.acceptor_recoveries.to_string(),
                yes_no(node.acceptor_down).to_owned(),
                peers(node),
            ],
            Err(_) => {
                let mut row = vec!["-".to_owned(); HEADER.len()];
                row[1] = endpoint.clone();
                row[6] = "no".to_owned();
                row
            }
        });
    }
    let mut table = layout_table(&rows, HEADER.len());
    match (leader_of(entries), verdict(entries)) {
        (Some(node), _) => table.push_str(&format!(
            "leader: node {} at {} (ballot {})\n",
            node.id, node.client_addr, node.ballot
        )),
        (None, Verdict::Leader { id }) => table.push_str(&format!(
            "leader: node {id}, linked to the reachable nodes (not among the endpoints)\n"
        )),
        (None, Verdict::NoLeader(_)) => {
            table.push_str("leader: none among the reachable nodes\n");
        }
    }
    table
}

fn peers(node: &NodeStatus) -> String {
    if node.peers.is_empty() {
        return "-".to_owned();
    }
    let peers: Vec<String> = node
        .peers
        .iter()
        .map(|p| format!("{}:{}", p.id, if p.reachable { "up" } else { "down" }))
        .collect();
    peers.join(",")
}

fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// Lays `rows` (the header first) out as left-aligned columns two spaces apart, one line
/// per row, without trailing spaces.
pub fn layout_table(rows: &[Vec<String>], columns: usize) -> String {
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}
