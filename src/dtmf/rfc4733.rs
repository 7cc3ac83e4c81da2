//! RFC 4733 telephone-events: the payload parser and a per-stream tracker that turns the packets
//! of one RTP stream into exactly one [`DtmfEvent`] per key press.
//!
//! A sender repeats the packets of an event while the key is held (same RTP timestamp, growing
//! duration) and sends the end packet three times; the network may also duplicate or reorder them.
//! The tracker identifies an event by its RTP timestamp and remembers the last few finished ones,
//! so repeats, retransmissions and late packets are dropped. If an event's end packets are all
//! lost, it is closed when the next event starts or on [`EventTracker::flush`]. Long events split
//! into segments (RFC 4733 §2.5.1.3) are reported per segment. Non-DTMF events (codes 16 and up)
//! are parsed but ignored.

use std::collections::VecDeque;
use std::fmt;

use super::{Digit, DtmfEvent, DtmfSource};

/// Size of one telephone-event payload (RFC 4733 §2.3).
pub const PAYLOAD_LEN: usize = 4;

/// How many finished events' timestamps are remembered for de-duplication.
const DONE_MEMORY: usize = 16;

/// A parsed telephone-event payload. Not `Debug`: the event code is a digit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (RFC 4733 §3.2: 0-15 are DTMF).
    pub event: u8,
    /// E bit: this is (one of the repeats of) the event's last packet.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units, counted from the packet's RTP timestamp.
    pub duration: u16,
}

impl TelephoneEvent {
    /// The DTMF key, or `None` for other events.
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_event_code(self.event)
    }
}

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// A telephone-event payload is exactly four bytes; this one was `len`.
    Length { len: usize },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Length { len } => {
                write!(f, "telephone-event payload is {len} bytes, expected {PAYLOAD_LEN}")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// Parses one telephone-event payload (RFC 4733 §2.3). The reserved bit is ignored.
pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, PayloadError> {
    let &[event, flags, d0, d1] = payload else {
        return Err(PayloadError::Length { len: payload.len() });
    };
    Ok(TelephoneEvent { event, end: flags & 0x80 != 0, volume: flags & 0x3f, duration: u16::from_be_bytes([d0, d1]) })
}

#[derive(Clone, Copy)]
struct Current {
    ts: u32,
    /// RTP timestamp units from the stream's base, unwrapped.
    offset: i64,
    digit: Digit,
    duration: u16,
}

/// Turns the telephone-event packets of one RTP stream into one [`DtmfEvent`] per key press.
pub struct EventTracker {
    clock_rate: u64,
    base_ts: u32,
    /// The newest timestamp seen and its unwrapped offset from `base_ts`.
    newest: Option<(u32, i64)>,
    current: Option<Current>,
    done: [Option<u32>; DONE_MEMORY],
    done_next: usize,
    ready: VecDeque<DtmfEvent>,
    last_seq: Option<u16>,
    duplicates: u64,
}

impl EventTracker {
    /// `clock_rate` is the telephone-event clock from the SDP (usually 8000); `base_ts` is the RTP
    /// timestamp of media time zero (the stream's first packet), so events line up with the audio.
    pub fn new(clock_rate: u32, base_ts: u32) -> Self {
        EventTracker {
            clock_rate: u64::from(clock_rate.max(1)),
            base_ts,
            newest: None,
            current: None,
            done: [None; DONE_MEMORY],
            done_next: 0,
            ready: VecDeque::new(),
            last_seq: None,
            duplicates: 0,
        }
    }

    /// Feeds one packet. A payload that does not parse is refused and changes nothing.
    /// Finished events are collected with [`EventTracker::poll_event`].
    pub fn feed(&mut self, rtp_ts: u32, seq: u16, payload: &[u8]) -> Result<(), PayloadError> {
        let ev = parse(payload)?;
        if self.last_seq == Some(seq) {
            // An exact retransmission of the packet just seen.
            self.duplicates += 1;
            return Ok(());
        }
        self.last_seq = Some(seq);
        let Some(digit) = ev.digit() else {
            return Ok(());
        };
        if self.done.contains(&Some(rtp_ts)) {
            self.duplicates += 1;
            return Ok(());
        }
        match self.current {
            Some(ref mut c) if c.ts == rtp_ts => {
                c.duration = c.duration.max(ev.duration);
                if ev.end {
                    self.finish();
                }
            }
            Some(c) if serial_newer(rtp_ts, c.ts) => {
                // The previous event's end packets never came: close it with what was seen.
                self.finish();
                self.start(rtp_ts, digit, ev);
            }
            Some(_) => {
                // A late packet of an event older than the current one and never seen before:
                // only its end packet carries the full duration; report that one.
                if ev.end {
                    let offset = self.offset_of(rtp_ts);
                    self.emit(rtp_ts, offset, digit, ev.duration);
                }
            }
            None => self.start(rtp_ts, digit, ev),
        }
        Ok(())
    }

    /// Closes an event whose end packets never came (call it when the stream ends).
    pub fn flush(&mut self) {
        self.finish();
    }

    /// The next finished key press, oldest first.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.ready.pop_front()
    }

    /// Packets dropped as repeats or retransmissions of events already reported or in progress.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn start(&mut self, ts: u32, digit: Digit, ev: TelephoneEvent) {
        let offset = self.offset_of(ts);
        self.newest = Some((ts, offset));
        self.current = Some(Current { ts, offset, digit, duration: ev.duration });
        if ev.end {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some(c) = self.current.take() {
            self.emit(c.ts, c.offset, c.digit, c.duration);
        }
    }

    fn emit(&mut self, ts: u32, offset: i64, digit: Digit, duration: u16) {
        self.done[self.done_next] = Some(ts);
        self.done_next = (self.done_next + 1) % DONE_MEMORY;
        let start = u64::try_from(offset).unwrap_or(0);
        let end = start + u64::from(duration);
        self.ready.push_back(DtmfEvent {
            digit,
            start_ms: start * 1000 / self.clock_rate,
            end_ms: end * 1000 / self.clock_rate,
            source: DtmfSource::Rfc4733,
        });
    }

    /// Unwraps `ts` relative to the newest timestamp seen (or the base for the first one).
    fn offset_of(&self, ts: u32) -> i64 {
        let (ref_ts, ref_offset) = self.newest.unwrap_or((self.base_ts, 0));
        ref_offset + i64::from(ts.wrapping_sub(ref_ts) as i32)
    }
}

/// RFC 1982 serial-number comparison on 32-bit RTP timestamps.
fn serial_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(code: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [code, (u8::from(end) << 7) | (volume & 0x3f), d[0], d[1]]
    }

    fn drain(t: &mut EventTracker) -> Vec<DtmfEvent> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    /// One key press as a sender emits it: updates every 20 ms, then the end packet three times.
    fn press(t: &mut EventTracker, seq: &mut u16, ts: u32, code: u8, total: u16) {
        let mut d = 160;
        while d < total {
            t.feed(ts, *seq, &pkt(code, false, 10, d)).unwrap();
            *seq = seq.wrapping_add(1);
            d += 160;
        }
        for _ in 0..3 {
            t.feed(ts, *seq, &pkt(code, true, 10, total)).unwrap();
            *seq = seq.wrapping_add(1);
        }
    }

    #[test]
    fn parses_fields() {
        let ev = parse(&[11, 0x80 | 0x40 | 13, 0x03, 0x20]).unwrap();
        assert_eq!(ev.event, 11);
        assert!(ev.end);
        assert_eq!(ev.volume, 13);
        assert_eq!(ev.duration, 800);
        assert_eq!(ev.digit(), Some(Digit::Hash));
        let ev = parse(&[16, 0x3f, 0, 0]).unwrap();
        assert!(!ev.end);
        assert_eq!(ev.volume, 63);
        assert_eq!(ev.digit(), None);
    }

    #[test]
    fn hostile_payloads_are_refused_without_panic() {
        for len in [0usize, 1, 2, 3, 5, 8, 1500] {
            let bytes = vec![0xffu8; len];
            assert_eq!(parse(&bytes).err(), Some(PayloadError::Length { len }));
            let mut t = EventTracker::new(8000, 0);
            assert!(t.feed(0, 0, &bytes).is_err());
            assert_eq!(t.poll_event(), None);
        }
        // Every 4-byte pattern parses; random streams of them never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut t = EventTracker::new(0, u32::MAX);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            let _ = t.feed(u32::from_le_bytes([b[4], b[5], 0, b[7]]), u16::from(b[6]), &b[..4]);
            let _ = t.feed(x as u32, b[3].into(), &b[..(b[2] % 7) as usize]);
        }
        t.flush();
        for ev in drain(&mut t) {
            assert!(ev.end_ms >= ev.start_ms);
        }
    }

    #[test]
    fn one_event_per_press_with_media_time() {
        let base = 1_000;
        let mut t = EventTracker::new(8000, base);
        let mut seq = 7;
        // '5' pressed 1 s into the stream for 100 ms (800 units).
        press(&mut t, &mut seq, base + 8000, 5, 800);
        let evs = drain(&mut t);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].digit, Digit::D5);
        assert_eq!((evs[0].start_ms, evs[0].end_ms), (1000, 1100));
        assert_eq!(evs[0].source, DtmfSource::Rfc4733);
        assert_eq!(t.duplicates(), 2);
        // Retransmissions arriving later are still dropped.
        t.feed(base + 8000, 100, &pkt(5, true, 10, 800)).unwrap();
        t.feed(base + 8000, 101, &pkt(5, false, 10, 320)).unwrap();
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn several_presses_and_same_digit_twice() {
        let mut t = EventTracker::new(8000, 0);
        let mut seq = 0;
        for (i, code) in [1u8, 1, 9, 10, 11, 15].into_iter().enumerate() {
            press(&mut t, &mut seq, 4000 + i as u32 * 2400, code, 640);
        }
        let got: String = drain(&mut t).iter().map(|e| e.digit.as_char()).collect();
        assert_eq!(got, "119*#D");
    }

    #[test]
    fn reordered_and_lost_end_packets() {
        let mut t = EventTracker::new(8000, 0);
        // End packets before the updates; updates arriving afterwards are ignored.
        t.feed(800, 3, &pkt(2, true, 10, 480)).unwrap();
        t.feed(800, 1, &pkt(2, false, 10, 160)).unwrap();
        t.feed(800, 2, &pkt(2, false, 10, 320)).unwrap();
        t.feed(800, 4, &pkt(2, true, 10, 480)).unwrap();
        // A press whose end packets are all lost is closed by the next press.
        t.feed(8000, 5, &pkt(3, false, 10, 160)).unwrap();
        t.feed(8000, 6, &pkt(3, false, 10, 320)).unwrap();
        t.feed(16000, 7, &pkt(4, false, 10, 160)).unwrap();
        // A late end packet of the closed press is not a second event.
        t.feed(8000, 8, &pkt(3, true, 10, 400)).unwrap();
        // ...and the last one by flush.
        t.flush();
        let evs = drain(&mut t);
        let got: Vec<(char, u64, u64)> = evs.iter().map(|e| (e.digit.as_char(), e.start_ms, e.end_ms)).collect();
        assert_eq!(got, vec![('2', 100, 160), ('3', 1000, 1040), ('4', 2000, 2020)]);
    }

    #[test]
    fn timestamp_wrap_and_non_dtmf_events() {
        let base = u32::MAX - 4000;
        let mut t = EventTracker::new(8000, base);
        let mut seq = u16::MAX - 2;
        t.feed(base.wrapping_add(800), seq, &pkt(16, true, 0, 800)).unwrap();
        seq = seq.wrapping_add(1);
        press(&mut t, &mut seq, base.wrapping_add(8000), 0, 800);
        press(&mut t, &mut seq, base.wrapping_add(16000), 12, 800);
        let got: Vec<(char, u64)> = drain(&mut t).iter().map(|e| (e.digit.as_char(), e.start_ms)).collect();
        assert_eq!(got, vec![('0', 1000), ('A', 2000)]);
    }
}
