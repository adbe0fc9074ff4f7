//! `chronik witness`: a voter of the home-role lease that holds no data.
//! With two data regions, the witness is the third vote that lets the
//! surviving region form a majority when the other is lost.
//!
//! It listens for the regions' lease connections (QUIC, mTLS, its
//! certificate naming `<name>.dc-link.chronik` like a region's) and keeps
//! the promotions it agreed to in `<state_dir>/promotions.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use chronik_topology::{Topology, WitnessConfig};

use crate::lease_link::{self, Voter};
use crate::proto::Body;
use crate::{tls, DcLinkError, FrameReader};

pub async fn run(
    cfg: WitnessConfig,
    topo: Topology,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DcLinkError> {
    let state_dir = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("lease-state"));
    let w = topo
        .witness
        .clone()
        .ok_or_else(|| DcLinkError::Config("the topology has no [witness] section".into()))?;
    let listen = match cfg.listen {
        Some(l) => l,
        None => w
            .address
            .parse()
            .map_err(|e| DcLinkError::Config(format!("witness.address {:?}: {e}", w.address)))?,
    };
    let identity = tls::Identity::load(&topo.tls.ca, &w.cert, &w.key)?;
    let server_config = identity.server_config(Arc::new(crate::transport(
        &topo,
        topo.cross_dc.congestion,
        None,
    )))?;
    let endpoint =
        quinn::Endpoint::server(server_config, listen).map_err(|source| DcLinkError::Bind {
            what: "QUIC",
            addr: listen,
            source,
        })?;
    let admin = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .map_err(|source| DcLinkError::Bind {
            what: "admin",
            addr: cfg.admin,
            source,
        })?;
    let voter = Arc::new(
        Voter::open(&w.name, lease_link::lease_config(&topo), &state_dir)
            .map_err(DcLinkError::LeaseState)?,
    );
    tracing::info!(witness = %w.name, quic = %listen, admin = %cfg.admin, "witness started");
    let topo = Arc::new(topo);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (voter, topo, endpoint) = (voter.clone(), topo.clone(), endpoint.clone());
        tasks.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (voter, topo) = (voter.clone(), topo.clone());
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "incoming handshake failed (untrusted certificate?)");
                            return;
                        }
                    };
                    if let Err(e) = serve(voter, &topo, &conn).await {
                        tracing::info!(remote = %conn.remote_address(), error = %e, "lease connection ended");
                        conn.close(1u32.into(), e.as_bytes());
                    }
                });
            }
        });
    }
    let regions: Vec<String> = topo.regions.iter().map(|r| r.name.clone()).collect();
    let app = axum::Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(|| async { "ready\n" }))
        .route(
            "/v1/lease",
            get(
                |State((v, regions)): State<(Arc<Voter>, Vec<String>)>| async move {
                    axum::Json(serde_json::json!({ "vote": v.report(&regions) }))
                },
            ),
        )
        .with_state((voter, regions));
    tasks.spawn(async move {
        if let Err(e) = axum::serve(admin, app).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    });
    shutdown.await;
    tracing::info!("witness stopping");
    endpoint.close(0u32.into(), b"shutting down");
    tasks.abort_all();
    Ok(())
}

async fn serve(voter: Arc<Voter>, topo: &Topology, conn: &quinn::Connection) -> Result<(), String> {
    let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .map_err(|_| "no stream within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut frames = FrameReader::new(recv);
    let (env, _) = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .map_err(|_| "no LeaseHello within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    match env.body {
        Some(Body::LeaseHello(h)) => {
            lease_link::serve(voter, topo, None, conn, send, frames, h).await
        }
        _ => Err("a witness only answers lease connections".into()),
    }
}
