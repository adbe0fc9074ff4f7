//! The request context: what every request handler, and the background
//! tasks that act for the broker, may touch. Built once by
//! [`crate::server::Broker::start`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chronik_topology::BrokerConfig;

use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::producer_ids::ProducerIdAllocator;
use crate::storage::Store;

/// Everything a request handler may touch.
pub struct BrokerCtx {
    pub config: BrokerConfig,
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub cluster: Arc<Cluster>,
    pub groups: Arc<crate::groups::Coordinator>,
    pub txns: Arc<crate::txn::Coordinator>,
    pub cluster_id: String,
    pub producer_ids: Arc<ProducerIdAllocator>,
    /// The region's home-role lease, as its dc-link last reported it.
    pub lease: crate::lease_gate::LeaseGate,
    /// Produces to mirror partitions, on their way to the home region.
    pub forwarder: crate::forward::Forwarder,
    /// ACL authorization (`[authorization]`), with its cached bindings.
    pub authorizer: crate::handlers::authorize::Authorizer,
    /// Incremental fetch sessions (KIP-227) of this broker's consumers.
    pub fetch_sessions: std::sync::Mutex<crate::fetch_session::SessionCache>,
    /// Set once the broker serves, cleared as it shuts down.
    pub(crate) ready: AtomicBool,
}

impl BrokerCtx {
    pub fn is_ready(&self) -> bool {
        // Ready = serving, and known to the region: the controller has a
        // leader and has applied this broker's registration.
        self.ready.load(Ordering::Acquire)
            && !self.store.is_failed()
            && self.cluster.controller_status().leader.is_some()
            && self
                .catalog
                .brokers()
                .iter()
                .any(|b| b.id == self.config.node_id)
    }
}
