//! Voice-activity windowing: cuts one channel's sample stream into transcription windows at
//! pauses, so a window rarely splits a word and Whisper gets whole phrases.
//!
//! Energy-based (20 ms frames, RMS against a fixed dBFS threshold): deterministic, sans-IO and
//! cheap, which matters more here than the accuracy of a neural VAD, because a window the VAD
//! misjudges is still transcribed (only windows with no frame above the threshold skip ASR, and
//! those hold nothing a person said at a level a recording would carry). It does not hold audio.

/// Where to cut.
#[derive(Clone, Debug)]
pub struct VadConfig {
    /// A frame is speech when its RMS is above this (dBFS).
    pub threshold_dbfs: f32,
    /// A pause this long ends a window (once it is at least `min_window_ms` long).
    pub pause_ms: u64,
    pub min_window_ms: u64,
    /// A window is cut here even without a pause.
    pub max_window_ms: u64,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig { threshold_dbfs: -45.0, pause_ms: 600, min_window_ms: 6_000, max_window_ms: 15_000 }
    }
}

/// A closed window: absolute sample range of the channel and whether it had speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    pub start: u64,
    pub end: u64,
    pub speech: bool,
}

/// Streaming segmenter for one channel.
#[derive(Debug)]
pub struct Segmenter {
    cfg: VadConfig,
    rate: u32,
    frame: usize,
    /// Start of the open window, and samples seen (absolute).
    start: u64,
    pos: u64,
    acc: f64,
    acc_n: usize,
    speech: bool,
    /// Absolute sample where the current run of silent frames began.
    silence_from: Option<u64>,
}

impl Segmenter {
    pub fn new(cfg: VadConfig, rate: u32) -> Segmenter {
        Segmenter {
            cfg,
            rate,
            frame: (rate / 50) as usize,
            start: 0,
            pos: 0,
            acc: 0.0,
            acc_n: 0,
            speech: false,
            silence_from: None,
        }
    }

    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / self.rate as u64
    }

    /// Feeds samples; returns the windows they closed.
    pub fn push(&mut self, samples: &[i16]) -> Vec<Cut> {
        let mut cuts = Vec::new();
        let threshold = 10f64.powf(self.cfg.threshold_dbfs as f64 / 20.0) * 32_768.0;
        for &s in samples {
            self.acc += (s as f64) * (s as f64);
            self.acc_n += 1;
            self.pos += 1;
            if self.acc_n < self.frame {
                continue;
            }
            let rms = (self.acc / self.acc_n as f64).sqrt();
            self.acc = 0.0;
            self.acc_n = 0;
            let frame_start = self.pos - self.frame as u64;
            if rms > threshold {
                self.speech = true;
                self.silence_from = None;
            } else if self.silence_from.is_none() {
                self.silence_from = Some(frame_start);
            }
            let len = self.ms(self.pos - self.start);
            let pause = self.silence_from.map(|f| self.ms(self.pos - f)).unwrap_or(0);
            if self.speech && pause >= self.cfg.pause_ms && len >= self.cfg.min_window_ms {
                // Cut in the middle of the pause, so both windows keep some silence around words.
                let mid =
                    self.silence_from.unwrap_or(self.pos) + (self.pos - self.silence_from.unwrap_or(self.pos)) / 2;
                cuts.push(self.cut(mid));
            } else if len >= self.cfg.max_window_ms || (!self.speech && len >= self.cfg.min_window_ms) {
                // No pause in time (or nothing but silence): cut where we are; the detector joins
                // digit runs across the cut.
                let at = self.pos;
                cuts.push(self.cut(at));
            }
        }
        cuts
    }

    fn cut(&mut self, at: u64) -> Cut {
        let c = Cut { start: self.start, end: at, speech: self.speech };
        self.start = at;
        // Frames after the cut point (the second half of a pause) are silent by construction.
        self.speech = false;
        self.silence_from = if at < self.pos { Some(at) } else { None };
        c
    }

    /// Closes the open window (end of stream, or a gap in the tap), if it holds any samples.
    pub fn flush(&mut self) -> Option<Cut> {
        // A partial frame still counts: any non-zero sample in it makes the window speech-bearing.
        if self.acc_n > 0 && self.acc > 0.0 {
            self.speech = true;
        }
        self.acc = 0.0;
        self.acc_n = 0;
        (self.pos > self.start).then(|| {
            let at = self.pos;
            self.cut(at)
        })
    }

    /// Skips `n` samples that are not fed (a gap): the next window starts after them.
    pub fn skip(&mut self, n: u64) {
        self.pos += n;
        self.start = self.pos;
        self.speech = false;
        self.silence_from = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64) -> Vec<i16> {
        (0..ms * 8).map(|n| ((n as f64 * 0.7).sin() * 8_000.0) as i16).collect()
    }

    #[test]
    fn cuts_at_pauses_and_tiles_the_stream() {
        let cfg = VadConfig { pause_ms: 400, min_window_ms: 1_500, ..VadConfig::default() };
        let mut s = Segmenter::new(cfg, 8_000);
        let mut audio = tone(2_000);
        audio.extend(vec![0; 8 * 600]);
        audio.extend(tone(1_000));
        let mut cuts = s.push(&audio);
        cuts.extend(s.flush());
        assert!(cuts.len() >= 2, "{cuts:?}");
        assert!(cuts[0].speech);
        // Cut inside the pause (2000..2600 ms).
        assert!((16_000..=20_800).contains(&cuts[0].end), "{cuts:?}");
        for w in cuts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(cuts.last().unwrap().end, audio.len() as u64);
    }

    #[test]
    fn long_speech_is_cut_at_max_and_silence_is_marked() {
        let mut s = Segmenter::new(VadConfig::default(), 8_000);
        let cuts = s.push(&tone(30_000));
        assert!(cuts.iter().all(|c| c.end - c.start <= 15_000 * 8 && c.speech));
        let mut s = Segmenter::new(VadConfig::default(), 8_000);
        let cuts = s.push(&vec![0; 8 * 8_000]);
        assert!(!cuts.is_empty() && cuts.iter().all(|c| !c.speech));
    }
}
