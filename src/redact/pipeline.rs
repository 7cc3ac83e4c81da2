//! The sans-IO recording-path core for one recording: frames in, cleared audio + redacted
//! transcript + spans out, with transcription requested as jobs and time given as `Instant`s.
//!
//! Per channel it holds audio in RAM (bounded by `hold_ms`), cuts it into windows at pauses
//! (`transcribe::vad`), emits a [`Job`] per speech window, feeds results in window order to the
//! streaming detector, pads and merges the detections (`plan`) and releases audio through the
//! masker (`mask`) only up to the point where no future detection can reach back: the start of
//! an undecided digit run, or the end of the last transcribed window, minus the padding.
//! Fail closed: a window whose transcription fails, misses its deadline, is pushed out by a full
//! hold buffer, or spans a tap gap is released muted as an `unverified` span, and an undecided
//! digit run next to it is redacted whatever its length. No other path produces output audio.
//!
//! Drain contract (str0m's): after every input call [`Pipeline::poll_output`] until `None`, and
//! call [`Pipeline::handle_timeout`] at [`Pipeline::poll_timeout`]. The pipeline never blocks,
//! never reads a clock and never logs transcript text or digits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::pii::Pii;
use crate::redact::detect::{DetectConfig, Settled, StreamDetector};
use crate::redact::mask::{self, MaskStyle};
use crate::redact::plan::SpanPlan;
use crate::transcribe::vad::{Segmenter, VadConfig};
use crate::transcribe::{resample, TranscribeError, Word};
use crate::vault::sink::{ClearedAudio, RedactionSpan, SpanKind, TranscriptSegment};

/// Margin around a DTMF span: the tone detector decides within ~40 ms of a tone's edges.
const DTMF_PAD_MS: u64 = 80;

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub detect: DetectConfig,
    pub vad: VadConfig,
    /// Padding on both sides of every detection.
    pub pad_ms: u64,
    /// Padding before a detected number, when larger than `pad_ms`: the first digit is the one
    /// ASR most often mishears ("twelve" as "well") or times late, so the span starts earlier.
    pub lead_pad_ms: u64,
    pub mask: MaskStyle,
    /// Most audio held per channel before the oldest window is forced out muted.
    pub hold_ms: u64,
    /// Time from a window's close to its transcript; None waits for ever (offline batch).
    pub deadline: Option<Duration>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            detect: DetectConfig::default(),
            vad: VadConfig::default(),
            pad_ms: 500,
            lead_pad_ms: 1_000,
            mask: MaskStyle::Silence,
            hold_ms: 60_000,
            deadline: Some(Duration::from_secs(20)),
        }
    }
}

/// Decoded audio from the tap: PCM16 at 8 or 16 kHz, `media_ms` from the recording's start.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub channel: u8,
    pub media_ms: u64,
    pub sample_rate: u32,
    pub samples: &'a [i16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// A window to transcribe: 16 kHz mono f32. The audio is personal data until cleared; it
/// travels only to a transcriber in this process.
pub struct Job {
    pub id: JobId,
    pub channel: u8,
    /// Media time of the window's first sample.
    pub start_ms: u64,
    pub audio: Vec<f32>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({:?}, channel {}, {} samples)", self.id, self.channel, self.audio.len())
    }
}

#[derive(Debug)]
pub enum Output {
    Transcribe(Job),
    Audio(ClearedAudio),
    Transcript(TranscriptSegment),
    Span(RedactionSpan),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("channel {0} is out of range")]
    NoSuchChannel(u8),
    #[error("unsupported sample rate {0} Hz (8000 or 16000)")]
    UnsupportedRate(u32),
    #[error("sample rate changed from {from} to {to} Hz mid-stream")]
    RateChanged { from: u32, to: u32 },
    #[error("frame overlaps audio already received")]
    Overlap,
    #[error("the recording has finished")]
    Finished,
}

/// Why a window was muted (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnverifiedCause {
    TranscriberError,
    Deadline,
    HoldFull,
    Gap,
}

/// Counters a driver exports as metrics. No personal data.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub windows: u64,
    pub jobs: u64,
    pub redactions: HashMap<&'static str, u64>,
    pub unverified_ms: u64,
    pub unverified: HashMap<&'static str, u64>,
    pub frame_errors: u64,
    pub late_dtmf: u64,
}

#[derive(Debug)]
enum WinState {
    Silent,
    Pending,
    Done(Vec<Word>),
    Failed(UnverifiedCause),
}

#[derive(Debug)]
struct Win {
    id: JobId,
    start: u64,
    end: u64,
    state: WinState,
    deadline: Option<Instant>,
}

struct Chan {
    rate: Option<u32>,
    /// Held samples, starting at absolute sample `released`.
    held: VecDeque<i16>,
    released: u64,
    /// Absolute index one past the last sample received.
    total: u64,
    seg: Option<Segmenter>,
    windows: VecDeque<Win>,
    /// End (sample) of the last window the detector has consumed.
    processed: u64,
    detector: StreamDetector,
    plan: SpanPlan,
    /// Unverified spans are masked by the plan too, but muted whole on release as well.
    finished: bool,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    chans: Vec<Chan>,
    next_job: u64,
    out: VecDeque<Output>,
    ending: bool,
    stats: Stats,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, channels: u8) -> Pipeline {
        let chans = (0..channels)
            .map(|_| Chan {
                rate: None,
                held: VecDeque::new(),
                released: 0,
                total: 0,
                seg: None,
                windows: VecDeque::new(),
                processed: 0,
                detector: StreamDetector::new(cfg.detect.clone()),
                plan: SpanPlan::default(),
                finished: false,
            })
            .collect();
        Pipeline { cfg, chans, next_job: 0, out: VecDeque::new(), ending: false, stats: Stats::default() }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Audio from the tap. A frame that starts later than the audio received so far implies a
    /// gap (muted unverified); a bad frame is refused, counted, and changes nothing.
    pub fn frame(&mut self, now: Instant, f: Frame<'_>) -> Result<(), FrameError> {
        let r = self.frame_inner(now, f);
        if r.is_err() {
            self.stats.frame_errors += 1;
        }
        r
    }

    fn frame_inner(&mut self, now: Instant, f: Frame<'_>) -> Result<(), FrameError> {
        if self.ending {
            return Err(FrameError::Finished);
        }
        let ci = f.channel as usize;
        let c = self.chans.get_mut(ci).ok_or(FrameError::NoSuchChannel(f.channel))?;
        if f.sample_rate != 8_000 && f.sample_rate != 16_000 {
            return Err(FrameError::UnsupportedRate(f.sample_rate));
        }
        match c.rate {
            Some(r) if r != f.sample_rate => return Err(FrameError::RateChanged { from: r, to: f.sample_rate }),
            Some(_) => {}
            None => {
                c.rate = Some(f.sample_rate);
                c.seg = Some(Segmenter::new(self.cfg.vad.clone(), f.sample_rate));
            }
        }
        let rate = f.sample_rate;
        let start = mask::ms_to_sample(f.media_ms, rate);
        // Allow one sample of rounding between frame times and sample counts.
        if start + 1 < c.total {
            return Err(FrameError::Overlap);
        }
        if start > c.total + (rate as u64 / 50) {
            let (from, to) = (c.total, start);
            self.gap_samples(now, ci, from, to);
        }
        let c = &mut self.chans[ci];
        c.held.extend(f.samples.iter().copied());
        c.total += f.samples.len() as u64;
        let cuts = c.seg.as_mut().map(|s| s.push(f.samples)).unwrap_or_default();
        for cut in cuts {
            self.close_window(now, ci, cut.start, cut.end, cut.speech);
        }
        self.enforce_hold(now, ci);
        self.advance(ci);
        Ok(())
    }

    /// The tap lost audio on `channel` over `[start_ms, end_ms)`.
    pub fn gap(&mut self, now: Instant, channel: u8, start_ms: u64, end_ms: u64) {
        let ci = channel as usize;
        let Some(rate) = self.chans.get(ci).and_then(|c| c.rate) else { return };
        let (from, to) = (self.chans[ci].total, mask::ms_to_sample(end_ms.max(start_ms), rate));
        if to > from {
            self.gap_samples(now, ci, from, to);
            self.advance(ci);
        }
    }

    fn gap_samples(&mut self, now: Instant, ci: usize, from: u64, to: u64) {
        if let Some(cut) = self.chans[ci].seg.as_mut().and_then(Segmenter::flush) {
            self.close_window(now, ci, cut.start, cut.end, cut.speech);
        }
        let c = &mut self.chans[ci];
        c.held.extend(std::iter::repeat_n(0, (to - from) as usize));
        c.total = to;
        if let Some(s) = c.seg.as_mut() {
            s.skip(to - from);
        }
        let id = self.job_id();
        self.chans[ci].windows.push_back(Win {
            id,
            start: from,
            end: to,
            state: WinState::Failed(UnverifiedCause::Gap),
            deadline: None,
        });
    }

    /// A DTMF digit was detected on `channel` over `[start_ms, end_ms)`: always masked, with a
    /// small margin of its own (its times come from RTP timestamps or a tone detector, not from
    /// ASR), so speech between key presses is kept.
    pub fn dtmf(&mut self, channel: u8, start_ms: u64, end_ms: u64) {
        let pad = DTMF_PAD_MS;
        let Some(c) = self.chans.get_mut(channel as usize) else { return };
        if let Some(rate) = c.rate {
            if mask::ms_to_sample(start_ms, rate) < c.released {
                // Too late to mask what was already released; counted so operators see it.
                self.stats.late_dtmf += 1;
            }
        }
        c.plan.add(start_ms, end_ms, SpanKind::Dtmf, pad);
        *self.stats.redactions.entry(SpanKind::Dtmf.as_str()).or_default() += 1;
    }

    /// The result of a [`Job`]: words with times relative to the window's start.
    pub fn transcript(&mut self, _now: Instant, job: JobId, result: Result<Vec<Word>, TranscribeError>) {
        for ci in 0..self.chans.len() {
            let c = &mut self.chans[ci];
            if let Some(w) = c.windows.iter_mut().find(|w| w.id == job) {
                if matches!(w.state, WinState::Pending) {
                    w.state = match result {
                        Ok(words) => WinState::Done(words),
                        Err(_) => WinState::Failed(UnverifiedCause::TranscriberError),
                    };
                }
                self.advance(ci);
                return;
            }
        }
        // A result for a window already muted (deadline passed): nothing to do.
    }

    /// Windows whose deadline has passed are muted.
    pub fn handle_timeout(&mut self, now: Instant) {
        for ci in 0..self.chans.len() {
            let mut changed = false;
            for w in self.chans[ci].windows.iter_mut() {
                if matches!(w.state, WinState::Pending) && w.deadline.is_some_and(|d| d <= now) {
                    w.state = WinState::Failed(UnverifiedCause::Deadline);
                    changed = true;
                }
            }
            if changed {
                self.advance(ci);
            }
        }
    }

    /// The earliest window deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.chans
            .iter()
            .flat_map(|c| c.windows.iter())
            .filter(|w| matches!(w.state, WinState::Pending))
            .filter_map(|w| w.deadline)
            .min()
    }

    /// No more frames: close open windows; the pipeline finishes once their jobs are answered
    /// (or their deadlines pass).
    pub fn finish(&mut self, now: Instant) {
        self.ending = true;
        for ci in 0..self.chans.len() {
            if let Some(cut) = self.chans[ci].seg.as_mut().and_then(Segmenter::flush) {
                self.close_window(now, ci, cut.start, cut.end, cut.speech);
            }
            self.advance(ci);
        }
    }

    /// Everything has been released.
    pub fn is_finished(&self) -> bool {
        self.ending && self.chans.iter().all(|c| c.finished) && self.out.is_empty()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn job_id(&mut self) -> JobId {
        self.next_job += 1;
        JobId(self.next_job)
    }

    fn close_window(&mut self, now: Instant, ci: usize, start: u64, end: u64, speech: bool) {
        if end <= start {
            return;
        }
        let id = self.job_id();
        self.stats.windows += 1;
        let c = &mut self.chans[ci];
        let rate = c.rate.unwrap_or(8_000);
        let state = if speech {
            let a = (start - c.released) as usize;
            let b = (end - c.released) as usize;
            let (s1, s2) = c.held.as_slices();
            // The window is always inside the held range: nothing is released past `processed`.
            let pcm: Vec<i16> = if b <= s1.len() {
                s1[a..b].to_vec()
            } else if a >= s1.len() {
                s2[a - s1.len()..b - s1.len()].to_vec()
            } else {
                s1[a..].iter().chain(&s2[..b - s1.len()]).copied().collect()
            };
            self.stats.jobs += 1;
            let start_ms = mask::sample_to_ms(start, rate);
            let audio = resample::to_16k(&pcm, rate);
            self.out.push_back(Output::Transcribe(Job { id, channel: ci as u8, start_ms, audio }));
            WinState::Pending
        } else {
            WinState::Silent
        };
        let deadline = self.cfg.deadline.and_then(|d| now.checked_add(d));
        c.windows.push_back(Win { id, start, end, state, deadline });
    }

    /// Keeps the hold buffer bounded: the oldest undecided window is muted, then an undecided
    /// digit run is broken off, until the held audio fits.
    fn enforce_hold(&mut self, _now: Instant, ci: usize) {
        let c = &mut self.chans[ci];
        let Some(rate) = c.rate else { return };
        let limit = mask::ms_to_sample(self.cfg.hold_ms, rate);
        if (c.held.len() as u64) <= limit {
            return;
        }
        if let Some(w) = c.windows.iter_mut().find(|w| matches!(w.state, WinState::Pending)) {
            w.state = WinState::Failed(UnverifiedCause::HoldFull);
        } else if c.detector.horizon_ms().is_some() {
            let resume = mask::sample_to_ms(c.processed, rate);
            let s = c.detector.break_stream(resume);
            self.apply_settled(ci, s);
        }
    }

    /// Consumes decided windows in order and releases what can no longer be affected.
    fn advance(&mut self, ci: usize) {
        let pad = self.cfg.pad_ms;
        loop {
            let c = &mut self.chans[ci];
            let Some(front) = c.windows.front() else { break };
            if matches!(front.state, WinState::Pending) {
                break;
            }
            let w = c.windows.pop_front().expect("front exists");
            let rate = c.rate.unwrap_or(8_000);
            let (start_ms, end_ms) = (mask::sample_to_ms(w.start, rate), mask::sample_to_ms(w.end, rate));
            c.processed = w.end;
            let settled = match w.state {
                WinState::Pending => unreachable!("checked above"),
                WinState::Silent => c.detector.push(Vec::new(), end_ms),
                WinState::Done(words) => {
                    let words = words
                        .into_iter()
                        .map(|mut x| {
                            x.start_ms = (start_ms + x.start_ms).min(end_ms);
                            x.end_ms = (start_ms + x.end_ms).clamp(x.start_ms, end_ms);
                            x
                        })
                        .collect::<Vec<Word>>();
                    // Fail closed on what the ASR skipped: a long stretch of speech with no word
                    // in it was not heard, so it cannot have been cleared (Whisper drops whole
                    // digit strings on narrow-band audio).
                    let thr = self.cfg.vad.threshold_dbfs;
                    for (gs, ge) in unheard_speech(&c.held, c.released, rate, (w.start, w.end), &words, thr) {
                        // Padded like detections: the words around it are timed just as loosely.
                        c.plan.add(gs, ge, SpanKind::Unverified, self.cfg.pad_ms);
                        self.stats.unverified_ms += ge - gs;
                        *self.stats.unverified.entry("asr_skipped").or_default() += 1;
                    }
                    c.detector.push(words, end_ms)
                }
                WinState::Failed(cause) => {
                    let s = c.detector.break_stream(end_ms);
                    c.plan.add(start_ms, end_ms, SpanKind::Unverified, 0);
                    self.stats.unverified_ms += end_ms - start_ms;
                    let key = match cause {
                        UnverifiedCause::TranscriberError => "transcriber_error",
                        UnverifiedCause::Deadline => "deadline",
                        UnverifiedCause::HoldFull => "hold_full",
                        UnverifiedCause::Gap => "gap",
                    };
                    *self.stats.unverified.entry(key).or_default() += 1;
                    self.out.push_back(Output::Transcript(TranscriptSegment {
                        channel: ci as u8,
                        start_ms,
                        end_ms,
                        text: Pii::new("[UNVERIFIED]".into()),
                    }));
                    s
                }
            };
            self.apply_settled(ci, settled);
        }
        let c = &mut self.chans[ci];
        let Some(rate) = c.rate else {
            if self.ending {
                c.finished = true;
            }
            return;
        };
        let all_done = self.ending && c.windows.is_empty() && c.processed >= c.total;
        if all_done && !c.finished {
            let s = c.detector.finish();
            self.apply_settled(ci, s);
        }
        let c = &mut self.chans[ci];
        let release_to = if all_done {
            c.total
        } else {
            let processed_ms = mask::sample_to_ms(c.processed, rate);
            let reach_back = pad.max(self.cfg.lead_pad_ms);
            let safe_ms =
                c.detector.horizon_ms().map_or(processed_ms, |h| h.min(processed_ms)).saturating_sub(reach_back);
            // Whole milliseconds only: ClearedAudio is placed by its start in ms.
            let to = mask::ms_to_sample(safe_ms, rate).min(c.processed);
            mask::ms_to_sample(mask::sample_to_ms(to, rate), rate)
        };
        if release_to > c.released {
            let n = (release_to - c.released) as usize;
            let pcm: Vec<i16> = c.held.drain(..n).collect();
            let audio = mask::clear(ci as u8, rate, c.released, pcm, &c.plan, self.cfg.mask);
            c.released = release_to;
            self.out.push_back(Output::Audio(audio));
        }
        let released_ms = mask::sample_to_ms(c.released, rate);
        let spans =
            if all_done { c.plan.take_all(mask::sample_to_ms(c.total, rate)) } else { c.plan.take_done(released_ms) };
        for s in spans {
            self.out.push_back(Output::Span(RedactionSpan {
                channel: ci as u8,
                start_ms: s.start_ms,
                end_ms: s.end_ms,
                kind: s.kind,
            }));
        }
        if all_done {
            c.finished = true;
        }
    }

    fn apply_settled(&mut self, ci: usize, s: Settled) {
        let pad = self.cfg.pad_ms;
        let c = &mut self.chans[ci];
        for d in &s.detections {
            let extra_lead = self.cfg.lead_pad_ms.saturating_sub(pad);
            c.plan.add(d.start_ms.saturating_sub(extra_lead), d.end_ms, d.kind, pad);
            *self.stats.redactions.entry(d.kind.as_str()).or_default() += 1;
        }
        if s.words.is_empty() {
            return;
        }
        let start_ms = s.words[0].word.start_ms;
        let end_ms = s.words.iter().map(|w| w.word.end_ms).max().unwrap_or(start_ms);
        let mut text = String::new();
        let mut prev: Option<SpanKind> = None;
        for w in &s.words {
            match w.mark {
                Some(k) if prev == Some(k) => {}
                Some(k) => push_word(&mut text, marker(k)),
                None => push_word(&mut text, w.word.text.expose().trim()),
            }
            prev = w.mark;
        }
        self.out.push_back(Output::Transcript(TranscriptSegment {
            channel: ci as u8,
            start_ms,
            end_ms,
            text: Pii::new(text),
        }));
    }
}

/// Stretches (ms) of a window, at least `MIN_UNHEARD_MS` long, that hold no recognised word but
/// at least half a second of frames above the VAD threshold.
fn unheard_speech(
    held: &VecDeque<i16>,
    held_from: u64,
    rate: u32,
    (start, end): (u64, u64),
    words: &[Word],
    threshold_dbfs: f32,
) -> Vec<(u64, u64)> {
    const MIN_UNHEARD_MS: u64 = 2_000;
    const MIN_SPEECH_MS: u64 = 500;
    let (ws, we) = (mask::sample_to_ms(start, rate), mask::sample_to_ms(end, rate));
    // A word covers at most ~1.2 s: Whisper stretches the last token of a segment over audio it
    // did not transcribe ("... 4" spanning a whole unheard card number).
    const MAX_WORD_MS: u64 = 1_200;
    let mut covered: Vec<(u64, u64)> =
        words.iter().map(|w| (w.start_ms, w.end_ms.min(w.start_ms + MAX_WORD_MS))).collect();
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut at = ws;
    for (a, b) in covered.into_iter().chain([(we, we)]) {
        if a > at && a - at >= MIN_UNHEARD_MS {
            gaps.push((at, a));
        }
        at = at.max(b);
    }
    let limit = 10f64.powf(threshold_dbfs as f64 / 20.0) * 32_768.0;
    let frame = (rate / 50) as u64;
    gaps.into_iter()
        .filter(|&(a, b)| {
            let (sa, sb) = (mask::ms_to_sample(a, rate), mask::ms_to_sample(b, rate));
            let mut speech_ms = 0;
            let mut f = sa;
            while f + frame <= sb {
                let range = (f - held_from) as usize..(f + frame - held_from) as usize;
                let e: f64 = held.range(range).map(|&x| (x as f64) * (x as f64)).sum();
                if (e / frame as f64).sqrt() > limit {
                    speech_ms += 20;
                }
                f += frame;
            }
            speech_ms >= MIN_SPEECH_MS
        })
        .collect()
}

fn push_word(text: &mut String, w: &str) {
    if w.is_empty() {
        return;
    }
    if !text.is_empty() && !w.starts_with(|c: char| ",.;:!?".contains(c)) {
        text.push(' ');
    }
    text.push_str(w);
}

/// The transcript marker for a kind: `[PAN]`, `[CVV]`, `[NATIONAL_ID]`...
pub fn marker(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Pan => "[PAN]",
        SpanKind::Cvv => "[CVV]",
        SpanKind::Expiry => "[EXPIRY]",
        SpanKind::NationalId => "[NATIONAL_ID]",
        SpanKind::Iban => "[IBAN]",
        SpanKind::Ssn => "[SSN]",
        SpanKind::Dtmf => "[DTMF]",
        SpanKind::Digits => "[DIGITS]",
        SpanKind::Unverified => "[UNVERIFIED]",
    }
}
