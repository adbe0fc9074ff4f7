//! Kafka's ACL rules, as its `StandardAuthorizer` applies them, with no I/O:
//! which bindings match a request, deny over allow, the operations an
//! allowed one implies, literal and prefixed resource patterns, wildcards,
//! and super users. The bindings come from the global `__meta`; the
//! handlers ask [`Acls::authorize`].
//!
//! Codes are Kafka's own (`AclOperation`, `ResourceType`, `PatternType`,
//! `AclPermissionType`), so requests and stored bindings need no mapping.

use std::collections::BTreeSet;

use chronik_metadata_sync::AclKey;

/// Kafka's `ResourceType` codes.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's `PatternType` codes.
pub mod pattern {
    pub const ANY: i8 = 1;
    /// In a filter: every binding that would apply to the named resource.
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's `AclOperation` codes.
pub mod op {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Kafka's `AclPermissionType` codes.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The literal resource name that stands for every resource of its type.
pub const WILDCARD: &str = "*";
/// The principal that stands for every user.
pub const ANY_USER: &str = "User:*";
/// The host that stands for every host.
pub const ANY_HOST: &str = "*";

/// One ACL, as CreateAcls carries it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// Why CreateAcls refuses a binding, with Kafka's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAcl {
    #[error("Invalid resource type {0}")]
    ResourceType(i8),
    #[error("Invalid pattern type {0}")]
    PatternType(i8),
    #[error("Invalid operation {0}")]
    Operation(i8),
    #[error("Invalid permission type {0}")]
    Permission(i8),
    #[error("Invalid principal: {0}")]
    Principal(String),
    #[error("The only valid name for the CLUSTER resource is kafka-cluster")]
    ClusterName,
    #[error("Resource name must not be empty")]
    EmptyName,
}

impl AclBinding {
    /// Checks a binding before it is stored, as Kafka's controller does.
    pub fn validate(&self) -> Result<(), InvalidAcl> {
        if !(resource::TOPIC..=resource::USER).contains(&self.resource_type) {
            return Err(InvalidAcl::ResourceType(self.resource_type));
        }
        if !matches!(self.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
            return Err(InvalidAcl::PatternType(self.pattern_type));
        }
        if !(op::ALL..=op::DESCRIBE_TOKENS).contains(&self.operation) {
            return Err(InvalidAcl::Operation(self.operation));
        }
        if !matches!(self.permission, permission::ALLOW | permission::DENY) {
            return Err(InvalidAcl::Permission(self.permission));
        }
        match self.principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => return Err(InvalidAcl::Principal(self.principal.clone())),
        }
        if self.resource_name.is_empty() {
            return Err(InvalidAcl::EmptyName);
        }
        if self.resource_type == resource::CLUSTER && self.resource_name != "kafka-cluster" {
            return Err(InvalidAcl::ClusterName);
        }
        Ok(())
    }

    /// Its key in the global `__meta`.
    pub fn to_key(&self) -> bytes::Bytes {
        use prost::Message;
        AclKey {
            resource_type: self.resource_type.into(),
            resource_name: self.resource_name.clone(),
            pattern_type: self.pattern_type.into(),
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation.into(),
            permission: self.permission.into(),
        }
        .encode_to_vec()
        .into()
    }

    /// The binding a global `__meta` key names; `None` for bytes no region
    /// would write (they are skipped, never half-applied).
    pub fn from_key(key: &[u8]) -> Option<AclBinding> {
        use prost::Message;
        let k = AclKey::decode(key).ok()?;
        let code = |v: i32| i8::try_from(v).ok();
        let b = AclBinding {
            resource_type: code(k.resource_type)?,
            resource_name: k.resource_name,
            pattern_type: code(k.pattern_type)?,
            principal: k.principal,
            host: k.host,
            operation: code(k.operation)?,
            permission: code(k.permission)?,
        };
        b.validate().ok().map(|()| b)
    }

    /// Does this binding's resource pattern cover resource `name`?
    fn covers(&self, resource_type: i8, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                pattern::LITERAL => self.resource_name == name || self.resource_name == WILDCARD,
                pattern::PREFIXED => name.starts_with(&self.resource_name),
                _ => false,
            }
    }

    fn names(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == ANY_USER)
            && (self.host == host || self.host == ANY_HOST)
    }
}

/// What DescribeAcls and DeleteAcls select bindings by; `None` name,
/// principal or host match any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl AclFilter {
    pub fn matches(&self, b: &AclBinding) -> bool {
        let code = |want: i8, any: i8, have: i8| want == any || want == have;
        let resource = code(self.resource_type, resource::ANY, b.resource_type)
            && match (self.pattern_type, &self.resource_name) {
                // The resource type was checked above.
                (pattern::MATCH, Some(name)) => b.covers(b.resource_type, name),
                (pattern::MATCH, None) => true,
                (p, name) => {
                    code(p, pattern::ANY, b.pattern_type)
                        && name.as_ref().is_none_or(|n| *n == b.resource_name)
                }
            };
        resource
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && code(self.operation, op::ANY, b.operation)
            && code(self.permission, permission::ANY, b.permission)
    }
}

/// The operations an ALLOW for `granted` also allows (Kafka: READ, WRITE,
/// DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS).
fn allows(granted: i8, wanted: i8) -> bool {
    granted == wanted
        || granted == op::ALL
        || (wanted == op::DESCRIBE
            && matches!(granted, op::READ | op::WRITE | op::DELETE | op::ALTER))
        || (wanted == op::DESCRIBE_CONFIGS && granted == op::ALTER_CONFIGS)
}

/// Every binding in force, and who bypasses them.
#[derive(Debug, Clone, Default)]
pub struct Acls {
    pub bindings: BTreeSet<AclBinding>,
    /// `User:name` principals allowed everything (Kafka's `super.users`).
    pub super_users: BTreeSet<String>,
    /// Kafka's `allow.everyone.if.no.acl.found`: a resource no binding
    /// covers is open to all. Off by default, as in Kafka.
    pub allow_if_no_acl: bool,
}

impl Acls {
    /// May `principal`, connected from `host`, perform `operation` on the
    /// resource? A DENY that covers it wins over any ALLOW.
    pub fn authorize(
        &self,
        principal: &str,
        host: &str,
        operation: i8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        if self.super_users.contains(principal) {
            return true;
        }
        let mut any_covers = false;
        let mut allowed = false;
        for b in self
            .bindings
            .iter()
            .filter(|b| b.covers(resource_type, name))
        {
            any_covers = true;
            if !b.names(principal, host) {
                continue;
            }
            match b.permission {
                permission::DENY if b.operation == operation || b.operation == op::ALL => {
                    return false
                }
                permission::ALLOW if allows(b.operation, operation) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any_covers && self.allow_if_no_acl)
    }

    /// Kafka's `authorizeByResourceType`: could `principal` perform
    /// `operation` on some resource of this type? True when an ALLOW names
    /// it for the operation and no DENY for it covers the whole type (a
    /// literal wildcard, or the empty prefix). Used where Kafka accepts
    /// "may write some topic" in place of a cluster permission
    /// (InitProducerId for an idempotent producer, KIP-679).
    pub fn any_allowed(
        &self,
        principal: &str,
        host: &str,
        operation: i8,
        resource_type: i8,
    ) -> bool {
        if self.super_users.contains(principal) {
            return true;
        }
        let applies =
            |b: &&AclBinding| b.resource_type == resource_type && b.names(principal, host);
        let everything = |b: &AclBinding| match b.pattern_type {
            pattern::LITERAL => b.resource_name == WILDCARD,
            pattern::PREFIXED => b.resource_name.is_empty(),
            _ => false,
        };
        let denied_all = self.bindings.iter().filter(applies).any(|b| {
            b.permission == permission::DENY
                && (b.operation == operation || b.operation == op::ALL)
                && everything(b)
        });
        if denied_all {
            return false;
        }
        self.bindings
            .iter()
            .filter(applies)
            .any(|b| b.permission == permission::ALLOW && allows(b.operation, operation))
            || self.allow_if_no_acl
    }

    pub fn matching<'a>(&'a self, f: &'a AclFilter) -> impl Iterator<Item = &'a AclBinding> + 'a {
        self.bindings.iter().filter(move |b| f.matches(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(rt: i8, name: &str, pt: i8, who: &str, operation: i8, perm: i8) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: who.into(),
            host: ANY_HOST.into(),
            operation,
            permission: perm,
        }
    }

    fn acls(bindings: Vec<AclBinding>) -> Acls {
        Acls {
            bindings: bindings.into_iter().collect(),
            super_users: ["User:admin".to_string()].into(),
            allow_if_no_acl: false,
        }
    }

    const ALICE: &str = "User:alice";

    #[test]
    fn nothing_is_allowed_without_an_acl_except_to_super_users() {
        let a = acls(vec![]);
        assert!(!a.authorize(ALICE, "10.0.0.1", op::READ, resource::TOPIC, "orders"));
        assert!(a.authorize(
            "User:admin",
            "10.0.0.1",
            op::ALTER,
            resource::CLUSTER,
            "kafka-cluster"
        ));
        let open = Acls {
            allow_if_no_acl: true,
            ..acls(vec![acl(
                resource::TOPIC,
                "payments",
                pattern::LITERAL,
                "User:bob",
                op::READ,
                permission::ALLOW,
            )])
        };
        assert!(open.authorize(ALICE, "h", op::WRITE, resource::TOPIC, "orders"));
        // A resource some binding covers is closed to the others even then.
        assert!(!open.authorize(ALICE, "h", op::READ, resource::TOPIC, "payments"));
    }

    #[test]
    fn deny_wins_over_allow_and_all_covers_every_operation() {
        let a = acls(vec![
            acl(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                ALICE,
                op::ALL,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "ord",
                pattern::PREFIXED,
                ALICE,
                op::WRITE,
                permission::DENY,
            ),
        ]);
        assert!(a.authorize(ALICE, "h", op::READ, resource::TOPIC, "orders"));
        assert!(!a.authorize(ALICE, "h", op::WRITE, resource::TOPIC, "orders"));
        let all_denied = acls(vec![
            acl(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                ANY_USER,
                op::READ,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                ALICE,
                op::ALL,
                permission::DENY,
            ),
        ]);
        assert!(!all_denied.authorize(ALICE, "h", op::READ, resource::TOPIC, "orders"));
        assert!(all_denied.authorize("User:bob", "h", op::READ, resource::TOPIC, "orders"));
    }

    #[test]
    fn read_write_delete_alter_imply_describe_but_a_deny_does_not_spread() {
        for granted in [op::READ, op::WRITE, op::DELETE, op::ALTER] {
            let a = acls(vec![acl(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                ALICE,
                granted,
                permission::ALLOW,
            )]);
            assert!(
                a.authorize(ALICE, "h", op::DESCRIBE, resource::TOPIC, "t"),
                "{granted}"
            );
            assert!(
                !a.authorize(ALICE, "h", op::CREATE, resource::TOPIC, "t"),
                "{granted}"
            );
        }
        let a = acls(vec![acl(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            ALICE,
            op::ALTER_CONFIGS,
            permission::ALLOW,
        )]);
        assert!(a.authorize(ALICE, "h", op::DESCRIBE_CONFIGS, resource::TOPIC, "t"));
        let a = acls(vec![
            acl(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                ALICE,
                op::DESCRIBE,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                ALICE,
                op::READ,
                permission::DENY,
            ),
        ]);
        assert!(a.authorize(ALICE, "h", op::DESCRIBE, resource::TOPIC, "t"));
    }

    #[test]
    fn prefixes_wildcards_principals_and_hosts() {
        let mut host_bound = acl(
            resource::GROUP,
            "app-",
            pattern::PREFIXED,
            ALICE,
            op::READ,
            permission::ALLOW,
        );
        host_bound.host = "10.0.0.1".into();
        let a = acls(vec![host_bound]);
        assert!(a.authorize(ALICE, "10.0.0.1", op::READ, resource::GROUP, "app-1"));
        assert!(!a.authorize(ALICE, "10.0.0.2", op::READ, resource::GROUP, "app-1"));
        assert!(!a.authorize(ALICE, "10.0.0.1", op::READ, resource::GROUP, "ap"));
        // A prefixed "*" is a literal prefix, not a wildcard.
        let a = acls(vec![acl(
            resource::TOPIC,
            "*",
            pattern::PREFIXED,
            ALICE,
            op::READ,
            permission::ALLOW,
        )]);
        assert!(!a.authorize(ALICE, "h", op::READ, resource::TOPIC, "orders"));
        // Same name, other resource type.
        let a = acls(vec![acl(
            resource::TOPIC,
            "x",
            pattern::LITERAL,
            ANY_USER,
            op::READ,
            permission::ALLOW,
        )]);
        assert!(a.authorize("User:anyone", "h", op::READ, resource::TOPIC, "x"));
        assert!(!a.authorize("User:anyone", "h", op::READ, resource::GROUP, "x"));
    }

    #[test]
    fn filters_select_as_describe_and_delete_acls_do() {
        let a = acls(vec![
            acl(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                ALICE,
                op::READ,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "ord",
                pattern::PREFIXED,
                ALICE,
                op::WRITE,
                permission::DENY,
            ),
            acl(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                "User:bob",
                op::READ,
                permission::ALLOW,
            ),
            acl(
                resource::GROUP,
                "orders",
                pattern::LITERAL,
                ALICE,
                op::READ,
                permission::ALLOW,
            ),
        ]);
        let f = |rt, name: Option<&str>, pt| AclFilter {
            resource_type: rt,
            resource_name: name.map(str::to_string),
            pattern_type: pt,
            principal: None,
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        let count = |f: AclFilter| a.matching(&f).count();
        assert_eq!(count(f(resource::ANY, None, pattern::ANY)), 4);
        assert_eq!(
            count(f(resource::TOPIC, Some("orders"), pattern::LITERAL)),
            1
        );
        assert_eq!(count(f(resource::TOPIC, Some("orders"), pattern::ANY)), 1);
        // MATCH: every binding that applies to topic "orders".
        assert_eq!(count(f(resource::TOPIC, Some("orders"), pattern::MATCH)), 3);
        assert_eq!(count(f(resource::TOPIC, None, pattern::PREFIXED)), 1);
    }

    #[test]
    fn bad_bindings_are_refused() {
        let good = acl(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            ALICE,
            op::READ,
            permission::ALLOW,
        );
        assert_eq!(good.validate(), Ok(()));
        let bad = |f: fn(&mut AclBinding)| {
            let mut b = good.clone();
            f(&mut b);
            b.validate().unwrap_err()
        };
        assert_eq!(
            bad(|b| b.resource_type = resource::ANY),
            InvalidAcl::ResourceType(1)
        );
        assert_eq!(
            bad(|b| b.pattern_type = pattern::MATCH),
            InvalidAcl::PatternType(2)
        );
        assert_eq!(bad(|b| b.operation = op::ANY), InvalidAcl::Operation(1));
        assert_eq!(
            bad(|b| b.permission = permission::ANY),
            InvalidAcl::Permission(1)
        );
        assert_eq!(
            bad(|b| b.principal = "alice".into()),
            InvalidAcl::Principal("alice".into())
        );
        assert_eq!(
            bad(|b| {
                b.resource_type = resource::CLUSTER;
                b.resource_name = "c".into()
            }),
            InvalidAcl::ClusterName
        );
    }

    #[test]
    fn a_binding_is_its_own_global_key() {
        let b = acl(
            resource::TOPIC,
            "pay-",
            pattern::PREFIXED,
            ALICE,
            op::WRITE,
            permission::DENY,
        );
        assert_eq!(AclBinding::from_key(&b.to_key()), Some(b.clone()));
        // The same binding gives the same bytes: one entry, however many
        // regions create it.
        assert_eq!(b.to_key(), b.clone().to_key());
        assert_eq!(AclBinding::from_key(b"\xff\xff"), None);
        let mut bad = b;
        bad.principal = "alice".into();
        assert_eq!(AclBinding::from_key(&bad.to_key()), None);
    }

    #[test]
    fn some_topic_writable_unless_a_wildcard_deny_covers_the_type() {
        let write =
            |name: &str, pt: i8, perm: i8| acl(resource::TOPIC, name, pt, ALICE, op::WRITE, perm);
        let a = acls(vec![write("orders", pattern::LITERAL, permission::ALLOW)]);
        assert!(a.any_allowed(ALICE, "h", op::WRITE, resource::TOPIC));
        assert!(!a.any_allowed("User:bob", "h", op::WRITE, resource::TOPIC));
        assert!(!a.any_allowed(ALICE, "h", op::WRITE, resource::GROUP));
        let denied = acls(vec![
            write("orders", pattern::LITERAL, permission::ALLOW),
            write(WILDCARD, pattern::LITERAL, permission::DENY),
        ]);
        assert!(!denied.any_allowed(ALICE, "h", op::WRITE, resource::TOPIC));
        // A deny of one topic leaves the others.
        let partly = acls(vec![
            write("orders", pattern::LITERAL, permission::ALLOW),
            write("secret", pattern::LITERAL, permission::DENY),
        ]);
        assert!(partly.any_allowed(ALICE, "h", op::WRITE, resource::TOPIC));
        assert!(partly.any_allowed("User:admin", "h", op::WRITE, resource::TOPIC));
    }
}
