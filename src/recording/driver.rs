//! The recording path's driver: one thread that owns the [`RecordingPath`] core, the store
//! (the vault's recorder in production), the per-call tap queues and a transcription [`Pool`],
//! and feeds the core with events, tap frames, API signals, results and time.
//!
//! It never touches the live path except through channels that do not block it: the proxy sends
//! events on an unbounded `std` channel, the relay's taps `try_send` into a bounded queue per
//! call (`recording.tap_queue` frames; when full the tap drops and marks a gap, which is muted),
//! and commands go to the proxy's core task on an unbounded Tokio channel. If the speech model
//! is missing, the service runs without transcription: every window is released muted as
//! unverified (fail closed) and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Settings;
use crate::consent::prompts::Prompts;
use crate::media::tap::TapFrame;
use crate::metrics::{Metrics, RecordingMetrics, RedactMetrics};
use crate::recording::api::{ApiRequest, ApiSignal, ConsentApi};
use crate::recording::core::{Output, PathConfig, RecordingPath, RecordingStore};
use crate::redact::pipeline::Job;
use crate::sip::events::{CallCommand, CallEvent, MediaCommand};
use crate::transcribe::pool::{default_workers, Pool};
use crate::transcribe::whisper::{WhisperConfig, WhisperModel};
use crate::transcribe::{TranscribeError, Transcriber};

/// How long the loop waits for an event before it looks at the tap queues again: the tap
/// queues are polled, so this bounds how late a frame is seen (the pipeline does not care about
/// milliseconds; DTMF decisions are timed by media time, not by this).
const TICK: Duration = Duration::from_millis(5);
/// Most frames taken from one call's queue per turn, so one busy call cannot starve others.
const FRAMES_PER_TURN: usize = 256;
/// Cap on one call's tap queue whatever `recording.tap_queue` says: a bounded channel reserves
/// its slots up front, and 2048 frames is already 20 s of both legs of backlog.
const PER_CALL_QUEUE_MAX: usize = 2048;

/// Options the tests (and the wiring) may set beyond [`Settings`].
pub struct ServiceOptions {
    pub path: PathConfig,
    /// Frames queued per call between the relay and this service (capped at 2048).
    pub tap_queue: usize,
    /// None: no transcription (fail closed: windows muted as unverified).
    pub pool: Option<Pool>,
}

/// The running recording path.
pub struct RecordingService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    api: ConsentApi,
}

/// The transcription pool `[redaction]` asks for, or None (logged once) when the model cannot
/// be loaded.
pub fn pool_from_settings(settings: &Settings) -> Option<Pool> {
    let rc = &settings.raw.redaction;
    let model = match WhisperModel::load(&rc.model) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "speech model unavailable: recordings will be stored muted (unverified)");
            return None;
        }
    };
    let workers = if rc.workers == 0 { default_workers() } else { rc.workers };
    let wcfg = WhisperConfig { language: rc.language.code().into(), threads: 1, max_tokens: rc.max_tokens };
    let mut ts: Vec<Box<dyn Transcriber>> = Vec::new();
    for _ in 0..workers {
        match model.transcriber(wcfg.clone()) {
            Ok(t) => ts.push(Box::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "speech model unavailable: recordings will be stored muted (unverified)");
                return None;
            }
        }
    }
    match Pool::new(ts, workers * 2) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot start transcription workers: recordings will be stored muted");
            None
        }
    }
}

/// The IVR prompts of `consent.prompt_dir`; none (logged) when they cannot be loaded, in which
/// case IVR calls go on unrecorded (the gate cannot ask).
pub fn prompts_from_settings(settings: &Settings) -> Prompts {
    match Prompts::load(&settings.raw.consent.prompt_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "consent prompts unavailable: IVR calls will not be recorded");
            Prompts::default()
        }
    }
}

impl RecordingService {
    /// Starts the service from `settings` (model, prompts, queue sizes). Returns the service and
    /// the sender the proxy reports call events on.
    pub fn start(
        settings: &Settings,
        metrics: &Metrics,
        commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
        sink: Box<dyn RecordingStore>,
    ) -> std::io::Result<(RecordingService, Sender<CallEvent>)> {
        let opts = ServiceOptions {
            path: PathConfig::from_settings(settings, prompts_from_settings(settings)),
            tap_queue: settings.raw.recording.tap_queue,
            pool: pool_from_settings(settings),
        };
        RecordingService::start_with(opts, metrics.recording.clone(), metrics.redact.clone(), commands, sink)
    }

    /// As [`RecordingService::start`], with everything given.
    pub fn start_with(
        opts: ServiceOptions,
        metrics: RecordingMetrics,
        redact_metrics: RedactMetrics,
        commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
        sink: Box<dyn RecordingStore>,
    ) -> std::io::Result<(RecordingService, Sender<CallEvent>)> {
        let (events_tx, events) = mpsc::channel();
        let (api, api_rx) = ConsentApi::channel();
        let stop = Arc::new(AtomicBool::new(false));
        #[allow(clippy::disallowed_methods)] // a driver: seeds the core's time
        let (now, wall) = (Instant::now(), SystemTime::now());
        let deadline = opts.path.pipeline.deadline.unwrap_or(Duration::from_secs(20));
        let core = RecordingPath::new(opts.path, metrics.clone(), now, wall);
        let mut w = Worker {
            core,
            store: sink,
            events,
            api: api_rx,
            taps: HashMap::new(),
            tap_queue: opts.tap_queue.clamp(1, PER_CALL_QUEUE_MAX),
            pool: opts.pool,
            backlog: VecDeque::new(),
            commands,
            metrics,
            redact_metrics,
            stop: stop.clone(),
            deadline,
            job_started: HashMap::new(),
        };
        let thread = std::thread::Builder::new().name("recording".into()).spawn(move || w.run())?;
        Ok((RecordingService { stop, thread: Some(thread), api }, events_tx))
    }

    /// The handle for `POST /calls/{call_id}/consent` (`MetricsServer::start_with_api`).
    pub fn consent_api(&self) -> ConsentApi {
        self.api.clone()
    }

    /// Finishes open recordings (their held audio released cleared or muted, closed
    /// `Truncated`) and joins the thread. Blocks for at most about the pipeline deadline.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RecordingService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    core: RecordingPath,
    store: Box<dyn RecordingStore>,
    events: Receiver<CallEvent>,
    api: Receiver<ApiSignal>,
    taps: HashMap<String, Receiver<TapFrame>>,
    tap_queue: usize,
    pool: Option<Pool>,
    backlog: VecDeque<Job>,
    commands: tokio::sync::mpsc::UnboundedSender<CallCommand>,
    metrics: RecordingMetrics,
    redact_metrics: RedactMetrics,
    stop: Arc<AtomicBool>,
    deadline: Duration,
    /// When each job was handed out (for the transcription-lag metric).
    job_started: HashMap<crate::redact::pipeline::JobId, Instant>,
}

#[allow(clippy::disallowed_methods)] // the driver is the recording path's clock
fn now() -> Instant {
    Instant::now()
}

impl Worker {
    fn run(&mut self) {
        let mut events_open = true;
        while !self.stop.load(Ordering::Relaxed) {
            self.turn(&mut events_open);
        }
        // Shutdown: stop input, let the workers finish what they can within the deadline,
        // then force the rest out muted.
        let t = now();
        self.core.stop(t, &mut *self.store);
        self.outputs();
        let give_up = t + self.deadline;
        while self.core.recordings() > 0 && now() < give_up {
            self.results(TICK);
            let t = now();
            self.core.handle_timeout(t, &mut *self.store);
            self.outputs();
        }
        if self.core.recordings() > 0 {
            self.core.handle_timeout(give_up + self.deadline, &mut *self.store);
            self.outputs();
        }
    }

    fn turn(&mut self, events_open: &mut bool) {
        // Wait for an event (or a tick), then take everything that is ready.
        let first = if *events_open {
            match self.events.recv_timeout(TICK) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    *events_open = false;
                    None
                }
            }
        } else {
            std::thread::sleep(TICK);
            None
        };
        let t = now();
        if let Some(ev) = first {
            self.core.handle_event(t, ev, &mut *self.store);
        }
        while let Ok(ev) = self.events.try_recv() {
            self.core.handle_event(t, ev, &mut *self.store);
        }
        self.outputs();
        while let Ok(sig) = self.api.try_recv() {
            let known = match sig.request {
                ApiRequest::Consent(signal) => self.core.handle_api(now(), &sig.call_id, signal, &mut *self.store),
                ApiRequest::SecureEntry(on) => self.core.handle_secure_entry_api(&sig.call_id, on),
            };
            let _ = sig.reply.send(known);
        }
        self.outputs();
        let ids: Vec<String> = self.taps.keys().cloned().collect();
        for id in ids {
            for _ in 0..FRAMES_PER_TURN {
                let Some(frame) = self.taps.get(&id).and_then(|rx| rx.try_recv().ok()) else { break };
                self.core.handle_tap(now(), &id, frame, &mut *self.store);
            }
            self.outputs();
        }
        self.results(Duration::ZERO);
        // Deadlines, and a regular tick so legs that cannot be decoded are muted as time goes.
        let t = now();
        self.core.handle_timeout(t, &mut *self.store);
        self.outputs();
    }

    /// Takes finished transcriptions (waiting up to `wait` for the first).
    fn results(&mut self, wait: Duration) {
        let Some(pool) = self.pool.as_ref() else { return };
        let mut next = if wait.is_zero() { pool.try_recv() } else { pool.recv_timeout(wait) };
        while let Some(d) = next {
            let t = now();
            let lag = self.job_started.remove(&d.id).map_or(0, |s| t.saturating_duration_since(s).as_millis() as u64);
            self.redact_metrics.window(d.audio_ms, d.took.as_millis() as u64, lag);
            self.core.handle_transcript(t, d.id, d.result, &mut *self.store);
            self.outputs();
            next = self.pool.as_ref().and_then(Pool::try_recv);
        }
    }

    /// Carries out the core's outputs.
    fn outputs(&mut self) {
        loop {
            while let Some(o) = self.core.poll_output() {
                match o {
                    Output::Command(cmd) => {
                        if let CallCommand::Media(MediaCommand::CloseTap { call_id }) = &cmd {
                            self.taps.remove(call_id);
                        }
                        // The core task is gone only at shutdown; nothing to do then.
                        let _ = self.commands.send(cmd);
                    }
                    Output::OpenTap { call_id } => {
                        let (tx, rx) = mpsc::sync_channel(self.tap_queue);
                        self.taps.insert(call_id.clone(), rx);
                        let _ = self.commands.send(CallCommand::Media(MediaCommand::OpenTap { call_id, sink: tx }));
                    }
                    Output::Transcribe(job) => self.backlog.push_back(job),
                }
            }
            // Forget the queues of calls the core no longer follows.
            let core = &self.core;
            self.taps.retain(|id, _| core.knows(id));
            if !self.submit() {
                return;
            }
        }
    }

    /// Hands backlog jobs to the pool. Returns true when the core has new outputs to carry out
    /// (jobs answered at once because there is no transcriber).
    fn submit(&mut self) -> bool {
        let mut answered = false;
        while let Some(job) = self.backlog.pop_front() {
            let Some(pool) = self.pool.as_ref() else {
                // No model: fail closed at once rather than at the deadline.
                self.metrics.windows_without_transcriber.inc();
                let err = TranscribeError::ModelUnavailable("no speech model loaded".into());
                self.core.handle_transcript(now(), job.id, Err(err), &mut *self.store);
                answered = true;
                continue;
            };
            let id = job.id;
            match pool.submit(job) {
                Ok(()) => {
                    self.job_started.insert(id, now());
                }
                Err(job) => {
                    // Full: retried next turn; the pipeline mutes the window if its deadline
                    // passes first.
                    self.backlog.push_front(job);
                    break;
                }
            }
        }
        self.redact_metrics.queue_depth.set(self.backlog.len() as i64);
        answered
    }
}
