//! Chronik broker: a Kafka-compatible broker storing partition logs in
//! RocksDB. See `docs/ARCHITECTURE.md` for how the pieces fit.

pub mod acl;
pub mod admin_http;
pub mod catalog;
pub mod cleaner;
pub mod cluster;
pub mod compaction;
pub mod configs;
pub mod connection;
pub mod context;
pub mod coordinator_phase;
pub mod decompress;
pub mod discovery;
pub mod error;
pub mod fetch_session;
pub mod forward;
pub mod global_meta;
pub mod groups;
mod handlers;
mod home_http;
pub mod home_role;
pub mod lease_gate;
pub mod listener;
pub mod log;
mod members_http;
pub mod membership;
pub mod produce_order;
pub mod producer_ids;
pub mod raft;
pub mod recompress;
mod role_keeper;
pub mod rpo;
pub mod server;
pub mod storage;
#[cfg(test)]
mod test_batches;
pub mod txn;
pub mod txn_index;

pub use server::{Broker, StartError};

// The pure wire rules live in `chronik-wire`; re-exported so broker code
// and tests name them as part of the broker.
pub use chronik_wire::{batch, framing, producer, protocol};
