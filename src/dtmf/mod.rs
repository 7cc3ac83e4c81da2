//! DTMF detection, sans-IO: two detectors that turn media into one [`DtmfEvent`] per key press.
//!
//! [`rfc4733::EventTracker`] reads RFC 4733 telephone-event payloads of one RTP stream (fed with
//! the packet's RTP timestamp, sequence number and payload) and collapses the repeated end packets,
//! retransmissions and reordering into a single event per press. [`goertzel::InBandDetector`]
//! finds DTMF tones in decoded PCM16 audio at 8 kHz (ITU-T Q.23/Q.24 style: eight Goertzel filters,
//! twist limits, minimum level, minimum duration and pause), so speech and noise do not trigger it.
//! Both report media time (milliseconds from the stream's start) so the recording path can mask
//! the tone. This module does no I/O, reads no clock and keeps no digits once an event is handed
//! out; it does not handle SIP INFO, secure-entry suppression or the consent gate, which consume
//! these events elsewhere. A [`Digit`] prints as `{REDACTED}` (digits are never logged); the
//! consent gate reads it through the explicit [`Digit::as_char`].

pub mod goertzel;
pub mod info;
pub mod rfc4733;

use std::fmt;

/// A DTMF key. `Debug` and `Display` print `{REDACTED}`: use [`Digit::as_char`] where the real
/// key is needed (the consent gate), so every such place is easy to find in review.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digit {
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    D8,
    D9,
    Star,
    Hash,
    A,
    B,
    C,
    D,
}

impl Digit {
    /// Every key, in RFC 4733 event-code order (0-9, `*`, `#`, A-D).
    pub const ALL: [Digit; 16] = [
        Digit::D0,
        Digit::D1,
        Digit::D2,
        Digit::D3,
        Digit::D4,
        Digit::D5,
        Digit::D6,
        Digit::D7,
        Digit::D8,
        Digit::D9,
        Digit::Star,
        Digit::Hash,
        Digit::A,
        Digit::B,
        Digit::C,
        Digit::D,
    ];

    /// The key as a character (`0`-`9`, `*`, `#`, `A`-`D`). The only way to read the digit.
    pub fn as_char(&self) -> char {
        match self {
            Digit::D0 => '0',
            Digit::D1 => '1',
            Digit::D2 => '2',
            Digit::D3 => '3',
            Digit::D4 => '4',
            Digit::D5 => '5',
            Digit::D6 => '6',
            Digit::D7 => '7',
            Digit::D8 => '8',
            Digit::D9 => '9',
            Digit::Star => '*',
            Digit::Hash => '#',
            Digit::A => 'A',
            Digit::B => 'B',
            Digit::C => 'C',
            Digit::D => 'D',
        }
    }

    /// The key for an RFC 4733 §3.2 event code; `None` for codes that are not DTMF (16 and up).
    pub fn from_event_code(code: u8) -> Option<Digit> {
        Digit::ALL.get(usize::from(code)).copied()
    }

    /// The RFC 4733 event code of this key.
    pub fn event_code(&self) -> u8 {
        Digit::ALL.iter().position(|d| d == self).unwrap_or(0) as u8
    }
}

impl fmt::Debug for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{REDACTED}")
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{REDACTED}")
    }
}

/// Where an event was detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfSource {
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// Tones in the decoded audio.
    InBand,
}

/// One key press, with its media time (milliseconds from the stream's start) so the recording
/// path can mask it. `Debug` is safe to log: the digit prints as `{REDACTED}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfEvent {
    pub digit: Digit,
    pub start_ms: u64,
    pub end_ms: u64,
    pub source: DtmfSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_never_print() {
        for d in Digit::ALL {
            assert_eq!(format!("{d}"), "{REDACTED}");
            assert_eq!(format!("{d:?}"), "{REDACTED}");
            let ev = DtmfEvent { digit: d, start_ms: 1, end_ms: 2, source: DtmfSource::InBand };
            assert_eq!(format!("{ev:?}"), "DtmfEvent { digit: {REDACTED}, start_ms: 1, end_ms: 2, source: InBand }");
        }
    }

    #[test]
    fn event_codes_round_trip() {
        for (i, d) in Digit::ALL.iter().enumerate() {
            assert_eq!(Digit::from_event_code(i as u8), Some(*d));
            assert_eq!(usize::from(d.event_code()), i);
        }
        assert_eq!(Digit::from_event_code(16), None);
        assert_eq!(Digit::from_event_code(255), None);
        let chars: String = Digit::ALL.iter().map(Digit::as_char).collect();
        assert_eq!(chars, "0123456789*#ABCD");
    }
}
