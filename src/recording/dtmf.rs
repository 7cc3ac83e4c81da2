//! One DTMF stream per call leg from the tap: RFC 4733 telephone-event packets (through
//! [`EventTracker`]) and in-band tones in the decoded audio (through [`InBandDetector`]), both
//! reported in the leg's tap media time (milliseconds since the leg's first tapped packet).
//!
//! SIP INFO key presses carry no media time and are merged by the recording path itself. This
//! module keeps no digits once an event is handed out, logs nothing and reads no clock.

use std::time::Duration;

use crate::dtmf::goertzel::InBandDetector;
use crate::dtmf::rfc4733::{EventTracker, PayloadError};
use crate::dtmf::DtmfEvent;

const RATE: u64 = 8_000;
/// A hole in the audio up to this long is bridged with silence so a tone split by one lost
/// packet is still one key press; longer holes restart the detector at the new position.
const BRIDGE_SAMPLES: u64 = RATE / 2;

fn samples(at: Duration) -> u64 {
    (at.as_micros() as u64).saturating_mul(RATE) / 1_000_000
}

/// DTMF detection state of one leg.
pub struct LegDtmf {
    events: EventTracker,
    /// Telephone-event packets carry no sequence number through the tap; a running count keeps
    /// the tracker's "same packet twice" check from firing on distinct packets.
    seq: u16,
    inband: InBandDetector,
    /// Leg sample index of the in-band detector's sample 0.
    origin: u64,
    /// Leg sample index one past the last audio pushed.
    next: Option<u64>,
    /// Events of a detector replaced after a long gap, already in leg media time.
    pending: Vec<DtmfEvent>,
}

impl Default for LegDtmf {
    fn default() -> Self {
        LegDtmf::new()
    }
}

impl LegDtmf {
    pub fn new() -> LegDtmf {
        LegDtmf {
            events: EventTracker::new(RATE as u32, 0),
            seq: 0,
            inband: InBandDetector::default(),
            origin: 0,
            next: None,
            pending: Vec::new(),
        }
    }

    /// Decoded audio at leg media time `at`. Overlapping audio (already seen) is skipped.
    pub fn audio(&mut self, at: Duration, pcm: &[i16]) {
        let start = samples(at);
        let end = start + pcm.len() as u64;
        let next = match self.next {
            None => {
                self.origin = start;
                start
            }
            Some(n) => n,
        };
        if end <= next {
            return;
        }
        if start > next {
            if start - next <= BRIDGE_SAMPLES {
                let silence = vec![0i16; (start - next) as usize];
                self.inband.push(&silence);
            } else {
                self.restart(start);
            }
        }
        let skip = next.saturating_sub(start) as usize;
        self.inband.push(&pcm[skip.min(pcm.len())..]);
        self.next = Some(end);
    }

    /// The tap reported no audio over a span: a long one restarts in-band detection after it.
    pub fn gap(&mut self, to: Duration) {
        let to = samples(to);
        if let Some(n) = self.next {
            if to > n + BRIDGE_SAMPLES {
                self.restart(to);
            }
        }
    }

    fn restart(&mut self, at: u64) {
        self.inband.flush();
        let old = std::mem::take(&mut self.inband);
        self.drain_into(old);
        self.origin = at;
        self.next = Some(at);
    }

    fn drain_into(&mut self, mut old: InBandDetector) {
        let origin_ms = self.origin * 1000 / RATE;
        while let Some(mut e) = old.poll_event() {
            e.start_ms += origin_ms;
            e.end_ms += origin_ms;
            self.pending.push(e);
        }
    }

    /// One RFC 4733 telephone-event payload at leg media time `at` (the event's RTP timestamp).
    pub fn telephone_event(&mut self, at: Duration, payload: &[u8]) -> Result<(), PayloadError> {
        self.seq = self.seq.wrapping_add(1);
        // Media time zero is the leg's first tapped packet: its RTP timestamp is the base.
        self.events.feed(samples(at) as u32, self.seq, payload)
    }

    /// The stream ended: report key presses still in progress.
    pub fn flush(&mut self) {
        self.events.flush();
        self.inband.flush();
    }

    /// The next finished key press, in leg media time.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        if let Some(e) = self.events.poll_event() {
            return Some(e);
        }
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        let origin_ms = self.origin * 1000 / RATE;
        self.inband.poll_event().map(|mut e| {
            e.start_ms += origin_ms;
            e.end_ms += origin_ms;
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::{Digit, DtmfSource};

    fn tone(n: usize) -> Vec<i16> {
        // Digit 9: 852 Hz + 1477 Hz.
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let w = 2.0 * std::f64::consts::PI;
                (5000.0 * (w * 852.0 * t).sin() + 5000.0 * (w * 1477.0 * t).sin()) as i16
            })
            .collect()
    }

    fn feed(d: &mut LegDtmf, from_ms: u64, pcm: &[i16]) {
        for (k, chunk) in pcm.chunks(160).enumerate() {
            d.audio(Duration::from_millis(from_ms + k as u64 * 20), chunk);
        }
    }

    #[test]
    fn repeated_end_packets_give_one_press_at_its_media_time() {
        let mut d = LegDtmf::new();
        for dur in [400u16, 800, 1200, 1200, 1200] {
            let end = if dur == 1200 { 0x8a } else { 0x0a };
            let p = [5, end, (dur >> 8) as u8, dur as u8];
            d.telephone_event(Duration::from_millis(2_000), &p).unwrap();
        }
        let e = d.poll_event().expect("one press");
        assert_eq!((e.digit, e.source, e.start_ms, e.end_ms), (Digit::D5, DtmfSource::Rfc4733, 2_000, 2_150));
        assert!(d.poll_event().is_none());
        assert!(d.telephone_event(Duration::ZERO, &[1, 2, 3]).is_err());
    }

    #[test]
    fn in_band_times_survive_a_late_start_and_a_long_gap() {
        let mut d = LegDtmf::new();
        // The leg's tap starts at 10 s of media time; tone at 10.2 s for 160 ms.
        feed(&mut d, 10_000, &vec![0; 1600]);
        let mut pcm = tone(1280);
        pcm.extend(vec![0; 1600]);
        feed(&mut d, 10_200, &pcm);
        // A 5 s hole, then another press at 15.6 s.
        d.gap(Duration::from_millis(15_600));
        let mut pcm = tone(1280);
        pcm.extend(vec![0; 1600]);
        feed(&mut d, 15_600, &pcm);
        d.flush();
        let got: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|e| e.digit == Digit::D9 && e.source == DtmfSource::InBand));
        assert!((10_190..=10_240).contains(&got[0].start_ms), "{got:?}");
        assert!((15_590..=15_640).contains(&got[1].start_ms), "{got:?}");
    }
}
