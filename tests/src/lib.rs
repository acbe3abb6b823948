//! Cluster-level test support for the replicated key-value store.
//!
//! - [`history`]: a thread-safe recorder of client operations (invoke, then ok / fail /
//!   unknown), with timestamps suitable for checking real-time order.
//! - [`proxy`]: a user-space TCP proxy with switchable faults (cut, one-way cut, delay, dropped
//!   connections), standing in for kernel packet shaping.
//! - [`cluster`]: real `kvs-server` processes on loopback with proxies on every link; kill,
//!   restart, pause, terminate, partitions; bounded waiting ([`cluster::wait_until`]).
//! - [`linearizability`]: a per-key linearizability checker for the register model of the
//!   store (read, write, compare-and-swap, delete), reporting violations with a shrunk failing
//!   sub-history, and treating an exhausted search budget as a failure.

#![warn(missing_docs)]

pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod nemesis;
pub mod proxy;
pub mod scenario;
pub mod workload;
