//! The stateful proxy core (RFC 3261 §16), sans-IO.
//!
//! Feed it complete messages with [`Proxy::handle_message`] and expired deadlines with
//! [`Proxy::handle_timeout`], then drain [`Proxy::poll_transmit`] and ask [`Proxy::poll_timeout`]
//! when to call again. It never reads a clock or touches a socket.
//!
//! What it does: validates requests (400/413/416/505/513 from the parser, 483 Max-Forwards, 482
//! loops, 420 Proxy-Require), answers OPTIONS addressed to callveil itself, absorbs retransmissions
//! through server transactions, routes initial requests by `[[sip.routes]]` and in-dialog requests
//! by Route/Request-URI (loose routing, strict-route fix-up), pushes its Via and Record-Route,
//! forwards responses back through the matching server transaction (100 Trying is hop-by-hop),
//! fails over to the next upstream on 503 or a transaction timeout, matches and forwards CANCEL
//! (only after a provisional, RFC 3261 §9.1), acknowledges non-2xx finals hop-by-hop, and passes
//! ACK for 2xx end-to-end. Every SDP body goes through the [`MediaAnchor`].
//!
//! For the recording path it reports [`CallEvent`]s on an optional channel
//! ([`Proxy::set_events`]): Started, Answered and Ended (once per call, whatever way it ends),
//! consent and retention signals, and key presses carried in SIP INFO. Consent
//! (`consent.header`), `X-Retention-Class` and `X-Secure-Entry` are believed only from the callee
//! leg and from an address that is an upstream of a configured route; the same headers from the
//! caller (carrier) side are counted (`drop{reason="untrusted_consent_header"}`) and stripped
//! before forwarding, so a PBX that echoes unknown headers back cannot launder a carrier's claim
//! into a trusted one. On routes whose consent mode is `ivr` an initial INVITE with an offer is
//! held: callveil answers `183 Session Progress` with the anchor's early-media SDP in a early
//! dialog of its own, and forwards the INVITE only on [`CallCommand::Release`] (or after
//! `hold_timeout`). [`Proxy::handle_command`] applies the recording path's commands.
//!
//! What it does not do: DNS (next hops must be IP literals; hostnames get 503), TLS, parallel
//! forking, authentication, or registrar duties.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::config::{ConsentMode, Endpoint, Route, Settings, Transport};
use crate::dtmf::info;
use crate::metrics::SipMetrics;
use crate::pii::Pii;
use crate::sip::dialog::{DialogState, Dialogs, NewCall};
use crate::sip::events::{CallCommand, CallEvent, ConsentSignal, MediaCommand};
use crate::sip::message::{self, Limits, Message, Method, Scheme, Uri, Via};
use crate::sip::route::Router;
use crate::sip::sdp::{AnchorError, Leg, MediaAnchor, SdpContext, SdpRole};
pub use crate::sip::transaction::Timers;
use crate::sip::transaction::{ClientTransaction, Kind, Received, ServerTransaction, TimedOut};
use crate::sip::{ConnId, Peer, Transmit};

/// RFC 3261 §16.6 step 11: Timer C must be above 3 minutes.
const TIMER_C: Duration = Duration::from_secs(181);
/// Header a trusted upstream uses to keep recording of a call under a retention class.
pub const RETENTION_HEADER: &str = "X-Retention-Class";
/// Header a trusted upstream uses to switch secure entry (DTMF suppression) on or off.
pub const SECURE_ENTRY_HEADER: &str = "X-Secure-Entry";
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The addresses callveil actually listens on (after binding, so port 0 is resolved). The
    /// first of each transport is written into Via and Record-Route.
    pub listen: Vec<Endpoint>,
    pub routes: Vec<Route>,
    pub timers: Timers,
    pub max_message_bytes: usize,
    /// `consent.header`: the header a trusted upstream signals consent with.
    pub consent_header: String,
    /// `recording.enabled`: with recording off nothing needs consent, so no INVITE is held.
    pub recording_enabled: bool,
    /// Safety limit on holding an INVITE for the IVR: when it passes the INVITE is forwarded
    /// (the gate, not having answered, records nothing).
    pub hold_timeout: Duration,
}

impl ProxyConfig {
    pub fn from_settings(settings: &Settings, bound: Vec<Endpoint>) -> ProxyConfig {
        ProxyConfig {
            listen: bound,
            routes: settings.routes.clone(),
            timers: Timers {
                t1: Duration::from_millis(settings.raw.sip.t1_ms),
                t2: Duration::from_millis(settings.raw.sip.t2_ms),
                t4: Duration::from_millis(settings.raw.sip.t4_ms),
            },
            max_message_bytes: settings.raw.sip.max_message_bytes,
            consent_header: settings.raw.consent.header.clone(),
            recording_enabled: settings.raw.recording.enabled,
            hold_timeout: hold_timeout(settings),
        }
    }
}

/// The gate's worst case (every prompt timing out, plus time to play them), and never less than
/// two minutes: the hold is a safety net, not the gate's own timer.
fn hold_timeout(settings: &Settings) -> Duration {
    let c = &settings.raw.consent;
    let worst = c.ivr_timeout_s.saturating_add(10).saturating_mul(u64::from(c.ivr_reprompts) + 1).saturating_add(30);
    Duration::from_secs(worst.max(120))
}

type TxId = u64;

/// RFC 3261 §17.2.3 server transaction key; ACK is filed under INVITE. Requests without the
/// magic cookie (RFC 2543) are keyed by the fields §17.2.3 lists for them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ServerKey {
    Rfc3261 { branch: String, sent_by: String, method: Method },
    Rfc2543 { call_id: String, cseq: u32, from_tag: String, via: String, method: Method },
}

/// Our branch plus CSeq method (CANCEL shares the INVITE's branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

struct ServerEntry {
    key: ServerKey,
    txn: ServerTransaction,
    peer: Peer,
    /// The response context of a forwarded request (None for requests callveil answered itself).
    ctx: bool,
}

enum ClientRole {
    /// Carries a forwarded request for the server transaction `server`.
    Forward { server: TxId },
    /// A request callveil originated (CANCEL for a branch, BYE from [`Proxy::end_call`]); its
    /// responses end here.
    Cancel,
}

struct ClientEntry {
    key: ClientKey,
    txn: ClientTransaction,
    peer: Peer,
    role: ClientRole,
}

/// RFC 3261 §16.7 response context of one forwarded request (sequential failover, one branch at
/// a time). Keyed by the server transaction's id.
struct Context {
    request: Message,
    method: Method,
    /// Upstreams not tried yet, for initial requests routed by `[[sip.routes]]`.
    remaining: VecDeque<Endpoint>,
    /// The client transaction of the current branch.
    branch: Option<TxId>,
    cancelled: bool,
    /// Provisional seen on the current branch (a CANCEL may be sent).
    provisional: bool,
    /// CANCEL already sent on the current branch.
    cancel_sent: bool,
    final_sent: bool,
    /// The best final response so far, kept while failing over.
    best: Option<Message>,
    leg: Leg,
    initial_invite: bool,
    record_route: bool,
    timer_c: Option<Instant>,
    /// The last branch failed at the transport layer (no response at all).
    unreachable: bool,
    /// The offer as the anchor rewrote it before the INVITE was held; used instead of rewriting
    /// again when it is forwarded.
    body: Option<Vec<u8>>,
    /// Set while the INVITE is held for the IVR: where it goes on release.
    held: Option<Held>,
}

/// An initial INVITE kept by callveil while its IVR asks for consent.
struct Held {
    peer: Peer,
    edits: RequestEdits,
}

/// What the proxy tracks per started call for the recording path.
struct CallTrack {
    answered: bool,
    /// Secure entry: the caller's INFO key presses are not forwarded to the callee.
    secure: bool,
}

/// The parts of a matched route an initial INVITE needs.
struct RouteInfo {
    name: String,
    ivr: bool,
    secure_entry: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(TxId),
    Client(TxId),
    TimerC(TxId),
    /// The IVR hold's safety timer.
    Hold(TxId),
}

/// How a forwarded request differs from the received one, besides Via and Max-Forwards.
#[derive(Debug, Default)]
struct RequestEdits {
    request_uri: Option<String>,
    /// The previous hop was a strict router: the last Route value moved into the Request-URI.
    strict_fixup: bool,
    /// Leading Route values that name callveil and are popped (RFC 3261 §16.4).
    own_routes: usize,
}

/// What callveil needs to end an answered call itself (RFC 3261 §12.2.1.1, §15): per leg
/// (indexed by [`leg_index`]) its remote target, the route set between callveil and it, the
/// address its messages used, and the highest CSeq it has sent; plus the From and To values of
/// the dialog as the caller sees them.
struct Ending {
    caller_from: String,
    callee_to: String,
    target: [Option<String>; 2],
    routes: [Vec<message::NameAddr>; 2],
    peer: [Option<Peer>; 2],
    cseq: [u32; 2],
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::Caller => 0,
        Leg::Callee => 1,
    }
}

enum HoldOutcome {
    Held,
    /// Not held after all (no early media): forward at once with these edits.
    Forward(RequestEdits),
    /// The offer was refused and the INVITE answered.
    Failed,
}

/// Headers only trusted upstreams may send; stripped from what the caller side sends.
fn trusted_only_headers(consent_header: &str) -> [&str; 3] {
    [consent_header, RETENTION_HEADER, SECURE_ENTRY_HEADER]
}

/// The user part of P-Asserted-Identity (RFC 3325), else of From: the caller's number.
fn asserted_user(req: &Message) -> String {
    let from_pai = req.header("P-Asserted-Identity").and_then(|v| {
        // the first value; name-addr (`"x" <sip:...>`) or a bare URI
        let v = v.split(',').next().unwrap_or(v).trim();
        let uri = match (v.find('<'), v.find('>')) {
            (Some(a), Some(b)) if a < b => v.get(a + 1..b)?,
            _ => v,
        };
        Uri::parse(uri.trim()).ok().and_then(|u| u.user)
    });
    from_pai.or_else(|| req.from().uri.user.clone()).unwrap_or_default()
}

/// Where the next hop of a request is.
enum NextHop {
    Peer(Peer),
    /// Next hop cannot be reached (hostname without DNS, unsupported transport): reason phrase.
    Unreachable(&'static str),
}

pub struct Proxy {
    config: ProxyConfig,
    metrics: SipMetrics,
    anchor: Box<dyn MediaAnchor>,
    router: Router,
    dialogs: Dialogs,
    limits: Limits,
    out: VecDeque<Transmit>,
    servers: HashMap<TxId, ServerEntry>,
    server_keys: HashMap<ServerKey, TxId>,
    clients: HashMap<TxId, ClientEntry>,
    client_keys: HashMap<ClientKey, TxId>,
    contexts: HashMap<TxId, Context>,
    timers: BinaryHeap<Reverse<(Instant, TimerRef)>>,
    endings: HashMap<String, Ending>,
    next_id: TxId,
    /// Mixed into branch ids so they are unique across restarts (RFC 3261 §8.1.1.7).
    secret: u64,
    events: Option<Sender<CallEvent>>,
    /// Started calls by Call-ID (removed when their dialog ends).
    calls: HashMap<String, CallTrack>,
    /// INVITEs held for the IVR, by Call-ID.
    held_calls: HashMap<String, TxId>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, metrics: SipMetrics, anchor: Box<dyn MediaAnchor>) -> Proxy {
        let limits = Limits { max_message: config.max_message_bytes, ..Limits::default() };
        Proxy {
            router: Router::new(config.routes.clone()),
            dialogs: Dialogs::new(metrics.clone()),
            limits,
            config,
            metrics,
            anchor,
            out: VecDeque::new(),
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            contexts: HashMap::new(),
            timers: BinaryHeap::new(),
            endings: HashMap::new(),
            next_id: 1,
            secret: rand::random(),
            events: None,
            calls: HashMap::new(),
            held_calls: HashMap::new(),
        }
    }

    /// Reports [`CallEvent`]s to `tx` from now on. Sending never blocks; without a sender no
    /// events are built.
    pub fn set_events(&mut self, tx: Sender<CallEvent>) {
        self.events = Some(tx);
    }

    /// A command from the recording path: release a held INVITE, end a call, or a media action
    /// for the anchor. Commands for calls callveil does not know are counted and ignored.
    pub fn handle_command(&mut self, now: Instant, cmd: CallCommand) {
        match cmd {
            CallCommand::Release { call_id } => match self.held_calls.get(&call_id).copied() {
                Some(sid) => self.release_held(now, sid),
                None => self.metrics.drop("release_not_held"),
            },
            CallCommand::End { call_id, reason } => {
                if !self.end_call(now, &call_id, &reason) {
                    self.metrics.drop("end_unknown_call");
                }
            }
            CallCommand::SecureEntry { call_id, on } => {
                if self.calls.contains_key(&call_id) {
                    self.set_secure(&call_id, on);
                } else {
                    self.metrics.drop("secure_entry_unknown_call");
                }
            }
            CallCommand::Media(cmd) => self.anchor.control(cmd),
        }
        self.flush_events();
    }

    /// INVITEs held for the IVR right now.
    pub fn held(&self) -> usize {
        self.held_calls.len()
    }

    /// One complete message (a UDP datagram or a framed TCP message) from `from`.
    pub fn handle_message(&mut self, now: Instant, from: Peer, bytes: &[u8]) {
        let msg = match message::parse_with(bytes, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.parse_error(e.kind());
                tracing::debug!(kind = e.kind(), transport = from.transport.as_str(), "unparsable SIP message");
                match message::error_response(bytes, &e) {
                    Some(resp) => self.send(from, resp),
                    None => self.metrics.drop("unparsable"),
                }
                return;
            }
        };
        self.inspect(from, &msg);
        if msg.is_request() {
            self.on_request(now, from, msg);
        } else {
            self.on_response(now, msg);
        }
        self.flush_events();
    }

    /// Deadlines at or before `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, which))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match which {
                TimerRef::Server(id) => self.server_timeout(now, id),
                TimerRef::Client(id) => self.client_timeout(now, id),
                TimerRef::TimerC(id) => self.timer_c(now, id),
                TimerRef::Hold(id) => {
                    if self.contexts.get(&id).is_some_and(|c| c.held.is_some()) {
                        tracing::info!("IVR hold expired; forwarding the INVITE");
                        self.metrics.drop("ivr_hold_expired");
                        self.release_held(now, id);
                    }
                }
            }
        }
        if self.anchor.poll_timeout().is_some_and(|at| at <= now) {
            for call_id in self.anchor.handle_timeout(now) {
                // Ringing without media is normal (Timer C allows minutes): only answered calls
                // end for lack of media. The relay restarts its clock when the 2xx's SDP arrives.
                if self.dialogs.get(&call_id).is_some_and(|d| d.state == DialogState::Confirmed) {
                    self.end_call(now, &call_id, "media timeout");
                }
            }
        }
        self.flush_events();
    }

    /// Ends a call from the middle (media inactivity, an operator): an answered call gets a BYE
    /// on each leg, carrying `Reason: SIP;cause=408;text="<reason>"` (RFC 3326); an unanswered
    /// one is cancelled downstream, which answers the caller 487. The dialog and its media are
    /// released at once; the BYEs' responses end at callveil. Returns false when callveil knows
    /// no such call.
    pub fn end_call(&mut self, now: Instant, call_id: &str, reason: &str) -> bool {
        let reason: String = reason.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        let Some(e) = self.endings.remove(call_id) else {
            let pending = self
                .contexts
                .iter()
                .find(|(_, c)| c.initial_invite && !c.final_sent && c.request.call_id() == call_id)
                .map(|(id, _)| *id);
            let Some(sid) = pending else {
                self.anchor.release(call_id);
                return false;
            };
            if self.contexts.get(&sid).is_some_and(|c| c.held.is_some()) {
                tracing::info!(reason = %reason, "ending a call held for the IVR");
                self.finish_held(now, sid, 480, "Temporarily Unavailable");
                return true;
            }
            tracing::info!(reason = %reason, "ending an unanswered call");
            if let Some(ctx) = self.contexts.get_mut(&sid) {
                ctx.cancelled = true;
                ctx.remaining.clear();
                if ctx.provisional && !ctx.cancel_sent {
                    self.send_cancel(now, sid);
                }
            }
            return true;
        };
        tracing::info!(reason = %reason, "ending a call with BYE on both legs");
        for leg in [Leg::Caller, Leg::Callee] {
            let i = leg_index(leg);
            let (from, to, cseq) = match leg {
                // to the callee, as the caller: the caller's next CSeq
                Leg::Callee => (&e.caller_from, &e.callee_to, e.cseq[0].wrapping_add(1)),
                Leg::Caller => (&e.callee_to, &e.caller_from, e.cseq[1].wrapping_add(1)),
            };
            let hop = match (e.routes[i].first(), &e.target[i]) {
                (Some(r), _) => Some(next_hop(&r.uri)),
                (None, Some(t)) => Uri::parse(t).ok().map(|u| next_hop(&u)),
                (None, None) => None,
            };
            let peer = match hop {
                Some(NextHop::Peer(p)) => p,
                _ => match e.peer[i] {
                    Some(p) => p,
                    None => {
                        self.metrics.drop("bye_unroutable");
                        continue;
                    }
                },
            };
            let ruri = e.target[i].clone().unwrap_or_else(|| format!("sip:{}", host_port(peer.addr)));
            let via_ep = self.local(peer.transport, peer.addr.ip());
            let branch = format!("z9hG4bK-bye{:x}{:x}", self.secret & 0xffff_ffff, self.next_id);
            let mut b = format!(
                "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\n",
                peer.transport.as_str(),
                host_port(via_ep.addr)
            );
            for r in &e.routes[i] {
                b.push_str(&format!("Route: {}\r\n", r.raw));
            }
            b.push_str(&format!(
                "Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} BYE\r\n\
                 Reason: SIP;cause=408;text=\"{reason}\"\r\nContent-Length: 0\r\n\r\n"
            ));
            let bytes = b.into_bytes();
            let cid = self.new_id();
            let txn = ClientTransaction::new(
                Kind::NonInvite,
                now,
                bytes.clone(),
                peer.transport == Transport::Tcp,
                self.config.timers,
            );
            let key = ClientKey { branch, method: Method::Bye };
            self.client_keys.insert(key.clone(), cid);
            self.clients.insert(cid, ClientEntry { key, txn, peer, role: ClientRole::Cancel });
            self.metrics.transactions_in_flight.inc();
            self.send(peer, bytes);
            self.flush_client(now, cid);
        }
        self.dialogs.terminate(call_id);
        self.anchor.release(call_id);
        true
    }

    /// A TCP connection closed. Responses for requests that came on it will be sent on a new
    /// connection to the same address (RFC 3261 §18.2.2), which the driver opens for `conn: None`.
    pub fn connection_closed(&mut self, conn: ConnId) {
        for entry in self.servers.values_mut() {
            if entry.peer.conn == Some(conn) {
                entry.peer.conn = None;
            }
        }
    }

    /// Sending to `to` failed (TCP connect refused or timed out, UDP send error). Client
    /// transactions toward that peer end as if it had answered 503 (RFC 3261 §8.1.3.1), so an
    /// INVITE fails over to the next upstream at once.
    pub fn transport_error(&mut self, now: Instant, to: Peer) {
        let hit: Vec<TxId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.peer.addr == to.addr && c.peer.transport == to.transport && !c.txn.is_terminated())
            .map(|(id, _)| *id)
            .collect();
        for id in hit {
            let Some(entry) = self.clients.get_mut(&id) else { continue };
            entry.txn.on_transport_error();
            let server = match entry.role {
                ClientRole::Forward { server } => Some(server),
                ClientRole::Cancel => None,
            };
            self.flush_client(now, id);
            let Some(sid) = server else { continue };
            let Some(ctx) = self.contexts.get_mut(&sid) else { continue };
            if ctx.branch == Some(id) {
                ctx.unreachable = true;
                let failover = !ctx.cancelled;
                self.next_branch_or_final(now, sid, failover);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The earliest deadline, if any. May be early (a stale entry): calling `handle_timeout`
    /// then does nothing harmful.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.anchor.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Transactions alive (for tests and metrics).
    pub fn transactions(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    /// Dialogs alive.
    pub fn dialogs(&self) -> &Dialogs {
        &self.dialogs
    }

    // ----- requests -------------------------------------------------------------------------

    fn on_request(&mut self, now: Instant, from: Peer, req: Message) {
        let method = req.method().cloned().unwrap_or(Method::Other(String::new()));
        self.metrics.request(method.as_str());
        let key = server_key(&req, &method);

        if method == Method::Ack {
            self.on_ack(now, from, req, key);
            return;
        }
        if let Some(&id) = self.server_keys.get(&key) {
            if let Some(entry) = self.servers.get_mut(&id) {
                entry.txn.on_retransmit(now);
                self.metrics.retransmissions_absorbed.inc();
                self.flush_server(now, id);
            }
            return;
        }
        if method == Method::Cancel {
            self.on_cancel(now, from, req, key);
            return;
        }

        let kind = if method == Method::Invite { Kind::Invite } else { Kind::NonInvite };
        let id = self.new_id();
        let txn = ServerTransaction::new(kind, now, from.transport == Transport::Tcp, self.config.timers);
        self.servers.insert(id, ServerEntry { key: key.clone(), txn, peer: response_peer(&req, from), ctx: false });
        self.server_keys.insert(key, id);
        self.metrics.transactions_in_flight.inc();

        if let Some((code, reason)) = self.check_request(&req, &method) {
            self.respond(now, id, &req, code, reason, &[]);
            return;
        }
        if method == Method::Invite {
            self.respond(now, id, &req, 100, "Trying", &[]);
        }
        if method == Method::Info && self.info_dtmf(now, id, &req) {
            return;
        }

        // RFC 3261 §16.4: a Request-URI we put in a Record-Route means the previous hop is a
        // strict router; the real target is the last Route value.
        let mut rewrite_ruri: Option<String> = None;
        let mut strict_fixup = false;
        let mut routes: Vec<&message::NameAddr> = req.routes().iter().collect();
        if let Some(uri) = req.request_uri() {
            if self.is_ours(uri) && uri.user.is_none() && !routes.is_empty() && req.to().tag().is_some() {
                if let Some(last) = routes.pop() {
                    rewrite_ruri = Some(last.uri.raw.clone());
                    strict_fixup = true;
                }
            }
        }
        let own_routes = routes.iter().take_while(|r| self.is_ours(&r.uri)).count();
        let routes = &routes[own_routes..];
        let in_dialog = req.to().tag().is_some();

        let mut remaining = VecDeque::new();
        let mut route_info = None;
        let target: NextHop = if let Some(next) = routes.first() {
            next_hop(&next.uri)
        } else if let Some(uri) = rewrite_ruri.as_deref().and_then(|s| Uri::parse(s).ok()) {
            next_hop(&uri)
        } else {
            let Some(uri) = req.request_uri() else {
                self.respond(now, id, &req, 400, "Bad Request (no Request-URI)", &[]);
                return;
            };
            if self.is_ours(uri) && in_dialog {
                match self.dialog_target(&req) {
                    Some((peer, target)) => {
                        rewrite_ruri = target;
                        NextHop::Peer(peer)
                    }
                    None if uri.user.is_none() => {
                        self.answer_locally(now, id, &req, &method);
                        return;
                    }
                    None => {
                        self.respond(now, id, &req, 481, "Call/Transaction Does Not Exist", &[]);
                        return;
                    }
                }
            } else if self.is_ours(uri) && uri.user.is_none() {
                self.answer_locally(now, id, &req, &method);
                return;
            } else if in_dialog {
                next_hop(uri)
            } else {
                let user = match uri.scheme {
                    Scheme::Tel => uri.user.as_deref().unwrap_or(""),
                    _ => uri.user.as_deref().unwrap_or(""),
                };
                match self.router.route(&Pii::new(user)) {
                    Some(route) => {
                        route_info = Some(RouteInfo {
                            name: route.name.clone(),
                            ivr: route.consent == ConsentMode::Ivr,
                            secure_entry: route.secure_entry,
                        });
                        remaining.extend(route.upstreams.iter().copied());
                        match remaining.pop_front() {
                            Some(ep) => NextHop::Peer(Peer { transport: ep.transport, addr: ep.addr, conn: None }),
                            None => NextHop::Unreachable("No Route"),
                        }
                    }
                    None => {
                        self.respond(now, id, &req, 404, "Not Found (no route)", &[]);
                        return;
                    }
                }
            }
        };
        let peer = match target {
            NextHop::Peer(p) => p,
            NextHop::Unreachable(why) => {
                self.metrics.drop("unreachable_next_hop");
                self.respond(now, id, &req, 503, why, &[]);
                return;
            }
        };

        let leg = if in_dialog { self.dialogs.leg_of_request(req.call_id(), req.from().tag()) } else { Leg::Caller };
        if let Some(e) = self.endings.get_mut(req.call_id()) {
            let i = leg_index(leg);
            e.cseq[i] = e.cseq[i].max(req.cseq().seq);
        }
        let initial_invite = method == Method::Invite && !in_dialog;
        let record_route = !in_dialog && matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        let mut started = None;
        if initial_invite {
            let caller = req.from().uri.user.clone().unwrap_or_default();
            let callee = req.request_uri().and_then(|u| u.user.clone()).unwrap_or_default();
            let event_ids = self.events.as_ref().map(|_| (Pii::new(asserted_user(&req)), Pii::new(callee.clone())));
            let caller_contact = req.contacts().first().map(|c| Pii::new(c.uri.raw.clone()));
            let caller_peer = self.servers.get(&id).map_or(from, |s| s.peer);
            let call = NewCall {
                call_id: req.call_id(),
                caller_tag: req.from().tag().unwrap_or(""),
                caller: Pii::new(caller),
                callee: Pii::new(callee),
                caller_contact,
                caller_peer,
            };
            if self.dialogs.invite(now, call) {
                self.calls.insert(req.call_id().to_string(), CallTrack { answered: false, secure: false });
                started = Some(event_ids);
            }
        }
        if let Some(e) = self.servers.get_mut(&id) {
            e.ctx = true;
        }
        self.contexts.insert(
            id,
            Context {
                request: req,
                method,
                remaining,
                branch: None,
                cancelled: false,
                provisional: false,
                cancel_sent: false,
                final_sent: false,
                best: None,
                leg,
                initial_invite,
                record_route,
                timer_c: None,
                unreachable: false,
                body: None,
                held: None,
            },
        );
        let edits = RequestEdits { request_uri: rewrite_ruri, strict_fixup, own_routes };
        let Some(ids) = started else {
            self.forward_branch(now, id, peer, &edits);
            return;
        };
        let route = route_info.unwrap_or(RouteInfo { name: String::new(), ivr: false, secure_entry: false });
        let call_id = self.contexts.get(&id).map(|c| c.request.call_id().to_string()).unwrap_or_default();
        // Without an event receiver there is no recording path to run the IVR and release the
        // INVITE: holding would only delay every call by `hold_timeout`.
        let hold = route.ivr
            && self.config.recording_enabled
            && self.events.is_some()
            && self.contexts.get(&id).is_some_and(|c| c.request.has_sdp());
        if hold {
            match self.hold(now, id, peer, edits) {
                HoldOutcome::Held => self.emit_started(&call_id, ids, &route.name, true),
                HoldOutcome::Failed => {
                    // answered 488/503 by the anchor's refusal: the call starts and ends here
                    self.emit_started(&call_id, ids, &route.name, false);
                    return;
                }
                HoldOutcome::Forward(edits) => {
                    self.emit_started(&call_id, ids, &route.name, false);
                    self.forward_branch(now, id, peer, &edits);
                }
            }
        } else {
            self.emit_started(&call_id, ids, &route.name, false);
            self.forward_branch(now, id, peer, &edits);
        }
        if route.secure_entry && self.dialogs.get(&call_id).is_some() {
            if let Some(c) = self.calls.get_mut(&call_id) {
                c.secure = true;
            }
            self.anchor.control(MediaCommand::SecureEntry { call_id, on: true });
        }
    }

    /// Holds an initial INVITE for the IVR: rewrites its offer, asks the anchor for an early
    /// answer and sends it to the caller in a 183 of callveil's own early dialog.
    fn hold(&mut self, now: Instant, sid: TxId, peer: Peer, edits: RequestEdits) -> HoldOutcome {
        let Some(ctx) = self.contexts.get(&sid) else { return HoldOutcome::Failed };
        let req = ctx.request.clone();
        let sctx = SdpContext { call_id: req.call_id(), from: Leg::Caller, role: SdpRole::Offer };
        let body = match self.anchor.rewrite(sctx, req.body()) {
            Ok(body) => body,
            Err(e) => {
                self.anchor_failed(now, sid, &req, e);
                return HoldOutcome::Failed;
            }
        };
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            ctx.body = Some(body);
        }
        let answer = match self.anchor.early_answer(req.call_id()) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "no early media for the IVR; forwarding the INVITE at once");
                self.metrics.drop("ivr_no_early_media");
                return HoldOutcome::Forward(edits);
            }
        };
        let inbound = self.servers.get(&sid).map(|s| s.peer).unwrap_or(peer);
        let ep = self.local(inbound.transport, inbound.addr.ip());
        let contact = match ep.transport {
            Transport::Udp => format!("<sip:{}>", host_port(ep.addr)),
            Transport::Tcp => format!("<sip:{};transport=tcp>", host_port(ep.addr)),
        };
        // callveil is the UAS of this early dialog: it copies the request's Record-Route (RFC
        // 3261 §12.1.1) and adds none of its own, its Contact being callveil already.
        let mut extra: Vec<(&str, &str)> = vec![("Contact", contact.as_str())];
        for rr in req.record_routes() {
            extra.push(("Record-Route", rr.raw.as_str()));
        }
        let tag = self.to_tag(&req);
        let head = message::response(&req, 183, "Session Progress", Some(&tag), &extra);
        let Ok(parsed) = message::parse(&head) else {
            self.metrics.drop("ivr_183_build_failed");
            return HoldOutcome::Forward(edits);
        };
        let bytes = parsed.rewrite().body(Some("application/sdp"), &answer).finish();
        if let Some(entry) = self.servers.get_mut(&sid) {
            entry.txn.send_response(now, 183, bytes);
        }
        self.flush_server(now, sid);
        self.dialogs.invite_response(now, req.call_id(), 183, true);
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            ctx.held = Some(Held { peer, edits });
        }
        tracing::debug!("INVITE held for the IVR (183 with early media sent)");
        self.held_calls.insert(req.call_id().to_string(), sid);
        let until = now + self.config.hold_timeout;
        self.timers.push(Reverse((until, TimerRef::Hold(sid))));
        HoldOutcome::Held
    }

    /// Forwards a held INVITE exactly as it would have been forwarded at once.
    fn release_held(&mut self, now: Instant, sid: TxId) {
        let Some(held) = self.contexts.get_mut(&sid).and_then(|c| c.held.take()) else { return };
        if let Some(call_id) = self.contexts.get(&sid).map(|c| c.request.call_id().to_string()) {
            self.held_calls.remove(&call_id);
        }
        tracing::debug!("IVR hold over; forwarding the INVITE");
        self.forward_branch(now, sid, held.peer, &held.edits);
    }

    /// Ends a held INVITE with a final response of callveil's own (487 after CANCEL, 480 on
    /// [`CallCommand::End`]), in the early dialog of its 183.
    fn finish_held(&mut self, now: Instant, sid: TxId, code: u16, reason: &str) {
        let Some(ctx) = self.contexts.get_mut(&sid) else { return };
        if ctx.held.take().is_none() {
            return;
        }
        ctx.final_sent = true;
        let req = ctx.request.clone();
        self.held_calls.remove(req.call_id());
        self.respond(now, sid, &req, code, reason, &[]);
        self.dialogs.invite_response(now, req.call_id(), code, false);
        self.anchor.release(req.call_id());
        self.gc_context(sid);
    }

    /// A DTMF key press in an INFO request of a started call: reported, and answered here
    /// instead of forwarded when it comes from the caller while secure entry is on. Returns true
    /// when answered. Malformed bodies are counted and the INFO forwarded as it is.
    fn info_dtmf(&mut self, now: Instant, id: TxId, req: &Message) -> bool {
        let Some(ct) = req.content_type() else { return false };
        if !info::is_dtmf_type(ct) {
            return false;
        }
        let call_id = req.call_id();
        let Some(secure) = self.calls.get(call_id).map(|c| c.secure) else { return false };
        let leg = self.dialogs.leg_of_request(call_id, req.from().tag());
        match info::parse(ct, req.body()) {
            Ok(d) => {
                self.emit(CallEvent::InfoDtmf {
                    call_id: call_id.to_string(),
                    leg,
                    digit: d.digit,
                    duration_ms: d.duration_ms,
                });
                if secure && leg == Leg::Caller {
                    self.metrics.drop("info_dtmf_secure_entry");
                    self.respond(now, id, req, 200, "OK", &[]);
                    return true;
                }
            }
            Err(e) => {
                self.metrics.drop("info_dtmf_malformed");
                tracing::debug!(error = %e, "malformed DTMF INFO body; forwarded as it is");
            }
        }
        false
    }

    /// Consent, retention and secure-entry headers: acted on from trusted sources only (the
    /// callee leg of a started call, from an upstream's address), counted otherwise.
    fn inspect(&mut self, from: Peer, msg: &Message) {
        let consent = msg.header(&self.config.consent_header);
        let retention = msg.header(RETENTION_HEADER);
        let secure = match msg.method() {
            Some(Method::Info | Method::Invite) => msg.header(SECURE_ENTRY_HEADER),
            _ => None,
        };
        if consent.is_none() && retention.is_none() && secure.is_none() {
            return;
        }
        let call_id = msg.call_id();
        let sent_by = self.dialogs.leg_of_request(call_id, msg.from().tag());
        let leg = if msg.is_request() { sent_by } else { sent_by.other() };
        let trusted = self.calls.contains_key(call_id) && leg == Leg::Callee && self.router.is_upstream(from.addr.ip());
        if !trusted {
            self.metrics.drop("untrusted_consent_header");
            return;
        }
        if let Some(v) = consent {
            match v.parse::<ConsentSignal>() {
                Ok(signal) => self.emit(CallEvent::Consent { call_id: call_id.to_string(), signal }),
                Err(()) => self.metrics.drop("bad_consent_header"),
            }
        }
        if let Some(v) = retention {
            let v = v.trim();
            let ok =
                !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                self.emit(CallEvent::RetentionClass { call_id: call_id.to_string(), class: v.to_ascii_lowercase() });
            } else {
                self.metrics.drop("bad_retention_class");
            }
        }
        if let Some(v) = secure {
            let on = match v.trim().to_ascii_lowercase().as_str() {
                "on" => true,
                "off" => false,
                _ => {
                    self.metrics.drop("bad_secure_entry_header");
                    return;
                }
            };
            self.set_secure(call_id, on);
        }
    }

    /// Secure entry for one call, from a trusted PBX header or the API: INFO digits from the
    /// caller stop (or resume) being forwarded, and the relay is told.
    fn set_secure(&mut self, call_id: &str, on: bool) {
        if let Some(c) = self.calls.get_mut(call_id) {
            c.secure = on;
        }
        self.anchor.control(MediaCommand::SecureEntry { call_id: call_id.to_string(), on });
    }

    fn emit_started(&mut self, call_id: &str, ids: Option<(Pii<String>, Pii<String>)>, route: &str, held: bool) {
        if let Some((caller, callee)) = ids {
            self.emit(CallEvent::Started {
                call_id: call_id.to_string(),
                caller,
                callee,
                route: route.to_string(),
                held,
            });
        }
    }

    fn emit(&self, ev: CallEvent) {
        if let Some(tx) = &self.events {
            if tx.send(ev).is_err() {
                self.metrics.drop("call_event_receiver_gone");
            }
        }
    }

    /// Reports Ended for every started call whose dialog went away during the last input.
    fn flush_events(&mut self) {
        if !self.dialogs.has_ended() {
            return;
        }
        for call_id in self.dialogs.take_ended() {
            if self.calls.remove(&call_id).is_some() {
                if let Some(sid) = self.held_calls.remove(&call_id) {
                    if let Some(ctx) = self.contexts.get_mut(&sid) {
                        ctx.held = None;
                    }
                }
                self.emit(CallEvent::Ended { call_id });
            }
        }
    }

    /// RFC 3261 §16.3 checks, in its order. Returns the error to answer with.
    fn check_request(&self, req: &Message, method: &Method) -> Option<(u16, &'static str)> {
        if let Some(uri) = req.request_uri() {
            if let Scheme::Other(_) = uri.scheme {
                return Some((416, "Unsupported URI Scheme"));
            }
        }
        if req.max_forwards() == Some(0) {
            if *method == Method::Options && req.request_uri().is_some_and(|u| self.is_ours(u)) {
                return None;
            }
            return Some((483, "Too Many Hops"));
        }
        if self.is_loop(req) {
            return Some((482, "Loop Detected"));
        }
        if req.header("Proxy-Require").is_some() {
            return Some((420, "Bad Extension"));
        }
        None
    }

    /// RFC 3261 §16.3 step 4: a request carrying our own Via with the same loop hash it would get
    /// now has come back unchanged. Spirals (changed Request-URI or Route) have another hash.
    fn is_loop(&self, req: &Message) -> bool {
        let hash = loop_hash(req);
        let tag = format!("-{hash:016x}-");
        req.vias().iter().any(|v| self.is_our_via(v) && v.branch().is_some_and(|b| b.contains(&tag)))
    }

    /// Routes an in-dialog request that reached callveil without a Route header (its sender
    /// ignored Record-Route, as SIPp's built-in scenarios and some PBXs do): to the other leg's
    /// Contact when it is reachable, else back to where that leg's messages came from. Returns the
    /// next hop and the new Request-URI.
    fn dialog_target(&self, req: &Message) -> Option<(Peer, Option<String>)> {
        let d = self.dialogs.get(req.call_id())?;
        let from_caller = self.dialogs.leg_of_request(req.call_id(), req.from().tag()) == Leg::Caller;
        let (contact, peer) =
            if from_caller { (&d.callee_contact, d.callee_peer) } else { (&d.caller_contact, d.caller_peer) };
        let contact = contact.as_ref().and_then(|c| Uri::parse(c.expose()).ok());
        if let Some(uri) = &contact {
            if let NextHop::Peer(p) = next_hop(uri) {
                if !self.is_ours(uri) {
                    return Some((p, Some(uri.raw.clone())));
                }
            }
        }
        Some((peer?, contact.map(|u| u.raw)))
    }

    fn answer_locally(&mut self, now: Instant, id: TxId, req: &Message, method: &Method) {
        match method {
            Method::Options => self.respond(
                now,
                id,
                req,
                200,
                "OK",
                &[("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Encoding", "identity")],
            ),
            _ => self.respond(now, id, req, 404, "Not Found", &[]),
        }
    }

    /// Sends the context's request to `peer` on a new client transaction.
    fn forward_branch(&mut self, now: Instant, sid: TxId, peer: Peer, edits: &RequestEdits) {
        let Some(ctx) = self.contexts.get(&sid) else { return };
        let req = &ctx.request;
        let via_ep = self.local(peer.transport, peer.addr.ip());
        let branch = format!("z9hG4bK-{:016x}-{:x}{:x}", loop_hash(req), self.secret & 0xffff_ffff, self.next_id);
        let mut rw = req.rewrite();
        if let Some(uri) = &edits.request_uri {
            rw = rw.request_uri(uri);
            if edits.strict_fixup {
                // the last Route became the Request-URI
                rw = rw.remove_last_route();
            }
        }
        for _ in 0..edits.own_routes {
            rw = rw.pop_route();
        }
        rw = rw.max_forwards(req.max_forwards().map_or(70, |m| m.saturating_sub(1)));
        if let Some(rcv) = received_param(req.top_via(), ctx_source(&self.servers, sid)) {
            rw = rw.top_via_received(&rcv.0, rcv.1);
        }
        rw = rw.push_via(&format!(
            "SIP/2.0/{} {};branch={branch};rport",
            peer.transport.as_str(),
            host_port(via_ep.addr)
        ));
        if ctx.record_route {
            let inbound = self.servers.get(&sid).map(|s| s.peer.transport).unwrap_or(Transport::Udp);
            let in_ep = self.local(inbound, peer.addr.ip());
            // Double Record-Route when the two sides use different transports or addresses, so
            // each side gets a Route URI it can reach (RFC 5658).
            if in_ep != via_ep {
                rw = rw.push_record_route(&record_route_value(in_ep));
            }
            rw = rw.push_record_route(&record_route_value(via_ep));
        }
        if ctx.leg == Leg::Caller {
            for h in trusted_only_headers(&self.config.consent_header) {
                if req.header(h).is_some() {
                    rw = rw.remove_header(h);
                }
            }
        }
        if let (true, Some(body)) = (req.has_sdp(), &ctx.body) {
            if body.as_slice() != req.body() {
                rw = rw.body(None, body);
            }
        } else if req.has_sdp() {
            let role = if ctx.method == Method::Ack { SdpRole::Answer } else { SdpRole::Offer };
            let sctx = SdpContext { call_id: req.call_id(), from: ctx.leg, role };
            match self.anchor.rewrite(sctx, req.body()) {
                Ok(body) => {
                    if body != req.body() {
                        rw = rw.body(None, &body);
                    }
                }
                Err(e) => {
                    let req = ctx.request.clone();
                    self.anchor_failed(now, sid, &req, e);
                    return;
                }
            }
        }
        let bytes = rw.finish();
        let kind = if ctx.method == Method::Invite { Kind::Invite } else { Kind::NonInvite };
        let method = ctx.method.clone();
        let initial_invite = ctx.initial_invite;
        let cid = self.new_id();
        let txn =
            ClientTransaction::new(kind, now, bytes.clone(), peer.transport == Transport::Tcp, self.config.timers);
        let key = ClientKey { branch, method };
        self.client_keys.insert(key.clone(), cid);
        self.clients.insert(cid, ClientEntry { key, txn, peer, role: ClientRole::Forward { server: sid } });
        self.metrics.transactions_in_flight.inc();
        if let Some(ctx) = self.contexts.get_mut(&sid) {
            ctx.branch = Some(cid);
            ctx.unreachable = false;
            ctx.provisional = false;
            ctx.cancel_sent = false;
            if initial_invite {
                ctx.timer_c = None;
            }
        }
        self.send(peer, bytes);
        self.flush_client(now, cid);
    }

    fn anchor_failed(&mut self, now: Instant, sid: TxId, req: &Message, e: AnchorError) {
        let (code, reason) = e.status();
        tracing::info!(code, "media anchoring refused a session description");
        let extra: &[(&str, &str)] = if code == 503 { &[("Retry-After", "5")] } else { &[] };
        let initial = self.contexts.get_mut(&sid).is_none_or(|ctx| {
            ctx.final_sent = true;
            ctx.initial_invite
        });
        self.respond(now, sid, req, code, reason, extra);
        if initial {
            self.dialogs.invite_response(now, req.call_id(), code, false);
            self.anchor.release(req.call_id());
        } else {
            // a refused re-INVITE or UPDATE: the call goes on with the media it had
            self.anchor.offer_failed(req.call_id());
        }
    }

    fn on_ack(&mut self, now: Instant, from: Peer, req: Message, key: ServerKey) {
        if let Some(&id) = self.server_keys.get(&key) {
            if let Some(entry) = self.servers.get_mut(&id) {
                if entry.txn.on_ack(now) == Received::Absorb {
                    self.flush_server(now, id);
                    return;
                }
            }
        }
        // ACK for a 2xx: end-to-end, forwarded statelessly along the route set.
        self.forward_stateless(now, from, req);
    }

    /// Forwards a request without a transaction (ACK for 2xx). The branch is derived from the
    /// incoming one so a retransmitted ACK gets the same branch (RFC 3261 §16.11).
    fn forward_stateless(&mut self, _now: Instant, from: Peer, req: Message) {
        if req.max_forwards() == Some(0) {
            self.metrics.drop("ack_max_forwards");
            return;
        }
        let routes: Vec<&message::NameAddr> = req.routes().iter().collect();
        let own_routes = routes.iter().take_while(|r| self.is_ours(&r.uri)).count();
        let mut retarget = None;
        let hop = match routes.get(own_routes) {
            Some(r) => next_hop(&r.uri),
            None => match req.request_uri() {
                Some(uri) if !self.is_ours(uri) => next_hop(uri),
                _ => match self.dialog_target(&req) {
                    Some((peer, target)) => {
                        retarget = target;
                        NextHop::Peer(peer)
                    }
                    None => {
                        self.metrics.drop("ack_without_dialog");
                        return;
                    }
                },
            },
        };
        let NextHop::Peer(peer) = hop else {
            self.metrics.drop("unreachable_next_hop");
            return;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.top_via().raw.hash(&mut h);
        self.secret.hash(&mut h);
        let branch = format!("z9hG4bK-{:016x}-s{:x}", loop_hash(&req), h.finish());
        let via_ep = self.local(peer.transport, peer.addr.ip());
        let mut rw = req.rewrite();
        if let Some(target) = &retarget {
            rw = rw.request_uri(target);
        }
        if self.dialogs.leg_of_request(req.call_id(), req.from().tag()) == Leg::Caller {
            for h in trusted_only_headers(&self.config.consent_header) {
                if req.header(h).is_some() {
                    rw = rw.remove_header(h);
                }
            }
        }
        for _ in 0..own_routes {
            rw = rw.pop_route();
        }
        rw = rw.max_forwards(req.max_forwards().map_or(70, |m| m.saturating_sub(1)));
        if let Some(rcv) = received_param(req.top_via(), from) {
            rw = rw.top_via_received(&rcv.0, rcv.1);
        }
        rw = rw.push_via(&format!(
            "SIP/2.0/{} {};branch={branch};rport",
            peer.transport.as_str(),
            host_port(via_ep.addr)
        ));
        if req.has_sdp() {
            let leg = self.dialogs.leg_of_request(req.call_id(), req.from().tag());
            let sctx = SdpContext { call_id: req.call_id(), from: leg, role: SdpRole::Answer };
            match self.anchor.rewrite(sctx, req.body()) {
                Ok(body) if body != req.body() => rw = rw.body(None, &body),
                Ok(_) => {}
                Err(_) => {
                    self.metrics.drop("ack_bad_sdp");
                    return;
                }
            }
        }
        let bytes = rw.finish();
        self.send(peer, bytes);
    }

    fn on_cancel(&mut self, now: Instant, from: Peer, req: Message, key: ServerKey) {
        let id = self.new_id();
        let txn = ServerTransaction::new(Kind::NonInvite, now, from.transport == Transport::Tcp, self.config.timers);
        self.servers.insert(id, ServerEntry { key: key.clone(), txn, peer: response_peer(&req, from), ctx: false });
        self.server_keys.insert(key, id);
        self.metrics.transactions_in_flight.inc();

        let invite_key = match server_key(&req, &Method::Invite) {
            k @ ServerKey::Rfc3261 { .. } => k,
            ServerKey::Rfc2543 { call_id, cseq, from_tag, via, .. } => {
                ServerKey::Rfc2543 { call_id, cseq, from_tag, via, method: Method::Invite }
            }
        };
        let Some(&sid) = self.server_keys.get(&invite_key) else {
            self.respond(now, id, &req, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let final_sent = self.servers.get(&sid).is_some_and(|s| s.txn.final_sent().is_some());
        self.respond(now, id, &req, 200, "OK", &[]);
        if final_sent {
            return;
        }
        let Some(ctx) = self.contexts.get_mut(&sid) else {
            // An INVITE callveil answered itself: nothing to cancel downstream.
            return;
        };
        if ctx.held.is_some() {
            self.finish_held(now, sid, 487, "Request Terminated");
            return;
        }
        ctx.cancelled = true;
        ctx.remaining.clear();
        if ctx.provisional && !ctx.cancel_sent {
            self.send_cancel(now, sid);
        }
    }

    /// Sends CANCEL for the context's current branch (RFC 3261 §16.10, §9.1).
    fn send_cancel(&mut self, now: Instant, sid: TxId) {
        let Some(ctx) = self.contexts.get_mut(&sid) else { return };
        let Some(bid) = ctx.branch else { return };
        ctx.cancel_sent = true;
        let Some(branch) = self.clients.get(&bid) else { return };
        let Ok(forwarded) = message::parse(branch.txn.request()) else {
            self.metrics.drop("cancel_build_failed");
            return;
        };
        let bytes = message::cancel_for(&forwarded);
        let peer = branch.peer;
        let key = ClientKey { branch: branch.key.branch.clone(), method: Method::Cancel };
        let cid = self.new_id();
        let txn = ClientTransaction::new(
            Kind::NonInvite,
            now,
            bytes.clone(),
            peer.transport == Transport::Tcp,
            self.config.timers,
        );
        self.client_keys.insert(key.clone(), cid);
        self.clients.insert(cid, ClientEntry { key, txn, peer, role: ClientRole::Cancel });
        self.metrics.transactions_in_flight.inc();
        self.send(peer, bytes);
        self.flush_client(now, cid);
    }

    // ----- responses ------------------------------------------------------------------------

    fn on_response(&mut self, now: Instant, resp: Message) {
        let code = resp.status().unwrap_or(0);
        self.metrics.response(code);
        if !self.is_our_via(resp.top_via()) {
            self.metrics.drop("response_not_ours");
            return;
        }
        let key =
            ClientKey { branch: resp.top_via().branch().unwrap_or("").to_string(), method: resp.cseq().method.clone() };
        let Some(&cid) = self.client_keys.get(&key) else {
            // RFC 3261 §16.7 step 3 / RFC 6026: no transaction (a 2xx retransmitted after ours
            // ended) is forwarded statelessly; anything else is dropped.
            if (200..300).contains(&code) && resp.cseq().method == Method::Invite {
                self.forward_response_stateless(resp);
            } else {
                self.metrics.drop("stray_response");
            }
            return;
        };
        let Some(entry) = self.clients.get_mut(&cid) else { return };
        let received = entry.txn.on_response(now, code);
        if entry.txn.needs_ack() {
            if let Ok(forwarded) = message::parse(entry.txn.request()) {
                let ack = message::ack_for(&forwarded, &resp);
                entry.txn.set_ack(ack);
            }
        }
        let branch_peer = entry.peer;
        let role_server = match entry.role {
            ClientRole::Forward { server } => Some(server),
            ClientRole::Cancel => None,
        };
        self.flush_client(now, cid);
        if received == Received::Absorb {
            self.metrics.retransmissions_absorbed.inc();
            return;
        }
        let Some(sid) = role_server else { return };
        let current = self.contexts.get(&sid).is_some_and(|c| c.branch == Some(cid));
        if !current {
            // The context is gone (final already forwarded and cleaned up): only 2xx travel on.
            if (200..300).contains(&code) {
                self.forward_response_stateless(resp);
            }
            return;
        }
        self.branch_response(now, sid, branch_peer, resp, code);
    }

    /// RFC 3261 §16.7 for one response delivered by the current branch.
    fn branch_response(&mut self, now: Instant, sid: TxId, branch_peer: Peer, resp: Message, code: u16) {
        let Some(ctx) = self.contexts.get_mut(&sid) else { return };
        match code {
            100 => {}
            101..=199 => {
                let first = !ctx.provisional;
                ctx.provisional = true;
                if ctx.initial_invite {
                    ctx.timer_c = Some(now + TIMER_C);
                    self.timers.push(Reverse((now + TIMER_C, TimerRef::TimerC(sid))));
                }
                let cancel_now = first && ctx.cancelled && !ctx.cancel_sent;
                if ctx.initial_invite {
                    self.dialogs.invite_response(now, resp.call_id(), code, resp.to().tag().is_some());
                    if resp.to().tag().is_some() {
                        let contact = resp.contacts().first().map(|c| Pii::new(c.uri.raw.clone()));
                        self.dialogs.callee_reached(resp.call_id(), contact, branch_peer);
                    }
                }
                self.forward_response(now, sid, &resp, code);
                if cancel_now {
                    self.send_cancel(now, sid);
                }
            }
            200..=299 => {
                ctx.final_sent = true;
                ctx.timer_c = None;
                if ctx.initial_invite {
                    self.dialogs.invite_response(now, resp.call_id(), code, true);
                    let contact = resp.contacts().first().map(|c| Pii::new(c.uri.raw.clone()));
                    self.dialogs.callee_reached(resp.call_id(), contact, branch_peer);
                }
                let initial = ctx.initial_invite;
                if ctx.method == Method::Bye && self.dialogs.terminate(resp.call_id()) {
                    self.endings.remove(resp.call_id());
                    self.anchor.release(resp.call_id());
                }
                if initial {
                    self.remember_ending(sid, branch_peer, &resp);
                    let first =
                        self.calls.get_mut(resp.call_id()).is_some_and(|c| !std::mem::replace(&mut c.answered, true));
                    if first {
                        self.emit(CallEvent::Answered { call_id: resp.call_id().to_string() });
                    }
                }
                self.forward_response(now, sid, &resp, code);
            }
            _ => {
                ctx.timer_c = None;
                let better = ctx.best.as_ref().is_none_or(|b| rank(code) < rank(b.status().unwrap_or(699)));
                if better {
                    ctx.best = Some(resp);
                }
                let failover = (code == 503 || code == 408) && !ctx.cancelled;
                self.next_branch_or_final(now, sid, failover);
            }
        }
    }

    /// Keeps what [`Proxy::end_call`] needs from an answered initial INVITE.
    fn remember_ending(&mut self, sid: TxId, branch_peer: Peer, resp: &Message) {
        let Some(ctx) = self.contexts.get(&sid) else { return };
        if self.endings.contains_key(resp.call_id()) {
            return;
        }
        let req = &ctx.request;
        // Record-Route values above ours were pushed by proxies toward the callee.
        let mut callee_routes: Vec<message::NameAddr> =
            resp.record_routes().iter().take_while(|r| !self.is_ours(&r.uri)).cloned().collect();
        callee_routes.reverse();
        let ending = Ending {
            caller_from: req.from().raw.clone(),
            callee_to: resp.to().raw.clone(),
            target: [
                req.contacts().first().map(|c| c.uri.raw.clone()),
                resp.contacts().first().map(|c| c.uri.raw.clone()),
            ],
            routes: [req.record_routes().to_vec(), callee_routes],
            peer: [self.servers.get(&sid).map(|s| s.peer), Some(branch_peer)],
            cseq: [req.cseq().seq, 0],
        };
        self.endings.insert(resp.call_id().to_string(), ending);
    }

    /// The current branch ended without a 2xx: try the next upstream when allowed, else send the
    /// best final response we have (or `fallback`).
    fn next_branch_or_final(&mut self, now: Instant, sid: TxId, failover: bool) {
        let Some(ctx) = self.contexts.get_mut(&sid) else { return };
        ctx.branch = None;
        if failover {
            if let Some(ep) = ctx.remaining.pop_front() {
                self.metrics.failovers.inc();
                tracing::info!(upstream = %ep, "failing over to the next upstream");
                let peer = Peer { transport: ep.transport, addr: ep.addr, conn: None };
                self.forward_branch(now, sid, peer, &RequestEdits::default());
                return;
            }
        }
        let cancelled = ctx.cancelled;
        let unreachable = ctx.unreachable;
        let best = ctx.best.take();
        let call_id = ctx.request.call_id().to_string();
        let initial_invite = ctx.initial_invite;
        let method = ctx.method.clone();
        // a re-INVITE or UPDATE whose offer the anchor applied when forwarding it
        let failed_offer = !initial_invite && ctx.request.has_sdp();
        ctx.final_sent = true;
        match best {
            Some(resp) => {
                let mut code = resp.status().unwrap_or(500);
                if code == 503 {
                    // RFC 3261 §16.7 step 6: a 503 from downstream is not ours to pass upstream.
                    code = 500;
                    let req = self.contexts.get(&sid).map(|c| c.request.clone());
                    if let Some(req) = req {
                        self.respond(now, sid, &req, 500, "Server Internal Error (upstreams unavailable)", &[]);
                    }
                } else {
                    self.forward_response(now, sid, &resp, code);
                }
                if initial_invite {
                    self.dialogs.invite_response(now, &call_id, code, true);
                    self.anchor.release(&call_id);
                }
            }
            None if method != Method::Invite && !unreachable => {
                // RFC 4320 §4.2: no 408 to a non-INVITE request; its client has given up at the
                // same moment. The server transaction is simply ended.
                if let Some(entry) = self.servers.get_mut(&sid) {
                    entry.txn.on_transport_error();
                }
                self.flush_server(now, sid);
            }
            None => {
                let (code, reason) = if cancelled {
                    (487, "Request Terminated")
                } else if unreachable {
                    (503, "Service Unavailable (upstream unreachable)")
                } else {
                    (408, "Request Timeout")
                };
                let req = self.contexts.get(&sid).map(|c| c.request.clone());
                if let Some(req) = req {
                    self.respond(now, sid, &req, code, reason, &[]);
                }
                if initial_invite {
                    self.dialogs.invite_response(now, &call_id, code, false);
                    self.anchor.release(&call_id);
                }
            }
        }
        if failed_offer {
            // RFC 3261 §14.1: a failed re-INVITE leaves the session as it was
            self.anchor.offer_failed(&call_id);
        }
        if method == Method::Bye && self.dialogs.terminate(&call_id) {
            self.endings.remove(&call_id);
            self.anchor.release(&call_id);
        }
        self.gc_context(sid);
    }

    /// Forwards a response received on a branch through the server transaction `sid`.
    fn forward_response(&mut self, now: Instant, sid: TxId, resp: &Message, code: u16) {
        let Some(ctx) = self.contexts.get(&sid) else { return };
        let mut rw = resp.rewrite().pop_via();
        if ctx.leg == Leg::Callee {
            // a response from the caller side
            for h in trusted_only_headers(&self.config.consent_header) {
                if resp.header(h).is_some() {
                    rw = rw.remove_header(h);
                }
            }
        }
        if resp.has_sdp() {
            let role = if ctx.request.has_sdp() { SdpRole::Answer } else { SdpRole::Offer };
            let sctx = SdpContext { call_id: resp.call_id(), from: ctx.leg.other(), role };
            match self.anchor.rewrite(sctx, resp.body()) {
                Ok(body) if body != resp.body() => rw = rw.body(None, &body),
                Ok(_) => {}
                Err(e) => {
                    // The far side already accepted; we cannot answer it here. Forward as is and
                    // count it: media will flow around us for this call.
                    tracing::warn!(error = %e, "media anchoring refused an answer; forwarding unchanged");
                    self.metrics.drop("sdp_answer_unanchored");
                }
            }
        }
        let bytes = rw.finish();
        if let Some(entry) = self.servers.get_mut(&sid) {
            entry.txn.send_response(now, code, bytes);
        }
        self.flush_server(now, sid);
        if code >= 200 {
            self.gc_context(sid);
        }
    }

    /// A response without a transaction: pop our Via and send it to the next one.
    fn forward_response_stateless(&mut self, resp: Message) {
        let Some(next) = resp.vias().get(1) else {
            self.metrics.drop("response_no_next_via");
            return;
        };
        let Some(peer) = via_peer(next) else {
            self.metrics.drop("unreachable_next_hop");
            return;
        };
        let bytes = resp.rewrite().pop_via().finish();
        self.send(peer, bytes);
    }

    // ----- timers ---------------------------------------------------------------------------

    fn server_timeout(&mut self, now: Instant, id: TxId) {
        let Some(entry) = self.servers.get_mut(&id) else { return };
        if let Some(TimedOut::TimerH) = entry.txn.handle_timeout(now) {
            tracing::debug!("no ACK for a final response (Timer H)");
        }
        self.flush_server(now, id);
    }

    fn client_timeout(&mut self, now: Instant, id: TxId) {
        let Some(entry) = self.clients.get_mut(&id) else { return };
        let fired = entry.txn.handle_timeout(now);
        let server = match entry.role {
            ClientRole::Forward { server } => Some(server),
            ClientRole::Cancel => None,
        };
        self.flush_client(now, id);
        if fired.is_some() {
            let Some(sid) = server else { return };
            let current = self.contexts.get(&sid).is_some_and(|c| c.branch == Some(id));
            if current {
                let cancelled = self.contexts.get(&sid).is_some_and(|c| c.cancelled);
                self.next_branch_or_final(now, sid, !cancelled);
            }
        }
    }

    /// Timer C (RFC 3261 §16.6 step 11): an INVITE branch stuck in Proceeding is cancelled; if
    /// the far side never answers the CANCEL, the client transaction's own timers end it.
    fn timer_c(&mut self, now: Instant, sid: TxId) {
        let Some(ctx) = self.contexts.get_mut(&sid) else { return };
        if ctx.timer_c.is_none_or(|at| at > now) || ctx.final_sent {
            return;
        }
        ctx.timer_c = None;
        ctx.cancelled = true;
        ctx.remaining.clear();
        if !ctx.cancel_sent {
            self.send_cancel(now, sid);
        }
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn respond(&mut self, now: Instant, id: TxId, req: &Message, code: u16, reason: &str, extra: &[(&str, &str)]) {
        let tag = if code > 100 && req.to().tag().is_none() { Some(self.to_tag(req)) } else { None };
        let bytes = message::response(req, code, reason, tag.as_deref(), extra);
        if let Some(entry) = self.servers.get_mut(&id) {
            entry.txn.send_response(now, code, bytes);
        }
        self.flush_server(now, id);
    }

    /// A To tag for responses callveil generates: stable per request so retransmitted requests
    /// get the same tag.
    fn to_tag(&self, req: &Message) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.call_id().hash(&mut h);
        req.cseq().seq.hash(&mut h);
        req.from().tag().hash(&mut h);
        self.secret.hash(&mut h);
        format!("cv{:x}", h.finish())
    }

    /// Moves what a server transaction queued into the outbox, files its next deadline, and
    /// forgets it once terminated.
    fn flush_server(&mut self, now: Instant, id: TxId) {
        let Some(entry) = self.servers.get_mut(&id) else { return };
        while let Some(bytes) = entry.txn.poll_transmit() {
            self.out.push_back(Transmit { to: entry.peer, bytes });
        }
        if entry.txn.is_terminated() {
            if let Some(entry) = self.servers.remove(&id) {
                self.server_keys.remove(&entry.key);
                self.metrics.transactions_in_flight.dec();
                self.metrics.retransmissions_sent.inc_by(u64::from(entry.txn.retransmissions()));
                if entry.ctx {
                    self.gc_context(id);
                }
            }
        } else if let Some(at) = entry.txn.poll_timeout() {
            self.timers.push(Reverse((at.max(now), TimerRef::Server(id))));
        }
    }

    /// The same for a client transaction.
    fn flush_client(&mut self, now: Instant, id: TxId) {
        let Some(entry) = self.clients.get_mut(&id) else { return };
        while let Some(bytes) = entry.txn.poll_transmit() {
            self.out.push_back(Transmit { to: entry.peer, bytes });
        }
        if entry.txn.is_terminated() {
            if let Some(entry) = self.clients.remove(&id) {
                self.client_keys.remove(&entry.key);
                self.metrics.transactions_in_flight.dec();
                self.metrics.retransmissions_sent.inc_by(u64::from(entry.txn.retransmissions()));
            }
        } else if let Some(at) = entry.txn.poll_timeout() {
            self.timers.push(Reverse((at.max(now), TimerRef::Client(id))));
        }
    }

    /// Drops a context once its final response is out (or its server transaction is gone); the
    /// server transaction keeps absorbing retransmissions on its own, and late 2xx from the
    /// branch are forwarded statelessly.
    fn gc_context(&mut self, sid: TxId) {
        let final_sent = self.contexts.get(&sid).is_some_and(|c| c.final_sent);
        if final_sent || !self.servers.contains_key(&sid) {
            self.contexts.remove(&sid);
        }
    }

    fn send(&mut self, to: Peer, bytes: Vec<u8>) {
        self.out.push_back(Transmit { to, bytes });
    }

    fn new_id(&mut self) -> TxId {
        self.next_id += 1;
        self.next_id
    }

    /// The listen endpoint used toward a peer: same transport, same address family if possible.
    fn local(&self, transport: Transport, toward: IpAddr) -> Endpoint {
        let same = |e: &&Endpoint| e.transport == transport;
        self.config
            .listen
            .iter()
            .filter(same)
            .find(|e| e.addr.is_ipv4() == toward.is_ipv4())
            .or_else(|| self.config.listen.iter().find(same))
            .or_else(|| self.config.listen.first())
            .copied()
            .unwrap_or(Endpoint { transport, addr: SocketAddr::from(([127, 0, 0, 1], 5060)) })
    }

    fn is_ours(&self, uri: &Uri) -> bool {
        let default_port = if uri.scheme == Scheme::Sips { 5061 } else { 5060 };
        self.is_our_host_port(&uri.host, uri.port.unwrap_or(default_port))
    }

    fn is_our_via(&self, via: &Via) -> bool {
        self.is_our_host_port(&via.host, via.port.unwrap_or(5060))
    }

    fn is_our_host_port(&self, host: &str, port: u16) -> bool {
        let Some(ip) = parse_host_ip(host) else { return false };
        self.config.listen.iter().any(|e| e.addr.port() == port && (e.addr.ip() == ip || e.addr.ip().is_unspecified()))
    }
}

fn server_key(req: &Message, method: &Method) -> ServerKey {
    let method = if *method == Method::Ack { Method::Invite } else { method.clone() };
    let via = req.top_via();
    match via.branch() {
        Some(b) if b.starts_with("z9hG4bK") => {
            ServerKey::Rfc3261 { branch: b.to_string(), sent_by: via.sent_by().to_ascii_lowercase(), method }
        }
        _ => ServerKey::Rfc2543 {
            call_id: req.call_id().to_string(),
            cseq: req.cseq().seq,
            from_tag: req.from().tag().unwrap_or("").to_string(),
            via: via.raw.clone(),
            method,
        },
    }
}

/// RFC 3261 §16.6 step 8 loop-detection hash over what identifies a request's path.
fn loop_hash(req: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.request_uri().map(|u| u.raw.as_str()).hash(&mut h);
    req.from().tag().hash(&mut h);
    req.to().tag().hash(&mut h);
    req.call_id().hash(&mut h);
    req.cseq().seq.hash(&mut h);
    for r in req.routes() {
        r.uri.raw.hash(&mut h);
    }
    req.header("Proxy-Require").hash(&mut h);
    h.finish()
}

/// Where responses to a request go: the source address (what `received`/`rport` would say), on
/// the same TCP connection for TCP. Without rport over UDP, RFC 3261 §18.2.2 uses the Via port.
fn response_peer(req: &Message, from: Peer) -> Peer {
    let via = req.top_via();
    if from.transport == Transport::Udp && via.rport().is_none() {
        if let Some(port) = via.port {
            return Peer { addr: SocketAddr::new(from.addr.ip(), port), ..from };
        }
    }
    from
}

/// RFC 3261 §18.2.1 and RFC 3581: the `received` (and `rport`) values to add to the top Via.
fn received_param(via: &Via, from: Peer) -> Option<(String, Option<u16>)> {
    let rport = via.rport().map(|_| from.addr.port());
    let host_matches = parse_host_ip(&via.host) == Some(from.addr.ip());
    if host_matches && rport.is_none() {
        return None;
    }
    Some((from.addr.ip().to_string(), rport))
}

fn ctx_source(servers: &HashMap<TxId, ServerEntry>, sid: TxId) -> Peer {
    servers.get(&sid).map(|s| s.peer).unwrap_or(Peer::udp(SocketAddr::from(([0, 0, 0, 0], 0))))
}

fn parse_host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn next_hop(uri: &Uri) -> NextHop {
    if let Scheme::Other(_) | Scheme::Tel = uri.scheme {
        return NextHop::Unreachable("Service Unavailable (no route for URI scheme)");
    }
    let maddr = uri.param("maddr").flatten().and_then(parse_host_ip);
    let Some(ip) = maddr.or_else(|| parse_host_ip(&uri.host)) else {
        return NextHop::Unreachable("Service Unavailable (next hop is not an IP address)");
    };
    let transport = match uri.param("transport").flatten().map(|t| t.to_ascii_lowercase()) {
        None => {
            if uri.scheme == Scheme::Sips {
                return NextHop::Unreachable("Service Unavailable (TLS not supported)");
            }
            Transport::Udp
        }
        Some(t) if t == "udp" => Transport::Udp,
        Some(t) if t == "tcp" => Transport::Tcp,
        Some(_) => return NextHop::Unreachable("Service Unavailable (transport not supported)"),
    };
    let port = uri.port.unwrap_or(5060);
    NextHop::Peer(Peer { transport, addr: SocketAddr::new(ip, port), conn: None })
}

fn via_peer(via: &Via) -> Option<Peer> {
    let ip = via.received().and_then(parse_host_ip).or_else(|| parse_host_ip(&via.host))?;
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    let transport = match via.transport.as_str() {
        "UDP" => Transport::Udp,
        "TCP" => Transport::Tcp,
        _ => return None,
    };
    Some(Peer { transport, addr: SocketAddr::new(ip, port), conn: None })
}

fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn record_route_value(ep: Endpoint) -> String {
    match ep.transport {
        Transport::Udp => format!("<sip:{};lr>", host_port(ep.addr)),
        Transport::Tcp => format!("<sip:{};transport=tcp;lr>", host_port(ep.addr)),
    }
}

/// RFC 3261 §16.7 step 6 preference among final responses: 6xx, then the lowest class.
fn rank(code: u16) -> u16 {
    match code {
        600..=699 => 0,
        401 | 407 | 415 | 420 | 484 => 1,
        _ if code >= 500 && code != 503 => 3,
        503 => 4,
        _ => 2,
    }
}
