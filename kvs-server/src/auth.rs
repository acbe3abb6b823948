//! Users, roles and permissions as replicated state, and the permission checks made with it.
//!
//! The state ([`AuthState`]) changes only by applying [`AuthChange`]s chosen in the log, in
//! slot order, on every replica, and a snapshot carries it: every replica holds the same
//! state at the same slot. It is read in two places:
//! - by the replica that receives a request, against its applied state, to refuse early
//!   ([`crate::node`]); linearizable reads are checked when the leader has confirmed them,
//!   against a state at least as new as the read;
//! - by the state machine when it applies a command, against the state as of that slot, with
//!   the identity the command carries ([`wire::Origin`]): a grant revoked in an earlier slot
//!   applies to every later write, whatever the receiving replica saw.
//!
//! While auth is disabled every request is allowed (as in etcd). While it is enabled, at
//! least one user holds [`ADMIN_ROLE`] (a change that would remove the last one is refused),
//! and enabling it is refused unless the identity asking is such a user.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use wire::auth::{show_key, Grant, RoleInfo, UserInfo, AUTH_STATE_BYTES_MAX};
use wire::{AuthChange, AuthStatus, ErrorReply, Permission, TxnOp, WriteOp, ADMIN_ROLE};

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// `perm` on one key.
    Key(&'a [u8], Permission),
    /// `perm` on every key of `[from, to)` (`to`: `None`, to the last key).
    Range(&'a [u8], Option<&'a [u8]>, Permission),
    /// The admin role (membership changes, backups, auth changes and the auth state).
    Admin,
    /// Only to be a user (registering a session).
    User,
}

/// The replicated users, roles and grants, and whether they are enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    enabled: bool,
    /// Role name -> (prefix -> permission). [`ADMIN_ROLE`] is not stored: it is built in.
    roles: BTreeMap<String, BTreeMap<Bytes, Permission>>,
    /// User name -> the roles it holds.
    users: BTreeMap<String, BTreeSet<String>>,
}

impl AuthState {
    /// Whether requests are checked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True when auth is disabled and no user or role exists: the state of a new cluster,
    /// and of one that never used auth.
    pub fn is_empty(&self) -> bool {
        !self.enabled && self.roles.is_empty() && self.users.is_empty()
    }

    /// The whole state, for a client or a snapshot: roles (the built-in admin role first
    /// among equals, in name order with the others) and users in name order.
    pub fn status(&self) -> AuthStatus {
        let admin = RoleInfo {
            name: ADMIN_ROLE.to_owned(),
            grants: vec![Grant {
                prefix: Bytes::new(),
                perm: Permission::ReadWrite,
            }],
        };
        let mut roles: Vec<RoleInfo> = self
            .roles
            .iter()
            .map(|(name, grants)| RoleInfo {
                name: name.clone(),
                grants: grants
                    .iter()
                    .map(|(prefix, &perm)| Grant {
                        prefix: prefix.clone(),
                        perm,
                    })
                    .collect(),
            })
            .collect();
        let at = roles.partition_point(|r| r.name.as_str() < ADMIN_ROLE);
        roles.insert(at, admin);
        let users = self
            .users
            .iter()
            .map(|(name, roles)| UserInfo {
                name: name.clone(),
                roles: roles.iter().cloned().collect(),
            })
            .collect();
        AuthStatus {
            enabled: self.enabled,
            roles,
            users,
        }
    }

    /// Rebuilds the state from [`AuthState::status`] (a snapshot's), checking it: valid and
    /// distinct names, roles held that exist, the admin role as built in, and a user holding
    /// admin if auth is enabled.
    pub fn from_status(status: &AuthStatus) -> Result<AuthState, String> {
        let mut state = AuthState {
            enabled: status.enabled,
            ..AuthState::default()
        };
        for role in &status.roles {
            wire::auth::validate_name("role", &role.name)?;
            if role.name == ADMIN_ROLE {
                continue;
            }
            let grants: BTreeMap<Bytes, Permission> = role
                .grants
                .iter()
                .map(|g| (g.prefix.clone(), g.perm))
                .collect();
            if grants.len() != role.grants.len() {
                return Err(format!("role {:?} has two grants on one prefix", role.name));
            }
            if state.roles.insert(role.name.clone(), grants).is_some() {
                return Err(format!("role {:?} is listed twice", role.name));
            }
        }
        for user in &status.users {
            wire::auth::validate_name("user", &user.name)?;
            let roles: BTreeSet<String> = user.roles.iter().cloned().collect();
            if let Some(unknown) = roles.iter().find(|r| !state.role_exists(r)) {
                return Err(format!(
                    "user {:?} holds role {unknown:?}, which does not exist",
                    user.name
                ));
            }
            if state.users.insert(user.name.clone(), roles).is_some() {
                return Err(format!("user {:?} is listed twice", user.name));
            }
        }
        if state.enabled && state.admins() == 0 {
            return Err("auth is enabled but no user holds the admin role".to_owned());
        }
        Ok(state)
    }

    /// Applies a change `requester` asked for (the permission to make it was checked by
    /// [`AuthState::authorize`]). A change that does not apply to the state as it is
    /// changes nothing and says why ([`ErrorReply::AuthRefused`]). Deterministic: every
    /// replica decides the same at the same slot.
    pub fn apply(
        &mut self,
        change: &AuthChange,
        requester: Option<&str>,
    ) -> Result<(), ErrorReply> {
        change.validate()?;
        let mut next = self.clone();
        next.change(change, requester).map_err(refused)?;
        let bytes = next.status().bytes();
        if bytes > AUTH_STATE_BYTES_MAX {
            return Err(refused(format!(
                "the users, roles and grants would take {bytes} bytes, more than the \
                 {AUTH_STATE_BYTES_MAX} allowed"
            )));
        }
        debug_assert!(!next.enabled || next.admins() > 0);
        *self = next;
        Ok(())
    }

    fn change(&mut self, change: &AuthChange, requester: Option<&str>) -> Result<(), String> {
        match change {
            AuthChange::Enable => self.enable(requester),
            AuthChange::Disable => {
                self.enabled = false;
                Ok(())
            }
            AuthChange::RoleAdd { .. }
            | AuthChange::RoleDelete { .. }
            | AuthChange::RoleGrant { .. }
            | AuthChange::RoleRevoke { .. } => self.change_role(change),
            AuthChange::UserAdd { .. }
            | AuthChange::UserDelete { .. }
            | AuthChange::UserGrantRole { .. }
            | AuthChange::UserRevokeRole { .. } => self.change_user(change),
        }
    }

    fn change_role(&mut self, change: &AuthChange) -> Result<(), String> {
        match change {
            AuthChange::RoleAdd { role } => {
                if self.role_exists(role) {
                    return Err(format!("role {role:?} exists"));
                }
                self.roles.insert(role.clone(), BTreeMap::new());
                Ok(())
            }
            AuthChange::RoleDelete { role } => {
                self.custom_role(role)?;
                self.roles.remove(role);
                for held in self.users.values_mut() {
                    held.remove(role);
                }
                Ok(())
            }
            AuthChange::RoleGrant { role, prefix, perm } => {
                self.custom_role(role)?.insert(prefix.clone(), *perm);
                Ok(())
            }
            AuthChange::RoleRevoke { role, prefix } => {
                if self.custom_role(role)?.remove(prefix).is_none() {
                    return Err(format!(
                        "role {role:?} has no grant on prefix {}",
                        show_key(prefix)
                    ));
                }
                Ok(())
            }
            // `change` routes only role changes here.
            _ => Ok(()),
        }
    }

    fn change_user(&mut self, change: &AuthChange) -> Result<(), String> {
        match change {
            AuthChange::UserAdd { user } => {
                if self.users.contains_key(user) {
                    return Err(format!("user {user:?} exists"));
                }
                self.users.insert(user.clone(), BTreeSet::new());
                Ok(())
            }
            AuthChange::UserDelete { user } => {
                self.user(user)?;
                self.keep_an_admin(user, "deleting it")?;
                self.users.remove(user);
                Ok(())
            }
            AuthChange::UserGrantRole { user, role } => {
                if !self.role_exists(role) {
                    return Err(format!("role {role:?} does not exist"));
                }
                self.user(user)?;
                if let Some(held) = self.users.get_mut(user) {
                    held.insert(role.clone());
                }
                Ok(())
            }
            AuthChange::UserRevokeRole { user, role } => {
                if !self.user(user)?.contains(role) {
                    return Err(format!("user {user:?} does not hold role {role:?}"));
                }
                if role == ADMIN_ROLE {
                    self.keep_an_admin(user, "taking the admin role from it")?;
                }
                if let Some(held) = self.users.get_mut(user) {
                    held.remove(role);
                }
                Ok(())
            }
            // `change` routes only user changes here.
            _ => Ok(()),
        }
    }

    fn enable(&mut self, requester: Option<&str>) -> Result<(), String> {
        let why = "so that someone can still administer the cluster, auth is enabled only by \
                   a user holding the admin role";
        match requester {
            None => Err(format!(
                "this request has no identity; {why} (connect with that user's client \
                 certificate: --cert/--key)"
            )),
            Some(name) if !self.is_admin(name) => Err(format!(
                "{name:?} is not a user holding the admin role; {why} (kvs-client user add \
                 {name}; kvs-client user grant-role {name} {ADMIN_ROLE})"
            )),
            Some(_) => {
                self.enabled = true;
                Ok(())
            }
        }
    }

    /// Refuses to remove the admin role from `user` if it is the last user holding it
    /// while auth is enabled.
    fn keep_an_admin(&self, user: &str, doing: &str) -> Result<(), String> {
        if self.enabled && self.is_admin(user) && self.admins() == 1 {
            return Err(format!(
                "{user:?} is the last user holding the admin role while auth is enabled, and \
                 {doing} would leave nobody to administer the cluster; give another user the \
                 admin role first, or disable auth"
            ));
        }
        Ok(())
    }

    fn role_exists(&self, role: &str) -> bool {
        role == ADMIN_ROLE || self.roles.contains_key(role)
    }

    /// A role that may be changed: it exists and is not the built-in admin role.
    fn custom_role(&mut self, role: &str) -> Result<&mut BTreeMap<Bytes, Permission>, String> {
        if role == ADMIN_ROLE {
            return Err(format!(
                "the {ADMIN_ROLE} role is built in: it grants everything and cannot be \
                 deleted or changed"
            ));
        }
        self.roles
            .get_mut(role)
            .ok_or_else(|| format!("role {role:?} does not exist"))
    }

    fn user(&self, user: &str) -> Result<&BTreeSet<String>, String> {
        self.users
            .get(user)
            .ok_or_else(|| format!("user {user:?} does not exist"))
    }

    fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|r| r.contains(ADMIN_ROLE))
    }

    fn admins(&self) -> usize {
        self.users
            .values()
            .filter(|r| r.contains(ADMIN_ROLE))
            .count()
    }

    /// Whether `identity` may do everything `needs` lists: always while auth is disabled;
    /// otherwise the identity must be a user, and a user holding the admin role may do
    /// anything, another only what its roles grant. The refusal names the identity, what
    /// it asked for and why.
    pub fn authorize<'a>(
        &self,
        identity: Option<&str>,
        needs: impl IntoIterator<Item = Need<'a>>,
    ) -> Result<(), ErrorReply> {
        if !self.enabled {
            return Ok(());
        }
        let Some(name) = identity else {
            return Err(ErrorReply::PermissionDenied {
                identity: None,
                reason: "this request has no identity (connect with a client certificate: \
                         --cert/--key)"
                    .to_owned(),
            });
        };
        let denied = |reason: String| ErrorReply::PermissionDenied {
            identity: Some(name.to_owned()),
            reason,
        };
        let Some(held) = self.users.get(name) else {
            return Err(denied(format!(
                "{name:?} is not a user (an admin adds it: kvs-client user add {name})"
            )));
        };
        if held.contains(ADMIN_ROLE) {
            return Ok(());
        }
        let grants = || {
            held.iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|g| g.iter())
        };
        for need in needs {
            match need {
                Need::User => {}
                Need::Admin => {
                    return Err(denied(format!(
                        "{name:?} may not do this: it needs the {ADMIN_ROLE} role"
                    )))
                }
                Need::Key(key, perm) => {
                    if !grants().any(|(p, g)| g.covers(perm) && key.starts_with(p)) {
                        return Err(denied(format!(
                            "{name:?} may not {} {} (no role grants {} on it)",
                            verb(perm),
                            show_key(key),
                            perm
                        )));
                    }
                }
                Need::Range(from, to, perm) => {
                    if !grants().any(|(p, g)| g.covers(perm) && covers_range(p, from, to)) {
                        let end = to.map_or_else(|| "the last key".to_owned(), show_key);
                        return Err(denied(format!(
                            "{name:?} may not {} the range from {} to {end} (no role grants \
                             {} on all of it)",
                            verb(perm),
                            show_key(from),
                            perm
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// [`AuthState::authorize`] for a command applied, or proposed, as `op`.
    pub fn authorize_write(&self, identity: Option<&str>, op: &WriteOp) -> Result<(), ErrorReply> {
        if !self.enabled {
            return Ok(());
        }
        let needs = write_needs(op);
        self.authorize(identity, needs)
    }
}

/// What applying `op` needs.
pub fn write_needs(op: &WriteOp) -> Vec<Need<'_>> {
    use Permission::{Read, Write};
    match op {
        WriteOp::Put { key, .. } | WriteOp::Delete { key } => vec![Need::Key(key, Write)],
        WriteOp::Cas { key, .. } => vec![Need::Key(key, Read), Need::Key(key, Write)],
        WriteOp::DeleteRange { from, to } => vec![Need::Range(from, to.as_deref(), Write)],
        WriteOp::Txn(txn) => {
            let compares = txn.compares.iter().map(|c| Need::Key(c.key(), Read));
            let ops = txn
                .success
                .iter()
                .chain(&txn.failure)
                .map(|o: &TxnOp| Need::Key(o.key(), Write));
            compares.chain(ops).collect()
        }
        WriteOp::RegisterSession => vec![Need::User],
        WriteOp::Auth(_) => vec![Need::Admin],
    }
}

/// Whether a grant on `prefix` covers every key of `[from, to)`: `from` starts with the
/// prefix and the range ends no later than the prefix's keys do (an empty prefix covers
/// everything).
pub fn covers_range(prefix: &[u8], from: &[u8], to: Option<&[u8]>) -> bool {
    if !from.starts_with(prefix) {
        return false;
    }
    match wire::prefix_end(prefix) {
        // The prefix's keys go to the last key (it is empty or all 0xff).
        None => true,
        Some(end) => to.is_some_and(|to| to <= &end[..]),
    }
}

fn verb(perm: Permission) -> &'static str {
    match perm {
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::ReadWrite => "read and write",
    }
}

fn refused(reason: String) -> ErrorReply {
    ErrorReply::AuthRefused { reason }
}

#[cfg(test)]
mod tests;
