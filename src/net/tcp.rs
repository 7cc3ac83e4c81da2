//! SIP over TCP: listeners, the accept loop, outbound connects, and one task per connection.
//!
//! A connection task frames the inbound byte stream with
//! [`crate::sip::message::framing::frame`], hands each complete message to the core task, answers
//! CRLFCRLF keep-alive pings with CRLF, and writes what the core queues on its bounded channel. It
//! closes the connection on a framing error (the stream cannot be resynchronised), on idle
//! timeout, on EOF and on shutdown, and then tells the core task. Connections, inbound and outbound
//! together, are bounded by one semaphore. This module does not decide where messages go.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::NetConfig;
use crate::metrics::SipMetrics;
use crate::sip::message::framing::{frame, Framed};
use crate::sip::ConnId;

/// Messages queued for one connection's writer. Small on purpose: a peer that does not read
/// should lose messages (counted), not make callveil buffer without bound.
pub(crate) const WRITE_QUEUE: usize = 64;

const LISTEN_BACKLOG: i32 = 1024;

/// Read-buffer headroom reserved before each read.
const READ_CHUNK: usize = 16 * 1024;

/// State every TCP task shares.
pub(crate) struct Shared {
    pub(crate) config: NetConfig,
    pub(crate) metrics: SipMetrics,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}

/// What connection tasks tell the core task.
pub(crate) enum Event {
    /// An inbound connection was accepted; `tx` feeds its writer.
    Opened { id: ConnId, peer: SocketAddr, tx: mpsc::Sender<Bytes> },
    /// One framed message arrived.
    Message { id: ConnId, peer: SocketAddr, bytes: Bytes },
    /// The connection ended; `established` is false when an outbound connect failed, so the
    /// core never had a connection by that id.
    Closed { id: ConnId, established: bool },
}

pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restarted callveil must be able to listen again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until shutdown. A connection over `max_tcp_connections` is accepted and closed at once
/// rather than left in the backlog: the peer learns immediately and can fail over, and the
/// overload shows in `callveil_sip_dropped_total{kind="tcp_connection_limit"}`.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                    shared.metrics.drop("tcp_connection_limit");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let id = shared.next_id();
                let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                // Sent before the connection task exists, so the core task knows the connection
                // before any message from it.
                if events.send(Event::Opened { id, peer, tx }).await.is_err() {
                    return;
                }
                tokio::spawn(connection(stream, id, peer, rx, shared.clone(), events.clone(), permit));
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: pause instead of spinning on an error that will repeat.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens an outbound connection and then serves it like an accepted one. Messages the core queued
/// on `rx` while connecting are written once connected, or dropped if the connect fails.
pub(crate) fn spawn_outbound(
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    permit: OwnedSemaphorePermit,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        let connect = tokio::time::timeout(shared.config.tcp_connect_timeout, TcpStream::connect(peer));
        let result = tokio::select! {
            _ = shutdown.changed() => return,
            r = connect => r,
        };
        let error = match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                connection(stream, id, peer, rx, shared, events, permit).await;
                return;
            }
            Ok(Err(e)) => e.kind(),
            Err(_) => io::ErrorKind::TimedOut,
        };
        shared.metrics.drop("tcp_connect_failed");
        // The address is left out on purpose: it may be a caller's own device.
        tracing::warn!(conn = id.0, error = %error, "outbound SIP TCP connect failed; queued messages dropped");
        drop(rx);
        let _ = events.send(Event::Closed { id, established: false }).await;
    });
}

/// Keeps `callveil_sip_tcp_connections` right even if the task is cancelled.
struct OpenGauge(SipMetrics);

impl OpenGauge {
    fn new(metrics: &SipMetrics) -> OpenGauge {
        metrics.tcp_connections.inc();
        OpenGauge(metrics.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.tcp_connections.dec();
    }
}

enum Step {
    Read(io::Result<usize>),
    Write(Option<Bytes>),
    Idle,
    Shutdown,
}

/// Why a connection ended; only for the debug log.
enum End {
    Eof,
    Idle,
    Shutdown,
    CoreGone,
    Io(io::ErrorKind),
    Framing(&'static str),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Eof => f.write_str("closed by peer"),
            End::Idle => f.write_str("idle timeout"),
            End::Shutdown => f.write_str("shutdown"),
            End::CoreGone => f.write_str("core stopped"),
            End::Io(kind) => write!(f, "I/O error: {kind}"),
            End::Framing(kind) => write!(f, "framing error: {kind}"),
        }
    }
}

async fn connection(
    stream: TcpStream,
    id: ConnId,
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    permit: OwnedSemaphorePermit,
) {
    let gauge = OpenGauge::new(&shared.metrics);
    let end = serve(stream, id, peer, rx, &shared, &events).await;
    tracing::debug!(conn = id.0, end = %end, "SIP TCP connection closed");
    drop(gauge);
    drop(permit);
    let _ = events.send(Event::Closed { id, established: true }).await;
}

async fn serve(
    mut stream: TcpStream,
    id: ConnId,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    shared: &Shared,
    events: &mpsc::Sender<Event>,
) -> End {
    let config = &shared.config;
    let max = config.max_message_bytes;
    let idle = config.tcp_idle_timeout;
    let mut shutdown = shared.shutdown.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut deadline = Instant::now() + idle;
    loop {
        // Everything already buffered first: one read can carry several messages.
        loop {
            // Headers and body are each bounded by max_message_bytes, so a connection buffers at
            // most about twice that; a message over the limit in total still reaches the core,
            // which answers 513 as it does for UDP.
            match frame(&buf, max, max) {
                Ok(Framed::Message(n)) if n <= buf.len() => {
                    let bytes = buf.split_to(n).freeze();
                    if events.send(Event::Message { id, peer, bytes }).await.is_err() {
                        return End::CoreGone;
                    }
                }
                Ok(Framed::KeepAlive { len, ping }) if len <= buf.len() => {
                    buf.advance(len);
                    if ping {
                        if let Err(e) = write(&mut stream, b"\r\n", idle).await {
                            return End::Io(e.kind());
                        }
                    }
                }
                Ok(Framed::Incomplete) => break,
                Ok(_) => return End::Framing("length_out_of_range"),
                Err(e) => {
                    shared.metrics.parse_error(e.kind());
                    return End::Framing(e.kind());
                }
            }
        }
        buf.reserve(READ_CHUNK);
        let step = tokio::select! {
            r = stream.read_buf(&mut buf) => Step::Read(r),
            m = rx.recv() => Step::Write(m),
            _ = tokio::time::sleep_until(deadline) => Step::Idle,
            _ = shutdown.changed() => Step::Shutdown,
        };
        match step {
            Step::Read(Ok(0)) => return End::Eof,
            Step::Read(Ok(_)) => deadline = Instant::now() + idle,
            Step::Read(Err(e)) => return End::Io(e.kind()),
            Step::Write(Some(bytes)) => {
                if let Err(e) = write(&mut stream, &bytes, idle).await {
                    return End::Io(e.kind());
                }
                deadline = Instant::now() + idle;
            }
            Step::Write(None) => return End::CoreGone,
            Step::Idle => return End::Idle,
            Step::Shutdown => return End::Shutdown,
        }
    }
}

/// A write that cannot complete within the idle timeout means the peer stopped reading.
async fn write(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}
