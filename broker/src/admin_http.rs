//! The admin HTTP listener: Prometheus metrics and health probes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::BrokerCtx;

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder once; later brokers in the
/// same process (tests) share it. The lock makes concurrent first starts
/// wait for one installation instead of racing to install two recorders.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let mut installed = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0, 32.0,
            128.0, 1024.0, 4096.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    *installed = Some(h.clone());
    Ok(h)
}

#[derive(Clone)]
struct AppState {
    ctx: Arc<BrokerCtx>,
    metrics: PrometheusHandle,
}

pub async fn serve(
    ctx: Arc<BrokerCtx>,
    listener: TcpListener,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let upkeep = metrics.clone();
    let upkeep_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .route("/v1/cluster", get(cluster))
        .route("/v1/partitions/{topic}/{partition}", get(partition))
        .route("/v1/partitions/{topic}/{partition}/log", get(partition_log))
        .with_state(AppState { ctx, metrics });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    upkeep_task.abort();
    if let Err(e) = result {
        tracing::warn!(error = %e, "admin listener stopped");
    }
}

async fn render_metrics(State(s): State<AppState>) -> String {
    for (topic, log) in s.ctx.catalog.all_partitions() {
        let labels = [
            ("topic", topic.name().to_string()),
            ("partition", log.partition.to_string()),
        ];
        metrics::gauge!("chronik_partition_high_watermark", &labels)
            .set(log.high_watermark() as f64);
        metrics::gauge!("chronik_partition_log_start_offset", &labels)
            .set(log.log_start_offset() as f64);
        metrics::gauge!("chronik_partition_size_bytes", &labels).set(log.size_bytes() as f64);
    }
    s.metrics.render()
}

async fn ready(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ctx.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn cluster(State(s): State<AppState>) -> Response {
    let ctx = &s.ctx;
    let brokers: Vec<serde_json::Value> = ctx
        .catalog
        .brokers()
        .into_iter()
        .map(|b| serde_json::json!({"id": b.id, "kafka": format!("{}:{}", b.host, b.port)}))
        .collect();
    let st = ctx.cluster.controller_status();
    axum::Json(serde_json::json!({
        "node_id": ctx.config.node_id,
        "region": ctx.config.region,
        "controller_leader": st.leader,
        "controller_term": st.term,
        "brokers": brokers,
    }))
    .into_response()
}

fn local_partition(
    ctx: &BrokerCtx,
    topic: &str,
    partition: i32,
) -> Option<(Arc<crate::catalog::Topic>, Arc<crate::log::PartitionLog>)> {
    let t = ctx.catalog.get(topic)?;
    let p = t.partition(partition)?.clone();
    ctx.cluster.group(p.log_id)?;
    Some((t, p))
}

async fn partition(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
) -> Response {
    let Some((t, log)) = local_partition(&s.ctx, &topic, partition) else {
        return (StatusCode::NOT_FOUND, "no replica of this partition here\n").into_response();
    };
    let st = s.ctx.cluster.local_status(log.log_id).unwrap_or_default();
    let view = s.ctx.cluster.view(&t, &log);
    axum::Json(serde_json::json!({
        "topic": topic,
        "partition": partition,
        "leader": st.leader,
        "term": st.term,
        "is_leader": st.is_leader,
        "replicas": view.replicas,
        "isr": st.isr,
        "log_start_offset": log.log_start_offset(),
        "high_watermark": log.high_watermark(),
        "log_end_offset": log.log_end_offset(),
        "committed_index": st.committed_index,
        "applied_index": st.applied_index,
        "last_log_index": st.last_log_index,
        "snapshot_index": st.snapshot_index,
        "purged_index": st.purged_index,
        "epochs": log.epoch_history(),
    }))
    .into_response()
}

async fn partition_log(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
) -> Response {
    let Some((_, log)) = local_partition(&s.ctx, &topic, partition) else {
        return (StatusCode::NOT_FOUND, "no replica of this partition here\n").into_response();
    };
    match log.dump() {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
