//! The brokers' admin HTTP API that only dc-link uses: appending home
//! batches to a mirror partition (`POST /v1/mirror/{topic}/{p}/{base}`),
//! reading where a mirror ends (`GET /v1/mirror/{topic}/{p}`), and, for
//! `global_quorum` topics, reporting mirror acks to the home leader.
//! A Kafka client has no way to write at given offsets, so this is not Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// The broker's header marking an append that starts the home log.
const FROM_LOG_START: &str = "x-chronik-from-log-start";
/// Passed as `flag_header` for a JSON body.
const JSON: &str = "content-type";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: {message}")]
    Transport { addr: String, message: String },
    #[error("{addr}: not the leader (leader: {leader:?})")]
    NotLeader { addr: String, leader: Option<i32> },
    #[error("{addr}: HTTP {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
}

/// The region's broker admin token, sent with every request when set (the
/// dc-link's `broker_admin_token_file`, or `CHRONIK_ADMIN_TOKEN_FILE` for
/// `chronik ctl`). One per process: a process talks to one region's brokers.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the admin token for the rest of the process; a second call keeps
/// the first token.
pub fn set_admin_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The dc-link's own admin API takes the same region token: `/v1/promote`
/// fences and moves homes, and must not answer strangers.
pub(crate) async fn require_token(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use chronik_wire::admin_token;
    let path = req.uri().path();
    let Some(want) = TOKEN.get().filter(|_| !admin_token::is_open_path(path)) else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if admin_token::authorizes(header, want) {
        return next.run(req).await;
    }
    metrics::counter!("chronik_dclink_admin_unauthorized_total").increment(1);
    (StatusCode::UNAUTHORIZED, admin_token::REFUSAL).into_response()
}

/// One keep-alive HTTP/1 connection to a broker's admin listener.
pub struct AdminConn {
    pub addr: String,
    sender: SendRequest<Full<Bytes>>,
}

impl AdminConn {
    pub async fn connect(addr: &str) -> Result<AdminConn, HttpError> {
        let t = |message: String| HttpError::Transport {
            addr: addr.to_string(),
            message,
        };
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| t("connect timed out".into()))?
            .map_err(|e| t(e.to_string()))?;
        let _ = s.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| t(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(AdminConn {
            addr: addr.to_string(),
            sender,
        })
    }

    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        self.request_with(method, path, body, None).await
    }

    async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        flag_header: Option<&str>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let t = |message: String| HttpError::Transport {
            addr: self.addr.clone(),
            message,
        };
        self.sender.ready().await.map_err(|e| t(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str());
        if let Some(token) = TOKEN.get() {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        match flag_header {
            Some(JSON) => req = req.header(hyper::header::CONTENT_TYPE, "application/json"),
            Some(h) => req = req.header(h, "1"),
            None => {}
        }
        let req = req.body(Full::new(body)).map_err(|e| t(e.to_string()))?;
        let exchange = async {
            let resp = self.sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        tokio::time::timeout(Duration::from_secs(40), exchange)
            .await
            .map_err(|_| t("no answer within 40 s".into()))?
            .map_err(|e| t(e.to_string()))
    }

    fn check(&self, status: StatusCode, body: &Bytes) -> Result<(), HttpError> {
        if status == StatusCode::MISDIRECTED_REQUEST {
            let leader = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("leader")?.as_i64())
                .map(|l| l as i32);
            return Err(HttpError::NotLeader {
                addr: self.addr.clone(),
                leader,
            });
        }
        if !status.is_success() {
            return Err(HttpError::Status {
                addr: self.addr.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        Ok(())
    }

    /// A request to the broker's `/v1/meta/...` API; the body on success.
    pub async fn meta(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        json: bool,
    ) -> Result<Bytes, HttpError> {
        let (status, resp) = self
            .request_with(method, path, body, json.then_some(JSON))
            .await?;
        self.check(status, &resp)?;
        Ok(resp)
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, body: &Bytes) -> Result<T, HttpError> {
        serde_json::from_slice(body).map_err(|e| HttpError::Transport {
            addr: self.addr.clone(),
            message: format!("bad JSON: {e}"),
        })
    }

    pub async fn node_id(&mut self) -> Result<i32, HttpError> {
        #[derive(Deserialize)]
        struct Cluster {
            node_id: i32,
        }
        let (st, body) = self
            .request(Method::GET, "/v1/cluster", Bytes::new())
            .await?;
        self.check(st, &body)?;
        Ok(self.json::<Cluster>(&body)?.node_id)
    }

    pub async fn mirror_state(&mut self, topic: &str, p: i32) -> Result<MirrorState, HttpError> {
        let path = format!("/v1/mirror/{}/{p}", encode_segment(topic));
        let (st, body) = self.request(Method::GET, &path, Bytes::new()).await?;
        self.check(st, &body)?;
        let s: MirrorState = self.json(&body)?;
        if !s.is_leader {
            return Err(HttpError::NotLeader {
                addr: self.addr.clone(),
                leader: s.leader,
            });
        }
        Ok(s)
    }

    pub async fn mirror_append(
        &mut self,
        topic: &str,
        p: i32,
        base_offset: i64,
        records: Bytes,
        from_log_start: bool,
        home_log_start: i64,
    ) -> Result<Appended, HttpError> {
        let path = format!(
            "/v1/mirror/{}/{p}/{base_offset}?home_log_start={home_log_start}",
            encode_segment(topic)
        );
        let (st, body) = self
            .request_with(
                Method::POST,
                &path,
                records,
                from_log_start.then_some(FROM_LOG_START),
            )
            .await?;
        self.check(st, &body)?;
        self.json(&body)
    }

    /// Tells the home partition's leader how far each mirror region holds
    /// its log durably (global_quorum topics).
    pub async fn mirror_acks(
        &mut self,
        topic: &str,
        p: i32,
        acks: &BTreeMap<String, i64>,
        required: usize,
    ) -> Result<(), HttpError> {
        let path = format!("/v1/mirror-acks/{}/{p}", encode_segment(topic));
        let body = serde_json::to_vec(&serde_json::json!({"acks": acks, "required": required}))
            .expect("serializes");
        let (st, body) = self
            .request_with(Method::POST, &path, body.into(), Some(JSON))
            .await?;
        self.check(st, &body)
    }
}

#[derive(Debug, Deserialize)]
pub struct MirrorState {
    pub is_leader: bool,
    pub leader: Option<i32>,
    /// The topic's home region, when it is a mirror here.
    #[serde(default)]
    pub mirror_of: Option<String>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    #[serde(default)]
    pub high_watermark: i64,
    /// (leader epoch, first offset), oldest first.
    #[serde(default)]
    pub epochs: Vec<(i32, i64)>,
}

impl MirrorState {
    /// The leader epoch of the last record, if the log holds any.
    pub fn last_epoch(&self) -> Option<i32> {
        if self.log_end_offset <= self.log_start_offset.max(0) {
            return None;
        }
        self.epochs
            .iter()
            .rev()
            .find(|(_, start)| *start < self.log_end_offset)
            .map(|(e, _)| *e)
    }
}

#[derive(Debug, Deserialize)]
pub struct Appended {
    pub log_end_offset: i64,
    pub appended: bool,
}

/// Topic names are `[a-zA-Z0-9._-]`, all safe in a path; anything else is
/// percent-encoded rather than trusted.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET `path` from an HTTP address (`host:port` or `http://host:port`) and
/// parse the JSON answer (`chronik ctl`).
pub async fn get_json<T: for<'de> Deserialize<'de>>(
    addr: &str,
    path: &str,
) -> Result<T, HttpError> {
    one_json(Method::GET, addr, path).await
}

async fn one_json<T: for<'de> Deserialize<'de>>(
    method: Method,
    addr: &str,
    path: &str,
) -> Result<T, HttpError> {
    one_json_with(method, addr, path, Bytes::new()).await
}

async fn one_json_with<T: for<'de> Deserialize<'de>>(
    method: Method,
    addr: &str,
    path: &str,
    body: Bytes,
) -> Result<T, HttpError> {
    let host = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut c = AdminConn::connect(host).await?;
    let (st, body) = c.request(method, path, body).await?;
    c.check(st, &body)?;
    c.json(&body)
}

/// GET `path` from an HTTP address and return the body as is (a log dump).
pub async fn get_bytes(addr: &str, path: &str) -> Result<Bytes, HttpError> {
    let host = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut c = AdminConn::connect(host).await?;
    let (st, body) = c.request(Method::GET, path, Bytes::new()).await?;
    c.check(st, &body)?;
    Ok(body)
}

/// POST to `path` (no body) at an HTTP address and parse the JSON answer
/// (`chronik ctl`).
pub async fn post_json<T: for<'de> Deserialize<'de>>(
    addr: &str,
    path: &str,
) -> Result<T, HttpError> {
    one_json(Method::POST, addr, path).await
}

/// POST `body` (JSON) to `path` at an HTTP address and parse the JSON
/// answer.
pub async fn post_json_body<T: for<'de> Deserialize<'de>>(
    addr: &str,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, HttpError> {
    let body = Bytes::from(serde_json::to_vec(body).expect("serializes"));
    one_json_with(Method::POST, addr, path, body).await
}
