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
//!   home lease as its dc-link pushes it (see `crate::lease_gate`).
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
use crate::server::BrokerCtx;

type Ctx = State<Arc<BrokerCtx>>;

pub fn router(ctx: Arc<BrokerCtx>) -> Router {
    Router::new()
        .route("/v1/home/{topic}", get(state))
        .route("/v1/home/{topic}/fence", post(fence))
        .route("/v1/home/{topic}/unfence", post(unfence))
        .route("/v1/home/{topic}/move", post(move_home))
        .route("/v1/home/{topic}/take", post(take_home))
        .route("/v1/lease/clock", get(lease_clock))
        .route("/v1/lease", get(lease_state).post(lease_push))
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

async fn take_home(State(ctx): Ctx, Path(topic): Path<String>, RawQuery(q): RawQuery) -> Response {
    let from = query_param(q.as_deref(), "from").filter(|t| !t.is_empty());
    let epoch = query_param(q.as_deref(), "epoch").and_then(|e| e.parse::<u64>().ok());
    let (Some(from), Some(epoch)) = (from, epoch) else {
        return error(
            StatusCode::BAD_REQUEST,
            "from=<region> and epoch=<new home epoch> are required",
        );
    };
    match ctx.catalog.take_home(&topic, from, epoch).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => topic_error(e),
    }
}

async fn lease_clock(State(ctx): Ctx) -> Response {
    let (boot, now_ms) = ctx.lease.clock();
    Json(json!({"boot": boot, "now_ms": now_ms})).into_response()
}

async fn lease_state(State(ctx): Ctx) -> Response {
    Json(ctx.lease.report()).into_response()
}

async fn lease_push(State(ctx): Ctx, Json(p): Json<crate::lease_gate::Push>) -> Response {
    match ctx.lease.push(p) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}
