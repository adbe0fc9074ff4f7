//! UDP proxy behaviour, measured from outside through real sockets.

mod common;

use chronik_wan_sim::Impairment;
use common::*;
use std::time::{Duration, Instant};
use tokio::time::timeout;

async fn round_trip(c: &tokio::net::UdpSocket, msg: &[u8]) -> Option<Duration> {
    let t = Instant::now();
    c.send(msg).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = timeout(Duration::from_secs(2), c.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(&buf[..n], msg);
    Some(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_impairment_is_fast_and_in_order() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(sink.addr, Impairment::default()).await;
    let c = udp_client(&sim).await;
    send_paced(&c, (0u32..1000).map(|i| i.to_be_bytes().to_vec())).await;
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    let seqs: Vec<u32> = got
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());

    let echo = udp_echo().await;
    let sim = udp_proxy(echo.addr, Impairment::default()).await;
    let c = udp_client(&sim).await;
    let rtt = round_trip(&c, b"ping").await.expect("reply");
    assert!(rtt < Duration::from_millis(30), "rtt {rtt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_applies_each_way() {
    let echo = udp_echo().await;
    let sim = udp_proxy(
        echo.addr,
        Impairment {
            delay_ms: 50.0,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    for i in 0..5u8 {
        let rtt = round_trip(&c, &[i; 100]).await.expect("reply");
        assert!(rtt >= Duration::from_millis(100), "rtt {rtt:?}");
        assert!(rtt < Duration::from_millis(300), "rtt {rtt:?}");
    }
    let s = sim.stats().udp[0];
    assert_eq!((s.up.packets, s.down.packets), (5, 5));
    assert_eq!(s.sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_its_own_mapping() {
    let echo = udp_echo().await;
    let sim = udp_proxy(echo.addr, Impairment::default()).await;
    let a = udp_client(&sim).await;
    let b = udp_client(&sim).await;
    for _ in 0..3 {
        round_trip(&a, b"from a").await.expect("a's reply");
        round_trip(&b, b"from b").await.expect("b's reply");
    }
    assert_eq!(sim.stats().udp[0].sessions, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_about_the_given_fraction() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(
        sink.addr,
        Impairment {
            loss: 0.5,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    send_paced(&c, (0u32..2000).map(|i| i.to_be_bytes().to_vec())).await;
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    let lost = 1.0 - got.len() as f64 / 2000.0;
    assert!((0.35..=0.65).contains(&lost), "lost {lost}");
    let up = sim.stats().udp[0].up;
    assert_eq!(up.dropped + up.packets, 2000);
    assert_eq!(up.packets, got.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_drops_everything_until_lifted() {
    let echo = udp_echo().await;
    let sim = udp_proxy(echo.addr, Impairment::default()).await;
    let c = udp_client(&sim).await;
    round_trip(&c, b"before").await.expect("works before");

    sim.set(Impairment {
        blackhole: true,
        ..Default::default()
    });
    for i in 0..50u8 {
        c.send(&[i]).await.unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(500), c.recv(&mut buf))
            .await
            .is_err(),
        "a datagram crossed the blackhole"
    );
    assert_eq!(sim.stats().udp[0].up.blackholed, 50);

    sim.set(Impairment::default());
    round_trip(&c, b"after").await.expect("works again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_also_catches_queued_datagrams() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(
        sink.addr,
        Impairment {
            delay_ms: 300.0,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    send_paced(&c, (0u8..20).map(|i| vec![i])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    sim.set(Impairment {
        delay_ms: 300.0,
        blackhole: true,
        ..Default::default()
    });
    assert!(drain(&mut rx, Duration::from_millis(600)).await.is_empty());
    assert_eq!(sim.stats().udp[0].up.blackholed, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_throughput() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(
        sink.addr,
        Impairment {
            bandwidth_mbit: 8.0,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    // 1 MB at 8 Mbit/s = 1 s on the wire.
    let start = Instant::now();
    send_paced(&c, (0..1000).map(|_| vec![7u8; 1000])).await;
    let mut bytes = 0;
    while bytes < 1_000_000 {
        let d = timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("all data arrives")
            .unwrap();
        bytes += d.len();
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_flips_exactly_one_bit_of_every_datagram() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(
        sink.addr,
        Impairment {
            corrupt: 1.0,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    let original = pattern(64);
    send_paced(&c, (0..200).map(|_| original.clone())).await;
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 200);
    for d in &got {
        let flipped: u32 = d
            .iter()
            .zip(&original)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(flipped, 1);
    }
    assert_eq!(sim.stats().udp[0].up.corrupted, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorder_lets_later_datagrams_overtake() {
    let (sink, mut rx) = udp_sink().await;
    let sim = udp_proxy(
        sink.addr,
        Impairment {
            delay_ms: 10.0,
            reorder: 0.3,
            ..Default::default()
        },
    )
    .await;
    let c = udp_client(&sim).await;
    // Spread over ~50 ms so that a held-back datagram has others behind it to overtake it.
    for i in 0u32..500 {
        c.send(&i.to_be_bytes()).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 500, "reordering must not lose anything");
    let mut highest = None;
    let mut late = 0;
    for d in &got {
        let seq = u32::from_be_bytes(d[..4].try_into().unwrap());
        if highest.is_some_and(|h| seq < h) {
            late += 1;
        }
        highest = highest.max(Some(seq));
    }
    assert!(late > 50, "only {late} datagrams arrived after a later one");
    let r = sim.stats().udp[0].up.reordered;
    assert!((90..=210).contains(&r), "reordered {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impairment_changes_apply_at_runtime() {
    let echo = udp_echo().await;
    let sim = udp_proxy(echo.addr, Impairment::default()).await;
    let c = udp_client(&sim).await;
    let fast = round_trip(&c, b"x").await.unwrap();
    sim.set(Impairment {
        delay_ms: 40.0,
        ..Default::default()
    });
    let slow = round_trip(&c, b"y").await.unwrap();
    assert!(fast < Duration::from_millis(30), "{fast:?}");
    assert!(slow >= Duration::from_millis(80), "{slow:?}");
}

/// Throughput check: run with `--ignored --nocapture` on an otherwise idle machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-sensitive benchmark"]
async fn sustains_100k_datagrams_per_second() {
    let sink = std::net::UdpSocket::bind(ANY).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let sim = udp_proxy(
        sink_addr,
        Impairment {
            delay_ms: 5.0,
            ..Default::default()
        },
    )
    .await;
    let proxy = sim.udp_addrs()[0];
    let secs = 3.0;
    let counter = std::thread::spawn(move || {
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let sender = std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind(ANY).unwrap();
        s.connect(proxy).unwrap();
        let payload = [1u8; 200];
        let start = Instant::now();
        let mut sent = 0u64;
        // Offer 150k/s in 1 ms bursts.
        while start.elapsed().as_secs_f64() < secs {
            let due = (start.elapsed().as_secs_f64() * 150_000.0) as u64;
            while sent < due {
                let _ = s.send(&payload);
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    });
    let sent = tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();
    let received = tokio::task::spawn_blocking(move || counter.join().unwrap())
        .await
        .unwrap();
    let up = sim.stats().udp[0].up;
    let rate = up.packets as f64 / secs;
    println!(
        "sent {sent}, forwarded {} ({rate:.0}/s), received {received}, {:?}",
        up.packets, up
    );
    assert!(rate >= 100_000.0, "only {rate:.0} datagrams/s");
}
