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
//! may or may not have been applied. Every other error is a definite failure: nothing was
//! applied (a read has no effect, so a read that times out is [`Error::Timeout`]). A write
//! and all of its retries carry one [`wire::Session`], so the cluster applies it at most
//! once, whichever attempt gets through.
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
//! // A write whose outcome is unknown may have been applied: read before deciding.
//! match client.put("counter", "1").await {
//!     Ok(()) => {}
//!     Err(e) if e.outcome_unknown() => {
//!         let now = client.get("counter").await?;
//!         println!("the put may have been applied; counter is {now:?}");
//!     }
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

#![warn(missing_docs)]

mod backoff;
mod client;
mod connection;
mod endpoint;
mod error;
mod options;
mod session;

pub use client::{CasOutcome, Client};
pub use error::Error;
pub use options::ClientOptions;
pub use session::WRITE_WINDOW;
pub use wire::{ErrorReply, NodeRole, NodeStatus};

use std::time::Duration;

/// Formats a duration for messages: `5s` for whole seconds, `1500ms` otherwise.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms >= 1000 && ms % 1000 == 0 {
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
