//! HTTP control API, so the impairment can be changed while traffic flows.

use crate::{Impairment, Shared, Stats};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::warn;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route(
            "/v1/impairment",
            get(get_impairment).put(put_impairment).post(put_impairment),
        )
        .route("/v1/stats", get(get_stats))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        warn!("wan-sim control server stopped: {e}");
    }
}

async fn get_impairment(State(s): State<Arc<Shared>>) -> Json<Impairment> {
    Json(s.impairment())
}

async fn put_impairment(
    State(s): State<Arc<Shared>>,
    body: Result<Json<Impairment>, JsonRejection>,
) -> Response {
    let imp = match body {
        Ok(Json(imp)) => imp,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    match s.try_set(imp) {
        Ok(()) => Json(imp).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn get_stats(State(s): State<Arc<Shared>>) -> Json<Stats> {
    Json(s.stats())
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
