//! Offline driver: runs whole recordings through the very same [`Pipeline`] the live tap feeds,
//! with a transcription [`Pool`], and writes everything through a [`RecordingSink`].
//!
//! Batch mode waits for every transcript (no deadline, unbounded hold: the file is already on
//! disk, nothing is live), so its output is what the pipeline clears when the workers keep up.
//! [`MemorySink`] collects a recording in RAM for `callveil redact` and tests.

use std::time::{Duration, Instant, SystemTime};

use crate::metrics::RedactMetrics;
use crate::pii::Pii;
use crate::redact::dtmf_tone::ToneFinder;
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
    // tap's DTMF events instead).
    let mut tones: Vec<_> = channels.iter().map(|_| ToneFinder::new(rate)).collect();
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
                for (s, e) in tones[c].push(f.samples) {
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
        if let Some((s, e)) = t.finish() {
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
