//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs and IncrementalAlterConfigs.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::acl::op;
use crate::catalog::{ConfigOp, Topic, TopicError};
use crate::configs::{self, ConfigType};
use crate::context::BrokerCtx;
use crate::error::KafkaCode;

use super::authorize::Authz;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// A topic's full config list as DescribeConfigs and CreateTopics report it.
fn topic_config_entries(
    ctx: &BrokerCtx,
    t: &Topic,
) -> Vec<(&'static configs::ConfigDef, String, i8)> {
    configs::TOPIC_CONFIGS
        .iter()
        .map(|d| match t.record.configs.get(d.name) {
            Some(v) => (d, v.clone(), SOURCE_TOPIC_CONFIG),
            None if d.name == configs::HOME_REGION => {
                (d, ctx.config.region.clone(), SOURCE_DEFAULT_CONFIG)
            }
            None => (
                d,
                configs::default_value(d, ctx.catalog.defaults()),
                SOURCE_DEFAULT_CONFIG,
            ),
        })
        .collect()
}

pub async fn create_topics(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.to_string()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.to_string();
        let mut r = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        if seen[&name] > 1 {
            results.push(
                r.with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(format!(
                    "Create topics request from client contains multiple entries for topic {name}"
                )))),
            );
            continue;
        }
        if !authz.create_topic(&name) {
            results.push(
                r.with_error_code(E::TopicAuthorizationFailed.code())
                    .with_error_message(Some(s(format!("Authorization failed for topic {name}")))),
            );
            continue;
        }
        let mut cfgs = BTreeMap::new();
        let mut bad_config = None;
        for c in &t.configs {
            match &c.value {
                Some(v) => {
                    cfgs.insert(c.name.to_string(), v.to_string());
                }
                None => {
                    bad_config = Some(format!(
                        "Null value not supported for topic configs: {}",
                        c.name.as_str()
                    ))
                }
            }
        }
        if let Some(msg) = bad_config {
            results.push(
                r.with_error_code(E::InvalidConfig.code())
                    .with_error_message(Some(s(msg))),
            );
            continue;
        }
        let assignments: Vec<Vec<i32>> = t
            .assignments
            .iter()
            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
            .collect();
        match ctx
            .catalog
            .create_topic(
                &name,
                t.num_partitions,
                t.replication_factor,
                &assignments,
                &cfgs,
                req.validate_only,
            )
            .await
        {
            Ok(topic) => {
                if !req.validate_only {
                    ctx.cluster
                        .wait_leaders(&topic, std::time::Duration::from_secs(5))
                        .await;
                }
                r = r
                    .with_topic_id(topic.id())
                    .with_num_partitions(topic.record.partitions.len() as i32)
                    .with_replication_factor(topic.replicas(0).len().max(1) as i16);
                if version >= 5 {
                    let entries = topic_config_entries(ctx, &topic)
                        .into_iter()
                        .map(|(d, v, src)| {
                            CreatableTopicConfigs::default()
                                .with_name(s(d.name))
                                .with_value(Some(s(v)))
                                .with_config_source(src)
                        })
                        .collect();
                    r = r.with_configs(Some(entries));
                }
                results.push(r);
            }
            Err(e) => results.push(
                r.with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
            ),
        }
    }
    // Fields newer than the negotiated version must stay at their defaults.
    for r in &mut results {
        if version < 7 {
            r.topic_id = uuid::Uuid::nil();
        }
        if version < 5 {
            r.num_partitions = -1;
            r.replication_factor = -1;
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; earlier versions by name only.
    let targets: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut out = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let r = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(id);
        let resolved = match &name {
            Some(n) => Some(n.to_string()),
            None => ctx.catalog.get_by_id(&id).map(|t| t.name().to_string()),
        };
        let Some(resolved) = resolved else {
            out.push(r.with_error_code(E::UnknownTopicId.code()));
            continue;
        };
        if !authz.topic(op::DELETE, &resolved) {
            out.push(r.with_error_code(E::TopicAuthorizationFailed.code()));
            continue;
        }
        match ctx.catalog.delete_topic(&resolved).await {
            Ok(t) => out.push(
                r.with_name(Some(TopicName(s(resolved))))
                    .with_topic_id(t.id()),
            ),
            Err(e) => out.push(
                r.with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
            ),
        }
    }
    for r in &mut out {
        if version < 6 {
            r.topic_id = uuid::Uuid::nil();
        }
        if version < 5 {
            r.error_message = None;
        }
    }
    DeleteTopicsResponse::default().with_responses(out)
}

pub async fn create_partitions(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        // An empty list means the same as none: let the broker place them.
        let assignments: Option<Vec<Vec<i32>>> =
            t.assignments.as_ref().filter(|a| !a.is_empty()).map(|a| {
                a.iter()
                    .map(|x| x.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            });
        let r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if !authz.topic(op::ALTER, &t.name) {
            results.push(r.with_error_code(E::TopicAuthorizationFailed.code()));
            continue;
        }
        match ctx
            .catalog
            .create_partitions(&t.name, t.count, assignments.as_deref(), req.validate_only)
            .await
        {
            Ok(()) => results.push(r),
            Err(e) => results.push(
                r.with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
            ),
        }
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// The broker-level settings DescribeConfigs reports for this broker.
fn broker_configs(ctx: &BrokerCtx) -> Vec<(&'static str, String, ConfigType)> {
    let c = &ctx.config;
    vec![
        ("broker.id", c.node_id.to_string(), ConfigType::Int),
        ("node.id", c.node_id.to_string(), ConfigType::Int),
        (
            "auto.create.topics.enable",
            c.topics.auto_create.to_string(),
            ConfigType::Boolean,
        ),
        (
            "num.partitions",
            c.topics.default_partitions.to_string(),
            ConfigType::Int,
        ),
        ("default.replication.factor", "1".into(), ConfigType::Int),
        (
            "log.retention.ms",
            c.topics.retention_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.retention.bytes",
            c.topics.retention_bytes.to_string(),
            ConfigType::Long,
        ),
        (
            "log.retention.check.interval.ms",
            c.topics.retention_check_interval_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.cleaner.backoff.ms",
            c.topics.cleaner_backoff_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.cleaner.dedupe.buffer.size",
            c.topics.cleaner_key_map_bytes.to_string(),
            ConfigType::Long,
        ),
        (
            "message.max.bytes",
            c.topics.max_message_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "socket.request.max.bytes",
            c.limits.socket_request_max_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "chronik.durability",
            c.durability.to_string(),
            ConfigType::String,
        ),
        ("chronik.region", c.region.clone(), ConfigType::String),
    ]
}

pub fn describe_configs(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: &DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|res| {
            let r = DescribeConfigsResult::default().with_resource_type(res.resource_type).with_resource_name(res.resource_name.clone());
            // A null or empty key list means every config (Kafka 4.1 answers both so).
            let wanted = |name: &str| res.configuration_keys.as_ref().filter(|ks| !ks.is_empty()).map(|ks| ks.iter().any(|k| k.as_str() == name)).unwrap_or(true);
            let entry = |name: &str, value: String, source: i8, read_only: bool, ty: ConfigType, doc: &str| {
                let mut e = DescribeConfigsResourceResult::default()
                    .with_name(s(name))
                    .with_value(Some(s(value)))
                    .with_read_only(read_only)
                    .with_config_source(source);
                if version >= 3 {
                    e = e.with_config_type(ty.code());
                    if req.include_documentation {
                        e = e.with_documentation(Some(s(doc)));
                    }
                }
                e
            };
            if let Some(code) = config_denied(authz, op::DESCRIBE_CONFIGS, res.resource_type, &res.resource_name) {
                return r.with_error_code(code);
            }
            match res.resource_type {
                RESOURCE_TOPIC => match ctx.catalog.get(&res.resource_name) {
                    None => r.with_error_code(E::UnknownTopicOrPartition.code()).with_error_message(Some(s(TopicError::Unknown.to_string()))),
                    Some(t) => r.with_configs(
                        topic_config_entries(ctx, &t)
                            .into_iter()
                            .filter(|(d, _, _)| wanted(d.name))
                            .map(|(d, v, src)| entry(d.name, v, src, false, d.ty, d.doc))
                            .collect(),
                    ),
                },
                RESOURCE_BROKER => {
                    let name = res.resource_name.as_str();
                    if !name.is_empty() && name != ctx.config.node_id.to_string() {
                        return r
                            .with_error_code(E::InvalidRequest.code())
                            .with_error_message(Some(s(format!("Unexpected broker id, expected {} or empty string, but received {name}", ctx.config.node_id))));
                    }
                    r.with_configs(
                        broker_configs(ctx)
                            .into_iter()
                            .filter(|(n, _, _)| wanted(n))
                            .map(|(n, v, ty)| entry(n, v, SOURCE_STATIC_BROKER_CONFIG, true, ty, "Set in the broker's TOML config file."))
                            .collect(),
                    )
                }
                other => r
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(format!("Unsupported resource type {other} for DescribeConfigs")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Turns Kafka's SET/DELETE/APPEND/SUBTRACT operations into whole-value
/// changes; APPEND and SUBTRACT apply only to list configs.
fn config_ops(
    topic: &Topic,
    res: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
) -> Result<Vec<ConfigOp>, String> {
    let mut current = topic.record.configs.clone();
    let mut ops = Vec::new();
    for c in &res.configs {
        let name = c.name.to_string();
        let value = c.value.as_ref().map(|v| v.to_string());
        let list_value = |cur: &BTreeMap<String, String>| -> Result<Vec<String>, String> {
            match configs::find(&name) {
                Some(d) if d.ty == ConfigType::List => Ok(cur
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| d.default.to_string())
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()),
                Some(_) => Err(format!("Config value append/subtract is not allowed for config key {name} as it is not a list")),
                None => Err(format!("Unknown topic config name: {name}")),
            }
        };
        let op = match c.config_operation {
            0 => ConfigOp::Set(
                name.clone(),
                value.ok_or_else(|| format!("Null value not supported for: {name}"))?,
            ),
            1 => ConfigOp::Delete(name.clone()),
            2 | 3 => {
                let mut items = list_value(&current)?;
                let given: Vec<String> = value
                    .unwrap_or_default()
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                if c.config_operation == 2 {
                    for g in given {
                        if !items.contains(&g) {
                            items.push(g);
                        }
                    }
                } else {
                    items.retain(|x| !given.contains(x));
                }
                ConfigOp::Set(name.clone(), items.join(","))
            }
            other => return Err(format!("Unknown config operation {other}")),
        };
        match &op {
            ConfigOp::Set(k, v) => {
                current.insert(k.clone(), v.clone());
            }
            ConfigOp::Delete(k) => {
                current.remove(k);
            }
        }
        ops.push(op);
    }
    Ok(ops)
}

/// Kafka's config permission check: a topic's configs need `operation`
/// on the topic, a broker's on the cluster. The error, if refused.
fn config_denied(authz: &Authz, operation: i8, resource_type: i8, name: &str) -> Option<i16> {
    match resource_type {
        RESOURCE_TOPIC if !authz.topic(operation, name) => Some(E::TopicAuthorizationFailed.code()),
        RESOURCE_BROKER if !authz.cluster(operation) => Some(E::ClusterAuthorizationFailed.code()),
        _ => None,
    }
}

/// What both config-alter APIs do with one resource: resolve it, turn the
/// request into whole-value changes with `ops`, and apply them atomically.
async fn alter_resource(
    ctx: &BrokerCtx,
    authz: &Authz,
    resource_type: i8,
    name: &str,
    api: &str,
    validate_only: bool,
    ops: impl FnOnce(&Topic) -> Result<Vec<ConfigOp>, String>,
) -> Result<(), (i16, String)> {
    if let Some(code) = config_denied(authz, op::ALTER_CONFIGS, resource_type, name) {
        return Err((code, String::new()));
    }
    match resource_type {
        RESOURCE_TOPIC => {
            let topic = ctx
                .catalog
                .get(name)
                .ok_or_else(|| (E::UnknownTopicOrPartition.code(), TopicError::Unknown.to_string()))?;
            let ops = ops(&topic).map_err(|msg| (E::InvalidConfig.code(), msg))?;
            ctx.catalog
                .alter_configs(name, ops, validate_only)
                .await
                .map_err(|e| (e.kafka_code(), e.to_string()))
        }
        RESOURCE_BROKER => Err((
            E::InvalidConfig.code(),
            "Chronik broker settings are static: change the broker's TOML config file and restart it".into(),
        )),
        other => Err((E::InvalidRequest.code(), format!("Unsupported resource type {other} for {api}"))),
    }
}

pub async fn incremental_alter_configs(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut out = Vec::with_capacity(req.resources.len());
    for res in &req.resources {
        let r = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let outcome = alter_resource(
            ctx,
            authz,
            res.resource_type,
            &res.resource_name,
            "IncrementalAlterConfigs",
            req.validate_only,
            |t| config_ops(t, res),
        )
        .await;
        out.push(match outcome {
            Ok(()) => r,
            Err((code, msg)) => r.with_error_code(code).with_error_message(Some(s(msg))),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(out)
}

/// The legacy AlterConfigs (kafkajs, older tools): the request's configs
/// replace the resource's whole explicit config set.
pub async fn alter_configs(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as Resp;
    let mut out = Vec::with_capacity(req.resources.len());
    for res in &req.resources {
        let r = Resp::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let outcome = alter_resource(
            ctx,
            authz,
            res.resource_type,
            &res.resource_name,
            "AlterConfigs",
            req.validate_only,
            |t| {
                let mut ops: Vec<ConfigOp> = t
                    .record
                    .configs
                    .keys()
                    .filter(|k| !res.configs.iter().any(|c| c.name.as_str() == k.as_str()))
                    .map(|k| ConfigOp::Delete(k.clone()))
                    .collect();
                for c in &res.configs {
                    let value = c.value.as_ref().ok_or_else(|| {
                        format!("Null value not supported for: {}", c.name.as_str())
                    })?;
                    ops.push(ConfigOp::Set(c.name.to_string(), value.to_string()));
                }
                Ok(ops)
            },
        )
        .await;
        out.push(match outcome {
            Ok(()) => r,
            Err((code, msg)) => r.with_error_code(code).with_error_message(Some(s(msg))),
        });
    }
    AlterConfigsResponse::default().with_responses(out)
}
