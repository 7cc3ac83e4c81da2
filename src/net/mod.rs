//! Network drivers: the only module with sockets and clocks.
//!
//! [`Listeners::bind`] opens the configured UDP sockets and TCP listeners (so port 0 resolves to a
//! real port before the proxy is built), and [`Listeners::spawn`] starts one core task that owns a
//! [`SipCore`] outright (no lock around it): it feeds the core complete messages stamped with
//! `Instant::now()`, calls `handle_timeout` when the core's deadline passes, and after every input
//! drains `poll_transmit`, sending UDP from the listening socket and TCP on the connection the core
//! names (or an existing or new one to the address). TCP connections each run a small task that
//! frames the byte stream, answers keep-alive pings and writes what the core queues for it.
//! [`metrics_http`] serves `/metrics`. This module does not parse SIP beyond stream framing, make
//! routing decisions, or log peer addresses or message contents (they can carry personal data).
#![allow(clippy::disallowed_methods)] // the drivers are where the clock is read

mod core_task;
pub mod metrics_http;
pub mod rtp;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Endpoint, Settings, Transport};
use crate::metrics::SipMetrics;
use crate::sip::events::CallCommand;
use crate::sip::proxy::Proxy;
use crate::sip::{ConnId, Peer, Transmit};

/// What the driver needs from a sans-IO signaling core. [`Proxy`] is the real one; tests use small
/// scripted cores so the driver can be checked without the proxy's logic.
pub trait SipCore {
    /// One complete message (a UDP datagram or a framed TCP message) from `from`.
    fn handle_message(&mut self, now: Instant, from: Peer, bytes: &[u8]);
    /// The deadline returned by [`SipCore::poll_timeout`] has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// A TCP connection the core has seen messages from (or sent on) has ended.
    fn connection_closed(&mut self, conn: ConnId);
    /// The next message to send; drained after every input.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The earliest deadline, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A message to `to` could not be sent (TCP connect refused or timed out, UDP send error).
    /// RFC 3261 §8.1.3.1 treats this like a 503 from that peer, so the proxy can fail over at
    /// once instead of waiting for Timer B.
    fn transport_error(&mut self, _now: Instant, _to: Peer) {}
    /// A command from the recording path (release a held INVITE, end a call, media actions).
    fn handle_command(&mut self, _now: Instant, _cmd: CallCommand) {}
}

impl SipCore for Proxy {
    fn handle_message(&mut self, now: Instant, from: Peer, bytes: &[u8]) {
        Proxy::handle_message(self, now, from, bytes)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Proxy::handle_timeout(self, now)
    }

    fn connection_closed(&mut self, conn: ConnId) {
        Proxy::connection_closed(self, conn)
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Proxy::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Proxy::poll_timeout(self)
    }

    fn transport_error(&mut self, now: Instant, to: Peer) {
        Proxy::transport_error(self, now, to)
    }

    fn handle_command(&mut self, now: Instant, cmd: CallCommand) {
        Proxy::handle_command(self, now, cmd)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {endpoint}: {source}")]
    Bind { endpoint: String, source: std::io::Error },
    #[error("the SIP core task stopped unexpectedly: {0}")]
    CoreStopped(String),
}

/// Driver limits, taken from `[sip]` settings.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Largest message accepted; UDP receives one byte more so oversized datagrams are detected
    /// (and still handed to the core, which answers 513).
    pub max_message_bytes: usize,
    /// Most concurrent TCP connections, inbound and outbound together.
    pub max_tcp_connections: usize,
    /// A TCP connection with no traffic either way for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// How long an outbound TCP connect may take before the queued messages are dropped.
    pub tcp_connect_timeout: Duration,
}

impl NetConfig {
    pub fn from_settings(settings: &Settings) -> NetConfig {
        let sip = &settings.raw.sip;
        NetConfig {
            max_message_bytes: sip.max_message_bytes,
            max_tcp_connections: sip.max_tcp_connections,
            tcp_idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_s.max(1)),
            // Timer B/F give a transaction 64*T1; a connect that is not done within a few
            // round trips will not beat them, and waiting longer only holds a permit.
            tcp_connect_timeout: Duration::from_millis(sip.t1_ms.saturating_mul(10)).max(Duration::from_secs(1)),
        }
    }
}

/// Bound sockets, not yet serving.
pub struct Listeners {
    config: NetConfig,
    udp: Vec<udp::Bound>,
    tcp: Vec<TcpListener>,
    endpoints: Vec<Endpoint>,
}

impl Listeners {
    /// Binds every endpoint in order. Must run inside a Tokio runtime.
    pub async fn bind(listen: &[Endpoint], config: NetConfig) -> Result<Listeners, NetError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut endpoints = Vec::new();
        for ep in listen {
            let bind_err = |source| NetError::Bind { endpoint: ep.to_string(), source };
            let addr = match ep.transport {
                Transport::Udp => {
                    let bound = udp::bind(ep.addr).map_err(bind_err)?;
                    let addr = bound.local;
                    udp.push(bound);
                    addr
                }
                Transport::Tcp => {
                    let l = tcp::bind(ep.addr).map_err(bind_err)?;
                    let addr = l.local_addr().map_err(bind_err)?;
                    tcp.push(l);
                    addr
                }
            };
            endpoints.push(Endpoint { transport: ep.transport, addr });
        }
        Ok(Listeners { config, udp, tcp, endpoints })
    }

    /// The addresses actually bound, in configuration order (port 0 resolved). This is what the
    /// proxy must write into Via and Record-Route.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Starts the core task and the TCP accept loops. Must run inside a Tokio runtime. The core
    /// task also applies `commands` (from the recording path) between messages, when given.
    pub fn spawn<C: SipCore + Send + 'static>(
        self,
        core: C,
        metrics: SipMetrics,
        commands: Option<UnboundedReceiver<CallCommand>>,
    ) -> Driver {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(tcp::Shared {
            config: self.config,
            metrics: metrics.clone(),
            permits: Arc::new(Semaphore::new(self.config.max_tcp_connections)),
            next_conn: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
        });
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(core_task::EVENT_QUEUE);
        let mut accept = Vec::new();
        for listener in self.tcp {
            accept.push(tokio::spawn(tcp::accept_loop(listener, shared.clone(), events_tx.clone())));
        }
        let task = core_task::CoreTask::new(core, self.udp, shared, events_tx, events_rx, commands);
        let core = tokio::spawn(task.run(shutdown_rx));
        Driver { shutdown: shutdown_tx, core: Some(core), accept, endpoints: self.endpoints }
    }
}

/// The running driver. Dropping it also shuts it down, without waiting.
pub struct Driver {
    shutdown: watch::Sender<bool>,
    core: Option<JoinHandle<()>>,
    accept: Vec<JoinHandle<()>>,
    endpoints: Vec<Endpoint>,
}

impl Driver {
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The first bound address of `transport`, if any.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.endpoints.iter().find(|e| e.transport == transport).map(|e| e.addr)
    }

    /// Resolves only if the core task ends on its own, which is a bug (a panic in the core).
    pub async fn failed(&mut self) -> NetError {
        match self.core.as_mut() {
            Some(handle) => {
                let why = match handle.await {
                    Ok(()) => "it returned".to_string(),
                    Err(e) => e.to_string(),
                };
                self.core = None;
                NetError::CoreStopped(why)
            }
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, closes every socket and connection, and waits for the tasks to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(core) = self.core.take() {
            let _ = core.await;
        }
        for a in self.accept.drain(..) {
            let _ = a.await;
        }
    }
}
