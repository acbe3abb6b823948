use super::*;
use wire::auth::AUTH_NAME_BYTES_MAX;

fn change(state: &mut AuthState, c: AuthChange, by: Option<&str>) -> Result<(), ErrorReply> {
    state.apply(&c, by)
}

fn ok(state: &mut AuthState, c: AuthChange) {
    let shown = format!("{c:?}");
    change(state, c, Some("root")).unwrap_or_else(|e| panic!("{shown}: {e}"));
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// root (admin), alice (doctors: readwrite on patient/), bob (readers: read on notes/ and
/// write on inbox/), carol (no role); auth enabled by root.
fn clinic() -> AuthState {
    let mut s = AuthState::default();
    for user in ["root", "alice", "bob", "carol"] {
        ok(&mut s, AuthChange::UserAdd { user: user.into() });
    }
    for role in ["doctors", "readers"] {
        ok(&mut s, AuthChange::RoleAdd { role: role.into() });
    }
    let grant = |role: &str, prefix: &str, perm| AuthChange::RoleGrant {
        role: role.into(),
        prefix: b(prefix),
        perm,
    };
    ok(&mut s, grant("doctors", "patient/", Permission::ReadWrite));
    ok(&mut s, grant("readers", "notes/", Permission::Read));
    ok(&mut s, grant("readers", "inbox/", Permission::Write));
    let give = |user: &str, role: &str| AuthChange::UserGrantRole {
        user: user.into(),
        role: role.into(),
    };
    ok(&mut s, give("root", ADMIN_ROLE));
    ok(&mut s, give("alice", "doctors"));
    ok(&mut s, give("bob", "readers"));
    ok(&mut s, AuthChange::Enable);
    assert!(s.enabled());
    s
}

fn denied_reason(r: Result<(), ErrorReply>) -> String {
    match r {
        Err(ErrorReply::PermissionDenied { reason, .. }) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn refusal(r: Result<(), ErrorReply>) -> String {
    match r {
        Err(ErrorReply::AuthRefused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn disabled_auth_allows_everything_even_without_identity() {
    let s = AuthState::default();
    assert_eq!(s.authorize(None, [Need::Admin]), Ok(()));
    assert_eq!(
        s.authorize_write(None, &WriteOp::Delete { key: b("x") }),
        Ok(())
    );
}

#[test]
fn grants_allow_keys_under_their_prefix_only() {
    let s = clinic();
    let read = |who, key: &'static str| {
        s.authorize(Some(who), [Need::Key(key.as_bytes(), Permission::Read)])
    };
    let write = |who, key: &'static str| {
        s.authorize(Some(who), [Need::Key(key.as_bytes(), Permission::Write)])
    };
    assert_eq!(write("alice", "patient/1"), Ok(()));
    assert_eq!(read("alice", "patient/1"), Ok(()));
    assert_eq!(
        denied_reason(write("alice", "billing/1")),
        "\"alice\" may not write \"billing/1\" (no role grants write on it)"
    );
    // A prefix is bytes: "patient" (no slash) is not under "patient/".
    assert!(write("alice", "patient").is_err());
    assert!(write("alice", "patients/1").is_err());
    assert_eq!(read("bob", "notes/a"), Ok(()));
    assert!(write("bob", "notes/a").is_err(), "read only");
    assert_eq!(write("bob", "inbox/a"), Ok(()));
    assert!(read("bob", "inbox/a").is_err(), "write only");
    assert!(read("carol", "notes/a").is_err(), "no role");
    // The admin may do anything, the others no admin operation.
    assert_eq!(write("root", "anything"), Ok(()));
    assert_eq!(s.authorize(Some("root"), [Need::Admin]), Ok(()));
    assert!(denied_reason(s.authorize(Some("alice"), [Need::Admin])).contains("admin role"));
}

#[test]
fn an_identity_must_be_there_and_be_a_user() {
    let s = clinic();
    let put = WriteOp::Put {
        key: b("patient/1"),
        value: b("v"),
    };
    let none = s.authorize_write(None, &put);
    assert_eq!(
        none,
        Err(ErrorReply::PermissionDenied {
            identity: None,
            reason: "this request has no identity (connect with a client certificate: \
                     --cert/--key)"
                .into()
        })
    );
    assert_eq!(
        none.err().map(|e| e.to_string()).unwrap_or_default(),
        "permission denied: this request has no identity (connect with a client \
         certificate: --cert/--key)"
    );
    let stranger = denied_reason(s.authorize_write(Some("mallory"), &put));
    assert!(stranger.contains("\"mallory\" is not a user"), "{stranger}");
    // Registering a session needs only to be a user.
    assert_eq!(
        s.authorize_write(Some("carol"), &WriteOp::RegisterSession),
        Ok(())
    );
    assert!(s
        .authorize_write(Some("mallory"), &WriteOp::RegisterSession)
        .is_err());
    assert!(s.authorize_write(None, &WriteOp::RegisterSession).is_err());
}

#[test]
fn a_range_is_covered_only_inside_one_prefix() {
    assert!(covers_range(b"p/", b"p/", Some(b"p0")), "the whole prefix");
    assert!(covers_range(b"p/", b"p/a", Some(b"p/b")));
    assert!(
        !covers_range(b"p/", b"p/a", Some(b"p1")),
        "ends past the prefix"
    );
    assert!(!covers_range(b"p/", b"p/a", None), "to the last key");
    assert!(!covers_range(b"p/", b"o", Some(b"p/b")), "starts before it");
    assert!(
        covers_range(b"", b"", None),
        "the empty prefix covers everything"
    );
    assert!(
        covers_range(b"\xff", b"\xff\x01", None),
        "an all-0xff prefix goes to the end"
    );
    let s = clinic();
    let range = |who, from: &'static str, to: Option<&'static str>, perm| {
        s.authorize(
            Some(who),
            [Need::Range(from.as_bytes(), to.map(str::as_bytes), perm)],
        )
    };
    assert_eq!(
        range("alice", "patient/", Some("patient0"), Permission::Read),
        Ok(())
    );
    let reason = denied_reason(range("alice", "patient/", None, Permission::Read));
    assert_eq!(
        reason,
        "\"alice\" may not read the range from \"patient/\" to the last key (no role grants \
         read on all of it)"
    );
    assert!(range("alice", "a", Some("z"), Permission::Write).is_err());
    assert_eq!(
        range("bob", "notes/", Some("notes0"), Permission::Read),
        Ok(())
    );
    assert_eq!(range("root", "", None, Permission::Write), Ok(()));
}

#[test]
fn writes_need_what_they_touch() {
    let s = clinic();
    let cas = WriteOp::Cas {
        key: b("inbox/1"),
        expected: None,
        new: b("v"),
    };
    // bob may write inbox/ but not read it: a compare-and-swap needs both.
    let reason = denied_reason(s.authorize_write(Some("bob"), &cas));
    assert!(reason.contains("may not read \"inbox/1\""), "{reason}");
    let del_range = WriteOp::DeleteRange {
        from: b("patient/"),
        to: wire::prefix_end(b"patient/"),
    };
    assert_eq!(s.authorize_write(Some("alice"), &del_range), Ok(()));
    let everything = WriteOp::DeleteRange {
        from: b("patient/"),
        to: None,
    };
    assert!(s.authorize_write(Some("alice"), &everything).is_err());
    // A transaction: compares need read, every operation of both branches write.
    let txn = |compare: &str, success: &str, failure: &str| {
        WriteOp::Txn(wire::Txn {
            compares: vec![wire::Compare::Exists { key: b(compare) }],
            success: vec![TxnOp::Put {
                key: b(success),
                value: b("v"),
            }],
            failure: vec![TxnOp::Delete { key: b(failure) }],
        })
    };
    let ok_txn = txn("patient/1", "patient/2", "patient/3");
    assert_eq!(s.authorize_write(Some("alice"), &ok_txn), Ok(()));
    let bad_compare = txn("notes/1", "patient/2", "patient/3");
    assert!(
        denied_reason(s.authorize_write(Some("alice"), &bad_compare)).contains("read \"notes/1\"")
    );
    let bad_failure = txn("patient/1", "patient/2", "billing/3");
    assert!(
        denied_reason(s.authorize_write(Some("alice"), &bad_failure))
            .contains("write \"billing/3\""),
        "the branch not taken is checked too"
    );
    // Auth changes need the admin role.
    let change = WriteOp::Auth(AuthChange::UserAdd { user: "x".into() });
    assert!(s.authorize_write(Some("alice"), &change).is_err());
    assert_eq!(s.authorize_write(Some("root"), &change), Ok(()));
}

#[test]
fn enabling_needs_an_admin_user_asking() {
    let mut s = AuthState::default();
    ok(
        &mut s,
        AuthChange::UserAdd {
            user: "root".into(),
        },
    );
    let no_identity = refusal(change(&mut s, AuthChange::Enable, None));
    assert!(
        no_identity.contains("this request has no identity"),
        "{no_identity}"
    );
    let not_admin = refusal(change(&mut s, AuthChange::Enable, Some("root")));
    assert!(
        not_admin.contains("\"root\" is not a user holding the admin role"),
        "{not_admin}"
    );
    assert!(!s.enabled());
    ok(
        &mut s,
        AuthChange::UserGrantRole {
            user: "root".into(),
            role: ADMIN_ROLE.into(),
        },
    );
    assert!(refusal(change(&mut s, AuthChange::Enable, Some("alice"))).contains("\"alice\""));
    assert_eq!(change(&mut s, AuthChange::Enable, Some("root")), Ok(()));
    assert!(s.enabled());
    assert_eq!(change(&mut s, AuthChange::Disable, Some("root")), Ok(()));
    assert!(!s.enabled());
}

#[test]
fn the_last_admin_cannot_be_removed_while_auth_is_enabled() {
    let mut s = clinic();
    let before = s.clone();
    let revoke = AuthChange::UserRevokeRole {
        user: "root".into(),
        role: ADMIN_ROLE.into(),
    };
    assert!(refusal(change(&mut s, revoke.clone(), Some("root")))
        .contains("last user holding the admin role"));
    let delete = AuthChange::UserDelete {
        user: "root".into(),
    };
    assert!(refusal(change(&mut s, delete.clone(), Some("root"))).contains("last user"));
    assert_eq!(s, before, "a refused change changes nothing");
    // With a second admin, or auth disabled, it may go.
    ok(
        &mut s,
        AuthChange::UserGrantRole {
            user: "alice".into(),
            role: ADMIN_ROLE.into(),
        },
    );
    assert_eq!(change(&mut s, revoke, Some("alice")), Ok(()));
    assert!(refusal(change(
        &mut s,
        AuthChange::UserDelete {
            user: "alice".into()
        },
        Some("alice")
    ))
    .contains("last user"));
    ok(&mut s, AuthChange::Disable);
    assert_eq!(
        change(
            &mut s,
            AuthChange::UserDelete {
                user: "alice".into()
            },
            None
        ),
        Ok(())
    );
}

#[test]
fn the_admin_role_is_built_in_and_cannot_change() {
    let mut s = clinic();
    for c in [
        AuthChange::RoleAdd {
            role: ADMIN_ROLE.into(),
        },
        AuthChange::RoleDelete {
            role: ADMIN_ROLE.into(),
        },
        AuthChange::RoleGrant {
            role: ADMIN_ROLE.into(),
            prefix: b("x"),
            perm: Permission::Read,
        },
        AuthChange::RoleRevoke {
            role: ADMIN_ROLE.into(),
            prefix: Bytes::new(),
        },
    ] {
        let reason = refusal(change(&mut s, c, Some("root")));
        assert!(reason.contains("admin"), "{reason}");
    }
    let status = s.status();
    assert_eq!(
        status.roles.first().map(|r| r.name.as_str()),
        Some(ADMIN_ROLE)
    );
    assert_eq!(status.roles.len(), 3);
}

#[test]
fn changes_that_do_not_apply_say_why() {
    let mut s = clinic();
    let cases = [
        (
            AuthChange::UserAdd {
                user: "alice".into(),
            },
            "user \"alice\" exists",
        ),
        (
            AuthChange::UserDelete { user: "zed".into() },
            "user \"zed\" does not exist",
        ),
        (
            AuthChange::RoleAdd {
                role: "doctors".into(),
            },
            "role \"doctors\" exists",
        ),
        (
            AuthChange::RoleDelete {
                role: "nurses".into(),
            },
            "role \"nurses\" does not exist",
        ),
        (
            AuthChange::UserGrantRole {
                user: "alice".into(),
                role: "nurses".into(),
            },
            "role \"nurses\" does not exist",
        ),
        (
            AuthChange::UserRevokeRole {
                user: "alice".into(),
                role: "readers".into(),
            },
            "user \"alice\" does not hold role \"readers\"",
        ),
        (
            AuthChange::RoleRevoke {
                role: "doctors".into(),
                prefix: b("billing/"),
            },
            "role \"doctors\" has no grant on prefix \"billing/\"",
        ),
    ];
    for (c, want) in cases {
        assert_eq!(refusal(change(&mut s, c, Some("root"))), want);
    }
    let long = AuthChange::UserAdd {
        user: "u".repeat(AUTH_NAME_BYTES_MAX + 1),
    };
    assert!(matches!(
        change(&mut s, long, Some("root")),
        Err(ErrorReply::Invalid { .. })
    ));
}

#[test]
fn deleting_a_role_takes_it_from_its_users_and_a_grant_replaces_the_same_prefix() {
    let mut s = clinic();
    ok(
        &mut s,
        AuthChange::RoleGrant {
            role: "doctors".into(),
            prefix: b("patient/"),
            perm: Permission::Read,
        },
    );
    let write = s.authorize(Some("alice"), [Need::Key(b"patient/1", Permission::Write)]);
    assert!(write.is_err(), "the read grant replaced readwrite");
    ok(
        &mut s,
        AuthChange::RoleDelete {
            role: "doctors".into(),
        },
    );
    let alice = s.status().users.into_iter().find(|u| u.name == "alice");
    assert_eq!(alice.map(|u| u.roles), Some(vec![]));
}

#[test]
fn the_state_is_bounded() {
    let mut s = AuthState::default();
    ok(&mut s, AuthChange::RoleAdd { role: "big".into() });
    let mut refused = None;
    for i in 0..1000u32 {
        let c = AuthChange::RoleGrant {
            role: "big".into(),
            prefix: Bytes::from(format!("{i:04}{}", "p".repeat(4000))),
            perm: Permission::Read,
        };
        if let Err(e) = change(&mut s, c, None) {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.unwrap_or_else(|| panic!("never refused"));
    assert!(
        matches!(&e, ErrorReply::AuthRefused { reason } if reason.contains("bytes")),
        "{e}"
    );
    assert!(s.status().bytes() <= AUTH_STATE_BYTES_MAX);
    assert!(at > 200, "refused only near the limit, at {at}");
}

#[test]
fn the_status_round_trips_and_a_bad_one_is_refused() {
    let s = clinic();
    let status = s.status();
    assert_eq!(AuthState::from_status(&status), Ok(s.clone()));
    let mut no_admin = status.clone();
    for u in &mut no_admin.users {
        u.roles.retain(|r| r != ADMIN_ROLE);
    }
    assert!(AuthState::from_status(&no_admin).is_err_and(|e| e.contains("admin")));
    let mut unknown = status.clone();
    unknown.users[0].roles.push("ghost".into());
    assert!(AuthState::from_status(&unknown).is_err_and(|e| e.contains("ghost")));
    let mut twice = status;
    let first = twice.users[0].clone();
    twice.users.push(first);
    assert!(AuthState::from_status(&twice).is_err());
}
