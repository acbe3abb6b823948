//! How a [`Client`](crate::Client) behaves: cluster id, time limits, frame size, TLS.

use std::time::Duration;

use wire::{
    Hello, PeerRole, FRAME_BYTES_MAX_CEILING, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_MIN,
};

use crate::{Error, TlsOptions};

/// Settings of a [`Client`](crate::Client). [`Default`] suits the dev cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The cluster the client belongs to, checked by every node in the handshake.
    /// Default `"kvs"`.
    pub cluster_id: String,
    /// The time budget of one whole operation, leader search and retries included.
    /// Default 5 s.
    pub request_timeout: Duration,
    /// The time budget of opening one connection (TCP connect and handshake). Default 1 s.
    pub connect_timeout: Duration,
    /// How long one attempt waits for one node to answer before the client stops waiting on
    /// that node and tries the others with what is left of the request timeout (a write is
    /// sent again under the same session and sequence number, so it is still applied at
    /// most once). A leader that stopped answering (paused, overloaded, cut off from the
    /// client) then costs this much of a request, not all of it, and the client no longer
    /// takes it for the leader. Each further attempt of the same request that goes
    /// unanswered waits twice as long as the one before, so that a slow but working leader
    /// is still waited for. At or above `request_timeout`, an attempt may take the whole
    /// budget. Default 1 s.
    pub attempt_timeout: Duration,
    /// The largest frame sent or accepted, in bytes, within
    /// [`wire::FRAME_BYTES_MAX_MIN`]`..=`[`wire::FRAME_BYTES_MAX_CEILING`].
    /// Default [`wire::FRAME_BYTES_MAX_DEFAULT`].
    pub frame_bytes_max: usize,
    /// TLS to every node, verifying its certificate against a CA and the endpoint's host
    /// (and presenting a client certificate if one is given). `None` (the default): plain
    /// TCP.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cluster_id: "kvs".to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Checks every field, returning [`Error::InvalidOptions`] for the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidOptions { reason });
        if let Err(e) = Hello::new(self.cluster_id.clone(), PeerRole::Client).encode() {
            return invalid(format!("cluster id {:?}: {e}", self.cluster_id));
        }
        if self.request_timeout.is_zero() {
            return invalid("the request timeout is zero".to_owned());
        }
        if self.connect_timeout.is_zero() {
            return invalid("the connect timeout is zero".to_owned());
        }
        if self.attempt_timeout.is_zero() {
            return invalid("the attempt timeout is zero".to_owned());
        }
        if !(FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_CEILING).contains(&self.frame_bytes_max) {
            return invalid(format!(
                "frame_bytes_max {} is outside {FRAME_BYTES_MAX_MIN}..={FRAME_BYTES_MAX_CEILING}",
                self.frame_bytes_max
            ));
        }
        Ok(())
    }
}
