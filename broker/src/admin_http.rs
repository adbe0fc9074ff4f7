//! The admin HTTP listener: Prometheus metrics and health probes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::BrokerCtx;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later brokers in the
/// same process (tests) share it.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0, 32.0,
            128.0, 1024.0, 4096.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .or_else(|e| HANDLE.get().cloned().ok_or(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| h).clone())
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
