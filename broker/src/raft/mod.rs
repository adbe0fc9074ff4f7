//! Replication: one Raft group per partition plus the regional controller
//! group, on openraft, sharing the broker's RocksDB and one connection per
//! pair of brokers.
//!
//! Everything that names openraft lives under this module; the rest of
//! the broker uses [`ReplicaGroup`], [`GroupStatus`] and our own command
//! types.

pub mod codec;
mod group;
pub(crate) mod json_bytes;
pub mod log_store;
pub mod peer_tls;
pub mod sm;
pub mod transport;
pub mod types;

pub use group::{
    GroupDebug, GroupStatus, Liveness, OpenraftGroup, ProposeError, RaftSettings, ReplicaGroup,
};

/// The controller group's id. Partition groups use their log id, which is
/// allocated from 1 and never reused.
pub const CONTROLLER_GROUP: u64 = 0;
