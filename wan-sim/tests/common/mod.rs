//! Helpers shared by the integration tests: tiny upstream servers and a proxy on port 0.

#![allow(dead_code)] // each test file uses a different subset

use chronik_wan_sim::{Impairment, WanSim};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const ANY: &str = "127.0.0.1:0";

pub fn any() -> SocketAddr {
    ANY.parse().unwrap()
}

/// Aborts the server task when the test is done with it.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn udp_echo() -> Server {
    let sock = UdpSocket::bind(ANY).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        }
    });
    Server { addr, task }
}

/// A UDP server that hands every datagram it gets to the test.
pub async fn udp_sink() -> (Server, mpsc::UnboundedReceiver<Vec<u8>>) {
    let sock = UdpSocket::bind(ANY).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok(n) = sock.recv(&mut buf).await {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    });
    (Server { addr, task }, rx)
}

/// Everything the sink receives until it has been quiet for `quiet`.
pub async fn drain(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, rx.recv()).await {
        got.push(d);
    }
    got
}

pub async fn tcp_echo() -> Server {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    Server { addr, task }
}

/// A TCP server that reads each connection to EOF and reports how many bytes it got.
pub async fn tcp_sink() -> (Server, mpsc::UnboundedReceiver<usize>) {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut total = 0;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                let _ = tx.send(total);
            });
        }
    });
    (Server { addr, task }, rx)
}

pub async fn udp_proxy(upstream: SocketAddr, imp: Impairment) -> WanSim {
    WanSim::start(vec![(any(), upstream)], vec![], None, imp)
        .await
        .unwrap()
}

pub async fn tcp_proxy(upstream: SocketAddr, imp: Impairment) -> WanSim {
    WanSim::start(vec![], vec![(any(), upstream)], None, imp)
        .await
        .unwrap()
}

/// A client socket connected to the proxy.
pub async fn udp_client(sim: &WanSim) -> UdpSocket {
    let c = UdpSocket::bind(ANY).await.unwrap();
    c.connect(sim.udp_addrs()[0]).await.unwrap();
    c
}

/// Sends in small bursts so that the test's own sockets, not the proxy, never overflow
/// a kernel buffer and lose datagrams the test would blame on the proxy.
pub async fn send_paced(sock: &UdpSocket, datagrams: impl IntoIterator<Item = Vec<u8>>) {
    for (i, d) in datagrams.into_iter().enumerate() {
        sock.send(&d).await.unwrap();
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Deterministic, non-repeating-looking bytes, so misordered chunks can't compare equal.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
