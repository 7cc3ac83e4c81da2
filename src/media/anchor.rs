//! [`Anchor`]: the [`MediaAnchor`] the proxy calls for every SDP offer and answer.
//!
//! For each anchorable m-line it holds two port pairs, one facing each leg, and rewrites the
//! description so each leg sends to the pair facing it; the relay forwards between the two. It
//! runs inside the proxy's core task, so it never waits: ports come from the in-memory
//! [`PortAllocator`], and everything else goes to a [`MediaBackend`] that must return at once
//! (the real one, `net::rtp::MediaDriver`, binds the sockets and queues a command to a shard).
//!
//! Bind failures are handled at allocation, before any SDP leaves: the backend binds the pair
//! synchronously (a bind is a non-blocking system call, microseconds), and when another process
//! holds a port the pair goes to a long quarantine and the next pair is tried, up to
//! [`BIND_ATTEMPTS`] times; then the offer is answered 503 (`AnchorError::Exhausted`). So a
//! description never names a port callveil does not hold.
//!
//! Ports are released on every call end the proxy reports (BYE, CANCEL, failed INVITE, timeout)
//! and on media inactivity, which the anchor reports back through
//! [`MediaAnchor::handle_timeout`] so the proxy ends the call on both legs.
//!
//! An offer takes effect when it is rewritten (the offerer must already receive on what it
//! offered, RFC 3264 §8), but it stays revocable until its answer: the anchor keeps the call's
//! streams as they were before the oldest unanswered offer, and when the proxy reports that the
//! request carrying it failed ([`MediaAnchor::offer_failed`]: a re-INVITE or UPDATE answered
//! 4xx-6xx, timed out, cancelled, or refused here) it puts back addresses, directions, codecs and
//! SRTP keys, and closes the streams the offer added (their ports go to quarantine), as RFC 3261
//! §14.1 asks. Any answer commits. In glare both offers are refused (491), so both go back to
//! the state before the first; a UA that answers one of two crossing offers anyway, or an offer
//! in a 2xx whose ACK carries no answer, is not modelled (the next answer commits whatever is
//! there). A rollback that restores an older SRTP key starts its context afresh (rollover count
//! 0): correct for the first 65536 packets under that key.
//!
//! Policy for media it cannot anchor (TCP-based transports such as BFCP or MSRP over TCP): the
//! m-line is rejected with port 0, because media callveil cannot see cannot be recorded or
//! redacted and must not flow around it.
//!
//! Early media for callveil's own IVR: [`MediaAnchor::early_answer`] answers the caller's pending
//! offer itself, on the caller-facing ports the offer was already given (so when the callee's
//! real answer comes later, the caller keeps sending to the same place and no re-INVITE is
//! needed), choosing the first of PCMU/PCMA the caller offered, telephone-event when offered,
//! ptime 20, rtcp-mux when offered, and SDES with callveil's key when the offer was SRTP.
//! [`MediaAnchor::control`] applies the recording path's media commands at once (taps, prompt
//! playout, secure entry) by sending them to the shard that owns each of the call's streams.
//!
//! SRTP (SDES, RFC 4568) is terminated on each leg that uses it: callveil decrypts with the key
//! in that leg's SDP (so the tap sees plain audio) and encrypts toward it with a key of its own,
//! written into the SDP sent to that leg; the other leg's key never crosses over. Whether an
//! offer goes on as SRTP is [`SrtpPolicy`] per target leg; an answer always goes out in the
//! profile its offerer used. An SRTP offer without a supported suite is refused with 488.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::PortRange;
use crate::media::ports::PortAllocator;
use crate::media::relay::{leg_index, Remote, StreamSetup};
use crate::media::sdp::{self, CryptoPlan, Description, MediaDesc, MediaPlan, PortPlan};
use crate::media::srtp::SrtpKey;
use crate::media::tap::TapFrame;
use crate::metrics::MediaMetrics;
use crate::sip::events::MediaCommand;
use crate::sip::sdp::{AnchorError, Leg, MediaAnchor, SdpContext, SdpRole};

/// Pairs tried when binding fails before the offer is refused.
pub const BIND_ATTEMPTS: usize = 8;
/// How often the anchor asks for a check (inactive calls reported by the relay, quarantine).
const TICK: Duration = Duration::from_secs(1);

/// One anchored m-line of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub call: u64,
    pub index: u8,
}

/// What the anchor needs from the media driver. Every method must return without waiting.
pub trait MediaBackend: Send {
    /// The sockets of one bound pair (RTP and RTCP), passed back in [`MediaBackend::open`].
    type Pair: Send;
    /// Binds RTP on `rtp_port` and RTCP on `rtp_port + 1`.
    fn bind(&mut self, rtp_port: u16) -> std::io::Result<Self::Pair>;
    /// Starts relaying a stream; `pairs` is indexed by the leg they face.
    fn open(&mut self, key: StreamKey, pairs: [Self::Pair; 2], setup: StreamSetup);
    fn update(&mut self, key: StreamKey, setup: StreamSetup);
    /// Stops relaying and closes the stream's sockets.
    fn close(&mut self, key: StreamKey);
    /// A call the relay found without media, if any is pending.
    fn poll_inactive(&mut self) -> Option<u64>;
    /// A media action on one open stream (tap, prompt, secure entry), applied by its shard.
    fn control(&mut self, key: StreamKey, ctl: StreamControl);
}

/// What [`MediaBackend::control`] asks of one stream.
#[derive(Debug)]
pub enum StreamControl {
    /// Tap both legs into `sink` (every packet received from now on), or with `None` stop.
    Tap(Option<(SyncSender<TapFrame>, Option<u8>)>),
    /// Play 8 kHz PCM16 toward a leg, replacing what plays there.
    Play {
        leg: Leg,
        pcm: Arc<[i16]>,
    },
    StopPlay {
        leg: Leg,
    },
    /// Secure entry on or off (caller → callee DTMF suppression).
    Secure(bool),
}

/// Opens recording taps by Call-ID from outside the proxy's core task. The request reaches the
/// anchor at its next tick (within a second); audio before that is not tapped, which is the safe
/// side. The consent path uses [`MediaCommand::OpenTap`] through the core task instead, which is
/// applied at once; both end in the same code.
#[derive(Clone, Debug)]
pub struct TapOpener {
    tx: mpsc::Sender<(String, SyncSender<TapFrame>)>,
}

impl TapOpener {
    /// Every anchored stream of the call (both legs) will feed `sink` from now on. Returns false
    /// when the anchor is gone.
    pub fn open(&self, call_id: &str, sink: SyncSender<TapFrame>) -> bool {
        self.tx.send((call_id.to_string(), sink)).is_ok()
    }
}

/// How callveil protects media toward a leg when forwarding an offer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// SRTP (with callveil's own key) exactly when the offering leg used SRTP.
    #[default]
    Same,
    /// Always plain RTP (e.g. a PBX on a trusted network behind an SRTP carrier).
    Plain,
    /// Always SRTP with SDES.
    Sdes,
}

impl std::str::FromStr for SrtpPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "same" => Ok(SrtpPolicy::Same),
            "plain" => Ok(SrtpPolicy::Plain),
            "sdes" => Ok(SrtpPolicy::Sdes),
            _ => Err(format!("`{s}` is not one of same, plain, sdes")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AnchorConfig {
    pub advertise: IpAddr,
    pub ports: PortRange,
    pub quarantine: Duration,
    /// Indexed by the leg an offer is forwarded to.
    pub srtp: [SrtpPolicy; 2],
}

#[derive(Debug, Clone)]
struct Stream {
    /// Our RTP port facing each leg (RTCP is +1).
    ports: [u16; 2],
    setup: StreamSetup,
    /// Payload type of RFC 4733 telephone-event, from the latest SDP that had one.
    telephone_event: Option<u8>,
    /// The SRTP key callveil encrypts with toward each leg (used when that leg is on SRTP).
    our_keys: [SrtpKey; 2],
    /// Whether each leg's latest SDP used SRTP, and the crypto tag it used.
    srtp: [bool; 2],
    tag: [u32; 2],
}

#[derive(Debug)]
struct CallMedia {
    key: u64,
    streams: Vec<Option<Stream>>,
    /// The caller's latest offer, for [`MediaAnchor::early_answer`].
    caller_offer: Option<Description>,
    /// The media as it was before the oldest offer still waiting for its answer; put back by
    /// [`MediaAnchor::offer_failed`]. `None` when no offer is outstanding.
    before_offer: Option<Snapshot>,
}

/// A call's negotiated media state, kept while an offer is outstanding (see the module doc).
#[derive(Debug, Clone)]
struct Snapshot {
    streams: Vec<Option<Stream>>,
    caller_offer: Option<Description>,
}

pub struct Anchor<B: MediaBackend> {
    config: AnchorConfig,
    ports: PortAllocator,
    backend: B,
    calls: HashMap<String, CallMedia>,
    by_key: HashMap<u64, String>,
    next_key: u64,
    now: Instant,
    metrics: MediaMetrics,
    taps: mpsc::Receiver<(String, SyncSender<TapFrame>)>,
    tap_opener: TapOpener,
}

impl<B: MediaBackend> Anchor<B> {
    /// The handle the recording path uses to open taps.
    pub fn tap_opener(&self) -> TapOpener {
        self.tap_opener.clone()
    }

    /// `now` starts the anchor's clock; later times come from `handle_timeout`.
    pub fn new(now: Instant, config: AnchorConfig, backend: B, metrics: MediaMetrics) -> Anchor<B> {
        let (tx, taps) = mpsc::channel();
        Anchor {
            taps,
            tap_opener: TapOpener { tx },
            ports: PortAllocator::new(config.ports, config.quarantine),
            config,
            backend,
            calls: HashMap::new(),
            by_key: HashMap::new(),
            next_key: 1,
            now,
            metrics,
        }
    }

    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn gauges(&self) {
        self.metrics.ports_in_use.set(self.ports.in_use() as i64);
        self.metrics.ports_quarantined.set(self.ports.in_quarantine() as i64);
    }

    /// Allocates and binds one pair, skipping pairs that fail to bind.
    fn bind_pair(&mut self) -> Result<(u16, B::Pair), AnchorError> {
        for _ in 0..BIND_ATTEMPTS {
            let Some(port) = self.ports.allocate(self.now) else {
                return Err(AnchorError::Exhausted("no free media port pair".into()));
            };
            match self.backend.bind(port) {
                Ok(pair) => return Ok((port, pair)),
                Err(e) => {
                    self.metrics.bind_failures.inc();
                    tracing::warn!(port, error = %e.kind(), "media port pair cannot be bound; skipping it");
                    self.ports.bind_failed(self.now, port);
                }
            }
        }
        Err(AnchorError::Exhausted("media ports cannot be bound".into()))
    }

    /// Both pairs of a new stream, or neither.
    fn bind_two(&mut self) -> Result<[(u16, B::Pair); 2], AnchorError> {
        let a = self.bind_pair()?;
        match self.bind_pair() {
            Ok(b) => Ok([a, b]),
            Err(e) => {
                self.ports.release(self.now, a.0);
                Err(e)
            }
        }
    }

    fn remote(md: &MediaDesc) -> Remote {
        let hold = md.on_hold();
        let codec = first_g711(md);
        let telephone_event = md.codecs.iter().find(|c| c.name == "TELEPHONE-EVENT").map(|c| c.pt);
        let Some(ip) = md.addr.filter(|a| !a.is_unspecified()) else {
            return Remote {
                rtp: None,
                rtcp: None,
                mux: md.rtcp_mux,
                hold,
                codec,
                telephone_event,
                ..Remote::default()
            };
        };
        let rtp = (md.port != 0).then(|| SocketAddr::new(ip, md.port));
        let rtcp = match md.rtcp {
            Some((port, addr)) => Some(SocketAddr::new(addr.unwrap_or(ip), port)),
            None => md.port.checked_add(1).filter(|_| md.port != 0).map(|p| SocketAddr::new(ip, p)),
        };
        Remote { rtp, rtcp, mux: md.rtcp_mux, hold, codec, telephone_event, ..Remote::default() }
    }

    /// Sends `ctl` to every stream of the call.
    fn each_stream(&mut self, call_id: &str, mut ctl: impl FnMut(&Stream) -> StreamControl) {
        let Some(media) = self.calls.get(call_id) else { return };
        for (i, s) in media.streams.iter().enumerate() {
            if let Some(s) = s {
                self.backend.control(StreamKey { call: media.key, index: i as u8 }, ctl(s));
            }
        }
    }

    fn open_tap(&mut self, call_id: &str, sink: &SyncSender<TapFrame>) {
        self.each_stream(call_id, |s| StreamControl::Tap(Some((sink.clone(), s.telephone_event))));
    }

    fn release_call(&mut self, media: CallMedia) {
        for (i, s) in media.streams.into_iter().enumerate() {
            let Some(s) = s else { continue };
            self.backend.close(StreamKey { call: media.key, index: i as u8 });
            for p in s.ports {
                self.ports.release(self.now, p);
            }
        }
        self.by_key.remove(&media.key);
        self.gauges();
    }
}

impl<B: MediaBackend> MediaAnchor for Anchor<B> {
    fn rewrite(&mut self, ctx: SdpContext<'_>, body: &[u8]) -> Result<Vec<u8>, AnchorError> {
        let desc = sdp::parse(body)?;
        let from = leg_index(ctx.from);
        let toward = leg_index(ctx.from.other());
        let mut media = match self.calls.remove(ctx.call_id) {
            Some(m) => m,
            None => {
                let key = self.next_key;
                self.next_key += 1;
                CallMedia { key, streams: Vec::new(), caller_offer: None, before_offer: None }
            }
        };
        match ctx.role {
            // the first outstanding offer keeps what to go back to; a second one (glare) keeps
            // the same state, since both are refused with 491
            SdpRole::Offer if media.before_offer.is_none() => {
                media.before_offer =
                    Some(Snapshot { streams: media.streams.clone(), caller_offer: media.caller_offer.clone() });
            }
            SdpRole::Offer => {}
            SdpRole::Answer => media.before_offer = None,
        }
        let mut plan: Vec<MediaPlan> = Vec::with_capacity(desc.media.len());
        let mut result = Ok(());
        for (i, md) in desc.media.iter().enumerate() {
            if media.streams.len() <= i {
                media.streams.push(None);
            }
            if !md.anchorable() {
                plan.push(if md.port == 0 { PortPlan::Keep } else { PortPlan::Reject }.into());
                continue;
            }
            // the key the sender encrypts with, if it uses SRTP with a suite callveil supports
            let offered = md.crypto.iter().find_map(|c| SrtpKey::from_crypto(c).map(|k| (c.tag, k)));
            if md.is_srtp() && md.port != 0 && offered.is_none() {
                result = Err(AnchorError::NotAcceptable("no supported SRTP crypto suite".into()));
                break;
            }
            let key = StreamKey { call: media.key, index: i as u8 };
            let mut pairs = None;
            if media.streams[i].is_none() {
                if md.port == 0 {
                    plan.push(PortPlan::Keep.into());
                    continue;
                }
                match self.bind_two() {
                    Ok([(pa, sa), (pb, sb)]) => {
                        pairs = Some([sa, sb]);
                        media.streams[i] = Some(Stream {
                            ports: [pa, pb],
                            setup: StreamSetup { call: media.key, remote: [Remote::default(); 2], clock_rate: 8000 },
                            telephone_event: None,
                            our_keys: [SrtpKey::generate(false), SrtpKey::generate(false)],
                            srtp: [false; 2],
                            tag: [1; 2],
                        });
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let Some(s) = media.streams[i].as_mut() else { continue };
            s.srtp[from] = offered.is_some();
            if let Some((tag, k)) = offered {
                s.tag[from] = tag;
                // if callveil answers this leg, it must use the suite the leg chose
                if s.our_keys[from].tag32 != k.tag32 {
                    s.our_keys[from] = SrtpKey::generate(k.tag32);
                }
            }
            let toward_srtp = match ctx.role {
                SdpRole::Offer => match self.config.srtp[toward] {
                    SrtpPolicy::Same => offered.is_some(),
                    SrtpPolicy::Plain => false,
                    SrtpPolicy::Sdes => true,
                },
                // an answer goes out in the profile the other leg offered
                SdpRole::Answer => s.srtp[toward],
            };
            let our_tx_from = s.setup.remote[from].srtp_tx;
            s.setup.remote[from] =
                Remote { srtp_rx: offered.map(|(_, k)| k), srtp_tx: our_tx_from, ..Self::remote(md) };
            s.setup.remote[toward].srtp_tx = toward_srtp.then_some(s.our_keys[toward]);
            if ctx.role == SdpRole::Answer {
                // the answer's codec is what both legs now use (the offerer gets this answer)
                s.setup.remote[toward].codec = s.setup.remote[from].codec.or(s.setup.remote[toward].codec);
            }
            s.setup.clock_rate = md.codecs.first().map_or(8000, |c| c.clock_rate);
            let te = md.codecs.iter().find(|c| c.name == "TELEPHONE-EVENT").map(|c| c.pt);
            s.telephone_event = te.or(s.telephone_event);
            match pairs {
                Some(pairs) => self.backend.open(key, pairs, s.setup),
                None => self.backend.update(key, s.setup),
            }
            if md.port == 0 {
                plan.push(PortPlan::Keep.into());
                continue;
            }
            let tag = match ctx.role {
                SdpRole::Answer => s.tag[toward],
                SdpRole::Offer => s.tag[from],
            };
            plan.push(MediaPlan {
                port: PortPlan::Anchor(s.ports[toward]),
                proto: (toward_srtp != md.is_srtp()).then(|| sdp::toggle_srtp(&md.proto, toward_srtp)),
                crypto: if toward_srtp {
                    CryptoPlan::Replace(s.our_keys[toward].attribute(tag))
                } else if md.is_srtp() {
                    CryptoPlan::Remove
                } else {
                    CryptoPlan::Keep
                },
            });
        }
        if ctx.from == Leg::Caller && ctx.role == SdpRole::Offer && result.is_ok() {
            media.caller_offer = Some(desc);
        }
        self.by_key.insert(media.key, ctx.call_id.to_string());
        self.calls.insert(ctx.call_id.to_string(), media);
        self.gauges();
        result?;
        sdp::rewrite(body, self.config.advertise, &plan)
    }

    fn release(&mut self, call_id: &str) {
        if let Some(media) = self.calls.remove(call_id) {
            self.release_call(media);
        }
    }

    fn offer_failed(&mut self, call_id: &str) {
        let Some(media) = self.calls.get_mut(call_id) else { return };
        let Some(before) = media.before_offer.take() else { return };
        let call = media.key;
        let now_streams = std::mem::replace(&mut media.streams, before.streams);
        media.caller_offer = before.caller_offer;
        let mut closed = 0;
        for (i, current) in now_streams.into_iter().enumerate() {
            let Some(current) = current else { continue };
            let key = StreamKey { call, index: i as u8 };
            match media.streams.get(i).and_then(Option::as_ref) {
                // the failed offer changed an existing stream: the relay goes back to the old
                // setup (addresses, direction, keys, codecs)
                Some(old) => {
                    if old.setup != current.setup {
                        self.backend.update(key, old.setup);
                    }
                }
                // the failed offer added it: close it, its ports go to quarantine
                None => {
                    self.backend.close(key);
                    for p in current.ports {
                        self.ports.release(self.now, p);
                    }
                    closed += 1;
                }
            }
        }
        self.metrics.offers_rolled_back.inc();
        tracing::debug!(closed, "a refused offer was rolled back");
        self.gauges();
    }

    fn early_answer(&mut self, call_id: &str) -> Result<Vec<u8>, AnchorError> {
        let media = self.calls.get_mut(call_id).ok_or_else(|| no_offer("no offer seen for this call"))?;
        let offer = media.caller_offer.as_ref().ok_or_else(|| no_offer("no pending offer from the caller"))?;
        let adv = self.config.advertise;
        let ip = if adv.is_ipv4() { "IP4" } else { "IP6" };
        let mut out = format!(
            "v=0\r\no=callveil {key} 1 IN {ip} {adv}\r\ns=callveil\r\nc=IN {ip} {adv}\r\nt=0 0\r\n",
            key = media.key
        );
        let mut answered = 0;
        let mut updates = Vec::new();
        for (i, md) in offer.media.iter().enumerate() {
            let stream = media.streams.get_mut(i).and_then(Option::as_mut);
            let codec = first_g711(md);
            let (Some(s), Some(pt), "audio", true) = (stream, codec, md.media.as_str(), md.port != 0) else {
                // every offered m-line gets an answer line; the ones callveil cannot play are refused
                let fmt = md.codecs.first().map_or_else(|| "*".to_string(), |c| c.pt.to_string());
                let _ = write!(out, "m={} 0 {} {fmt}\r\n", md.media, md.proto);
                continue;
            };
            let te = md.codecs.iter().find(|c| c.name == "TELEPHONE-EVENT" && c.clock_rate == 8000).map(|c| c.pt);
            let fmts = te.map_or_else(|| pt.to_string(), |te| format!("{pt} {te}"));
            let _ = write!(out, "m=audio {} {} {fmts}\r\n", s.ports[0], md.proto);
            let _ = write!(out, "a=rtpmap:{pt} {}/8000\r\n", if pt == 0 { "PCMU" } else { "PCMA" });
            if let Some(te) = te {
                let _ = write!(out, "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n");
            }
            out.push_str("a=ptime:20\r\n");
            if md.rtcp_mux {
                out.push_str("a=rtcp-mux\r\n");
            }
            if md.is_srtp() {
                // the key callveil announced to nobody else; rewrite() kept its suite matching
                // the caller's, and uses this same key when the callee's answer comes
                let _ = write!(out, "a=crypto:{}\r\n", s.our_keys[0].attribute(s.tag[0]));
                s.setup.remote[0].srtp_tx = Some(s.our_keys[0]);
            }
            out.push_str("a=sendrecv\r\n");
            s.setup.remote[0].codec = Some(pt);
            updates.push((StreamKey { call: media.key, index: i as u8 }, s.setup));
            answered += 1;
        }
        if answered == 0 {
            return Err(AnchorError::NotAcceptable("the offer has no G.711 audio callveil can answer".into()));
        }
        for (key, setup) in updates {
            self.backend.update(key, setup);
        }
        Ok(out.into_bytes())
    }

    fn control(&mut self, cmd: MediaCommand) {
        match cmd {
            MediaCommand::OpenTap { call_id, sink } => self.open_tap(&call_id, &sink),
            MediaCommand::CloseTap { call_id } => self.each_stream(&call_id, |_| StreamControl::Tap(None)),
            MediaCommand::Play { call_id, leg, pcm } => {
                self.each_stream(&call_id, |_| StreamControl::Play { leg, pcm: pcm.clone() })
            }
            MediaCommand::StopPlay { call_id, leg } => self.each_stream(&call_id, |_| StreamControl::StopPlay { leg }),
            MediaCommand::SecureEntry { call_id, on } => self.each_stream(&call_id, |_| StreamControl::Secure(on)),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let quarantine = self.ports.next_expiry();
        let tick = (!self.calls.is_empty()).then_some(self.now + TICK);
        match (quarantine, tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<String> {
        self.now = self.now.max(now);
        while let Ok((call_id, sink)) = self.taps.try_recv() {
            self.open_tap(&call_id, &sink);
        }
        let mut ended = Vec::new();
        while let Some(key) = self.backend.poll_inactive() {
            if let Some(call_id) = self.by_key.get(&key).cloned() {
                if !ended.contains(&call_id) {
                    self.metrics.inactivity_timeouts.inc();
                    ended.push(call_id);
                }
            }
        }
        // expire quarantine here too, so poll_timeout moves on and the gauges stay right
        self.ports.expire(self.now);
        self.gauges();
        ended
    }
}

fn no_offer(why: &str) -> AnchorError {
    AnchorError::NotAcceptable(why.to_string())
}

/// The first of PCMU/PCMA in the m-line's order of preference.
fn first_g711(md: &MediaDesc) -> Option<u8> {
    // static payload types only: callveil's packets carry PT 0 or 8
    md.codecs.iter().find(|c| (c.pt == 0 && c.name == "PCMU") || (c.pt == 8 && c.name == "PCMA")).map(|c| c.pt)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // virtual time starts from one real instant
mod tests {
    use super::*;
    use crate::sip::sdp::{Leg, SdpRole};
    use std::collections::HashSet;

    /// Records commands; ports in `taken` fail to bind.
    #[derive(Default)]
    struct Fake {
        taken: HashSet<u16>,
        open: HashMap<StreamKey, StreamSetup>,
        inactive: Vec<u64>,
        tapped: Vec<(StreamKey, Option<u8>)>,
        controls: Vec<(StreamKey, String)>,
    }

    impl MediaBackend for Fake {
        type Pair = u16;
        fn bind(&mut self, rtp_port: u16) -> std::io::Result<u16> {
            if self.taken.contains(&rtp_port) {
                return Err(std::io::ErrorKind::AddrInUse.into());
            }
            Ok(rtp_port)
        }
        fn open(&mut self, key: StreamKey, _pairs: [u16; 2], setup: StreamSetup) {
            assert!(self.open.insert(key, setup).is_none(), "opened twice");
        }
        fn update(&mut self, key: StreamKey, setup: StreamSetup) {
            *self.open.get_mut(&key).expect("update of an unknown stream") = setup;
        }
        fn close(&mut self, key: StreamKey) {
            assert!(self.open.remove(&key).is_some(), "closed twice");
        }
        fn poll_inactive(&mut self) -> Option<u64> {
            self.inactive.pop()
        }
        fn control(&mut self, key: StreamKey, ctl: StreamControl) {
            if let StreamControl::Tap(Some((_, telephone_event))) = ctl {
                self.tapped.push((key, telephone_event));
            } else {
                self.controls.push((key, format!("{ctl:?}")));
            }
        }
    }

    fn anchor(first: u16, last: u16) -> (Anchor<Fake>, Instant) {
        let t0 = Instant::now();
        let cfg = AnchorConfig {
            advertise: "203.0.113.1".parse().unwrap(),
            ports: PortRange { first, last },
            quarantine: Duration::from_secs(5),
            srtp: [SrtpPolicy::Same; 2],
        };
        (Anchor::new(t0, cfg, Fake::default(), MediaMetrics::default()), t0)
    }

    fn sdp(ip: &str, port: u16, extra: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n{extra}"
        )
        .into_bytes()
    }

    fn ctx(call_id: &str, from: Leg, role: SdpRole) -> SdpContext<'_> {
        SdpContext { call_id, from, role }
    }

    fn m_port(body: &[u8]) -> u16 {
        let d = sdp::parse(body).unwrap();
        d.media[0].port
    }

    #[test]
    fn offer_and_answer_get_one_pair_per_leg() {
        let (mut a, _) = anchor(30000, 30099);
        let offer = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        let answer = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let text = String::from_utf8(offer.clone()).unwrap();
        assert!(text.contains("c=IN IP4 203.0.113.1\r\n"), "{text}");
        // the callee is told the pair facing it; the caller the pair facing it
        assert_eq!(m_port(&offer), 30002);
        assert_eq!(m_port(&answer), 30000);
        let setup = a.backend().open[&StreamKey { call: 1, index: 0 }];
        assert_eq!(setup.remote[0].rtp, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(setup.remote[1].rtp, Some("198.51.100.2:5000".parse().unwrap()));
        assert_eq!(setup.remote[1].rtcp, Some("198.51.100.2:5001".parse().unwrap()));
        assert_eq!(a.ports().in_use(), 2);
    }

    #[test]
    fn reinvite_hold_and_unhold_keep_the_ports() {
        let (mut a, _) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        // the callee puts the call on hold with a re-INVITE, from a new port
        let hold =
            a.rewrite(ctx("c1", Leg::Callee, SdpRole::Offer), &sdp("198.51.100.2", 5100, "a=sendonly\r\n")).unwrap();
        assert_eq!(m_port(&hold), 30000);
        assert!(String::from_utf8(hold).unwrap().ends_with("a=sendonly\r\n"));
        let setup = a.backend().open[&StreamKey { call: 1, index: 0 }];
        assert!(setup.remote[1].hold);
        assert_eq!(setup.remote[1].rtp, Some("198.51.100.2:5100".parse().unwrap()));
        let resume =
            a.rewrite(ctx("c1", Leg::Callee, SdpRole::Offer), &sdp("198.51.100.2", 5100, "a=sendrecv\r\n")).unwrap();
        assert_eq!(m_port(&resume), 30000);
        assert!(!a.backend().open[&StreamKey { call: 1, index: 0 }].remote[1].hold);
        assert_eq!(a.ports().in_use(), 2);
    }

    #[test]
    fn added_and_rejected_streams() {
        let (mut a, _) = anchor(30000, 30099);
        let two = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\nm=message 4010 TCP/MSRP *\r\n";
        let out = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), two).unwrap();
        let d = sdp::parse(&out).unwrap();
        assert_eq!(d.media.iter().map(|m| m.port).collect::<Vec<_>>(), [30002, 0, 0]);
        assert_eq!(a.ports().in_use(), 2, "only the audio stream holds ports");
        // re-INVITE enables video: it gets its own pairs
        let video = b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\nm=message 0 TCP/MSRP *\r\n";
        let out = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), video).unwrap();
        let d = sdp::parse(&out).unwrap();
        assert_eq!(d.media.iter().map(|m| m.port).collect::<Vec<_>>(), [30002, 30006, 0]);
        assert_eq!(a.ports().in_use(), 4);
    }

    fn two_streams(ip: &str, audio: u16, video: u16, extra: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {audio} RTP/AVP 0 101\r\n{extra}\
m=video {video} RTP/AVP 96\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn failed_reinvite_puts_the_media_back_and_frees_added_streams() {
        let (mut a, t0) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let audio = StreamKey { call: 1, index: 0 };
        let before = a.backend().open[&audio];
        // the callee moves its audio, puts it on hold and adds video; the caller refuses (488)
        let offer = two_streams("198.51.100.2", 5100, 5102, "a=sendonly\r\n");
        let out = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Offer), &offer).unwrap();
        let d = sdp::parse(&out).unwrap();
        assert_eq!(d.media[0].port, 30000, "the audio stream keeps its ports");
        assert_ne!(d.media[1].port, 0);
        let during = a.backend().open[&audio];
        assert!(during.remote[1].hold && during.remote[1].rtp != before.remote[1].rtp, "the offer was applied");
        assert_eq!(a.backend().open.len(), 2);
        assert_eq!(a.ports().in_use(), 4);

        a.offer_failed("c1");
        assert_eq!(a.backend().open[&audio], before, "address, direction, codecs as before the offer");
        assert!(!a.backend().open.contains_key(&StreamKey { call: 1, index: 1 }), "the added stream is closed");
        assert_eq!(a.ports().in_use(), 2);
        assert_eq!(a.ports().in_quarantine(), 2, "its ports wait out the quarantine");
        assert_eq!(a.metrics.offers_rolled_back.get(), 1);
        a.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(a.ports().in_quarantine(), 0);

        // a later offer is an offer like any other: it adds video again, and its answer keeps it
        let out = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Offer), &offer).unwrap();
        assert_eq!(sdp::parse(&out).unwrap().media[0].port, 30000);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Answer), &two_streams("192.0.2.1", 4000, 4002, "a=recvonly\r\n"))
            .unwrap();
        let answered = a.backend().open[&audio];
        // a failure report after the answer changes nothing (the answer committed the offer)
        a.offer_failed("c1");
        assert_eq!(a.backend().open[&audio], answered);
        assert_eq!(a.backend().open.len(), 2);
        assert_eq!(a.ports().in_use(), 4);
        assert_eq!(a.metrics.offers_rolled_back.get(), 1);
        a.offer_failed("no-such-call");
    }

    #[test]
    fn failed_offer_refused_by_the_anchor_itself_is_rolled_back() {
        // the second m-line is SRTP without a supported suite: 488 after the first was applied
        let (mut a, _) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let before = a.backend().open[&StreamKey { call: 1, index: 0 }];
        let bad = "v=0\r\no=- 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
m=audio 4100 RTP/AVP 0\r\nm=audio 4200 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let e = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), bad.as_bytes()).unwrap_err();
        assert_eq!(e.status().0, 488);
        a.offer_failed("c1"); // what the proxy does for a refused re-INVITE
        assert_eq!(a.backend().open[&StreamKey { call: 1, index: 0 }], before);
        assert_eq!(a.ports().in_use(), 2);
        assert_eq!(a.calls(), 1, "the call itself goes on");
    }

    #[test]
    fn failed_srtp_rekey_keeps_the_old_keys() {
        let key_a = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let key_b = "inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
        let offer = |k: &str, port: u16| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio {port} RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 {k}\r\n"
            )
            .into_bytes()
        };
        let (mut a, _) = anchor(30000, 30099);
        a.config.srtp[1] = SrtpPolicy::Plain;
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer(key_a, 4000)).unwrap();
        let first = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let key = StreamKey { call: 1, index: 0 };
        let before = a.backend().open[&key];
        // the carrier re-keys and moves in a re-INVITE that the PBX refuses
        let again = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer(key_b, 4100)).unwrap();
        assert!(!String::from_utf8(again).unwrap().contains("crypto"), "still plain toward the PBX");
        assert_ne!(a.backend().open[&key].remote[0].srtp_rx, before.remote[0].srtp_rx);
        a.offer_failed("c1");
        assert_eq!(a.backend().open[&key], before, "decrypts with the old key, encrypts with the announced one");
        // the next answer toward the carrier still announces the key it was given first
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer(key_a, 4000)).unwrap();
        let next = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let ours = |b: &[u8]| SrtpKey::from_crypto(&sdp::parse(b).unwrap().media[0].crypto[0]);
        assert_eq!(ours(&next), ours(&first));
    }

    #[test]
    fn glare_both_refused_returns_to_the_state_before_either() {
        let (mut a, _) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let before = a.backend().open[&StreamKey { call: 1, index: 0 }];
        // both sides send a re-INVITE at once; each refuses the other's with 491 (RFC 3261 §14.2)
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4100, "a=sendonly\r\n")).unwrap();
        a.rewrite(ctx("c1", Leg::Callee, SdpRole::Offer), &two_streams("198.51.100.2", 5100, 5102, "")).unwrap();
        a.offer_failed("c1");
        a.offer_failed("c1");
        assert_eq!(a.backend().open[&StreamKey { call: 1, index: 0 }], before);
        assert_eq!(a.backend().open.len(), 1);
        assert_eq!(a.ports().in_use(), 2);
    }

    #[test]
    fn release_returns_every_port_after_quarantine() {
        let (mut a, t0) = anchor(30000, 30099);
        for i in 0..10 {
            let id = format!("call-{i}");
            a.rewrite(ctx(&id, Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        }
        assert_eq!(a.ports().in_use(), 20);
        for i in 0..10 {
            a.release(&format!("call-{i}"));
        }
        a.release("never-existed");
        assert_eq!(a.ports().in_use(), 0);
        assert_eq!(a.ports().in_quarantine(), 20);
        assert!(a.backend().open.is_empty());
        assert_eq!(a.calls(), 0);
        let t = a.poll_timeout().unwrap();
        assert_eq!(t, t0 + Duration::from_secs(5));
        a.handle_timeout(t);
        assert_eq!(a.ports().in_quarantine(), 0);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn exhaustion_is_503_and_leaks_nothing() {
        let (mut a, _) = anchor(30000, 30007); // 4 pairs: two streams
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        a.rewrite(ctx("c2", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        let e = a.rewrite(ctx("c3", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap_err();
        assert_eq!(e.status().0, 503);
        a.release("c3"); // what the proxy does after refusing
        assert_eq!(a.ports().in_use(), 4);
        assert_eq!(a.calls(), 2);
    }

    #[test]
    fn bind_failure_skips_the_pair() {
        let (mut a, _) = anchor(30000, 30099);
        a.backend.taken.insert(30000);
        let out = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        assert_eq!(m_port(&out), 30004, "30000 is skipped; 30002 faces the caller");
        assert_eq!(a.metrics.bind_failures.get(), 1);
        // every port taken: refused after BIND_ATTEMPTS, nothing held
        let (mut a, _) = anchor(30000, 30099);
        a.backend.taken = (30000..30100).collect();
        let e = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap_err();
        assert_eq!(e.status().0, 503);
        a.release("c1");
        assert_eq!(a.ports().in_use(), 0);
    }

    #[test]
    fn bad_sdp_is_488() {
        let (mut a, _) = anchor(30000, 30099);
        let e = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), b"v=0\r\nm=audio x RTP/AVP 0\r\n").unwrap_err();
        assert_eq!(e.status().0, 488);
        a.release("c1");
        assert_eq!(a.ports().in_use(), 0);
    }

    #[test]
    fn taps_open_by_call_id_at_the_next_tick() {
        let (mut a, t0) = anchor(30000, 30099);
        let rtpmap = "a=rtpmap:101 telephone-event/8000\r\n";
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, rtpmap)).unwrap();
        let opener = a.tap_opener();
        let (tx, _rx) = std::sync::mpsc::sync_channel(8);
        assert!(opener.open("c1", tx.clone()));
        assert!(opener.open("no-such-call", tx));
        assert!(a.backend().tapped.is_empty(), "nothing before the tick");
        a.handle_timeout(t0 + TICK);
        assert_eq!(a.backend().tapped, vec![(StreamKey { call: 1, index: 0 }, Some(101))]);
    }

    #[test]
    fn srtp_carrier_plain_pbx() {
        let carrier_key = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20";
        let offer = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:5 AES_CM_128_HMAC_SHA1_80 {carrier_key}\r\n"
        );
        for (policy, pbx_srtp) in [(SrtpPolicy::Plain, false), (SrtpPolicy::Same, true)] {
            let (mut a, _) = anchor(30000, 30099);
            a.config.srtp[1] = policy;
            let to_pbx = a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), offer.as_bytes()).unwrap();
            let d = sdp::parse(&to_pbx).unwrap();
            let text = String::from_utf8(to_pbx.clone()).unwrap();
            assert!(!text.contains("WVNf"), "the carrier's key never reaches the PBX");
            assert_eq!(d.media[0].is_srtp(), pbx_srtp, "{text}");
            assert_eq!(d.media[0].crypto.len(), usize::from(pbx_srtp));
            // the PBX answers in the profile it was offered
            let answer = if pbx_srtp {
                let k = SrtpKey::generate(false).attribute(5);
                format!(
                    "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:{k}\r\n"
                )
                .into_bytes()
            } else {
                sdp("198.51.100.2", 5000, "")
            };
            let to_carrier = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &answer).unwrap();
            let d = sdp::parse(&to_carrier).unwrap();
            assert!(d.media[0].is_srtp(), "the carrier gets the SRTP answer it asked for");
            assert_eq!(d.media[0].crypto.len(), 1);
            assert_eq!(d.media[0].crypto[0].tag, 5, "answer uses the offered tag");
            let ours = SrtpKey::from_crypto(&d.media[0].crypto[0]).unwrap();
            let setup = a.backend().open[&StreamKey { call: 1, index: 0 }];
            let carrier = SrtpKey::from_crypto(&sdp::parse(offer.as_bytes()).unwrap().media[0].crypto[0]).unwrap();
            assert_eq!(setup.remote[0].srtp_rx, Some(carrier), "callveil decrypts the carrier");
            assert_eq!(setup.remote[0].srtp_tx, Some(ours), "and encrypts toward it with the key it announced");
            assert_ne!(ours, carrier);
            assert_eq!(setup.remote[1].srtp_rx.is_some(), pbx_srtp);
            assert_eq!(setup.remote[1].srtp_tx.is_some(), pbx_srtp);
        }
        // an SRTP offer with no suite callveil supports is refused
        let (mut a, _) = anchor(30000, 30099);
        let bad =
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        assert_eq!(a.rewrite(ctx("c2", Leg::Caller, SdpRole::Offer), bad.as_bytes()).unwrap_err().status().0, 488);
    }

    fn offer_with(fmts: &str, proto: &str, extra: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 {proto} {fmts}\r\n{extra}"
        )
        .into_bytes()
    }

    #[test]
    fn early_answer_picks_the_callers_first_g711_and_telephone_event() {
        let te = "a=rtpmap:101 telephone-event/8000\r\na=rtcp-mux\r\n";
        for (fmts, want) in [("8 0 101", 8), ("18 0 8 101", 0)] {
            let (mut a, _) = anchor(30000, 30099);
            let to_callee =
                a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer_with(fmts, "RTP/AVP", te)).unwrap();
            let answer = a.early_answer("c1").unwrap();
            let text = String::from_utf8(answer.clone()).unwrap();
            let d = sdp::parse(&answer).unwrap();
            assert_eq!(d.media.len(), 1);
            let m = &d.media[0];
            assert_eq!(m.port, 30000, "the caller-facing port: {text}");
            assert_ne!(m.port, m_port(&to_callee));
            assert_eq!(m.addr, Some("203.0.113.1".parse().unwrap()));
            assert_eq!(m.codecs.iter().map(|c| c.pt).collect::<Vec<_>>(), [want, 101], "{text}");
            assert!(m.rtcp_mux && !m.is_srtp());
            assert!(text.contains("a=ptime:20\r\n") && text.contains("a=fmtp:101 0-15\r\n"), "{text}");
            // the shard now knows which codec to play toward the caller
            assert_eq!(a.backend().open[&StreamKey { call: 1, index: 0 }].remote[0].codec, Some(want));
            // the callee's real answer later names the same caller-facing port: no re-INVITE
            let real = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
            assert_eq!(m_port(&real), 30000);
            assert_eq!(a.ports().in_use(), 2);
        }
        // no telephone-event offered: none answered
        let (mut a, _) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer_with("0", "RTP/AVP", "")).unwrap();
        let d = sdp::parse(&a.early_answer("c1").unwrap()).unwrap();
        assert_eq!(d.media[0].codecs.iter().map(|c| c.pt).collect::<Vec<_>>(), [0]);
        assert!(!d.media[0].rtcp_mux);
    }

    #[test]
    fn early_answer_to_srtp_uses_our_key_and_keeps_it_for_the_real_answer() {
        let carrier = "a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let (mut a, _) = anchor(30000, 30099);
        a.config.srtp[1] = SrtpPolicy::Plain;
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer_with("0 101", "RTP/SAVP", carrier)).unwrap();
        let early = a.early_answer("c1").unwrap();
        let text = String::from_utf8(early.clone()).unwrap();
        assert!(!text.contains("WVNf"), "the carrier's own key is never echoed");
        let d = sdp::parse(&early).unwrap();
        assert!(d.media[0].is_srtp());
        assert_eq!(d.media[0].crypto[0].tag, 3);
        let ours = SrtpKey::from_crypto(&d.media[0].crypto[0]).unwrap();
        let setup = a.backend().open[&StreamKey { call: 1, index: 0 }];
        assert_eq!(setup.remote[0].srtp_tx, Some(ours), "prompts toward the caller are encrypted with it");
        let real = a.rewrite(ctx("c1", Leg::Callee, SdpRole::Answer), &sdp("198.51.100.2", 5000, "")).unwrap();
        let d = sdp::parse(&real).unwrap();
        assert_eq!(SrtpKey::from_crypto(&d.media[0].crypto[0]), Some(ours), "one key toward the caller");
    }

    #[test]
    fn early_answer_refuses_offers_without_g711_and_unknown_calls() {
        let (mut a, _) = anchor(30000, 30099);
        assert_eq!(a.early_answer("nobody").unwrap_err().status().0, 488);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &offer_with("18 9", "RTP/AVP", "")).unwrap();
        assert_eq!(a.early_answer("c1").unwrap_err().status().0, 488);
        // a second m-line callveil cannot answer is refused with port 0, in order
        let two = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n";
        a.rewrite(ctx("c2", Leg::Caller, SdpRole::Offer), two).unwrap();
        let d = sdp::parse(&a.early_answer("c2").unwrap()).unwrap();
        assert_eq!(
            d.media.iter().map(|m| (m.media.as_str(), m.port)).collect::<Vec<_>>(),
            [("audio", 30004), ("video", 0)]
        );
    }

    #[test]
    fn media_commands_reach_every_stream_at_once() {
        let (mut a, _) = anchor(30000, 30099);
        let rtpmap = "a=rtpmap:101 telephone-event/8000\r\n";
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, rtpmap)).unwrap();
        let (tx, _rx) = std::sync::mpsc::sync_channel(8);
        a.control(MediaCommand::OpenTap { call_id: "c1".into(), sink: tx.clone() });
        a.control(MediaCommand::OpenTap { call_id: "unknown".into(), sink: tx });
        assert_eq!(a.backend().tapped, vec![(StreamKey { call: 1, index: 0 }, Some(101))], "no tick needed");
        let pcm: Arc<[i16]> = vec![0i16; 160].into();
        a.control(MediaCommand::Play { call_id: "c1".into(), leg: Leg::Caller, pcm });
        a.control(MediaCommand::StopPlay { call_id: "c1".into(), leg: Leg::Caller });
        a.control(MediaCommand::SecureEntry { call_id: "c1".into(), on: true });
        a.control(MediaCommand::CloseTap { call_id: "c1".into() });
        let got: Vec<String> =
            a.backend().controls.iter().map(|(_, c)| c.split([' ', '(']).next().unwrap().to_string()).collect();
        assert_eq!(got, ["Play", "StopPlay", "Secure", "Tap"]);
        assert!(a.backend().controls[3].1.contains("Tap(None)"));
    }

    #[test]
    fn inactive_calls_are_reported_once_by_call_id() {
        let (mut a, t0) = anchor(30000, 30099);
        a.rewrite(ctx("c1", Leg::Caller, SdpRole::Offer), &sdp("192.0.2.1", 4000, "")).unwrap();
        assert_eq!(a.poll_timeout(), Some(t0 + TICK));
        a.backend.inactive = vec![1, 1, 99];
        assert_eq!(a.handle_timeout(t0 + TICK), vec!["c1".to_string()]);
        assert_eq!(a.metrics.inactivity_timeouts.get(), 1);
    }
}
