//! Offline driver: runs whole recordings through the very same [`Pipeline`] the live tap feeds,
//! with a transcription [`Pool`], and writes everything through a [`RecordingSink`].
//!
//! Batch mode waits for every transcript (no deadline, unbounded hold: the file is already on
//! disk, nothing is live), so its output is what the pipeline clears when the workers keep up.
//! [`MemorySink`] collects a recording in RAM for `callveil redact` and tests.

use std::time::{Duration, Instant, SystemTime};

use crate::dtmf::goertzel::InBandDetector;
use crate::metrics::RedactMetrics;
use crate::pii::Pii;
use crate::redact::pipeline::{Frame, Output, Pipeline, PipelineConfig};
use crate::transcribe::pool::Pool;
use crate::vault::sink::{
    ClearedAudio, CloseReason, LawfulBasis, Party, RecordingId, RecordingMeta, RecordingSink, RedactionSpan, SinkError,
    TranscriptSegment,
};

/// What a batch run measured (no personal data).
#[derive(Clone, Debug, Default)]
pub struct BatchStats {
    pub audio_ms: u64,
    /// Worker time spent transcribing, per channel, summed.
    pub transcribe_ms: u64,
    pub jobs: u64,
    pub unverified_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("transcription workers stopped")]
    WorkersGone,
}

/// Runs `channels` (PCM16 at `rate`) through the pipeline and into `sink`.
pub fn run(
    mut cfg: PipelineConfig,
    rate: u32,
    channels: &[Vec<i16>],
    pool: &Pool,
    sink: &mut dyn RecordingSink,
    metrics: Option<&RedactMetrics>,
) -> Result<BatchStats, BatchError> {
    cfg.deadline = None;
    cfg.hold_ms = u64::MAX / 2_000;
    let meta = RecordingMeta {
        call_id: "offline".into(),
        route: "offline".into(),
        caller: Pii::new(String::new()),
        callee: Pii::new(String::new()),
        basis: LawfulBasis::Other { name: "offline_redaction".into() },
        retention_class: None,
        started_at: SystemTime::UNIX_EPOCH,
        channels: (0..channels.len()).map(|c| if c == 0 { Party::Caller } else { Party::Agent }).collect(),
        sample_rate: rate,
    };
    let id = sink.open(meta)?;
    // Batch time is virtual: nothing has a deadline, so one instant serves for every input.
    #[allow(clippy::disallowed_methods)] // a driver: the one clock read that seeds virtual time
    let now = Instant::now();
    let mut p = Pipeline::new(cfg, channels.len() as u8);
    let mut stats = BatchStats::default();
    let mut q = Queue { backlog: Default::default(), in_flight: 0, metrics };
    let step = (rate / 50) as usize;
    let frames = channels.iter().map(Vec::len).max().unwrap_or(0);
    stats.audio_ms = frames as u64 * 1000 / rate as u64;
    // Keypad tones in the recording are masked as DTMF spans (the live path gets them from the
    // tap's DTMF events instead), found by the same in-band detector as live audio.
    let mut tones: Vec<_> = channels.iter().map(|_| Tones::new(rate)).collect();
    let mut at = 0;
    while at < frames {
        for (c, pcm) in channels.iter().enumerate() {
            let end = (at + step).min(pcm.len());
            if at < end {
                let f = Frame {
                    channel: c as u8,
                    media_ms: at as u64 * 1000 / rate as u64,
                    sample_rate: rate,
                    samples: &pcm[at..end],
                };
                tones[c].push(f.samples);
                while let Some((s, e)) = tones[c].poll() {
                    p.dtmf(c as u8, s, e);
                }
                // A refused frame is counted by the pipeline and becomes a muted gap.
                let _ = p.frame(now, f);
            }
        }
        at += step;
        pump(&mut p, pool, &mut q, &mut stats, sink, &id, false)?;
    }
    for (c, t) in tones.iter_mut().enumerate() {
        t.det.flush();
        while let Some((s, e)) = t.poll() {
            p.dtmf(c as u8, s, e);
        }
    }
    p.finish(now);
    while !p.is_finished() {
        pump(&mut p, pool, &mut q, &mut stats, sink, &id, true)?;
    }
    stats.unverified_ms = p.stats().unverified_ms;
    if let Some(m) = metrics {
        for (kind, n) in &p.stats().redactions {
            m.redaction(kind, *n);
        }
        m.unverified_ms.inc_by(stats.unverified_ms);
    }
    stats.jobs = p.stats().jobs;
    sink.close(&id, CloseReason::Completed)?;
    Ok(stats)
}

/// One channel's keypad tones: [`InBandDetector`] runs at 8 kHz, so 16 kHz input is averaged in
/// pairs first (a low-pass well above the highest DTMF frequency, 1633 Hz) and decimated. Only the
/// span of each key press is used; the digit is dropped here and never stored.
struct Tones {
    det: InBandDetector,
    factor: usize,
    down: Vec<i16>,
}

impl Tones {
    fn new(rate: u32) -> Tones {
        Tones { det: InBandDetector::default(), factor: (rate / 8000).max(1) as usize, down: Vec::new() }
    }

    fn push(&mut self, samples: &[i16]) {
        if self.factor == 1 {
            self.det.push(samples);
            return;
        }
        self.down.clear();
        let n = self.factor as i32;
        self.down
            .extend(samples.chunks(self.factor).map(|c| (c.iter().map(|&x| i32::from(x)).sum::<i32>() / n) as i16));
        self.det.push(&self.down);
    }

    /// The next finished key press as (start, end) in milliseconds.
    fn poll(&mut self) -> Option<(u64, u64)> {
        self.det.poll_event().map(|e| (e.start_ms, e.end_ms))
    }
}

fn pump(
    p: &mut Pipeline,
    pool: &Pool,
    q: &mut Queue<'_>,
    stats: &mut BatchStats,
    sink: &mut dyn RecordingSink,
    id: &RecordingId,
    wait: bool,
) -> Result<(), BatchError> {
    let metrics = q.metrics;
    #[allow(clippy::disallowed_methods)] // see run(): virtual time, no deadlines in batch mode
    let now = Instant::now();
    loop {
        while let Some(o) = p.poll_output() {
            match o {
                Output::Transcribe(job) => q.backlog.push_back(job),
                Output::Audio(a) => sink.audio(id, a)?,
                Output::Transcript(t) => sink.transcript(id, t)?,
                Output::Span(s) => sink.span(id, s)?,
            }
        }
        while let Some(job) = q.backlog.pop_front() {
            match pool.submit(job) {
                Ok(()) => q.in_flight += 1,
                Err(job) => {
                    q.backlog.push_front(job);
                    break;
                }
            }
        }
        if p.is_finished() {
            return Ok(());
        }
        // Block for results when the queue is full or the input has ended; otherwise only
        // collect what is already done, so feeding goes on while workers run.
        let must_wait = wait || !q.backlog.is_empty();
        if must_wait && q.in_flight == 0 {
            return Err(BatchError::WorkersGone);
        }
        let done = if must_wait { pool.recv_timeout(Duration::from_secs(600)) } else { pool.try_recv() };
        match done {
            Some(d) => {
                q.in_flight -= 1;
                stats.transcribe_ms += d.took.as_millis() as u64;
                if let Some(m) = metrics {
                    // Batch windows wait in a queue, so lag here is the worker time alone.
                    m.window(d.audio_ms, d.took.as_millis() as u64, d.took.as_millis() as u64);
                    m.queue_depth.set(q.backlog.len() as i64);
                }
                p.transcript(now, d.id, d.result);
            }
            None if must_wait => return Err(BatchError::WorkersGone),
            None => return Ok(()),
        }
    }
}

struct Queue<'m> {
    backlog: std::collections::VecDeque<crate::redact::pipeline::Job>,
    in_flight: usize,
    metrics: Option<&'m RedactMetrics>,
}

/// A sink that keeps one recording in memory (offline CLI, tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub audio: Vec<ClearedAudio>,
    pub transcript: Vec<TranscriptSegment>,
    pub spans: Vec<RedactionSpan>,
    pub closed: Option<CloseReason>,
}

impl MemorySink {
    /// Cleared PCM of `channel`, `len` samples long (anything never released stays silent).
    pub fn channel_pcm(&self, channel: u8, rate: u32, len: usize) -> Vec<i16> {
        let mut out = vec![0i16; len];
        for a in self.audio.iter().filter(|a| a.channel() == channel) {
            let first = (a.start_ms() * rate as u64 / 1000) as usize;
            // start_ms is rounded down to the millisecond; at 8/16 kHz a millisecond is a whole
            // number of samples, so `first` is exact.
            for (k, &s) in a.samples().iter().enumerate() {
                if let Some(o) = out.get_mut(first + k) {
                    *o = s;
                }
            }
        }
        out
    }
}

impl RecordingSink for MemorySink {
    fn open(&mut self, _meta: RecordingMeta) -> Result<RecordingId, SinkError> {
        Ok(RecordingId("memory".into()))
    }
    fn audio(&mut self, _id: &RecordingId, audio: ClearedAudio) -> Result<(), SinkError> {
        self.audio.push(audio);
        Ok(())
    }
    fn transcript(&mut self, _id: &RecordingId, segment: TranscriptSegment) -> Result<(), SinkError> {
        self.transcript.push(segment);
        Ok(())
    }
    fn span(&mut self, _id: &RecordingId, span: RedactionSpan) -> Result<(), SinkError> {
        self.spans.push(span);
        Ok(())
    }
    fn close(&mut self, _id: &RecordingId, reason: CloseReason) -> Result<(), SinkError> {
        self.closed = Some(reason);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digit 5 (770 + 1336 Hz) for `ms` after `lead_ms` of silence, at `rate`.
    fn key_press(rate: u32, lead_ms: usize, ms: usize) -> Vec<i16> {
        let per_ms = rate as usize / 1000;
        let mut pcm = vec![0i16; lead_ms * per_ms];
        pcm.extend((0..ms * per_ms).map(|i| {
            let t = i as f64 / f64::from(rate);
            let tau = std::f64::consts::TAU;
            (4000.0 * (tau * 770.0 * t).sin() + 4000.0 * (tau * 1336.0 * t).sin()) as i16
        }));
        pcm.extend(vec![0i16; 200 * per_ms]);
        pcm
    }

    #[test]
    fn keypad_tones_are_found_at_8_and_16_khz() {
        for rate in [8000, 16000] {
            let pcm = key_press(rate, 300, 120);
            let mut t = Tones::new(rate);
            let mut spans = Vec::new();
            for frame in pcm.chunks(rate as usize / 50) {
                t.push(frame);
                spans.extend(std::iter::from_fn(|| t.poll()));
            }
            t.det.flush();
            spans.extend(std::iter::from_fn(|| t.poll()));
            assert_eq!(spans.len(), 1, "{rate} Hz: {spans:?}");
            let (s, e) = spans[0];
            assert!((280..=300).contains(&s) && (420..=440).contains(&e), "{rate} Hz: {s}..{e}");
        }
        // speech-free noise gives nothing
        let mut t = Tones::new(8000);
        let noise: Vec<i16> = (0..16000u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 20) as i16) - 2048).collect();
        t.push(&noise);
        t.det.flush();
        assert!(t.poll().is_none());
    }
}
