//! Simulation harness: carrier UA ↔ callveil's proxy core ↔ PBX UA(s) on virtual time.
//!
//! The user agents are built from callveil's own transaction state machines plus hand-written
//! message templates, so they retransmit like real UAs; the network between them has a seeded
//! latency, jitter (which reorders) and loss. Nothing here touches a socket or a real clock: a
//! 32-second Timer B runs in microseconds.

#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // virtual time starts from one real instant

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callveil::config::{Endpoint, Settings, Transport};
use callveil::metrics::Metrics;
use callveil::sip::events::{CallEvent, MediaCommand};
use callveil::sip::message::{self, Message, Method};
use callveil::sip::proxy::{Proxy, ProxyConfig};
use callveil::sip::sdp::{self as sdp_mod, AnchorError, MediaAnchor, PassThrough, SdpContext};
use callveil::sip::transaction::{ClientTransaction, Kind, Received, ServerTransaction, Timers};
use callveil::sip::{Peer, Transmit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const PROXY: &str = "127.0.0.1:5060";
pub const CARRIER: &str = "127.0.0.1:5061";
pub const PBX1: &str = "127.0.0.1:5070";
pub const PBX2: &str = "127.0.0.1:5071";
pub const CALLER_NUMBER: &str = "+34600111222";
pub const CALLEE_USER: &str = "4915112345";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What a PBX does with an INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasMode {
    /// 180 then 200 after `answer_after`.
    Answer,
    /// 180, then waits (for a CANCEL).
    Ring,
    /// A final error response at once.
    Reject(u16),
    /// Never answers anything.
    Silent,
}

pub struct Network {
    pub rng: StdRng,
    pub loss: f64,
    pub latency: Duration,
    pub jitter: Duration,
    /// (deliver at, seq for stable order, from, to, bytes)
    pub in_flight: Vec<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    /// Every packet handed to the network, for assertions (from, to, bytes).
    pub trace: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Drop the next N packets sent from `from` to `to` (targeted loss).
    pub drop_next: HashMap<(SocketAddr, SocketAddr), usize>,
}

impl Network {
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.trace.push((from, to, bytes.clone()));
        if let Some(n) = self.drop_next.get_mut(&(from, to)) {
            if *n > 0 {
                *n -= 1;
                return;
            }
        }
        if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
            return;
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.random_range(0..self.jitter.as_micros() as u64))
        };
        self.seq += 1;
        self.in_flight.push((now + self.latency + jitter, self.seq, from, to, bytes));
    }

    fn next_at(&self) -> Option<Instant> {
        self.in_flight.iter().map(|p| p.0).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut due: Vec<_> = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].0 <= now {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|p| (p.0, p.1));
        due.into_iter().map(|p| (p.2, p.3, p.4)).collect()
    }

    pub fn sent_between(&self, from: &str, to: &str) -> Vec<Message> {
        let (f, t) = (addr(from), addr(to));
        self.trace.iter().filter(|p| p.0 == f && p.1 == t).filter_map(|p| message::parse(&p.2).ok()).collect()
    }
}

/// A scripted user agent: client transactions for what it sends, server transactions for what
/// it receives.
pub struct Ua {
    pub addr: SocketAddr,
    pub mode: UasMode,
    pub answer_after: Duration,
    pub clients: Vec<(String, ClientTransaction, SocketAddr)>,
    pub servers: HashMap<String, ServerTransaction>,
    /// Delivered (non-absorbed) responses, in order: (CSeq method, status).
    pub responses: Vec<(Method, u16)>,
    /// Every request received (method), retransmissions included.
    pub requests: Vec<Method>,
    pub last_final_200: Option<Message>,
    pub acks: usize,
    ack_seq: u32,
    pending: Vec<(Instant, Vec<u8>, String)>,
    /// UAS core 2xx retransmission until the ACK arrives (RFC 3261 §13.3.1.4):
    /// (next at, interval, give up at, bytes, Call-ID, to).
    retrans_2xx: Vec<(Instant, Duration, Instant, Vec<u8>, String, SocketAddr)>,
    timers: Timers,
    pub tag: String,
    /// Header fields added to this UA's 180 and 200 responses to INVITEs.
    pub extra_headers: Vec<(String, String)>,
    /// The INVITE received, kept to build later responses.
    pub invites: HashMap<String, Message>,
    /// What this UA does with an in-dialog INVITE (a re-INVITE), when not what `mode` says.
    pub reinvite: Option<UasMode>,
}

impl Ua {
    pub fn new(a: &str, mode: UasMode, timers: Timers) -> Ua {
        Ua {
            addr: addr(a),
            mode,
            answer_after: Duration::from_millis(100),
            clients: Vec::new(),
            servers: HashMap::new(),
            responses: Vec::new(),
            requests: Vec::new(),
            last_final_200: None,
            acks: 0,
            ack_seq: 0,
            pending: Vec::new(),
            retrans_2xx: Vec::new(),
            timers,
            tag: format!("t{}", a.len() + a.bytes().map(|b| b as usize).sum::<usize>()),
            extra_headers: Vec::new(),
            invites: HashMap::new(),
            reinvite: None,
        }
    }

    /// Sends a request to `to` on a client transaction keyed by its branch.
    pub fn send_request(&mut self, now: Instant, net: &mut Network, to: &str, bytes: Vec<u8>) {
        let msg = message::parse(&bytes).expect("test request parses");
        let branch = msg.top_via().branch().unwrap().to_string();
        let kind = if msg.method() == Some(&Method::Invite) { Kind::Invite } else { Kind::NonInvite };
        if msg.method() == Some(&Method::Ack) {
            net.send(now, self.addr, addr(to), bytes);
            return;
        }
        let txn = ClientTransaction::new(kind, now, bytes.clone(), false, self.timers);
        self.clients.push((format!("{branch}/{}", msg.cseq().method), txn, addr(to)));
        net.send(now, self.addr, addr(to), bytes);
    }

    fn next_at(&self) -> Option<Instant> {
        let c = self.clients.iter().filter_map(|c| c.1.poll_timeout());
        let s = self.servers.values().filter_map(|s| s.poll_timeout());
        let p = self.pending.iter().map(|p| p.0);
        let r = self.retrans_2xx.iter().map(|r| r.0);
        c.chain(s).chain(p).chain(r).min()
    }

    fn on_timeout(&mut self, now: Instant, net: &mut Network, proxy: SocketAddr) {
        for (_, txn, to) in &mut self.clients {
            if txn.poll_timeout().is_some_and(|t| t <= now) && txn.handle_timeout(now).is_some() {
                self.responses.push((Method::Other("TIMEOUT".into()), 408));
            }
            while let Some(b) = txn.poll_transmit() {
                net.send(now, self.addr, *to, b);
            }
        }
        for txn in self.servers.values_mut() {
            if txn.poll_timeout().is_some_and(|t| t <= now) {
                txn.handle_timeout(now);
            }
            while let Some(b) = txn.poll_transmit() {
                net.send(now, self.addr, proxy, b);
            }
        }
        let due: Vec<_> = self.pending.iter().filter(|p| p.0 <= now).cloned().collect();
        self.pending.retain(|p| p.0 > now);
        for (_, bytes, key) in due {
            let msg = message::parse(&bytes).unwrap();
            let code = msg.status().unwrap_or(0);
            if let Some(txn) = self.servers.get_mut(&key) {
                txn.send_response(now, code, bytes.clone());
                while let Some(b) = txn.poll_transmit() {
                    net.send(now, self.addr, proxy, b);
                }
            }
            if (200..300).contains(&code) {
                let t1 = self.timers.t1;
                self.retrans_2xx.push((now + t1, t1, now + t1 * 64, bytes, msg.call_id().to_string(), proxy));
            }
        }
        let t2 = self.timers.t2;
        self.retrans_2xx.retain(|r| r.2 > now);
        for r in &mut self.retrans_2xx {
            if r.0 <= now {
                net.send(now, self.addr, r.5, r.3.clone());
                r.1 = (r.1 * 2).min(t2);
                r.0 = now + r.1;
            }
        }
    }

    fn on_packet(&mut self, now: Instant, net: &mut Network, from: SocketAddr, bytes: &[u8]) {
        let Ok(msg) = message::parse(bytes) else { return };
        if msg.is_request() {
            self.on_request(now, net, from, msg);
            return;
        }
        let key = format!("{}/{}", msg.top_via().branch().unwrap_or(""), msg.cseq().method);
        let is_invite_2xx =
            msg.cseq().method == Method::Invite && msg.status().is_some_and(|c| (200..300).contains(&c));
        let Some((_, txn, to)) = self.clients.iter_mut().find(|c| c.0 == key) else {
            // a 2xx retransmitted after the INVITE transaction ended: the UA core re-ACKs
            if is_invite_2xx {
                self.ack_2xx(now, net, &msg);
            }
            return;
        };
        let code = msg.status().unwrap();
        let r = txn.on_response(now, code);
        if txn.needs_ack() {
            let fwd = message::parse(txn.request()).unwrap();
            txn.set_ack(message::ack_for(&fwd, &msg));
        }
        let to = *to;
        while let Some(b) = txn.poll_transmit() {
            net.send(now, self.addr, to, b);
        }
        if is_invite_2xx {
            // UA core (RFC 3261 §13.2.2.4): every 2xx is ACKed, but only the first is a new answer.
            self.ack_2xx(now, net, &msg);
            let dup = self
                .last_final_200
                .as_ref()
                .is_some_and(|m| m.call_id() == msg.call_id() && m.cseq().seq == msg.cseq().seq);
            if !dup {
                self.responses.push((Method::Invite, code));
                self.last_final_200 = Some(msg);
            }
            return;
        }
        if r == Received::Deliver {
            self.responses.push((msg.cseq().method.clone(), code));
        }
    }

    fn ack_2xx(&mut self, now: Instant, net: &mut Network, ok: &Message) {
        self.ack_seq += 1;
        let ack = in_dialog(ok, "ACK", &format!("z9hG4bKack{}x{}", self.ack_seq, ok.cseq().seq), ok.cseq().seq);
        let to = ok
            .record_routes()
            .last()
            .and_then(|r| r.uri.host_ip().map(|ip| SocketAddr::new(ip, r.uri.port.unwrap_or(5060))));
        net.send(now, self.addr, to.unwrap_or(addr(PROXY)), ack);
    }

    fn on_request(&mut self, now: Instant, net: &mut Network, from: SocketAddr, req: Message) {
        let method = req.method().unwrap().clone();
        self.requests.push(method.clone());
        let branch = req.top_via().branch().unwrap_or("").to_string();
        if method == Method::Ack {
            let cid = req.call_id().to_string();
            self.retrans_2xx.retain(|r| r.4 != cid);
            let key = format!("{branch}/INVITE");
            if let Some(txn) = self.servers.get_mut(&key) {
                if txn.on_ack(now) == Received::Absorb {
                    self.acks += 1;
                    return;
                }
            }
            self.acks += 1;
            return;
        }
        let key = format!("{branch}/{method}");
        if let Some(txn) = self.servers.get_mut(&key) {
            txn.on_retransmit(now);
            while let Some(b) = txn.poll_transmit() {
                net.send(now, self.addr, from, b);
            }
            return;
        }
        let kind = if method == Method::Invite { Kind::Invite } else { Kind::NonInvite };
        self.servers.insert(key.clone(), ServerTransaction::new(kind, now, false, self.timers));
        let tag = self.tag.clone();
        let contact = format!("<sip:pbx@{}>", self.addr);
        let mode = match self.reinvite {
            Some(m) if method == Method::Invite && req.to().tag().is_some() => m,
            _ => self.mode,
        };
        match method {
            Method::Invite if mode == UasMode::Silent => {}
            Method::Invite => {
                // RFC 3261 §12.1.1: the UAS copies Record-Route into responses that create a dialog.
                let rr = req.record_routes().iter().map(|r| r.raw.clone()).collect::<Vec<_>>().join(", ");
                let mut extra = vec![("Contact", contact.as_str())];
                if !rr.is_empty() {
                    extra.push(("Record-Route", rr.as_str()));
                }
                let added = self.extra_headers.clone();
                for (n, v) in &added {
                    extra.push((n.as_str(), v.as_str()));
                }
                let ringing = message::response(&req, 180, "Ringing", Some(&tag), &extra);
                self.respond_now(now, net, from, &key, 180, ringing);
                match mode {
                    UasMode::Answer => {
                        let ok =
                            with_body(message::response(&req, 200, "OK", Some(&tag), &extra), &sdp(self.addr, 40000));
                        self.pending.push((now + self.answer_after, ok, key.clone()));
                    }
                    UasMode::Reject(code) => {
                        let resp = message::response(&req, code, "Rejected", Some(&tag), &[]);
                        self.respond_now(now, net, from, &key, code, resp);
                    }
                    _ => {}
                }
                self.invites.insert(key, req);
            }
            Method::Cancel => {
                let ok = message::response(&req, 200, "OK", Some(&tag), &[]);
                self.respond_now(now, net, from, &key, 200, ok);
                let ikey = format!("{branch}/INVITE");
                self.pending.retain(|p| p.2 != ikey);
                if let Some(invite) = self.invites.get(&ikey).cloned() {
                    let resp = message::response(&invite, 487, "Request Terminated", Some(&tag), &[]);
                    self.respond_now(now, net, from, &ikey, 487, resp);
                }
            }
            _ if self.mode == UasMode::Silent => {}
            _ => {
                let ok = message::response(&req, 200, "OK", Some(&tag), &[]);
                self.respond_now(now, net, from, &key, 200, ok);
            }
        }
    }

    fn respond_now(&mut self, now: Instant, net: &mut Network, to: SocketAddr, key: &str, code: u16, b: Vec<u8>) {
        if let Some(txn) = self.servers.get_mut(key) {
            txn.send_response(now, code, b);
            while let Some(b) = txn.poll_transmit() {
                net.send(now, self.addr, to, b);
            }
        }
    }
}

pub fn sdp(a: SocketAddr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        ip = a.ip()
    )
}

/// Replaces a message's body with an SDP body.
pub fn with_body(msg: Vec<u8>, body: &str) -> Vec<u8> {
    let m = message::parse(&msg).unwrap();
    m.rewrite().body(Some("application/sdp"), body.as_bytes()).finish()
}

pub fn invite(call_id: &str, branch: &str, cseq: u32) -> Vec<u8> {
    let body = sdp(addr(CARRIER), 20000);
    format!(
        "INVITE sip:{CALLEE_USER}@{PROXY} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CARRIER};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:{CALLER_NUMBER}@carrier.example>;tag=from1\r\n\
         To: <sip:{CALLEE_USER}@callveil.example>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} INVITE\r\n\
         Contact: <sip:{CALLER_NUMBER}@{CARRIER}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An in-dialog request from the caller built from the 200 OK it received (RFC 3261 §12.2.1.1):
/// Request-URI = remote Contact, Route = Record-Route reversed.
pub fn in_dialog(ok: &Message, method: &str, branch: &str, cseq: u32) -> Vec<u8> {
    let target = ok.contacts().first().map(|c| c.uri.raw.clone()).unwrap();
    let mut routes = String::new();
    for rr in ok.record_routes().iter().rev() {
        routes.push_str(&format!("Route: <{}>\r\n", rr.uri.raw));
    }
    format!(
        "{method} {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CARRIER};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         {routes}\
         From: \"Alice\" <sip:{CALLER_NUMBER}@carrier.example>;tag=from1\r\n\
         To: <sip:{CALLEE_USER}@callveil.example>;tag={}\r\n\
         Call-ID: {}\r\n\
         CSeq: {cseq} {}\r\n\
         Content-Length: 0\r\n\r\n",
        ok.to().tag().unwrap(),
        ok.call_id(),
        if method == "ACK" { "ACK" } else { method },
    )
    .into_bytes()
}

pub fn cancel(invite_bytes: &[u8]) -> Vec<u8> {
    message::cancel_for(&message::parse(invite_bytes).unwrap())
}

/// A media anchor for the consent tests: passes descriptions through, answers early media with
/// a fixed description (port 30000) unless `refuse_early`, and records what it is asked to do.
#[derive(Clone, Default)]
pub struct FakeAnchor {
    pub log: Arc<Mutex<Vec<String>>>,
    pub refuse_early: bool,
}

pub const EARLY_PORT: u16 = 30000;

impl MediaAnchor for FakeAnchor {
    fn rewrite(&mut self, _ctx: SdpContext<'_>, sdp: &[u8]) -> Result<Vec<u8>, AnchorError> {
        sdp_mod::check(sdp)?;
        Ok(sdp.to_vec())
    }
    fn release(&mut self, call_id: &str) {
        self.log.lock().unwrap().push(format!("release {call_id}"));
    }
    fn offer_failed(&mut self, call_id: &str) {
        self.log.lock().unwrap().push(format!("offer_failed {call_id}"));
    }
    fn early_answer(&mut self, call_id: &str) -> Result<Vec<u8>, AnchorError> {
        if self.refuse_early {
            return Err(AnchorError::NotAcceptable("no G.711".into()));
        }
        self.log.lock().unwrap().push(format!("early {call_id}"));
        Ok(sdp(addr(PROXY), EARLY_PORT).into_bytes())
    }
    fn control(&mut self, cmd: MediaCommand) {
        let line = match cmd {
            MediaCommand::SecureEntry { call_id, on } => format!("secure {call_id} {on}"),
            other => format!("{other:?}"),
        };
        self.log.lock().unwrap().push(line);
    }
}

impl FakeAnchor {
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

pub struct Sim {
    pub now: Instant,
    pub proxy: Proxy,
    pub metrics: Metrics,
    pub net: Network,
    pub carrier: Ua,
    pub pbx: Vec<Ua>,
    pub timers: Timers,
    pub events: Option<Receiver<CallEvent>>,
    pub anchor: FakeAnchor,
}

impl Sim {
    /// A proxy routing every user to `upstreams` (PBX1, PBX2, ... in failover order).
    pub fn new(seed: u64, pbx_modes: &[UasMode]) -> Sim {
        Sim::build(seed, pbx_modes, "", None, None)
    }

    /// A proxy with `route_keys` added to its one route (e.g. `consent = "ivr"`), the
    /// [`FakeAnchor`] (or a refusing one) and an event channel.
    pub fn consent(seed: u64, pbx_modes: &[UasMode], route_keys: &str, anchor: FakeAnchor) -> Sim {
        Sim::build(seed, pbx_modes, route_keys, Some(anchor), None)
    }

    /// A proxy with its own media anchor (e.g. the real `media::anchor::Anchor` over a recording
    /// backend), no event channel.
    pub fn with_anchor(seed: u64, pbx_modes: &[UasMode], anchor: Box<dyn MediaAnchor>) -> Sim {
        Sim::build(seed, pbx_modes, "", None, Some(anchor))
    }

    fn build(
        seed: u64,
        pbx_modes: &[UasMode],
        route_keys: &str,
        anchor: Option<FakeAnchor>,
        own: Option<Box<dyn MediaAnchor>>,
    ) -> Sim {
        let ups: Vec<String> = [PBX1, PBX2].iter().take(pbx_modes.len()).map(|a| format!("\"udp:{a}\"")).collect();
        let toml = format!(
            "[sip]\nlisten = [\"udp:{PROXY}\", \"tcp:{PROXY}\"]\n[[sip.routes]]\nmatch_user = \".*\"\nupstream = [{}]\n{route_keys}\n",
            ups.join(", ")
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let bound = vec![
            Endpoint { transport: Transport::Udp, addr: addr(PROXY) },
            Endpoint { transport: Transport::Tcp, addr: addr(PROXY) },
        ];
        let cfg = ProxyConfig::from_settings(&settings, bound);
        let timers = cfg.timers;
        let metrics = Metrics::new();
        let (proxy, events, fake) = match anchor {
            None => {
                let own = own.unwrap_or_else(|| Box::new(PassThrough));
                (Proxy::new(cfg, metrics.sip.clone(), own), None, FakeAnchor::default())
            }
            Some(a) => {
                let mut proxy = Proxy::new(cfg, metrics.sip.clone(), Box::new(a.clone()));
                let (tx, rx) = channel();
                proxy.set_events(tx);
                (proxy, Some(rx), a)
            }
        };
        let pbx = pbx_modes.iter().zip([PBX1, PBX2]).map(|(m, a)| Ua::new(a, *m, timers)).collect();
        Sim {
            now: Instant::now(),
            proxy,
            metrics,
            net: Network {
                rng: StdRng::seed_from_u64(seed),
                loss: 0.0,
                latency: Duration::from_millis(1),
                jitter: Duration::ZERO,
                in_flight: Vec::new(),
                seq: 0,
                trace: Vec::new(),
                drop_next: HashMap::new(),
            },
            carrier: Ua::new(CARRIER, UasMode::Answer, timers),
            pbx,
            timers,
            events,
            anchor: fake,
        }
    }

    pub fn carrier_sends(&mut self, bytes: Vec<u8>) {
        let now = self.now;
        self.carrier.send_request(now, &mut self.net, PROXY, bytes);
    }

    /// Runs the world for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let proxy_addr = addr(PROXY);
        loop {
            self.drain_proxy();
            let next = [
                self.proxy.poll_timeout(),
                self.net.next_at(),
                self.carrier.next_at(),
                self.pbx.iter().filter_map(|p| p.next_at()).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for (from, to, bytes) in self.net.take_due(now) {
                if to == proxy_addr {
                    self.proxy.handle_message(now, Peer::udp(from), &bytes);
                    self.drain_proxy();
                } else if to == self.carrier.addr {
                    self.carrier.on_packet(now, &mut self.net, from, &bytes);
                } else if let Some(p) = self.pbx.iter_mut().find(|p| p.addr == to) {
                    p.on_packet(now, &mut self.net, from, &bytes);
                }
            }
            if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
                self.proxy.handle_timeout(now);
            }
            self.carrier.on_timeout(now, &mut self.net, proxy_addr);
            for p in &mut self.pbx {
                p.on_timeout(now, &mut self.net, proxy_addr);
            }
        }
        self.now = end;
    }

    fn drain_proxy(&mut self) {
        while let Some(Transmit { to, bytes }) = self.proxy.poll_transmit() {
            let now = self.now;
            self.net.send(now, addr(PROXY), to.addr, bytes);
        }
    }

    /// Events reported since the last call.
    pub fn take_events(&mut self) -> Vec<CallEvent> {
        self.events.as_ref().map(|rx| rx.try_iter().collect()).unwrap_or_default()
    }

    pub fn command(&mut self, cmd: callveil::sip::events::CallCommand) {
        let now = self.now;
        self.proxy.handle_command(now, cmd);
    }

    pub fn metric(&self, needle: &str) -> Option<f64> {
        let text = self.metrics.encode();
        text.lines().find(|l| l.starts_with(needle)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }
}

/// `msg` with its body replaced (and Content-Type set).
pub fn set_body(msg: Vec<u8>, content_type: &str, body: &[u8]) -> Vec<u8> {
    message::parse(&msg).unwrap().rewrite().body(Some(content_type), body).finish()
}

/// `msg` with a header field added.
pub fn add_header(msg: Vec<u8>, name: &str, value: &str) -> Vec<u8> {
    message::parse(&msg).unwrap().rewrite().add_header(name, value).finish()
}

/// An in-dialog request from the PBX toward the caller, through callveil (Route = our
/// Record-Route), built from the 200 OK the caller received.
pub fn pbx_request(ok: &Message, pbx: &str, method: &str, branch: &str, cseq: u32) -> Vec<u8> {
    let mut routes = String::new();
    for rr in ok.record_routes() {
        routes.push_str(&format!("Route: <{}>\r\n", rr.uri.raw));
    }
    format!(
        "{method} sip:{CALLER_NUMBER}@{CARRIER} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {pbx};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         {routes}\
         From: {}\r\n\
         To: {}\r\n\
         Call-ID: {}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        ok.to().raw,
        ok.from().raw,
        ok.call_id(),
    )
    .into_bytes()
}

/// An INVITE without a body (no offer).
pub fn invite_without_sdp(call_id: &str, branch: &str) -> Vec<u8> {
    let m = message::parse(&invite(call_id, branch, 1)).unwrap();
    m.rewrite().remove_header("Content-Type").body(None, b"").finish()
}
