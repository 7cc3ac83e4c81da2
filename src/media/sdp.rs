//! SDP reading and rewriting for media anchoring (RFC 4566, RFC 3264, RFC 3605, RFC 5761).
//!
//! [`parse`] extracts what the relay needs from a description: per m-line the media type,
//! transport, port, connection address, RTCP port, rtcp-mux, direction, codecs and SDES crypto
//! lines. [`rewrite`] produces the description to forward: every `c=` names callveil's advertised
//! address, every anchored `m=` names one of callveil's ports, `a=rtcp:` is moved to callveil's
//! RTCP port, and ICE attributes (`a=candidate` and friends) are removed because a peer that
//! runs ICE against the far side's candidates would route media around callveil. Every other
//! byte, including line endings and unknown attributes, is forwarded unchanged.
//!
//! It does not allocate ports or decide policy; [`crate::media::anchor`] does that.

use std::net::IpAddr;

use crate::sip::sdp::AnchorError;

/// Largest description accepted; SIP bodies are bounded already, this guards direct callers.
const MAX_SDP: usize = 64 * 1024;
/// More m-lines than any real call uses; each costs four sockets.
pub const MAX_MEDIA: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A codec from the m-line format list, with its `a=rtpmap` if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub pt: u8,
    /// Encoding name, upper-cased (`PCMU`, `PCMA`, `TELEPHONE-EVENT`...); static payload types
    /// without rtpmap get their RFC 3551 name.
    pub name: String,
    pub clock_rate: u32,
}

/// One `a=crypto` line (RFC 4568), kept as text: the key is secret and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    /// `inline:<base64 key||salt>[|lifetime][|MKI]` and session parameters, unparsed.
    pub key_params: String,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypto {{ tag: {}, suite: {}, key: {{REDACTED}} }}", self.tag, self.suite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    pub media: String,
    pub port: u16,
    pub proto: String,
    /// Connection address (media-level `c=` or else the session's).
    pub addr: Option<IpAddr>,
    /// `a=rtcp:` port and optional address (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub rtcp_mux: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub crypto: Vec<Crypto>,
}

impl MediaDesc {
    /// Transports callveil can relay: RTP profiles over UDP and UDPTL (T.38). TCP-based media
    /// cannot be anchored by a UDP relay.
    pub fn anchorable(&self) -> bool {
        let p = self.proto.to_ascii_uppercase();
        !p.contains("TCP") && (p.starts_with("RTP/") || p.starts_with("UDP"))
    }

    pub fn is_srtp(&self) -> bool {
        self.proto.to_ascii_uppercase().starts_with("RTP/SAVP")
    }

    /// RFC 3264 §8.4 hold: direction other than sendrecv, or a zero connection address.
    pub fn on_hold(&self) -> bool {
        self.direction != Direction::SendRecv || self.addr.is_some_and(|a| a.is_unspecified())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub media: Vec<MediaDesc>,
}

fn bad(why: &str) -> AnchorError {
    AnchorError::NotAcceptable(why.to_string())
}

/// Lines with their terminators (`\r\n`, `\n` or none at the end), so rewriting can keep them.
fn lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_inclusive('\n').map(|raw| {
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        (body, &raw[body.len()..])
    })
}

fn parse_conn(value: &str) -> Result<Option<IpAddr>, AnchorError> {
    // c=<nettype> <addrtype> <connection-address>; multicast may carry /ttl/count.
    let mut it = value.split_ascii_whitespace();
    let (Some(net), Some(_kind), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("c= line needs three fields"));
    };
    if net != "IN" {
        return Err(bad("c= network type is not IN"));
    }
    let addr = addr.split('/').next().unwrap_or(addr);
    // A hostname is legal SDP but callveil does not resolve names on the signaling path.
    Ok(addr.parse().ok())
}

fn static_codec(pt: u8) -> (&'static str, u32) {
    match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        _ => ("", 8000),
    }
}

/// Reads a description. Errors name what is wrong, never the content.
pub fn parse(sdp: &[u8]) -> Result<Description, AnchorError> {
    if sdp.len() > MAX_SDP {
        return Err(bad("SDP too large"));
    }
    crate::sip::sdp::check(sdp)?;
    let text = std::str::from_utf8(sdp).map_err(|_| bad("SDP is not UTF-8"))?;
    let mut session_addr: Option<IpAddr> = None;
    let mut session_dir = Direction::SendRecv;
    let mut media: Vec<MediaDesc> = Vec::new();
    // per-media: whether a media-level c= or direction was seen
    let mut own_addr: Vec<bool> = Vec::new();
    let mut own_dir: Vec<bool> = Vec::new();
    for (line, _) in lines(text) {
        if line.len() < 2 {
            continue;
        }
        let (kind, value) = (line.as_bytes()[0], &line[2..]);
        match kind {
            b'm' => {
                if media.len() >= MAX_MEDIA {
                    return Err(bad("too many m= lines"));
                }
                let mut it = value.split_ascii_whitespace();
                let (Some(m), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
                    return Err(bad("m= line needs media, port and proto"));
                };
                let port = port.split('/').next().unwrap_or(port);
                let port: u16 = port.parse().map_err(|_| bad("m= port is not a number"))?;
                let mut codecs = Vec::new();
                for f in it {
                    if let Ok(pt) = f.parse::<u8>() {
                        if pt < 128 {
                            let (name, rate) = static_codec(pt);
                            codecs.push(Codec { pt, name: name.to_string(), clock_rate: rate });
                        }
                    }
                }
                media.push(MediaDesc {
                    media: m.to_string(),
                    port,
                    proto: proto.to_string(),
                    addr: session_addr,
                    rtcp: None,
                    rtcp_mux: false,
                    direction: session_dir,
                    codecs,
                    crypto: Vec::new(),
                });
                own_addr.push(false);
                own_dir.push(false);
            }
            b'c' => {
                let addr = parse_conn(value)?;
                match media.last_mut() {
                    Some(md) => {
                        md.addr = addr;
                        if let Some(o) = own_addr.last_mut() {
                            *o = true;
                        }
                    }
                    None => session_addr = addr,
                }
            }
            b'a' => {
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                let dir = match name {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                let Some(md) = media.last_mut() else {
                    if let Some(d) = dir {
                        session_dir = d;
                    }
                    continue;
                };
                if let Some(d) = dir {
                    md.direction = d;
                    if let Some(o) = own_dir.last_mut() {
                        *o = true;
                    }
                    continue;
                }
                match name {
                    "rtcp" => {
                        let mut it = arg.split_ascii_whitespace();
                        let port: u16 = it.next().and_then(|p| p.parse().ok()).ok_or_else(|| bad("a=rtcp port"))?;
                        let addr = match (it.next(), it.next(), it.next()) {
                            (Some(net), Some(kind), Some(a)) => parse_conn(&format!("{net} {kind} {a}"))?,
                            _ => None,
                        };
                        md.rtcp = Some((port, addr));
                    }
                    "rtcp-mux" => md.rtcp_mux = true,
                    "rtpmap" => {
                        let mut it = arg.splitn(2, ' ');
                        let pt = it.next().and_then(|p| p.parse::<u8>().ok());
                        let enc = it.next().unwrap_or("");
                        let mut parts = enc.split('/');
                        let name = parts.next().unwrap_or("").to_ascii_uppercase();
                        let rate = parts.next().and_then(|r| r.trim().parse::<u32>().ok()).unwrap_or(8000);
                        if let Some(c) = pt.and_then(|pt| md.codecs.iter_mut().find(|c| c.pt == pt)) {
                            c.name = name;
                            c.clock_rate = rate.max(1);
                        }
                    }
                    "crypto" => {
                        let mut it = arg.splitn(3, ' ');
                        let tag = it.next().and_then(|t| t.parse().ok());
                        let suite = it.next();
                        let key = it.next();
                        if let (Some(tag), Some(suite), Some(key)) = (tag, suite, key) {
                            md.crypto.push(Crypto { tag, suite: suite.to_string(), key_params: key.to_string() });
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // A session-level direction or c= after the first m= is not legal; the first-seen values
    // already apply. Nothing more to fix up.
    Ok(Description { media })
}

/// What to write for one m-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPlan {
    /// Anchored on callveil: this RTP port, RTCP on the next one.
    Anchor(u16),
    /// Rejected or unanchorable: port 0 (RFC 3264 §6).
    Reject,
    /// Port 0 in the input: left as it is.
    Keep,
}

/// What to do with a media line's `a=crypto` attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CryptoPlan {
    #[default]
    Keep,
    /// Remove them all (the stream goes out as plain RTP).
    Remove,
    /// Replace them all with this one attribute value (callveil's own key).
    Replace(String),
}

/// What to write for one m-line: port, and optionally a new transport and crypto attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    pub port: PortPlan,
    pub proto: Option<String>,
    pub crypto: CryptoPlan,
}

impl From<PortPlan> for MediaPlan {
    fn from(port: PortPlan) -> MediaPlan {
        MediaPlan { port, proto: None, crypto: CryptoPlan::Keep }
    }
}

/// The same profile with SRTP added or removed: `RTP/AVP` ↔ `RTP/SAVP`, `RTP/AVPF` ↔ `RTP/SAVPF`.
pub fn toggle_srtp(proto: &str, srtp: bool) -> String {
    let upper = proto.to_ascii_uppercase();
    match (upper.as_str(), srtp) {
        ("RTP/AVP", true) => "RTP/SAVP".into(),
        ("RTP/AVPF", true) => "RTP/SAVPF".into(),
        ("RTP/SAVP", false) => "RTP/AVP".into(),
        ("RTP/SAVPF", false) => "RTP/AVPF".into(),
        _ => proto.into(),
    }
}

fn ip_kind(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IP6"
    } else {
        "IP4"
    }
}

const ICE_ATTRIBUTES: &[&str] = &[
    "candidate",
    "remote-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "end-of-candidates",
];

/// Rewrites `sdp` so media flows to `advertise` on the planned ports. `plan[i]` is for the i-th
/// m-line; m-lines without a plan are rejected.
pub fn rewrite(sdp: &[u8], advertise: IpAddr, plan: &[MediaPlan]) -> Result<Vec<u8>, AnchorError> {
    let text = std::str::from_utf8(sdp).map_err(|_| bad("SDP is not UTF-8"))?;
    let mut out = String::with_capacity(text.len() + 64);
    let mut index: Option<usize> = None;
    let reject = MediaPlan::from(PortPlan::Reject);
    let full = |index: Option<usize>| index.map(|i| plan.get(i).unwrap_or(&reject));
    let current = |index: Option<usize>| full(index).map(|p| p.port);
    for (line, end) in lines(text) {
        if line.len() < 2 {
            out.push_str(line);
            out.push_str(end);
            continue;
        }
        let value = &line[2..];
        match line.as_bytes()[0] {
            b'm' => {
                index = Some(index.map_or(0, |i| i + 1));
                let mut fields = value.splitn(3, ' ');
                let (Some(m), Some(port), Some(rest)) = (fields.next(), fields.next(), fields.next()) else {
                    return Err(bad("m= line needs media, port and proto"));
                };
                let port = match current(index) {
                    Some(PortPlan::Anchor(p)) => p.to_string(),
                    Some(PortPlan::Reject) => "0".to_string(),
                    _ => port.to_string(),
                };
                let plan = full(index);
                match plan.and_then(|p| p.proto.as_deref()) {
                    Some(proto) => {
                        let fmts = rest.split_once(' ').map_or("", |(_, f)| f);
                        out.push_str(&format!("m={m} {port} {proto} {fmts}"));
                    }
                    None => out.push_str(&format!("m={m} {port} {rest}")),
                }
                if let Some(CryptoPlan::Replace(attr)) = plan.map(|p| &p.crypto) {
                    out.push_str(end);
                    out.push_str(&format!("a=crypto:{attr}"));
                }
            }
            b'c' => {
                let addr = parse_conn(value)?;
                // 0.0.0.0 is the RFC 2543 hold signal: forwarded as is, so the far side keeps
                // not sending; every other address becomes ours.
                if addr.is_some_and(|a| a.is_unspecified()) {
                    out.push_str(line);
                } else {
                    out.push_str(&format!("c=IN {} {advertise}", ip_kind(advertise)));
                }
            }
            b'a' => {
                let (name, _) = value.split_once(':').unwrap_or((value, ""));
                if ICE_ATTRIBUTES.contains(&name) {
                    continue; // the whole line, terminator included
                }
                if name == "crypto" && full(index).is_some_and(|p| p.crypto != CryptoPlan::Keep) {
                    continue;
                }
                match (name, current(index)) {
                    ("rtcp", Some(PortPlan::Anchor(p))) => {
                        let has_addr = value.split_ascii_whitespace().count() >= 4;
                        let rtcp = p.wrapping_add(1);
                        if has_addr {
                            out.push_str(&format!("a=rtcp:{rtcp} IN {} {advertise}", ip_kind(advertise)));
                        } else {
                            out.push_str(&format!("a=rtcp:{rtcp}"));
                        }
                    }
                    _ => out.push_str(line),
                }
            }
            _ => out.push_str(line),
        }
        out.push_str(end);
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=carrier 123 456 IN IP4 198.51.100.7\r\n\
s=call\r\n\
c=IN IP4 198.51.100.7\r\n\
t=0 0\r\n\
a=x-unknown:keep me\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:40001 IN IP4 198.51.100.7\r\n\
a=candidate:1 1 UDP 2130706431 10.0.0.5 40000 typ host\r\n\
a=ice-ufrag:abcd\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n\
m=application 9 TCP/BFCP *\r\n";

    #[test]
    fn parse_reads_what_the_relay_needs() {
        let d = parse(OFFER.as_bytes()).unwrap();
        assert_eq!(d.media.len(), 3);
        let a = &d.media[0];
        assert_eq!(a.port, 40000);
        assert_eq!(a.addr, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(a.rtcp, Some((40001, Some("198.51.100.7".parse().unwrap()))));
        assert_eq!(a.codecs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["PCMU", "PCMA", "TELEPHONE-EVENT"]);
        assert!(a.anchorable() && !a.on_hold());
        assert_eq!(d.media[1].port, 0);
        assert!(!d.media[2].anchorable());
    }

    #[test]
    fn rewrite_changes_only_addresses_ports_and_ice() {
        let plan = [PortPlan::Anchor(30000), PortPlan::Keep, PortPlan::Reject].map(MediaPlan::from);
        let out = rewrite(OFFER.as_bytes(), "203.0.113.1".parse().unwrap(), &plan).unwrap();
        let want = "v=0\r\n\
o=carrier 123 456 IN IP4 198.51.100.7\r\n\
s=call\r\n\
c=IN IP4 203.0.113.1\r\n\
t=0 0\r\n\
a=x-unknown:keep me\r\n\
m=audio 30000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:30001 IN IP4 203.0.113.1\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n\
m=application 0 TCP/BFCP *\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn line_endings_and_hold_address_survive() {
        let sdp = "v=0\no=- 1 1 IN IP4 10.1.1.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 5000 RTP/AVP 0\na=rtcp:5001\na=inactive";
        let out = rewrite(sdp.as_bytes(), "127.0.0.1".parse().unwrap(), &[PortPlan::Anchor(30010).into()]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "v=0\no=- 1 1 IN IP4 10.1.1.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 30010 RTP/AVP 0\na=rtcp:30011\na=inactive"
        );
        let d = parse(sdp.as_bytes()).unwrap();
        assert!(d.media[0].on_hold());
        assert_eq!(d.media[0].direction, Direction::Inactive);
    }

    #[test]
    fn ipv6_advertise_and_media_level_connection() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\nc=IN IP4 10.1.1.2\r\na=sendonly\r\n";
        let d = parse(sdp.as_bytes()).unwrap();
        assert_eq!(d.media[0].addr, Some("10.1.1.2".parse().unwrap()));
        assert_eq!(d.media[0].direction, Direction::SendOnly);
        let out = rewrite(sdp.as_bytes(), "::1".parse().unwrap(), &[PortPlan::Anchor(30000).into()]).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("m=audio 30000 RTP/AVP 8\r\nc=IN IP6 ::1\r\n"));
    }

    #[test]
    fn crypto_keys_never_show_in_debug() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n";
        let d = parse(sdp.as_bytes()).unwrap();
        assert!(d.media[0].is_srtp());
        assert_eq!(d.media[0].crypto[0].suite, "AES_CM_128_HMAC_SHA1_80");
        assert!(!format!("{d:?}").contains("WVNf"));
    }

    #[test]
    fn srtp_can_be_added_replaced_or_removed() {
        let savp = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:BBBB\r\na=sendrecv\r\n";
        let adv = "127.0.0.1".parse().unwrap();
        let plain = MediaPlan {
            port: PortPlan::Anchor(30000),
            proto: Some(toggle_srtp("RTP/SAVP", false)),
            crypto: CryptoPlan::Remove,
        };
        let out = String::from_utf8(rewrite(savp.as_bytes(), adv, &[plain]).unwrap()).unwrap();
        assert!(out.ends_with("m=audio 30000 RTP/AVP 0\r\na=sendrecv\r\n"), "{out}");
        let ours = MediaPlan {
            port: PortPlan::Anchor(30000),
            proto: None,
            crypto: CryptoPlan::Replace("1 X inline:CCCC".into()),
        };
        let out = String::from_utf8(rewrite(savp.as_bytes(), adv, &[ours]).unwrap()).unwrap();
        assert!(out.ends_with("m=audio 30000 RTP/SAVP 0\r\na=crypto:1 X inline:CCCC\r\na=sendrecv\r\n"), "{out}");
        assert_eq!(toggle_srtp("RTP/AVPF", true), "RTP/SAVPF");
        assert_eq!(toggle_srtp("udptl", true), "udptl");
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in [
            &b"v=0\r\nm=audio\r\n"[..],
            b"v=0\r\nm=audio x RTP/AVP 0\r\n",
            b"v=0\r\nc=IN\r\n",
            b"v=0\r\nc=ATM NSAP x\r\n",
            b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:\r\n",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let many = format!("v=0\r\n{}", "m=audio 1 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert!(parse(many.as_bytes()).is_err());
    }
}
