//! # paxos-core
//!
//! A sans-IO, deterministic Multi-Paxos engine. It owns no sockets, threads, clocks or
//! randomness: the host feeds it inputs and carries out the [`Output`]s it returns, in
//! order. The same inputs always produce the same outputs, so a cluster can be simulated
//! in one thread and a failing run replayed exactly from its seed.
//!
//! The three Paxos roles are explicit modules: [`acceptor`] (the promised ballot and
//! accepted values, the only state that must survive a crash), [`learner`] (which slots
//! are chosen, in-order delivery, catch-up) and [`proposer`] (elections, re-proposal after
//! a leader change with no-op gap filling, batching and pipelining, read-index rounds).
//! A [`Replica`] composes them behind one interface.
//!
//! ## The host's contract
//! - **Inputs**: [`Replica::handle_message`] (a peer's message), [`Replica::handle_timeout`]
//!   (time passed; call it at [`Replica::poll_timeout`]), [`Replica::propose`] (a client
//!   command), [`Replica::read`] (a linearizable read), [`Replica::handle_durable`]
//!   ("persist batch N is on disk"), [`Replica::compact`] and [`Replica::install_snapshot`].
//! - **Outputs**, drained with [`Replica::poll_output`] after every input:
//!   [`Output::Persist`] (append and fsync, then report), [`Output::Send`],
//!   [`Output::Committed`] (apply, in slot order), [`Output::ReadReady`],
//!   [`Output::ReadAborted`], [`Output::ProposalsDropped`] and [`Output::SendSnapshot`].
//! - **Durability is enforced, not documented**: a Promise or Accepted message does not
//!   even exist as an output until the host has reported the state it depends on durable.
//!   Group commit falls out: one `Persist` batch per drain, one fsync per batch.
//! - **Time** is a `now_ms` argument: any monotonic millisecond count.
//!
//! ## A complete host loop
//! Three replicas in one process, with a perfect in-memory network and a disk that is
//! durable at once. A real host does the same with sockets, a write-ahead log and a clock.
//!
//! ```
//! use std::collections::VecDeque;
//! use paxos_core::{Config, Message, NodeId, Output, Replica, Value};
//!
//! let members: Vec<NodeId> = vec![1, 2, 3];
//! let mut replicas: Vec<Replica> = members
//!     .iter()
//!     .map(|&id| Replica::new(Config::new(id, members.clone()), 7, 0).expect("valid config"))
//!     .collect();
//! let mut network: VecDeque<(NodeId, NodeId, Message)> = VecDeque::new(); // (from, to, msg)
//! let mut applied: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3]; // each replica's state machine
//! let mut now_ms = 0;
//! let mut proposed = false;
//!
//! while applied.iter().any(|log| log.is_empty()) {
//!     assert!(now_ms < 10_000, "the cluster should commit within ten simulated seconds");
//!     for (i, r) in replicas.iter_mut().enumerate() {
//!         if r.poll_timeout() <= now_ms {
//!             r.handle_timeout(now_ms);
//!         }
//!         // Once someone leads, propose one command there.
//!         if !proposed && r.propose(now_ms, "set x = 1".into()).is_ok() {
//!             proposed = true;
//!         }
//!         // Drain every output. Persisting is instant here, so report it at once.
//!         while let Some(out) = r.poll_output() {
//!             match out {
//!                 Output::Send { to, message } => network.push_back((r.id(), to, message)),
//!                 Output::Persist { id, entries: _ } => r.handle_durable(now_ms, id),
//!                 Output::Committed { value: Value::Commands(cmds), .. } => {
//!                     applied[i].extend(cmds.iter().map(|c| c.to_vec()));
//!                 }
//!                 _ => {}
//!             }
//!         }
//!     }
//!     while let Some((from, to, message)) = network.pop_front() {
//!         let idx = members.iter().position(|&m| m == to).expect("member");
//!         replicas[idx].handle_message(now_ms, from, message);
//!     }
//!     now_ms += 10;
//! }
//! assert!(applied.iter().all(|log| log == &vec![b"set x = 1".to_vec()]));
//! ```
//!
//! See `examples/` for a replicated counter and a lock table built on this crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acceptor;
mod ballot;
mod config;
pub mod learner;
pub mod membership;
mod message;
mod persist;
pub mod proposer;
mod replica;
mod rng;
mod value;

#[cfg(test)]
mod check;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use ballot::{Ballot, NodeId, Slot};
pub use config::{Config, ConfigError, HELD_REPLIES_MAX_DEFAULT, MEMBERS_MAX};
pub use membership::{
    Change, ChangeError, ConfigId, Member, Membership, MembershipLog, Reconfig,
    RECONFIG_DELAY_DEFAULT,
};
pub use message::Message;
pub use persist::{PersistEntry, RecoveredState};
pub use proposer::Role;
pub use replica::{Output, ProposeError, ReconfigError, Replica, SLOT_SPAN_MAX};
pub use rng::Rng;
pub use value::{Entry, Value};
