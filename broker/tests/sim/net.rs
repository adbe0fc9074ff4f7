//! The peer transport's sockets in the simulation: turmoil's simulated TCP,
//! wrapped so that every byte a broker reads enters the run's trace digest
//! and so that the nemesis can reset a connection (what a real network
//! does to TCP after heavy loss, or a NAT after idling).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use chronik_broker::raft::transport::{ready, Handshake, PeerIo, PeerListener, PeerStream};

use super::state::Shared;

pub struct SimIo {
    pub node: u64,
    pub shared: Arc<Shared>,
}

impl PeerIo for SimIo {
    fn connect(
        &self,
        _peer: u64,
        addr: String,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn PeerStream>>> {
        let (node, shared) = (self.node, self.shared.clone());
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            Ok(Box::new(Traced::new(node, s, shared)?) as Box<dyn PeerStream>)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn PeerListener>>> {
        let (node, shared) = (self.node, self.shared.clone());
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener { node, l, shared }) as Box<dyn PeerListener>)
        })
    }
}

struct SimListener {
    node: u64,
    l: turmoil::net::TcpListener,
    shared: Arc<Shared>,
}

impl PeerListener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<Handshake>> {
        Box::pin(async move {
            let (s, _) = self.l.accept().await?;
            Ok(ready(Box::new(Traced::new(
                self.node,
                s,
                self.shared.clone(),
            )?)))
        })
    }
}

/// A simulated TCP stream that records what it delivers and fails once the
/// nemesis resets its link.
pub struct Traced {
    node: u64,
    peer: IpAddr,
    link: (IpAddr, IpAddr),
    generation: u64,
    inner: turmoil::net::TcpStream,
    shared: Arc<Shared>,
}

impl Traced {
    fn new(
        node: u64,
        inner: turmoil::net::TcpStream,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let (me, peer) = (inner.local_addr()?.ip(), inner.peer_addr()?.ip());
        let link = if me < peer { (me, peer) } else { (peer, me) };
        let generation = shared.link_generation(link);
        Ok(Traced {
            node,
            peer,
            link,
            generation,
            inner,
            shared,
        })
    }

    fn reset(&self) -> Option<std::io::Error> {
        (self.shared.link_generation(self.link) != self.generation).then(|| {
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the nemesis")
        })
    }
}

impl AsyncRead for Traced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.reset() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let got = &buf.filled()[before..];
            self.shared.delivered(self.node, self.peer, got);
        }
        r
    }
}

impl AsyncWrite for Traced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.reset() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Even on a reset link: the FIN is how the peer's reader learns.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
