//! SASL on a Kafka connection, with no I/O: the mechanisms (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512) and the connection's authentication state
//! (which requests it may send when, re-authentication, expiry).
//!
//! The broker feeds each SaslHandshake and SaslAuthenticate request in and
//! writes out what comes back; the rules here decide everything else, so
//! they are tested and fuzzed without sockets.

pub mod plain;
pub mod scram;
mod session;

pub use scram::{ScramCredential, ScramHash};
pub use session::{AuthOutcome, HandshakeOutcome, Session, SessionRules};

/// A SASL mechanism Chronik serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Plain,
    Scram(ScramHash),
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Scram(ScramHash::Sha512),
        Mechanism::Scram(ScramHash::Sha256),
        Mechanism::Plain,
    ];

    /// The name clients ask for; matched exactly, as Kafka matches it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(h) => h.mechanism(),
        }
    }

    pub fn parse(name: &str) -> Option<Mechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
