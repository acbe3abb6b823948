//! # kvs-client
//!
//! An async client of the replicated key-value store, and the `kvs-client` command-line
//! tool built on it.
//!
//! A [`Client`] is given the client addresses of some or all nodes. It finds the leader
//! (following `NotLeader` redirects), keeps one multiplexed connection per node shared by
//! every task that uses the client, retries what is safe to retry with backoff, and bounds
//! every operation by [`ClientOptions::request_timeout`].
//!
//! ## Failures: definite or unknown
//!
//! Every [`Error`] says whether the operation took effect. [`Error::OutcomeUnknown`] means
//! a write was sent and no answer came back (the connection broke or the time ran out): it
//! may or may not have been applied. Every other error except [`Error::SessionExpired`] is
//! a definite failure: nothing was applied (a read has no effect, so a read that times out
//! is [`Error::Timeout`]).
//!
//! ## Exactly-once writes, and what is safe to retry
//!
//! A client registers a write session with the cluster on its first write (one extra round
//! through the replicated log). A write and all of its attempts carry one [`wire::Session`]
//! (the session's id and the write's sequence number), so the cluster applies it at most
//! once, whichever attempt gets through. Precisely:
//!
//! - **Within one call** the library retries by itself (another node, a new connection),
//!   always with the same session: safe.
//! - **After [`Error::OutcomeUnknown`]**, [`Client::retry`] with the error's
//!   [`RetryHandle`] sends the same write again: it is answered with the first attempt's
//!   result if that was applied, applied now if it was not, and never applied twice. The
//!   handle can be kept as bytes and used by another client or process.
//! - **Calling `put`/`delete`/`compare_and_swap` again is not a retry**: it is a new write
//!   with a new sequence number, applied even if the first one was (a second delete
//!   answers "did not exist", a second compare-and-swap finds its own new value and answers
//!   a mismatch, a second put may overwrite a later write of another client).
//! - **[`Error::SessionExpired`]**: the cluster keeps a bounded number of sessions (10,000
//!   by default; the least recently active is forgotten first) and, per session, the
//!   results of its last [`WRITE_WINDOW`] writes. A retry of a write the cluster no longer
//!   remembers is refused and never applied; whether an earlier attempt was applied is
//!   unknown: read the data to find out. A *new* write whose session was forgotten is not
//!   affected: the client registers a new session and sends it under that.
//!
//! ## Membership
//!
//! [`Client::member_list`] lists the members with how far each has caught up;
//! [`Client::member_change`] adds a learner, promotes it or removes a member, one change at
//! a time: it reads the latest configuration and sends the change naming it
//! (compare-and-swap), so a change sent twice is applied once, and a change racing another
//! is refused ([`ErrorReply::StaleConfig`]).
//!
//! ```no_run
//! use kvs_client::{Client, ClientOptions, Error, MemberChange};
//!
//! # async fn example() -> Result<(), Error> {
//! let client = Client::connect(["127.0.0.1:6001"], ClientOptions::default())?;
//! let add = MemberChange::Add {
//!     id: 4,
//!     peer_addr: "10.0.0.4:7001".into(),
//!     client_addr: "10.0.0.4:6001".into(),
//! };
//! client.member_change(add, false).await?;
//! // ... start replica 4 with --initial-cluster-state existing, wait for it to catch up:
//! let list = client.member_list().await?;
//! if list.members.iter().any(|m| m.id == 4 && m.lag.is_some_and(|lag| lag < 100)) {
//!     client.member_change(MemberChange::Promote { id: 4 }, false).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## TLS
//!
//! [`ClientOptions::tls`] runs every connection over TLS 1.3 (rustls, `ring`): each node's
//! certificate must be signed by the CA given, be valid now and name the endpoint's host
//! (an IP address or a DNS name). A client certificate and its key, when given, are
//! presented to nodes that ask for one (`--client-cert-auth`). The files are read once, by
//! [`Client::connect`] ([`Error::TlsConfig`] names one that cannot be used). A refusal is
//! reported at once and not retried: [`Error::ClientCertificateRefused`],
//! [`Error::NotTlsPort`], [`Error::Tls`] (the node's certificate is not trusted), or the
//! node's own handshake refusal ([`Error::Handshake`]: "this port requires TLS").
//!
//! ```no_run
//! use kvs_client::{Client, ClientOptions, Error, TlsOptions};
//!
//! # async fn example() -> Result<(), Error> {
//! let tls = TlsOptions::with_ca_file("certs/ca.pem")
//!     .identity_files("certs/client-root.pem", "certs/client-root-key.pem");
//! let options = ClientOptions {
//!     tls: Some(tls),
//!     ..ClientOptions::default()
//! };
//! let client = Client::connect(["127.0.0.1:6001"], options)?;
//! client.put("greeting", "hello").await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Users, roles and permissions
//!
//! The cluster knows a client by the common name of its TLS client certificate
//! ([`ClientOptions::tls`]). [`Client::user_add`], [`Client::role_add`],
//! [`Client::role_grant`] (a [`Permission`] on a key prefix), [`Client::user_grant_role`]
//! and their counterparts change the users and roles, [`Client::auth_enable`] turns the
//! checks on (sent by a user holding [`ADMIN_ROLE`]) and [`Client::auth_status`] reads it
//! all back. Each change goes through the log like a write. While auth is enabled a request
//! its identity may not make fails with [`Error::PermissionDenied`], naming the identity,
//! what was asked and why; nothing was applied.
//!
//! ```no_run
//! use kvs_client::{Client, ClientOptions, Error, Permission};
//!
//! # async fn example(admin: ClientOptions) -> Result<(), Error> {
//! let client = Client::connect(["127.0.0.1:6001"], admin)?; // the certificate of "root"
//! client.user_add("root").await?;
//! client.user_grant_role("root", "admin").await?;
//! client.role_add("doctors").await?;
//! client.role_grant("doctors", "patient/", Permission::ReadWrite).await?;
//! client.user_add("alice").await?;
//! client.user_grant_role("alice", "doctors").await?;
//! client.auth_enable().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! - `cli` (default): builds the `kvs-client` command-line tool, with its own dependencies
//!   (argument parsing, JSON output, base64, the benchmark's histograms, an allocator).
//!   The library needs none of them: depend on it with `default-features = false`.
//!
//! ## Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use kvs_client::{CasOutcome, Client, ClientOptions, Error};
//!
//! # async fn example() -> Result<(), Error> {
//! let client = Client::connect(
//!     ["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"],
//!     ClientOptions::default(),
//! )?;
//!
//! client.put("color", "blue").await?;
//! assert_eq!(client.get("color").await?, Some(Bytes::from("blue")));
//!
//! // Compare-and-swap: `None` as the expected value means "the key must be absent".
//! match client.compare_and_swap("color", Some(Bytes::from("blue")), "red").await? {
//!     CasOutcome::Swapped => println!("now red"),
//!     CasOutcome::Mismatch { current } => println!("someone else wrote {current:?}"),
//! }
//!
//! // A write whose outcome is unknown may have been applied: retry *that* write, which
//! // the cluster applies at most once (calling `delete` again would be a second write).
//! match client.delete("lock").await {
//!     Ok(existed) => println!("deleted; it existed: {existed}"),
//!     Err(Error::OutcomeUnknown { retry, .. }) => match client.retry(&retry).await {
//!         Ok(outcome) => println!("the delete is applied, once: {outcome:?}"),
//!         Err(Error::SessionExpired { .. }) => {
//!             // Too late to retry: the cluster forgot this write. Read to find out.
//!             println!("lock is now {:?}", client.get("lock").await?);
//!         }
//!         Err(e) => return Err(e), // still unknown (e.retry_handle() to try again later)
//!     },
//!     Err(e) => return Err(e), // definitely not applied
//! }
//!
//! assert!(client.delete("color").await?); // it existed
//! let _maybe_old = client.get_stale("color").await?; // any node, possibly behind
//!
//! for (endpoint, status) in client.status().await {
//!     match status {
//!         Ok(node) => println!("{endpoint}: node {} is {}", node.id, node.role),
//!         Err(e) => println!("{endpoint}: unreachable: {e}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod client;
mod connection;
mod endpoint;
mod error;
mod options;
mod retry;
mod session;
mod tls;

pub use client::{
    CasOutcome, Client, Entry, KeyRange, MemberChangeOutcome, MemberChanged, RangeOptions,
    RangePager, SnapshotSource,
};
pub use error::Error;
pub use options::ClientOptions;
pub use retry::{RetryHandle, WriteOutcome};
pub use session::WRITE_WINDOW;
pub use tls::{ClientIdentity, Pem, TlsOptions};
pub use wire::auth::{Grant, RoleInfo, UserInfo};
pub use wire::{backup, SnapshotStream};
pub use wire::{
    AuthChange, AuthStatus, Compare, ErrorReply, MemberChange, MemberInfo, MemberList, NodeRole,
    NodeStatus, Permission, Txn, TxnOp, ADMIN_ROLE,
};

use std::time::Duration;

/// Formats a duration for messages: `5s` for whole seconds, `1500ms` otherwise.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
