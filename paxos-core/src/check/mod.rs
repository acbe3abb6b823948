//! Exhaustive, bounded model checking of the real engine, and adversarial schedules
//! scripted step by step against it.
//!
//! [`world::World`] is a cluster of real [`Replica`](crate::Replica)s driven through their
//! public interface, with every nondeterministic choice (which message arrives, which write
//! reaches the disk, which timer fires, who crashes) made an explicit action.
//! [`explore::explore`] takes every schedule up to a bound; the tests in `scenarios` replay
//! hand-written schedules that once broke agreement.

pub(crate) mod explore;
pub(crate) mod script;
pub(crate) mod walk;
pub(crate) mod world;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod tests;
