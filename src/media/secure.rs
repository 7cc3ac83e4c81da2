//! Secure entry: real-time suppression of the caller's DTMF toward the agent (callee) leg, so an
//! agent never hears or receives the digits a caller keys in (card numbers, security codes).
//!
//! The relay core consults this only for caller → callee RTP of a stream with secure entry on.
//! RFC 4733 telephone-event packets (payload types from either leg's SDP) are dropped outright.
//! G.711 audio (PT 0 / 8) is decoded into a [`ToneSuppressor`], which runs the in-band detector's
//! single-window test ([`crate::dtmf::goertzel::ToneTest`], Q.24-style level, twist, peak and
//! energy tests; digit identity is ignored and never kept) over every [`WINDOW`]-sample window
//! that ends in the packet, stepping back [`HOP`] samples from its end and reaching into the
//! previous packet's tail. A hit replaces the whole packet by encoded silence, and the next
//! [`HANGOVER_MS`] of packets stay silent, which covers the tone's ragged end and the gap to the
//! next digit's check.
//!
//! **Leak bound.** A packet is muted when any window that ends inside it holds tone; the last
//! window is the packet's final [`WINDOW`] samples. So the only tone that can reach the agent is
//! at the onset of a key press, in the packet where it starts, and only when it starts within the
//! packet's last [`WINDOW`] samples: at most [`LEAK_BOUND_SAMPLES`] (12.75 ms) per key press for
//! tones the detector accepts (per-tone amplitude ≥ 200, i.e. above about -44 dBFS; twist within
//! Q.24's 8 dB normal / 4 dB reverse, which the detector accepts with a 1 dB margin). Tones outside
//! those limits are not valid DTMF for a Q.24 receiver either and pass.
//! Other codecs (G.729, Opus...) cannot be inspected here and pass unchanged: routes that need
//! secure entry should offer only G.711. No packet is delayed: the decision is made on the packet
//! in hand, so secure entry adds no latency.
//!
//! Cost: only streams with secure entry on pay for decoding and about four 102-sample Goertzel
//! windows (eight filters, five more on windows that look like a tone) per 20 ms packet; the
//! buffer is allocated once per stream.

use crate::dtmf::goertzel::{DetectorConfig, ToneTest, HOP, WINDOW};
use crate::media::playout::Law;

/// Silence kept after the last packet that held tone.
pub const HANGOVER_MS: usize = 40;
const HANGOVER_SAMPLES: usize = HANGOVER_MS * 8;
/// Most tone samples per key press that can reach the callee (see the module documentation).
pub const LEAK_BOUND_SAMPLES: usize = WINDOW;

/// In-band tone state of one stream's caller → callee audio.
#[derive(Debug)]
pub struct ToneSuppressor {
    test: ToneTest,
    /// The previous packet's last `WINDOW - 1` samples, then the current packet's.
    hist: Vec<i16>,
    /// Samples still to mute after the last hit.
    hangover: usize,
    /// Samples replaced by silence so far (for the metrics).
    pub muted_samples: u64,
}

impl Default for ToneSuppressor {
    fn default() -> Self {
        ToneSuppressor::new()
    }
}

impl ToneSuppressor {
    pub fn new() -> ToneSuppressor {
        ToneSuppressor {
            test: ToneTest::new(DetectorConfig::default()),
            hist: Vec::with_capacity(WINDOW + 480),
            hangover: 0,
            muted_samples: 0,
        }
    }

    /// One packet's G.711 payload. Returns true when the packet must go out as silence.
    pub fn check(&mut self, law: Law, payload: &[u8]) -> bool {
        let tail = self.hist.len();
        let table = match law {
            Law::Ulaw => &crate::media::g711::ULAW,
            Law::Alaw => &crate::media::g711::ALAW,
        };
        self.hist.extend(payload.iter().map(|&b| table[usize::from(b)]));
        let len = self.hist.len();
        let mut hit = false;
        let mut end = len;
        // every window that holds at least one new sample, newest first
        while end >= WINDOW && end > tail {
            if self.test.classify(&self.hist[end - WINDOW..end]).is_some() {
                hit = true;
                break;
            }
            end -= HOP;
        }
        self.hist.drain(..len.saturating_sub(WINDOW - 1));
        let mute = if hit {
            self.hangover = HANGOVER_SAMPLES;
            true
        } else if self.hangover > 0 {
            self.hangover = self.hangover.saturating_sub(payload.len());
            true
        } else {
            false
        };
        if mute {
            self.muted_samples += payload.len() as u64;
        }
        mute
    }
}
