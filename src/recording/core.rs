//! [`RecordingPath`]: the sans-IO core of the live recording path, one per callveil instance,
//! one call state per call the proxy reports.
//!
//! Inputs: [`CallEvent`]s from the proxy, [`TapFrame`]s from the media relay's tap (by call id:
//! the driver keeps one tap queue per call), consent signals from the API, transcription results
//! and time. Outputs: [`Output`]s to carry out ([`CallCommand`]s for the proxy core task, taps to
//! open, transcription jobs), and writes to the [`RecordingStore`] it is handed with each input.
//!
//! Per call, a consent [`Gate`] decides. Before recording is permitted, tap audio is used for
//! in-band DTMF detection and dropped at once: it is never buffered or passed on (invariant 1).
//! From the decision instant, frames go to a redaction [`Session`]; nothing reaches the store
//! except what the redaction pipeline has cleared or muted (invariant 2). DTMF digits go to the
//! gate only; during a recording their spans are masked, the digits themselves never stored
//! (invariant 4). The core never reads a clock, blocks, or logs personal data.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{ConsentConfig, Route, Settings};
use crate::consent::prompts::{Prompt, Prompts};
use crate::consent::{Action, Basis, Decision, Gate, GateConfig, Method, Source};
use crate::dtmf::{Digit, DtmfEvent};
use crate::media::tap::{TapEvent, TapFrame};
use crate::metrics::RecordingMetrics;
use crate::pii::Pii;
use crate::recording::dtmf::LegDtmf;
use crate::recording::session::Session;
use crate::redact::pipeline::{Job, JobId, PipelineConfig};
use crate::sip::events::{CallCommand, CallEvent, ConsentSignal, MediaCommand};
use crate::sip::sdp::Leg;
use crate::transcribe::{TranscribeError, Word};
use crate::vault::sink::{CloseReason, LawfulBasis, Party, RecordingId, RecordingMeta, RecordingSink, SinkError};

/// One consent decision for the ledger (what `Action::Ledger` asks to be kept as proof).
#[derive(Clone, Debug)]
pub struct LedgerEntry {
    pub call_id: String,
    pub route: String,
    /// Stored only as a keyed hash by the ledger.
    pub caller: Pii<String>,
    pub decision: Decision,
    pub method: Method,
    pub basis: Basis,
    /// The IVR prompt the caller heard: id, language, sha256 (IVR mode only).
    pub prompt: Option<(String, String, String)>,
    pub at: SystemTime,
    /// The call's recording, where one was opened (a revocation's recording).
    pub recording_id: Option<String>,
}

/// The append-only consent ledger.
pub trait ConsentLedger {
    /// Appends `entry`; returns the ledger record's id (the recording's `ledger_ref`).
    fn append_consent(&mut self, entry: LedgerEntry) -> Result<String, SinkError>;
}

impl ConsentLedger for crate::vault::recorder::Recorder {
    fn append_consent(&mut self, e: LedgerEntry) -> Result<String, SinkError> {
        crate::vault::recorder::Recorder::append_consent(
            self,
            crate::vault::ConsentRecord {
                call_id: e.call_id,
                caller: e.caller,
                route: e.route,
                basis: e.basis,
                method: e.method,
                decision: e.decision,
                prompt: e.prompt.map(|(id, language, sha256)| crate::vault::PromptRef { id, language, sha256 }),
                decided_at: e.at,
                recording_id: e.recording_id,
            },
        )
    }
}

/// What the recording path writes to: recordings and the consent ledger.
pub trait RecordingStore: RecordingSink + ConsentLedger {}
impl<T: RecordingSink + ConsentLedger> RecordingStore for T {}

/// Configuration of the core, resolved from [`Settings`].
#[derive(Clone)]
pub struct PathConfig {
    pub enabled: bool,
    pub consent: ConsentConfig,
    pub routes: Vec<Route>,
    pub pipeline: PipelineConfig,
    pub prompts: Prompts,
}

impl PathConfig {
    /// From settings, with the IVR prompts loaded by the driver (empty when none could be).
    pub fn from_settings(settings: &Settings, prompts: Prompts) -> PathConfig {
        PathConfig {
            enabled: settings.raw.recording.enabled,
            consent: settings.raw.consent.clone(),
            routes: settings.routes.clone(),
            pipeline: crate::cli::redact::pipeline_config(&settings.raw.redaction),
            prompts,
        }
    }
}

/// What the driver must carry out.
#[derive(Debug)]
pub enum Output {
    /// For the proxy's core task.
    Command(CallCommand),
    /// Open a tap queue for the call and send `MediaCommand::OpenTap` with its sender.
    OpenTap { call_id: String },
    /// Transcribe; answer with [`RecordingPath::handle_transcript`] (ids are unique across calls).
    Transcribe(Job),
}

fn channel(leg: Leg) -> usize {
    match leg {
        Leg::Caller => 0,
        Leg::Callee => 1,
    }
}

const LEGS: [Leg; 2] = [Leg::Caller, Leg::Callee];

fn close_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::Completed => "completed",
        CloseReason::Revoked { purge: true } => "purged",
        CloseReason::Revoked { purge: false } => "revoked",
        CloseReason::Truncated => "truncated",
    }
}

struct Call {
    route: String,
    caller: Pii<String>,
    callee: Pii<String>,
    gate: Gate,
    prompt: Option<Prompt>,
    dtmf: [LegDtmf; 2],
    /// Leg media time right after the last tapped audio (the leg's "now" before a recording).
    last_end: [Option<Duration>; 2],
    untranscribable: [bool; 2],
    /// The tap's stream (m-line) recorded: the first one seen. Frames of other audio streams
    /// of the call are refused (two streams on one channel would overlap).
    stream: Option<u8>,
    tap_open: bool,
    session: Option<Session>,
    retention: Option<String>,
    ledger_ref: Option<String>,
    /// Id of the recording once opened (kept after it closes, for the ledger).
    recording_id: Option<String>,
    /// How many of the gate's ignored signals are already counted in the metrics.
    ignored_counted: u64,
    ended: bool,
}

/// The recording path's core (see the module docs). Drain contract: after every input call
/// [`RecordingPath::poll_output`] until `None`; call [`RecordingPath::handle_timeout`] at
/// [`RecordingPath::poll_timeout`].
pub struct RecordingPath {
    cfg: PathConfig,
    /// One instant and the wall-clock time it corresponds to, so wall times can be derived
    /// from `Instant`s without reading a clock.
    wall: (Instant, SystemTime),
    calls: HashMap<String, Call>,
    /// Global job id -> (call, the session's own job id).
    jobs: HashMap<JobId, (String, JobId)>,
    next_job: u64,
    out: VecDeque<Output>,
    metrics: RecordingMetrics,
}

impl RecordingPath {
    pub fn new(cfg: PathConfig, metrics: RecordingMetrics, now: Instant, wall: SystemTime) -> RecordingPath {
        RecordingPath {
            cfg,
            wall: (now, wall),
            calls: HashMap::new(),
            jobs: HashMap::new(),
            next_job: 0,
            out: VecDeque::new(),
            metrics,
        }
    }

    fn wall_at(&self, now: Instant) -> SystemTime {
        self.wall.1 + now.saturating_duration_since(self.wall.0)
    }

    /// Calls followed now.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Recordings open now (including those still draining).
    pub fn recordings(&self) -> usize {
        self.calls.values().filter(|c| c.session.is_some()).count()
    }

    pub fn knows(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// An event from the proxy.
    pub fn handle_event(&mut self, now: Instant, ev: CallEvent, store: &mut dyn RecordingStore) {
        match ev {
            CallEvent::Started { call_id, caller, callee, route, held } => {
                self.started(now, call_id, caller, callee, route, held, store)
            }
            CallEvent::Answered { call_id } => {
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.gate.on_answered(now);
                    self.step(now, &call_id, store);
                }
            }
            CallEvent::Consent { call_id, signal } => {
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.gate.on_signal(now, Source::Header, signal);
                    self.step(now, &call_id, store);
                }
            }
            CallEvent::RetentionClass { call_id, class } => {
                if let Some(c) = self.calls.get_mut(&call_id) {
                    // Before the recording opens, it is created in this class; after, it moves
                    // (expiry from its start). Either way the vault's policy has the last word.
                    if let Some(id) = &c.recording_id {
                        let id = RecordingId(id.clone());
                        if let Err(e) = store.retention_class(&id, &class) {
                            tracing::warn!(recording = %id, error = %e, "retention class not applied");
                        }
                    }
                    c.retention = Some(class);
                }
            }
            CallEvent::InfoDtmf { call_id, leg, digit, duration_ms } => {
                if let Some(c) = self.calls.get_mut(&call_id) {
                    if let Some(s) = c.session.as_mut() {
                        s.dtmf_now(now, channel(leg), duration_ms);
                    }
                    c.gate.on_digit(now, leg, digit);
                    self.step(now, &call_id, store);
                }
            }
            CallEvent::Ended { call_id } => {
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.ended = true;
                    for ch in 0..2 {
                        c.dtmf[ch].flush();
                    }
                    Self::collect_dtmf(c, now);
                    if let Some(s) = c.session.as_mut() {
                        s.finish(now, CloseReason::Completed);
                    }
                    c.gate.on_ended(now);
                    self.step(now, &call_id, store);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn started(
        &mut self,
        now: Instant,
        call_id: String,
        caller: Pii<String>,
        callee: Pii<String>,
        route: String,
        held: bool,
        store: &mut dyn RecordingStore,
    ) {
        if self.calls.contains_key(&call_id) {
            self.metrics.rejected("duplicate_call");
            return;
        }
        let Some(r) = self.cfg.routes.iter().find(|r| r.name == route).cloned() else {
            // No route, no policy: never record; never strand a held INVITE either.
            self.metrics.rejected("unknown_route");
            tracing::warn!(route = %route, "recording path: call on an unknown route, not recorded");
            if held {
                self.out.push_back(Output::Command(CallCommand::Release { call_id }));
            }
            return;
        };
        if !self.cfg.enabled {
            if held {
                self.out.push_back(Output::Command(CallCommand::Release { call_id }));
            }
            return;
        }
        let prompt =
            self.cfg.prompts.get(&r.language).or_else(|| self.cfg.prompts.get(&self.cfg.consent.language)).cloned();
        let gcfg = GateConfig::new(&self.cfg.consent, &r, prompt.as_ref().map(|p| p.duration));
        let gate = Gate::new(gcfg, now, held);
        if r.secure_entry {
            self.out.push_back(Output::Command(CallCommand::Media(MediaCommand::SecureEntry {
                call_id: call_id.clone(),
                on: true,
            })));
        }
        self.calls.insert(
            call_id.clone(),
            Call {
                route: r.name.clone(),
                caller,
                callee,
                gate,
                prompt,
                dtmf: [LegDtmf::new(), LegDtmf::new()],
                last_end: [None; 2],
                untranscribable: [false; 2],
                stream: None,
                tap_open: false,
                session: None,
                retention: None,
                ledger_ref: None,
                recording_id: None,
                ignored_counted: 0,
                ended: false,
            },
        );
        self.metrics.calls_active.set(self.calls.len() as i64);
        self.step(now, &call_id, store);
    }

    /// A consent signal from the HTTP API. Returns whether the call is known.
    pub fn handle_api(
        &mut self,
        now: Instant,
        call_id: &str,
        signal: ConsentSignal,
        store: &mut dyn RecordingStore,
    ) -> bool {
        let Some(c) = self.calls.get_mut(call_id) else { return false };
        if c.ended {
            return false;
        }
        c.gate.on_signal(now, Source::Api, signal);
        self.step(now, call_id, store);
        true
    }

    /// `POST /calls/{call_id}/secure-entry`: asks the proxy (which also stops forwarding the
    /// caller's INFO digits) and the relay to turn secure entry on or off. False for an unknown
    /// or ended call.
    pub fn handle_secure_entry_api(&mut self, call_id: &str, on: bool) -> bool {
        match self.calls.get(call_id) {
            Some(c) if !c.ended => {
                self.out.push_back(Output::Command(CallCommand::SecureEntry { call_id: call_id.to_string(), on }));
                true
            }
            _ => false,
        }
    }

    /// One item from the call's tap queue.
    pub fn handle_tap(&mut self, now: Instant, call_id: &str, frame: TapFrame, store: &mut dyn RecordingStore) {
        let Some(c) = self.calls.get_mut(call_id) else {
            self.metrics.rejected("tap_unknown_call");
            return;
        };
        if c.ended {
            return;
        }
        if *c.stream.get_or_insert(frame.stream) != frame.stream {
            self.metrics.rejected("extra_stream");
            return;
        }
        let ch = channel(frame.leg);
        match frame.event {
            TapEvent::Audio { at, samples } => {
                let recording = c.session.as_ref().is_some_and(|_| c.gate.recording_permitted());
                match c.session.as_mut() {
                    Some(s) if recording => {
                        if s.audio(now, ch, at, &samples).is_err() {
                            self.metrics.rejected("frame");
                        }
                    }
                    _ => {
                        // Before (or after) permission: counted, used for DTMF below, dropped.
                        self.metrics.frames_dropped_pre_consent.inc();
                    }
                }
                let end = at + Duration::from_micros(samples.len() as u64 * 125);
                c.last_end[ch] = Some(c.last_end[ch].map_or(end, |e| e.max(end)));
                c.dtmf[ch].audio(at, &samples);
                // `samples` is dropped here: pre-consent audio lives no longer than this call.
            }
            TapEvent::Gap { from, to, .. } => {
                if let Some(s) = c.session.as_mut() {
                    s.gap(now, ch, from, to);
                }
                c.last_end[ch] = Some(c.last_end[ch].map_or(to, |e| e.max(to)));
                c.dtmf[ch].gap(to);
            }
            TapEvent::TelephoneEvent { at, payload, .. } => {
                if c.dtmf[ch].telephone_event(at, &payload).is_err() {
                    self.metrics.rejected("telephone_event");
                }
            }
            TapEvent::Untranscribable { .. } => {
                c.untranscribable[ch] = true;
                if let Some(s) = c.session.as_mut() {
                    s.untranscribable(now, ch);
                }
            }
        }
        Self::collect_dtmf(c, now);
        self.step(now, call_id, store);
    }

    /// Detected key presses: masked in a running recording, and handed to the gate.
    fn collect_dtmf(c: &mut Call, now: Instant) {
        for leg in LEGS {
            let ch = channel(leg);
            while let Some(DtmfEvent { digit, start_ms, end_ms, .. }) = c.dtmf[ch].poll_event() {
                Self::dtmf(c, now, leg, digit, start_ms, end_ms);
            }
        }
    }

    fn dtmf(c: &mut Call, now: Instant, leg: Leg, digit: Digit, start_ms: u64, end_ms: u64) {
        let ch = channel(leg);
        if let Some(s) = c.session.as_mut() {
            match (s.rec_ms(ch, start_ms), s.rec_ms(ch, end_ms)) {
                (Some(a), Some(b)) if b > 0 => s.dtmf(ch, a, b),
                (Some(_), Some(_)) => {} // ended before the recording started
                _ => s.dtmf_now(now, ch, (end_ms.saturating_sub(start_ms)) as u32),
            }
        }
        c.gate.on_digit(now, leg, digit);
    }

    /// A transcription result for a job this core handed out.
    pub fn handle_transcript(
        &mut self,
        now: Instant,
        job: JobId,
        result: Result<Vec<Word>, TranscribeError>,
        store: &mut dyn RecordingStore,
    ) {
        let Some((call_id, local)) = self.jobs.remove(&job) else { return };
        if let Some(s) = self.calls.get_mut(&call_id).and_then(|c| c.session.as_mut()) {
            s.transcript(now, local, result);
        }
        self.step(now, &call_id, store);
    }

    /// Acts on gate and pipeline deadlines at or before `now` (and mutes legs that cannot be
    /// decoded up to `now`).
    pub fn handle_timeout(&mut self, now: Instant, store: &mut dyn RecordingStore) {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id) {
                c.gate.handle_timeout(now);
                if let Some(s) = c.session.as_mut() {
                    s.handle_timeout(now);
                }
            }
            self.step(now, &id, store);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .flat_map(|c| [c.gate.poll_timeout(), c.session.as_ref().and_then(Session::poll_timeout)])
            .flatten()
            .min()
    }

    /// Shutting down: every open recording stops taking input and closes `Truncated` once what
    /// it holds is released (call [`RecordingPath::handle_timeout`] past the pipeline deadline
    /// to force the rest out muted).
    pub fn stop(&mut self, now: Instant, store: &mut dyn RecordingStore) {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id) {
                c.ended = true;
                if let Some(s) = c.session.as_mut() {
                    s.finish(now, CloseReason::Truncated);
                }
            }
            self.step(now, &id, store);
        }
    }

    /// Carries out the call's gate actions, drains its recording and fixes its tap.
    fn step(&mut self, now: Instant, call_id: &str, store: &mut dyn RecordingStore) {
        let wall = self.wall_at(now);
        let Some(c) = self.calls.get_mut(call_id) else { return };
        while let Some(a) = c.gate.poll_action() {
            match a {
                Action::PlayPrompt => match &c.prompt {
                    Some(p) => self.out.push_back(Output::Command(CallCommand::Media(MediaCommand::Play {
                        call_id: call_id.to_string(),
                        leg: Leg::Caller,
                        pcm: p.pcm.clone(),
                    }))),
                    None => self.metrics.rejected("no_prompt"),
                },
                Action::StopPrompt => self.out.push_back(Output::Command(CallCommand::Media(MediaCommand::StopPlay {
                    call_id: call_id.to_string(),
                    leg: Leg::Caller,
                }))),
                Action::ReleaseInvite => {
                    self.out.push_back(Output::Command(CallCommand::Release { call_id: call_id.to_string() }))
                }
                Action::Ledger { decision, method, basis } => {
                    self.metrics.decision(method.as_str(), decision.as_str());
                    let entry = LedgerEntry {
                        call_id: call_id.to_string(),
                        route: c.route.clone(),
                        caller: c.caller.clone(),
                        decision,
                        method,
                        basis,
                        prompt: (method == Method::Ivr)
                            .then(|| c.prompt.as_ref().map(|p| (p.id.clone(), p.language.clone(), p.sha256.clone())))
                            .flatten(),
                        at: wall,
                        recording_id: c.recording_id.clone(),
                    };
                    match store.append_consent(entry) {
                        Ok(id) if decision == Decision::Granted => c.ledger_ref = Some(id),
                        Ok(_) => {}
                        Err(e) => {
                            self.metrics.sink_error("ledger");
                            tracing::warn!(error = %e, "consent ledger append failed");
                        }
                    }
                }
                Action::StartRecording { basis, .. } => {
                    let basis = match basis {
                        Basis::Other(name) => Some(LawfulBasis::Other { name }),
                        // No ledger record, no proof of consent: fail closed, do not record.
                        Basis::Consent => c.ledger_ref.clone().map(|r| LawfulBasis::Consent { ledger_ref: r }),
                    };
                    let Some(basis) = basis else {
                        self.metrics.rejected("no_ledger_record");
                        continue;
                    };
                    if c.session.is_some() || c.ended {
                        continue;
                    }
                    let meta = RecordingMeta {
                        call_id: call_id.to_string(),
                        route: c.route.clone(),
                        caller: c.caller.clone(),
                        callee: c.callee.clone(),
                        basis,
                        retention_class: c.retention.clone(),
                        started_at: wall,
                        channels: vec![Party::Caller, Party::Agent],
                        sample_rate: 8_000,
                    };
                    match store.open(meta) {
                        Ok(id) => {
                            c.recording_id = Some(id.0.clone());
                            let mut s = Session::new(id, now, self.cfg.pipeline.clone(), c.last_end);
                            for ch in 0..2 {
                                if c.untranscribable[ch] {
                                    s.untranscribable(now, ch);
                                }
                            }
                            c.session = Some(s);
                            self.metrics.recordings_opened.inc();
                            self.metrics.sessions_active.inc();
                        }
                        Err(e) => {
                            self.metrics.sink_error("open");
                            tracing::warn!(error = %e, "opening a recording failed; call not recorded");
                        }
                    }
                }
                Action::StopRecording { purge } => {
                    // The call's end is handled in `handle_event` (close Completed); here it is
                    // a revocation: recording stops at once.
                    if c.ended {
                        continue;
                    }
                    if let Some(s) = c.session.as_mut() {
                        let reason = CloseReason::Revoked { purge };
                        if purge {
                            // What the pipeline still holds is discarded with the rest.
                            s.abort(store, reason);
                            c.session = None;
                            self.metrics.sessions_active.dec();
                            self.metrics.closed(close_label(reason));
                        } else {
                            s.finish(now, reason);
                        }
                    }
                }
            }
        }
        let ignored = c.gate.ignored();
        if ignored > c.ignored_counted {
            self.metrics.consent_signals_ignored.inc_by(ignored - c.ignored_counted);
            c.ignored_counted = ignored;
        }
        // Drain the recording into the store.
        let mut jobs = Vec::new();
        if let Some(s) = c.session.as_mut() {
            let before = s.errors.failed;
            let closed = s.drain(store, &mut jobs);
            for _ in before..s.errors.failed {
                self.metrics.sink_error("write");
            }
            if let Some(reason) = closed {
                c.session = None;
                self.metrics.sessions_active.dec();
                self.metrics.closed(close_label(reason));
            }
        }
        for mut job in jobs {
            self.next_job += 1;
            let global = JobId(self.next_job);
            self.jobs.insert(global, (call_id.to_string(), job.id));
            job.id = global;
            self.out.push_back(Output::Transcribe(job));
        }
        // The tap is open while the gate listens for keys or a recording takes audio.
        let recording = c.session.is_some() && c.gate.recording_permitted();
        let want = !c.ended && (c.gate.wants_dtmf() || recording);
        if want && !c.tap_open {
            c.tap_open = true;
            self.out.push_back(Output::OpenTap { call_id: call_id.to_string() });
        } else if !want && c.tap_open {
            c.tap_open = false;
            self.out.push_back(Output::Command(CallCommand::Media(MediaCommand::CloseTap {
                call_id: call_id.to_string(),
            })));
        }
        if c.ended && c.session.is_none() {
            self.calls.remove(call_id);
            self.jobs.retain(|_, (id, _)| id != call_id);
            self.metrics.calls_active.set(self.calls.len() as i64);
        }
    }
}
