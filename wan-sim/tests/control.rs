//! The HTTP control API, spoken to over a raw socket (no HTTP client in the deps).

mod common;

use chronik_wan_sim::{Impairment, Stats, WanSim};
use common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: wan-sim\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_put_impairment_and_stats() {
    let echo = udp_echo().await;
    let sim = WanSim::start(
        vec![(any(), echo.addr)],
        vec![(any(), echo.addr)],
        Some(any()),
        Impairment {
            loss: 0.25,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ctl = sim.control_addr().unwrap();

    let (status, body) = http(ctl, "GET", "/v1/impairment", "").await;
    assert_eq!(status, 200);
    let imp: Impairment = serde_json::from_str(&body).unwrap();
    assert_eq!(imp.loss, 0.25);

    // Missing fields become 0: PUT replaces, it does not merge.
    let (status, _) = http(
        ctl,
        "PUT",
        "/v1/impairment",
        r#"{"delay_ms": 30, "blackhole": true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let want = Impairment {
        delay_ms: 30.0,
        blackhole: true,
        ..Default::default()
    };
    assert_eq!(sim.impairment(), want);
    let (_, body) = http(ctl, "GET", "/v1/impairment", "").await;
    assert_eq!(serde_json::from_str::<Impairment>(&body).unwrap(), want);

    let (status, _) = http(ctl, "POST", "/v1/impairment", r#"{"jitter_ms": 2}"#).await;
    assert_eq!(status, 200);
    assert_eq!(sim.impairment().jitter_ms, 2.0);
    assert_eq!(sim.impairment().delay_ms, 0.0);

    // Rejected input leaves the settings alone and says what was wrong.
    let (status, body) = http(ctl, "PUT", "/v1/impairment", r#"{"loss": 2}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("loss"), "{body}");
    let (status, body) = http(ctl, "PUT", "/v1/impairment", r#"{"dealy_ms": 2}"#).await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body.contains("dealy_ms"), "{body}");
    let (status, _) = http(ctl, "PUT", "/v1/impairment", "{not json").await;
    assert!((400..500).contains(&status));
    assert_eq!(sim.impairment().jitter_ms, 2.0);

    // Stats reflect real traffic.
    let c = udp_client(&sim).await;
    c.send(b"counted").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"counted");
    // The forwarder counts a datagram just after sending it, so the echo
    // can arrive before the count: poll briefly.
    let mut stats: Stats;
    let mut tries = 0;
    loop {
        let (status, body) = http(ctl, "GET", "/v1/stats", "").await;
        assert_eq!(status, 200);
        stats = serde_json::from_str(&body).unwrap();
        if stats.udp[0].down.packets >= 1 || tries == 40 {
            break;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(stats.udp.len(), 1);
    assert_eq!(stats.tcp.len(), 1);
    assert_eq!(stats.udp[0].listen, sim.udp_addrs()[0]);
    assert_eq!(stats.udp[0].up.packets, 1);
    assert_eq!(stats.udp[0].up.bytes, 7);
    assert_eq!(stats.udp[0].down.packets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_bad_settings_and_busy_addresses() {
    let bad = Impairment {
        reorder: -1.0,
        ..Default::default()
    };
    let err = WanSim::start(vec![(any(), any())], vec![], None, bad)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("reorder"), "{err}");

    let taken = tokio::net::TcpListener::bind(ANY).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = WanSim::start(vec![], vec![(addr, any())], None, Impairment::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
