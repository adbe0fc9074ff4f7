//! TLS on a Kafka listener: the server configuration, read again whenever
//! its files change, and the principal a client certificate names.
//!
//! A reload builds a whole new configuration and swaps it in; connections
//! already open keep the one they shook hands with, new ones get the new
//! one. A file that fails to load (half-written during a rotation, say)
//! leaves the previous configuration serving and is retried next check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chronik_topology::{ClientAuth, ListenerTls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let out: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate: {e:?}")))?;
    if out.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(out)
}

pub(crate) fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| file_err(path, format!("not a PEM private key: {e:?}")))
}

/// The files' contents, compared to notice a change (sizes and mtimes can
/// stay the same across a rotation done within one second).
#[derive(PartialEq, Eq, Clone)]
struct Material(Vec<(PathBuf, Vec<u8>)>);

fn read_material(t: &ListenerTls) -> Result<Material, TlsError> {
    let mut out = Vec::new();
    for p in [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        let bytes = std::fs::read(p).map_err(|e| file_err(p, e))?;
        out.push((p.clone(), bytes));
    }
    Ok(Material(out))
}

fn build(t: &ListenerTls, m: &Material) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
    let chain = certs(&m.0[0].0, &m.0[0].1)?;
    let key = key(&m.0[1].0, &m.0[1].1)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?;
    let builder = match (t.client_auth, m.0.get(2)) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some((path, pem))) => {
            let mut roots = RootCertStore::empty();
            for c in certs(path, pem)? {
                roots
                    .add(c)
                    .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::Requested {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| setup(&e))?)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))
}

/// A listener's TLS configuration, kept current with its files.
pub struct ReloadingTls {
    settings: ListenerTls,
    listener: String,
    current: RwLock<(Material, Arc<ServerConfig>)>,
}

impl ReloadingTls {
    /// Loads the files once; a broker with unreadable TLS files does not
    /// start.
    pub fn load(listener: &str, settings: &ListenerTls) -> Result<Arc<ReloadingTls>, TlsError> {
        let m = read_material(settings)?;
        let cfg = build(settings, &m)?;
        Ok(Arc::new(ReloadingTls {
            settings: settings.clone(),
            listener: listener.to_string(),
            current: RwLock::new((m, Arc::new(cfg))),
        }))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap().1.clone())
    }

    /// Reads the files and swaps in a new configuration if they changed.
    /// Returns whether it did.
    pub fn check(&self) -> Result<bool, TlsError> {
        let m = read_material(&self.settings)?;
        if self.current.read().unwrap().0 == m {
            return Ok(false);
        }
        let cfg = build(&self.settings, &m)?;
        *self.current.write().unwrap() = (m, Arc::new(cfg));
        Ok(true)
    }

    /// Checks the files every `reload_check_ms` until the broker stops.
    pub async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.settings.reload_check_ms);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let result = match self.check() {
                Ok(false) => continue,
                Ok(true) => {
                    tracing::info!(listener = %self.listener, cert = %self.settings.cert.display(), "TLS certificate reloaded");
                    "reloaded"
                }
                Err(e) => {
                    tracing::warn!(listener = %self.listener, error = %e, "TLS files changed but do not load; still serving the previous certificate");
                    "failed"
                }
            };
            metrics::counter!("chronik_tls_reloads_total", "listener" => self.listener.clone(), "result" => result)
                .increment(1);
        }
    }
}

/// The principal a client certificate names, as Kafka's default principal
/// builder forms it: the subject's distinguished name in RFC 2253 form
/// (most specific first, `CN=alice,OU=eng,O=Acme`).
pub fn certificate_principal(leaf: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    let value = match a.as_str() {
                        Ok(s) => escape_rfc2253(s),
                        Err(_) => format!("#{}", hex(a.as_slice())),
                    };
                    format!("{}={value}", short_name(&oid).unwrap_or(&oid))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
}

/// The attribute keywords RFC 2253 names; any other is shown by its OID.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape_rfc2253(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn the_principal_is_the_subject_most_specific_first_and_escaped() {
        let mut p = CertificateParams::new(vec!["client".into()]).unwrap();
        // rcgen starts with a CN of its own; the order must be ours.
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "DE");
        p.distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc");
        p.distinguished_name.push(DnType::CommonName, "alice");
        let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(
            certificate_principal(cert.der()).as_deref(),
            Some("CN=alice,O=Acme\\, Inc,C=DE")
        );
    }

    #[test]
    fn escaping_follows_rfc2253() {
        assert_eq!(escape_rfc2253("#a b "), "\\#a b\\ ");
        assert_eq!(escape_rfc2253("x+y;z"), "x\\+y\\;z");
    }

    #[test]
    fn a_rotated_certificate_is_picked_up_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let k = KeyPair::generate().unwrap();
            let c = CertificateParams::new(vec![name.into()])
                .unwrap()
                .self_signed(&k)
                .unwrap();
            std::fs::write(dir.path().join("c.pem"), c.pem()).unwrap();
            std::fs::write(dir.path().join("k.pem"), k.serialize_pem()).unwrap();
        };
        write("one");
        let settings = ListenerTls {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            client_ca: None,
            client_auth: ClientAuth::None,
            reload_check_ms: 1000,
        };
        let tls = ReloadingTls::load("SSL", &settings).unwrap();
        assert!(!tls.check().unwrap());
        write("two");
        assert!(tls.check().unwrap());
        // A key that does not match the certificate: refused, old one kept.
        std::fs::write(
            dir.path().join("k.pem"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(matches!(tls.check(), Err(TlsError::Setup(_))));
        std::fs::write(dir.path().join("c.pem"), "not pem").unwrap();
        assert!(tls.check().is_err());
    }
}
