//! The stateful proxy core (RFC 3261 §16), sans-IO.
//!
//! API (stable; the implementation is in progress): feed it complete messages with
//! [`Proxy::handle_message`] and expired deadlines with [`Proxy::handle_timeout`], then drain
//! [`Proxy::poll_transmit`] and ask [`Proxy::poll_timeout`] when to call again.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::{Endpoint, Route, Settings};
use crate::metrics::SipMetrics;
use crate::sip::sdp::MediaAnchor;
pub use crate::sip::transaction::Timers;
use crate::sip::{ConnId, Peer, Transmit};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The addresses callveil actually listens on (after binding, so port 0 is resolved). The
    /// first of each transport is written into Via and Record-Route.
    pub listen: Vec<Endpoint>,
    pub routes: Vec<Route>,
    pub timers: Timers,
    pub max_message_bytes: usize,
}

impl ProxyConfig {
    pub fn from_settings(settings: &Settings, bound: Vec<Endpoint>) -> ProxyConfig {
        ProxyConfig {
            listen: bound,
            routes: settings.routes.clone(),
            timers: Timers {
                t1: std::time::Duration::from_millis(settings.raw.sip.t1_ms),
                t2: std::time::Duration::from_millis(settings.raw.sip.t2_ms),
                t4: std::time::Duration::from_millis(settings.raw.sip.t4_ms),
            },
            max_message_bytes: settings.raw.sip.max_message_bytes,
        }
    }
}

pub struct Proxy {
    #[allow(dead_code)]
    config: ProxyConfig,
    #[allow(dead_code)]
    metrics: SipMetrics,
    #[allow(dead_code)]
    anchor: Box<dyn MediaAnchor>,
    out: VecDeque<Transmit>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, metrics: SipMetrics, anchor: Box<dyn MediaAnchor>) -> Proxy {
        Proxy { config, metrics, anchor, out: VecDeque::new() }
    }

    /// One complete message (a UDP datagram or a framed TCP message) from `from`.
    pub fn handle_message(&mut self, _now: Instant, _from: Peer, _bytes: &[u8]) {}

    /// Deadlines at or before `now` have passed.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// A TCP connection closed; responses for it will open a new connection instead.
    pub fn connection_closed(&mut self, _conn: ConnId) {}

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The earliest deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
