//! The recording tap: per call and leg, decoded PCM16 frames with their media time, gap markers
//! and raw telephone-event packets, handed to the recording path through a bounded queue.
//!
//! The relay calls [`LegTap::on_rtp`] for each valid RTP packet it receives on a tapped leg
//! (latched source, SRTP authenticated), whether or not it can forward it yet: during callveil's
//! own IVR the callee does not exist, and the consent gate still needs the caller's audio and
//! key presses. The tap
//! never waits: it uses `try_send`, and when the queue is full it drops the frame, counts it and
//! remembers the gap, which it reports (as [`TapEvent::Gap`] with [`GapReason::Overflow`]) ahead
//! of the next frame that fits. Loss on the wire becomes a [`GapReason::Loss`] gap, so the
//! recording path always knows which media time it has and which it lacks (and mutes, failing
//! closed). G.711 µ-law/A-law are decoded here; any other codec is reported once as
//! [`TapEvent::Untranscribable`] and its packets are not passed on.
//!
//! A tap exists only once the recording path has opened one for a call; until then the relay
//! has nothing to hand over and nothing is buffered anywhere. What the recording path may keep
//! of what it receives (nothing before consent) is its decision, not the tap's. Media time starts at
//! zero with the leg's first tapped packet and follows RTP timestamps (extended across wrap and
//! continued across SSRC changes). Decoding allocates one `Vec` per tapped packet: that cost is
//! only paid on recorded calls and never blocks forwarding.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use crate::media::g711;
use crate::media::rtp::RtpHeader;
use crate::sip::sdp::Leg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Packets missing or late on the wire.
    Loss,
    /// The recording path was behind and frames were dropped here.
    Overflow,
    /// Comfort noise or a new SSRC: no audio for this span.
    NoAudio,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapEvent {
    /// 8 kHz mono PCM16 starting at `at` (media time).
    Audio { at: Duration, samples: Vec<i16> },
    /// No audio for `[from, to)`.
    Gap { from: Duration, to: Duration, reason: GapReason },
    /// An RFC 4733 telephone-event payload as received (DTMF; never logged).
    TelephoneEvent { at: Duration, payload: Vec<u8>, marker: bool },
    /// The leg uses a codec the tap cannot decode; the recording path must fail closed.
    Untranscribable { payload_type: u8 },
}

/// One item of the tap queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFrame {
    /// The anchor's call key and the m-line index.
    pub call: u64,
    pub stream: u8,
    pub leg: Leg,
    pub event: TapEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Ulaw,
    Alaw,
}

/// Tap state of one leg of one stream.
#[derive(Debug)]
pub struct LegTap {
    call: u64,
    stream: u8,
    leg: Leg,
    telephone_event: Option<u8>,
    sink: SyncSender<TapFrame>,
    /// RTP timestamp that maps to media time zero (extended, 64-bit) for the current SSRC.
    ssrc: Option<u32>,
    base: i64,
    last_ts: u32,
    cycles: i64,
    /// Media time (samples) right after the last audio handed on.
    next: Option<i64>,
    /// Start of an overflow gap not yet reported.
    overflow_from: Option<i64>,
    untranscribable_sent: bool,
    closed: bool,
    pub dropped: u64,
    pub sent: u64,
}

const RATE: i64 = 8000;

fn at(samples: i64) -> Duration {
    Duration::from_micros((samples.max(0) as u64) * 1_000_000 / RATE as u64)
}

impl LegTap {
    pub fn new(call: u64, stream: u8, leg: Leg, telephone_event: Option<u8>, sink: SyncSender<TapFrame>) -> LegTap {
        LegTap {
            call,
            stream,
            leg,
            telephone_event,
            sink,
            ssrc: None,
            base: 0,
            last_ts: 0,
            cycles: 0,
            next: None,
            overflow_from: None,
            untranscribable_sent: false,
            closed: false,
            dropped: 0,
            sent: 0,
        }
    }

    /// The recording path went away (receiver dropped): the relay can forget this tap.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Media time of an RTP timestamp, in samples, for the current SSRC.
    fn media_time(&mut self, ssrc: u32, ts: u32) -> i64 {
        if self.ssrc != Some(ssrc) {
            // a new SSRC continues where the previous one ended
            let continue_at = self.next.unwrap_or(0);
            self.ssrc = Some(ssrc);
            self.cycles = 0;
            self.last_ts = ts;
            self.base = i64::from(ts) - continue_at;
        } else {
            let delta = ts.wrapping_sub(self.last_ts);
            if delta < 0x8000_0000 {
                if ts < self.last_ts {
                    self.cycles += 1 << 32;
                }
                self.last_ts = ts;
            }
        }
        let ext = if ts > self.last_ts && ts.wrapping_sub(self.last_ts) >= 0x8000_0000 && self.cycles > 0 {
            // late packet from before the last wrap
            self.cycles - (1 << 32) + i64::from(ts)
        } else {
            self.cycles + i64::from(ts)
        };
        ext - self.base
    }

    fn push(&mut self, event: TapEvent) -> bool {
        if self.closed {
            return false;
        }
        let frame = TapFrame { call: self.call, stream: self.stream, leg: self.leg, event };
        match self.sink.try_send(frame) {
            Ok(()) => {
                self.sent += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.closed = true;
                false
            }
        }
    }

    /// One RTP packet the relay received on this leg. Returns false when something was dropped
    /// for lack of queue space.
    pub fn on_rtp(&mut self, h: &RtpHeader, payload: &[u8]) -> bool {
        if self.closed {
            return true;
        }
        let t = self.media_time(h.ssrc, h.timestamp);
        if Some(h.payload_type) == self.telephone_event {
            return self.push(TapEvent::TelephoneEvent { at: at(t), payload: payload.to_vec(), marker: h.marker });
        }
        let decoder = match h.payload_type {
            0 => Decoder::Ulaw,
            8 => Decoder::Alaw,
            13 => return true, // comfort noise: the next audio's gap covers it
            pt => {
                if !self.untranscribable_sent {
                    self.untranscribable_sent = self.push(TapEvent::Untranscribable { payload_type: pt });
                }
                return true;
            }
        };
        let len = payload.len() as i64;
        let expected = self.next.unwrap_or(t);
        if t + len <= expected && self.next.is_some() {
            // late or duplicate: its span was already reported as a gap or audio
            return true;
        }
        // report an overflow gap first; if even that does not fit, extend it
        if let Some(from) = self.overflow_from {
            if !self.push(TapEvent::Gap { from: at(from), to: at(t), reason: GapReason::Overflow }) {
                return false;
            }
            self.overflow_from = None;
        } else if t > expected {
            let reason = if self.ssrc == Some(h.ssrc) { GapReason::Loss } else { GapReason::NoAudio };
            if !self.push(TapEvent::Gap { from: at(expected), to: at(t), reason }) {
                self.overflow_from = Some(expected);
                self.next = Some(t + len);
                return false;
            }
        }
        let table = match decoder {
            Decoder::Ulaw => &g711::ULAW,
            Decoder::Alaw => &g711::ALAW,
        };
        let samples: Vec<i16> = payload.iter().map(|b| table[usize::from(*b)]).collect();
        self.next = Some(t + len);
        if self.push(TapEvent::Audio { at: at(t), samples }) {
            true
        } else {
            self.overflow_from.get_or_insert(t);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::{classify, tests::rtp, Packet};
    use std::sync::mpsc::{sync_channel, Receiver};

    fn feed(tap: &mut LegTap, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> bool {
        let p = rtp(pt, seq, ts, ssrc, payload);
        let Ok(Packet::Rtp(h)) = classify(&p) else { panic!() };
        tap.on_rtp(&h, &p[h.payload_start..h.payload_end])
    }

    fn tap(cap: usize) -> (LegTap, Receiver<TapFrame>) {
        let (tx, rx) = sync_channel(cap);
        (LegTap::new(1, 0, Leg::Caller, Some(101), tx), rx)
    }

    fn events(rx: &Receiver<TapFrame>) -> Vec<TapEvent> {
        rx.try_iter().map(|f| f.event).collect()
    }

    #[test]
    fn decodes_with_media_time_and_marks_loss() {
        let (mut t, rx) = tap(16);
        let ts0 = u32::MAX - 159; // wraps after the first packet
        assert!(feed(&mut t, 0, 1, ts0, 7, &[0xff; 160]));
        assert!(feed(&mut t, 0, 2, ts0.wrapping_add(160), 7, &[0x80; 160]));
        // packet 3 lost
        assert!(feed(&mut t, 8, 4, ts0.wrapping_add(480), 7, &[0xd5; 160]));
        let ev = events(&rx);
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0], TapEvent::Audio { at: Duration::ZERO, samples: vec![0; 160] });
        assert_eq!(ev[1], TapEvent::Audio { at: Duration::from_millis(20), samples: vec![32124; 160] });
        assert_eq!(
            ev[2],
            TapEvent::Gap { from: Duration::from_millis(40), to: Duration::from_millis(60), reason: GapReason::Loss }
        );
        assert_eq!(ev[3], TapEvent::Audio { at: Duration::from_millis(60), samples: vec![8; 160] });
        // the late packet 3 arrives: its span is already a gap, nothing more is sent
        assert!(feed(&mut t, 0, 3, ts0.wrapping_add(320), 7, &[0xff; 160]));
        assert!(events(&rx).is_empty());
    }

    #[test]
    fn full_queue_drops_and_reports_the_gap_later() {
        let (mut t, rx) = tap(2);
        for i in 0..5u32 {
            feed(&mut t, 0, i as u16, i * 160, 7, &[0xff; 160]);
        }
        assert_eq!((t.sent, t.dropped), (2, 3));
        let _ = events(&rx); // the recording path catches up
        feed(&mut t, 0, 5, 5 * 160, 7, &[0xff; 160]);
        let ev = events(&rx);
        assert_eq!(
            ev[0],
            TapEvent::Gap {
                from: Duration::from_millis(40),
                to: Duration::from_millis(100),
                reason: GapReason::Overflow
            }
        );
        assert!(matches!(ev[1], TapEvent::Audio { at, .. } if at == Duration::from_millis(100)));
    }

    #[test]
    fn telephone_events_other_codecs_and_ssrc_change() {
        let (mut t, rx) = tap(16);
        feed(&mut t, 0, 1, 1000, 7, &[0xff; 160]);
        let mut ev = vec![1, 0x0a, 0, 160];
        feed(&mut t, 101, 2, 1160, 7, &ev);
        ev[1] |= 0x80;
        feed(&mut t, 18, 3, 1320, 7, &[0; 20]); // G.729
        feed(&mut t, 18, 4, 1480, 7, &[0; 20]);
        // new SSRC with an unrelated timestamp continues the timeline
        feed(&mut t, 0, 50, 90_000, 9, &[0xff; 160]);
        let got = events(&rx);
        assert!(
            matches!(&got[1], TapEvent::TelephoneEvent { at, payload, .. } if *at == Duration::from_millis(20) && payload.len() == 4)
        );
        assert_eq!(got[2], TapEvent::Untranscribable { payload_type: 18 });
        assert!(matches!(got[3], TapEvent::Audio { at, .. } if at == Duration::from_millis(20)), "{:?}", got[3]);
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn closed_receiver_disables_the_tap() {
        let (mut t, rx) = tap(2);
        drop(rx);
        feed(&mut t, 0, 1, 0, 7, &[0xff; 160]);
        assert!(t.is_closed());
    }
}
