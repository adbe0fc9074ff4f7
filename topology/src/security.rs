//! Kafka listeners and how they protect and authenticate connections, with
//! Kafka's names: a listener is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL;
//! an SSL listener may ask for client certificates (mutual TLS).
//!
//! The `[listeners]` table's `kafka` address is the first listener; more
//! are listed as `[[listeners.extra]]`, each with its own name and
//! advertised address (Kafka's `listeners` and `advertised.listeners`). A
//! client is told the addresses of the listener it connected through.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Kafka's name, also the default listener name.
    pub fn kafka_name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

/// Whether an SSL listener asks for client certificates (Kafka's
/// `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    /// A certificate is checked if sent; without one the client is
    /// `User:ANONYMOUS` (or its SASL identity).
    Requested,
    /// No connection without a certificate the `client_ca` signed.
    Required,
}

/// A listener's TLS material. The files are read again when they change,
/// so certificates are rotated without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, the broker's own first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates; needed for
    /// `client_auth` other than `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
}

fn default_reload_check_ms() -> u64 {
    5_000
}

/// One more Kafka listener (`[[listeners.extra]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaListener {
    /// Unique among the broker's listeners: `[A-Z0-9_]+`, as Kafka's.
    pub name: String,
    pub address: SocketAddr,
    /// host:port told to clients of this listener; defaults to `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised: Option<String>,
    #[serde(default)]
    pub security: SecurityProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

impl KafkaListener {
    /// (host, port) that clients of this listener are told to connect to.
    pub fn advertised(&self) -> (String, u16) {
        advertised_host_port(self.advertised.as_deref(), self.address)
    }
}

/// The (host, port) a listener bound to `address` tells clients: its
/// `advertised` setting (a port left out is the bound one), else the address.
pub(crate) fn advertised_host_port(advertised: Option<&str>, address: SocketAddr) -> (String, u16) {
    match advertised {
        Some(s) => match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(address.port())),
            None => (s.to_string(), address.port()),
        },
        None => (address.ip().to_string(), address.port()),
    }
}

/// `[sasl]`: what SASL listeners accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sasl {
    /// Offered in this order: `SCRAM-SHA-512`, `SCRAM-SHA-256`, `PLAIN`.
    /// PLAIN sends the password itself; offer it on TLS listeners only.
    pub mechanisms: Vec<String>,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): 0 keeps a session
    /// for the connection's life; otherwise clients re-authenticate within
    /// this time or are disconnected.
    pub connections_max_reauth_ms: u64,
}

pub const SASL_MECHANISMS: [&str; 3] = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

impl Default for Sasl {
    fn default() -> Self {
        Sasl {
            mechanisms: vec!["SCRAM-SHA-512".into(), "SCRAM-SHA-256".into()],
            connections_max_reauth_ms: 0,
        }
    }
}

/// `[authorization]`: Kafka's ACL authorizer (`authorizer.class.name`,
/// `super.users`, `allow.everyone.if.no.acl.found`). Off by default, as in
/// Kafka: with it off every principal may do everything, and the ACL APIs
/// answer SECURITY_DISABLED.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authorization {
    pub enabled: bool,
    /// Principals (`User:name`, or `User:<certificate subject>` for mTLS)
    /// allowed everything, whatever the ACLs say.
    pub super_users: Vec<String>,
    /// A resource that no ACL covers is open to every principal.
    pub allow_everyone_if_no_acl_found: bool,
}

pub(crate) fn check_authorization(a: &Authorization) -> Result<(), (String, String)> {
    for p in &a.super_users {
        match p.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => {
                return Err((
                    "authorization.super_users".into(),
                    format!("`{p}` is not a principal (use User:<name>)"),
                ))
            }
        }
    }
    Ok(())
}

pub(crate) fn valid_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks one listener's security settings; `key` names it in errors.
pub(crate) fn check_listener(
    key: &str,
    security: SecurityProtocol,
    tls: Option<&ListenerTls>,
) -> Result<(), (String, String)> {
    match (security.tls(), tls) {
        (true, None) => Err((
            format!("{key}.tls"),
            format!(
                "required: the listener's security is {}",
                security.kafka_name()
            ),
        )),
        (false, Some(_)) => Err((
            format!("{key}.tls"),
            format!(
                "set, but the listener's security is {} (use ssl or sasl_ssl)",
                security.kafka_name()
            ),
        )),
        (true, Some(t)) => {
            if t.client_auth != ClientAuth::None && t.client_ca.is_none() {
                return Err((
                    format!("{key}.tls.client_ca"),
                    "required when client_auth is requested or required".into(),
                ));
            }
            if t.reload_check_ms == 0 {
                return Err((
                    format!("{key}.tls.reload_check_ms"),
                    "must be positive".into(),
                ));
            }
            Ok(())
        }
        (false, None) => Ok(()),
    }
}

pub(crate) fn check_sasl(sasl: &Sasl) -> Result<(), (String, String)> {
    if sasl.mechanisms.is_empty() {
        return Err((
            "sasl.mechanisms".into(),
            "must name at least one mechanism".into(),
        ));
    }
    for m in &sasl.mechanisms {
        if !SASL_MECHANISMS.contains(&m.as_str()) {
            return Err((
                "sasl.mechanisms".into(),
                format!(
                    "`{m}` is not supported (use {})",
                    SASL_MECHANISMS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
