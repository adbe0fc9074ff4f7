//! One dc-link actor per region: this process claims the role through the
//! region's brokers and renews it, or watches the active one as a standby
//! (the rules are `chronik_metadata_sync::actor`).
//!
//! A standby answers its admin API and refuses QUIC connections, so peers
//! dialing the region move on to the active process. A process that lost
//! the role to another exits: its in-memory lease grants and tasks belong
//! to a superseded term, and a supervisor restarts it as a standby.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chronik_metadata_sync::actor::{ActorRecord, ActorTimings, Candidate, Change, Claim, Step};
use hyper::Method;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::broker_http::{AdminConn, HttpError};

/// How long one request to a broker may take before the next is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
struct LinkState {
    actor: ActorRecord,
    #[serde(default)]
    promotions: serde_json::Value,
}

/// This process's side of the role, shared with everything that must stop
/// when it may no longer act.
pub struct ActorState {
    start: Instant,
    cand: Mutex<Candidate>,
    /// Set once this process has taken the role and is set up to act.
    acting: AtomicBool,
    brokers: Vec<String>,
    next: AtomicUsize,
}

/// The role was given to another process.
#[derive(Debug, Clone)]
pub struct Superseded {
    pub by: String,
    pub term: u64,
}

impl ActorState {
    pub fn new(me: String, brokers: Vec<String>) -> ActorState {
        ActorState {
            start: Instant::now(),
            cand: Mutex::new(Candidate::new(me, ActorTimings::default())),
            acting: AtomicBool::new(false),
            brokers,
            next: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn me(&self) -> String {
        self.cand.lock().unwrap().me().to_string()
    }

    /// Whether this process took the role (it may still be unable to renew
    /// it for a moment: see [`ActorState::may_act`]).
    pub fn is_active(&self) -> bool {
        self.acting.load(Ordering::Acquire)
    }

    /// Whether this process may vote, hold the lease and move homes now.
    pub fn may_act(&self) -> bool {
        self.is_active() && self.cand.lock().unwrap().may_act(self.now_ms())
    }

    /// The term this process acts at (it can change once, if the
    /// controller's record was rebuilt and claimed afresh).
    pub fn term(&self) -> Option<u64> {
        if !self.is_active() {
            return None;
        }
        self.cand.lock().unwrap().term()
    }

    /// The active process as last seen (for a standby's refusals).
    pub fn holder(&self) -> Option<String> {
        self.cand
            .lock()
            .unwrap()
            .seen()
            .map(|r| r.holder.clone())
            .filter(|h| !h.is_empty())
    }

    pub fn report(&self) -> serde_json::Value {
        let active = self.is_active();
        let c = self.cand.lock().unwrap();
        serde_json::json!({
            "me": c.me(),
            "role": if active { "active" } else { "standby" },
            "may_act": active && c.may_act(self.now_ms()),
            "term": if active { c.term() } else { None },
            "seen": c.seen(),
        })
    }

    /// Claims the role and keeps it. `became` gets the promotions stored
    /// with the role (JSON) once this process holds it; the caller sets up
    /// and calls [`ActorState::acting`]. Returns if another process takes
    /// the role.
    pub async fn run(&self, became: oneshot::Sender<serde_json::Value>) -> Superseded {
        let mut became = Some(became);
        let mut conn: Option<AdminConn> = None;
        loop {
            let step = self.cand.lock().unwrap().next(self.now_ms());
            let (sent, path, method) = match step {
                Step::Wait { at_ms } => {
                    let wait = at_ms.saturating_sub(self.now_ms()).min(100);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
                Step::Read => (self.now_ms(), "/v1/link/actor".to_string(), Method::GET),
                Step::Claim(Claim {
                    holder,
                    term,
                    renewals,
                }) => (
                    self.now_ms(),
                    // A socket address: nothing to escape in a query.
                    format!("/v1/link/actor/claim?holder={holder}&term={term}&renewals={renewals}"),
                    Method::POST,
                ),
            };
            let answer = self.ask(&mut conn, method.clone(), &path).await;
            let now = self.now_ms();
            let change = {
                let mut c = self.cand.lock().unwrap();
                match answer {
                    Ok((true, s)) if method == Method::POST => {
                        let ch = c.granted(sent, now, s.actor);
                        if let Change::Became { .. } = ch {
                            if let Some(tx) = became.take() {
                                let _ = tx.send(s.promotions);
                            }
                        }
                        ch
                    }
                    Ok((_, s)) => c.observed(now, s.actor),
                    Err(e) => {
                        tracing::debug!(error = %e, "dc-link actor: no broker answered");
                        c.failed(now);
                        Change::None
                    }
                }
            };
            match change {
                Change::Superseded { by, term } => return Superseded { by, term },
                Change::Became { term } => {
                    tracing::info!(term, me = %self.me(), "dc-link actor role taken: this process acts for the region")
                }
                Change::None => {}
            }
        }
    }

    /// Marks this process set up to act (its term is the candidate's).
    pub fn acting(&self) {
        self.acting.store(true, Ordering::Release);
    }

    /// The actor record as one request returns it; `granted`: a 409 (a
    /// refused claim) is an answer, not an error.
    async fn ask(
        &self,
        conn: &mut Option<AdminConn>,
        method: Method,
        path: &str,
    ) -> Result<(bool, LinkState), String> {
        let (granted, body) = self
            .send(conn, method, path, bytes::Bytes::new(), REQUEST_TIMEOUT)
            .await?;
        serde_json::from_slice::<LinkState>(&body)
            .map(|s| (granted, s))
            .map_err(|e| format!("bad answer: {e}"))
    }

    /// One request to the first broker that answers (JSON `body` if not
    /// empty), on `conn` while it stays open; `(false, body)` for a 409.
    async fn send(
        &self,
        conn: &mut Option<AdminConn>,
        method: Method,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(bool, Vec<u8>), String> {
        let mut last = "no broker admin address".to_string();
        for _ in 0..self.brokers.len().max(1) {
            let mut c = match conn.take() {
                Some(c) if c.is_open() => c,
                _ => {
                    let addr = self.next_broker();
                    match tokio::time::timeout(timeout, AdminConn::connect(&addr)).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            last = e.to_string();
                            continue;
                        }
                        Err(_) => {
                            last = format!("{addr}: no connection within {timeout:?}");
                            continue;
                        }
                    }
                }
            };
            let json = !body.is_empty();
            let r = tokio::time::timeout(timeout, c.meta(method.clone(), path, body.clone(), json))
                .await;
            let answer = match r {
                Ok(Ok(b)) => (true, b.to_vec()),
                Ok(Err(HttpError::Status {
                    status: 409, body, ..
                })) => (false, body.into_bytes()),
                Ok(Err(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(_) => {
                    last = format!("{}: no answer within {timeout:?}", c.addr);
                    continue;
                }
            };
            *conn = Some(c);
            return Ok(answer);
        }
        Err(last)
    }

    fn next_broker(&self) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.brokers[i % self.brokers.len().max(1)].clone()
    }

    /// Keeps the promotions of the region's vote with the role; refused
    /// once another process holds it.
    pub async fn keep_promotions(&self, promotions: &serde_json::Value) -> Result<(), String> {
        let term = self.term().ok_or("not the region's dc-link actor")?;
        let path = format!("/v1/link/promotions?holder={}&term={term}", self.me());
        let body = bytes::Bytes::from(promotions.to_string());
        // A controller commit: more time than a read.
        match self
            .send(&mut None, Method::POST, &path, body, REQUEST_TIMEOUT * 2)
            .await?
        {
            (true, _) => Ok(()),
            (false, refusal) => Err(String::from_utf8_lossy(&refusal).into_owned()),
        }
    }
}
