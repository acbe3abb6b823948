//! The library's error type: every failure says whether the operation may have taken effect.

use std::time::Duration;

use wire::{ErrorReply, WireError};

use crate::RetryHandle;

/// Why an operation failed.
///
/// The one distinction that matters most is between a **definite failure** (the operation
/// did not take effect, and retrying it is a new attempt) and an **unknown outcome** (a write
/// was sent and no answer came back: it may or may not have been applied). Only
/// [`Error::OutcomeUnknown`] and [`Error::SessionExpired`] are the latter; every other
/// variant is a definite failure (and [`Error::MembershipUnknown`], its counterpart for a
/// membership change). See [`Error::is_definite_failure`] and [`Error::outcome_unknown`].
///
/// What is safe after each:
/// - a definite failure: nothing was applied; sending the write again (a new call) is a
///   new write.
/// - [`Error::OutcomeUnknown`]: retry **the same write** with
///   [`Client::retry`](crate::Client::retry) and the [`RetryHandle`] the error carries
///   ([`Error::retry_handle`]): it is applied at most once, whichever attempt got through.
///   A new call (`put`, `delete`, ... again) is *not* a retry: it is a second write, which
///   may be applied after the first (a second delete answers "not found", a second
///   compare-and-swap finds its own new value and answers "mismatch").
/// - [`Error::SessionExpired`]: the cluster forgot the write's session, so no retry can
///   apply it any more; whether an earlier attempt was applied is unknown: read the data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An endpoint is not of the form `host:port`, or the list of endpoints is empty.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given (empty if the list was empty).
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A [`ClientOptions`](crate::ClientOptions) field is out of range.
    #[error("invalid client options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },

    /// The request itself is not acceptable (too large, empty key, ...), as found by the
    /// local checks before sending or as answered by a node. Retrying cannot help.
    #[error("rejected: {0}")]
    Rejected(ErrorReply),

    /// No node could serve the operation before the deadline, and nothing was applied:
    /// every attempt was refused (connection refused, not the leader, election in progress,
    /// busy, shutting down). When no endpoint can be connected to (nothing listens at any
    /// of them, or none is reachable), this comes at once rather than at the deadline.
    #[error("{reason}")]
    Unavailable {
        /// What was tried and what each endpoint's latest attempt found, for example `no
        /// leader with a quorum at 127.0.0.1:6001,127.0.0.1:6002 after 5s: 127.0.0.1:6001:
        /// unavailable: no leader elected yet; 127.0.0.1:6002: Connection refused (os error
        /// 111)`, or `no replica reachable at 127.0.0.1:6001,127.0.0.1:6002: 127.0.0.1:6001:
        /// Connection refused (os error 111); 127.0.0.1:6002: Connection refused (os error
        /// 111)`.
        reason: String,
    },

    /// The deadline passed while waiting, and nothing was applied: a read that got no
    /// answer (a read has no effect), or a write that was never sent.
    #[error("timed out after {} waiting for {waiting_for}", crate::format_duration(*.after))]
    Timeout {
        /// The time budget that ran out (the whole operation's, retries included).
        after: Duration,
        /// What was awaited, for example `an answer from 127.0.0.1:6001`.
        waiting_for: String,
    },

    /// A write was sent and then the connection broke or the deadline passed without an
    /// answer: it may or may not have been applied. Retried attempts of one write carry the
    /// same session, so the cluster applies it at most once; `retry` resends it that way
    /// ([`Client::retry`](crate::Client::retry)).
    #[error("outcome unknown: {reason}; the write may or may not have been applied")]
    OutcomeUnknown {
        /// What happened after the write was sent.
        reason: String,
        /// The write, to send again with [`Client::retry`](crate::Client::retry).
        retry: Box<RetryHandle>,
    },

    /// A write was retried, and the cluster no longer remembers its session (it keeps a
    /// bounded number of sessions and forgets the least recently active first, and each
    /// session's most recent results only), so it cannot tell whether an earlier attempt was
    /// applied. This attempt was not applied, and no retry of this write ever will be. An
    /// earlier attempt may or may not have been applied: read the data to find out.
    #[error(
        "session expired: the cluster no longer remembers write {seq} of session \
         {client_id}, so this retry was not applied and no retry of it can be; an earlier \
         attempt may or may not have been applied (read the key to find out)"
    )]
    SessionExpired {
        /// The session's client id.
        client_id: u64,
        /// The write's sequence number.
        seq: u64,
    },

    /// A retry handle is malformed or is not a write's ([`RetryHandle::from_bytes`],
    /// [`RetryHandle::new`]).
    #[error("invalid retry handle: {reason}")]
    InvalidRetry {
        /// What is wrong with it.
        reason: String,
    },

    /// A node refused the connection's handshake (wrong cluster id, a peer port given as a
    /// client endpoint, an incompatible version) or answered it with something that is not
    /// a kvs handshake. A configuration error: it is not retried.
    #[error("handshake with {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint connected to.
        endpoint: String,
        /// The handshake's failure, with the node's reason for a refusal.
        #[source]
        source: WireError,
    },

    /// A TLS file of [`TlsOptions`](crate::TlsOptions) cannot be read or holds no usable
    /// certificate or key. A configuration error, found by
    /// [`Client::connect`](crate::Client::connect).
    #[error("TLS: cannot use the {what} {source_name}: {reason}")]
    TlsConfig {
        /// Which file: `CA certificate file`, `client certificate file`, `client key file`.
        what: String,
        /// The file's path (or `(given in memory)` for inline PEM).
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The endpoint answered a TLS client with the plain-TCP handshake: TLS is not on
    /// there. A configuration error: it is not retried.
    #[error("{endpoint} is not a TLS port: connect without --cacert")]
    NotTlsPort {
        /// The endpoint connected to.
        endpoint: String,
    },

    /// The endpoint answered a plain-TCP client with TLS: it serves clients over TLS
    /// only. A configuration error: it is not retried. (A node that names the refusal in
    /// its handshake reply gives [`Error::Handshake`] with its text instead.)
    #[error(
        "{endpoint} is a TLS port: connect with --cacert (and --cert and --key if it \
         requires client certificates)"
    )]
    TlsRequired {
        /// The endpoint connected to.
        endpoint: String,
    },

    /// The node refused the client certificate, or required one and none was given. A
    /// configuration error: it is not retried.
    #[error("{endpoint}: the server refused the client certificate: {reason}")]
    ClientCertificateRefused {
        /// The endpoint connected to.
        endpoint: String,
        /// The node's alert, read as a reason (unknown CA, expired, none given, ...).
        reason: String,
    },

    /// The TLS handshake failed otherwise: the node's certificate is not signed by the
    /// trusted CA, has expired, or does not name the endpoint's host; or the node refused
    /// the handshake. A configuration error: it is not retried.
    #[error("TLS with {endpoint} failed: {reason}")]
    Tls {
        /// The endpoint connected to.
        endpoint: String,
        /// What failed.
        reason: String,
    },

    /// A node answered with a reply that does not fit the request (a bug on one side).
    #[error("protocol error from {endpoint}: {reason}")]
    Protocol {
        /// The endpoint that answered.
        endpoint: String,
        /// What was wrong with the answer.
        reason: String,
    },

    /// Auth is enabled and this client's identity (the common name of its certificate) may
    /// not do this: it has none (no client certificate), it is not a user, or none of its
    /// roles grants what the operation needs (`reason` says which). Nothing was applied.
    /// Retrying cannot help until an admin grants it.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// The identity the cluster saw, if any.
        identity: Option<String>,
        /// What was refused and why.
        reason: String,
    },

    /// A membership change was sent and got no definite answer in time: it may or may not
    /// have been applied (it may still be). List the members to find out; sending the same
    /// change again is safe ([`Client::member_change`](crate::Client::member_change)).
    #[error(
        "membership change outcome unknown: {reason}; it may or may not have been applied \
         (run `kvs-client member list` to see)"
    )]
    MembershipUnknown {
        /// What happened.
        reason: String,
    },
}

impl Error {
    /// True if the operation certainly did not take effect: every error except
    /// [`Error::OutcomeUnknown`], [`Error::SessionExpired`] and
    /// [`Error::MembershipUnknown`].
    pub fn is_definite_failure(&self) -> bool {
        !self.outcome_unknown()
    }

    /// True if a write may or may not have been applied ([`Error::OutcomeUnknown`], or
    /// [`Error::SessionExpired`] when it can no longer be retried), or a membership change
    /// ([`Error::MembershipUnknown`]).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown { .. }
                | Error::SessionExpired { .. }
                | Error::MembershipUnknown { .. }
        )
    }

    /// The handle to retry the write with, for [`Error::OutcomeUnknown`].
    pub fn retry_handle(&self) -> Option<&RetryHandle> {
        match self {
            Error::OutcomeUnknown { retry, .. } => Some(retry),
            _ => None,
        }
    }
}
