//! The sans-IO relay core of one shard: per-leg latching, SSRC/sequence/jitter tracking, RTCP
//! routing, flood limits, inactivity, and the forwarding decision for every datagram.
//!
//! A *stream* is one anchored m-line of one call: four sockets (RTP and RTCP facing each leg).
//! The driver owns the sockets and tells the core which one a datagram arrived on
//! ([`Sock`]); [`RelayCore::handle_packet`] answers with a [`Verdict`]: send the same bytes from
//! that socket to that address, or drop them for a counted reason. The core never copies a
//! packet, allocates on the packet path, reads a clock, or touches a socket; time is an input, so
//! the tests run timeouts of minutes in microseconds.
//!
//! Latching (symmetric RTP, the NAT fix): a leg's media is sent to the address its packets come
//! from, learnt from the first valid packet; until then, to the address its SDP named.
//! Anti-hijack and re-latch policy: after latching, packets from any other source are dropped
//! (`foreign_source`) unless (a) they come from the address the leg's latest SDP named (a
//! re-INVITE moved the stream; the signalled address is authoritative), or (b) the latched source
//! has been silent for `relatch_after` (a NAT rebinding or a phone that changed network). A new
//! SDP from a leg clears its latch. An attacker who can guess the port can therefore only take
//! over a stream that is already dead, and only until the real source speaks again after
//! `relatch_after` of its own silence.
//!
//! Media callveil adds (see `media::playout`, `media::secure`): [`RelayCore::play`] starts a prompt
//! toward one leg, sent from the socket facing that leg in the codec negotiated with it;
//! [`RelayCore::poll_transmit`] hands out packets as they fall due and [`RelayCore::poll_timeout`]
//! includes their deadlines, so the shard's own poll loop paces them. [`RelayCore::set_secure`]
//! turns on secure entry: the caller's DTMF (telephone-events and in-band tones) is suppressed
//! toward the callee as packets pass. The recording tap sees every valid packet the relay
//! *receives* on a tapped leg, before the forwarding decision and before secure entry, so audio
//! that cannot be forwarded yet (the callee has not answered while callveil's IVR talks to the
//! caller) still reaches the consent gate. Streams with none of these on pay one branch each.
//!
//! Inactivity: a negotiated stream (both legs have sent SDP) that relays no valid packet (RTP or
//! RTCP, either direction) for `inactivity` (or `hold_timeout` while either leg has it on hold)
//! produces [`RelayEvent::Inactive`]; the proxy then ends the call with BYE on both legs if it is
//! answered. A stream waiting for its answer never times out here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::media::playout::{Law, Playout};
use crate::media::rtp::{self, Malformed, Packet};
use crate::media::secure::ToneSuppressor;
use crate::media::srtp::{self, Session, SrtpKey};
use crate::media::tap::LegTap;
use crate::metrics::{DirectionLabels, MediaMetrics, ReasonLabels};
use crate::sip::sdp::Leg;

/// Stream handle: an index into the core's stream table, reused after removal.
pub type StreamId = usize;

/// Which of a stream's four sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sock {
    pub stream: StreamId,
    /// The leg this socket faces (receives from, sends to).
    pub leg: Leg,
    pub rtcp: bool,
}

/// Where one leg wants its media, from its latest SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remote {
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    pub mux: bool,
    pub hold: bool,
    /// The key this leg encrypts with (from its SDP): callveil decrypts what it sends.
    pub srtp_rx: Option<SrtpKey>,
    /// The key callveil encrypts with toward this leg (from the SDP callveil sent it).
    pub srtp_tx: Option<SrtpKey>,
    /// G.711 payload type (0 or 8) negotiated with this leg: what callveil plays toward it.
    pub codec: Option<u8>,
    /// RFC 4733 telephone-event payload type in this leg's SDP.
    pub telephone_event: Option<u8>,
}

/// What the anchor tells the core about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSetup {
    /// The anchor's key for the call, echoed in events.
    pub call: u64,
    /// Indexed by [`leg_index`].
    pub remote: [Remote; 2],
    /// RTP clock rate of the first codec, for jitter in milliseconds.
    pub clock_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the received bytes unchanged from socket `via` to `to`.
    Forward {
        via: Sock,
        to: SocketAddr,
    },
    /// Send [`RelayCore::rewritten`] (SRTP removed or applied) from `via` to `to`.
    ForwardRewritten {
        via: Sock,
        to: SocketAddr,
    },
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed(Malformed),
    /// RTP arrived on an RTCP port.
    RtpOnRtcpPort,
    ForeignSource,
    NoDestination,
    Flood,
    UnknownStream,
    /// SRTP/SRTCP authentication or replay check failed.
    SrtpAuth,
    /// Could not encrypt toward an SRTP leg.
    SrtpProtect,
    /// A caller telephone-event toward the callee while secure entry is on.
    SecureEntry,
}

impl DropReason {
    const ALL: [DropReason; 13] = [
        DropReason::Malformed(Malformed::TooShort),
        DropReason::Malformed(Malformed::Version),
        DropReason::Malformed(Malformed::Padding),
        DropReason::Malformed(Malformed::Extension),
        DropReason::Malformed(Malformed::RtcpLength),
        DropReason::RtpOnRtcpPort,
        DropReason::ForeignSource,
        DropReason::NoDestination,
        DropReason::Flood,
        DropReason::UnknownStream,
        DropReason::SrtpAuth,
        DropReason::SrtpProtect,
        DropReason::SecureEntry,
    ];

    fn index(self) -> usize {
        match self {
            DropReason::Malformed(Malformed::TooShort) => 0,
            DropReason::Malformed(Malformed::Version) => 1,
            DropReason::Malformed(Malformed::Padding) => 2,
            DropReason::Malformed(Malformed::Extension) => 3,
            DropReason::Malformed(Malformed::RtcpLength) => 4,
            DropReason::RtpOnRtcpPort => 5,
            DropReason::ForeignSource => 6,
            DropReason::NoDestination => 7,
            DropReason::Flood => 8,
            DropReason::UnknownStream => 9,
            DropReason::SrtpAuth => 10,
            DropReason::SrtpProtect => 11,
            DropReason::SecureEntry => 12,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed(m) => m.as_str(),
            DropReason::RtpOnRtcpPort => "rtp_on_rtcp_port",
            DropReason::ForeignSource => "foreign_source",
            DropReason::NoDestination => "no_destination",
            DropReason::Flood => "flood",
            DropReason::UnknownStream => "unknown_stream",
            DropReason::SrtpAuth => "srtp_auth",
            DropReason::SrtpProtect => "srtp_protect",
            DropReason::SecureEntry => "secure_entry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEvent {
    /// No media for the configured time: the call should end.
    Inactive { call: u64, stream: StreamId },
}

#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    pub inactivity: Duration,
    /// Inactivity limit while a leg has the stream on hold (phones may send nothing at all).
    pub hold_timeout: Duration,
    pub relatch_after: Duration,
    /// Token bucket per leg and stream: sustained packets per second and burst.
    pub flood_pps: u32,
    pub flood_burst: u32,
    /// How often inactivity is checked and counts are flushed to the metrics.
    pub tick: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            inactivity: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
            relatch_after: Duration::from_secs(2),
            flood_pps: 1000,
            flood_burst: 200,
            tick: Duration::from_secs(1),
        }
    }
}

pub fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::Caller => 0,
        Leg::Callee => 1,
    }
}

/// Receive statistics of one leg (RFC 3550 §6.4.1, Appendix A.1 and A.8).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    pub ssrc: Option<u32>,
    pub ssrc_changes: u32,
    /// Expected minus received since the current SSRC started (can be negative with duplicates).
    pub lost: i64,
    pub expected: u64,
    /// Interarrival jitter, milliseconds.
    pub jitter_ms: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct SeqState {
    base: u32,
    max: u16,
    cycles: u32,
    received: u64,
    transit: Option<i64>,
    jitter: f64,
}

#[derive(Debug, Clone, Copy)]
struct Latch {
    addr: SocketAddr,
    seen: Instant,
}

#[derive(Debug)]
struct LegState {
    remote: Remote,
    rtp: Option<Latch>,
    rtcp: Option<Latch>,
    tokens: f64,
    refilled: Instant,
    stats: LegStats,
    seq: SeqState,
    /// Open only while the recording path listens (after consent).
    tap: Option<LegTap>,
    srtp_rx: Option<Session>,
    srtp_tx: Option<Session>,
    /// A prompt callveil plays toward this leg.
    play: Option<Playout>,
}

impl LegState {
    fn new(now: Instant, remote: Remote, burst: u32) -> LegState {
        LegState {
            remote,
            rtp: None,
            rtcp: None,
            tokens: f64::from(burst),
            refilled: now,
            stats: LegStats::default(),
            seq: SeqState::default(),
            tap: None,
            srtp_rx: remote.srtp_rx.and_then(Session::new),
            srtp_tx: remote.srtp_tx.and_then(Session::new),
            play: None,
        }
    }
}

#[derive(Debug)]
struct Stream {
    setup: StreamSetup,
    legs: [LegState; 2],
    last_activity: Instant,
    reported: bool,
    /// Secure entry (caller → callee DTMF suppression), while on.
    secure: Option<Box<ToneSuppressor>>,
}

#[derive(Debug, Default)]
struct Counts {
    packets: [u64; 2],
    bytes: [u64; 2],
    drops: [u64; DropReason::ALL.len()],
    tap_frames: u64,
    tap_dropped: u64,
    played: u64,
    events_suppressed: u64,
    tone_muted_samples: u64,
}

/// One shard's relay state. See the module documentation.
pub struct RelayCore {
    config: RelayConfig,
    streams: Vec<Option<Stream>>,
    free: Vec<StreamId>,
    active: usize,
    events: Vec<RelayEvent>,
    next_tick: Option<Instant>,
    epoch: Option<Instant>,
    counts: Counts,
    metrics: MediaMetrics,
    /// Plain text of an SRTP packet, then what goes out (see [`Verdict::ForwardRewritten`]).
    plain: Vec<u8>,
    out: Vec<u8>,
    /// Legs with a prompt playing, as (stream, leg index): few, and empty on most shards.
    playing: Vec<(StreamId, usize)>,
}

fn admit(
    latch: &mut Option<Latch>,
    src: SocketAddr,
    signalled: Option<SocketAddr>,
    now: Instant,
    after: Duration,
) -> bool {
    match latch {
        Some(l) if l.addr == src => {
            l.seen = now;
            true
        }
        Some(l) if Some(src) != signalled && now.saturating_duration_since(l.seen) < after => false,
        _ => {
            *latch = Some(Latch { addr: src, seen: now });
            true
        }
    }
}

impl RelayCore {
    pub fn new(config: RelayConfig, metrics: MediaMetrics) -> RelayCore {
        RelayCore {
            config,
            streams: Vec::new(),
            free: Vec::new(),
            active: 0,
            events: Vec::new(),
            next_tick: None,
            epoch: None,
            counts: Counts::default(),
            metrics,
            plain: Vec::with_capacity(2048),
            out: Vec::with_capacity(2048),
            playing: Vec::new(),
        }
    }

    /// The bytes to send for the last [`Verdict::ForwardRewritten`].
    pub fn rewritten(&self) -> &[u8] {
        &self.out
    }

    // ----- control (from the anchor, via the driver) ---------------------------------------

    pub fn add_stream(&mut self, now: Instant, setup: StreamSetup) -> StreamId {
        let burst = self.config.flood_burst;
        let stream = Stream {
            setup,
            legs: [LegState::new(now, setup.remote[0], burst), LegState::new(now, setup.remote[1], burst)],
            last_activity: now,
            reported: false,
            secure: None,
        };
        self.active += 1;
        self.metrics.sessions_active.inc();
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
        match self.free.pop() {
            Some(id) => {
                self.streams[id] = Some(stream);
                id
            }
            None => {
                self.streams.push(Some(stream));
                self.streams.len() - 1
            }
        }
    }

    /// A new offer or answer changed where a leg wants media. A leg whose address changed loses
    /// its latch; activity restarts so a re-INVITE gives the stream a fresh timeout.
    pub fn update_stream(&mut self, now: Instant, id: StreamId, setup: StreamSetup) {
        let Some(Some(s)) = self.streams.get_mut(id) else { return };
        for (leg, remote) in s.legs.iter_mut().zip(setup.remote) {
            if leg.remote.rtp != remote.rtp || leg.remote.rtcp != remote.rtcp || leg.remote.mux != remote.mux {
                leg.rtp = None;
                leg.rtcp = None;
            }
            srtp::rekey(&mut leg.srtp_rx, remote.srtp_rx);
            srtp::rekey(&mut leg.srtp_tx, remote.srtp_tx);
            leg.remote = remote;
        }
        s.setup = setup;
        s.last_activity = now;
        s.reported = false;
    }

    /// Removes a stream, recording its final loss and jitter. Returns its statistics.
    pub fn remove_stream(&mut self, id: StreamId) -> Option<[LegStats; 2]> {
        let s = self.streams.get_mut(id)?.take()?;
        self.playing.retain(|&(p, _)| p != id);
        self.free.push(id);
        self.active -= 1;
        self.metrics.sessions_active.dec();
        let stats = [s.legs[0].stats, s.legs[1].stats];
        for st in stats {
            if st.expected > 0 {
                self.metrics.loss_ratio.observe((st.lost.max(0) as f64) / st.expected as f64);
                self.metrics.jitter_ms.observe(st.jitter_ms);
            }
        }
        Some(stats)
    }

    /// Opens (or with `None` closes) the tap of one leg of a stream.
    pub fn set_tap(&mut self, id: StreamId, leg: Leg, tap: Option<LegTap>) {
        if let Some(Some(s)) = self.streams.get_mut(id) {
            s.legs[leg_index(leg)].tap = tap;
        }
    }

    /// Plays `pcm` (8 kHz mono PCM16) toward `leg` from the socket facing it, replacing any
    /// prompt playing there. Returns false (nothing plays) when the stream is unknown or no
    /// G.711 codec was negotiated with that leg.
    pub fn play(&mut self, now: Instant, id: StreamId, leg: Leg, pcm: Arc<[i16]>) -> bool {
        let Some(Some(s)) = self.streams.get_mut(id) else { return false };
        let l = leg_index(leg);
        let Some(law) = s.legs[l].remote.codec.and_then(Law::from_pt) else { return false };
        // Our own SSRC, sequence and timestamp, random (RFC 3550 §5.1): the receiver sees a new
        // source, never a continuation of the far side's stream.
        let (ssrc, seq, ts) = rand::random::<(u32, u16, u32)>();
        s.legs[l].play = Some(Playout::new(now, pcm, law, ssrc, seq, ts));
        if !self.playing.contains(&(id, l)) {
            self.playing.push((id, l));
        }
        true
    }

    /// Stops the prompt playing toward `leg`, if any.
    pub fn stop_play(&mut self, id: StreamId, leg: Leg) {
        let l = leg_index(leg);
        if let Some(Some(s)) = self.streams.get_mut(id) {
            s.legs[l].play = None;
        }
        self.playing.retain(|&p| p != (id, l));
    }

    /// Turns secure entry on or off for a stream (caller → callee DTMF suppression).
    pub fn set_secure(&mut self, id: StreamId, on: bool) {
        if let Some(Some(s)) = self.streams.get_mut(id) {
            if !on {
                s.secure = None;
            } else if s.secure.is_none() {
                s.secure = Some(Box::default());
            }
        }
    }

    /// The next prompt packet due at `now`: send [`RelayCore::rewritten`] from `via` to `to`.
    /// Call until it returns `None` after every wake-up.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(Sock, SocketAddr)> {
        let mut i = 0;
        while i < self.playing.len() {
            let (id, l) = self.playing[i];
            let Some(Some(s)) = self.streams.get_mut(id) else {
                self.playing.swap_remove(i);
                continue;
            };
            let leg = &mut s.legs[l];
            let Some(play) = leg.play.as_mut() else {
                self.playing.swap_remove(i);
                continue;
            };
            if !play.poll_packet(now, &mut self.plain) {
                if play.finished() {
                    leg.play = None;
                    self.playing.swap_remove(i);
                } else {
                    i += 1;
                }
                continue;
            }
            let to = leg.rtp.map(|l| l.addr).or(leg.remote.rtp).filter(|a| !a.ip().is_unspecified() && a.port() != 0);
            let Some(to) = to else {
                self.counts.drops[DropReason::NoDestination.index()] += 1;
                continue;
            };
            match &mut leg.srtp_tx {
                Some(session) => {
                    if session.protect(false, &self.plain, &mut self.out).is_err() {
                        self.counts.drops[DropReason::SrtpProtect.index()] += 1;
                        continue;
                    }
                }
                None => std::mem::swap(&mut self.out, &mut self.plain),
            }
            self.counts.played += 1;
            let leg = if l == 0 { Leg::Caller } else { Leg::Callee };
            return Some((Sock { stream: id, leg, rtcp: false }, to));
        }
        None
    }

    pub fn stats(&self, id: StreamId, leg: Leg) -> Option<LegStats> {
        Some(self.streams.get(id)?.as_ref()?.legs[leg_index(leg)].stats)
    }

    pub fn active_streams(&self) -> usize {
        self.active
    }

    // ----- packets -------------------------------------------------------------------------

    /// One datagram from `src` on socket `sock`.
    pub fn handle_packet(&mut self, now: Instant, sock: Sock, src: SocketAddr, data: &[u8]) -> Verdict {
        let verdict = self.decide(now, sock, src, data);
        match verdict {
            Verdict::Forward { .. } | Verdict::ForwardRewritten { .. } => {
                let dir = leg_index(sock.leg);
                self.counts.packets[dir] += 1;
                self.counts.bytes[dir] += data.len() as u64;
            }
            Verdict::Drop(r) => self.counts.drops[r.index()] += 1,
        }
        verdict
    }

    fn decide(&mut self, now: Instant, sock: Sock, src: SocketAddr, data: &[u8]) -> Verdict {
        let epoch = *self.epoch.get_or_insert(now);
        let config = self.config;
        let Some(Some(s)) = self.streams.get_mut(sock.stream) else {
            return Verdict::Drop(DropReason::UnknownStream);
        };
        let mut packet = match rtp::classify(data) {
            Ok(p) => p,
            Err(m) => return Verdict::Drop(DropReason::Malformed(m)),
        };
        let is_rtcp = matches!(packet, Packet::Rtcp { .. });
        if sock.rtcp && !is_rtcp {
            return Verdict::Drop(DropReason::RtpOnRtcpPort);
        }
        let clock_rate = s.setup.clock_rate.max(1);
        let me = &mut s.legs[leg_index(sock.leg)];

        // flood limit before latching, so a flood cannot keep a latch alive either
        let elapsed = now.saturating_duration_since(me.refilled).as_secs_f64();
        me.refilled = now;
        me.tokens = (me.tokens + elapsed * f64::from(config.flood_pps)).min(f64::from(config.flood_burst));
        if me.tokens < 1.0 {
            return Verdict::Drop(DropReason::Flood);
        }
        me.tokens -= 1.0;

        // SRTP is authenticated before latching, so a forged packet cannot move a leg
        let decrypted = match &mut me.srtp_rx {
            Some(session) => {
                if session.unprotect(is_rtcp, data, &mut self.plain).is_err() {
                    return Verdict::Drop(DropReason::SrtpAuth);
                }
                packet = match rtp::classify(&self.plain) {
                    Ok(p) => p,
                    Err(m) => return Verdict::Drop(DropReason::Malformed(m)),
                };
                true
            }
            None => false,
        };
        let clear: &[u8] = if decrypted { &self.plain } else { data };

        let admitted = if is_rtcp {
            let signalled = if me.remote.mux { me.remote.rtp } else { me.remote.rtcp };
            admit(&mut me.rtcp, src, signalled, now, config.relatch_after)
        } else {
            admit(&mut me.rtp, src, me.remote.rtp, now, config.relatch_after)
        };
        if !admitted {
            return Verdict::Drop(DropReason::ForeignSource);
        }
        match packet {
            Packet::Rtp(h) => {
                let arrival = now.saturating_duration_since(epoch).as_nanos() as f64 * f64::from(clock_rate) / 1e9;
                track(&mut me.stats, &mut me.seq, h.ssrc, h.sequence, h.timestamp, arrival as i64, clock_rate);
                me.stats.packets += 1;
                me.stats.bytes += data.len() as u64;
                if let Some(tap) = &mut me.tap {
                    let payload = clear.get(h.payload_start..h.payload_end).unwrap_or(&[]);
                    let (sent, dropped) = (tap.sent, tap.dropped);
                    tap.on_rtp(&h, payload);
                    self.counts.tap_frames += tap.sent - sent;
                    self.counts.tap_dropped += tap.dropped - dropped;
                    if tap.is_closed() {
                        me.tap = None;
                    }
                }
            }
            Packet::Rtcp { .. } => me.stats.rtcp_packets += 1,
        }
        s.last_activity = now;

        let other = sock.leg.other();
        let them = &mut s.legs[leg_index(other)];
        let (via_rtcp, to) = if is_rtcp && !them.remote.mux {
            let to = them.rtcp.map(|l| l.addr).or(them.remote.rtcp);
            (true, to)
        } else if is_rtcp {
            (false, them.rtcp.map(|l| l.addr).or(them.rtp.map(|l| l.addr)).or(them.remote.rtp))
        } else {
            (false, them.rtp.map(|l| l.addr).or(them.remote.rtp))
        };
        let to = match to {
            Some(to) if !to.ip().is_unspecified() && to.port() != 0 => to,
            _ => return Verdict::Drop(DropReason::NoDestination),
        };
        let via = Sock { stream: sock.stream, leg: other, rtcp: via_rtcp };
        // secure entry: the caller's DTMF never reaches the callee (see media::secure)
        let mut in_plain = decrypted;
        if let (Some(secure), Packet::Rtp(h), Leg::Caller) = (s.secure.as_deref_mut(), packet, sock.leg) {
            let te = h.payload_type & 0x7f;
            if s.setup.remote.iter().any(|r| r.telephone_event == Some(te)) {
                self.counts.events_suppressed += 1;
                return Verdict::Drop(DropReason::SecureEntry);
            }
            if let Some(law) = Law::from_pt(te) {
                let payload = clear.get(h.payload_start..h.payload_end).unwrap_or(&[]);
                if secure.check(law, payload) {
                    self.counts.tone_muted_samples += payload.len() as u64;
                    if !decrypted {
                        self.plain.clear();
                        self.plain.extend_from_slice(data);
                    }
                    if let Some(p) = self.plain.get_mut(h.payload_start..h.payload_end) {
                        p.fill(law.silence());
                    }
                    in_plain = true;
                }
            }
        }
        let clear: &[u8] = if in_plain { &self.plain } else { data };
        match &mut them.srtp_tx {
            Some(session) => {
                if session.protect(is_rtcp, clear, &mut self.out).is_err() {
                    return Verdict::Drop(DropReason::SrtpProtect);
                }
                Verdict::ForwardRewritten { via, to }
            }
            None if in_plain => {
                std::mem::swap(&mut self.out, &mut self.plain);
                Verdict::ForwardRewritten { via, to }
            }
            None => Verdict::Forward { via, to },
        }
    }

    // ----- time ----------------------------------------------------------------------------

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_tick;
        for &(id, l) in &self.playing {
            let due = self.streams.get(id).and_then(Option::as_ref).and_then(|s| s.legs[l].play.as_ref()?.deadline());
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_none_or(|t| t > now) {
            return;
        }
        self.next_tick = if self.active > 0 { Some(now + self.config.tick) } else { None };
        for (id, s) in self.streams.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            // not negotiated yet (no answer): nothing is expected to flow
            if s.legs.iter().any(|l| l.remote.rtp.is_none() && !l.remote.hold) {
                continue;
            }
            let hold = s.legs.iter().any(|l| l.remote.hold);
            let limit = if hold { self.config.hold_timeout } else { self.config.inactivity };
            if !s.reported && now.saturating_duration_since(s.last_activity) >= limit {
                s.reported = true;
                self.events.push(RelayEvent::Inactive { call: s.setup.call, stream: id });
            }
        }
        self.flush();
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop()
    }

    /// Adds the local counts to the shared metrics.
    pub fn flush(&mut self) {
        for (i, direction) in ["caller_to_callee", "callee_to_caller"].into_iter().enumerate() {
            let l = DirectionLabels { direction };
            if self.counts.packets[i] > 0 {
                self.metrics.packets.get_or_create(&l).inc_by(self.counts.packets[i]);
                self.metrics.bytes.get_or_create(&l).inc_by(self.counts.bytes[i]);
            }
        }
        for r in DropReason::ALL {
            let n = self.counts.drops[r.index()];
            if n > 0 {
                self.metrics.dropped.get_or_create(&ReasonLabels { reason: r.as_str() }).inc_by(n);
            }
        }
        self.metrics.tap_frames.inc_by(self.counts.tap_frames);
        self.metrics.tap_dropped.inc_by(self.counts.tap_dropped);
        self.metrics.played_packets.inc_by(self.counts.played);
        self.metrics.dtmf_events_suppressed.inc_by(self.counts.events_suppressed);
        // whole milliseconds go out; the remainder waits for the next flush
        let samples = self.counts.tone_muted_samples;
        self.metrics.tone_suppressed_ms.inc_by(samples / 8);
        self.counts = Counts { tone_muted_samples: samples % 8, ..Counts::default() };
    }
}

/// RFC 3550 A.1 sequence tracking (simplified: no probation; a new SSRC restarts the counts)
/// and A.8 jitter.
fn track(st: &mut LegStats, seq: &mut SeqState, ssrc: u32, sn: u16, ts: u32, arrival: i64, rate: u32) {
    if st.ssrc != Some(ssrc) {
        if st.ssrc.is_some() {
            st.ssrc_changes += 1;
        }
        st.ssrc = Some(ssrc);
        *seq = SeqState { base: u32::from(sn), max: sn, cycles: 0, received: 0, transit: None, jitter: 0.0 };
    } else {
        let delta = sn.wrapping_sub(seq.max);
        if delta < 0x8000 {
            if sn < seq.max {
                seq.cycles += 1 << 16;
            }
            seq.max = sn;
        }
    }
    seq.received += 1;
    let transit = arrival - i64::from(ts);
    if let Some(prev) = seq.transit {
        // RTP timestamps wrap at 2^32; compare modulo that.
        let d = ((transit - prev) as i32).unsigned_abs() as f64;
        seq.jitter += (d - seq.jitter) / 16.0;
    }
    seq.transit = Some(transit);
    let extended = u64::from(seq.cycles) + u64::from(seq.max);
    st.expected = extended + 1 - u64::from(seq.base);
    st.lost = st.expected as i64 - seq.received as i64;
    st.jitter_ms = seq.jitter * 1000.0 / f64::from(rate);
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // virtual time starts from one real instant
mod tests {
    use super::*;
    use crate::media::rtp::tests::{rtcp_rr, rtp};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const CALLER: &str = "192.0.2.10:4000";
    const CALLEE: &str = "198.51.100.20:5000";

    fn setup(mux: bool) -> StreamSetup {
        StreamSetup {
            call: 7,
            remote: [
                Remote { rtp: Some(addr(CALLER)), rtcp: Some(addr("192.0.2.10:4001")), mux, ..Remote::default() },
                Remote { rtp: Some(addr(CALLEE)), rtcp: Some(addr("198.51.100.20:5001")), ..Remote::default() },
            ],
            clock_rate: 8000,
        }
    }

    fn core() -> (RelayCore, Instant) {
        (RelayCore::new(RelayConfig::default(), MediaMetrics::default()), Instant::now())
    }

    fn rtp_sock(id: StreamId, leg: Leg) -> Sock {
        Sock { stream: id, leg, rtcp: false }
    }

    #[test]
    fn forwards_to_the_signalled_address_then_latches() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        // callee has not sent yet: caller's packet goes to callee's SDP address
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr("203.0.113.9:7000"), &rtp(0, 1, 0, 1, &[0; 160]));
        assert_eq!(v, Verdict::Forward { via: rtp_sock(id, Leg::Callee), to: addr(CALLEE) });
        // callee is behind NAT: its packets come from elsewhere; we latch and send there
        let nat = addr("198.51.100.99:6000");
        c.handle_packet(t0, rtp_sock(id, Leg::Callee), nat, &rtp(0, 1, 0, 2, &[0; 160]));
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr("203.0.113.9:7000"), &rtp(0, 2, 160, 1, &[0; 160]));
        assert_eq!(v, Verdict::Forward { via: rtp_sock(id, Leg::Callee), to: nat });
        // and the caller, latched on its NATed source, gets the callee's media there
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Callee), nat, &rtp(0, 2, 160, 2, &[0; 160]));
        assert_eq!(v, Verdict::Forward { via: rtp_sock(id, Leg::Caller), to: addr("203.0.113.9:7000") });
    }

    #[test]
    fn anti_hijack_and_relatch_policy() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        let real = addr("192.0.2.10:4500"); // NATed: not the address its SDP names
        let evil = addr("203.0.113.66:9999");
        let s = rtp_sock(id, Leg::Caller);
        assert!(matches!(c.handle_packet(t0, s, real, &rtp(0, 1, 0, 1, &[1])), Verdict::Forward { .. }));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(c.handle_packet(t1, s, evil, &rtp(0, 2, 0, 9, &[1])), Verdict::Drop(DropReason::ForeignSource));
        assert!(matches!(c.handle_packet(t1, s, real, &rtp(0, 2, 160, 1, &[1])), Verdict::Forward { .. }));
        // the real source goes quiet for relatch_after: a new source may take over (NAT rebinding)
        let t2 = t1 + RelayConfig::default().relatch_after;
        let moved = addr("192.0.2.10:4100");
        assert!(matches!(c.handle_packet(t2, s, moved, &rtp(0, 3, 320, 1, &[1])), Verdict::Forward { .. }));
        assert_eq!(
            c.handle_packet(t2, s, real, &rtp(0, 4, 480, 1, &[1])),
            Verdict::Drop(DropReason::ForeignSource),
            "the old source is now foreign"
        );
        // packets from the address the SDP names are always admitted (it is authoritative)
        let mut st = setup(false);
        st.remote[0].rtp = Some(addr("192.0.2.10:4200"));
        c.update_stream(t2, id, st);
        assert!(matches!(
            c.handle_packet(t2, s, addr("192.0.2.10:4200"), &rtp(0, 5, 640, 1, &[1])),
            Verdict::Forward { .. }
        ));
    }

    #[test]
    fn rtcp_goes_to_the_rtcp_port_or_over_mux() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(true)); // caller muxes, callee does not
                                                // caller sends RTCP on its RTP socket (mux): goes to callee's RTCP port from our RTCP socket
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &rtcp_rr(1));
        assert_eq!(
            v,
            Verdict::Forward { via: Sock { stream: id, leg: Leg::Callee, rtcp: true }, to: addr("198.51.100.20:5001") }
        );
        // callee's RTCP on our RTCP port: to the caller's RTP address (mux), from our RTP socket
        let v = c.handle_packet(
            t0,
            Sock { stream: id, leg: Leg::Callee, rtcp: true },
            addr("198.51.100.20:5001"),
            &rtcp_rr(2),
        );
        assert_eq!(v, Verdict::Forward { via: rtp_sock(id, Leg::Caller), to: addr(CALLER) });
        // RTP on an RTCP port is refused
        let v =
            c.handle_packet(t0, Sock { stream: id, leg: Leg::Callee, rtcp: true }, addr(CALLEE), &rtp(0, 1, 1, 1, &[]));
        assert_eq!(v, Verdict::Drop(DropReason::RtpOnRtcpPort));
    }

    #[test]
    fn malformed_unknown_and_undeliverable_are_counted() {
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[1] = Remote::default(); // callee has not answered yet
        let id = c.add_stream(t0, st);
        let s = rtp_sock(id, Leg::Caller);
        assert_eq!(
            c.handle_packet(t0, s, addr(CALLER), &[0x80]),
            Verdict::Drop(DropReason::Malformed(Malformed::TooShort))
        );
        assert_eq!(
            c.handle_packet(t0, s, addr(CALLER), &rtp(0, 1, 1, 1, &[])),
            Verdict::Drop(DropReason::NoDestination)
        );
        assert_eq!(
            c.handle_packet(t0, rtp_sock(id + 5, Leg::Caller), addr(CALLER), &rtp(0, 1, 1, 1, &[])),
            Verdict::Drop(DropReason::UnknownStream)
        );
        let m = c.metrics.clone();
        c.flush();
        let dropped = |r: &'static str| m.dropped.get_or_create(&ReasonLabels { reason: r }).get();
        assert_eq!((dropped("too_short"), dropped("no_destination"), dropped("unknown_stream")), (1, 1, 1));
    }

    #[test]
    fn flood_limit_per_leg() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        let burst = RelayConfig::default().flood_burst as usize;
        let s = rtp_sock(id, Leg::Caller);
        let fwd = (0..burst * 2)
            .filter(|i| {
                matches!(c.handle_packet(t0, s, addr(CALLER), &rtp(0, *i as u16, 0, 1, &[])), Verdict::Forward { .. })
            })
            .count();
        assert_eq!(fwd, burst);
        // 50 pps for a minute is never limited
        let mut t = t0 + Duration::from_secs(1);
        for i in 0..3000u16 {
            t += Duration::from_millis(20);
            assert!(matches!(c.handle_packet(t, s, addr(CALLER), &rtp(0, i, 0, 1, &[])), Verdict::Forward { .. }));
        }
    }

    #[test]
    fn ssrc_sequence_loss_and_jitter() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        let s = rtp_sock(id, Leg::Caller);
        // 100 packets at a perfect 20 ms, seq wrapping through 65535, two lost
        let mut t = t0;
        for i in 0..100u32 {
            let seq = (65500 + i) as u16;
            if i != 10 && i != 50 {
                c.handle_packet(t, s, addr(CALLER), &rtp(0, seq, i * 160, 0xabc, &[0; 160]));
            }
            t += Duration::from_millis(20);
        }
        let st = c.stats(id, Leg::Caller).unwrap();
        assert_eq!((st.expected, st.lost, st.packets, st.ssrc), (100, 2, 98, Some(0xabc)));
        assert!(st.jitter_ms < 0.5, "{}", st.jitter_ms);
        // SSRC change restarts the counts
        c.handle_packet(t, s, addr(CALLER), &rtp(0, 9, 0, 0xdef, &[0; 160]));
        let st = c.stats(id, Leg::Caller).unwrap();
        assert_eq!((st.ssrc_changes, st.expected, st.lost), (1, 1, 0));
        // 30 ms of extra delay on every other packet shows as jitter
        for i in 1..200u32 {
            let late = if i % 2 == 0 { Duration::from_millis(30) } else { Duration::ZERO };
            c.handle_packet(
                t + Duration::from_millis(20 * u64::from(i)) + late,
                s,
                addr(CALLER),
                &rtp(0, 9 + i as u16, i * 160, 0xdef, &[]),
            );
        }
        let j = c.stats(id, Leg::Caller).unwrap().jitter_ms;
        assert!((20.0..40.0).contains(&j), "{j}");
    }

    #[test]
    fn inactivity_fires_on_virtual_time_and_hold_extends_it() {
        let (mut c, t0) = core();
        let cfg = RelayConfig::default();
        let id = c.add_stream(t0, setup(false));
        let held = {
            let mut st = setup(false);
            st.call = 8;
            st.remote[1].hold = true;
            c.add_stream(t0, st)
        };
        let mut t = t0;
        // RTCP alone keeps a stream alive
        while t < t0 + cfg.inactivity * 2 {
            t += cfg.tick;
            c.handle_packet(t, Sock { stream: id, leg: Leg::Caller, rtcp: true }, addr("192.0.2.10:4001"), &rtcp_rr(1));
            c.handle_timeout(t);
        }
        assert_eq!(c.poll_event(), None);
        // silence: fires once, after `inactivity`
        let quiet = t;
        while t < quiet + cfg.inactivity * 3 {
            t = c.poll_timeout().unwrap();
            c.handle_timeout(t);
            if let Some(ev) = c.poll_event() {
                assert_eq!(ev, RelayEvent::Inactive { call: 7, stream: id });
                assert!(t >= quiet + cfg.inactivity && t <= quiet + cfg.inactivity + cfg.tick);
                break;
            }
        }
        assert!(t < quiet + cfg.inactivity * 3, "never fired");
        // the held stream stays up (hold timeout is an hour) until unhold, then times out normally
        c.handle_timeout(t + cfg.tick);
        assert_eq!(c.poll_event(), None);
        c.update_stream(t, held, {
            let mut st = setup(false);
            st.call = 8;
            st
        });
        let t = t + cfg.inactivity + cfg.tick * 2;
        c.handle_timeout(t);
        assert_eq!(c.poll_event(), Some(RelayEvent::Inactive { call: 8, stream: held }));
    }

    #[test]
    fn unanswered_streams_do_not_time_out_until_the_answer() {
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[1] = Remote::default(); // offer forwarded, no answer yet
        let id = c.add_stream(t0, st);
        let late = t0 + RelayConfig::default().inactivity * 5;
        c.handle_timeout(late);
        assert_eq!(c.poll_event(), None, "ringing for minutes is normal");
        c.update_stream(late, id, setup(false)); // the answer arrives: the clock starts
        c.handle_timeout(late + RelayConfig::default().inactivity);
        assert_eq!(c.poll_event(), Some(RelayEvent::Inactive { call: 7, stream: id }));
    }

    #[test]
    fn reinvite_moving_a_stream_clears_the_latch() {
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        c.handle_packet(t0, rtp_sock(id, Leg::Callee), addr(CALLEE), &rtp(0, 1, 0, 2, &[]));
        // re-INVITE from the callee: new address
        let mut st = setup(false);
        st.remote[1].rtp = Some(addr("198.51.100.21:5100"));
        c.update_stream(t0, id, st);
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &rtp(0, 1, 0, 1, &[]));
        assert_eq!(v, Verdict::Forward { via: rtp_sock(id, Leg::Callee), to: addr("198.51.100.21:5100") });
        // and packets from the new address are admitted at once
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Callee), addr("198.51.100.21:5100"), &rtp(0, 2, 0, 2, &[]));
        assert!(matches!(v, Verdict::Forward { .. }));
    }

    #[test]
    fn tap_sees_forwarded_audio_only_and_never_blocks() {
        use crate::media::tap::{TapEvent, TapFrame};
        let (mut c, t0) = core();
        let id = c.add_stream(t0, setup(false));
        let s = rtp_sock(id, Leg::Caller);
        // before the tap is opened nothing is handed anywhere
        c.handle_packet(t0, s, addr(CALLER), &rtp(0, 1, 0, 1, &[0xff; 160]));
        let (tx, rx) = std::sync::mpsc::sync_channel::<TapFrame>(1);
        c.set_tap(id, Leg::Caller, Some(LegTap::new(7, 0, Leg::Caller, None, tx)));
        for i in 2..6u16 {
            let v = c.handle_packet(t0, s, addr(CALLER), &rtp(0, i, u32::from(i) * 160, 1, &[0xff; 160]));
            assert!(matches!(v, Verdict::Forward { .. }), "forwarding goes on with a full tap queue");
        }
        // a hijacker's packets are not tapped
        c.handle_packet(t0, s, addr("203.0.113.66:1"), &rtp(0, 9, 0, 1, &[0; 160]));
        let got: Vec<TapFrame> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].event, TapEvent::Audio { .. }));
        let m = c.metrics.clone();
        c.flush();
        assert_eq!((m.tap_frames.get(), m.tap_dropped.get()), (1, 3));
    }

    #[test]
    fn malformed_extension_toward_an_srtp_leg_is_dropped_not_a_panic() {
        // the fuzz crash: a plain carrier's packet that rtc-srtp could not encrypt without
        // slicing past its end, on its way to an SRTP PBX
        use crate::media::srtp::{tests::EXT_OVERRUN, SrtpKey};
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[1].srtp_tx = Some(SrtpKey::generate(false));
        let id = c.add_stream(t0, st);
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &EXT_OVERRUN);
        assert_eq!(v, Verdict::Drop(DropReason::SrtpProtect));
        // and the stream goes on
        let ok = rtp(0, 8, 1280, 0x1234, &[0x55; 160]);
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &ok);
        assert_eq!(v, Verdict::ForwardRewritten { via: rtp_sock(id, Leg::Callee), to: addr(CALLEE) });
    }

    #[test]
    fn srtp_carrier_to_plain_pbx_and_back() {
        use crate::media::srtp::SrtpKey;
        use crate::media::tap::{TapEvent, TapFrame};
        let (mut c, t0) = core();
        let carrier_key = SrtpKey::generate(false); // from the carrier's SDP
        let our_key = SrtpKey::generate(false); // what callveil told the carrier
        let mut st = setup(false);
        st.remote[0].srtp_rx = Some(carrier_key);
        st.remote[0].srtp_tx = Some(our_key);
        let id = c.add_stream(t0, st);
        let (tx, rx) = std::sync::mpsc::sync_channel::<TapFrame>(8);
        c.set_tap(id, Leg::Caller, Some(LegTap::new(7, 0, Leg::Caller, None, tx)));
        // the carrier encrypts with its key (rtc-srtp used directly, as the far end would)
        let mut carrier_tx = crate::media::srtp::Session::new(carrier_key).unwrap();
        let plain = rtp(0, 1, 160, 0x77, &[0xff; 160]);
        let mut sealed = Vec::new();
        carrier_tx.protect(false, &plain, &mut sealed).unwrap();
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &sealed);
        assert_eq!(v, Verdict::ForwardRewritten { via: rtp_sock(id, Leg::Callee), to: addr(CALLEE) });
        assert_eq!(c.rewritten(), &plain[..], "the PBX gets plain RTP");
        assert!(
            matches!(rx.try_recv().unwrap().event, TapEvent::Audio { ref samples, .. } if samples == &vec![0; 160])
        );
        // a replay or a forgery is dropped, and does not latch
        assert_eq!(
            c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr(CALLER), &sealed),
            Verdict::Drop(DropReason::SrtpAuth)
        );
        assert_eq!(
            c.handle_packet(t0, rtp_sock(id, Leg::Caller), addr("203.0.113.5:1"), &plain),
            Verdict::Drop(DropReason::SrtpAuth)
        );
        // the PBX answers in plain RTP; the carrier gets it encrypted with our key
        let back = rtp(0, 9, 0, 0x88, &[0xd5; 160]);
        let v = c.handle_packet(t0, rtp_sock(id, Leg::Callee), addr(CALLEE), &back);
        assert!(matches!(v, Verdict::ForwardRewritten { .. }));
        let mut carrier_rx = crate::media::srtp::Session::new(our_key).unwrap();
        let mut opened = Vec::new();
        carrier_rx.unprotect(false, c.rewritten(), &mut opened).unwrap();
        assert_eq!(opened, back);
        // SRTCP too
        let mut srtcp = Vec::new();
        carrier_tx.protect(true, &rtcp_rr(0x77), &mut srtcp).unwrap();
        let v = c.handle_packet(t0, Sock { stream: id, leg: Leg::Caller, rtcp: true }, addr("192.0.2.10:4001"), &srtcp);
        assert!(matches!(v, Verdict::ForwardRewritten { .. }));
        assert_eq!(c.rewritten(), &rtcp_rr(0x77)[..]);
    }

    #[test]
    fn tap_sees_received_packets_before_the_callee_is_known() {
        use crate::media::tap::{TapEvent, TapFrame};
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[1] = Remote::default(); // IVR: the callee has not even been asked yet
        let id = c.add_stream(t0, st);
        let (tx, rx) = std::sync::mpsc::sync_channel::<TapFrame>(8);
        c.set_tap(id, Leg::Caller, Some(LegTap::new(7, 0, Leg::Caller, Some(101), tx)));
        let s = rtp_sock(id, Leg::Caller);
        assert_eq!(
            c.handle_packet(t0, s, addr(CALLER), &rtp(0, 1, 0, 1, &[0xff; 160])),
            Verdict::Drop(DropReason::NoDestination)
        );
        assert_eq!(
            c.handle_packet(t0, s, addr(CALLER), &rtp(101, 2, 160, 1, &[5, 0x0a, 0, 160])),
            Verdict::Drop(DropReason::NoDestination)
        );
        let got: Vec<TapEvent> = rx.try_iter().map(|f| f.event).collect();
        assert!(matches!(got[0], TapEvent::Audio { .. }));
        assert!(matches!(got[1], TapEvent::TelephoneEvent { .. }), "the consent gate gets the caller's key press");
        // a hijacker is still not tapped
        c.handle_packet(t0, s, addr("203.0.113.66:1"), &rtp(0, 3, 320, 1, &[0; 160]));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn prompt_playout_is_paced_by_poll_timeout() {
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[0].codec = Some(8);
        let id = c.add_stream(t0, st);
        assert!(!c.play(t0, id, Leg::Callee, vec![0i16; 800].into()), "no codec known toward the callee");
        assert!(c.play(t0, id, Leg::Caller, vec![1000i16; 800].into())); // 100 ms: 5 packets
        let mut sent = Vec::new();
        let mut t = t0;
        while let Some(due) = c.poll_timeout().filter(|d| *d < t0 + Duration::from_millis(500)) {
            t = t.max(due);
            c.handle_timeout(t);
            while let Some((via, to)) = c.poll_transmit(t) {
                assert_eq!((via, to), (rtp_sock(id, Leg::Caller), addr(CALLER)));
                sent.push((t, c.rewritten().to_vec()));
            }
            if c.poll_timeout() == Some(t) {
                break;
            }
        }
        assert_eq!(sent.len(), 5);
        for (i, (at, p)) in sent.iter().enumerate() {
            assert_eq!(*at, t0 + Duration::from_millis(20 * i as u64));
            let Ok(Packet::Rtp(h)) = rtp::classify(p) else { panic!("not RTP") };
            assert_eq!((h.payload_type, h.marker), (8, i == 0));
            let Ok(Packet::Rtp(first)) = rtp::classify(&sent[0].1) else { panic!() };
            assert_eq!(h.sequence, first.sequence.wrapping_add(i as u16));
            assert_eq!(h.timestamp, first.timestamp.wrapping_add(160 * i as u32));
        }
        let m = c.metrics.clone();
        c.flush();
        assert_eq!(m.played_packets.get(), 5);
        // a new prompt replaces the old; stop ends it
        assert!(c.play(t, id, Leg::Caller, vec![0i16; 8000].into()));
        assert!(c.play(t, id, Leg::Caller, vec![0i16; 8000].into()));
        assert!(c.poll_transmit(t).is_some());
        assert!(c.poll_transmit(t).is_none(), "one playout, not two");
        c.stop_play(id, Leg::Caller);
        assert!(c.poll_transmit(t + Duration::from_secs(1)).is_none());
        assert!(c.play(t, id, Leg::Caller, vec![0i16; 8000].into()));
        c.remove_stream(id);
        assert!(c.poll_transmit(t + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn prompts_toward_an_srtp_leg_are_encrypted() {
        use crate::media::srtp::{Session, SrtpKey};
        let (mut c, t0) = core();
        let ours = SrtpKey::generate(false);
        let mut st = setup(false);
        st.remote[0].codec = Some(0);
        st.remote[0].srtp_tx = Some(ours);
        let id = c.add_stream(t0, st);
        assert!(c.play(t0, id, Leg::Caller, vec![500i16; 320].into()));
        let mut rx = Session::new(ours).unwrap();
        let mut opened = Vec::new();
        for i in 0..2u64 {
            let t = t0 + Duration::from_millis(20 * i);
            assert!(c.poll_transmit(t).is_some());
            rx.unprotect(false, c.rewritten(), &mut opened).unwrap();
            let Ok(Packet::Rtp(h)) = rtp::classify(&opened) else { panic!("not RTP") };
            assert_eq!((h.payload_type, h.payload_end - h.payload_start), (0, 160));
        }
    }

    #[test]
    fn secure_entry_drops_telephone_events_and_off_is_byte_exact() {
        let (mut c, t0) = core();
        let mut st = setup(false);
        st.remote[0].telephone_event = Some(101);
        let id = c.add_stream(t0, st);
        let s = rtp_sock(id, Leg::Caller);
        let speechish: Vec<u8> = (0..160u32).map(|i| (i * 37 % 251) as u8).collect();
        let ev = rtp(101, 1, 0, 1, &[5, 0x0a, 0, 160]);
        assert!(matches!(c.handle_packet(t0, s, addr(CALLER), &ev), Verdict::Forward { .. }), "off: relayed");
        let a = rtp(0, 2, 160, 1, &speechish);
        assert!(matches!(c.handle_packet(t0, s, addr(CALLER), &a), Verdict::Forward { .. }));
        c.set_secure(id, true);
        assert_eq!(c.handle_packet(t0, s, addr(CALLER), &ev), Verdict::Drop(DropReason::SecureEntry));
        // the callee's events still reach the caller; only caller → callee is filtered
        assert!(matches!(c.handle_packet(t0, rtp_sock(id, Leg::Callee), addr(CALLEE), &ev), Verdict::Forward { .. }));
        // audio without tone passes untouched (the same bytes, not a rewrite)
        let a = rtp(0, 3, 320, 1, &speechish);
        assert!(matches!(c.handle_packet(t0, s, addr(CALLER), &a), Verdict::Forward { .. }));
        c.set_secure(id, false);
        assert!(matches!(c.handle_packet(t0, s, addr(CALLER), &ev), Verdict::Forward { .. }));
        let m = c.metrics.clone();
        c.flush();
        assert_eq!(m.dtmf_events_suppressed.get(), 1);
        assert_eq!(m.dropped.get_or_create(&ReasonLabels { reason: "secure_entry" }).get(), 1);
    }

    proptest::proptest! {
        /// Hostile packets on a stream with every extra on (tap, prompt, secure entry, SRTP
        /// toward the callee) are dropped or relayed, never a panic.
        #[test]
        fn hostile_packets_with_everything_on(
            packets in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..400), 1..40)
        ) {
            let (mut c, t0) = core();
            let mut st = setup(false);
            st.remote[0].codec = Some(0);
            st.remote[0].telephone_event = Some(101);
            st.remote[1].srtp_tx = Some(crate::media::srtp::SrtpKey::generate(false));
            let id = c.add_stream(t0, st);
            let (tx, _rx) = std::sync::mpsc::sync_channel(4);
            c.set_tap(id, Leg::Caller, Some(LegTap::new(7, 0, Leg::Caller, Some(101), tx)));
            c.set_secure(id, true);
            c.play(t0, id, Leg::Caller, vec![100i16; 1000].into());
            for (i, mut p) in packets.into_iter().enumerate() {
                if i % 2 == 0 && p.len() >= 12 {
                    p[0] = 0x80; // mostly valid RTP, so the deeper paths run
                    p[1] &= 0x7f;
                }
                let t = t0 + Duration::from_millis(5 * i as u64);
                let _ = c.handle_packet(t, rtp_sock(id, Leg::Caller), addr(CALLER), &p);
                while c.poll_transmit(t).is_some() {}
            }
        }
    }

    #[test]
    fn removed_streams_free_their_slot() {
        let (mut c, t0) = core();
        let a = c.add_stream(t0, setup(false));
        assert!(c.remove_stream(a).is_some());
        assert!(c.remove_stream(a).is_none());
        assert_eq!(c.active_streams(), 0);
        let b = c.add_stream(t0, setup(false));
        assert_eq!(a, b);
        assert_eq!(
            c.handle_packet(t0, rtp_sock(b + 1, Leg::Caller), addr(CALLER), &rtp(0, 1, 1, 1, &[])),
            Verdict::Drop(DropReason::UnknownStream)
        );
    }
}
