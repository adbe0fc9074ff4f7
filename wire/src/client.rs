//! A pipelined Kafka client connection: requests are written in the order
//! they are queued, many may be outstanding, and each answer is matched to
//! its request by correlation id. It is the one piece of `chronik-wire` that
//! does I/O (behind the `client` feature), shared by the two hops of a
//! forwarded produce: a broker to its region's dc-link, and the home
//! region's dc-link to the partition leader.
//!
//! Queuing is synchronous ([`Pipe::call`] never waits), so callers that run
//! in request order keep that order on the wire. The connection is made
//! lazily by the pipe's own task; when it fails, every outstanding and
//! queued request fails with it and the pipe reports itself closed, so the
//! owner makes a new one. Nothing is retried here: whether a request that
//! was in flight took effect is for the caller (and idempotence) to settle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::framing::FrameDecoder;

/// Answers larger than this close the connection: no peer of ours sends
/// them.
const MAX_RESPONSE: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The connection broke with the request written or queued: it may or
    /// may not have been applied.
    #[error("connection to {addr} lost: {message}")]
    Lost { addr: String, message: String },
    #[error("cannot encode the request: {0}")]
    Encode(String),
    #[error("cannot decode the {api:?} answer from {addr}: {message}")]
    Decode {
        addr: String,
        api: ApiKey,
        message: String,
    },
}

type Answer = Result<Bytes, PipeError>;

struct Queued {
    api: ApiKey,
    version: i16,
    /// Header and body, without the length prefix or correlation id, which
    /// the writer fills in.
    body: Bytes,
    header: RequestHeader,
    done: oneshot::Sender<Answer>,
}

pub struct Pipe {
    addr: String,
    tx: mpsc::UnboundedSender<Queued>,
    closed: Arc<AtomicBool>,
}

/// What a call resolves to: the response body's bytes, decoded by
/// [`Pipe::decode`].
pub type Pending = oneshot::Receiver<Answer>;

impl Pipe {
    /// A pipe to `addr`, connecting in the background. Needs a tokio
    /// runtime.
    pub fn open(addr: String, client_id: &str) -> Pipe {
        let (tx, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(addr.clone(), client_id.to_string(), rx, closed.clone()));
        Pipe { addr, tx, closed }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection failed; a closed pipe fails every call.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// Queues a request; the answer comes on the returned channel.
    pub fn call<M: Encodable>(&self, api: ApiKey, version: i16, body: &M) -> Pending {
        let (done, rx) = oneshot::channel();
        let mut buf = BytesMut::with_capacity(256);
        if let Err(e) = body.encode(&mut buf, version) {
            let _ = done.send(Err(PipeError::Encode(e.to_string())));
            return rx;
        }
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version);
        let q = Queued {
            api,
            version,
            body: buf.freeze(),
            header,
            done,
        };
        if let Err(mpsc::error::SendError(q)) = self.tx.send(q) {
            let _ = q.done.send(Err(PipeError::Lost {
                addr: self.addr.clone(),
                message: "the connection is closed".into(),
            }));
        }
        rx
    }

    /// Decodes an answer's body as `M`.
    pub fn decode<M: Decodable>(
        addr: &str,
        api: ApiKey,
        version: i16,
        mut body: Bytes,
    ) -> Result<M, PipeError> {
        M::decode(&mut body, version).map_err(|e| PipeError::Decode {
            addr: addr.to_string(),
            api,
            message: e.to_string(),
        })
    }
}

/// Outstanding requests by correlation id: their API, version and waiter.
type Outstanding = Arc<Mutex<HashMap<i32, (ApiKey, i16, oneshot::Sender<Answer>)>>>;

async fn run(
    addr: String,
    client_id: String,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    closed: Arc<AtomicBool>,
) {
    let fail_all = |rx: &mut mpsc::UnboundedReceiver<Queued>, err: PipeError| {
        closed.store(true, Ordering::Release);
        rx.close();
        while let Ok(q) = rx.try_recv() {
            let _ = q.done.send(Err(err.clone()));
        }
    };
    let stream = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let message = e.to_string();
            return fail_all(&mut rx, PipeError::Connect { addr, message });
        }
        Err(_) => {
            let message = "no connection within 5 s".to_string();
            return fail_all(&mut rx, PipeError::Connect { addr, message });
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let outstanding: Outstanding = Arc::default();
    let client_id = StrBytes::from_string(client_id);
    let writer = {
        let outstanding = outstanding.clone();
        let rx = &mut rx;
        async move {
            let mut next_id: i32 = 1;
            let mut buf = BytesMut::new();
            while let Some(first) = rx.recv().await {
                // Everything queued goes out in one write.
                buf.clear();
                let mut q = Some(first);
                while let Some(Queued {
                    api,
                    version,
                    body,
                    header,
                    done,
                }) = q.take().or_else(|| rx.try_recv().ok())
                {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1).max(1);
                    let header = header
                        .with_correlation_id(id)
                        .with_client_id(Some(client_id.clone()));
                    let start = buf.len();
                    buf.put_i32(0);
                    if let Err(e) = header.encode(&mut buf, api.request_header_version(version)) {
                        buf.truncate(start);
                        let _ = done.send(Err(PipeError::Encode(e.to_string())));
                        continue;
                    }
                    buf.extend_from_slice(&body);
                    let len = (buf.len() - start - 4) as i32;
                    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
                    outstanding.lock().unwrap().insert(id, (api, version, done));
                }
                if !buf.is_empty() {
                    wr.write_all(&buf).await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<(), String>(())
        }
    };
    let reader = {
        let outstanding = outstanding.clone();
        let addr = addr.clone();
        async move {
            let decoder = FrameDecoder::new(MAX_RESPONSE);
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                while let Some(mut frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                    if frame.len() < 4 {
                        return Err("answer shorter than its header".to_string());
                    }
                    let id = i32::from_be_bytes(frame[..4].try_into().unwrap());
                    let Some((api, version, done)) = outstanding.lock().unwrap().remove(&id) else {
                        return Err(format!("answer to unknown correlation id {id}"));
                    };
                    let answer =
                        ResponseHeader::decode(&mut frame, api.response_header_version(version))
                            .map(|_| frame)
                            .map_err(|e| PipeError::Decode {
                                addr: addr.clone(),
                                api,
                                message: e.to_string(),
                            });
                    let _ = done.send(answer);
                }
                if rd.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err::<(), String>("closed by the peer".to_string());
                }
            }
        }
    };
    let message = tokio::select! {
        r = writer => r.err().unwrap_or_else(|| "closed".into()),
        r = reader => r.err().unwrap_or_else(|| "closed".into()),
    };
    let lost = PipeError::Lost {
        addr: addr.clone(),
        message,
    };
    for (_, (_, _, done)) in outstanding.lock().unwrap().drain() {
        let _ = done.send(Err(lost.clone()));
    }
    fail_all(&mut rx, lost);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, RequestKind};

    /// A server that reads `n` requests and answers them in reverse order,
    /// each with its correlation id as the error code.
    async fn reversing_server(n: usize) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let dec = FrameDecoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut ids = Vec::new();
            while ids.len() < n {
                s.read_buf(&mut buf).await.unwrap();
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    let crate::protocol::Parsed::Request(r) = crate::protocol::parse(f).unwrap()
                    else {
                        panic!("not a request")
                    };
                    assert!(matches!(r.body, RequestKind::ApiVersions(_)));
                    assert_eq!(r.header.client_id.as_deref(), Some("tester"));
                    ids.push(r.header.correlation_id);
                }
            }
            for id in ids.into_iter().rev() {
                let body = ApiVersionsResponse::default().with_error_code(id as i16);
                let out = crate::protocol::encode_response(id, ApiKey::ApiVersions, 3, &body);
                s.write_all(&out).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_out_of_order_reach_their_own_callers() {
        let addr = reversing_server(3).await;
        let pipe = Pipe::open(addr.clone(), "tester");
        let calls: Vec<_> = (0..3)
            .map(|_| pipe.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let body = c.await.unwrap().unwrap();
            let r: ApiVersionsResponse = Pipe::decode(&addr, ApiKey::ApiVersions, 3, body).unwrap();
            // Correlation ids are handed out from 1 in queue order.
            assert_eq!(r.error_code, i as i16 + 1);
        }
    }

    #[tokio::test]
    async fn a_failed_connection_fails_every_call_and_closes_the_pipe() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let pipe = Pipe::open(addr, "tester");
        let c = pipe.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        assert!(matches!(c.await.unwrap(), Err(PipeError::Connect { .. })));
        assert!(pipe.is_closed());
        let later = pipe.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        assert!(later.await.unwrap().is_err());
    }
}
