//! UDP sockets for SIP: binding with large kernel buffers, receiving from several sockets in one
//! `select!` branch, and choosing the socket a datagram leaves from.
//!
//! Replies leave from a listening socket, never an ephemeral one, because SIP peers (and NATs and
//! firewalls in front of them) expect answers from the port they sent to. This module does not
//! interpret datagrams or decide where they go.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::Poll;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

/// Kernel buffer size asked for. Bursts of a few thousand calls per second overflow the default
/// (~200 KiB) and the kernel then drops datagrams silently; the kernel caps this at
/// `net.core.rmem_max` / `wmem_max`, so it is best effort.
const KERNEL_BUFFER_BYTES: usize = 4 << 20;

/// A bound socket and its local address (read once, not per datagram).
pub(crate) struct Bound {
    pub(crate) socket: UdpSocket,
    pub(crate) local: SocketAddr,
}

pub(crate) fn bind(addr: SocketAddr) -> io::Result<Bound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Lets `udp:[::]:5060` and `udp:0.0.0.0:5060` be configured side by side.
        socket.set_only_v6(true)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(KERNEL_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(KERNEL_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    let local = socket.local_addr()?;
    Ok(Bound { socket, local })
}

/// Receives one datagram from whichever socket has one. `start` rotates the socket polled first,
/// so a flood on one socket cannot starve the others.
pub(crate) async fn recv_any(
    sockets: &[Bound],
    buf: &mut [u8],
    start: &mut usize,
) -> (usize, io::Result<(usize, SocketAddr)>) {
    if sockets.is_empty() {
        return std::future::pending().await;
    }
    poll_fn(|cx| {
        let n = sockets.len();
        for k in 0..n {
            let i = (*start + k) % n;
            let Some(bound) = sockets.get(i) else { continue };
            let mut rb = ReadBuf::new(buf);
            match bound.socket.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => {
                    *start = (i + 1) % n;
                    return Poll::Ready((i, Ok((rb.filled().len(), from))));
                }
                Poll::Ready(Err(e)) => {
                    *start = (i + 1) % n;
                    return Poll::Ready((i, Err(e)));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// The listening socket a datagram to `to` should leave from: one of the same address family,
/// preferring one whose address the peer can reach (a loopback peer gets a loopback or wildcard
/// socket; others get a non-loopback one).
pub(crate) fn pick(sockets: &[Bound], to: SocketAddr) -> Option<&Bound> {
    let same_family = |b: &&Bound| b.local.is_ipv4() == to.is_ipv4();
    let reachable = |b: &&Bound| {
        let ip = b.local.ip();
        ip.is_unspecified() || ip.is_loopback() == to.ip().is_loopback()
    };
    sockets.iter().filter(same_family).find(reachable).or_else(|| sockets.iter().find(same_family))
}
