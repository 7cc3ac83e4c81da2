//! In-band DTMF detector for PCM16 audio at 8 kHz, in the manner of ITU-T Q.23/Q.24.
//!
//! Audio is analysed in windows of [`WINDOW`] samples (12.75 ms) every [`HOP`] samples. Each window
//! runs Goertzel filters tuned to the DTMF row (697-941 Hz) and column (1209-1633 Hz) frequencies
//! and names a digit only if: both the strongest row and the strongest column are above a minimum
//! level; each beats the other filters of its group by a margin; together they hold most of the
//! window's energy (speech, music and noise spread theirs); and they are within the twist limits.
//! A key press starts after [`DetectorConfig::min_hits`] consecutive windows agree and ends after
//! [`DetectorConfig::misses_to_end`] windows without it (the pause between digits). Times are
//! sample counts: the event spans the agreeing windows widened by one hop on each side, so it
//! covers the whole tone (wider, never narrower; tests hold it within 20 ms of each edge). It does
//! not look at harmonics, so it is not certified against the Q.24 talk-off tapes.
//!
//! Measured with sox-made tones on many phase and onset alignments (`tests/dtmf_real.rs`):
//! - level: each tone's peak at least 200 (about -44 dBFS; the two together about -38 dBFS);
//! - duration: every press of 32 ms or more accepted (of 40 ms or more at 1.5% frequency error),
//!   none of 23 ms or less (Q.24: accept 40 ms, reject about 20 ms). Four agreeing windows, not
//!   five: with five, 7 of 192 presses of 40 ms at 1.5% frequency error were missed;
//! - pause: 40 ms between two presses of the same key gives two events;
//! - frequency: ±1.5% accepted, ±3.5% rejected (at ±2.5% a few presses pass);
//! - twist: up to 8.5 dB normal and 4.5 dB reverse accepted, from 9.5 dB and 5.5 dB rejected.
//!
//! **Twist and the weighted filters.** Q.24 asks a receiver to accept a row tone up to 8 dB above
//! the column tone (normal twist) and a column tone up to 4 dB above the row (reverse twist). On
//! one 102-sample window the plain Goertzel filters do not measure that ratio steadily: the louder
//! tone's sidelobes leak into the weaker tone's filter and add or cancel with the tones' phases.
//! Over all keys and phases, a steady 4 dB reverse twist read 3.3 to 5.0 dB from window to window
//! and an 8 dB normal twist 6.3 to 10.1 dB (10.4 dB at 1.5% frequency error); the same leak made
//! `0` (941 + 1336 Hz) fail the column peak test on up to 17% of windows at 8 dB normal twist. With
//! limits at the nominal 4 / 8 dB, only 17 of 384 sox-made presses at 4 dB reverse twist and 26 of
//! 384 at 8 dB normal twist were detected. So the column filters and the winning row filter are
//! also run over the Hann-weighted window, whose sidelobes fall fast, and the column peak test and
//! the twist use those: the same tones read 3.9 to 4.1 dB and 7.8 to 8.2 dB, plus a bias of up to
//! 0.5 dB at 1.5% frequency error (the two groups' filters lose different amounts off-centre).
//! The limits are Q.24's plus 1 dB for that bias and G.711 quantisation:
//! [`DetectorConfig::normal_twist_db`] 9 dB, [`DetectorConfig::reverse_twist_db`] 5 dB. The row
//! peak, level and energy tests keep the plain filters: rows are only about one filter bandwidth
//! apart, where the plain window puts each row filter near a null of its neighbours' response and
//! a tapered one would not (columns are 1.6 to 2 bandwidths apart, where Hann separates them
//! better). Cost: eight plain filter runs per window, and five weighted ones only for windows that
//! pass the level, row peak and energy tests.

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
    /// How far the row tone may be above the column tone, in dB (measured on Hann-weighted
    /// filters; Q.24's 8 dB plus 1 dB for estimation error, see the module documentation).
    pub normal_twist_db: f64,
    /// How far the column tone may be above the row tone, in dB (Q.24's 4 dB plus 1 dB).
    pub reverse_twist_db: f64,
    /// How far the winning filter must be above the others of its group, in dB (columns on the
    /// Hann-weighted filters).
    pub relative_peak_db: f64,
    /// Share of the window's energy the two tones must hold together.
    pub min_energy_fraction: f64,
    /// Consecutive agreeing windows before a key press is accepted (minimum duration: 4 windows
    /// span 32 ms).
    pub min_hits: u32,
    /// Consecutive windows without the digit that end it (pause between digits).
    pub misses_to_end: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            min_tone_amplitude: 200.0,
            normal_twist_db: 9.0,
            reverse_twist_db: 5.0,
            relative_peak_db: 8.0,
            min_energy_fraction: 0.7,
            min_hits: 4,
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
    /// Hann weights for a [`WINDOW`]-sample window (column peak and twist tests).
    hann: [f64; WINDOW],
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
        let hann = std::array::from_fn(|i| hann(i, WINDOW));
        ToneTest { cfg, coeffs, hann }
    }

    /// The digit this window holds, if it passes every test. An empty window holds none.
    pub fn classify(&self, window: &[i16]) -> Option<Digit> {
        if window.is_empty() {
            return None;
        }
        let mut power = [0.0f64; 8];
        for (p, &coeff) in power.iter_mut().zip(self.coeffs.iter()) {
            *p = goertzel(coeff, window.iter().map(|&x| f64::from(x)));
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
        let rel = db(self.cfg.relative_peak_db);
        let beats_group =
            |group: &[f64], win: usize| group.iter().enumerate().all(|(i, &p)| i == win || p * rel <= group[win]);
        // Rows are 73-89 Hz apart, about one filter bandwidth: the unweighted window puts each
        // row filter near a null of its neighbours' response, which a tapered window would not.
        if !beats_group(&power[..4], row) {
            return None;
        }
        // 2·P/N is the energy over the window of the sine the filter sees.
        if 2.0 * (row_p + col_p) / n < self.cfg.min_energy_fraction * energy {
            return None;
        }
        // Hann-weighted column filters and winning row (module documentation: the unweighted
        // ones let a louder row tone's sidelobes into the column filters, which broke both the
        // column peak test and the twist estimate at high twist). Last, as they cost five more
        // filter runs.
        let mut cols_w = [0.0f64; 4];
        for (k, p) in cols_w.iter_mut().enumerate() {
            *p = self.weighted_power(window, 4 + k);
        }
        if !beats_group(&cols_w, col) {
            return None;
        }
        let (row_w, col_w) = (self.weighted_power(window, row), cols_w[col]);
        if row_w > col_w * db(self.cfg.normal_twist_db) || col_w > row_w * db(self.cfg.reverse_twist_db) {
            return None;
        }
        Some(KEYPAD[row][col])
    }

    /// Power at filter `k` of the Hann-weighted window.
    fn weighted_power(&self, window: &[i16], k: usize) -> f64 {
        let coeff = self.coeffs[k];
        if window.len() == self.hann.len() {
            goertzel(coeff, window.iter().zip(&self.hann).map(|(&x, &w)| f64::from(x) * w))
        } else {
            let n = window.len();
            goertzel(coeff, window.iter().enumerate().map(|(i, &x)| f64::from(x) * hann(i, n)))
        }
    }
}

/// The Goertzel filter's power for `coeff` = 2·cos(2πf/fs) over the samples.
fn goertzel(coeff: f64, samples: impl Iterator<Item = f64>) -> f64 {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for x in samples {
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Amplitude (peak, in sample units) of a sine at `hz` in 8 kHz `samples`, by one Goertzel
/// filter over all of them: how tests and measurements read tone energy that got through.
pub fn tone_amplitude(samples: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / 8_000.0).cos();
    let p = goertzel(coeff, samples.iter().map(|&v| f64::from(v))).max(0.0);
    2.0 * p.sqrt() / samples.len().max(1) as f64
}

/// Weight of sample `i` of an `n`-sample Hann window (symmetric about the window's centre).
fn hann(i: usize, n: usize) -> f64 {
    0.5 - 0.5 * (2.0 * PI * (i as f64 + 0.5) / n as f64).cos()
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

    /// Q.24's twist limits on the signal (8 dB normal, 4 dB reverse) are accepted whatever the
    /// tones' phases and the window's offset, and with ±1.5% frequency error. Before the
    /// Hann-weighted column filters, 4 dB reverse and 8 dB normal twist were rejected on some
    /// windows (and '0' failed the column peak test at 7-8 dB normal twist).
    #[test]
    fn in_spec_twist_accepted_on_every_alignment() {
        let test = ToneTest::new(DetectorConfig::default());
        let (mut windows, mut presses) = (0, 0);
        for d in Digit::ALL {
            let (fr, fc) = freqs(d);
            for (row_db, col_db) in [(8.0, 0.0), (0.0, 4.0)] {
                for shift in [1.0, 0.985, 1.015] {
                    for k in 0..16 {
                        let (pr, pc) = (k as f64 * 0.39, (k * 7 % 16) as f64 * 0.39 + 0.2);
                        let (ra, ca) = (2000.0 * 10f64.powf(row_db / 20.0), 2000.0 * 10f64.powf(col_db / 20.0));
                        let x: Vec<i16> = (0..60 * MS)
                            .map(|i| {
                                let t = i as f64 / SAMPLE_RATE as f64;
                                let v = ra * (2.0 * PI * fr * shift * t + pr).sin()
                                    + ca * (2.0 * PI * fc * shift * t + pc).sin();
                                v.round() as i16
                            })
                            .collect();
                        // Every window at the nominal frequencies. Off-centre, the rows (one
                        // filter bandwidth apart) make the row peak test marginal on a few windows,
                        // whatever the twist; the detector below still finds every press.
                        for start in (0..=x.len() - WINDOW).step_by(5).filter(|_| shift == 1.0) {
                            windows += 1;
                            assert_eq!(
                                test.classify(&x[start..start + WINDOW]),
                                Some(d),
                                "{} twist {row_db}/{col_db} x{shift} phase {k} window at {start}",
                                d.as_char()
                            );
                        }
                        // and the detector, from a silence of varying length
                        let evs = run(&[vec![0; 400 + k * 13], x].concat());
                        presses += 1;
                        assert_eq!(evs.len(), 1, "{} twist {row_db}/{col_db} x{shift} phase {k}", d.as_char());
                        assert_eq!(evs[0].digit, d);
                    }
                }
            }
        }
        assert_eq!((windows, presses), (16 * 2 * 16 * 76, 16 * 2 * 3 * 16));
    }

    /// Beyond the limits (7 dB reverse, 10 dB normal twist), no window names a digit.
    #[test]
    fn out_of_spec_twist_rejected_on_every_alignment() {
        let test = ToneTest::new(DetectorConfig::default());
        for d in Digit::ALL {
            let (fr, fc) = freqs(d);
            for (row_db, col_db) in [(10.0, 0.0), (0.0, 7.0), (0.0, 6.0)] {
                for shift in [1.0, 0.985, 1.015] {
                    for k in 0..16 {
                        let (pr, pc) = (k as f64 * 0.39, (k * 7 % 16) as f64 * 0.39 + 0.2);
                        let (ra, ca) = (2000.0 * 10f64.powf(row_db / 20.0), 2000.0 * 10f64.powf(col_db / 20.0));
                        let x: Vec<i16> = (0..60 * MS)
                            .map(|i| {
                                let t = i as f64 / SAMPLE_RATE as f64;
                                let v = ra * (2.0 * PI * fr * shift * t + pr).sin()
                                    + ca * (2.0 * PI * fc * shift * t + pc).sin();
                                v.round() as i16
                            })
                            .collect();
                        for start in (0..=x.len() - WINDOW).step_by(5) {
                            let got = test.classify(&x[start..start + WINDOW]);
                            assert_eq!(
                                got,
                                None,
                                "{} twist {row_db}/{col_db} x{shift} phase {k} at {start}",
                                d.as_char()
                            );
                        }
                    }
                }
            }
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
