//! Membership: listing the members, and changing them one at a time with a
//! compare-and-swap on the configuration id.
//!
//! A change names the configuration it expects, so sending it again is safe: if an earlier
//! attempt was applied, the next one is refused as stale, and the member list then shows
//! whether the wanted state holds ([`MemberChange::holds_in`]).

use std::time::Duration;

use tokio::time::Instant;
use wire::{ErrorReply, MemberChange, MemberList, Op, Reply};

use super::send::{Route, SendError};
use super::{unexpected, Client};
use crate::Error;

/// How long [`Client::member_change`] waits before asking again while another change is
/// taking effect.
const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(200);

/// How often [`Client::member_change`] looks whether its change has taken effect.
const IN_EFFECT_POLL: Duration = Duration::from_millis(50);

/// A membership change as the cluster applied it ([`Client::change_membership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberChanged {
    /// The id of the configuration the change made.
    pub config_id: u64,
    /// The first slot the new configuration governs.
    pub effective_from_slot: u64,
}

/// What [`Client::member_change`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChangeOutcome {
    /// This call's change was applied.
    Changed(MemberChanged),
    /// An attempt got no definite answer (or was refused as stale), and the member list
    /// then showed the change made: by an earlier attempt of this call, or by someone else.
    AlreadyDone {
        /// The latest configuration when it was seen.
        config_id: u64,
    },
}

impl MemberChangeOutcome {
    /// The configuration the change is in.
    pub fn config_id(&self) -> u64 {
        match self {
            MemberChangeOutcome::Changed(c) => c.config_id,
            MemberChangeOutcome::AlreadyDone { config_id } => *config_id,
        }
    }
}

impl Client {
    /// Lists the members: the leader's view, with how far each member has caught up. When
    /// no leader is known, a node answers with its own view ([`MemberList::leader`] is then
    /// `None`, and applied slots and lags are unknown).
    pub async fn member_list(&self) -> Result<MemberList, Error> {
        match self.read(Op::MemberList, Route::Leader).await? {
            (_, Reply::Members(list)) => Ok(*list),
            (endpoint, other) => Err(unexpected(endpoint, "Members", &other)),
        }
    }

    /// Sends one membership change to the leader, naming the configuration it expects
    /// (`expected`, [`MemberList::config_id`]). A refusal is [`Error::Rejected`] with the
    /// reason ([`ErrorReply::is_membership_refusal`]); nothing changed then. A change that
    /// got no definite answer is [`Error::Timeout`] or [`Error::Unavailable`] here, and may
    /// have been applied: [`Client::member_change`] finds out.
    pub async fn change_membership(
        &self,
        expected: u64,
        change: MemberChange,
        force: bool,
    ) -> Result<MemberChanged, Error> {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        self.change_until(expected, change, force, deadline).await
    }

    async fn change_until(
        &self,
        expected: u64,
        change: MemberChange,
        force: bool,
        deadline: Instant,
    ) -> Result<MemberChanged, Error> {
        let op = Op::MemberChange {
            expected,
            change,
            force,
        };
        wire::validate(&op).map_err(Error::Rejected)?;
        let answer = self
            .send(&op, Route::Leader, None, false, deadline)
            .await
            .map_err(SendError::into_read_error)?;
        match answer {
            (
                _,
                Reply::MemberChanged {
                    config_id,
                    effective_from_slot,
                },
            ) => Ok(MemberChanged {
                config_id,
                effective_from_slot,
            }),
            (endpoint, other) => Err(unexpected(endpoint, "MemberChanged", &other)),
        }
    }

    /// Makes a membership change, the way an operator means it: reads the latest
    /// configuration, sends the change naming it, and
    /// - while another change is taking effect, waits and tries again;
    /// - when an attempt gets no definite answer, or is refused as stale (another
    ///   configuration came first, possibly this call's own earlier attempt), reads the
    ///   members again: if the change shows there, it is
    ///   [`MemberChangeOutcome::AlreadyDone`]; a stale refusal otherwise is returned, and an
    ///   unanswered attempt is tried again;
    ///
    /// all within [`ClientOptions::request_timeout`](crate::ClientOptions::request_timeout).
    /// Every other refusal is returned as it is: nothing changed. When the time runs out
    /// after an unanswered attempt, the error is [`Error::MembershipUnknown`].
    ///
    /// A change governs the log from a fixed number of slots after the one it was chosen
    /// in (the leader fills them at once). Once made, this waits (within the same time
    /// budget) until the member list says the configuration is in effect, so that the next
    /// step of a procedure (stopping a replica, the next change) finds it in force.
    pub async fn member_change(
        &self,
        change: MemberChange,
        force: bool,
    ) -> Result<MemberChangeOutcome, Error> {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let outcome = self.member_change_once(change, force, deadline).await?;
        self.wait_in_effect(outcome.config_id(), deadline).await;
        Ok(outcome)
    }

    /// Waits until the latest configuration is `config_id` in effect, or a later one, or
    /// `deadline`.
    async fn wait_in_effect(&self, config_id: u64, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(list) = self.member_list().await {
                if list.config_id > config_id || (list.config_id == config_id && list.in_effect) {
                    return;
                }
            }
            tokio::time::sleep(IN_EFFECT_POLL).await;
        }
    }

    async fn member_change_once(
        &self,
        change: MemberChange,
        force: bool,
        deadline: Instant,
    ) -> Result<MemberChangeOutcome, Error> {
        wire::validate(&Op::MemberChange {
            expected: 0,
            change: change.clone(),
            force,
        })
        .map_err(Error::Rejected)?;
        let mut unanswered: Option<String> = None;
        loop {
            let list = match self.member_list().await {
                Ok(list) => list,
                Err(e) => return Err(unknown_if(unanswered, e)),
            };
            if unanswered.is_some() && change.holds_in(&list) {
                return Ok(MemberChangeOutcome::AlreadyDone {
                    config_id: list.config_id,
                });
            }
            let attempt = self
                .change_until(list.config_id, change.clone(), force, deadline)
                .await;
            let error = match attempt {
                Ok(changed) => return Ok(MemberChangeOutcome::Changed(changed)),
                Err(e) => e,
            };
            match &error {
                Error::Rejected(ErrorReply::StaleConfig { .. }) => {
                    let list = self.member_list().await?;
                    if change.holds_in(&list) {
                        return Ok(MemberChangeOutcome::AlreadyDone {
                            config_id: list.config_id,
                        });
                    }
                    return Err(error);
                }
                Error::Rejected(ErrorReply::ChangeInProgress) => {
                    if Instant::now() + IN_PROGRESS_PAUSE >= deadline {
                        return Err(unknown_if(unanswered, error));
                    }
                    tokio::time::sleep(IN_PROGRESS_PAUSE).await;
                }
                Error::Timeout { .. } | Error::Unavailable { .. } | Error::Protocol { .. } => {
                    if Instant::now() >= deadline {
                        return Err(unknown_if(Some(error.to_string()), error));
                    }
                    unanswered = Some(error.to_string());
                }
                _ => return Err(unknown_if(unanswered, error)),
            }
        }
    }
}

/// `error`, unless an earlier attempt went unanswered: then the change may or may not
/// have been applied.
fn unknown_if(unanswered: Option<String>, error: Error) -> Error {
    match unanswered {
        Some(earlier) => Error::MembershipUnknown {
            reason: format!("an attempt got no definite answer ({earlier}), then: {error}"),
        },
        None => error,
    }
}
