//! Prompt playout: turns 8 kHz PCM16 (an IVR prompt) into 20 ms G.711 RTP packets on a schedule.
//!
//! A [`Playout`] is the sans-IO state of one prompt toward one leg: where it is in the audio, its
//! own SSRC, sequence number and timestamp (random at the start, RFC 3550 §5.1), and when the
//! next packet is due. The relay core asks it for a packet whenever its deadline has passed and
//! the shard's poll loop sleeps until the next deadline, so pacing needs no thread of its own.
//! It neither sends nor encrypts: the relay core applies the leg's SRTP session and the driver
//! sends. The last packet is padded with silence to a full 20 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::g711;

/// Samples per packet (20 ms at 8 kHz).
pub const FRAME: usize = 160;
/// Packet interval.
pub const PTIME: Duration = Duration::from_millis(20);
/// How far the schedule may fall behind (a shard busy or descheduled) before it restarts from
/// now instead of sending a burst of late packets the receiver would only discard.
const MAX_LAG: Duration = Duration::from_millis(60);
const HEADER: usize = 12;

/// G.711 flavour of the packets, from the payload type negotiated with the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    /// PCMU (0) and PCMA (8); other payload types cannot be played.
    pub fn from_pt(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        }
    }

    pub fn pt(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    pub fn encode(self, x: i16) -> u8 {
        match self {
            Law::Ulaw => g711::encode_ulaw(x),
            Law::Alaw => g711::encode_alaw(x),
        }
    }

    /// The code of digital silence.
    pub fn silence(self) -> u8 {
        match self {
            Law::Ulaw => 0xff,
            Law::Alaw => 0xd5,
        }
    }
}

/// One prompt being played toward one leg.
#[derive(Debug)]
pub struct Playout {
    pcm: Arc<[i16]>,
    pos: usize,
    law: Law,
    ssrc: u32,
    seq: u16,
    ts: u32,
    first: bool,
    next_due: Instant,
}

impl Playout {
    /// Starts at `now` (the first packet is due at once) with the given RTP identity; callers
    /// pass random `ssrc`, `seq` and `ts`.
    pub fn new(now: Instant, pcm: Arc<[i16]>, law: Law, ssrc: u32, seq: u16, ts: u32) -> Playout {
        Playout { pcm, pos: 0, law, ssrc, seq, ts, first: true, next_due: now }
    }

    /// When the next packet is due; `None` once every sample has been sent.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.finished()).then_some(self.next_due)
    }

    pub fn finished(&self) -> bool {
        self.pos >= self.pcm.len()
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// If a packet is due at `now`, writes it (header and payload) into `out` and returns true.
    pub fn poll_packet(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.finished() || self.next_due > now {
            return false;
        }
        if now.saturating_duration_since(self.next_due) > MAX_LAG {
            self.next_due = now;
        }
        out.clear();
        out.push(0x80);
        out.push(self.law.pt() | if self.first { 0x80 } else { 0 });
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        let end = (self.pos + FRAME).min(self.pcm.len());
        let law = self.law;
        out.extend(self.pcm[self.pos..end].iter().map(|&x| law.encode(x)));
        out.resize(HEADER + FRAME, law.silence());
        self.pos = end;
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        self.next_due += PTIME;
        true
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // virtual time starts from one real instant
mod tests {
    use super::*;
    use crate::media::rtp::{classify, Packet};

    #[test]
    fn packets_are_paced_numbered_and_padded() {
        let t0 = Instant::now();
        let pcm: Arc<[i16]> = (0..400).map(|i| (i * 50) as i16).collect();
        let mut p = Playout::new(t0, pcm.clone(), Law::Ulaw, 0x1234, 65535, u32::MAX - 100);
        let mut out = Vec::new();
        assert!(p.poll_packet(t0, &mut out));
        assert!(!p.poll_packet(t0 + Duration::from_millis(19), &mut out), "not before 20 ms");
        let Ok(Packet::Rtp(h)) = classify(&out) else { panic!("not RTP") };
        assert_eq!((h.payload_type, h.marker, h.sequence, h.ssrc), (0, true, 65535, 0x1234));
        let decoded: Vec<i16> = out[12..].iter().map(|&b| g711::ULAW[usize::from(b)]).collect();
        for (d, s) in decoded.iter().zip(pcm.iter()) {
            assert!((i32::from(*d) - i32::from(*s)).abs() <= i32::from(s.unsigned_abs()) / 16 + 8);
        }
        assert_eq!(p.deadline(), Some(t0 + PTIME));
        assert!(p.poll_packet(t0 + PTIME, &mut out));
        let Ok(Packet::Rtp(h)) = classify(&out) else { panic!("not RTP") };
        assert_eq!((h.marker, h.sequence, h.timestamp), (false, 0, (u32::MAX - 100).wrapping_add(160)));
        assert!(p.poll_packet(t0 + PTIME * 2, &mut out));
        assert_eq!(out.len(), 12 + 160, "the last 80 samples are padded to 20 ms");
        assert!(out[12 + 80..].iter().all(|&b| b == 0xff));
        assert!(p.finished());
        assert_eq!(p.deadline(), None);
        assert!(!p.poll_packet(t0 + PTIME * 10, &mut out));
    }

    #[test]
    fn a_late_schedule_restarts_instead_of_bursting() {
        let t0 = Instant::now();
        let pcm: Arc<[i16]> = vec![0; 1600].into();
        let mut p = Playout::new(t0, pcm, Law::Alaw, 1, 0, 0);
        let mut out = Vec::new();
        assert!(p.poll_packet(t0, &mut out));
        assert_eq!(out[1], 0x80 | 8);
        assert!(out[12..].iter().all(|&b| b == 0xd5));
        let late = t0 + Duration::from_millis(500);
        assert!(p.poll_packet(late, &mut out));
        assert!(!p.poll_packet(late, &mut out), "one packet, then the schedule goes on from now");
        assert_eq!(p.deadline(), Some(late + PTIME));
    }
}
