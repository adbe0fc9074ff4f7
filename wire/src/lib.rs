//! Chronik's Kafka wire rules, with no I/O: connection framing, the table of
//! APIs and versions we serve and how requests are parsed against it,
//! RecordBatch v2 validation and offset stamping, the idempotent
//! producer's sequence rules, and SASL (PLAIN and SCRAM, with the
//! connection's authentication state). Everything here is deterministic and tested
//! without sockets or disks; the request decoder is also fuzzed
//! (`wire/fuzz`). The one exception is `client`, a pipelined Kafka client
//! connection behind the `client` feature, used by the two hops of a
//! forwarded produce.

pub mod admin_token;
pub mod alloc;
pub mod batch;
#[cfg(feature = "client")]
pub mod client;
pub mod control;
pub mod epochs;
pub mod framing;
pub mod producer;
pub mod protocol;
pub mod records;
pub mod sasl;
pub mod settle;
