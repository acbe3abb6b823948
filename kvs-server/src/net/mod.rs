//! The replica's network: the client listener and its connections ([`clients`]), and the
//! links between replicas ([`peers`]). Tasks here never touch the consensus state: they
//! hand what they read to the event loop ([`crate::event::Event`]) and write what it gives
//! them. [`stream`] is a connection plain or over TLS ([`crate::tls`]).

pub mod clients;
pub mod frames;
pub mod listener;
pub mod peers;
pub mod stream;
