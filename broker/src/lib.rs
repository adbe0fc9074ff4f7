//! Chronik broker: a Kafka-compatible broker storing partition logs in
//! RocksDB. See `docs/ARCHITECTURE.md` for how the pieces fit.

pub mod admin_http;
pub mod batch;
pub mod catalog;
pub mod configs;
pub mod error;
pub mod framing;
mod handlers;
pub mod log;
pub mod producer;
pub mod protocol;
pub mod server;
pub mod storage;

pub use server::{Broker, StartError};
