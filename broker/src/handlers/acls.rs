//! CreateAcls, DescribeAcls and DeleteAcls (`kafka-acls.sh`), with the
//! checks and error codes of Kafka's KRaft controller.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::authorize::Authz;
use crate::acl::{op, pattern, permission, resource, AclBinding, AclFilter, Acls};
use crate::context::BrokerCtx;
use crate::error::KafkaCode;

const DISABLED: &str = "No Authorizer is configured.";

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Kafka refuses a filter with an UNKNOWN (0) code, or a MATCH pattern
/// used where it means nothing, before looking at any binding.
fn check_filter(f: &AclFilter) -> Result<(), String> {
    if !(resource::ANY..=resource::USER).contains(&f.resource_type) {
        return Err(format!("Invalid resource type {}", f.resource_type));
    }
    if !(pattern::ANY..=pattern::PREFIXED).contains(&f.pattern_type) {
        return Err(format!("Invalid pattern type {}", f.pattern_type));
    }
    if !(op::ANY..=op::DESCRIBE_TOKENS).contains(&f.operation) {
        return Err(format!("Invalid operation {}", f.operation));
    }
    if !(permission::ANY..=permission::ALLOW).contains(&f.permission) {
        return Err(format!("Invalid permission type {}", f.permission));
    }
    Ok(())
}

/// Why a whole ACL request is refused, if it is: no authorizer (Kafka's
/// SECURITY_DISABLED), or no `operation` on the cluster.
fn refused(ctx: &BrokerCtx, authz: &Authz, operation: i8) -> Option<(i16, &'static str)> {
    if !ctx.authorizer.enabled() {
        return Some((E::SecurityDisabled.code(), DISABLED));
    }
    (!authz.cluster(operation)).then_some((
        E::ClusterAuthorizationFailed.code(),
        "Cluster authorization failed.",
    ))
}

/// DescribeAcls and DeleteAcls filter by the same seven fields.
fn filter(
    resource_type: i8,
    resource_name: &Option<StrBytes>,
    pattern_type: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> AclFilter {
    AclFilter {
        resource_type,
        resource_name: resource_name.as_ref().map(|n| n.to_string()),
        pattern_type,
        principal: principal.as_ref().map(|n| n.to_string()),
        host: host.as_ref().map(|n| n.to_string()),
        operation,
        permission,
    }
}

fn bindings(ctx: &BrokerCtx) -> Acls {
    Acls {
        bindings: ctx.catalog.acl_bindings(),
        ..Acls::default()
    }
}

pub fn describe(ctx: &BrokerCtx, authz: &Authz, req: &DescribeAclsRequest) -> DescribeAclsResponse {
    let refuse = |code: i16, msg: &str| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(s(msg)))
    };
    if let Some((code, msg)) = refused(ctx, authz, op::DESCRIBE) {
        return refuse(code, msg);
    }
    let filter = filter(
        req.resource_type_filter,
        &req.resource_name_filter,
        req.pattern_type_filter,
        &req.principal_filter,
        &req.host_filter,
        req.operation,
        req.permission_type,
    );
    if let Err(why) = check_filter(&filter) {
        return refuse(E::InvalidRequest.code(), &why);
    }
    let acls = bindings(ctx);
    let mut by_resource: BTreeMap<(i8, &str, i8), Vec<AclDescription>> = BTreeMap::new();
    for b in acls.matching(&filter) {
        by_resource
            .entry((b.resource_type, &b.resource_name, b.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(b.principal.clone()))
                    .with_host(s(b.host.clone()))
                    .with_operation(b.operation)
                    .with_permission_type(b.permission),
            );
    }
    DescribeAclsResponse::default().with_resources(
        by_resource
            .into_iter()
            .map(|((rt, name, pt), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(s(name))
                    .with_pattern_type(pt)
                    .with_acls(acls)
            })
            .collect(),
    )
}

pub async fn create(ctx: &BrokerCtx, authz: &Authz, req: CreateAclsRequest) -> CreateAclsResponse {
    let all = |code: i16, msg: &str| {
        CreateAclsResponse::default().with_results(
            req.creations
                .iter()
                .map(|_| {
                    AclCreationResult::default()
                        .with_error_code(code)
                        .with_error_message(Some(s(msg)))
                })
                .collect(),
        )
    };
    if let Some((code, msg)) = refused(ctx, authz, op::ALTER) {
        return all(code, msg);
    }
    let checked: Vec<Result<AclBinding, String>> = req
        .creations
        .iter()
        .map(|c| {
            let b = AclBinding {
                resource_type: c.resource_type,
                resource_name: c.resource_name.to_string(),
                pattern_type: c.resource_pattern_type,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: c.operation,
                permission: c.permission_type,
            };
            b.validate().map(|()| b).map_err(|e| e.to_string())
        })
        .collect();
    let valid: Vec<AclBinding> = checked.iter().filter_map(|r| r.clone().ok()).collect();
    let outcome = if valid.is_empty() {
        Ok(())
    } else {
        ctx.catalog.alter_acls(valid, Vec::new()).await
    };
    CreateAclsResponse::default().with_results(
        checked
            .into_iter()
            .map(|r| match (r, &outcome) {
                (Err(why), _) => AclCreationResult::default()
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(why))),
                (Ok(_), Err(e)) => AclCreationResult::default()
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
                (Ok(_), Ok(())) => AclCreationResult::default(),
            })
            .collect(),
    )
}

pub async fn delete(ctx: &BrokerCtx, authz: &Authz, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let all = |code: i16, msg: &str| {
        DeleteAclsResponse::default().with_filter_results(
            req.filters
                .iter()
                .map(|_| {
                    DeleteAclsFilterResult::default()
                        .with_error_code(code)
                        .with_error_message(Some(s(msg)))
                })
                .collect(),
        )
    };
    if let Some((code, msg)) = refused(ctx, authz, op::ALTER) {
        return all(code, msg);
    }
    let acls = bindings(ctx);
    let per_filter: Vec<Result<Vec<AclBinding>, String>> = req
        .filters
        .iter()
        .map(|f| {
            let filter = filter(
                f.resource_type_filter,
                &f.resource_name_filter,
                f.pattern_type_filter,
                &f.principal_filter,
                &f.host_filter,
                f.operation,
                f.permission_type,
            );
            check_filter(&filter)?;
            Ok(acls.matching(&filter).cloned().collect())
        })
        .collect();
    let doomed: Vec<AclBinding> = per_filter
        .iter()
        .flat_map(|r| r.iter().flatten().cloned())
        .collect();
    let outcome = if doomed.is_empty() {
        Ok(())
    } else {
        ctx.catalog.alter_acls(Vec::new(), doomed).await
    };
    DeleteAclsResponse::default().with_filter_results(
        per_filter
            .into_iter()
            .map(|r| match (r, &outcome) {
                (Err(why), _) => DeleteAclsFilterResult::default()
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(why))),
                (Ok(_), Err(e)) => DeleteAclsFilterResult::default()
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
                (Ok(matched), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                    matched
                        .into_iter()
                        .map(|b| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(b.resource_type)
                                .with_resource_name(s(b.resource_name))
                                .with_pattern_type(b.pattern_type)
                                .with_principal(s(b.principal))
                                .with_host(s(b.host))
                                .with_operation(b.operation)
                                .with_permission_type(b.permission)
                        })
                        .collect(),
                ),
            })
            .collect(),
    )
}
