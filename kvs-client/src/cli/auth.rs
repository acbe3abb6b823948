//! `kvs-client auth|role|user ...`: turn permission checks on and off, and manage the
//! roles, their grants, the users and their roles. Each change goes through the log; the
//! lists read the auth state through the leader.

use kvs_client::{AuthChange, AuthStatus, Client, Error, ErrorReply, Permission, ADMIN_ROLE};
use serde_json::{json, Map, Value};

use super::args::{AuthCommand, PermArg, RoleCommand, UserCommand};
use super::commands::{fail, print_json, EXIT_OK};
use super::output::{layout_table, put_bytes, quoted};
use super::ranges::key_bytes;

/// Runs an `auth` subcommand; returns the exit code.
pub async fn auth(client: &Client, command: AuthCommand, json: bool) -> u8 {
    match command {
        AuthCommand::Enable => change(client, AuthChange::Enable, "auth enabled", json).await,
        AuthCommand::Disable => change(client, AuthChange::Disable, "auth disabled", json).await,
        AuthCommand::Status => match client.auth_status().await {
            Ok(status) => {
                if json {
                    print_json(&status_json(&status));
                } else {
                    print!("{}", status_text(&status));
                }
                EXIT_OK
            }
            Err(e) => fail(&e),
        },
    }
}

/// Runs a `role` subcommand; returns the exit code. `hex`: prefixes are given in hex.
pub async fn role(client: &Client, command: RoleCommand, hex: bool, json: bool) -> u8 {
    let (change, done) = match command {
        RoleCommand::List => return list(client, json, Listing::Roles).await,
        RoleCommand::Add { name } => {
            let done = format!("role {name:?} added");
            (AuthChange::RoleAdd { role: name }, done)
        }
        RoleCommand::Delete { name } => {
            let done = format!("role {name:?} deleted");
            (AuthChange::RoleDelete { role: name }, done)
        }
        RoleCommand::Grant { name, prefix, perm } => {
            let prefix = match key_bytes(&prefix, hex) {
                Ok(prefix) => prefix,
                Err(e) => return fail(&usage(e)),
            };
            let perm = permission(perm);
            let done = format!("role {name:?} granted {perm} on {}", show_prefix(&prefix));
            let change = AuthChange::RoleGrant {
                role: name,
                prefix,
                perm,
            };
            (change, done)
        }
        RoleCommand::Revoke { name, prefix } => {
            let prefix = match key_bytes(&prefix, hex) {
                Ok(prefix) => prefix,
                Err(e) => return fail(&usage(e)),
            };
            let done = format!("role {name:?} revoked on {}", show_prefix(&prefix));
            (AuthChange::RoleRevoke { role: name, prefix }, done)
        }
    };
    change_owned(client, change, done, json).await
}

/// Runs a `user` subcommand; returns the exit code.
pub async fn user(client: &Client, command: UserCommand, json: bool) -> u8 {
    let (change, done) = match command {
        UserCommand::List => return list(client, json, Listing::Users).await,
        UserCommand::Add { name } => {
            let done = format!("user {name:?} added");
            (AuthChange::UserAdd { user: name }, done)
        }
        UserCommand::Delete { name } => {
            let done = format!("user {name:?} deleted");
            (AuthChange::UserDelete { user: name }, done)
        }
        UserCommand::GrantRole { name, role } => {
            let done = format!("user {name:?} granted role {role:?}");
            (AuthChange::UserGrantRole { user: name, role }, done)
        }
        UserCommand::RevokeRole { name, role } => {
            let done = format!("user {name:?} revoked role {role:?}");
            (AuthChange::UserRevokeRole { user: name, role }, done)
        }
    };
    change_owned(client, change, done, json).await
}

fn permission(perm: PermArg) -> Permission {
    match perm {
        PermArg::Read => Permission::Read,
        PermArg::Write => Permission::Write,
        PermArg::Readwrite => Permission::ReadWrite,
    }
}

fn usage(reason: String) -> Error {
    Error::Rejected(ErrorReply::Invalid { reason })
}

async fn change(client: &Client, change: AuthChange, done: &str, json: bool) -> u8 {
    change_owned(client, change, done.to_owned(), json).await
}

/// Makes one change; prints `done` (or `{"ok":true}`) once it is applied.
async fn change_owned(client: &Client, change: AuthChange, done: String, json: bool) -> u8 {
    match client.auth_change(change).await {
        Ok(()) => {
            if json {
                print_json(&json!({ "ok": true }));
            } else {
                println!("{done}");
            }
            EXIT_OK
        }
        Err(e) => fail(&e),
    }
}

/// What a list shows.
#[derive(Clone, Copy)]
enum Listing {
    Roles,
    Users,
}

async fn list(client: &Client, json: bool, listing: Listing) -> u8 {
    let status = match client.auth_status().await {
        Ok(status) => status,
        Err(e) => return fail(&e),
    };
    let whole = status_json(&status);
    match (listing, json) {
        (Listing::Roles, true) => print_json(&json!({ "roles": whole["roles"] })),
        (Listing::Users, true) => print_json(&json!({ "users": whole["users"] })),
        (Listing::Roles, false) => print!("{}", roles_table(&status)),
        (Listing::Users, false) => print!("{}", users_table(&status)),
    }
    EXIT_OK
}

/// A prefix for a human: quoted, escaped; the empty prefix is "every key".
fn show_prefix(prefix: &[u8]) -> String {
    if prefix.is_empty() {
        "every key (prefix \"\")".to_owned()
    } else {
        format!("prefix {}", quoted(prefix))
    }
}

/// The auth state as one JSON object: `{"enabled", "roles":[{"name","builtin","grants":
/// [{"prefix","prefix_encoding","perm"}]}], "users":[{"name","roles"}]}`.
pub fn status_json(status: &AuthStatus) -> Value {
    let roles: Vec<Value> = status
        .roles
        .iter()
        .map(|r| {
            let grants: Vec<Value> = r
                .grants
                .iter()
                .map(|g| {
                    let mut grant = Map::new();
                    put_bytes(&mut grant, "prefix", Some(&g.prefix));
                    grant.insert("perm".to_owned(), json!(g.perm.name()));
                    Value::Object(grant)
                })
                .collect();
            json!({ "name": r.name, "builtin": r.name == ADMIN_ROLE, "grants": grants })
        })
        .collect();
    let users: Vec<Value> = status
        .users
        .iter()
        .map(|u| json!({ "name": u.name, "roles": u.roles }))
        .collect();
    json!({ "enabled": status.enabled, "roles": roles, "users": users })
}

/// The auth state for a human: whether it is enabled, then the roles and users tables.
pub fn status_text(status: &AuthStatus) -> String {
    let state = if status.enabled {
        "enabled"
    } else {
        "disabled"
    };
    format!(
        "auth: {state}\n\n{}\n{}",
        roles_table(status),
        users_table(status)
    )
}

/// One row per grant (a role without grants has one row with `-`).
fn roles_table(status: &AuthStatus) -> String {
    let mut rows = vec![vec![
        "ROLE".to_owned(),
        "PERM".to_owned(),
        "PREFIX".to_owned(),
    ]];
    for role in &status.roles {
        if role.name == ADMIN_ROLE {
            rows.push(vec![
                role.name.clone(),
                "readwrite".to_owned(),
                "(every key, and the admin operations; built in)".to_owned(),
            ]);
            continue;
        }
        if role.grants.is_empty() {
            rows.push(vec![role.name.clone(), "-".to_owned(), "-".to_owned()]);
        }
        for grant in &role.grants {
            let prefix = if grant.prefix.is_empty() {
                "\"\" (every key)".to_owned()
            } else {
                quoted(&grant.prefix)
            };
            rows.push(vec![
                role.name.clone(),
                grant.perm.name().to_owned(),
                prefix,
            ]);
        }
    }
    layout_table(&rows, 3)
}

/// One row per user, its roles comma-separated (`-`: none).
fn users_table(status: &AuthStatus) -> String {
    let mut rows = vec![vec!["USER".to_owned(), "ROLES".to_owned()]];
    for user in &status.users {
        let roles = if user.roles.is_empty() {
            "-".to_owned()
        } else {
            user.roles.join(",")
        };
        rows.push(vec![user.name.clone(), roles]);
    }
    layout_table(&rows, 2)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kvs_client::{Grant, RoleInfo, UserInfo};

    use super::*;

    fn sample() -> AuthStatus {
        AuthStatus {
            enabled: true,
            roles: vec![
                RoleInfo {
                    name: ADMIN_ROLE.to_owned(),
                    grants: vec![Grant {
                        prefix: Bytes::new(),
                        perm: Permission::ReadWrite,
                    }],
                },
                RoleInfo {
                    name: "doctors".to_owned(),
                    grants: vec![Grant {
                        prefix: Bytes::from_static(b"patient/"),
                        perm: Permission::ReadWrite,
                    }],
                },
                RoleInfo {
                    name: "empty".to_owned(),
                    grants: vec![],
                },
            ],
            users: vec![
                UserInfo {
                    name: "alice".to_owned(),
                    roles: vec!["doctors".to_owned()],
                },
                UserInfo {
                    name: "root".to_owned(),
                    roles: vec![ADMIN_ROLE.to_owned()],
                },
            ],
        }
    }

    #[test]
    fn the_auth_state_prints_as_tables_and_json() {
        let text = status_text(&sample());
        assert!(text.starts_with("auth: enabled\n"), "{text}");
        assert!(
            text.contains("doctors  readwrite  \"patient/\"\n"),
            "{text}"
        );
        assert!(text.contains("empty    -          -\n"), "{text}");
        assert!(text.contains("alice  doctors\n"), "{text}");
        let json = status_json(&sample());
        assert_eq!(json["enabled"], true);
        assert_eq!(json["roles"][1]["grants"][0]["prefix"], "patient/");
        assert_eq!(json["roles"][1]["grants"][0]["perm"], "readwrite");
        assert_eq!(json["roles"][0]["builtin"], true);
        assert_eq!(json["users"][1]["roles"][0], "admin");
    }
}
