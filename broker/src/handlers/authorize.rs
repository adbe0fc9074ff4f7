//! Who may do what: the ACL authorizer as the request handlers see it.
//!
//! The rules themselves are [`crate::acl`]'s (pure); this module holds the
//! broker's configured authorizer, the bindings it last read from the
//! global `__meta` (rebuilt only when an ACL changed), and the per-request
//! view a handler asks: "may this connection's principal do `op` on this
//! resource?". With `[authorization] enabled = false` every question is
//! answered yes, as Kafka answers without an `authorizer.class.name`.

use std::sync::{Arc, RwLock};

use chronik_topology::Authorization;

use crate::acl::{op, resource, Acls};
use crate::catalog::Catalog;
use crate::connection::ConnCtx;

/// Kafka's name for the one CLUSTER resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// The broker's authorizer; `None` inside when authorization is off.
pub struct Authorizer {
    config: Option<Authorization>,
    /// (ACL generation of the global `__meta`, bindings at that generation).
    /// Read by every request, written only after an ACL changed.
    cache: RwLock<(u64, Arc<Acls>)>,
}

impl Authorizer {
    pub fn new(config: &Authorization) -> Authorizer {
        Authorizer {
            config: config.enabled.then(|| config.clone()),
            cache: RwLock::new((u64::MAX, Arc::default())),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// The bindings in force, read again only if an ACL changed since.
    fn acls(&self, catalog: &Catalog) -> Option<Arc<Acls>> {
        let config = self.config.as_ref()?;
        let generation = catalog.global.acl_generation();
        {
            let cache = self.cache.read().unwrap();
            if cache.0 == generation {
                return Some(cache.1.clone());
            }
        }
        let mut cache = self.cache.write().unwrap();
        if cache.0 != generation {
            *cache = (
                generation,
                Arc::new(Acls {
                    bindings: catalog.acl_bindings(),
                    super_users: config.super_users.iter().cloned().collect(),
                    allow_if_no_acl: config.allow_everyone_if_no_acl_found,
                }),
            );
        }
        Some(cache.1.clone())
    }

    /// What one request may do, fixed when the request arrives. With
    /// authorization off nothing is looked up or copied: every request
    /// passes through here, produce and fetch included.
    pub fn for_request(&self, catalog: &Catalog, conn: &ConnCtx) -> Authz {
        match self.acls(catalog) {
            None => Authz {
                acls: None,
                principal: String::new(),
                host: String::new(),
            },
            acls => Authz {
                acls,
                principal: conn.principal.clone(),
                host: conn.peer.ip().to_string(),
            },
        }
    }
}

/// One request's principal and the bindings in force when it arrived.
#[derive(Clone)]
pub struct Authz {
    acls: Option<Arc<Acls>>,
    principal: String,
    host: String,
}

impl Authz {
    /// The same request seen as coming from region `region`'s clients
    /// (a produce forwarded from there): principal `User:region:<region>`.
    pub fn as_region(&self, region: &str) -> Authz {
        Authz {
            acls: self.acls.clone(),
            principal: format!("User:region:{region}"),
            host: self.host.clone(),
        }
    }

    pub fn allows(&self, operation: i8, resource_type: i8, name: &str) -> bool {
        let Some(acls) = &self.acls else {
            return true;
        };
        let ok = acls.authorize(&self.principal, &self.host, operation, resource_type, name);
        if !ok {
            metrics::counter!("chronik_authorization_denied_total").increment(1);
            tracing::debug!(principal = %self.principal, host = %self.host, operation, resource_type, name, "denied");
        }
        ok
    }

    pub fn topic(&self, operation: i8, name: &str) -> bool {
        self.allows(operation, resource::TOPIC, name)
    }

    pub fn group(&self, operation: i8, name: &str) -> bool {
        self.allows(operation, resource::GROUP, name)
    }

    pub fn cluster(&self, operation: i8) -> bool {
        self.allows(operation, resource::CLUSTER, CLUSTER_NAME)
    }

    /// May the principal create topic `name` (CREATE on the cluster, or on
    /// the topic)?
    pub fn create_topic(&self, name: &str) -> bool {
        self.acls.is_none() || self.cluster_quiet(op::CREATE) || self.topic(op::CREATE, name)
    }

    /// A cluster check whose refusal is not itself a denial (another
    /// permission may still grant the request).
    fn cluster_quiet(&self, operation: i8) -> bool {
        self.acls.as_ref().is_none_or(|a| {
            a.authorize(
                &self.principal,
                &self.host,
                operation,
                resource::CLUSTER,
                CLUSTER_NAME,
            )
        })
    }

    /// KIP-679: an idempotent producer needs IDEMPOTENT_WRITE on the
    /// cluster, or WRITE on some topic.
    pub fn idempotent_write(&self) -> bool {
        self.cluster_quiet(op::IDEMPOTENT_WRITE)
            || self.acls.as_ref().is_none_or(|a| {
                a.any_allowed(&self.principal, &self.host, op::WRITE, resource::TOPIC)
            })
    }
}
