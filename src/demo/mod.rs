//! The simulated world around callveil for `callveil demo`: a carrier user agent that places a
//! call ([`carrier`]) and a PBX/agent user agent that answers it ([`pbx`]), plus the checks run on
//! what the vault stored afterwards ([`check`]).
//!
//! These are drivers, not part of the proxy: each user agent owns its UDP sockets and reads the
//! clock (Tokio's) to pace RTP at 20 ms and to run its SIP retransmission timers. They speak just
//! enough SIP (RFC 3261 UAC/UAS for one INVITE dialog over UDP), SDP (PCMU + telephone-event) and
//! RTP (RFC 3550, RFC 4733 events) to drive one call through callveil on loopback; they are not a
//! general SIP stack and nothing in the proxy depends on them. Messages they receive are parsed
//! with callveil's own parser, which never panics on bad input.

pub mod carrier;
pub mod check;
pub mod pbx;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::sip::message::Message;

/// RTP payload type of G.711 µ-law (static, RFC 3551).
pub const PT_PCMU: u8 = 0;
/// Dynamic payload type the demo offers for telephone-event (RFC 4733).
pub const PT_EVENT: u8 = 101;
/// Samples (and RTP timestamp units) in one 20 ms PCMU packet.
pub const FRAME_SAMPLES: usize = 160;
/// RTP packet interval.
pub const PTIME: Duration = Duration::from_millis(20);

/// Why a simulated user agent gave up. Messages name the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("socket error while {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("no answer from {who} to {what} within {secs} s")]
    Timeout { who: &'static str, what: &'static str, secs: u64 },
    #[error("the call was rejected: {code} {reason}")]
    Rejected { code: u16, reason: String },
    #[error("{0} has no usable SDP (need c= and m=audio with PCMU)")]
    BadSdp(&'static str),
    #[error("callveil ended the call before the demo did ({0})")]
    RemoteBye(&'static str),
    #[error("audio file {path}: {problem}")]
    Audio { path: String, problem: String },
}

pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DemoError {
    move |source| DemoError::Io { what, source }
}

/// An SDP offer or answer for one PCMU audio stream at `addr` (with telephone-event when
/// `events`), ptime 20.
pub fn sdp(addr: SocketAddr, session_id: u64, events: bool) -> String {
    let ip = addr.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=callveil-demo {session_id} {session_id} IN {family} {ip}\r\ns=callveil demo\r\n\
         c=IN {family} {ip}\r\nt=0 0\r\n"
    );
    if events {
        s.push_str(&format!(
            "m=audio {} RTP/AVP {PT_PCMU} {PT_EVENT}\r\na=rtpmap:{PT_PCMU} PCMU/8000\r\n\
             a=rtpmap:{PT_EVENT} telephone-event/8000\r\na=fmtp:{PT_EVENT} 0-16\r\n",
            addr.port()
        ));
    } else {
        s.push_str(&format!("m=audio {} RTP/AVP {PT_PCMU}\r\na=rtpmap:{PT_PCMU} PCMU/8000\r\n", addr.port()));
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

/// Where an SDP body wants audio sent: the session (or media) `c=` address and the `m=audio`
/// port. `None` when either is missing or unparsable, or when PCMU is not offered.
pub fn sdp_media_addr(body: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut in_audio = false;
    for line in text.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            in_audio = false;
            let mut f = rest.split_whitespace();
            if f.next() == Some("audio") && port.is_none() {
                let p: u16 = f.next()?.parse().ok()?;
                let _proto = f.next()?;
                if !f.any(|pt| pt == "0") {
                    return None;
                }
                port = Some(p);
                in_audio = true;
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            // a media-level c= line overrides the session's; one before any m= is the session's
            if port.is_none() || in_audio {
                ip = rest.split_whitespace().nth(2).and_then(|a| a.parse().ok());
            }
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// A response to `req` with an SDP body (the builder in `sip::message::build` writes no body).
pub fn response_with_sdp(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
    sdp: &str,
) -> Vec<u8> {
    let mut out = crate::sip::message::response(req, code, reason, Some(to_tag), extra);
    let tail = b"Content-Length: 0\r\n\r\n";
    out.truncate(out.len() - tail.len());
    out.extend_from_slice(
        format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()).as_bytes(),
    );
    out
}

/// One outgoing RTP stream: SSRC, sequence number and timestamp, advanced per 20 ms tick.
#[derive(Debug, Clone)]
pub struct RtpStream {
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// The next audio packet starts a talkspurt (RFC 3551 §4.1: marker bit).
    talkspurt: bool,
}

impl RtpStream {
    pub fn new(ssrc: u32, seq: u16, ts: u32) -> RtpStream {
        RtpStream { ssrc, seq, ts, talkspurt: true }
    }

    fn header(&mut self, pt: u8, marker: bool, ts: u32) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + FRAME_SAMPLES);
        p.push(0x80);
        p.push(pt | if marker { 0x80 } else { 0 });
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        p
    }

    /// One 20 ms PCMU packet; the media clock moves on by one frame.
    pub fn audio(&mut self, payload: &[u8]) -> Vec<u8> {
        let marker = std::mem::take(&mut self.talkspurt);
        let ts = self.ts;
        let mut p = self.header(PT_PCMU, marker, ts);
        p.extend_from_slice(payload);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        p
    }

    /// The packets of one key press (RFC 4733 §2.5): `frames` packets 20 ms apart with the
    /// event's start timestamp and a growing duration (the first with the marker bit), then the
    /// end packet three times (new sequence numbers, same duration). The caller sends them one
    /// per tick; the media clock moves on by the event's length, so audio resumes in step.
    pub fn key_press(&mut self, event: u8, frames: u16) -> Vec<Vec<u8>> {
        let start = self.ts;
        let frames = frames.max(1);
        let mut out = Vec::new();
        for i in 1..=frames {
            let dur = i * FRAME_SAMPLES as u16;
            let mut p = self.header(PT_EVENT, i == 1, start);
            p.extend_from_slice(&[event, 10, (dur >> 8) as u8, dur as u8]);
            out.push(p);
        }
        let dur = frames * FRAME_SAMPLES as u16;
        for _ in 0..3 {
            let mut p = self.header(PT_EVENT, false, start);
            // E bit set, volume 10 (-10 dBm0)
            p.extend_from_slice(&[event, 0x80 | 10, (dur >> 8) as u8, dur as u8]);
            out.push(p);
        }
        // the end packets take ticks too: audio after them is `frames + 3` frames later
        self.ts = start.wrapping_add(u32::from(frames + 3) * FRAME_SAMPLES as u32);
        self.talkspurt = true;
        out
    }
}

/// A received RTP packet's payload type, sequence number and payload; `None` if it is not RTP
/// version 2 or is too short (padding, CSRCs and header extensions are honoured).
pub fn parse_rtp(p: &[u8]) -> Option<(u8, u16, &[u8])> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(p[0] & 0x0f);
    let mut at = 12 + 4 * cc;
    if p[0] & 0x10 != 0 {
        let len = usize::from(u16::from_be_bytes([*p.get(at + 2)?, *p.get(at + 3)?]));
        at += 4 + 4 * len;
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    let payload = p.get(at..end)?;
    Some((p[1] & 0x7f, u16::from_be_bytes([p[2], p[3]]), payload))
}

/// Linear PCM16 to G.711 µ-law (ITU-T G.711, with the usual bias of 0x84).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    let s = s.min(CLIP) + BIAS;
    // the segment is the position of the highest set bit above bit 7 (s >> 7 is 1..=255)
    let exponent = (31 - ((s >> 7) as u32).max(1).leading_zeros()) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Reads an 8 kHz mono WAV (PCM16, µ-law or A-law) and encodes it as µ-law, padded with µ-law
/// silence to whole 20 ms frames.
pub fn load_ulaw(path: &std::path::Path) -> Result<Vec<u8>, DemoError> {
    let err = |problem: String| DemoError::Audio { path: path.display().to_string(), problem };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let audio = crate::redact::wav::read(&bytes).map_err(|e| err(e.to_string()))?;
    if audio.rate != 8000 || audio.channels.len() != 1 {
        return Err(err(format!("need 8 kHz mono, found {} Hz, {} channel(s)", audio.rate, audio.channels.len())));
    }
    let mut out: Vec<u8> = audio.channels[0].iter().map(|&s| linear_to_ulaw(s)).collect();
    let rem = out.len() % FRAME_SAMPLES;
    if rem != 0 {
        out.resize(out.len() + FRAME_SAMPLES - rem, linear_to_ulaw(0));
    }
    Ok(out)
}

/// Whether `sent` (µ-law payload bytes) arrived whole and unaltered, in order, somewhere in
/// `received` (everything one side got, prompt and silence included).
pub fn audio_arrived(received: &[u8], sent: &[u8]) -> bool {
    !sent.is_empty() && received.windows(sent.len()).any(|w| w == sent)
}

/// A random token for tags, branches and Call-IDs.
pub(crate) fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::rfc4733::EventTracker;
    use crate::media::g711::ULAW;

    #[test]
    fn ulaw_round_trips_within_quantisation() {
        for s in [-32768i16, -20000, -1000, -100, -1, 0, 1, 100, 1000, 20000, 32767] {
            let back = ULAW[usize::from(linear_to_ulaw(s))];
            let err = (i32::from(back) - i32::from(s)).abs();
            assert!(err <= (i32::from(s).abs() / 16).max(8) + 132, "{s} -> {back}");
        }
        assert_eq!(linear_to_ulaw(0), 0xff, "µ-law silence");
    }

    #[test]
    fn sdp_round_trip() {
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(sdp_media_addr(sdp(a, 1, true).as_bytes()), Some(a));
        assert_eq!(sdp_media_addr(sdp(a, 1, false).as_bytes()), Some(a));
        assert_eq!(sdp_media_addr(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 8\r\n"), None, "no PCMU");
        assert_eq!(sdp_media_addr(b"v=0\r\nm=audio 9 RTP/AVP 0\r\n"), None, "no c=");
        assert_eq!(sdp_media_addr(&[0xff, 0xfe]), None);
        let media_level = b"v=0\r\nc=IN IP4 1.1.1.1\r\nm=audio 7000 RTP/AVP 0\r\nc=IN IP4 2.2.2.2\r\n";
        assert_eq!(sdp_media_addr(media_level), Some("2.2.2.2:7000".parse().unwrap()));
    }

    #[test]
    fn key_press_is_one_event_to_the_tracker_and_keeps_the_clock() {
        let mut s = RtpStream::new(7, 65534, 1000);
        let first = s.audio(&[0xff; FRAME_SAMPLES]);
        assert_eq!(first[1], 0x80, "marker on the first audio packet");
        let pkts = s.key_press(1, 5);
        assert_eq!(pkts.len(), 8);
        assert_eq!(pkts[0][1], 0x80 | PT_EVENT, "marker on the event's first packet");
        assert!(pkts[1..].iter().all(|p| p[1] == PT_EVENT));
        let mut t = EventTracker::new(8000, 1000);
        for p in &pkts {
            let (pt, seq, payload) = parse_rtp(p).unwrap();
            assert_eq!(pt, PT_EVENT);
            assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 1160, "event start timestamp");
            t.feed(1160, seq, payload).unwrap();
        }
        let events: Vec<_> = std::iter::from_fn(|| t.poll_event()).collect();
        assert_eq!(events.len(), 1, "one key press");
        assert_eq!(events[0].digit.event_code(), 1);
        let next = s.audio(&[0xff; FRAME_SAMPLES]);
        assert_eq!(next[1], 0x80, "audio after an event starts a talkspurt");
        assert_eq!(u32::from_be_bytes([next[4], next[5], next[6], next[7]]), 1160 + 8 * 160);
    }

    #[test]
    fn parse_rtp_rejects_garbage() {
        assert_eq!(parse_rtp(&[0x80; 11]), None);
        assert_eq!(parse_rtp(&[0x40; 20]), None, "version 1");
        let mut p = RtpStream::new(1, 2, 3).audio(&[1, 2, 3]);
        assert_eq!(parse_rtp(&p), Some((PT_PCMU, 2, &[1u8, 2, 3][..])));
        p[0] |= 0x20; // padding bigger than the packet
        *p.last_mut().unwrap() = 200;
        assert_eq!(parse_rtp(&p), None);
    }
}
