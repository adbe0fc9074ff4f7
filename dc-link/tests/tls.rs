//! Mutual TLS between dc-links over real QUIC on loopback: certificates from
//! `chronik certs init` are accepted and name their region; a certificate
//! from another CA is refused; a certificate for one region does not pass
//! as another.

use std::sync::Arc;

use chronik_dc_link::tls::{check_peer_region, init_dev_certs, region_dns_name, Identity};

fn identity(dir: &std::path::Path, region: &str) -> Identity {
    Identity::load(
        &dir.join("ca.pem"),
        &dir.join(format!("{region}.pem")),
        &dir.join(format!("{region}.key")),
    )
    .unwrap()
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(std::time::Duration::from_secs(5).try_into().unwrap()));
    Arc::new(t)
}

/// A fresh us-east server, so no earlier failed attempt is queued on it.
fn server(dir: &std::path::Path) -> quinn::Endpoint {
    let cfg = identity(dir, "us-east").server_config(transport()).unwrap();
    quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
}

#[tokio::test]
async fn certificates_name_regions_and_foreign_cas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let regions = vec!["us-east".to_string(), "eu-west".to_string()];
    init_dev_certs(dir.path(), &regions).unwrap();
    let foreign = tempfile::tempdir().unwrap();
    init_dev_certs(foreign.path(), &["eu-west".to_string()]).unwrap();

    let server = server(dir.path());
    let addr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let as_eu = check_peer_region(&conn, "eu-west").map_err(|e| e.to_string());
            let as_ap = check_peer_region(&conn, "ap-south").map_err(|e| e.to_string());
            (as_eu, as_ap)
        })
    };

    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(
        identity(dir.path(), "eu-west")
            .client_config(transport())
            .unwrap(),
    );
    let conn = client
        .connect(addr, &region_dns_name("us-east"))
        .unwrap()
        .await
        .expect("same CA: handshake succeeds");
    let (as_eu, as_ap) = accept.await.unwrap();
    assert!(as_eu.is_ok(), "{as_eu:?}");
    let err = as_ap.unwrap_err();
    assert!(err.contains("ap-south"), "{err}");
    conn.close(0u32.into(), b"");

    // The server's certificate is not valid for another region's name.
    let wrong_name = client
        .connect(addr, &region_dns_name("eu-west"))
        .unwrap()
        .await;
    assert!(
        wrong_name.is_err(),
        "a us-east certificate passed as eu-west"
    );

    // A certificate from another CA fails the handshake.
    let mut stranger = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    stranger.set_default_client_config(
        identity(foreign.path(), "eu-west")
            .client_config(transport())
            .unwrap(),
    );
    let refused = stranger
        .connect(addr, &region_dns_name("us-east"))
        .unwrap()
        .await;
    assert!(
        refused.is_err(),
        "a client trusting a foreign CA accepted the server"
    );

    // A client that trusts our CA but presents a foreign certificate is
    // refused by the server.
    let server = self::server(dir.path());
    let addr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await.unwrap().await.map(|_| ()) })
    };
    let mixed = Identity::load(
        &dir.path().join("ca.pem"),
        &foreign.path().join("eu-west.pem"),
        &foreign.path().join("eu-west.key"),
    )
    .unwrap();
    let mut impostor = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    impostor.set_default_client_config(mixed.client_config(transport()).unwrap());
    let attempt = impostor
        .connect(addr, &region_dns_name("us-east"))
        .unwrap()
        .await;
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), accept)
        .await
        .expect("the server decides")
        .unwrap();
    assert!(
        served.is_err(),
        "the server accepted a foreign client certificate"
    );
    if let Ok(c) = attempt {
        // TLS 1.3 clients may finish first; the server then closes.
        let reason = tokio::time::timeout(std::time::Duration::from_secs(10), c.closed())
            .await
            .expect("closed by the server");
        assert!(!reason.to_string().is_empty());
    }
}
