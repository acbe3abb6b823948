//! Carrying out the consensus core's outputs, in the order it hands them out: messages to
//! peers, records to make durable, chosen values to apply (answering the clients that wait
//! for them), membership changes, reads confirmed or aborted, proposals dropped, snapshots
//! to ship.

use paxos_core::{Change, NodeId, Output, Value};
use wire::{Command, ErrorReply, WriteOp};

use super::pending::key_of;
use super::Node;
use crate::admin::events::{Kind, Level};
use crate::error::ServerError;
use crate::storage::StorageCmd;

impl Node {
    /// Carries out every output of the core, then wakes the client connections that have
    /// answers (one write per connection per turn of the loop).
    pub(super) fn drain(&mut self) {
        if self.faults.is_down() {
            self.outbox.flush();
            return;
        }
        while let Some(out) = self.replica.poll_output() {
            self.carry_out(out);
            if self.fatal.is_some() {
                break;
            }
        }
        self.observe_turn();
        self.sync_peers();
        self.outbox.flush();
    }

    fn carry_out(&mut self, out: Output) {
        match out {
            Output::Send { to, message } => {
                self.monitor.sending(to, &message);
                self.links.send(to, message);
            }
            Output::Persist { id, entries } => {
                let cmd = StorageCmd::Append {
                    incarnation: self.faults.incarnation(),
                    id,
                    entries,
                };
                if let Err(e) = self.storage.send(cmd) {
                    self.fatal = Some(ServerError::Storage(e));
                }
            }
            Output::Committed { slot, value } => self.apply(slot, value),
            // The read rounds of snapshot saves (backups).
            Output::ReadReady { id } if self.is_backup_read(id) => {
                self.backup_read_done(id, Ok(()));
            }
            Output::ReadAborted { id, leader_hint } if self.is_backup_read(id) => {
                let refusal = self.not_leader(leader_hint);
                self.backup_read_done(id, Err(refusal));
            }
            Output::ReadReady { id } => {
                if let Some((query, responder, identity)) = self.pending.take_read(id) {
                    responder.respond(self.answer_confirmed_read(&query, identity.as_deref()));
                }
            }
            Output::ReadAborted { id, leader_hint } => {
                if let Some((_, responder, _)) = self.pending.take_read(id) {
                    responder.respond(Err(self.not_leader(leader_hint)));
                }
            }
            Output::ProposalsDropped {
                commands,
                leader_hint,
            } => self.proposals_dropped(&commands, leader_hint),
            Output::SendSnapshot { to } => self.ship_snapshot(to),
            Output::Reconfigured {
                slot,
                reconfig,
                outcome,
                latest,
            } => {
                if let Ok(from) = &outcome {
                    let change = match &reconfig.change {
                        Change::AddLearner { id, .. } => format!("added {id} as a learner"),
                        Change::Promote { id } => format!("promoted {id} to voter"),
                        Change::Remove { id } => format!("removed {id}"),
                    };
                    let voters: Vec<NodeId> = latest.voters().collect();
                    let text = format!(
                        "membership: {change} (chosen in slot {slot}, in effect from slot \
                         {from}); configuration {}, voters {voters:?}",
                        latest.id
                    );
                    self.monitor
                        .events
                        .keep(Level::Info, Kind::Membership, text);
                }
                self.reconfigured(slot, reconfig, outcome, &latest)
            }
            Output::ReconfigDropped {
                reconfig,
                leader_hint,
            } => self.reconfig_dropped(&reconfig, leader_hint),
            Output::Removed => self.on_removed(),
            Output::Repaired => {
                if let Err(e) = crate::repair::finish(&self.cfg.data_dir) {
                    self.fatal = Some(e);
                } else {
                    let text = "repaired from peers: this replica votes again".to_string();
                    self.monitor.events.info(Kind::Election, text);
                }
            }
        }
    }

    /// Proposals the core will never give a slot: their clients may retry elsewhere. Each
    /// is found by its bytes ([`super::pending`]); decoding is only the fallback for bytes
    /// the table does not know (their write has been answered already, or the core handed
    /// back a copy).
    fn proposals_dropped(&mut self, commands: &[bytes::Bytes], leader_hint: Option<NodeId>) {
        let answer = Err(self.not_leader(leader_hint));
        for raw in commands {
            let key = match self.pending.proposal(raw) {
                Some(key) => key,
                None => match Command::decode(raw) {
                    Ok(c) => key_of(&c.session),
                    Err(_) => continue,
                },
            };
            self.pending.answer_write(key, &answer);
        }
    }

    /// Applies the value chosen in `slot`, answers the clients waiting here for its
    /// commands, and takes a snapshot when one is due. A membership change applies nothing
    /// to the store: its effect comes with the [`Output::Reconfigured`] that follows, and
    /// so does the snapshot check.
    fn apply(&mut self, slot: u64, value: Value) {
        if let Value::Reconfig(_) = value {
            self.sm.finish_slot(slot);
            return;
        }
        if let Value::Commands(cmds) = value {
            for raw in cmds {
                self.snapshots.note_applied(raw.len());
                match Command::decode(&raw) {
                    Ok(c) => self.apply_command(slot, c),
                    Err(e) => {
                        // Every replica skips the same bytes, so they stay in agreement.
                        tracing::error!(slot, error = %e, "skipping an undecodable command");
                    }
                }
            }
        }
        self.sm.finish_slot(slot);
        self.snapshot_if_due();
    }

    fn apply_command(&mut self, slot: u64, c: Command) {
        match &c.op {
            WriteOp::Put { value, .. } => self.values.observe(value.len()),
            WriteOp::Cas { new, .. } => self.values.observe(new.len()),
            _ => {}
        }
        let applied = self.sm.apply(slot, c);
        self.pending
            .answer_write(key_of(&applied.session), &applied.reply);
    }

    /// The answer for a request this replica cannot serve: where the leader is, if known.
    pub(super) fn not_leader(&self, hint: Option<NodeId>) -> ErrorReply {
        match hint.filter(|&h| h != self.cfg.id) {
            Some(l) => ErrorReply::NotLeader {
                leader: Some(l),
                leader_addr: self.client_addr_of(l),
            },
            None => ErrorReply::Unavailable {
                reason: "no leader elected yet".into(),
            },
        }
    }

    /// The answer for a proposal or read the core refused.
    pub(super) fn propose_error(&self, e: paxos_core::ProposeError) -> ErrorReply {
        match e {
            paxos_core::ProposeError::NotLeader { leader_hint } => self.not_leader(leader_hint),
            paxos_core::ProposeError::Busy => ErrorReply::Busy,
        }
    }
}
