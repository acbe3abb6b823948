//! How a [`Client`](crate::Client) behaves: cluster id, time limits, frame size.

use std::time::Duration;

use wire::{
    Hello, PeerRole, FRAME_BYTES_MAX_CEILING, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_MIN,
};

use crate::Error;

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
    /// The largest frame sent or accepted, in bytes, within
    /// [`wire::FRAME_BYTES_MAX_MIN`]`..=`[`wire::FRAME_BYTES_MAX_CEILING`].
    /// Default [`wire::FRAME_BYTES_MAX_DEFAULT`].
    pub frame_bytes_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cluster_id: "kvs".to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
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
        if !(FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_CEILING).contains(&self.frame_bytes_max) {
            return invalid(format!(
                "frame_bytes_max {} is outside {FRAME_BYTES_MAX_MIN}..={FRAME_BYTES_MAX_CEILING}",
                self.frame_bytes_max
            ));
        }
        Ok(())
    }
}
