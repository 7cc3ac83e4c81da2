//! Zero-copy RTP and RTCP header reading (RFC 3550 §5.1, §6.4; RFC 5761 §4 demultiplexing).
//!
//! [`classify`] looks at a datagram once and says whether it is a well-formed RTP packet (with
//! the fields the relay tracks and where the payload is) or an RTCP compound packet, or why it is
//! neither. It never copies or allocates and never panics, whatever the bytes (a fuzz target,
//! `fuzz/fuzz_targets/rtp_parse.rs`, holds it to that). It does not decrypt SRTP: an SRTP packet
//! has a plain RTP header and is classified like RTP, with the auth tag inside the "payload".

/// Fields of an RTP header, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Byte range of the payload (after CSRCs and the extension, before padding).
    pub payload_start: usize,
    pub payload_end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Rtp(RtpHeader),
    /// RTCP: packet type of the first report and the sender SSRC.
    Rtcp {
        packet_type: u8,
        ssrc: u32,
    },
}

/// Why a datagram is not RTP/RTCP. Used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    TooShort,
    Version,
    Padding,
    Extension,
    RtcpLength,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::TooShort => "too_short",
            Malformed::Version => "bad_version",
            Malformed::Padding => "bad_padding",
            Malformed::Extension => "bad_extension",
            Malformed::RtcpLength => "bad_rtcp_length",
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// RFC 5761 §4: the second byte of RTCP is its packet type, 192..=223 (payload types 64..=95
/// with the marker bit set), which RTP sessions must not use.
pub fn looks_like_rtcp(b: &[u8]) -> bool {
    b.get(1).is_some_and(|pt| (192..=223).contains(pt))
}

/// Classifies one datagram.
pub fn classify(b: &[u8]) -> Result<Packet, Malformed> {
    let first = *b.first().ok_or(Malformed::TooShort)?;
    if first >> 6 != 2 {
        return Err(Malformed::Version);
    }
    if looks_like_rtcp(b) {
        return rtcp(b);
    }
    if b.len() < 12 {
        return Err(Malformed::TooShort);
    }
    let cc = usize::from(first & 0x0f);
    let mut start = 12 + 4 * cc;
    if start > b.len() {
        return Err(Malformed::TooShort);
    }
    if first & 0x10 != 0 {
        let words = be16(b, start + 2).ok_or(Malformed::Extension)?;
        start += 4 + 4 * usize::from(words);
        if start > b.len() {
            return Err(Malformed::Extension);
        }
    }
    let mut end = b.len();
    if first & 0x20 != 0 {
        let pad = usize::from(*b.last().ok_or(Malformed::Padding)?);
        if pad == 0 || pad > end - start {
            return Err(Malformed::Padding);
        }
        end -= pad;
    }
    let second = b[1];
    Ok(Packet::Rtp(RtpHeader {
        marker: second & 0x80 != 0,
        payload_type: second & 0x7f,
        sequence: be16(b, 2).ok_or(Malformed::TooShort)?,
        timestamp: be32(b, 4).ok_or(Malformed::TooShort)?,
        ssrc: be32(b, 8).ok_or(Malformed::TooShort)?,
        payload_start: start,
        payload_end: end,
    }))
}

/// RTCP compound packet (RFC 3550 §6.1): every sub-packet's length must fit. An SRTCP packet
/// (trailing E flag, index and tag) has extra bytes after the last sub-packet; those are
/// accepted, since they cannot be told apart from the trailer without the key.
fn rtcp(b: &[u8]) -> Result<Packet, Malformed> {
    if b.len() < 8 {
        return Err(Malformed::TooShort);
    }
    let packet_type = b[1];
    let ssrc = be32(b, 4).ok_or(Malformed::TooShort)?;
    let mut at = 0;
    let mut seen = 0;
    while at + 4 <= b.len() && b[at] >> 6 == 2 && looks_like_rtcp(&b[at..]) {
        let words = usize::from(be16(b, at + 2).ok_or(Malformed::RtcpLength)?);
        let next = at + 4 * (words + 1);
        if next > b.len() {
            return Err(Malformed::RtcpLength);
        }
        at = next;
        seen += 1;
    }
    if seen == 0 {
        return Err(Malformed::RtcpLength);
    }
    Ok(Packet::Rtcp { packet_type, ssrc })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal RTP packet for tests.
    pub(crate) fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt & 0x7f];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// An RTCP receiver report without report blocks.
    pub(crate) fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn reads_rtp_fields() {
        let p = rtp(8, 7, 160, 0xdead_beef, &[1, 2, 3]);
        let Ok(Packet::Rtp(h)) = classify(&p) else { panic!("not RTP") };
        assert_eq!((h.payload_type, h.sequence, h.timestamp, h.ssrc), (8, 7, 160, 0xdead_beef));
        assert_eq!(&p[h.payload_start..h.payload_end], &[1, 2, 3]);
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut p = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]; // P, X, CC=1
        p.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one-word extension
        p.extend_from_slice(&[42, 43]); // payload
        p.extend_from_slice(&[0, 2]); // two bytes of padding
        let Ok(Packet::Rtp(h)) = classify(&p) else { panic!("not RTP") };
        assert_eq!(&p[h.payload_start..h.payload_end], &[42, 43]);
    }

    #[test]
    fn rtcp_is_demultiplexed() {
        assert_eq!(classify(&rtcp_rr(5)), Ok(Packet::Rtcp { packet_type: 201, ssrc: 5 }));
        let mut two = rtcp_rr(5);
        two.extend_from_slice(&rtcp_rr(6));
        assert!(classify(&two).is_ok());
        let mut short = rtcp_rr(5);
        short[3] = 9;
        assert_eq!(classify(&short), Err(Malformed::RtcpLength));
    }

    #[test]
    fn malformed_is_an_error() {
        assert_eq!(classify(&[]), Err(Malformed::TooShort));
        assert_eq!(classify(&[0x40; 20]), Err(Malformed::Version));
        assert_eq!(classify(&[0x80, 0, 0]), Err(Malformed::TooShort));
        assert_eq!(classify(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(Malformed::TooShort));
        let mut pad = rtp(0, 1, 1, 1, &[1]);
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(classify(&pad), Err(Malformed::Padding));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(Packet::Rtp(h)) = classify(&bytes) {
                proptest::prop_assert!(h.payload_start <= h.payload_end && h.payload_end <= bytes.len());
            }
        }
    }
}
