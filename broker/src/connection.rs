//! One client connection: request pipelining, and who the client is.
//!
//! Each connection has a reader and a writer task. The reader decodes
//! frames and calls the handler's synchronous part in arrival order (so
//! produce offsets follow request order); the slow part of each request
//! runs as its own task, and the writer awaits those tasks in order,
//! because Kafka clients match responses to requests by order on a
//! connection.
//!
//! On a SASL listener the reader also runs the connection's authentication
//! (`chronik_wire::sasl::Session`): until the client has authenticated,
//! only ApiVersions, SaslHandshake and SaslAuthenticate are served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    RequestKind, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use chronik_wire::sasl::{AuthOutcome, Session};

use crate::context::BrokerCtx;
use crate::framing::FrameDecoder;
use crate::handlers::{self, BoxFuture, Reply};
use crate::listener::Listener;
use crate::protocol::{self, encode_response, Parsed, Request};

/// The principal of a client that has not authenticated, as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// What the request handlers know about the connection a request came on.
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub listener: Arc<Listener>,
    /// Kafka's principal, `User:<name>`: the SASL user once authenticated,
    /// else the client certificate's subject, else ANONYMOUS.
    pub principal: String,
    /// Produce batches refused here that the same producer's later ones
    /// must wait for (see `produce_order`).
    pub held_back: std::sync::Mutex<crate::produce_order::HeldBack>,
}

impl ConnCtx {
    pub fn new(peer: SocketAddr, listener: Arc<Listener>, cert_subject: Option<String>) -> ConnCtx {
        ConnCtx {
            peer,
            listener,
            principal: cert_subject.map_or_else(|| ANONYMOUS.to_string(), |s| format!("User:{s}")),
            held_back: Default::default(),
        }
    }
}

/// Fresh randomness for SCRAM's server nonce: 244 random bits, printable,
/// with no comma.
fn server_nonce() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// How the reader answers an authentication request.
struct AuthReply {
    bytes: Bytes,
    close: Option<String>,
}

fn sasl_handshake(session: Option<&mut Session>, req: &Request, mechanism: &str) -> AuthReply {
    let (cid, key, v) = (req.header.correlation_id, req.api_key, req.version);
    let Some(session) = session else {
        // Not a SASL listener: Kafka's KafkaApis answers so.
        let body = SaslHandshakeResponse::default().with_error_code(E::IllegalSaslState.code());
        return AuthReply {
            bytes: encode_response(cid, key, v, &body),
            close: None,
        };
    };
    let out = session.handshake(mechanism, handlers::now_ms().max(0) as u64);
    let body = SaslHandshakeResponse::default()
        .with_error_code(out.error_code)
        .with_mechanisms(
            out.mechanisms
                .iter()
                .map(|m| StrBytes::from_static_str(m))
                .collect(),
        );
    if out.error_code != 0 {
        metrics::counter!("chronik_sasl_authentications_total", "result" => "unsupported_mechanism")
            .increment(1);
    }
    AuthReply {
        bytes: encode_response(cid, key, v, &body),
        close: out
            .close
            .then(|| format!("SASL handshake refused (mechanism {mechanism:?})")),
    }
}

fn sasl_authenticate(
    ctx: &BrokerCtx,
    session: Option<&mut Session>,
    conn: &mut ConnCtx,
    req: &Request,
    auth: &SaslAuthenticateRequest,
) -> AuthReply {
    let (cid, key, v) = (req.header.correlation_id, req.api_key, req.version);
    let Some(session) = session else {
        let body = SaslAuthenticateResponse::default()
            .with_error_code(E::IllegalSaslState.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "SaslAuthenticate request received after successful authentication",
            )));
        return AuthReply {
            bytes: encode_response(cid, key, v, &body),
            close: None,
        };
    };
    let out = authenticate(ctx, session, conn, &auth.auth_bytes);
    let mut body = SaslAuthenticateResponse::default()
        .with_error_code(out.error_code)
        .with_error_message(out.error_message.clone().map(StrBytes::from_string))
        .with_auth_bytes(Bytes::from(out.auth_bytes));
    if v >= 1 {
        body = body.with_session_lifetime_ms(out.session_lifetime_ms);
    }
    AuthReply {
        bytes: encode_response(cid, key, v, &body),
        close: out.close.then(|| {
            out.error_message
                .unwrap_or_else(|| "SASL authentication failed".into())
        }),
    }
}

/// One step of the SASL exchange (a SaslAuthenticate, or a bare token after
/// a v0 handshake): the connection's principal once it succeeds, counted
/// and logged either way.
fn authenticate(
    ctx: &BrokerCtx,
    session: &mut Session,
    conn: &mut ConnCtx,
    token: &[u8],
) -> AuthOutcome {
    let out = session.authenticate(
        token,
        |user, hash| ctx.catalog.scram_credentials(user, hash),
        &server_nonce(),
        handlers::now_ms().max(0) as u64,
    );
    if let Some(user) = &out.user {
        conn.principal = format!("User:{user}");
        metrics::counter!("chronik_sasl_authentications_total", "result" => "ok").increment(1);
    } else if out.error_code != 0 {
        metrics::counter!("chronik_sasl_authentications_total", "result" => "failed").increment(1);
        tracing::info!(peer = %conn.peer, listener = %conn.listener.name, reason = out.error_message.as_deref().unwrap_or(""), "SASL authentication failed");
    }
    out
}

/// Serves one client connection until it closes or breaks the protocol.
pub async fn serve<S>(
    ctx: Arc<BrokerCtx>,
    stream: S,
    mut conn: ConnCtx,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let in_flight = ctx.config.limits.max_in_flight_per_connection as usize;
    let (tx, mut rx) = mpsc::channel::<(BoxFuture, &'static str, Instant)>(in_flight);
    // The writer polls every in-flight request itself, so a completed write
    // wakes exactly one task, and answers go out in request order.
    let writer = tokio::spawn(async move {
        let mut pending = FuturesOrdered::new();
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                Some((bytes, api, received)) = pending.next(), if !pending.is_empty() => {
                    let (bytes, received): (Bytes, Instant) = (bytes, received);
                    // An empty response means the handler could not answer;
                    // closing is the only honest signal left.
                    if bytes.is_empty() || wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                    // On TLS, write_all can leave records in rustls' buffer
                    // when the socket is full; with nothing else to send,
                    // nothing would push them out. (A no-op on plain TCP.)
                    if pending.is_empty() && wr.flush().await.is_err() {
                        return;
                    }
                    metrics::histogram!("chronik_request_seconds", "api" => api)
                        .record(received.elapsed().as_secs_f64());
                }
                msg = rx.recv(), if !closed && pending.len() < in_flight => match msg {
                    Some((fut, api, received)) => pending.push_back(async move { (fut.await, api, received) }),
                    None => closed = true,
                },
                else => break,
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut session = conn.listener.sasl.clone().map(Session::new);
    // Before authentication a client may send little; its frames are
    // bounded tighter, as Kafka bounds them (`sasl.server.max.receive.size`).
    let unauthenticated_max = 512 * 1024;
    let full_max = ctx.config.limits.socket_request_max_bytes as usize;
    let mut decoder = FrameDecoder::new(if session.is_some() {
        unauthenticated_max.min(full_max)
    } else {
        full_max
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Set by a v0 SaslHandshake: the frames that follow are bare tokens.
    let mut raw_tokens = false;
    let result = 'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn Err(e.to_string()),
            };
            let received = Instant::now();
            if raw_tokens {
                // After a v0 SaslHandshake the frames are bare SASL tokens.
                let Some(s) = session.as_mut() else {
                    break 'conn Err("raw SASL token without a SASL session".into());
                };
                let out = authenticate(&ctx, s, &mut conn, &frame);
                if out.error_code != 0 {
                    // v0 has no way to carry an error: Kafka closes.
                    break 'conn Err(out
                        .error_message
                        .unwrap_or_else(|| "SASL authentication failed".into()));
                }
                if out.user.is_some() {
                    raw_tokens = false;
                    decoder = FrameDecoder::new(full_max);
                }
                let mut b = BytesMut::with_capacity(4 + out.auth_bytes.len());
                b.extend_from_slice(&(out.auth_bytes.len() as i32).to_be_bytes());
                b.extend_from_slice(&out.auth_bytes);
                let b = b.freeze();
                if let Err(e) = queue_ready(&tx, b, "SaslAuthenticate", received).await {
                    break 'conn Err(e);
                }
                continue;
            }
            let req = match protocol::parse(frame) {
                Ok(Parsed::Request(req)) => *req,
                Ok(Parsed::ApiVersionsFallback { correlation_id }) => {
                    let b = protocol::api_versions_fallback(correlation_id);
                    if let Err(e) = queue_ready(&tx, b, "ApiVersions", received).await {
                        break 'conn Err(e);
                    }
                    continue;
                }
                Err(e) => {
                    metrics::counter!("chronik_protocol_errors_total").increment(1);
                    break 'conn Err(e.to_string());
                }
            };
            let api = protocol::api_name(req.api_key);
            if let Some(s) = &session {
                if let Err(why) = s.admit(req.api_key, handlers::now_ms().max(0) as u64) {
                    metrics::counter!("chronik_sasl_refused_requests_total").increment(1);
                    break 'conn Err(format!("{why} ({api})"));
                }
            }
            let auth = match &req.body {
                RequestKind::SaslHandshake(h) => {
                    let reply = sasl_handshake(session.as_mut(), &req, &h.mechanism);
                    raw_tokens = req.version == 0
                        && session
                            .as_ref()
                            .is_some_and(|s| s.user().is_none() && s.exchanging());
                    Some(reply)
                }
                RequestKind::SaslAuthenticate(a) => Some(sasl_authenticate(
                    &ctx,
                    session.as_mut(),
                    &mut conn,
                    &req,
                    a,
                )),
                _ => None,
            };
            let handle: BoxFuture = match auth {
                Some(AuthReply { bytes, close }) => {
                    if session.as_ref().is_some_and(|s| s.user().is_some()) {
                        decoder = FrameDecoder::new(full_max);
                    }
                    if let Err(e) = queue_ready(&tx, bytes, api, received).await {
                        break 'conn Err(e);
                    }
                    match close {
                        // The answer goes out first: the writer drains
                        // what was queued before the connection closes.
                        Some(why) => break 'conn Err(why),
                        None => continue,
                    }
                }
                None => match handlers::dispatch(&ctx, req, &conn) {
                    Reply::Now(b) => Box::pin(std::future::ready(b)),
                    Reply::Later(f) => f,
                    Reply::Nothing => continue,
                    Reply::Close(why) => break 'conn Err(why),
                },
            };
            if tx.send((handle, api, received)).await.is_err() {
                break 'conn Err("writer closed".into());
            }
        }
        tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            },
            // A broker cut off from its region's majority drops its clients,
            // as a ZooKeeper server without quorum does. Otherwise a client
            // keeps asking it for metadata (librdkafka prefers brokers it is
            // connected to), is told that this broker still leads, and never
            // finds the leader the majority elected: writes stalled for as
            // long as the partition lasted.
            _ = cut_off_watch(&ctx) => break Err("cut off from the region's majority".into()),
        }
    };
    // Answer what was already accepted before closing, as Kafka does.
    drop(tx);
    let _ = writer.await;
    result
}

/// Resolves once the broker is cut off from its region's majority.
async fn cut_off_watch(ctx: &BrokerCtx) {
    loop {
        if ctx.cluster.is_cut_off() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Queues an answer that is already encoded, in request order with the
/// handlers' futures; an error once the writer has gone.
async fn queue_ready(
    tx: &mpsc::Sender<(BoxFuture, &'static str, Instant)>,
    b: Bytes,
    api: &'static str,
    received: Instant,
) -> Result<(), String> {
    tx.send((Box::pin(std::future::ready(b)), api, received))
        .await
        .map_err(|_| "writer closed".to_string())
}
