//! One connection's authentication, as Kafka's SaslServerAuthenticator and
//! KIP-368 define it:
//!
//! - Before authenticating, a client may send ApiVersions and SaslHandshake;
//!   after the handshake, only SaslAuthenticate. Anything else closes the
//!   connection without an answer (Kafka: "Unexpected Kafka request of type
//!   … during SASL handshake").
//! - A failed SaslAuthenticate is answered with SASL_AUTHENTICATION_FAILED
//!   and the connection is closed.
//! - With `connections.max.reauth.ms` > 0 a session lasts that long
//!   (SaslAuthenticate v1+ tells the client), the client re-authenticates on
//!   the same connection with the same mechanism and principal, and a
//!   request arriving after expiry closes the connection. With 0 (Kafka's
//!   default) a session never expires, and a handshake on an authenticated
//!   connection gets ILLEGAL_SASL_STATE, as Kafka answers it.

use kafka_protocol::messages::ApiKey;

use super::scram::{ScramError, ScramServer, Step};
use super::{plain, Mechanism, ScramCredential};

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The listener's SASL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRules {
    /// In the order they are offered to clients.
    pub mechanisms: Vec<Mechanism>,
    /// `connections.max.reauth.ms`; 0: sessions do not expire.
    pub reauth_ms: u64,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for SaslHandshake.
    Handshake,
    /// Handshake done; the SaslAuthenticate exchange runs.
    Exchange {
        mechanism: Mechanism,
        scram: Option<ScramServer>,
    },
    Authenticated,
    /// A failure was answered; nothing more is served.
    Failed,
}

/// A connection's authentication state.
#[derive(Debug)]
pub struct Session {
    rules: SessionRules,
    phase: Phase,
    /// Who authenticated, with which mechanism, and until when (ms).
    authenticated: Option<(String, Mechanism, Option<u64>)>,
    /// When the last re-authentication began (ms).
    last_reauth_ms: Option<u64>,
}

/// Kafka lets a connection begin re-authenticating at most once a second,
/// so that a client cannot keep the broker busy with SCRAM's key
/// stretching; a sooner handshake is answered as an unexpected one.
pub const MIN_REAUTH_INTERVAL_MS: u64 = 1000;

/// What to answer a SaslHandshake with.
#[derive(Debug, PartialEq, Eq)]
pub struct HandshakeOutcome {
    pub error_code: i16,
    pub mechanisms: Vec<&'static str>,
    /// Close after writing the answer.
    pub close: bool,
}

/// What to answer a SaslAuthenticate with.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthOutcome {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub auth_bytes: Vec<u8>,
    /// For SaslAuthenticate v1+: how long the session lasts (0: forever).
    pub session_lifetime_ms: i64,
    pub close: bool,
    /// Set when the exchange ended with this user authenticated.
    pub user: Option<String>,
}

impl AuthOutcome {
    fn fail(code: i16, message: String) -> AuthOutcome {
        AuthOutcome {
            error_code: code,
            error_message: Some(message),
            auth_bytes: Vec::new(),
            session_lifetime_ms: 0,
            close: true,
            user: None,
        }
    }
}

impl Session {
    pub fn new(rules: SessionRules) -> Session {
        Session {
            rules,
            phase: Phase::Handshake,
            authenticated: None,
            last_reauth_ms: None,
        }
    }

    /// Is a SaslAuthenticate exchange under way (after a handshake)?
    pub fn exchanging(&self) -> bool {
        matches!(self.phase, Phase::Exchange { .. })
    }

    /// The authenticated user name, once there is one.
    pub fn user(&self) -> Option<&str> {
        self.authenticated.as_ref().map(|(u, _, _)| u.as_str())
    }

    /// May a request of kind `api` be served now? `Err` names why the
    /// connection must be closed instead.
    pub fn admit(&self, api: ApiKey, now_ms: u64) -> Result<(), &'static str> {
        let sasl = matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        match (&self.phase, &self.authenticated) {
            (Phase::Failed, _) => Err("authentication failed on this connection"),
            // Authenticated, possibly re-authenticating: served until expiry.
            (_, Some((_, _, expiry))) => {
                if !sasl && expiry.is_some_and(|e| now_ms >= e) {
                    Err("the authentication session expired (connections.max.reauth.ms) without re-authentication")
                } else {
                    Ok(())
                }
            }
            (Phase::Handshake, None)
                if api == ApiKey::ApiVersions || api == ApiKey::SaslHandshake =>
            {
                Ok(())
            }
            (Phase::Handshake, None) => {
                Err("a request other than ApiVersions or SaslHandshake before authentication")
            }
            (Phase::Exchange { .. }, None) if api == ApiKey::SaslAuthenticate => Ok(()),
            (Phase::Exchange { .. }, None) => {
                Err("a request other than SaslAuthenticate during the SASL exchange")
            }
            (Phase::Authenticated, None) => Err("not authenticated"),
        }
    }

    pub fn handshake(&mut self, mechanism: &str, now_ms: u64) -> HandshakeOutcome {
        let offered: Vec<&'static str> = self.rules.mechanisms.iter().map(|m| m.name()).collect();
        let answer = |error_code, close| HandshakeOutcome {
            error_code,
            mechanisms: offered.clone(),
            close,
        };
        // Kafka's request handlers answer a handshake the connection does
        // not expect, with no mechanisms, and keep the connection.
        let unexpected = HandshakeOutcome {
            error_code: ILLEGAL_SASL_STATE,
            mechanisms: Vec::new(),
            close: false,
        };
        let reauth = match (&self.phase, &self.authenticated) {
            (Phase::Handshake, None) => None,
            (Phase::Authenticated, Some((_, m, _))) if self.rules.reauth_ms > 0 => {
                if self
                    .last_reauth_ms
                    .is_some_and(|t| now_ms < t.saturating_add(MIN_REAUTH_INTERVAL_MS))
                {
                    return unexpected;
                }
                self.last_reauth_ms = Some(now_ms);
                Some(*m)
            }
            (Phase::Authenticated, Some(_)) => return unexpected,
            _ => {
                self.phase = Phase::Failed;
                return answer(ILLEGAL_SASL_STATE, true);
            }
        };
        let chosen = Mechanism::parse(mechanism).filter(|m| self.rules.mechanisms.contains(m));
        match chosen {
            Some(m) if reauth.is_none_or(|was| was == m) => {
                self.phase = Phase::Exchange {
                    mechanism: m,
                    scram: match m {
                        Mechanism::Scram(h) => Some(ScramServer::new(h)),
                        Mechanism::Plain => None,
                    },
                };
                answer(0, false)
            }
            _ => {
                self.phase = Phase::Failed;
                answer(UNSUPPORTED_SASL_MECHANISM, true)
            }
        }
    }

    /// One SaslAuthenticate. `lookup` finds a user's SCRAM credential for
    /// a mechanism (`None` for PLAIN asks for any of the user's); `nonce`
    /// is fresh randomness for SCRAM's server nonce.
    pub fn authenticate(
        &mut self,
        auth_bytes: &[u8],
        lookup: impl Fn(&str, Option<super::ScramHash>) -> Vec<ScramCredential>,
        nonce: &str,
        now_ms: u64,
    ) -> AuthOutcome {
        let Phase::Exchange { mechanism, scram } = &mut self.phase else {
            let message = match self.phase {
                Phase::Authenticated => {
                    "SaslAuthenticate request received after successful authentication"
                }
                _ => "SaslAuthenticate request received before SaslHandshake",
            };
            // Kafka answers this on an authenticated connection and keeps
            // it; anywhere else the exchange is broken.
            let close = !matches!(self.phase, Phase::Authenticated);
            if close {
                self.phase = Phase::Failed;
            }
            return AuthOutcome {
                close,
                ..AuthOutcome::fail(ILLEGAL_SASL_STATE, message.into())
            };
        };
        let mechanism = *mechanism;
        let result: Result<(Option<String>, Vec<u8>), String> = match scram {
            None => match plain::parse(auth_bytes) {
                Ok((user, password)) => {
                    if lookup(&user, None)
                        .iter()
                        .any(|c| c.verify_password(&password))
                    {
                        Ok((Some(user), Vec::new()))
                    } else {
                        Err("Authentication failed: Invalid username or password".to_string())
                    }
                }
                Err(e) => Err(e.to_string()),
            },
            Some(s) => {
                let hash = s.hash();
                match s.step(
                    auth_bytes,
                    |u| lookup(u, Some(hash)).into_iter().next(),
                    nonce,
                ) {
                    Ok(Step::Challenge(b)) => Ok((None, b)),
                    Ok(Step::Done { user, reply }) => Ok((Some(user), reply)),
                    Err(e @ ScramError::BadProof(_)) | Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Err(message) => {
                self.phase = Phase::Failed;
                AuthOutcome::fail(SASL_AUTHENTICATION_FAILED, message)
            }
            Ok((None, challenge)) => AuthOutcome {
                error_code: 0,
                error_message: None,
                auth_bytes: challenge,
                session_lifetime_ms: 0,
                close: false,
                user: None,
            },
            Ok((Some(user), reply)) => {
                if let Some((before, _, _)) = &self.authenticated {
                    if *before != user {
                        let message = format!(
                            "Cannot change principals during re-authentication from User:{before}: User:{user}"
                        );
                        self.phase = Phase::Failed;
                        return AuthOutcome::fail(SASL_AUTHENTICATION_FAILED, message);
                    }
                }
                let lifetime = self.rules.reauth_ms;
                let expiry = (lifetime > 0).then(|| now_ms + lifetime);
                self.authenticated = Some((user.clone(), mechanism, expiry));
                self.phase = Phase::Authenticated;
                AuthOutcome {
                    error_code: 0,
                    error_message: None,
                    auth_bytes: reply,
                    session_lifetime_ms: lifetime as i64,
                    close: false,
                    user: Some(user),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::ScramHash;

    fn rules(reauth_ms: u64) -> SessionRules {
        SessionRules {
            mechanisms: vec![Mechanism::Scram(ScramHash::Sha512), Mechanism::Plain],
            reauth_ms,
        }
    }

    fn creds(user: &str, _: Option<ScramHash>) -> Vec<ScramCredential> {
        match user {
            "alice" | "bob" => vec![ScramCredential::from_password(
                ScramHash::Sha512,
                format!("{user}-pw").as_bytes(),
                b"salt",
                4096,
            )],
            _ => vec![],
        }
    }

    fn plain_login(s: &mut Session, user: &str, pw: &str, now: u64) -> AuthOutcome {
        s.authenticate(format!("\0{user}\0{pw}").as_bytes(), creds, "n", now)
    }

    #[test]
    fn only_apiversions_and_the_handshake_come_before_authentication() {
        let mut s = Session::new(rules(0));
        assert!(s.admit(ApiKey::ApiVersions, 0).is_ok());
        assert!(s.admit(ApiKey::Metadata, 0).is_err());
        assert!(s.admit(ApiKey::SaslAuthenticate, 0).is_err());
        assert_eq!(s.handshake("PLAIN", 0).error_code, 0);
        assert!(s.admit(ApiKey::ApiVersions, 0).is_err());
        assert!(s.admit(ApiKey::SaslAuthenticate, 0).is_ok());
        let out = plain_login(&mut s, "alice", "alice-pw", 0);
        assert_eq!((out.error_code, out.user.as_deref()), (0, Some("alice")));
        assert!(s.admit(ApiKey::Produce, 10_000_000).is_ok());
    }

    #[test]
    fn unknown_mechanisms_and_bad_passwords_fail_and_close() {
        let mut s = Session::new(rules(0));
        let h = s.handshake("SCRAM-SHA-256", 0);
        assert_eq!(h.error_code, UNSUPPORTED_SASL_MECHANISM);
        assert_eq!(h.mechanisms, vec!["SCRAM-SHA-512", "PLAIN"]);
        assert!(h.close);
        assert!(s.admit(ApiKey::ApiVersions, 0).is_err());

        for (user, pw) in [("alice", "nope"), ("carol", "carol-pw")] {
            let mut s = Session::new(rules(0));
            s.handshake("PLAIN", 0);
            let out = plain_login(&mut s, user, pw, 0);
            assert_eq!(out.error_code, SASL_AUTHENTICATION_FAILED);
            assert!(out.close && out.user.is_none());
            assert!(s.admit(ApiKey::Metadata, 0).is_err());
        }
    }

    #[test]
    fn without_reauth_a_second_handshake_is_an_illegal_state_and_the_session_lasts() {
        let mut s = Session::new(rules(0));
        s.handshake("PLAIN", 0);
        let out = plain_login(&mut s, "alice", "alice-pw", 0);
        assert_eq!(out.session_lifetime_ms, 0);
        let h = s.handshake("PLAIN", 0);
        assert_eq!((h.error_code, h.close), (ILLEGAL_SASL_STATE, false));
        let a = s.authenticate(b"\0alice\0alice-pw", creds, "n", 0);
        assert_eq!((a.error_code, a.close), (ILLEGAL_SASL_STATE, false));
        assert!(s.admit(ApiKey::Fetch, u64::MAX / 2).is_ok());
    }

    #[test]
    fn with_reauth_the_session_expires_and_renews_as_the_same_principal_only() {
        let mut s = Session::new(rules(1000));
        s.handshake("PLAIN", 0);
        let out = plain_login(&mut s, "alice", "alice-pw", 5);
        assert_eq!(out.session_lifetime_ms, 1000);
        assert!(s.admit(ApiKey::Fetch, 1004).is_ok());
        assert!(s.admit(ApiKey::Fetch, 1005).is_err());
        // Re-authentication is still allowed once expired, and renews.
        assert!(s.admit(ApiKey::SaslHandshake, 1005).is_ok());
        assert_eq!(s.handshake("PLAIN", 1005).error_code, 0);
        assert_eq!(plain_login(&mut s, "alice", "alice-pw", 1500).error_code, 0);
        assert!(s.admit(ApiKey::Fetch, 2400).is_ok());
        // Another mechanism, or another principal, ends the connection.
        let mut m = Session::new(rules(1000));
        m.handshake("PLAIN", 0);
        plain_login(&mut m, "alice", "alice-pw", 0);
        assert_eq!(
            m.handshake("SCRAM-SHA-512", 0).error_code,
            UNSUPPORTED_SASL_MECHANISM
        );
        // Within a second of the last re-authentication, a handshake is
        // answered as unexpected and the connection stays.
        let early = s.handshake("PLAIN", 1600);
        assert_eq!((early.error_code, early.close), (ILLEGAL_SASL_STATE, false));
        assert!(s.admit(ApiKey::Fetch, 1600).is_ok());
        s.handshake("PLAIN", 2005);
        let out = plain_login(&mut s, "bob", "bob-pw", 2005);
        assert_eq!(out.error_code, SASL_AUTHENTICATION_FAILED);
        assert!(out.close);
        assert!(out
            .error_message
            .unwrap()
            .contains("Cannot change principals"));
    }

    #[test]
    fn scram_runs_two_rounds_through_the_session() {
        let mut s = Session::new(rules(0));
        s.handshake("SCRAM-SHA-512", 0);
        let first = s.authenticate(b"n,,n=alice,r=abc", creds, "xyz", 0);
        assert_eq!(first.error_code, 0);
        assert!(first.user.is_none() && first.auth_bytes.starts_with(b"r=abcxyz,s="));
        // A bad proof fails the exchange.
        let last = s.authenticate(b"c=biws,r=abcxyz,p=AAAA", creds, "", 0);
        assert_eq!(last.error_code, SASL_AUTHENTICATION_FAILED);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Admit(i16),
        Handshake(String),
        Authenticate(Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i16..70).prop_map(Op::Admit),
            prop_oneof![
                Just("PLAIN".to_string()),
                Just("SCRAM-SHA-512".to_string()),
                Just("SCRAM-SHA-256".to_string()),
                ".{0,20}",
            ]
            .prop_map(Op::Handshake),
            prop_oneof![
                Just(b"\0alice\0alice-pw".to_vec()),
                Just(b"\0alice\0wrong".to_vec()),
                Just(b"n,,n=alice,r=abc".to_vec()),
                Just(b"c=biws,r=abcxyz,p=AAAA".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64),
            ]
            .prop_map(Op::Authenticate),
        ]
    }

    proptest! {
        /// Whatever a client sends, in whatever order: no panic; once an
        /// answer says close, no request is admitted; and a user is
        /// authenticated only by a right password.
        #[test]
        fn any_sequence_of_sasl_requests_is_safe(
            ops in proptest::collection::vec(op(), 0..24),
            reauth in prop_oneof![Just(0u64), Just(1000u64)],
        ) {
            let mut s = Session::new(rules(reauth));
            let mut closed = false;
            let mut right_password_seen = false;
            for (t, op) in ops.into_iter().enumerate() {
                let now = t as u64 * 300;
                match op {
                    Op::Admit(k) => {
                        let Ok(api) = ApiKey::try_from(k) else { continue };
                        let admitted = s.admit(api, now).is_ok();
                        prop_assert!(!(closed && admitted), "{api:?} admitted after a close");
                        if !admitted {
                            break; // the broker closes the connection
                        }
                    }
                    Op::Handshake(m) => closed |= s.handshake(&m, now).close,
                    Op::Authenticate(b) => {
                        right_password_seen |= b == b"\0alice\0alice-pw";
                        closed |= s.authenticate(&b, creds, "xyz", now).close;
                    }
                }
                if s.user().is_some() {
                    prop_assert!(right_password_seen, "authenticated without the password");
                }
            }
        }
    }
}
