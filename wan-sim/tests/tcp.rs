//! TCP proxy behaviour, measured from outside through real sockets.

mod common;

use chronik_wan_sim::{Impairment, WanSim};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_arrives_intact_and_in_order_despite_delay_and_jitter() {
    let echo = tcp_echo().await;
    let sim = tcp_proxy(
        echo.addr,
        Impairment {
            delay_ms: 20.0,
            jitter_ms: 15.0,
            // Must be ignored for TCP: the stream would otherwise be damaged.
            loss: 0.5,
            corrupt: 1.0,
            reorder: 1.0,
            ..Default::default()
        },
    )
    .await;
    let data = pattern(5 << 20);
    let s = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let start = Instant::now();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(7919) {
            wr.write_all(piece).await.unwrap();
        }
        // Half-close: the echo server must see EOF through the proxy and close back.
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::with_capacity(data.len());
    timeout(Duration::from_secs(8), rd.read_to_end(&mut back))
        .await
        .expect("echo finishes")
        .unwrap();
    let took = start.elapsed();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "stream corrupted or reordered");
    assert!(took >= Duration::from_millis(40), "took {took:?}");
    let s = sim.stats().tcp[0];
    assert_eq!(s.up.bytes, 5 << 20);
    assert_eq!(s.down.bytes, 5 << 20);
    assert_eq!((s.up.corrupted, s.up.dropped), (0, 0));
    assert_eq!(s.up.queued_bytes + s.down.queued_bytes, 0);
    // Both half-closes went through, so the proxy is done with the connection.
    let deadline = Instant::now() + Duration::from_secs(1);
    while sim.stats().tcp[0].sessions != 0 {
        assert!(
            Instant::now() < deadline,
            "proxied connection never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_adds_round_trip_latency() {
    let echo = tcp_echo().await;
    let sim = tcp_proxy(
        echo.addr,
        Impairment {
            delay_ms: 30.0,
            ..Default::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    s.set_nodelay(true).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(60), "rtt {rtt:?}");
        assert!(rtt < Duration::from_millis(250), "rtt {rtt:?}");
    }
}

/// Writes `n` bytes through the proxy and closes; returns what the sink
/// counted at EOF and how long that took.
async fn send_through(
    sim: &WanSim,
    totals: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
    n: usize,
) -> (usize, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    s.write_all(&vec![1u8; n]).await.unwrap();
    s.shutdown().await.unwrap();
    let total = timeout(Duration::from_secs(5), totals.recv())
        .await
        .expect("sink sees EOF")
        .unwrap();
    (total, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_throughput() {
    let (sink, mut totals) = tcp_sink().await;
    let sim = tcp_proxy(
        sink.addr,
        Impairment {
            bandwidth_mbit: 8.0,
            ..Default::default()
        },
    )
    .await;
    let (total, took) = send_through(&sim, &mut totals, 1_000_000).await;
    assert_eq!(total, 1_000_000);
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_limits_a_single_connection_to_window_per_rtt() {
    let (sink, mut totals) = tcp_sink().await;
    let sim = tcp_proxy(
        sink.addr,
        Impairment {
            delay_ms: 100.0,
            ..Default::default()
        },
    )
    .await;
    // 12 MiB through a 4 MiB window with a 200 ms round trip: at least two full round
    // trips of waiting for credit plus the final one-way delay.
    let (total, took) = send_through(&sim, &mut totals, 12 << 20).await;
    assert_eq!(total, 12 << 20);
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    assert!(took < Duration::from_millis(2000), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_stalls_without_closing_then_resumes() {
    let echo = tcp_echo().await;
    let sim = tcp_proxy(echo.addr, Impairment::default()).await;
    let mut s = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    let mut buf = [0u8; 5];
    s.write_all(b"hello").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    sim.set(Impairment {
        blackhole: true,
        ..Default::default()
    });
    s.write_all(b"stuck").await.unwrap();
    // A timeout, not EOF or an error: the connection is stalled, not closed.
    assert!(
        timeout(Duration::from_millis(700), s.read(&mut buf))
            .await
            .is_err(),
        "bytes crossed the blackhole (or the connection closed)"
    );
    // New connections are accepted but get nowhere either.
    let mut s2 = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    s2.write_all(b"later").await.unwrap();

    sim.set(Impairment::default());
    timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("resumes after the blackhole lifts")
        .unwrap();
    assert_eq!(&buf, b"stuck");
    timeout(Duration::from_secs(2), s2.read_exact(&mut buf))
        .await
        .expect("the connection opened during the blackhole works")
        .unwrap();
    assert_eq!(&buf, b"later");
    assert_eq!(sim.stats().tcp[0].sessions, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_simulator_closes_connections() {
    let echo = tcp_echo().await;
    let sim = tcp_proxy(echo.addr, Impairment::default()).await;
    let mut s = TcpStream::connect(sim.tcp_addrs()[0]).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).await.unwrap();
    drop(sim);
    let r = timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}
