//! SRTP with SDES keys (RFC 3711, RFC 4568): key parsing and generation for
//! `AES_CM_128_HMAC_SHA1_80` and `_32`, and per-leg protect/unprotect sessions over the
//! webrtc-rs `rtc-srtp` crate (ring backend).
//!
//! Under SDES each side's `a=crypto` carries the key *it* encrypts with. So for a leg on SRTP,
//! callveil decrypts what arrives with the key from that leg's SDP and encrypts what it sends to
//! the leg with a key of its own, which it writes into the SDP it sends there. Keys are secret:
//! [`SrtpKey`] prints `{REDACTED}` and nothing here logs. Replay protection is on (window 64), so
//! a replayed or forged packet fails authentication and is dropped before it can latch a leg.
//!
//! The crate returns a fresh buffer per packet; that allocation is paid only on SRTP legs.
//!
//! `rtc-srtp` encrypts (and decrypts) from the offset at which `rtc-rtp` would *re-serialise* the
//! header, not from where the payload starts on the wire. For a malformed RFC 8285 header
//! extension (an element running past the declared extension length, or data after the reserved
//! id 15) the two differ: encrypting then slices past the packet and panics, which on a relay
//! shard would end the media of every call on it. Any RTP packet from a plain leg reaches
//! `protect` when the other leg is SRTP, so this was remotely triggerable (found by
//! `fuzz/fuzz_targets/rtp_parse.rs`). Packets whose two header lengths disagree are refused
//! (`protect`/`unprotect` return an error; the relay drops and counts them). Packets without an
//! extension always agree and pay nothing for the check.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rtc_shared::marshal::{MarshalSize, Unmarshal};
use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::RingCrypto;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

use crate::media::sdp::Crypto;

const KEY: usize = 16;
const SALT: usize = 14;

/// Suites callveil terminates, strongest first (what it offers).
pub const SUITES: &[&str] = &["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

/// An SDES master key and salt for one direction, with its suite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SrtpKey {
    pub tag32: bool,
    material: [u8; KEY + SALT],
}

impl std::fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpKey {{ suite: {}, key: {{REDACTED}} }}", self.suite())
    }
}

impl SrtpKey {
    /// A fresh random key for `suite`.
    pub fn generate(tag32: bool) -> SrtpKey {
        SrtpKey { tag32, material: rand::random() }
    }

    pub fn suite(&self) -> &'static str {
        if self.tag32 {
            SUITES[1]
        } else {
            SUITES[0]
        }
    }

    /// Reads a supported `a=crypto` line: `inline:<base64 of 30 bytes>` with optional lifetime
    /// and MKI. MKIs and session parameters are not supported (the line is then skipped).
    pub fn from_crypto(c: &Crypto) -> Option<SrtpKey> {
        let tag32 = match c.suite.as_str() {
            "AES_CM_128_HMAC_SHA1_80" => false,
            "AES_CM_128_HMAC_SHA1_32" => true,
            _ => return None,
        };
        let mut params = c.key_params.split_ascii_whitespace();
        let key = params.next()?.strip_prefix("inline:")?;
        if params.next().is_some() {
            return None; // session parameters (UNENCRYPTED_SRTP, KDR...) change the transform
        }
        let mut parts = key.split('|');
        let b64 = parts.next()?;
        for p in parts {
            if p.contains(':') {
                return None; // MKI
            }
        }
        let raw = STANDARD.decode(b64).ok()?;
        let material: [u8; KEY + SALT] = raw.try_into().ok()?;
        Some(SrtpKey { tag32, material })
    }

    /// The `a=crypto` attribute value callveil writes: `<tag> <suite> inline:<key>`.
    pub fn attribute(&self, tag: u32) -> String {
        format!("{tag} {} inline:{}", self.suite(), STANDARD.encode(self.material))
    }

    fn context(&self) -> Option<Context> {
        let profile =
            if self.tag32 { ProtectionProfile::Aes128CmHmacSha1_32 } else { ProtectionProfile::Aes128CmHmacSha1_80 };
        Context::new(
            &self.material[..KEY],
            &self.material[KEY..],
            profile,
            Some(srtp_replay_protection(64)),
            Some(srtcp_replay_protection(64)),
            &RingCrypto,
        )
        .ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("SRTP authentication or replay check failed")]
    Unprotect,
    #[error("SRTP protect failed")]
    Protect,
}

/// One direction's SRTP state: the key and the context built from it.
pub struct Session {
    key: SrtpKey,
    ctx: Context,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session {{ {:?} }}", self.key)
    }
}

impl Session {
    pub fn new(key: SrtpKey) -> Option<Session> {
        Some(Session { key, ctx: key.context()? })
    }

    pub fn key(&self) -> SrtpKey {
        self.key
    }

    /// SRTP or SRTCP (by `rtcp`) to plain, into `out`.
    pub fn unprotect(&mut self, rtcp: bool, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if !rtcp && !header_lengths_agree(packet) {
            return Err(SrtpError::Unprotect);
        }
        let plain = if rtcp { self.ctx.decrypt_rtcp(packet) } else { self.ctx.decrypt_rtp(packet) }
            .map_err(|_| SrtpError::Unprotect)?;
        out.clear();
        out.extend_from_slice(&plain);
        Ok(())
    }

    /// Plain RTP or RTCP to SRTP/SRTCP, into `out`.
    pub fn protect(&mut self, rtcp: bool, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if !rtcp && !header_lengths_agree(packet) {
            return Err(SrtpError::Protect);
        }
        let sealed = if rtcp { self.ctx.encrypt_rtcp(packet) } else { self.ctx.encrypt_rtp(packet) }
            .map_err(|_| SrtpError::Protect)?;
        out.clear();
        out.extend_from_slice(&sealed);
        Ok(())
    }
}

/// Whether the RTP header's length on the wire (fixed part, CSRCs, extension as declared) is the
/// length `rtc-rtp` measures after parsing it, the offset `rtc-srtp` encrypts from (see the module
/// documentation). A packet too short for its header does not agree either.
fn header_lengths_agree(packet: &[u8]) -> bool {
    let Some(&first) = packet.first() else { return false };
    let fixed = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 == 0 {
        // no extension: rtc-rtp's length is the fixed part and CSRCs, like the wire's
        return packet.len() >= fixed;
    }
    let Some(words) = packet.get(fixed + 2..fixed + 4) else { return false };
    let wire = fixed + 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    match rtc_rtp::Header::unmarshal(&mut &packet[..]) {
        Ok(h) => packet.len() >= wire && h.marshal_size() == wire,
        Err(_) => false,
    }
}

/// Replaces a session when its key changed (a re-INVITE with new keys); keeps it otherwise, so
/// rollover counters and replay windows survive re-INVITEs that do not rekey.
pub fn rekey(slot: &mut Option<Session>, key: Option<SrtpKey>) {
    match (slot.as_ref().map(Session::key), key) {
        (Some(old), Some(new)) if old == new => {}
        (_, Some(new)) => *slot = Session::new(new),
        (_, None) => *slot = None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::rtp::tests::{rtcp_rr, rtp};

    fn crypto(suite: &str, params: &str) -> Crypto {
        Crypto { tag: 1, suite: suite.into(), key_params: params.into() }
    }

    #[test]
    fn parses_rfc4568_example_keys() {
        let k = SrtpKey::from_crypto(&crypto(
            "AES_CM_128_HMAC_SHA1_80",
            "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
        ));
        assert!(k.is_none(), "MKI is not supported");
        let k = SrtpKey::from_crypto(&crypto(
            "AES_CM_128_HMAC_SHA1_32",
            "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        ))
        .unwrap();
        assert!(k.tag32);
        assert!(SrtpKey::from_crypto(&crypto(
            "F8_128_HMAC_SHA1_80",
            "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
        ))
        .is_none());
        assert!(SrtpKey::from_crypto(&crypto("AES_CM_128_HMAC_SHA1_80", "inline:c2hvcnQ=")).is_none());
        assert!(!format!("{k:?}").contains("PS1u"));
        // round trip through our own attribute
        let ours = SrtpKey::generate(false);
        let attr = ours.attribute(3);
        let mut it = attr.splitn(3, ' ');
        let (tag, suite, params) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        assert_eq!(tag, "3");
        assert_eq!(SrtpKey::from_crypto(&crypto(suite, params)), Some(ours));
    }

    #[test]
    fn round_trip_against_rtc_srtp_directly() {
        let key = SrtpKey::generate(false);
        // the far side: rtc-srtp used directly with the same key material
        let mut far = key.context().unwrap();
        let mut ours = Session::new(key).unwrap();
        let plain = rtp(0, 1, 160, 0x1234, &[0x55; 160]);
        let sealed = far.encrypt_rtp(&plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + 10, "80-bit tag");
        let mut out = Vec::new();
        ours.unprotect(false, &sealed, &mut out).unwrap();
        assert_eq!(out, plain);
        // replay is refused
        assert_eq!(ours.unprotect(false, &sealed, &mut out), Err(SrtpError::Unprotect));
        // tampering is refused
        let mut bad = far.encrypt_rtp(&rtp(0, 2, 320, 0x1234, &[0x55; 160])).unwrap().to_vec();
        bad[20] ^= 1;
        assert_eq!(ours.unprotect(false, &bad, &mut out), Err(SrtpError::Unprotect));
        // our protect is readable by the far side, RTP and RTCP
        let mut tx = Session::new(SrtpKey::generate(true)).unwrap();
        let mut far_rx = tx.key().context().unwrap();
        tx.protect(false, &plain, &mut out).unwrap();
        assert_eq!(out.len(), plain.len() + 4, "32-bit tag");
        assert_eq!(far_rx.decrypt_rtp(&out).unwrap().to_vec(), plain);
        tx.protect(true, &rtcp_rr(9), &mut out).unwrap();
        assert_eq!(far_rx.decrypt_rtcp(&out).unwrap().to_vec(), rtcp_rr(9));
    }

    /// The fuzz crash (fuzz/corpus/rtp_parse/crash_ext_element_overrun.bin): CC=2, P and X set,
    /// a one-byte-header extension of one word whose first element claims 16 bytes. rtc-srtp's
    /// encrypt sliced from byte 44 of this 42-byte packet and panicked.
    pub(crate) const EXT_OVERRUN: [u8; 42] = [
        0xb2, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0xa0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x02, 0xbe, 0xde, 0x00, 0x01, 0x0f, 0xaa, 0x4b, 0x4c, 0x6e, 0x6f, 0x5f, 0x64, 0x6f, 0x6e, 0x4d, 0x4e,
        0x4f, 0x00, 0xb6, 0x00, 0x20, 0x04,
    ];

    #[test]
    fn malformed_extension_is_refused_not_a_panic() {
        let mut tx = Session::new(SrtpKey::generate(false)).unwrap();
        let mut rx = Session::new(SrtpKey::generate(false)).unwrap();
        let mut out = Vec::new();
        assert_eq!(tx.protect(false, &EXT_OVERRUN, &mut out), Err(SrtpError::Protect));
        assert_eq!(rx.unprotect(false, &EXT_OVERRUN, &mut out), Err(SrtpError::Unprotect));
        // data after the reserved id 15 makes rtc-rtp's length shorter than the wire's
        let mut short = rtp(0, 1, 160, 0x1234, &[0x55; 20]);
        short[0] |= 0x10;
        short.splice(12..12, [0xbe, 0xde, 0x00, 0x02, 0x10, 0xaa, 0xf0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(tx.protect(false, &short, &mut out), Err(SrtpError::Protect));
        // a well-formed one-byte extension (an element, then padding) goes through both ways
        let mut ok = rtp(0, 2, 320, 0x1234, &[0x55; 20]);
        ok[0] |= 0x10;
        ok.splice(12..12, [0xbe, 0xde, 0x00, 0x01, 0x10, 0xaa, 0x00, 0x00]);
        let far = tx.key();
        tx.protect(false, &ok, &mut out).unwrap();
        let sealed = out.clone();
        let mut far_rx = Session::new(far).unwrap();
        far_rx.unprotect(false, &sealed, &mut out).unwrap();
        assert_eq!(out, ok);
        // and a packet shorter than its CSRC list is refused before the crate sees it
        assert_eq!(tx.protect(false, &[0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], &mut out), Err(SrtpError::Protect));
    }

    #[test]
    fn rekey_keeps_or_replaces() {
        let k = SrtpKey::generate(false);
        let mut slot = None;
        rekey(&mut slot, Some(k));
        assert_eq!(slot.as_ref().map(Session::key), Some(k));
        rekey(&mut slot, Some(k));
        assert!(slot.is_some());
        rekey(&mut slot, None);
        assert!(slot.is_none());
    }
}
