//! Users, roles and permissions: auth changes go through the log like writes (under the
//! write session, exactly once); the auth state is read linearizably through the leader.
//! While auth is enabled both need the admin role.

use bytes::Bytes;
use wire::{AuthChange, AuthStatus, Op, Permission, Reply};

use super::send::Route;
use super::{unexpected, unexpected_to_write, Client};
use crate::Error;

impl Client {
    /// Makes one auth change (see [`AuthChange`]). A change that does not apply (an
    /// unknown role, a user that exists, the last admin, ...) is
    /// [`Error::Rejected`] with [`wire::ErrorReply::AuthRefused`]; one the requester may
    /// not make is [`Error::PermissionDenied`]. Nothing changed then.
    pub async fn auth_change(&self, change: AuthChange) -> Result<(), Error> {
        match self.write(Op::Auth(change)).await? {
            (_, Reply::AuthChanged) => Ok(()),
            (endpoint, other) => Err(unexpected_to_write(endpoint, "AuthChanged", &other)),
        }
    }

    /// The whole auth state: whether it is enabled, every role with its grants, every
    /// user with its roles.
    pub async fn auth_status(&self) -> Result<AuthStatus, Error> {
        match self.read(Op::AuthStatus, Route::Leader).await? {
            (_, Reply::AuthStatus(status)) => Ok(*status),
            (endpoint, other) => Err(unexpected(endpoint, "AuthStatus", &other)),
        }
    }

    /// Turns permission checks on. Refused unless this client's identity (its
    /// certificate's common name) is a user holding the admin role.
    pub async fn auth_enable(&self) -> Result<(), Error> {
        self.auth_change(AuthChange::Enable).await
    }

    /// Turns permission checks off (needs the admin role while they are on).
    pub async fn auth_disable(&self) -> Result<(), Error> {
        self.auth_change(AuthChange::Disable).await
    }

    /// Adds a role without grants.
    pub async fn role_add(&self, role: impl Into<String>) -> Result<(), Error> {
        let role = role.into();
        self.auth_change(AuthChange::RoleAdd { role }).await
    }

    /// Deletes a role, taking it from every user holding it.
    pub async fn role_delete(&self, role: impl Into<String>) -> Result<(), Error> {
        let role = role.into();
        self.auth_change(AuthChange::RoleDelete { role }).await
    }

    /// Grants `perm` on every key starting with `prefix` (empty: every key) to a role,
    /// replacing its grant on that prefix if it has one.
    pub async fn role_grant(
        &self,
        role: impl Into<String>,
        prefix: impl Into<Bytes>,
        perm: Permission,
    ) -> Result<(), Error> {
        let change = AuthChange::RoleGrant {
            role: role.into(),
            prefix: prefix.into(),
            perm,
        };
        self.auth_change(change).await
    }

    /// Takes a role's grant on exactly `prefix` away.
    pub async fn role_revoke(
        &self,
        role: impl Into<String>,
        prefix: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let change = AuthChange::RoleRevoke {
            role: role.into(),
            prefix: prefix.into(),
        };
        self.auth_change(change).await
    }

    /// Adds a user (named as its client certificate's common name) without roles.
    pub async fn user_add(&self, user: impl Into<String>) -> Result<(), Error> {
        let user = user.into();
        self.auth_change(AuthChange::UserAdd { user }).await
    }

    /// Deletes a user.
    pub async fn user_delete(&self, user: impl Into<String>) -> Result<(), Error> {
        let user = user.into();
        self.auth_change(AuthChange::UserDelete { user }).await
    }

    /// Gives a user a role.
    pub async fn user_grant_role(
        &self,
        user: impl Into<String>,
        role: impl Into<String>,
    ) -> Result<(), Error> {
        let change = AuthChange::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        self.auth_change(change).await
    }

    /// Takes a role from a user.
    pub async fn user_revoke_role(
        &self,
        user: impl Into<String>,
        role: impl Into<String>,
    ) -> Result<(), Error> {
        let change = AuthChange::UserRevokeRole {
            user: user.into(),
            role: role.into(),
        };
        self.auth_change(change).await
    }
}
