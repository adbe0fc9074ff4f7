//! The admin HTTP listener: Prometheus metrics and health probes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::BrokerCtx;

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
    token: Option<String>,
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
        .route(
            "/v1/partitions/{topic}/{partition}/truncate",
            axum::routing::post(truncate_suffix),
        )
        .route("/v1/mirror/{topic}/{partition}", get(mirror_state))
        .route(
            "/v1/mirror-acks/{topic}/{partition}",
            axum::routing::post(mirror_acks),
        )
        .route("/v1/deleting", get(deleting))
        .route("/v1/deleting/{topic}", axum::routing::post(drained))
        .route(
            "/v1/mirror/{topic}/{partition}/{base_offset}",
            axum::routing::post(mirror_append)
                .layer(axum::extract::DefaultBodyLimit::max(MIRROR_BODY_LIMIT)),
        )
        .with_state(AppState {
            ctx: ctx.clone(),
            metrics,
        })
        .merge(crate::global_meta::http::router(ctx.clone()))
        .merge(crate::home_http::router(ctx.clone()))
        .merge(crate::members_http::router(ctx))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ));
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

/// Without the region's admin token, only `/metrics` and `/health/*`
/// answer: every other route writes into the region (mirror appends and
/// acks, truncation, metadata merges, home moves) or reads its data.
async fn require_token(
    State(token): State<Arc<Option<String>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use chronik_wire::admin_token;
    let path = req.uri().path();
    let Some(want) = token
        .as_deref()
        .filter(|_| !admin_token::is_open_path(path))
    else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if admin_token::authorizes(header, want) {
        return next.run(req).await;
    }
    metrics::counter!("chronik_admin_unauthorized_total").increment(1);
    tracing::warn!(path, "admin request without a valid token refused");
    (StatusCode::UNAUTHORIZED, admin_token::REFUSAL).into_response()
}

async fn render_metrics(State(s): State<AppState>) -> String {
    crate::global_meta::http::record_metrics(&s.ctx);
    let me = s.ctx.config.node_id;
    let (mut leaderless, mut under_replicated) = (0u64, 0u64);
    // Per peer, the longest any group led here has waited for it; every
    // peer is listed, at 0 when it is in step everywhere.
    let mut follower_lag: std::collections::BTreeMap<u64, f64> = s
        .ctx
        .config
        .cluster
        .peers
        .iter()
        .map(|p| (p.id as u64, 0.0))
        .collect();
    let mut note_lag = |st: &crate::raft::GroupStatus| {
        for (peer, lag) in &st.follower_lag {
            let e = follower_lag.entry(*peer).or_insert(0.0);
            *e = e.max(lag.as_secs_f64());
        }
    };
    note_lag(&s.ctx.cluster.controller_status());
    // (topic, partition) -> high watermark, for the partitions led here.
    let mut led: std::collections::HashMap<(String, i32), i64> = Default::default();
    for (topic, log) in s.ctx.catalog.all_partitions() {
        let leading = s.ctx.cluster.leader_group(&log).map(|(_, st)| st);
        if let Some(st) = &leading {
            note_lag(st);
            led.insert(
                (topic.name().to_string(), log.partition),
                log.high_watermark(),
            );
        }
        if !log.is_deleted() {
            let view = s.ctx.cluster.view(&topic, &log);
            match view.leader {
                None => leaderless += 1,
                Some(l) if l == me && view.isr.len() < view.replicas.len() => under_replicated += 1,
                Some(_) => {}
            }
        }
        let labels = [
            ("topic", topic.name().to_string()),
            ("partition", log.partition.to_string()),
        ];
        metrics::gauge!("chronik_partition_high_watermark", &labels)
            .set(log.high_watermark() as f64);
        metrics::gauge!("chronik_partition_log_start_offset", &labels)
            .set(log.log_start_offset() as f64);
        metrics::gauge!("chronik_partition_size_bytes", &labels).set(log.size_bytes() as f64);
        if topic.effective.rpo_watched && topic.mirror_of(&s.ctx.config.region).is_none() {
            // Only the leader hears the mirrors' ends; elsewhere: no value.
            let span = leading
                .as_ref()
                .and_then(|_| log.rpo_span(crate::rpo::clock_ms()));
            let (at_risk, headroom) = match span {
                Some(sp) => (
                    sp.at_risk_ms as f64 / 1000.0,
                    (topic.effective.rpo_ms - sp.at_risk_ms) as f64 / 1000.0,
                ),
                None => (f64::NAN, f64::NAN),
            };
            metrics::gauge!("chronik_rpo_at_risk_seconds", &labels).set(at_risk);
            metrics::gauge!("chronik_rpo_headroom_seconds", &labels).set(headroom);
        }
    }
    // Kafka's OfflinePartitionsCount and UnderReplicatedPartitions, seen
    // from this broker: the partitions it hosts that know no leader, and
    // those it leads whose in-sync set is short of the replica set.
    metrics::gauge!("chronik_partitions_leaderless").set(leaderless as f64);
    metrics::gauge!("chronik_partitions_under_replicated").set(under_replicated as f64);
    for (peer, lag) in follower_lag {
        metrics::gauge!("raft_follower_lag_seconds", "peer" => peer.to_string()).set(lag);
    }
    record_group_lag(&s.ctx, &led);
    s.metrics.render()
}

/// `chronik_consumer_group_lag`: for each partition led here and each group
/// with an offset committed on it (in any region), the records between the
/// offset and the high watermark: Kafka's consumer lag, from the broker.
fn record_group_lag(ctx: &BrokerCtx, led: &std::collections::HashMap<(String, i32), i64>) {
    if led.is_empty() {
        return;
    }
    let rep = ctx.catalog.global.read();
    for (group, topic, partition, offset) in rep.entries().filter_map(|e| e.group_offset()) {
        let Some(hw) = led.get(&(topic.to_string(), partition)) else {
            continue;
        };
        metrics::gauge!(
            "chronik_consumer_group_lag",
            "group" => group.to_string(),
            "topic" => topic.to_string(),
            "partition" => partition.to_string()
        )
        .set((hw - offset.offset).max(0) as f64);
    }
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

/// Home topics deleted while mirrored, waiting for the dc-link to drain
/// them.
async fn deleting(State(s): State<AppState>) -> Response {
    let topics: Vec<serde_json::Value> = s
        .ctx
        .catalog
        .deleting()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name(),
                "id": t.id().to_string(),
                "since_ms": t.record.deleting_since_ms,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "topics": topics })).into_response()
}

/// The dc-link has drained a deleting topic (`?id=` names the incarnation):
/// delete it now, here and in every mirror region.
async fn drained(
    State(s): State<AppState>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(id) = query_param(query.as_deref(), "id").and_then(|v| uuid::Uuid::parse_str(v).ok())
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "id=<topic id> is required"}),
        );
    };
    if !s
        .ctx
        .catalog
        .get(&topic)
        .is_some_and(|t| t.id() == id && t.is_deleting())
    {
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no topic with this name and id is being deleted"}),
        );
    }
    match s.ctx.catalog.finish_delete(&topic, Some(id)).await {
        Ok(()) => {
            tracing::info!(topic, %id, "deleted topic drained by the dc-link; deleting it everywhere");
            axum::Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
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
        "size_bytes": log.size_bytes(),
        "cleaned": log.cleaned(),
        "raft": s.ctx.cluster.local_debug(log.log_id),
    }))
    .into_response()
}

async fn partition_log(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some((_, log)) = local_partition(&s.ctx, &topic, partition) else {
        return (StatusCode::NOT_FOUND, "no replica of this partition here\n").into_response();
    };
    let bound = |name: &str, default: i64| {
        query_param(query.as_deref(), name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(default)
    };
    match log.dump_range(bound("from", 0), bound("to", i64::MAX)) {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Set on a mirror append whose batches start the home log (see
/// `Command::MirrorAppend`).
pub const FROM_LOG_START_HEADER: &str = "x-chronik-from-log-start";

/// Largest mirror append accepted; dc-link sends at most a few MiB at a time.
const MIRROR_BODY_LIMIT: usize = 64 << 20;

fn json_error(status: StatusCode, v: serde_json::Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Where a mirror partition ends, asked by the receiving dc-link before it
/// resumes: only the leader's answer counts, since only it appends.
async fn mirror_state(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
) -> Response {
    let Some((t, log)) = local_partition(&s.ctx, &topic, partition) else {
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no replica of this partition here"}),
        );
    };
    let view = s.ctx.cluster.view(&t, &log);
    let is_leader = s.ctx.cluster.leader_group(&log).is_some();
    axum::Json(serde_json::json!({
        "topic": topic,
        "partition": partition,
        "is_leader": is_leader,
        "leader": view.leader,
        "mirror_of": t.mirror_of(&s.ctx.config.region),
        "log_start_offset": log.log_start_offset(),
        "log_end_offset": log.log_end_offset(),
        "high_watermark": log.high_watermark(),
        "epochs": log.epoch_history(),
    }))
    .into_response()
}

/// The receiving dc-link's append: stamped batches from the home region,
/// replicated through this partition's Raft group and answered once
/// committed and applied, with the log end offset that is now durable.
async fn mirror_append(
    State(s): State<AppState>,
    Path((topic, partition, base_offset)): Path<(String, i32, i64)>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    use crate::raft::types::{Command, CommandResult};
    // Where the home log starts: records below it were deleted at home
    // (DeleteRecords, retention) and are trimmed here too after the append.
    let home_log_start: i64 = query_param(query.as_deref(), "home_log_start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ctx = &s.ctx;
    let Some((t, log)) = local_partition(ctx, &topic, partition) else {
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no replica of this partition here"}),
        );
    };
    if t.mirror_of(&ctx.config.region).is_none() {
        return json_error(
            StatusCode::CONFLICT,
            serde_json::json!({"error": format!(
                "topic {topic} is homed in this region ({}); only mirrors accept copies",
                ctx.config.region
            )}),
        );
    }
    let Some((group, _)) = ctx.cluster.leader_group(&log) else {
        let view = ctx.cluster.view(&t, &log);
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "not the leader", "leader": view.leader}),
        );
    };
    let done = group.submit(Command::MirrorAppend {
        records: body,
        base_offset,
        from_log_start: headers.contains_key(FROM_LOG_START_HEADER),
    });
    match applied(done).await {
        Ok(CommandResult::Mirrored {
            log_end_offset,
            appended,
        }) => {
            // Only within what the mirror holds: a home start past the
            // mirror's end is a gap, which the dc-link reports; emptying the
            // mirror here would hide it.
            let trim_to = home_log_start;
            if trim_to <= log_end_offset && trim_to > log.log_start_offset() {
                // Best effort: the next append asks again if this fails.
                let trimmed = group.submit(Command::DeleteRecords { offset: trim_to });
                match tokio::time::timeout(Duration::from_secs(10), trimmed).await {
                    Ok(Ok(Ok(CommandResult::Trimmed { .. }))) => {}
                    other => {
                        tracing::warn!(topic, partition, trim_to, result = ?other, "mirror not trimmed to the home log start yet")
                    }
                }
            }
            axum::Json(serde_json::json!({
                "log_end_offset": log_end_offset,
                "appended": appended,
            }))
            .into_response()
        }
        Ok(other) => unexpected(other),
        Err(r) => r,
    }
}

/// A proposal's applied result, or the answer that says why there is none.
async fn applied<E>(
    done: impl std::future::Future<
        Output = Result<Result<crate::raft::types::CommandResult, crate::raft::ProposeError>, E>,
    >,
) -> Result<crate::raft::types::CommandResult, Response> {
    use crate::raft::types::CommandResult;
    use crate::raft::ProposeError;
    match tokio::time::timeout(Duration::from_secs(30), done).await {
        Ok(Ok(Ok(CommandResult::Rejected { code, message }))) => Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": message, "code": code}),
        )),
        Ok(Ok(Ok(r))) => Ok(r),
        Ok(Ok(Err(ProposeError::NotLeader(_)))) => Err(json_error(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "lost leadership", "leader": null}),
        )),
        Ok(Ok(Err(ProposeError::Unavailable(m)))) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": m}),
        )),
        Ok(Err(_)) | Err(_) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "not committed within 30 s"}),
        )),
    }
}

fn unexpected(other: crate::raft::types::CommandResult) -> Response {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        serde_json::json!({"error": format!("unexpected apply result {other:?}")}),
    )
}

/// Failback's cut (`chronik ctl failback`): the partition leader of a copy
/// demoted to a mirror removes every record from `offset` on, through the
/// partition's Raft group. Answered once applied, with the new log end.
/// Refused (422) for a copy that is home or never was demoted, or an
/// offset inside a batch; a cut at or past the log end changes nothing.
async fn truncate_suffix(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
    RawQuery(query): RawQuery,
) -> Response {
    use crate::raft::types::{Command, CommandResult};
    let Some(offset) = query_param(query.as_deref(), "offset").and_then(|v| v.parse::<i64>().ok())
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "offset=N (the first offset to remove) is required"}),
        );
    };
    let ctx = &s.ctx;
    let Some((t, log)) = local_partition(ctx, &topic, partition) else {
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no replica of this partition here"}),
        );
    };
    let Some((group, _)) = ctx.cluster.leader_group(&log) else {
        let view = ctx.cluster.view(&t, &log);
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "not the leader", "leader": view.leader}),
        );
    };
    // Commits this region made on its diverged records point past the cut:
    // moved back to it before the cut (so a crash after the cut cannot
    // leave them), and again after it for any made in between.
    let moved_before = match clamp_diverged_commits(ctx, &topic, partition, offset).await {
        Ok(n) => n,
        Err(e) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": format!("committed offsets past {offset} not moved back; nothing cut: {e}")}),
            )
        }
    };
    match applied(group.submit(Command::TruncateSuffix { offset })).await {
        Ok(CommandResult::Truncated {
            log_end_offset,
            removed_batches,
        }) => {
            let moved_after = clamp_diverged_commits(ctx, &topic, partition, offset)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(topic, partition, error = %e, "committed offsets past the cut not moved back after it");
                    0
                });
            axum::Json(serde_json::json!({
                "log_end_offset": log_end_offset,
                "removed_batches": removed_batches,
                "epochs": log.epoch_history(),
                "offsets_moved": moved_before + moved_after,
            }))
            .into_response()
        }
        Ok(other) => unexpected(other),
        Err(r) => r,
    }
}

/// Moves the commits this region made on `topic`/`partition` past `cut`
/// back to it; how many moved.
async fn clamp_diverged_commits(
    ctx: &BrokerCtx,
    topic: &str,
    partition: i32,
    cut: i64,
) -> Result<usize, crate::catalog::TopicError> {
    let moves = ctx.catalog.offsets_beyond(
        topic,
        partition,
        cut,
        Some(&ctx.config.region),
        crate::catalog::OffsetMoveReason::Failback,
    );
    let n = moves.len();
    if n > 0 {
        ctx.catalog.move_offsets(moves).await?;
    }
    Ok(n)
}

#[derive(serde::Deserialize)]
struct MirrorAcks {
    acks: std::collections::BTreeMap<String, i64>,
    required: usize,
}

/// One `name=value` parameter of a raw query string. Not percent-decoded:
/// the values asked for here are numbers and hex digests.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The home dc-link reports how far mirror regions hold a `global_quorum`
/// partition durably; acks=all produce waits on it.
async fn mirror_acks(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, i32)>,
    axum::Json(body): axum::Json<MirrorAcks>,
) -> Response {
    let Some((_, log)) = local_partition(&s.ctx, &topic, partition) else {
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no replica of this partition here"}),
        );
    };
    if s.ctx.cluster.leader_group(&log).is_none() {
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({"error": "not the leader", "leader": null}),
        );
    }
    log.report_mirror_acks(&body.acks, body.required);
    axum::Json(serde_json::json!({"ok": true})).into_response()
}
