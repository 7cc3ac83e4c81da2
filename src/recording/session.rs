//! One open recording: maps each tap leg's media time onto recording time (milliseconds since
//! the instant recording was permitted), feeds the redaction [`Pipeline`] and writes what it
//! releases to the [`RecordingSink`].
//!
//! Audio older than the start is dropped here, so no earlier audio reaches storage. Tap gaps and
//! a leg whose codec cannot be decoded become muted `unverified` spans (fail closed); DTMF spans
//! are always masked. The session never holds audio itself (the pipeline's hold buffer is the
//! only one), never reads a clock and never logs what was said or keyed.

use std::time::{Duration, Instant};

use crate::redact::pipeline::{Frame, Job, JobId, Output, Pipeline, PipelineConfig};
use crate::transcribe::{TranscribeError, Word};
use crate::vault::sink::{CloseReason, RecordingId, RecordingSink, SinkError};

const RATE: u32 = 8_000;

fn samples(at: Duration) -> i64 {
    ((at.as_micros() as u64).saturating_mul(u64::from(RATE)) / 1_000_000) as i64
}

fn ms(samples: i64) -> u64 {
    (samples.max(0) as u64) * 1000 / u64::from(RATE)
}

/// How one tap leg lines up with the recording.
#[derive(Clone, Copy, Debug, Default)]
struct LegClock {
    /// Leg sample index at recording time zero; None until known.
    origin: Option<i64>,
    /// The leg's codec cannot be decoded: everything from here on is muted.
    dead_from_ms: Option<u64>,
    /// Recording time (ms) up to which the channel has input (audio or gaps).
    covered_ms: u64,
    /// The pipeline's channel has its sample rate (it has had a frame).
    started: bool,
}

/// Why a frame was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefusedFrame {
    #[error("no such channel")]
    NoSuchChannel,
    #[error("the leg is muted for the rest of the call")]
    LegMuted,
    #[error("the recording is closing")]
    Closing,
    #[error(transparent)]
    Pipeline(#[from] crate::redact::pipeline::FrameError),
}

/// What the sink calls of a session produced, for counting (no personal data).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteErrors {
    pub failed: u64,
}

pub struct Session {
    id: RecordingId,
    start: Instant,
    pipeline: Pipeline,
    legs: [LegClock; 2],
    closing: Option<CloseReason>,
    pub errors: WriteErrors,
}

impl Session {
    /// `last_end[ch]`: the leg media time right after the last audio the tap delivered before
    /// the decision (None: no audio seen yet on that leg).
    pub fn new(id: RecordingId, start: Instant, cfg: PipelineConfig, last_end: [Option<Duration>; 2]) -> Session {
        let mut legs = [LegClock::default(); 2];
        for (l, e) in legs.iter_mut().zip(last_end) {
            l.origin = e.map(samples);
        }
        Session { id, start, pipeline: Pipeline::new(cfg, 2), legs, closing: None, errors: WriteErrors::default() }
    }

    pub fn id(&self) -> &RecordingId {
        &self.id
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// The recording-time sample of leg media time `at`, learning the origin from the first
    /// frame of a leg that had no audio before the start (it is taken to be "now").
    fn rec_samples(&mut self, ch: usize, now: Instant, at: Duration) -> i64 {
        let elapsed = (now.saturating_duration_since(self.start).as_micros() as i64) * i64::from(RATE) / 1_000_000;
        let origin = *self.legs[ch].origin.get_or_insert(samples(at) - elapsed);
        samples(at) - origin
    }

    /// Recording time of a leg media time (ms, clamped at zero); None before the origin is known.
    pub fn rec_ms(&self, ch: usize, at_ms: u64) -> Option<u64> {
        let origin = self.legs.get(ch)?.origin?;
        Some(ms(at_ms as i64 * i64::from(RATE) / 1000 - origin))
    }

    /// Decoded audio of channel `ch` at leg media time `at`. Returns how many samples were
    /// dropped for being older than the start.
    pub fn audio(&mut self, now: Instant, ch: usize, at: Duration, pcm: &[i16]) -> Result<usize, RefusedFrame> {
        if ch > 1 {
            return Err(RefusedFrame::NoSuchChannel);
        }
        if self.legs[ch].dead_from_ms.is_some() {
            return Err(RefusedFrame::LegMuted);
        }
        if self.closing.is_some() {
            return Err(RefusedFrame::Closing);
        }
        let rec = self.rec_samples(ch, now, at);
        let len = pcm.len() as i64;
        if rec + len <= 0 {
            return Ok(pcm.len());
        }
        let skip = (-rec).max(0) as usize;
        let rec = rec.max(0);
        let media_ms = ms(rec);
        let f = Frame { channel: ch as u8, media_ms, sample_rate: RATE, samples: &pcm[skip..] };
        let r = self.pipeline.frame(now, f).map(|()| skip).map_err(RefusedFrame::from);
        self.legs[ch].started |= r.is_ok();
        self.legs[ch].covered_ms = self.legs[ch].covered_ms.max(ms(rec + len - skip as i64));
        r
    }

    /// The tap lost audio on `ch` over leg media time `[from, to)`.
    pub fn gap(&mut self, now: Instant, ch: usize, from: Duration, to: Duration) {
        if ch > 1 || self.closing.is_some() {
            return;
        }
        let a = self.rec_samples(ch, now, from);
        let b = samples(to) - samples(from) + a;
        if b <= 0 {
            return;
        }
        self.ensure_channel(now, ch);
        self.pipeline.gap(now, ch as u8, ms(a), ms(b));
        self.legs[ch].covered_ms = self.legs[ch].covered_ms.max(ms(b));
    }

    /// The leg's codec cannot be decoded: the rest of it is muted as unverified.
    pub fn untranscribable(&mut self, now: Instant, ch: usize) {
        if ch > 1 {
            return;
        }
        let from = self.legs[ch].covered_ms;
        self.legs[ch].dead_from_ms.get_or_insert(from);
        self.extend_dead(now);
    }

    /// A channel that never had audio has no sample rate in the pipeline yet; an empty frame at
    /// its current position gives it one so gaps can be recorded.
    fn ensure_channel(&mut self, now: Instant, ch: usize) {
        if !self.legs[ch].started {
            let at = self.legs[ch].covered_ms;
            let f = Frame { channel: ch as u8, media_ms: at, sample_rate: RATE, samples: &[] };
            self.legs[ch].started = self.pipeline.frame(now, f).is_ok();
        }
    }

    /// Mutes dead legs up to the present.
    fn extend_dead(&mut self, now: Instant) {
        let end = self.elapsed_ms(now);
        for ch in 0..2 {
            if self.legs[ch].dead_from_ms.is_some() && self.legs[ch].covered_ms < end {
                self.ensure_channel(now, ch);
                let from = self.legs[ch].covered_ms;
                self.pipeline.gap(now, ch as u8, from, end);
                self.legs[ch].covered_ms = end;
            }
        }
    }

    /// A key press on `ch` over recording time `[start_ms, end_ms)`: always masked.
    pub fn dtmf(&mut self, ch: usize, start_ms: u64, end_ms: u64) {
        self.pipeline.dtmf(ch as u8, start_ms, end_ms.max(start_ms));
    }

    /// A key press from SIP INFO: no media time, so it is placed at "now" for its duration.
    pub fn dtmf_now(&mut self, now: Instant, ch: usize, duration_ms: u32) {
        let end = self.elapsed_ms(now);
        self.dtmf(ch, end.saturating_sub(u64::from(duration_ms.max(100))), end);
    }

    pub fn transcript(&mut self, now: Instant, job: JobId, result: Result<Vec<Word>, TranscribeError>) {
        self.pipeline.transcript(now, job, result);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.extend_dead(now);
        self.pipeline.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pipeline.poll_timeout()
    }

    /// Stops taking input: what is held is released (cleared or muted) as jobs finish or
    /// their deadlines pass, then the recording closes with `reason`.
    pub fn finish(&mut self, now: Instant, reason: CloseReason) {
        if self.closing.is_none() {
            self.extend_dead(now);
            self.pipeline.finish(now);
            self.closing = Some(reason);
        }
    }

    /// Writes what the pipeline released into `sink`, and returns the transcription jobs it
    /// asked for. Returns the close reason once the recording has been closed.
    pub fn drain(&mut self, sink: &mut dyn RecordingSink, jobs: &mut Vec<Job>) -> Option<CloseReason> {
        while let Some(o) = self.pipeline.poll_output() {
            let r: Result<(), SinkError> = match o {
                Output::Transcribe(job) => {
                    jobs.push(job);
                    Ok(())
                }
                Output::Audio(a) => sink.audio(&self.id, a),
                Output::Transcript(t) => sink.transcript(&self.id, t),
                Output::Span(s) => sink.span(&self.id, s),
            };
            if let Err(e) = r {
                // Lost writes are lost audio, never leaked audio; SinkError texts hold no PII.
                self.errors.failed += 1;
                tracing::warn!(recording = %self.id, error = %e, "recording sink write failed");
            }
        }
        match self.closing {
            Some(reason) if self.pipeline.is_finished() => {
                if let Err(e) = sink.close(&self.id, reason) {
                    self.errors.failed += 1;
                    tracing::warn!(recording = %self.id, error = %e, "recording close failed");
                }
                Some(reason)
            }
            _ => None,
        }
    }

    /// Closes at once without releasing what is held (revocation: held audio is discarded).
    pub fn abort(&mut self, sink: &mut dyn RecordingSink, reason: CloseReason) {
        if let Err(e) = sink.close(&self.id, reason) {
            self.errors.failed += 1;
            tracing::warn!(recording = %self.id, error = %e, "recording close failed");
        }
    }
}
