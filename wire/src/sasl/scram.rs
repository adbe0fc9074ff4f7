//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), server side, as
//! Kafka speaks them inside SaslAuthenticate: no channel binding, one
//! optional extension (`tokenauth`, for delegation tokens, which Chronik
//! does not issue).
//!
//! Credentials are kept the way RFC 5802 intends: the salt, the iteration
//! count, StoredKey and ServerKey. Neither the password nor the salted
//! password is ever stored, so a copy of the credential store does not let
//! anyone log in (it would still allow an offline guess of weak passwords).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};

/// Kafka's bounds on the iteration count (ScramMechanism.minIterations and
/// maxIterations); AlterUserScramCredentials refuses anything outside.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    /// The mechanism number Describe/AlterUserScramCredentials use.
    pub fn from_type(t: i8) -> Option<ScramHash> {
        match t {
            1 => Some(ScramHash::Sha256),
            2 => Some(ScramHash::Sha512),
            _ => None,
        }
    }

    pub fn type_id(self) -> i8 {
        match self {
            ScramHash::Sha256 => 1,
            ScramHash::Sha512 => 2,
        }
    }

    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha256 => &digest::SHA256,
            ScramHash::Sha512 => &digest::SHA512,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha256 => hmac::HMAC_SHA256,
            ScramHash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramHash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }

    fn mac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), msg)
            .as_ref()
            .to_vec()
    }

    fn h(self, msg: &[u8]) -> Vec<u8> {
        digest::digest(self.digest(), msg).as_ref().to_vec()
    }

    /// Hi() of RFC 5802: PBKDF2 with this hash's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.len()];
        let n = std::num::NonZeroU32::new(iterations.max(1)).expect("at least 1");
        pbkdf2::derive(self.pbkdf2(), n, salt, password, &mut out);
        out
    }
}

/// Compares secrets without stopping at the first difference, so the time
/// taken says nothing about how much of a guess was right.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What is stored for one user and one mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub hash: ScramHash,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

impl ScramCredential {
    /// From what AlterUserScramCredentials carries: the client computed
    /// the salted password, so the broker never sees the password.
    pub fn from_salted_password(
        hash: ScramHash,
        salt: &[u8],
        salted_password: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let client_key = hash.mac(salted_password, b"Client Key");
        ScramCredential {
            hash,
            salt: salt.to_vec(),
            stored_key: hash.h(&client_key),
            server_key: hash.mac(salted_password, b"Server Key"),
            iterations,
        }
    }

    pub fn from_password(
        hash: ScramHash,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let sp = hash.salted_password(password, salt, iterations);
        Self::from_salted_password(hash, salt, &sp, iterations)
    }

    /// Does `password` match? SASL/PLAIN logins are checked against the
    /// SCRAM credentials, so no clear or reversible password is kept.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let sp = self
            .hash
            .salted_password(password, &self.salt, self.iterations);
        let stored = self.hash.h(&self.hash.mac(&sp, b"Client Key"));
        equal_in_constant_time(&stored, &self.stored_key)
    }
}

/// Why an exchange failed. Every variant ends the exchange; the broker
/// answers SASL_AUTHENTICATION_FAILED and closes, as Kafka does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("Authentication failed: invalid SCRAM message ({0})")]
    Malformed(&'static str),
    #[error("Authentication failed: channel binding is not supported")]
    ChannelBinding,
    #[error("Authentication failed: Client requested an authorization id that is different from username")]
    AuthzId,
    #[error("Authentication failed: delegation tokens are not supported")]
    TokenAuth,
    /// Worded as a bad proof, as Kafka words it, so that a client cannot
    /// tell which user names exist.
    #[error("Authentication failed during authentication due to invalid credentials with SASL mechanism {0}")]
    UnknownUser(&'static str),
    #[error("Authentication failed during authentication due to invalid credentials with SASL mechanism {0}")]
    BadProof(&'static str),
    #[error("Authentication failed: unexpected SCRAM message in this state")]
    State,
}

/// One exchange with one client.
#[derive(Debug)]
pub struct ScramServer {
    hash: ScramHash,
    state: State,
}

#[derive(Debug)]
enum State {
    First,
    Final {
        user: String,
        cred: ScramCredential,
        client_first_bare: String,
        server_first: String,
        gs2_header: String,
        nonce: String,
    },
    Done,
}

/// What the server sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// server-first-message: the client answers with its proof.
    Challenge(Vec<u8>),
    /// server-final-message; `user` is authenticated.
    Done { user: String, reply: Vec<u8> },
}

/// `saslname` of RFC 5802: `=2C` is `,` and `=3D` is `=`; any other `=`
/// is an error.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut c = part.chars();
    if c.next() != Some(name) || c.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> ScramServer {
        ScramServer {
            hash,
            state: State::First,
        }
    }

    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// Feeds one client message. `lookup` finds the user's credential for
    /// this mechanism; `server_nonce` is fresh randomness the caller drew
    /// (printable, no comma), which keeps this function free of I/O.
    pub fn step(
        &mut self,
        msg: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<Step, ScramError> {
        // Any error ends the exchange: the state is taken before parsing.
        let state = std::mem::replace(&mut self.state, State::Done);
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match state {
            State::First => self.client_first(msg, lookup, server_nonce),
            State::Final {
                user,
                cred,
                client_first_bare,
                server_first,
                gs2_header,
                nonce,
            } => {
                let mut parts = msg.split(',');
                let binding = attr(parts.next(), 'c')?;
                let got_nonce = attr(parts.next(), 'r')?;
                if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
                    return Err(ScramError::Malformed("channel binding does not match"));
                }
                if got_nonce != nonce {
                    return Err(ScramError::Malformed("nonce does not match"));
                }
                // Extensions may sit between the nonce and the proof; the
                // proof is always last.
                let proof_at = msg.rfind(",p=").ok_or(ScramError::Malformed("no proof"))?;
                let proof = B64
                    .decode(&msg[proof_at + 3..])
                    .map_err(|_| ScramError::Malformed("proof is not base64"))?;
                let without_proof = &msg[..proof_at];
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let h = self.hash;
                if proof.len() != h.len() {
                    return Err(ScramError::BadProof(h.mechanism()));
                }
                let signature = h.mac(&cred.stored_key, auth_message.as_bytes());
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                if !equal_in_constant_time(&h.h(&client_key), &cred.stored_key) {
                    return Err(ScramError::BadProof(h.mechanism()));
                }
                let server_sig = h.mac(&cred.server_key, auth_message.as_bytes());
                Ok(Step::Done {
                    user,
                    reply: format!("v={}", B64.encode(server_sig)).into_bytes(),
                })
            }
            State::Done => Err(ScramError::State),
        }
    }

    fn client_first(
        &mut self,
        msg: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<Step, ScramError> {
        // gs2-header: "n," or "y," (no binding), then the optional authzid.
        let (cbind, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad GS2 flag")),
        }
        let (authz, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let authz = match authz {
            "" => None,
            a => Some(decode_saslname(attr(Some(a), 'a')?)?),
        };
        let gs2_header = msg[..msg.len() - bare.len()].to_string();
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        let user = decode_saslname(attr(first, 'n')?)?;
        let client_nonce = attr(parts.next(), 'r')?;
        if user.is_empty() || client_nonce.is_empty() {
            return Err(ScramError::Malformed("empty user name or nonce"));
        }
        for ext in parts {
            if ext == "tokenauth=true" {
                return Err(ScramError::TokenAuth);
            }
        }
        if authz.as_ref().is_some_and(|a| *a != user) {
            return Err(ScramError::AuthzId);
        }
        let unknown = ScramError::UnknownUser(self.hash.mechanism());
        let cred = lookup(&user).ok_or(unknown.clone())?;
        if cred.hash != self.hash {
            return Err(unknown);
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&cred.salt),
            cred.iterations
        );
        self.state = State::Final {
            user,
            cred,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            gs2_header,
            nonce,
        };
        Ok(Step::Challenge(server_first.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client, written from RFC 5802 independently of the server above.
    struct Client {
        hash: ScramHash,
        user: String,
        password: String,
        nonce: String,
        first_bare: String,
    }

    impl Client {
        fn new(hash: ScramHash, user: &str, password: &str) -> Client {
            let nonce = "fyko+d2lbbFgONRv9qkxdawL".to_string();
            let first_bare = format!(
                "n={},r={nonce}",
                user.replace('=', "=3D").replace(',', "=2C")
            );
            Client {
                hash,
                user: user.into(),
                password: password.into(),
                nonce,
                first_bare,
            }
        }
        fn first(&self) -> Vec<u8> {
            format!("n,,{}", self.first_bare).into_bytes()
        }
        fn last(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let sf = std::str::from_utf8(server_first).unwrap();
            let mut it = sf.split(',');
            let r = &it.next().unwrap()[2..];
            let s = B64.decode(&it.next().unwrap()[2..]).unwrap();
            let i: u32 = it.next().unwrap()[2..].parse().unwrap();
            assert!(r.starts_with(&self.nonce));
            let without = format!("c=biws,r={r}");
            let auth = format!("{},{sf},{without}", self.first_bare);
            let sp = self.hash.salted_password(self.password.as_bytes(), &s, i);
            let ck = self.hash.mac(&sp, b"Client Key");
            let sig = self.hash.mac(&self.hash.h(&ck), auth.as_bytes());
            let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_sig = self
                .hash
                .mac(&self.hash.mac(&sp, b"Server Key"), auth.as_bytes());
            (
                format!("{without},p={}", B64.encode(proof)).into_bytes(),
                format!("v={}", B64.encode(server_sig)).into_bytes(),
            )
        }
    }

    fn cred(hash: ScramHash, password: &str) -> ScramCredential {
        ScramCredential::from_password(hash, password.as_bytes(), b"salty", 4096)
    }

    #[test]
    fn rfc7677_sha256_example_derives_the_same_keys() {
        // RFC 7677 section 3: user "user", password "pencil", salt
        // W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredential::from_password(ScramHash::Sha256, b"pencil", &salt, 4096);
        let mut s = ScramServer::new(ScramHash::Sha256);
        let first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let step = s
            .step(first, |_| Some(c.clone()), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
            .unwrap();
        assert_eq!(
            step,
            Step::Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .to_vec()
            )
        );
        let last = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let done = s.step(last, |_| unreachable!(), "").unwrap();
        assert_eq!(
            done,
            Step::Done {
                user: "user".into(),
                reply: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
    }

    #[test]
    fn both_hashes_authenticate_and_verify_the_server() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let c = cred(hash, "s3cret");
            let client = Client::new(hash, "al,i=ce", "s3cret");
            let mut s = ScramServer::new(hash);
            let Step::Challenge(sf) = s
                .step(
                    &client.first(),
                    |u| (u == "al,i=ce").then(|| c.clone()),
                    "srvnonce",
                )
                .unwrap()
            else {
                panic!("expected a challenge")
            };
            let (last, want_sig) = client.last(&sf);
            match s.step(&last, |_| None, "").unwrap() {
                Step::Done { user, reply } => {
                    assert_eq!(user, client.user);
                    assert_eq!(reply, want_sig);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_password_unknown_user_or_other_hash_fails() {
        let c = cred(ScramHash::Sha256, "right");
        let client = Client::new(ScramHash::Sha256, "alice", "wrong");
        let mut s = ScramServer::new(ScramHash::Sha256);
        let Step::Challenge(sf) = s.step(&client.first(), |_| Some(c.clone()), "n").unwrap() else {
            panic!()
        };
        let (last, _) = client.last(&sf);
        assert_eq!(
            s.step(&last, |_| None, ""),
            Err(ScramError::BadProof("SCRAM-SHA-256"))
        );
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert_eq!(
            s.step(&client.first(), |_| None, "n"),
            Err(ScramError::UnknownUser("SCRAM-SHA-256"))
        );
        // A SHA-512 credential does not answer a SHA-256 exchange.
        let mut s = ScramServer::new(ScramHash::Sha256);
        let c512 = cred(ScramHash::Sha512, "right");
        assert_eq!(
            s.step(&client.first(), |_| Some(c512.clone()), "n"),
            Err(ScramError::UnknownUser("SCRAM-SHA-256"))
        );
    }

    #[test]
    fn bad_messages_are_refused_and_the_exchange_ends() {
        let c = cred(ScramHash::Sha256, "pw");
        for (msg, want) in [
            (&b"p=tls-unique,,n=a,r=x"[..], ScramError::ChannelBinding),
            (b"n,a=bob,n=alice,r=x", ScramError::AuthzId),
            (b"n,,n=alice,r=x,tokenauth=true", ScramError::TokenAuth),
            (
                b"n,,m=ext,n=alice,r=x",
                ScramError::Malformed("mandatory extension not supported"),
            ),
            (
                b"n,,n=al=ice,r=x",
                ScramError::Malformed("bad escape in user name"),
            ),
            (
                b"n,,n=,r=x",
                ScramError::Malformed("empty user name or nonce"),
            ),
            (b"n,,r=x", ScramError::Malformed("unexpected attribute")),
            (b"garbage", ScramError::Malformed("no GS2 header")),
            (b"\xff\xfe", ScramError::Malformed("not UTF-8")),
        ] {
            let mut s = ScramServer::new(ScramHash::Sha256);
            assert_eq!(s.step(msg, |_| Some(c.clone()), "n"), Err(want), "{msg:?}");
            // Whatever came before, a failed exchange stays failed.
            assert_eq!(
                s.step(b"n,,n=a,r=x", |_| Some(c.clone()), "n"),
                Err(ScramError::State)
            );
        }
        // A final message with another nonce or binding.
        let client = Client::new(ScramHash::Sha256, "alice", "pw");
        for tamper in [
            |m: String| m.replacen("r=", "r=X", 1),
            |m: String| m.replacen("c=biws", "c=eSws", 1),
            |m: String| m.replace(",p=", ",x=1,q="),
        ] {
            let mut s = ScramServer::new(ScramHash::Sha256);
            let Step::Challenge(sf) = s.step(&client.first(), |_| Some(c.clone()), "n").unwrap()
            else {
                panic!()
            };
            let (last, _) = client.last(&sf);
            let bad = tamper(String::from_utf8(last).unwrap());
            assert!(s.step(bad.as_bytes(), |_| None, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_passwords_are_checked_against_the_scram_credential() {
        let c = cred(ScramHash::Sha512, "hunter2");
        assert!(c.verify_password(b"hunter2"));
        assert!(!c.verify_password(b"hunter3"));
        assert!(!c.verify_password(b""));
    }
}
