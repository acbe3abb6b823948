//! The permission check a replica makes when it receives a request, against its applied
//! auth state ([`crate::auth`]): a request refused here never reaches the log. Writes are
//! checked again, authoritatively, by every replica when they are applied; linearizable
//! reads are checked once the leader has confirmed them, against a state at least as new as
//! the read (see [`read_needs`]). Status, health and the member list need nothing.

use wire::{ErrorReply, Origin, Permission, RangeRequest, WriteOp};

use super::pending::ReadQuery;
use super::requests::Route;
use crate::auth::{write_needs, AuthState, Need};

/// Whether `identity` may make the request routed as `route`, as far as can be told when
/// it arrives. `unsafe_local_reads`: linearizable reads are answered at once, so they are
/// checked now.
pub(crate) fn check_at_receipt(
    auth: &AuthState,
    route: &Route,
    identity: Option<&str>,
    unsafe_local_reads: bool,
) -> Result<(), ErrorReply> {
    if !auth.enabled() {
        return Ok(());
    }
    match route {
        Route::Status | Route::MemberList | Route::Refuse(_) => Ok(()),
        Route::ReadStale(key) | Route::ReadLocalUnsafe(key) => {
            auth.authorize(identity, [Need::Key(key, Permission::Read)])
        }
        Route::RangeStale(req) => auth.authorize(identity, [range_need(req)]),
        Route::RangeIndex(req) if unsafe_local_reads => auth.authorize(identity, [range_need(req)]),
        // Checked when the leader has confirmed them.
        Route::ReadIndex(_) | Route::RangeIndex(_) | Route::AuthStatus => Ok(()),
        Route::Write(_, op) => auth.authorize(identity, write_needs(op)),
        Route::MemberChange { .. } | Route::SnapshotSave | Route::SnapshotRead { .. } => {
            auth.authorize(identity, [Need::Admin])
        }
    }
}

/// What a linearizable read needs, checked when the leader has confirmed it. (A check at
/// receipt would do too, but this one uses a state at least as new as the read, and it
/// lets `endpoint health` tell a leader that confirmed a read it refused, as etcd does.)
pub(crate) fn read_needs(query: &ReadQuery) -> Need<'_> {
    match query {
        ReadQuery::Key(key) => Need::Key(key, Permission::Read),
        ReadQuery::Range(req) => range_need(req),
        ReadQuery::Auth => Need::Admin,
    }
}

/// The origin a write proposed for `identity` carries: the identity while auth is enabled
/// here, and always for an auth change (enabling checks who asks); none otherwise, so that a
/// cluster that does not use auth replicates its commands in the layout of earlier versions
/// ([`wire::Command::encode`]). A write proposed without one just before auth is enabled is
/// refused when it is applied (it has no identity then): a definite refusal, and the client
/// may send it again.
pub(crate) fn origin_for(
    auth: &AuthState,
    op: &WriteOp,
    identity: Option<String>,
) -> Option<Origin> {
    let needed = auth.enabled() || matches!(op, WriteOp::Auth(_));
    needed.then_some(Origin { identity })
}

fn range_need(req: &RangeRequest) -> Need<'_> {
    Need::Range(&req.from, req.to.as_deref(), Permission::Read)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wire::{
        AuthChange, ClientRequest, MemberChange, Op, RangeMode, ReadConsistency, Session,
        ADMIN_ROLE,
    };

    use super::super::requests::route;
    use super::*;

    /// root holds admin, reader may read "r/"; auth enabled.
    fn enabled() -> AuthState {
        let mut auth = AuthState::default();
        let changes = [
            AuthChange::UserAdd {
                user: "root".into(),
            },
            AuthChange::UserAdd {
                user: "reader".into(),
            },
            AuthChange::RoleAdd { role: "ro".into() },
            AuthChange::RoleGrant {
                role: "ro".into(),
                prefix: Bytes::from_static(b"r/"),
                perm: Permission::Read,
            },
            AuthChange::UserGrantRole {
                user: "reader".into(),
                role: "ro".into(),
            },
            AuthChange::UserGrantRole {
                user: "root".into(),
                role: ADMIN_ROLE.into(),
            },
            AuthChange::Enable,
        ];
        for c in changes {
            auth.apply(&c, Some("root"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        auth
    }

    fn check(auth: &AuthState, op: Op, who: Option<&str>) -> Result<(), ErrorReply> {
        let session = op.is_write().then_some(Session {
            client_id: 5,
            seq: 1,
        });
        let routed = route(ClientRequest { id: 1, session, op }, false);
        check_at_receipt(auth, &routed, who, false)
    }

    fn get(key: &'static [u8], consistency: ReadConsistency) -> Op {
        Op::Get {
            key: Bytes::from_static(key),
            consistency,
        }
    }

    #[test]
    fn status_and_member_list_need_nothing_admin_operations_need_admin() {
        let auth = enabled();
        assert_eq!(check(&auth, Op::Status, None), Ok(()));
        assert_eq!(check(&auth, Op::MemberList, None), Ok(()));
        let change = Op::MemberChange {
            expected: 1,
            change: MemberChange::Remove { id: 3 },
            force: false,
        };
        for op in [
            change,
            Op::SnapshotSave,
            Op::SnapshotRead {
                stream: 1,
                offset: 0,
            },
        ] {
            let shown = format!("{op:?}");
            assert!(
                matches!(
                    check(&auth, op.clone(), Some("reader")),
                    Err(ErrorReply::PermissionDenied { .. })
                ),
                "{shown}"
            );
            assert!(check(&auth, op.clone(), None).is_err(), "{shown}");
            assert_eq!(check(&auth, op, Some("root")), Ok(()), "{shown}");
        }
        let add = Op::Auth(AuthChange::UserAdd { user: "x".into() });
        assert!(check(&auth, add.clone(), Some("reader")).is_err());
        assert_eq!(check(&auth, add, Some("root")), Ok(()));
    }

    #[test]
    fn stale_reads_and_writes_are_checked_at_once_linearizable_reads_when_confirmed() {
        let auth = enabled();
        assert_eq!(
            check(&auth, get(b"r/1", ReadConsistency::Stale), Some("reader")),
            Ok(())
        );
        assert!(check(&auth, get(b"x/1", ReadConsistency::Stale), Some("reader")).is_err());
        // A linearizable read passes here, and is checked once confirmed.
        assert_eq!(
            check(
                &auth,
                get(b"x/1", ReadConsistency::Linearizable),
                Some("reader")
            ),
            Ok(())
        );
        let key = ReadQuery::Key(Bytes::from_static(b"x/1"));
        assert!(auth.authorize(Some("reader"), [read_needs(&key)]).is_err());
        assert!(auth
            .authorize(Some("root"), [read_needs(&ReadQuery::Auth)])
            .is_ok());
        assert!(auth
            .authorize(Some("reader"), [read_needs(&ReadQuery::Auth)])
            .is_err());
        let range = |from: &'static [u8], to: Option<&'static [u8]>| {
            Op::Range(wire::RangeRequest {
                from: Bytes::from_static(from),
                to: to.map(Bytes::from_static),
                limit: None,
                mode: RangeMode::Entries,
                consistency: ReadConsistency::Stale,
            })
        };
        assert_eq!(
            check(&auth, range(b"r/", Some(b"r0")), Some("reader")),
            Ok(())
        );
        assert!(check(&auth, range(b"r/", None), Some("reader")).is_err());
        let put = Op::Put {
            key: Bytes::from_static(b"r/1"),
            value: Bytes::from_static(b"v"),
        };
        let denied = check(&auth, put.clone(), Some("reader"));
        assert!(
            matches!(&denied, Err(ErrorReply::PermissionDenied { identity: Some(i), reason })
                if i == "reader" && reason.contains("may not write \"r/1\"")),
            "{denied:?}"
        );
        assert_eq!(check(&auth, put.clone(), Some("root")), Ok(()));
        // Disabled: everything passes.
        assert_eq!(check(&AuthState::default(), put, None), Ok(()));
        assert_eq!(check(&auth, Op::RegisterSession, Some("reader")), Ok(()));
        assert!(check(&auth, Op::RegisterSession, Some("nobody")).is_err());
    }

    #[test]
    fn writes_carry_their_identity_when_auth_is_in_use() {
        let put = WriteOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        };
        let who = || Some("alice".to_owned());
        let carried = Some(Origin { identity: who() });
        assert_eq!(origin_for(&enabled(), &put, who()), carried);
        assert_eq!(origin_for(&AuthState::default(), &put, who()), None);
        let enable = WriteOp::Auth(AuthChange::Enable);
        assert_eq!(origin_for(&AuthState::default(), &enable, who()), carried);
        let none = Some(Origin { identity: None });
        assert_eq!(origin_for(&AuthState::default(), &enable, None), none);
    }
}
