//! Reads and writes run to completion: validation, the write session (registered when
//! needed, renewed when the cluster forgot it), then [`Client::send`].

use tokio::time::Instant;
use wire::{Op, Reply};

use super::send::{Route, SendError};
use super::{unexpected, Client, SESSION_RENEWALS_MAX};
use crate::session::SessionGuard;
use crate::Error;

impl Client {
    /// Runs a read (or a registration) to completion: validates it, then tries nodes until
    /// one answers definitely or the time budget runs out. Returns the answering endpoint
    /// and reply.
    pub(super) async fn read(&self, op: Op, route: Route) -> Result<(String, Reply), Error> {
        wire::validate(&op).map_err(Error::Rejected)?;
        let deadline = Instant::now() + self.inner.options.request_timeout;
        self.send(&op, route, None, false, deadline)
            .await
            .map_err(SendError::into_read_error)
    }

    /// Runs a write to completion under a session: registers one first if needed, and a
    /// new one if the cluster forgot it before any attempt of this write was applied.
    pub(super) async fn write(&self, op: Op) -> Result<(String, Reply), Error> {
        wire::validate(&op).map_err(Error::Rejected)?;
        let deadline = Instant::now() + self.inner.options.request_timeout;
        for _ in 0..SESSION_RENEWALS_MAX {
            let guard = self.begin_write(deadline).await?;
            let session = guard.session();
            match self
                .send(&op, Route::Leader, Some(session), false, deadline)
                .await
            {
                Ok((endpoint, reply)) if answers(&op, &reply) => return Ok((endpoint, reply)),
                Ok((endpoint, reply)) => {
                    // A reply of the wrong kind: a bug on one side, and the write may
                    // have been applied.
                    let reason = unexpected(endpoint, "the reply to this write", &reply);
                    return Err(SendError::Unknown(reason.to_string()).into_error(session, &op));
                }
                Err(SendError::SessionUnknown) => {
                    tracing::debug!(
                        client_id = session.client_id,
                        "the cluster forgot this session; registering a new one"
                    );
                    self.inner.sessions.forget(session.client_id);
                }
                Err(e) => return Err(e.into_error(session, &op)),
            }
        }
        Err(Error::Unavailable {
            reason: format!(
                "the cluster forgot this client's write session {SESSION_RENEWALS_MAX} times in \
                 a row (more clients than its session table holds?); nothing was applied"
            ),
        })
    }

    /// The session and sequence number for a new write, registering a session if none is.
    async fn begin_write(&self, deadline: Instant) -> Result<SessionGuard, Error> {
        let after = self.inner.options.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.sessions.begin()).await {
                Ok(Some(guard)) => return Ok(guard),
                Ok(None) => self.register(deadline).await?,
                Err(_elapsed) => {
                    return Err(Error::Timeout {
                        after,
                        waiting_for: "a write slot (too many writes in progress)".to_owned(),
                    })
                }
            }
        }
    }

    /// Registers a write session with the cluster, unless another task just did. Nothing
    /// of any write is applied by this, so its failures are definite.
    async fn register(&self, deadline: Instant) -> Result<(), Error> {
        let sessions = &self.inner.sessions;
        let Ok(_one_at_a_time) =
            tokio::time::timeout_at(deadline, sessions.registering.lock()).await
        else {
            return Err(Error::Timeout {
                after: self.inner.options.request_timeout,
                waiting_for: "a write session to be registered".to_owned(),
            });
        };
        if sessions.client_id().is_some() {
            return Ok(());
        }
        let (endpoint, reply) = self
            .send(&Op::RegisterSession, Route::Leader, None, false, deadline)
            .await
            .map_err(SendError::into_read_error)?;
        match reply {
            Reply::SessionRegistered { client_id } if client_id != wire::NO_CLIENT_ID => {
                sessions.install(client_id);
                Ok(())
            }
            other => Err(unexpected(endpoint, "SessionRegistered", &other)),
        }
    }
}

/// Whether `reply` is of the kind that answers write `op`.
pub(super) fn answers(op: &Op, reply: &Reply) -> bool {
    matches!(
        (op, reply),
        (Op::Put { .. }, Reply::Written)
            | (Op::Delete { .. }, Reply::Deleted { .. })
            | (Op::Cas { .. }, Reply::Swapped | Reply::Mismatch { .. })
            | (Op::DeleteRange { .. }, Reply::DeletedRange { .. })
            | (Op::Txn(_), Reply::TxnDone { .. })
            | (Op::Auth(_), Reply::AuthChanged)
    )
}
