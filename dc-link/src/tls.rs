//! Mutual TLS between dc-links, and the dev certificate authority.
//!
//! Every region's certificate names it twice: the common name and a DNS
//! name `<region>.dc-link.chronik`. The dialing side checks the server's
//! name the ordinary TLS way; the accepting side checks that the client's
//! certificate names the region its Hello claims, since TLS alone would
//! accept any certificate the CA signed.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN of the dc-link protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"chronik-dc-link/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("peer certificate is not valid for region {region}: {message}")]
    WrongRegion { region: String, message: String },
}

pub fn region_dns_name(region: &str) -> String {
    format!("{region}.dc-link.chronik")
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(path)?;
    let out: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let out = out.map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: format!("not a PEM certificate: {e:?}"),
    })?;
    if out.is_empty() {
        return Err(TlsError::File {
            path: path.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(out)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: format!("not a PEM private key: {e:?}"),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS material of one region's dc-link.
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(ca: &Path, cert: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: ca.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(Identity {
            roots: Arc::new(roots),
            chain: certs(cert)?,
            key: key(key_path)?,
        })
    }

    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| setup(&e))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(transport);
        Ok(cfg)
    }

    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport);
        Ok(cfg)
    }
}

/// Checks that the (already chain-verified) client certificate of `conn`
/// names `region`.
pub fn check_peer_region(conn: &quinn::Connection, region: &str) -> Result<(), TlsError> {
    let wrong = |message: String| TlsError::WrongRegion {
        region: region.to_string(),
        message,
    };
    let ident = conn
        .peer_identity()
        .ok_or_else(|| wrong("no client certificate".into()))?;
    let chain = ident
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| wrong("unexpected peer identity type".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| wrong("empty certificate chain".into()))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| wrong(format!("{e}")))?;
    let name = ServerName::try_from(region_dns_name(region)).map_err(|e| wrong(e.to_string()))?;
    cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
        wrong(format!(
            "the certificate does not name {}",
            region_dns_name(region)
        ))
    })
}

/// `chronik certs init`: a dev CA and one certificate per region, written
/// as `ca.pem`, `ca.key`, `<region>.pem`, `<region>.key` in `dir`.
pub fn init_dev_certs(dir: &Path, regions: &[String]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Setup(format!("generating certificates: {e}"));
    let write = |name: String, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Chronik dev CA (not for production)");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(gen)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;
    write("ca.pem".into(), ca_cert.pem())?;
    write("ca.key".into(), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for region in regions {
        let mut p = CertificateParams::new(vec![region_dns_name(region)]).map_err(gen)?;
        p.distinguished_name
            .push(DnType::CommonName, region.as_str());
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = p.signed_by(&key, &issuer).map_err(gen)?;
        write(format!("{region}.pem"), cert.pem())?;
        write(format!("{region}.key"), key.serialize_pem())?;
    }
    Ok(())
}

/// What a certificate from [`issue_dev_cert`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevCertKind {
    /// A broker's Kafka listener: server and client authentication (the
    /// broker is also a client of its Raft peers), named by its hosts.
    Broker,
    /// A Kafka client for mutual TLS; its principal is `User:CN=<name>`.
    Client,
}

/// `chronik certs broker|client`: one more certificate signed by the dev
/// CA that `chronik certs init` wrote to `dir` (`ca.pem`, `ca.key`),
/// written as `<name>.pem` and `<name>.key`.
pub fn issue_dev_cert(
    dir: &Path,
    name: &str,
    kind: DevCertKind,
    hosts: &[String],
) -> Result<(), TlsError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Setup(format!("issuing a certificate for {name}: {e}"));
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: format!(
                "{e} (run `chronik certs init --dir {}` first)",
                dir.display()
            ),
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).map_err(gen)?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).map_err(gen)?;
    let mut p = CertificateParams::new(match kind {
        DevCertKind::Broker => hosts.to_vec(),
        DevCertKind::Client => Vec::new(),
    })
    .map_err(gen)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = match kind {
        DevCertKind::Broker => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        DevCertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(gen)?;
    let cert = p.signed_by(&key, &issuer).map_err(gen)?;
    for (file, text) in [
        (format!("{name}.pem"), cert.pem()),
        (format!("{name}.key"), key.serialize_pem()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}
