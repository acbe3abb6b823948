//! `kvs-client member ...`: list the members (a table, or JSON), and add, promote or remove
//! one. Each change reads the latest configuration first and names it (compare-and-swap).

use kvs_client::{Client, Error, ErrorReply, MemberChange, MemberChangeOutcome, MemberList};
use serde_json::{json, Value};

use super::args::MemberCommand;
use super::commands::{fail, print_json, EXIT_OK};
use super::output::layout_table;

/// Runs a `member` subcommand; returns the exit code.
pub async fn run(client: &Client, command: MemberCommand, json: bool) -> u8 {
    let (change, force) = match command {
        MemberCommand::List => return list(client, json).await,
        MemberCommand::Add {
            id,
            peer_addr,
            client_addr,
        } => (
            MemberChange::Add {
                id,
                peer_addr,
                client_addr,
            },
            false,
        ),
        MemberCommand::Promote { id } => (MemberChange::Promote { id }, false),
        MemberCommand::Remove { id, force } => (MemberChange::Remove { id }, force),
    };
    match client.member_change(change.clone(), force).await {
        Ok(outcome) => {
            report(&change, &outcome, json);
            EXIT_OK
        }
        Err(e) => {
            let code = fail(&e);
            hint(&e);
            code
        }
    }
}

/// `member list`.
async fn list(client: &Client, json: bool) -> u8 {
    match client.member_list().await {
        Ok(list) => {
            if json {
                print_json(&list_json(&list));
            } else {
                print!("{}", list_table(&list));
            }
            EXIT_OK
        }
        Err(e) => fail(&e),
    }
}

/// What to do after a refusal, on a second line of stderr where one helps.
fn hint(error: &Error) {
    match error {
        Error::Rejected(ErrorReply::LearnerNotReady { id, .. }) => eprintln!(
            "hint: `kvs-client member list` shows its lag; promote it once it has caught up \
             (is replica {id} running, started with --initial-cluster-state existing?)"
        ),
        Error::Rejected(ErrorReply::StaleConfig { .. }) => eprintln!(
            "hint: another change came first; `kvs-client member list` shows the members now"
        ),
        _ => {}
    }
}

/// Says what changed: a line on stdout, or one JSON object.
fn report(change: &MemberChange, outcome: &MemberChangeOutcome, json: bool) {
    let already = matches!(outcome, MemberChangeOutcome::AlreadyDone { .. });
    if json {
        print_json(&json!({
            "ok": true,
            "config_id": outcome.config_id(),
            "already_done": already,
        }));
        return;
    }
    let what = match change {
        MemberChange::Add { id, .. } => format!("added node {id} as a learner"),
        MemberChange::Promote { id } => format!("promoted node {id} to voter"),
        MemberChange::Remove { id } => format!("removed node {id}"),
    };
    let config = outcome.config_id();
    if already {
        println!("{what} (already in effect; configuration {config})");
    } else {
        println!("{what} (configuration {config})");
    }
}

/// The members as one JSON object; unknown values are `null`.
pub fn list_json(list: &MemberList) -> Value {
    let members: Vec<Value> = list
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "peer_addr": m.peer_addr,
                "client_addr": m.client_addr,
                "role": if m.voter { "voter" } else { "learner" },
                "leader": list.leader == Some(m.id),
                "applied": m.applied,
                "lag": m.lag,
            })
        })
        .collect();
    json!({
        "config_id": list.config_id,
        "in_effect": list.in_effect,
        "leader": list.leader,
        "served_by": list.served_by,
        "members": members,
    })
}

/// The members as a table, then a line on the configuration and who answered. Unknown
/// values read `unknown`.
pub fn list_table(list: &MemberList) -> String {
    const HEADER: [&str; 6] = ["ID", "PEER_ADDR", "CLIENT_ADDR", "ROLE", "APPLIED", "LAG"];
    let unknown = || "unknown".to_owned();
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for m in &list.members {
        let role = match (m.voter, list.leader == Some(m.id)) {
            (true, true) => "voter (leader)",
            (true, false) => "voter",
            (false, _) => "learner",
        };
        rows.push(vec![
            m.id.to_string(),
            m.peer_addr.clone().unwrap_or_else(unknown),
            m.client_addr.clone().unwrap_or_else(unknown),
            role.to_owned(),
            m.applied.map_or_else(unknown, |a| a.to_string()),
            m.lag.map_or_else(unknown, |l| l.to_string()),
        ]);
    }
    let mut table = layout_table(&rows, HEADER.len());
    let effect = if list.in_effect {
        "in effect"
    } else {
        "taking effect"
    };
    let answered = match list.leader {
        Some(leader) if leader == list.served_by => format!("the leader, node {leader}"),
        Some(leader) => format!("node {} (the leader is node {leader})", list.served_by),
        None => format!(
            "node {}, which knows no leader: applied slots and lags are unknown",
            list.served_by
        ),
    };
    table.push_str(&format!(
        "configuration {} ({effect}); answered by {answered}\n",
        list.config_id
    ));
    table
}

#[cfg(test)]
mod tests {
    use kvs_client::MemberInfo;

    use super::*;

    fn list(leader: Option<u64>) -> MemberList {
        MemberList {
            config_id: 7,
            in_effect: true,
            served_by: 1,
            leader,
            members: vec![
                MemberInfo {
                    id: 1,
                    peer_addr: Some("127.0.0.1:7001".into()),
                    client_addr: Some("127.0.0.1:6001".into()),
                    voter: true,
                    applied: Some(1200),
                    lag: Some(0),
                },
                MemberInfo {
                    id: 4,
                    peer_addr: Some("127.0.0.1:7004".into()),
                    client_addr: None,
                    voter: false,
                    applied: None,
                    lag: None,
                },
            ],
        }
    }

    #[test]
    fn the_table_marks_the_leader_and_unknown_values() {
        assert_eq!(
            list_table(&list(Some(1))),
            "ID  PEER_ADDR       CLIENT_ADDR     ROLE            APPLIED  LAG\n\
             1   127.0.0.1:7001  127.0.0.1:6001  voter (leader)  1200     0\n\
             4   127.0.0.1:7004  unknown         learner         unknown  unknown\n\
             configuration 7 (in effect); answered by the leader, node 1\n"
        );
        assert!(list_table(&list(None)).ends_with(
            "answered by node 1, which knows no leader: applied slots and lags are unknown\n"
        ));
    }

    #[test]
    fn json_has_every_field_and_null_for_unknown() {
        let value = list_json(&list(Some(1)));
        assert_eq!(value["config_id"], 7);
        assert_eq!(value["members"][0]["role"], "voter");
        assert_eq!(value["members"][0]["leader"], true);
        assert_eq!(value["members"][1]["role"], "learner");
        assert_eq!(value["members"][1]["lag"], Value::Null);
        assert_eq!(value["members"][1]["client_addr"], Value::Null);
    }
}
