//! Users, roles and permissions: the changes a client asks for ([`AuthChange`]), the state
//! it can read back ([`AuthStatus`]) and their limits.
//!
//! The model, as etcd's RBAC: a **role** grants [`Permission`]s (read, write or both) on
//! key prefixes; a **user** holds roles; a client's identity is the subject common name of
//! its verified TLS certificate, and a request is allowed when the user of that name holds
//! a role granting what it needs. The built-in role [`ADMIN_ROLE`] grants everything (every
//! key, read and write, and the admin operations: membership, backups, auth changes); it
//! always exists and cannot be deleted or changed. While auth is disabled every request is
//! allowed. The state is replicated: every change goes through the log like a write.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::client::{ErrorReply, KEY_BYTES_MAX};

/// The built-in role that grants everything and the admin operations.
pub const ADMIN_ROLE: &str = "admin";

/// Longest user or role name, in bytes.
pub const AUTH_NAME_BYTES_MAX: usize = 256;

/// Most bytes the whole auth state may take ([`AuthStatus::bytes`], 1 MiB): a change that
/// would make it larger is refused. It keeps [`AuthStatus`] well inside one frame.
pub const AUTH_STATE_BYTES_MAX: usize = 1024 * 1024;

/// Bytes counted per user, role, grant or role membership on top of its names and prefix,
/// for [`AuthStatus::bytes`] (about what its encoding adds).
const ENTRY_OVERHEAD_BYTES: usize = 16;

// The largest auth state fits a default frame with room for the envelope.
const _: () = assert!(AUTH_STATE_BYTES_MAX + 1024 <= crate::codec::FRAME_BYTES_MAX_DEFAULT);

/// What a grant allows on the keys under its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// Reading (get, range reads, the compares of a transaction).
    Read,
    /// Writing (put, delete, compare-and-swap, range deletes, transaction operations).
    Write,
    /// Both.
    ReadWrite,
}

impl Permission {
    /// Whether a grant of `self` allows what `need` asks for.
    pub fn covers(self, need: Permission) -> bool {
        self == Permission::ReadWrite || self == need
    }

    /// The name the command line uses: `read`, `write` or `readwrite`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::ReadWrite => "readwrite",
        }
    }

    /// Parses [`Permission::name`] (case-insensitive; `rw` and `read-write` too).
    pub fn parse(text: &str) -> Option<Permission> {
        match text.to_ascii_lowercase().as_str() {
            "read" | "r" => Some(Permission::Read),
            "write" | "w" => Some(Permission::Write),
            "readwrite" | "read-write" | "rw" => Some(Permission::ReadWrite),
            _ => None,
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A change to the users, roles and grants, or turning auth on or off: agreed through the
/// log ([`crate::Op::Auth`], [`crate::WriteOp::Auth`]) and applied in slot order on every
/// replica. While auth is enabled only a user holding [`ADMIN_ROLE`] may make one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Turns permission checks on. Refused unless the identity asking is a user holding
    /// [`ADMIN_ROLE`], so that someone can still administer the cluster afterwards.
    Enable,
    /// Turns permission checks off: every request is allowed again.
    Disable,
    /// Adds a role without grants.
    RoleAdd {
        /// The role's name.
        role: String,
    },
    /// Deletes a role (and takes it from every user holding it).
    RoleDelete {
        /// The role's name.
        role: String,
    },
    /// Grants `perm` on every key starting with `prefix` (empty: every key) to a role,
    /// replacing the role's grant on that same prefix if it has one.
    RoleGrant {
        /// The role's name.
        role: String,
        /// The key prefix.
        prefix: Bytes,
        /// What it allows.
        perm: Permission,
    },
    /// Takes a role's grant on exactly `prefix` away.
    RoleRevoke {
        /// The role's name.
        role: String,
        /// The key prefix of the grant.
        prefix: Bytes,
    },
    /// Adds a user without roles. Its name is the common name of its client certificate.
    UserAdd {
        /// The user's name.
        user: String,
    },
    /// Deletes a user.
    UserDelete {
        /// The user's name.
        user: String,
    },
    /// Gives a user a role (nothing changes if it holds it already).
    UserGrantRole {
        /// The user's name.
        user: String,
        /// The role's name.
        role: String,
    },
    /// Takes a role from a user.
    UserRevokeRole {
        /// The user's name.
        user: String,
        /// The role's name.
        role: String,
    },
}

impl AuthChange {
    /// Checks the names and the prefix against their limits: a pure function.
    pub fn validate(&self) -> Result<(), ErrorReply> {
        let invalid = |reason: String| ErrorReply::Invalid { reason };
        let check = |what: &str, name: &str| validate_name(what, name).map_err(invalid);
        match self {
            AuthChange::Enable | AuthChange::Disable => Ok(()),
            AuthChange::RoleAdd { role } | AuthChange::RoleDelete { role } => check("role", role),
            AuthChange::RoleGrant { role, prefix, .. }
            | AuthChange::RoleRevoke { role, prefix } => {
                check("role", role)?;
                if prefix.len() > KEY_BYTES_MAX {
                    return Err(ErrorReply::TooLarge {
                        what: "prefix".to_owned(),
                        size: prefix.len() as u64,
                        max: KEY_BYTES_MAX as u64,
                    });
                }
                Ok(())
            }
            AuthChange::UserAdd { user } | AuthChange::UserDelete { user } => check("user", user),
            AuthChange::UserGrantRole { user, role }
            | AuthChange::UserRevokeRole { user, role } => {
                check("user", user)?;
                check("role", role)
            }
        }
    }
}

/// Checks a user or role name: 1 to [`AUTH_NAME_BYTES_MAX`] bytes, no control character.
/// `what` names it in the error ("user", "role").
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if name.len() > AUTH_NAME_BYTES_MAX {
        return Err(format!(
            "the {what} name is {} bytes long, at most {AUTH_NAME_BYTES_MAX} allowed",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "the {what} name {:?} holds a control character",
            name
        ));
    }
    Ok(())
}

/// One grant of a role: `perm` on every key starting with `prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The key prefix (empty: every key).
    pub prefix: Bytes,
    /// What it allows.
    pub perm: Permission,
}

/// A role and its grants, in prefix order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// The role's name.
    pub name: String,
    /// Its grants, in prefix order. [`ADMIN_ROLE`] is listed with one grant, readwrite on
    /// every key (it also allows the admin operations).
    pub grants: Vec<Grant>,
}

/// A user and its roles, in name order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's name (the common name of its client certificate).
    pub name: String,
    /// The roles it holds, in name order.
    pub roles: Vec<String>,
}

/// The whole auth state: the answer to [`crate::Op::AuthStatus`] (and how a snapshot
/// stores it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStatus {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Every role, in name order, [`ADMIN_ROLE`] included.
    pub roles: Vec<RoleInfo>,
    /// Every user, in name order.
    pub users: Vec<UserInfo>,
}

impl AuthStatus {
    /// The size the limit [`AUTH_STATE_BYTES_MAX`] applies to: names and prefixes, plus a
    /// small fixed amount per user, role, grant and role held.
    pub fn bytes(&self) -> usize {
        let roles: usize = self
            .roles
            .iter()
            .map(|r| {
                let grants: usize = r
                    .grants
                    .iter()
                    .map(|g| g.prefix.len() + ENTRY_OVERHEAD_BYTES)
                    .sum();
                r.name.len() + ENTRY_OVERHEAD_BYTES + grants
            })
            .sum();
        let users: usize = self
            .users
            .iter()
            .map(|u| {
                let held: usize = u.roles.iter().map(|r| r.len() + ENTRY_OVERHEAD_BYTES).sum();
                u.name.len() + ENTRY_OVERHEAD_BYTES + held
            })
            .sum();
        roles + users
    }
}

/// Shows a key or prefix for a message: in double quotes, bytes that are not printable
/// ASCII escaped (`\xff`).
pub fn show_key(key: &[u8]) -> String {
    format!("\"{}\"", key.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_cover_what_they_name() {
        use Permission::*;
        assert!(ReadWrite.covers(Read) && ReadWrite.covers(Write));
        assert!(Read.covers(Read) && !Read.covers(Write));
        assert!(Write.covers(Write) && !Write.covers(Read));
        for p in [Read, Write, ReadWrite] {
            assert_eq!(Permission::parse(p.name()), Some(p));
        }
        assert_eq!(Permission::parse("RW"), Some(ReadWrite));
        assert_eq!(Permission::parse("all"), None);
    }

    #[test]
    fn names_and_prefixes_are_checked() {
        let ok = AuthChange::RoleGrant {
            role: "doctors".into(),
            prefix: Bytes::from_static(b"patient/"),
            perm: Permission::ReadWrite,
        };
        assert_eq!(ok.validate(), Ok(()));
        let empty = AuthChange::UserAdd {
            user: String::new(),
        };
        assert!(
            matches!(empty.validate(), Err(ErrorReply::Invalid { reason }) if reason.contains("empty"))
        );
        let long = AuthChange::RoleAdd {
            role: "r".repeat(AUTH_NAME_BYTES_MAX + 1),
        };
        assert!(matches!(long.validate(), Err(ErrorReply::Invalid { .. })));
        let control = AuthChange::UserGrantRole {
            user: "a\nb".into(),
            role: "r".into(),
        };
        assert!(matches!(
            control.validate(),
            Err(ErrorReply::Invalid { .. })
        ));
        let huge = AuthChange::RoleRevoke {
            role: "r".into(),
            prefix: Bytes::from(vec![b'p'; KEY_BYTES_MAX + 1]),
        };
        assert!(matches!(huge.validate(), Err(ErrorReply::TooLarge { .. })));
    }

    #[test]
    fn keys_are_shown_quoted_and_escaped() {
        assert_eq!(show_key(b"patient/1"), "\"patient/1\"");
        assert_eq!(show_key(b"a\xff\""), "\"a\\xff\\\"\"");
    }
}
