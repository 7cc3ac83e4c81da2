//! In-band DTMF detector for PCM16 audio at 8 kHz, in the manner of ITU-T Q.23/Q.24.
//!
//! Audio is analysed in windows of [`WINDOW`] samples (12.75 ms) every [`HOP`] samples. Each window
//! runs eight Goertzel filters tuned to the DTMF row (697-941 Hz) and column (1209-1633 Hz)
//! frequencies and names a digit only if: both the strongest row and the strongest column are above
//! a minimum level; they are within the twist limits (row up to 8 dB above column, column up to
//! 4 dB above row); each beats the other filters of its group by a margin; and together they hold
//! most of the window's energy (speech, music and noise spread theirs). A key press starts after
//! [`DetectorConfig::min_hits`] consecutive windows agree (about 40 ms of tone) and ends after
//! [`DetectorConfig::misses_to_end`] windows without it (the pause between digits). Times are
//! sample counts: the event spans the agreeing windows widened by one hop on each side, so it
//! covers the whole tone (wider, never narrower; tests hold it within 20 ms of each edge). Frequency tolerance follows from the window length:
//! ±1.5% is accepted, ±5% rejected (by the energy test). It does not look at harmonics, so it is
//! not certified against the Q.24 talk-off tapes.

use std::collections::VecDeque;
use std::f64::consts::PI;

use super::{Digit, DtmfEvent, DtmfSource};

/// Sample rate the detector expects.
pub const SAMPLE_RATE: u64 = 8000;
/// Samples per analysis window.
pub const WINDOW: usize = 102;
/// Samples between window starts.
pub const HOP: usize = 51;

const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYPAD: [[Digit; 4]; 4] = [
    [Digit::D1, Digit::D2, Digit::D3, Digit::A],
    [Digit::D4, Digit::D5, Digit::D6, Digit::B],
    [Digit::D7, Digit::D8, Digit::D9, Digit::C],
    [Digit::Star, Digit::D0, Digit::Hash, Digit::D],
];

/// Detector thresholds. `Default` gives Q.24-like values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Smallest peak amplitude of each of the two tones (PCM16 units; 200 ≈ -44 dBFS).
    pub min_tone_amplitude: f64,
    /// How far the row tone may be above the column tone, in dB.
    pub normal_twist_db: f64,
    /// How far the column tone may be above the row tone, in dB.
    pub reverse_twist_db: f64,
    /// How far the winning filter must be above the others of its group, in dB.
    pub relative_peak_db: f64,
    /// Share of the window's energy the two tones must hold together.
    pub min_energy_fraction: f64,
    /// Consecutive agreeing windows before a key press is accepted (minimum duration).
    pub min_hits: u32,
    /// Consecutive windows without the digit that end it (pause between digits).
    pub misses_to_end: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            min_tone_amplitude: 200.0,
            normal_twist_db: 8.0,
            reverse_twist_db: 4.0,
            relative_peak_db: 8.0,
            min_energy_fraction: 0.7,
            min_hits: 5,
            misses_to_end: 3,
        }
    }
}

#[derive(Clone, Copy)]
enum State {
    Idle,
    Candidate { digit: Digit, start: u64, hits: u32 },
    Active { digit: Digit, start: u64, end: u64, misses: u32 },
}

/// The single-window test: which digit, if any, one window of audio holds. [`InBandDetector`]
/// adds timing (minimum duration, pause); secure entry (`media::secure`) uses it alone, per
/// packet, to silence tones as they arrive. The window may have any length; the thresholds are
/// tuned for [`WINDOW`] samples.
#[derive(Clone, Debug)]
pub struct ToneTest {
    cfg: DetectorConfig,
    coeffs: [f64; 8],
}

/// Finds DTMF key presses in one stream of 8 kHz PCM16 audio.
pub struct InBandDetector {
    test: ToneTest,
    pending: Vec<i16>,
    /// Absolute sample index of `pending[0]`.
    consumed: u64,
    state: State,
    ready: VecDeque<DtmfEvent>,
}

impl Default for InBandDetector {
    fn default() -> Self {
        Self::new(DetectorConfig::default())
    }
}

impl InBandDetector {
    pub fn new(cfg: DetectorConfig) -> Self {
        InBandDetector {
            test: ToneTest::new(cfg),
            pending: Vec::with_capacity(WINDOW + 320),
            consumed: 0,
            state: State::Idle,
            ready: VecDeque::new(),
        }
    }

    /// Feeds the next samples of the stream (any frame size). Sample 0 is media time 0.
    pub fn push(&mut self, samples: &[i16]) {
        self.pending.extend_from_slice(samples);
        let mut at = 0;
        while self.pending.len() - at >= WINDOW {
            let hit = self.test.classify(&self.pending[at..at + WINDOW]);
            let start = self.consumed + at as u64;
            self.step(hit, start);
            at += HOP;
        }
        self.pending.drain(..at);
        self.consumed += at as u64;
    }

    /// Ends the stream: reports a key press still in progress.
    pub fn flush(&mut self) {
        if let State::Active { digit, start, end, .. } = self.state {
            self.emit(digit, start, end);
        }
        self.state = State::Idle;
    }

    /// The next finished key press, oldest first.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.ready.pop_front()
    }

    fn step(&mut self, hit: Option<Digit>, window_start: u64) {
        let window_end = window_start + WINDOW as u64;
        self.state = match (self.state, hit) {
            (State::Idle, None) => State::Idle,
            (State::Idle, Some(digit)) => self.candidate(digit, window_start, window_end, 1),
            (State::Candidate { digit, start, hits }, Some(d)) if d == digit => {
                self.candidate(digit, start, window_end, hits + 1)
            }
            (State::Candidate { .. }, Some(d)) => self.candidate(d, window_start, window_end, 1),
            (State::Candidate { .. }, None) => State::Idle,
            (State::Active { digit, start, .. }, Some(d)) if d == digit => {
                State::Active { digit, start, end: window_end, misses: 0 }
            }
            (State::Active { digit, start, end, misses }, other) => {
                if misses + 1 >= self.test.cfg.misses_to_end {
                    self.emit(digit, start, end);
                    match other {
                        Some(d) => self.candidate(d, window_start, window_end, 1),
                        None => State::Idle,
                    }
                } else {
                    State::Active { digit, start, end, misses: misses + 1 }
                }
            }
        };
    }

    fn candidate(&self, digit: Digit, start: u64, end: u64, hits: u32) -> State {
        if hits >= self.test.cfg.min_hits {
            State::Active { digit, start, end, misses: 0 }
        } else {
            State::Candidate { digit, start, hits }
        }
    }

    fn emit(&mut self, digit: Digit, start: u64, end: u64) {
        // The windows just outside the agreeing run held part of the tone too (a window that is
        // all tone agrees), so widen by one hop on each side to cover the whole tone.
        let start = start.saturating_sub(HOP as u64);
        let end = end + HOP as u64;
        self.ready.push_back(DtmfEvent {
            digit,
            start_ms: start * 1000 / SAMPLE_RATE,
            end_ms: end * 1000 / SAMPLE_RATE,
            source: DtmfSource::InBand,
        });
    }
}

impl ToneTest {
    pub fn new(cfg: DetectorConfig) -> ToneTest {
        let mut coeffs = [0.0; 8];
        for (c, f) in coeffs.iter_mut().zip(ROWS.iter().chain(COLS.iter())) {
            *c = 2.0 * (2.0 * PI * f / SAMPLE_RATE as f64).cos();
        }
        ToneTest { cfg, coeffs }
    }

    /// The digit this window holds, if it passes every test. An empty window holds none.
    pub fn classify(&self, window: &[i16]) -> Option<Digit> {
        if window.is_empty() {
            return None;
        }
        let mut power = [0.0f64; 8];
        for (p, &coeff) in power.iter_mut().zip(self.coeffs.iter()) {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &x in window {
                let s = f64::from(x) + coeff * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            *p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        }
        let energy: f64 = window.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let (row, row_p) = strongest(&power[..4]);
        let (col, col_p) = strongest(&power[4..]);
        let n = window.len() as f64;
        // A sine of amplitude A exactly on a filter gives power (A·N/2)².
        let min_p = (self.cfg.min_tone_amplitude * n / 2.0).powi(2);
        if row_p < min_p || col_p < min_p {
            return None;
        }
        if row_p > col_p * db(self.cfg.normal_twist_db) || col_p > row_p * db(self.cfg.reverse_twist_db) {
            return None;
        }
        let rel = db(self.cfg.relative_peak_db);
        let beats_group = |group: &[f64], win: usize, win_p: f64| {
            group.iter().enumerate().all(|(i, &p)| i == win || p * rel <= win_p)
        };
        if !beats_group(&power[..4], row, row_p) || !beats_group(&power[4..], col, col_p) {
            return None;
        }
        // 2·P/N is the energy over the window of the sine the filter sees.
        if 2.0 * (row_p + col_p) / n < self.cfg.min_energy_fraction * energy {
            return None;
        }
        Some(KEYPAD[row][col])
    }
}

fn db(x: f64) -> f64 {
    10f64.powf(x / 10.0)
}

fn strongest(group: &[f64]) -> (usize, f64) {
    group.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, p)| if p > best.1 { (i, p) } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: usize = SAMPLE_RATE as usize / 1000;

    fn freqs(d: Digit) -> (f64, f64) {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &k) in row.iter().enumerate() {
                if k == d {
                    return (ROWS[r], COLS[c]);
                }
            }
        }
        unreachable!()
    }

    /// A dual tone: row and column amplitudes, both frequencies scaled by `shift`.
    fn tone(d: Digit, row_amp: f64, col_amp: f64, shift: f64, ms: usize) -> Vec<i16> {
        let (fr, fc) = freqs(d);
        (0..ms * MS)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE as f64;
                let v = row_amp * (2.0 * PI * fr * shift * t).sin() + col_amp * (2.0 * PI * fc * shift * t + 0.3).sin();
                v.clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * MS]
    }

    fn run(audio: &[i16]) -> Vec<DtmfEvent> {
        let mut det = InBandDetector::default();
        for frame in audio.chunks(160) {
            det.push(frame);
        }
        det.flush();
        std::iter::from_fn(|| det.poll_event()).collect()
    }

    fn with_gaps(tone: Vec<i16>) -> Vec<i16> {
        [silence(100), tone, silence(100)].concat()
    }

    #[test]
    fn every_digit_at_several_levels_and_twists() {
        // (per-tone amplitude, row twist dB, column twist dB)
        for amp in [10_000.0, 2_000.0, 400.0] {
            for (row_db, col_db) in [(0.0, 0.0), (6.0, 0.0), (0.0, 3.0)] {
                for d in Digit::ALL {
                    let ra = amp * 10f64.powf(row_db / 20.0);
                    let ca = amp * 10f64.powf(col_db / 20.0);
                    let evs = run(&with_gaps(tone(d, ra, ca, 1.0, 100)));
                    assert_eq!(evs.len(), 1, "{} amp {amp} twist {row_db}/{col_db}", d.as_char());
                    let ev = evs[0];
                    assert_eq!(ev.digit, d);
                    assert_eq!(ev.source, DtmfSource::InBand);
                    // The tone is at 100..200 ms; the event covers it, within 20 ms each side.
                    assert!(
                        (80..=100).contains(&ev.start_ms),
                        "start {} {} amp {amp} {row_db}/{col_db}",
                        ev.start_ms,
                        d.as_char()
                    );
                    assert!((200..=220).contains(&ev.end_ms), "end {}", ev.end_ms);
                }
            }
        }
    }

    #[test]
    fn minimum_duration() {
        for d in Digit::ALL {
            for ms in [40, 45, 60] {
                let evs = run(&with_gaps(tone(d, 4000.0, 4000.0, 1.0, ms)));
                assert_eq!(evs.len(), 1, "{} {ms} ms", d.as_char());
            }
            for ms in [10, 15, 20] {
                let evs = run(&with_gaps(tone(d, 4000.0, 4000.0, 1.0, ms)));
                assert!(evs.is_empty(), "{} {ms} ms", d.as_char());
            }
        }
    }

    #[test]
    fn frequency_tolerance() {
        for d in Digit::ALL {
            for shift in [0.985, 1.015] {
                let evs = run(&with_gaps(tone(d, 4000.0, 4000.0, shift, 100)));
                assert_eq!(evs.len(), 1, "{} x{shift}", d.as_char());
                assert_eq!(evs[0].digit, d);
            }
            for shift in [0.95, 1.05, 0.93, 1.07] {
                let evs = run(&with_gaps(tone(d, 4000.0, 4000.0, shift, 100)));
                assert!(evs.is_empty(), "{} x{shift}", d.as_char());
            }
        }
    }

    #[test]
    fn excessive_twist_and_low_level_rejected() {
        for d in Digit::ALL {
            let too_low_col = run(&with_gaps(tone(d, 8000.0, 8000.0 / 10f64.powf(11.0 / 20.0), 1.0, 100)));
            assert!(too_low_col.is_empty(), "{} normal twist", d.as_char());
            let too_high_col = run(&with_gaps(tone(d, 4000.0, 4000.0 * 10f64.powf(7.0 / 20.0), 1.0, 100)));
            assert!(too_high_col.is_empty(), "{} reverse twist", d.as_char());
            assert!(run(&with_gaps(tone(d, 60.0, 60.0, 1.0, 100))).is_empty());
            // One tone alone is not a digit.
            assert!(run(&with_gaps(tone(d, 8000.0, 0.0, 1.0, 100))).is_empty());
        }
    }

    #[test]
    fn digit_sequence_with_short_pauses() {
        let keys = [Digit::D1, Digit::D1, Digit::Star, Digit::D9, Digit::Hash];
        let mut audio = silence(50);
        for d in keys {
            audio.extend(tone(d, 3000.0, 3000.0, 1.0, 50));
            audio.extend(silence(45));
        }
        let got: Vec<Digit> = run(&audio).iter().map(|e| e.digit).collect();
        assert_eq!(got, keys);
    }

    #[test]
    fn tone_in_moderate_noise_still_detected() {
        let mut rng = Rng(42);
        for d in Digit::ALL {
            let audio: Vec<i16> = with_gaps(tone(d, 4000.0, 4000.0, 1.0, 80))
                .into_iter()
                .map(|x| x.saturating_add(rng.uniform(400)))
                .collect();
            let evs = run(&audio);
            assert_eq!(evs.len(), 1, "{}", d.as_char());
            assert_eq!(evs[0].digit, d);
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in [-amp, amp].
        fn uniform(&mut self, amp: i64) -> i16 {
            ((self.next() % (2 * amp as u64 + 1)) as i64 - amp) as i16
        }
    }

    #[test]
    fn white_noise_does_not_trigger() {
        for (seed, amp) in [(1u64, 30_000i64), (7, 8_000), (99, 1_000)] {
            let mut rng = Rng(seed);
            let audio: Vec<i16> = (0..30 * SAMPLE_RATE as usize).map(|_| rng.uniform(amp)).collect();
            assert!(run(&audio).is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn speech_like_harmonics_do_not_trigger() {
        // A voiced signal: 25 harmonics with a falling spectrum, pitch gliding between 80 and
        // 300 Hz (so harmonics sweep across every DTMF frequency), with a slow syllable envelope.
        for (lo, hi, rate) in [(80.0, 180.0, 3.0), (150.0, 300.0, 5.0), (90.0, 260.0, 1.3)] {
            let mut phases = [0.0f64; 25];
            let audio: Vec<i16> = (0..20 * SAMPLE_RATE as usize)
                .map(|i| {
                    let t = i as f64 / SAMPLE_RATE as f64;
                    let f0 = lo + (hi - lo) * (0.5 + 0.5 * (2.0 * PI * 0.37 * rate * t).sin());
                    let env = 0.55 + 0.45 * (2.0 * PI * rate * t).sin();
                    let mut v = 0.0;
                    for (k, ph) in phases.iter_mut().enumerate() {
                        let h = (k + 1) as f64;
                        *ph += 2.0 * PI * f0 * h / SAMPLE_RATE as f64;
                        if f0 * h < 3800.0 {
                            v += ph.sin() * 6000.0 / h.powf(0.8);
                        }
                    }
                    (v * env).clamp(-32768.0, 32767.0) as i16
                })
                .collect();
            assert!(run(&audio).is_empty(), "pitch {lo}-{hi}");
        }
    }
}
