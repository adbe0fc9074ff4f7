//! Arbitrary SASL exchanges: the fuzzer's bytes are cut into a sequence of
//! steps (a handshake naming some mechanism, an authenticate carrying some
//! token, a request to admit, a clock jump), and the session must never
//! panic, never let a request through before a login, and never log in a
//! user whose password the input does not hold.
#![no_main]

use chronik_wire::sasl::{Mechanism, ScramCredential, ScramHash, Session, SessionRules};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;

const PASSWORD: &[u8] = b"the-real-password";

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(SessionRules {
        mechanisms: Mechanism::ALL.to_vec(),
        reauth_ms: 1_000,
    });
    let lookup = |user: &str, hash: Option<ScramHash>| {
        if user != "alice" {
            return Vec::new();
        }
        [ScramHash::Sha512, ScramHash::Sha256]
            .into_iter()
            .filter(|h| hash.is_none_or(|x| x == *h))
            .map(|h| ScramCredential::from_password(h, PASSWORD, b"salt-salt-salt", 4096))
            .collect()
    };
    let mut now = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = tail.first().copied().unwrap_or(0) as usize;
        let body = tail.get(1..).unwrap_or(&[]);
        let (chunk, next) = body.split_at(len.min(body.len()));
        rest = next;
        match op % 4 {
            0 => {
                let mech = String::from_utf8_lossy(chunk);
                let _ = s.handshake(&mech, now);
            }
            1 => {
                let out = s.authenticate(chunk, lookup, "server-nonce", now);
                // The only way in is PLAIN with the real password: a SCRAM
                // proof needs the password's keys, which no input holds.
                if out.user.is_some() {
                    assert!(
                        chunk.windows(PASSWORD.len()).any(|w| w == PASSWORD),
                        "logged in without the password"
                    );
                    assert_eq!(s.user(), Some("alice"));
                }
            }
            2 => {
                let api = ApiKey::try_from(i16::from(chunk.first().copied().unwrap_or(0)))
                    .unwrap_or(ApiKey::Metadata);
                if s.admit(api, now).is_ok()
                    && !matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate | ApiKey::ApiVersions)
                {
                    assert!(s.user().is_some(), "{api:?} admitted before a login");
                }
            }
            _ => now = now.saturating_add(u64::from(chunk.first().copied().unwrap_or(0)) * 100),
        }
    }
});
