//! The global `__meta` on the broker's admin listener: what the region's
//! dc-link exchanges with peer regions (summaries, deltas, merges,
//! acknowledgements), and the status an operator reads.
//!
//! Summaries and deltas are the prost encodings of
//! `chronik_metadata_sync::{Summary, Delta}`. Reads are answered from this
//! broker's applied copy; every change goes through the controller, so all
//! brokers of the region apply it at the same log position.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chronik_metadata_sync::{ConflictKind, Delta, Key, Side, Summary};
use serde_json::{json, Value};

use crate::catalog::TopicError;
use crate::context::BrokerCtx;
use crate::raft::types::ControllerCommand;

type Ctx = State<Arc<BrokerCtx>>;

pub fn router(ctx: Arc<BrokerCtx>) -> Router {
    let max = chronik_metadata_sync::Limits::default().max_message_bytes;
    Router::new()
        .route("/v1/meta/summary", get(summary))
        .route("/v1/meta/delta", post(delta))
        .route("/v1/meta/merge", post(merge))
        .route("/v1/meta/ack", post(ack))
        .route("/v1/meta/regions", post(regions))
        .route("/v1/meta/reconcile/{topic_id}", post(reconcile))
        .route("/v1/meta/wait", get(wait))
        .route("/v1/meta/status", get(status))
        .route("/v1/meta/conflicts", get(conflicts))
        .layer(DefaultBodyLimit::max(max + 1024))
        .with_state(ctx)
}

fn bytes(b: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
}

fn refused(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

/// A controller write's outcome: refused by the apply (the same answer on
/// every broker) is the peer's fault; anything else is ours, retry later.
fn written(r: Result<(), TopicError>) -> Response {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(TopicError::Rejected { message, .. }) => refused(message),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn summary(State(ctx): Ctx) -> Response {
    bytes(ctx.catalog.global.read().summary().encode())
}

/// What the region that sent this summary lacks.
async fn delta(State(ctx): Ctx, body: Bytes) -> Response {
    let rep = ctx.catalog.global.read();
    let peer = match Summary::decode(&body, rep.limits()) {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    match rep.delta_for(&peer) {
        Ok(d) => bytes(d.encode()),
        Err(e) => refused(e),
    }
}

/// A peer's delta. Checked whole before it is proposed, so a malformed
/// message never reaches the controller log.
async fn merge(State(ctx): Ctx, body: Bytes) -> Response {
    let checked = {
        let rep = ctx.catalog.global.read();
        Delta::decode(&body, rep.limits()).map(|d| {
            if d.from == *rep.region() {
                return Err(());
            }
            Ok(teaches(rep.knowledge(), &d))
        })
    };
    tracing::debug!(teaches = ?checked.as_ref().ok(), "metadata-sync: a peer's delta");
    match checked {
        Err(e) => return refused(e),
        Ok(Err(())) => return refused("a delta from this region itself"),
        // Every region echoes what it merged back once (its peer's summary
        // is a round trip old): answered without a controller write.
        Ok(Ok(false)) => return (StatusCode::OK, "known\n").into_response(),
        Ok(Ok(true)) => {}
    }
    written(
        ctx.cluster
            .controller_write(ControllerCommand::MetaMerge {
                delta: body.to_vec(),
                wall_ms: crate::handlers::now_ms(),
            })
            .await,
    )
}

/// Whether merging `d` could change anything here: an entry not yet seen,
/// or knowledge this region lacks.
fn teaches(k: &chronik_metadata_sync::Knowledge, d: &Delta) -> bool {
    d.entries.iter().any(|e| !k.covers(&e.vv))
        || d.context.as_ref().is_some_and(|c| {
            c.rows().any(|(r, row)| {
                row.base > k.base(r) || row.extra.iter().any(|n| !k.contains(r, *n))
            })
        })
}

/// A peer's summary, as its acknowledgement of the tombstones it covers.
async fn ack(State(ctx): Ctx, body: Bytes) -> Response {
    if let Err(e) = Summary::decode(&body, ctx.catalog.global.read().limits()) {
        return refused(e);
    }
    written(
        ctx.cluster
            .controller_write(ControllerCommand::MetaPeerSummary {
                summary: body.to_vec(),
            })
            .await,
    )
}

/// Re-creates (or re-aligns) this region's copy of a topic from its global
/// entry; nothing is written when there is nothing to do.
async fn reconcile(
    State(ctx): Ctx,
    axum::extract::Path(topic_id): axum::extract::Path<String>,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&topic_id) else {
        return refused(format!("{topic_id} is not a topic id"));
    };
    let needed = {
        let rep = ctx.catalog.global.read();
        let tid = chronik_metadata_sync::TopicId(*id.as_bytes());
        rep.topic_name(&tid).is_some() && ctx.catalog.get_by_id(&id).is_none()
    };
    if !needed {
        return (StatusCode::OK, "unchanged\n").into_response();
    }
    written(
        ctx.cluster
            .controller_write(ControllerCommand::MetaReconcile { topic_id: id })
            .await,
    )
}

/// The topology's regions; written only when they differ.
async fn regions(State(ctx): Ctx, Json(mut regions): Json<Vec<String>>) -> Response {
    regions.sort();
    regions.dedup();
    for r in &regions {
        if let Err(e) = chronik_metadata_sync::RegionId::new(r.clone()) {
            return refused(e);
        }
    }
    let mut have: Vec<String> = {
        let rep = ctx.catalog.global.read();
        rep.regions().map(|r| r.to_string()).collect()
    };
    have.sort();
    let mut want = regions.clone();
    if !want.contains(&ctx.config.region) {
        want.push(ctx.config.region.clone());
        want.sort();
    }
    if have == want {
        return (StatusCode::OK, "unchanged\n").into_response();
    }
    written(
        ctx.cluster
            .controller_write(ControllerCommand::MetaRegions { regions })
            .await,
    )
}

/// Answers once the digest differs from the caller's, or at the timeout
/// (at most 30 s): lets the dc-link push changes as they are applied.
/// `digest`: the hex digest the caller last saw; `timeout_ms`.
async fn wait(State(ctx): Ctx, RawQuery(q): RawQuery) -> Response {
    let param = |name: &str| crate::admin_http::query_param(q.as_deref(), name);
    let seen = param("digest")
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .unwrap_or(0);
    let timeout_ms: u64 = param("timeout_ms")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(30_000));
    loop {
        let notified = ctx.catalog.global.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = ctx.catalog.global.read().digest();
        if now != seen {
            return Json(json!({"digest": format!("{now:016x}")})).into_response();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Json(json!({"digest": format!("{now:016x}")})).into_response();
        }
    }
}

fn side(s: &Side) -> Value {
    json!({
        "origin": s.origin.as_str(),
        "hlc": format!("{}.{}", s.hlc.physical_ms, s.hlc.logical),
        "version": s.vv.iter().map(|(r, c)| (r.to_string(), c)).collect::<std::collections::BTreeMap<_, _>>(),
        "value": s.value.as_ref().map(|v| describe_value(v)),
    })
}

/// Values are prost bytes; shown as their length unless printable.
fn describe_value(v: &[u8]) -> Value {
    json!({"bytes": v.len()})
}

fn conflict_kind(k: &ConflictKind) -> Value {
    match k {
        ConflictKind::Concurrent => json!("concurrent"),
        ConflictKind::TopicName {
            name,
            winner,
            renamed_to,
        } => json!({"topic_name": name, "winner_id": winner.to_string(), "renamed_to": renamed_to}),
        ConflictKind::Fence => json!("fence"),
    }
}

async fn conflicts(State(ctx): Ctx) -> Response {
    let rep = ctx.catalog.global.read();
    let list: Vec<Value> = rep
        .conflicts()
        .map(|c| {
            let detail = |s: &Side| {
                let mut v = side(s);
                let shown = match &c.key {
                    Key::GroupOffset { .. } => s
                        .value
                        .clone()
                        .and_then(|b| <chronik_metadata_sync::OffsetValue as prost::Message>::decode(b).ok())
                        .map(|o| json!({"offset": o.offset, "committed_in": o.committed_in})),
                    Key::Topic(_) => s
                        .value
                        .clone()
                        .and_then(|b| <chronik_metadata_sync::TopicDef as prost::Message>::decode(b).ok())
                        .map(|d| json!({"name": d.name, "partitions": d.partitions, "configs": d.configs, "creator": d.creator})),
                    _ => None,
                };
                if let Some(shown) = shown {
                    v["value"] = shown;
                }
                v
            };
            json!({
                "seq": c.seq,
                "key": c.key.to_string(),
                "kind": conflict_kind(&c.kind),
                "kept": detail(&c.kept),
                "lost": detail(&c.lost),
            })
        })
        .collect();
    Json(json!({"region": rep.region().as_str(), "conflicts": list})).into_response()
}

/// Committed offsets (from any region) that point past this region's copy
/// of the partition: reported, never clamped.
pub fn offsets_beyond_log_end(ctx: &BrokerCtx) -> Vec<Value> {
    let rep = ctx.catalog.global.read();
    let mut out = Vec::new();
    for (group, topic, partition, v) in rep.entries().filter_map(|e| e.group_offset()) {
        let Some(log) = ctx
            .catalog
            .get(topic)
            .and_then(|t| t.partition(partition).cloned())
        else {
            continue;
        };
        let end = log.high_watermark();
        if v.offset > end {
            out.push(json!({
                "group": group, "topic": topic, "partition": partition,
                "offset": v.offset, "log_end": end, "committed_in": v.committed_in,
            }));
        }
    }
    out
}

pub async fn status(State(ctx): Ctx) -> Response {
    let beyond = offsets_beyond_log_end(&ctx);
    // The newest hundred.
    let moved = ctx.catalog.offsets_moved().unwrap_or_default();
    let moved = &moved[moved.len().saturating_sub(100)..];
    let rep = ctx.catalog.global.read();
    let knowledge: serde_json::Map<String, Value> = rep
        .knowledge()
        .rows()
        .map(|(r, row)| {
            (
                r.to_string(),
                json!({"base": row.base, "extra": row.extra.len()}),
            )
        })
        .collect();
    let c = rep.counters();
    let topics: Vec<Value> = rep
        .topics()
        .map(|(id, name, def)| {
            let home = rep.home(&id);
            json!({
                "name": name, "id": uuid::Uuid::from_bytes(id.0).to_string(),
                "asks_for": def.name, "partitions": def.partitions,
                "home": home.as_ref().map(|h| h.home.clone()), "epoch": home.map(|h| h.epoch),
                "creator": def.creator,
            })
        })
        .collect();
    let offsets = rep
        .entries()
        .filter(|e| matches!(e.key, Key::GroupOffset { .. }) && !e.is_tombstone())
        .count();
    Json(json!({
        "region": rep.region().as_str(),
        "regions": rep.regions().map(|r| r.as_str()).collect::<Vec<_>>(),
        "digest": format!("{:016x}", rep.digest()),
        "entries": rep.entries().count(),
        "tombstones": rep.tombstones(),
        "live_offsets": offsets,
        "knowledge": knowledge,
        "conflicts": {
            "concurrent": c.concurrent_conflicts,
            "topic_name": c.topic_name_conflicts,
            "fence": c.fence_conflicts,
            "logged": rep.conflicts().count(),
            "evicted": c.conflicts_evicted,
        },
        "stale_epochs": c.stale_epochs,
        "tombstones_collected": c.tombstones_collected,
        "rejected_messages": c.rejected_messages,
        "topics": topics,
        "offsets_beyond_log_end": beyond,
        "offsets_moved": moved,
    }))
    .into_response()
}

/// How stale `chronik_meta_offsets_beyond_log_end` may be.
const BEYOND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Prometheus gauges of the replica, rendered with the broker's metrics.
pub fn record_metrics(ctx: &BrokerCtx) {
    // Counting offsets beyond the log end walks every committed offset:
    // done at most every BEYOND_EVERY, not on every scrape.
    let beyond = {
        let mut cached = ctx.catalog.global.beyond_log_end.lock().unwrap();
        match *cached {
            Some((at, n)) if at.elapsed() < BEYOND_EVERY => n,
            _ => {
                let n = offsets_beyond_log_end(ctx).len();
                *cached = Some((std::time::Instant::now(), n));
                n
            }
        }
    };
    let rep = ctx.catalog.global.read();
    let c = rep.counters();
    for (kind, n) in [
        ("concurrent", c.concurrent_conflicts),
        ("topic_name", c.topic_name_conflicts),
        ("fence", c.fence_conflicts),
    ] {
        metrics::counter!("chronik_meta_conflicts_total", "kind" => kind).absolute(n);
    }
    metrics::gauge!("chronik_meta_entries").set(rep.len() as f64);
    metrics::gauge!("chronik_meta_tombstones").set(rep.tombstones() as f64);
    metrics::gauge!("chronik_meta_offsets_beyond_log_end").set(beyond as f64);
    metrics::counter!("chronik_meta_rejected_messages_total").absolute(c.rejected_messages);
}
