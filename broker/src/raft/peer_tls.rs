//! Mutual TLS on the Raft peer transport (`[cluster.tls]`).
//!
//! A broker's certificate names it: `broker-<id>.<region>.raft.chronik`.
//! The dialing broker checks that the peer it dials presents that name for
//! the peer's id (ordinary server-name verification), and the accepting
//! broker reads the name from the client certificate and hands the proven id
//! to the transport, which refuses a connection whose Hello claims another
//! broker. So a certificate of the region's CA lets its holder speak only as
//! the one broker it names, and a certificate of any other CA, or none, gets
//! no further than the handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use chronik_topology::{raft_peer_dns_name, raft_peer_id, PeerTls};

use super::transport::{Handshake, PeerIo, PeerListener, PeerStream};
use crate::listener::tls::{certs, key, TlsError};

/// Peer sockets over mutual TLS.
pub struct TlsIo {
    region: String,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl TlsIo {
    /// Loads the broker's certificate and key and the region's CA; a broker
    /// whose files do not load does not start.
    pub fn load(region: &str, t: &PeerTls) -> Result<TlsIo, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let chain = certs(&t.cert, &read(&t.cert)?)?;
        let key = key(&t.key, &read(&t.key)?)?;
        let mut roots = RootCertStore::empty();
        for c in certs(&t.ca, &read(&t.ca)?)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: t.ca.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| setup(&e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?;
        Ok(TlsIo {
            region: region.to_string(),
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

fn refused(why: String) -> std::io::Error {
    metrics::counter!("chronik_raft_peer_refused_total", "reason" => "certificate").increment(1);
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)
}

/// The broker of `region` a verified client certificate names.
fn proven_id(region: &str, leaf: &CertificateDer<'_>) -> Option<u64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let ids: Vec<i32> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => raft_peer_id(region, d),
            _ => None,
        })
        .collect();
    // A certificate naming two brokers proves neither.
    match ids.as_slice() {
        [id] => u64::try_from(*id).ok(),
        _ => None,
    }
}

impl PeerIo for TlsIo {
    fn connect(
        &self,
        peer: u64,
        addr: String,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn PeerStream>>> {
        let connector = self.connector.clone();
        let name = raft_peer_dns_name(&self.region, peer as i32);
        Box::pin(async move {
            let name = ServerName::try_from(name).map_err(std::io::Error::other)?;
            let sock = TcpStream::connect(&addr).await?;
            let _ = sock.set_nodelay(true);
            let tls = connector
                .connect(name, sock)
                .await
                .map_err(|e| refused(format!("peer {peer} at {addr}: {e}")))?;
            Ok(Box::new(tls) as Box<dyn PeerStream>)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn PeerListener>>> {
        let acceptor = self.acceptor.clone();
        let region = self.region.clone();
        Box::pin(async move {
            Ok(Box::new(TlsListener {
                tcp: TcpListener::bind(addr).await?,
                acceptor,
                region,
            }) as Box<dyn PeerListener>)
        })
    }
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    region: String,
}

impl PeerListener for TlsListener {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<Handshake>> {
        Box::pin(async move {
            let (sock, from) = self.tcp.accept().await?;
            let _ = sock.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let region = self.region.clone();
            // The handshake runs in the connection's own task, so one slow
            // or hostile client never holds up the accept loop.
            let handshake: Handshake = Box::pin(async move {
                let tls = acceptor
                    .accept(sock)
                    .await
                    .map_err(|e| refused(format!("{from}: {e}")))?;
                let id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| proven_id(&region, leaf))
                    .ok_or_else(|| {
                        refused(format!(
                            "{from}: the certificate names no broker of region {region}"
                        ))
                    })?;
                Ok((Box::new(tls) as Box<dyn PeerStream>, Some(id)))
            });
            Ok(handshake)
        })
    }
}
