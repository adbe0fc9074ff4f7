//! The admin API of region membership, used by `chronik ctl broker`:
//!
//! - `GET  /v1/brokers`: every recorded broker with its state (active,
//!   leaving, removed), Raft address, Kafka address, controller role
//!   (voter, learner or none), partition replicas it hosts, and whether
//!   this broker hears from it;
//! - `POST /v1/brokers/{id}/add?raft=HOST:PORT`: add a broker (or cancel
//!   its removal);
//! - `POST /v1/brokers/{id}/remove`: start removing one; its replicas move
//!   away, then it leaves the controller, then it is `removed`.
//!
//! Errors are JSON `{"error": ...}`, as in `home_http`: 409 a refusal by
//! the controller, 503 the controller unreachable.

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
        .route("/v1/brokers", get(list))
        .route("/v1/brokers/{id}/add", post(add))
        .route("/v1/brokers/{id}/remove", post(remove))
        .with_state(ctx)
}

fn refusal(e: TopicError) -> Response {
    let (status, message) = match e {
        TopicError::Rejected { message, .. } => (StatusCode::CONFLICT, message),
        e => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    (status, Json(json!({"error": message}))).into_response()
}

async fn list(State(ctx): Ctx) -> Response {
    let st = ctx.cluster.controller_status();
    let endpoints = crate::cluster::endpoints(&ctx.catalog);
    let brokers: Vec<serde_json::Value> = ctx
        .catalog
        .members()
        .into_iter()
        .map(|m| {
            let id = m.id as u64;
            let controller = if st.voters.contains(&id) {
                Some("voter")
            } else if st.learners.contains(&id) {
                Some("learner")
            } else {
                None
            };
            json!({
                "id": m.id,
                "state": m.state,
                "raft": m.raft,
                "kafka": endpoints.get(&m.id).map(|e| format!("{}:{}", e.host, e.port)),
                "controller": controller,
                "replicas": ctx.catalog.replicas_on(m.id),
                "alive": ctx.cluster.hears_from(m.id),
            })
        })
        .collect();
    Json(json!({
        "region": ctx.config.region,
        "node_id": ctx.config.node_id,
        "controller_leader": st.leader,
        "brokers": brokers,
    }))
    .into_response()
}

async fn add(State(ctx): Ctx, Path(id): Path<i32>, RawQuery(q): RawQuery) -> Response {
    let Some(raft) = query_param(q.as_deref(), "raft").filter(|r| !r.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "raft=<host:port> is required: the new broker's listeners.raft as its peers reach it"})),
        )
            .into_response();
    };
    match ctx.catalog.add_broker(id, raft.to_string()).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => refusal(e),
    }
}

async fn remove(State(ctx): Ctx, Path(id): Path<i32>) -> Response {
    match ctx.catalog.remove_broker(id).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => refusal(e),
    }
}
