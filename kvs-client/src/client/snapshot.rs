//! Snapshot streams (backups): a consistent snapshot of the whole store, streamed from the
//! leader in bounded chunks over its connection.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use wire::{ErrorReply, Op, Reply, SnapshotStream};

use super::send::{AttemptError, Route};
use super::{unexpected, Client};
use crate::Error;

/// How many times [`Client::snapshot_open`] asks again after the leader it found stopped
/// leading before it answered.
const LEADER_CHANGES_MAX: usize = 3;

/// A snapshot stream opened at the leader ([`Client::snapshot_open`]): what it holds, and
/// its bytes chunk by chunk ([`SnapshotSource::next_chunk`]).
#[derive(Debug)]
pub struct SnapshotSource {
    client: Client,
    endpoint: String,
    info: SnapshotStream,
    offset: u64,
    step: Duration,
}

impl Client {
    /// Opens a stream of a consistent snapshot of the whole store at the leader: the state
    /// at a slot at least as new as every write acknowledged before this call
    /// (linearizable). The leader may take a snapshot first; this waits for it at most
    /// `step` (each chunk read later too). A replica streaming as many snapshots as it
    /// serves at once refuses with [`Error::Rejected`] ([`ErrorReply::SnapshotBusy`]).
    pub async fn snapshot_open(&self, step: Duration) -> Result<SnapshotSource, Error> {
        for _ in 0..LEADER_CHANGES_MAX {
            // Finds the leader (with the usual retries), then asks it alone, for as long as
            // it takes to prepare the snapshot.
            let (endpoint, _) = self.read(Op::MemberList, Route::Leader).await?;
            match self.ask(&endpoint, Op::SnapshotSave, step).await? {
                Ok(Reply::SnapshotStream(info)) => {
                    return Ok(SnapshotSource {
                        client: self.clone(),
                        endpoint,
                        info: *info,
                        offset: 0,
                        step,
                    })
                }
                Ok(other) => return Err(unexpected(endpoint, "SnapshotStream", &other)),
                Err(ErrorReply::NotLeader { .. } | ErrorReply::Unavailable { .. }) => continue,
                Err(e) => return Err(Error::Rejected(e)),
            }
        }
        Err(Error::Unavailable {
            reason: format!(
                "the leader changed {LEADER_CHANGES_MAX} times while opening a snapshot stream"
            ),
        })
    }

    /// Sends `op` to `endpoint` alone and waits `step` at most for its answer.
    async fn ask(
        &self,
        endpoint: &str,
        op: Op,
        step: Duration,
    ) -> Result<Result<Reply, ErrorReply>, Error> {
        let sent = Arc::new(AtomicBool::new(false));
        let attempt = self.attempt(endpoint, op, None, &sent);
        match tokio::time::timeout_at(Instant::now() + step, attempt).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(AttemptError::Fatal(e))) => Err(e),
            Ok(Err(
                AttemptError::NotSent(reason)
                | AttemptError::NoListener(reason)
                | AttemptError::NoConnection(reason)
                | AttemptError::Lost(reason),
            )) => Err(Error::Unavailable {
                reason: format!("{endpoint}: {reason}"),
            }),
            Err(_elapsed) => Err(Error::Timeout {
                after: step,
                waiting_for: format!("an answer from {endpoint}"),
            }),
        }
    }
}

impl SnapshotSource {
    /// What the stream holds: its slot, keys, size and the cluster it comes from.
    pub fn info(&self) -> &SnapshotStream {
        &self.info
    }

    /// The replica streaming it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.offset
    }

    /// The next chunk; `None` once every byte was received. A stream cut off (the replica
    /// stopped, or dropped the stream) is an error: open another.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        if self.offset >= self.info.bytes {
            return Ok(None);
        }
        let op = Op::SnapshotRead {
            stream: self.info.stream,
            offset: self.offset,
        };
        let endpoint = self.endpoint.clone();
        match self.client.ask(&endpoint, op, self.step).await? {
            Ok(Reply::SnapshotChunk { data }) => {
                let left = self.info.bytes - self.offset;
                if data.is_empty() || data.len() as u64 > left {
                    return Err(Error::Protocol {
                        endpoint,
                        reason: format!(
                            "a snapshot chunk of {} bytes at offset {}, with {left} bytes left",
                            data.len(),
                            self.offset
                        ),
                    });
                }
                self.offset += data.len() as u64;
                Ok(Some(data))
            }
            Ok(other) => Err(unexpected(endpoint, "SnapshotChunk", &other)),
            Err(e) => Err(Error::Rejected(e)),
        }
    }
}
