//! SDP offer/answer hand-off: the proxy gives every session description it forwards to a
//! [`MediaAnchor`], which may rewrite it so media flows through callveil.
//!
//! The proxy core knows when a body is an offer or an answer and which leg it came from; the
//! anchor knows ports and relays. This module holds the trait, the call/leg identifiers the two
//! share, a light SDP sanity check, and [`PassThrough`], the anchor used until the media relay
//! exists (and by the signaling-only benchmarks). It does not allocate ports or touch media.

use std::fmt;
use std::time::Instant;

/// Which side of the proxy a description came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The side that sent the initial INVITE (usually the carrier).
    Caller,
    /// The side the INVITE was forwarded to (usually the PBX or agent).
    Callee,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::Caller => Leg::Callee,
            Leg::Callee => Leg::Caller,
        }
    }
}

/// Whether a description opens or answers a negotiation (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRole {
    Offer,
    Answer,
}

/// What the proxy knows about the call when it hands over a description. The Call-ID is not
/// personal data but is kept opaque to the anchor's logs all the same.
#[derive(Debug, Clone, Copy)]
pub struct SdpContext<'a> {
    pub call_id: &'a str,
    pub from: Leg,
    pub role: SdpRole,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The description cannot be understood: the request is answered 488 Not Acceptable Here.
    #[error("unacceptable session description: {0}")]
    NotAcceptable(String),
    /// No media resources left (ports): answered 503 with Retry-After.
    #[error("no media resources: {0}")]
    Exhausted(String),
}

impl AnchorError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            AnchorError::NotAcceptable(_) => (488, "Not Acceptable Here"),
            AnchorError::Exhausted(_) => (503, "Service Unavailable"),
        }
    }
}

/// Rewrites session descriptions so media is anchored on callveil. Implemented by the media relay.
pub trait MediaAnchor: Send {
    /// Returns the body to forward in place of `sdp` (the same bytes when nothing changes).
    fn rewrite(&mut self, ctx: SdpContext<'_>, sdp: &[u8]) -> Result<Vec<u8>, AnchorError>;
    /// The call is over (BYE, CANCEL, failed INVITE, timeout): release whatever it holds.
    fn release(&mut self, call_id: &str);
    /// The request that carried the call's latest offer (a re-INVITE or UPDATE) ended without a
    /// 2xx: 4xx-6xx, timeout, CANCEL, or the anchor's own refusal. RFC 3261 §14.1 and RFC 3311
    /// §5.1: the session goes on exactly as before the offer, so the anchor puts back what the
    /// offer changed and frees what it added. Not called for a failed initial INVITE
    /// ([`MediaAnchor::release`] is).
    fn offer_failed(&mut self, call_id: &str);
    /// When the anchor next needs [`MediaAnchor::handle_timeout`] (media checks, quarantine).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Time has reached `now`. Returns the Call-IDs whose media died (RTP inactivity): the proxy
    /// ends those calls with BYE on both legs.
    fn handle_timeout(&mut self, _now: Instant) -> Vec<String> {
        Vec::new()
    }
    /// An answer to the caller's pending offer, facing the caller, for callveil's own early media
    /// (the IVR's 183): audio on the caller-facing ports, G.711 and telephone-event when offered.
    /// Called after [`MediaAnchor::rewrite`] has seen the offer.
    fn early_answer(&mut self, _call_id: &str) -> Result<Vec<u8>, AnchorError> {
        Err(AnchorError::NotAcceptable("this anchor cannot answer on its own".into()))
    }
    /// A media action asked for by the recording path (tap, prompts, secure entry).
    fn control(&mut self, _cmd: crate::sip::events::MediaCommand) {}
}

/// Forwards descriptions untouched after checking they look like SDP.
#[derive(Debug, Default)]
pub struct PassThrough;

impl MediaAnchor for PassThrough {
    fn rewrite(&mut self, _ctx: SdpContext<'_>, sdp: &[u8]) -> Result<Vec<u8>, AnchorError> {
        check(sdp)?;
        Ok(sdp.to_vec())
    }

    fn release(&mut self, _call_id: &str) {}

    /// Nothing to put back: descriptions pass through, so no media state follows them.
    fn offer_failed(&mut self, _call_id: &str) {}
}

/// Minimal structural check (RFC 4566 §5): starts with `v=0` and every line is `x=...`.
pub fn check(sdp: &[u8]) -> Result<(), AnchorError> {
    let text = std::str::from_utf8(sdp).map_err(|_| AnchorError::NotAcceptable("SDP is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(AnchorError::NotAcceptable("SDP must start with v=0".into()));
    }
    for line in lines {
        let b = line.as_bytes();
        if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
            return Err(AnchorError::NotAcceptable("SDP line is not <type>=<value>".into()));
        }
    }
    Ok(())
}

impl fmt::Display for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Leg::Caller => "caller",
            Leg::Callee => "callee",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_keeps_bytes() {
        let sdp =
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
        let ctx = SdpContext { call_id: "x", from: Leg::Caller, role: SdpRole::Offer };
        assert_eq!(PassThrough.rewrite(ctx, sdp).unwrap(), sdp.to_vec());
        assert!(PassThrough.rewrite(ctx, b"hello").is_err());
        assert!(PassThrough.rewrite(ctx, &[0xff, 0xfe]).is_err());
    }
}
