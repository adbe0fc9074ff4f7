//! The admin API of a topic's home role, used by `chronik ctl switchover`:
//!
//! - `GET  /v1/home/{topic}`: the global home and epoch, a move under way,
//!   and each partition replica on this broker (role, leader, log end);
//! - `POST /v1/home/{topic}/fence?to=R&epoch=E`: stop writes for a move;
//! - `POST /v1/home/{topic}/unfence`: lift a fence before the move;
//! - `POST /v1/home/{topic}/move?to=R&epoch=E`: give the home to R;
//! - `POST /v1/home/{topic}/take?from=R&epoch=E`: take the home from a lost
//!   region R (failover), once the lease voters agreed;
//! - `GET /v1/lease/clock`, `POST /v1/lease`, `GET /v1/lease`: the region's
//!   home lease as its dc-link pushes it (see `crate::lease_gate`);
//! - `GET /v1/link/actor`, `POST /v1/link/actor/claim?holder=&term=&renewals=`,
//!   `POST /v1/link/promotions?holder=&term=`: which dc-link process of the
//!   region acts, and the promotions its lease vote agreed to (see
//!   `catalog/link_actor.rs`).
//!
//! Errors are JSON `{"error": ...}`: 404 unknown topic, 409 a refusal by the
//! controller (the same on every broker), 503 the controller unreachable.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::admin_http::query_param;
use crate::catalog::TopicError;
use crate::context::BrokerCtx;

type Ctx = State<Arc<BrokerCtx>>;

pub fn router(ctx: Arc<BrokerCtx>) -> Router {
    Router::new()
        .route("/v1/home/{topic}", get(state))
        .route("/v1/home/{topic}/fence", post(fence))
        .route("/v1/home/{topic}/unfence", post(unfence))
        .route("/v1/home/{topic}/move", post(move_home))
        .route("/v1/home/{topic}/take", post(take_home))
        .route("/v1/txn/parts", get(txn_parts))
        .route("/v1/txn/settled", post(txn_settled))
        .route("/v1/lease/clock", get(lease_clock))
        .route("/v1/lease", get(lease_state).post(lease_push))
        .route("/v1/link/actor", get(link_actor))
        .route("/v1/link/actor/claim", post(claim_link_actor))
        .route("/v1/link/promotions", post(keep_link_promotions))
        .with_state(ctx)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

fn topic_error(e: TopicError) -> Response {
    match e {
        TopicError::Unknown => error(StatusCode::NOT_FOUND, "unknown topic"),
        TopicError::Rejected { message, .. } => error(StatusCode::CONFLICT, message),
        e => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `to` and `epoch` from the query string.
fn target(query: &Option<String>) -> Result<(String, u64), Response> {
    let to = query_param(query.as_deref(), "to")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "to=<region> is required"))?;
    let epoch = query_param(query.as_deref(), "epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "epoch=<home epoch> is required"))?;
    Ok((to.to_string(), epoch))
}

async fn state(State(ctx): Ctx, Path(topic): Path<String>) -> Response {
    let Some(t) = ctx.catalog.get(&topic) else {
        return error(StatusCode::NOT_FOUND, "unknown topic");
    };
    let (home, epoch) = ctx
        .catalog
        .home_of(&t.id())
        .map_or((None, None), |(h, e)| (Some(h), Some(e)));
    let partitions: Vec<serde_json::Value> = t
        .partitions
        .iter()
        .filter(|log| ctx.cluster.group(log.log_id).is_some())
        .map(|log| {
            let role = log.role();
            json!({
                "partition": log.partition,
                "leader": ctx.cluster.leader_group(log).is_some(),
                "role": role.map(|r| if r.home { "home" } else { "mirror" }),
                "role_epoch": role.map(|r| r.epoch),
                "high_watermark": log.high_watermark(),
                "log_end_offset": log.log_end_offset(),
            })
        })
        .collect();
    Json(json!({
        "topic": topic,
        "id": t.id().to_string(),
        "region": ctx.config.region,
        "node_id": ctx.config.node_id,
        "home": home,
        "epoch": epoch,
        "partition_count": t.partitions.len(),
        "moving": t.record.moving,
        "partitions": partitions,
    }))
    .into_response()
}

async fn fence(State(ctx): Ctx, Path(topic): Path<String>, RawQuery(q): RawQuery) -> Response {
    let (to, epoch) = match target(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match ctx.catalog.fence_home(&topic, &to, epoch).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}

async fn unfence(State(ctx): Ctx, Path(topic): Path<String>) -> Response {
    match ctx.catalog.unfence_home(&topic).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}

async fn move_home(State(ctx): Ctx, Path(topic): Path<String>, RawQuery(q): RawQuery) -> Response {
    let (to, epoch) = match target(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match ctx.catalog.move_home(&topic, &to, epoch).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}

/// Body (optional): the verdict on the lost home's commits
/// (`chronik_wire::settle::Plan`, from `/v1/txn/parts` of every broker).
async fn take_home(
    State(ctx): Ctx,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let settle = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<chronik_wire::settle::Plan>(&body) {
            Ok(p) => Some(p),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a settlement plan: {e}"),
                )
            }
        }
    };
    let from = query_param(q.as_deref(), "from").filter(|t| !t.is_empty());
    let epoch = query_param(q.as_deref(), "epoch").and_then(|e| e.parse::<u64>().ok());
    let (Some(from), Some(epoch)) = (from, epoch) else {
        return error(
            StatusCode::BAD_REQUEST,
            "from=<region> and epoch=<new home epoch> are required",
        );
    };
    match ctx.catalog.take_home(&topic, from, epoch, settle).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}

/// `?home=<region>`: the noted commits held by the mirror partitions of
/// `home`'s topics that this broker leads, with their log ends, and how
/// many partitions each such topic has (so the caller can tell when every
/// partition was reported). A failover's view is every broker's answer
/// (`chronik_wire::settle`).
async fn txn_parts(State(ctx): Ctx, RawQuery(q): RawQuery) -> Response {
    let Some(home) = query_param(q.as_deref(), "home").filter(|h| !h.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "home=<region> is required");
    };
    let mut topics = serde_json::Map::new();
    let mut led = Vec::new();
    for t in ctx.catalog.list() {
        if t.mirror_of(&ctx.config.region) != Some(home) || t.is_deleting() {
            continue;
        }
        topics.insert(t.name().to_string(), json!(t.partitions.len()));
        for log in &t.partitions {
            if ctx.cluster.leader_group(log).is_none() {
                continue;
            }
            led.push(chronik_wire::settle::PartitionView {
                topic: t.name().to_string(),
                partition: log.partition,
                log_end: log.log_end_offset(),
                parts: log.commit_parts(),
            });
        }
    }
    Json(json!({"topics": topics, "partitions": led, "boot": ctx.lease.boot()})).into_response()
}

/// `?home=<region>`, body: the dc-link's verdict on `home`'s commits as
/// this region holds them now (`chronik_wire::settle::Plan`). Each mirror
/// partition of `home`'s topics hosted here keeps it, and read_committed
/// reads stop before any commit it does not count as whole.
async fn txn_settled(State(ctx): Ctx, RawQuery(q): RawQuery, body: axum::body::Bytes) -> Response {
    let Some(home) = query_param(q.as_deref(), "home").filter(|h| !h.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "home=<region> is required");
    };
    let plan: chronik_wire::settle::Plan = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a settlement plan: {e}"),
            )
        }
    };
    let mut told = 0;
    for t in ctx.catalog.list() {
        if t.mirror_of(&ctx.config.region) != Some(home) {
            continue;
        }
        for log in &t.partitions {
            let key = chronik_wire::settle::partition_key(t.name(), log.partition);
            log.set_settled(crate::log::Settled {
                retract_from: plan.retract_from.clone(),
                view_end: plan.view_end.get(&key).copied(),
            });
            told += 1;
        }
    }
    Json(json!({"partitions": told})).into_response()
}

async fn lease_clock(State(ctx): Ctx) -> Response {
    let (boot, now_ms) = ctx.lease.clock();
    Json(json!({"boot": boot, "now_ms": now_ms})).into_response()
}

async fn lease_state(State(ctx): Ctx) -> Response {
    Json(ctx.lease.report()).into_response()
}

async fn lease_push(State(ctx): Ctx, Json(p): Json<crate::lease_gate::Push>) -> Response {
    if let Some(a) = &p.forward {
        ctx.forwarder.announce(a);
    }
    match ctx.lease.push(p) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

/// The actor record and the promotions, as this broker has applied them.
fn link_state(ctx: &BrokerCtx, granted: Option<bool>) -> Result<serde_json::Value, TopicError> {
    let actor = ctx.catalog.link_actor()?;
    let promotions: serde_json::Value =
        serde_json::from_slice(&ctx.catalog.link_promotions()?).unwrap_or(json!([]));
    let mut v = json!({"actor": actor, "promotions": promotions});
    if let Some(g) = granted {
        v["granted"] = json!(g);
    }
    Ok(v)
}

async fn link_actor(State(ctx): Ctx) -> Response {
    match link_state(&ctx, None) {
        Ok(v) => Json(v).into_response(),
        Err(e) => topic_error(e),
    }
}

/// `holder` and `term` (and `renewals` where asked) from the query string.
fn claim_params(q: &Option<String>, with_renewals: bool) -> Result<(String, u64, u64), Response> {
    let num = |k: &str| query_param(q.as_deref(), k).and_then(|v| v.parse::<u64>().ok());
    // Holders name themselves by socket address: plain characters only, so
    // the raw query value is the name.
    let holder = query_param(q.as_deref(), "holder").filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:[]".contains(c))
    });
    match (
        holder,
        num("term"),
        num("renewals").or((!with_renewals).then_some(0)),
    ) {
        (Some(h), Some(t), Some(r)) => Ok((h.to_string(), t, r)),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            if with_renewals {
                "holder=<address>, term=<n> and renewals=<n> are required (the address: letters, digits and -_.:[] only)"
            } else {
                "holder=<address> and term=<n> are required (the address: letters, digits and -_.:[] only)"
            },
        )),
    }
}

async fn claim_link_actor(State(ctx): Ctx, RawQuery(q): RawQuery) -> Response {
    let (holder, term, renewals) = match claim_params(&q, true) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let claim = chronik_metadata_sync::actor::Claim {
        holder,
        term,
        renewals,
    };
    let granted = match ctx.catalog.claim_link_actor(claim).await {
        Ok(_) => true,
        Err(TopicError::Rejected { .. }) => false,
        Err(e) => return topic_error(e),
    };
    match link_state(&ctx, Some(granted)) {
        Ok(v) if granted => Json(v).into_response(),
        Ok(v) => (StatusCode::CONFLICT, Json(v)).into_response(),
        Err(e) => topic_error(e),
    }
}

async fn keep_link_promotions(
    State(ctx): Ctx,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let (holder, term, _) = match claim_params(&q, false) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match ctx
        .catalog
        .keep_link_promotions(holder, term, body.to_vec())
        .await
    {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}
