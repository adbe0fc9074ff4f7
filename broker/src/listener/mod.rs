//! The broker's Kafka listeners: one accept loop per listener, TLS where
//! the listener has it, and each connection handed to
//! [`crate::connection::serve`] with what it needs to know about where it
//! came from.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chronik_topology::{BrokerConfig, KafkaListener, SecurityProtocol};
use chronik_wire::sasl::{Mechanism, SessionRules};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::connection::{self, ConnCtx};
use crate::context::BrokerCtx;
use tls::ReloadingTls;

/// A client that has not finished its TLS handshake in this long is
/// dropped, so half-open handshakes cannot pile up.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection knows about the listener it came through.
pub struct Listener {
    pub name: String,
    pub security: SecurityProtocol,
    pub tls: Option<Arc<ReloadingTls>>,
    /// The SASL rules, on SASL listeners.
    pub sasl: Option<SessionRules>,
}

/// A bound listener, before its accept loop runs.
pub struct Bound {
    pub info: Arc<Listener>,
    pub socket: TcpListener,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding listener {name} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name}: {source}")]
    Tls { name: String, source: tls::TlsError },
}

fn sasl_rules(cfg: &BrokerConfig) -> SessionRules {
    SessionRules {
        mechanisms: cfg
            .sasl
            .mechanisms
            .iter()
            .filter_map(|m| Mechanism::parse(m))
            .collect(),
        reauth_ms: cfg.sasl.connections_max_reauth_ms,
    }
}

async fn bind_one(cfg: &BrokerConfig, l: &KafkaListener) -> Result<Bound, ListenerError> {
    let tls =
        match &l.tls {
            Some(t) if l.security.tls() => Some(ReloadingTls::load(&l.name, t).map_err(
                |source| ListenerError::Tls {
                    name: l.name.clone(),
                    source,
                },
            )?),
            _ => None,
        };
    let socket = TcpListener::bind(l.address)
        .await
        .map_err(|source| ListenerError::Bind {
            name: l.name.clone(),
            addr: l.address,
            source,
        })?;
    let addr = socket.local_addr().unwrap_or(l.address);
    Ok(Bound {
        info: Arc::new(Listener {
            name: l.name.clone(),
            security: l.security,
            tls,
            sasl: l.security.sasl().then(|| sasl_rules(cfg)),
        }),
        socket,
        addr,
    })
}

/// Binds every Kafka listener of `cfg`, the `kafka` one first.
pub async fn bind_all(cfg: &BrokerConfig) -> Result<Vec<Bound>, ListenerError> {
    let mut out = Vec::new();
    for l in cfg.listeners.kafka_listeners() {
        out.push(bind_one(cfg, &l).await?);
    }
    Ok(out)
}

/// Accepts connections on one listener until the broker stops.
pub async fn accept_loop(ctx: Arc<BrokerCtx>, bound: Bound, mut shutdown: watch::Receiver<bool>) {
    let Bound { info, socket, .. } = bound;
    if let Some(t) = &info.tls {
        tokio::spawn(t.clone().watch(shutdown.clone()));
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    if ctx.cluster.is_cut_off() {
                        tracing::debug!(%peer, "refusing a client: this broker is cut off from its region's majority");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(ctx.clone(), info.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, listener = %info.name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn serve(
    ctx: Arc<BrokerCtx>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    metrics::gauge!("chronik_connections").increment(1.0);
    let name = listener.name.clone();
    let result = match listener.tls.as_ref().map(|t| t.acceptor()) {
        None => {
            let conn = ConnCtx::new(peer, listener, None);
            connection::serve(ctx, stream, conn, shutdown).await
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let cert_principal = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(tls::certificate_principal);
                    let conn = ConnCtx::new(peer, listener, cert_principal);
                    connection::serve(ctx, tls, conn, shutdown).await
                }
                Ok(Err(e)) => {
                    metrics::counter!("chronik_tls_handshake_failures_total", "listener" => name.clone())
                        .increment(1);
                    Err(format!("TLS handshake failed: {e}"))
                }
                Err(_) => {
                    metrics::counter!("chronik_tls_handshake_failures_total", "listener" => name.clone())
                        .increment(1);
                    Err("TLS handshake timed out".into())
                }
            }
        }
    };
    if let Err(reason) = result {
        tracing::debug!(%peer, listener = %name, %reason, "closed connection");
    }
    metrics::gauge!("chronik_connections").decrement(1.0);
}
