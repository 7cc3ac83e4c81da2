//! The live recording path's core on virtual time: synthetic tap frames, call events and API
//! signals in; commands, ledger records and sink writes out. Proves invariant 1 (nothing before
//! permission), 2 (only cleared or muted audio, gaps and undecodable legs muted), 4 (DTMF spans
//! masked, digits never stored), the gate's IVR commands, and one run with the real tiny.en model
//! where a spoken card number ends up masked in the sink.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use callveil::config::Settings;
use callveil::consent::prompts::Prompts;
use callveil::consent::{Decision, Method};
use callveil::media::tap::{GapReason, TapEvent, TapFrame};
use callveil::metrics::RecordingMetrics;
use callveil::pii::Pii;
use callveil::recording::core::{ConsentLedger, LedgerEntry, Output, PathConfig, RecordingPath};
use callveil::sip::events::{CallCommand, CallEvent, ConsentSignal, MediaCommand};
use callveil::sip::sdp::Leg;
use callveil::transcribe::pool::Pool;
use callveil::vault::sink::{
    ClearedAudio, CloseReason, LawfulBasis, RecordingId, RecordingMeta, RecordingSink, RedactionSpan, SinkError,
    SpanKind, TranscriptSegment,
};

#[derive(Default)]
struct Store {
    ops: Vec<&'static str>,
    opened: Vec<RecordingMeta>,
    audio: Vec<ClearedAudio>,
    transcript: Vec<TranscriptSegment>,
    spans: Vec<RedactionSpan>,
    closed: Vec<CloseReason>,
    ledger: Vec<(Decision, Method, String)>,
    classes: Vec<(RecordingId, String)>,
}

impl RecordingSink for Store {
    fn open(&mut self, meta: RecordingMeta) -> Result<RecordingId, SinkError> {
        self.ops.push("open");
        self.opened.push(meta);
        Ok(RecordingId("rec-1".into()))
    }
    fn audio(&mut self, _: &RecordingId, a: ClearedAudio) -> Result<(), SinkError> {
        self.ops.push("audio");
        self.audio.push(a);
        Ok(())
    }
    fn transcript(&mut self, _: &RecordingId, t: TranscriptSegment) -> Result<(), SinkError> {
        self.ops.push("transcript");
        self.transcript.push(t);
        Ok(())
    }
    fn span(&mut self, _: &RecordingId, s: RedactionSpan) -> Result<(), SinkError> {
        self.ops.push("span");
        self.spans.push(s);
        Ok(())
    }
    fn close(&mut self, _: &RecordingId, r: CloseReason) -> Result<(), SinkError> {
        self.ops.push("close");
        self.closed.push(r);
        Ok(())
    }
    fn retention_class(&mut self, id: &RecordingId, class: &str) -> Result<(), SinkError> {
        self.ops.push("class");
        self.classes.push((id.clone(), class.to_string()));
        Ok(())
    }
}

impl ConsentLedger for Store {
    fn append_consent(&mut self, e: LedgerEntry) -> Result<String, SinkError> {
        self.ops.push("ledger");
        self.ledger.push((e.decision, e.method, e.basis.as_str().to_string()));
        Ok(format!("ledger-{}", self.ledger.len()))
    }
}

impl Store {
    /// Stored PCM of `ch` (8 kHz), `len_ms` long; never-stored time reads as silence.
    fn pcm(&self, ch: u8, len_ms: u64) -> Vec<i16> {
        let mut out = vec![0i16; (len_ms * 8) as usize];
        for a in self.audio.iter().filter(|a| a.channel() == ch) {
            let first = (a.start_ms() * 8) as usize;
            for (k, &s) in a.samples().iter().enumerate() {
                if let Some(o) = out.get_mut(first + k) {
                    *o = s;
                }
            }
        }
        out
    }

    fn stored_ms(&self, ch: u8) -> u64 {
        self.audio.iter().filter(|a| a.channel() == ch).map(|a| a.samples().len() as u64 / 8).sum()
    }
}

fn settings(mode: &str, extra: &str) -> Settings {
    let toml = format!(
        "[[sip.routes]]\nname = \"r\"\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:5070\"]\n{extra}\n\
         [consent]\nmode = \"{mode}\"\n"
    );
    Settings::from_toml(&toml).expect("test config")
}

const CALL: &str = "call-1@test";

struct H {
    p: RecordingPath,
    store: Store,
    t0: Instant,
    cmds: Vec<CallCommand>,
    taps_opened: usize,
    pool: Option<Pool>,
    metrics: RecordingMetrics,
}

impl H {
    fn new(mode: &str) -> H {
        H::with(settings(mode, ""), Prompts::default(), None)
    }

    fn with(s: Settings, prompts: Prompts, pool: Option<Pool>) -> H {
        #[allow(clippy::disallowed_methods)] // tests seed virtual time once
        let t0 = Instant::now();
        let metrics = RecordingMetrics::default();
        let p = RecordingPath::new(PathConfig::from_settings(&s, prompts), metrics.clone(), t0, SystemTime::UNIX_EPOCH);
        H { p, store: Store::default(), t0, cmds: Vec::new(), taps_opened: 0, pool, metrics }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn pump(&mut self, ms: u64) {
        let now = self.at(ms);
        while let Some(o) = self.p.poll_output() {
            match o {
                Output::Command(c) => self.cmds.push(c),
                Output::OpenTap { .. } => self.taps_opened += 1,
                // Fake transcriber: hears nothing; the real one when a pool is given.
                Output::Transcribe(job) => {
                    let id = job.id;
                    let result = match &self.pool {
                        Some(pool) => {
                            pool.submit(job).expect("pool queue");
                            pool.recv_timeout(Duration::from_secs(120)).expect("transcription").result
                        }
                        None => Ok(Vec::new()),
                    };
                    self.p.handle_transcript(now, id, result, &mut self.store);
                }
            }
        }
    }

    fn event(&mut self, ms: u64, ev: CallEvent) {
        self.p.handle_event(self.at(ms), ev, &mut self.store);
        self.pump(ms);
    }

    fn start(&mut self, ms: u64, held: bool) {
        self.event(
            ms,
            CallEvent::Started {
                call_id: CALL.into(),
                caller: Pii::new("+34600111222".into()),
                callee: Pii::new("100".into()),
                route: "r".into(),
                held,
            },
        );
    }

    fn end(&mut self, ms: u64) {
        self.event(ms, CallEvent::Ended { call_id: CALL.into() });
    }

    fn tap(&mut self, ms: u64, leg: Leg, event: TapEvent) {
        self.p.handle_tap(self.at(ms), CALL, TapFrame { call: 7, stream: 0, leg, event }, &mut self.store);
        self.pump(ms);
    }

    /// 20 ms frames of `leg` over media time `[from, to)`, each delivered as it ends.
    fn audio(&mut self, leg: Leg, from: u64, to: u64, f: impl Fn(u64) -> i16) {
        let mut at = from;
        while at < to {
            let samples: Vec<i16> = (at * 8..(at + 20) * 8).map(&f).collect();
            self.tap(at + 20, leg, TapEvent::Audio { at: Duration::from_millis(at), samples });
            at += 20;
        }
    }

    /// One RFC 4733 key press (event code `code`) starting at media time `at`.
    fn key(&mut self, leg: Leg, at: u64, code: u8) {
        for (i, end) in [(1u16, false), (2, false), (3, true), (3, true), (3, true)] {
            let dur = (i * 400).to_be_bytes();
            let payload = vec![code, if end { 0x8a } else { 0x0a }, dur[0], dur[1]];
            self.tap(
                at + u64::from(i) * 50,
                leg,
                TapEvent::TelephoneEvent { at: Duration::from_millis(at), payload, marker: i == 1 },
            );
        }
    }

    fn timeouts_until(&mut self, ms: u64) {
        let mut t = 0;
        while t <= ms {
            self.p.handle_timeout(self.at(t), &mut self.store);
            self.pump(t);
            t += 100;
        }
    }
}

fn sine(freq: f64, amp: f64) -> impl Fn(u64) -> i16 {
    move |n| (amp * (2.0 * std::f64::consts::PI * freq * n as f64 / 8000.0).sin()) as i16
}

fn silence(_: u64) -> i16 {
    0
}

#[test]
fn nothing_reaches_the_sink_before_permission_and_no_earlier_audio_after_it() {
    let mut h = H::new("api");
    h.start(0, false);
    h.event(0, CallEvent::Answered { call_id: CALL.into() });
    // 3 s of loud audio before the decision (a tap opened for some other reason would deliver it).
    h.audio(Leg::Caller, 0, 3000, sine(440.0, 6000.0));
    h.audio(Leg::Callee, 0, 3000, sine(300.0, 6000.0));
    assert!(h.store.ops.is_empty(), "sink touched before permission: {:?}", h.store.ops);
    assert_eq!(h.taps_opened, 0, "api mode needs no tap before a decision");
    assert_eq!(h.metrics.frames_dropped_pre_consent.get(), 300);
    assert!(h.p.handle_api(h.at(3000), CALL, ConsentSignal::Granted, &mut h.store));
    h.pump(3000);
    assert_eq!(h.store.ops[..2], ["ledger", "open"]);
    assert_eq!(h.taps_opened, 1);
    let meta = &h.store.opened[0];
    assert_eq!(meta.basis, LawfulBasis::Consent { ledger_ref: "ledger-1".into() });
    assert_eq!(meta.started_at, SystemTime::UNIX_EPOCH + Duration::from_secs(3));
    // After the decision: silence on both legs; a late pre-decision frame must be dropped too.
    h.audio(Leg::Caller, 3000, 6000, silence);
    h.tap(6000, Leg::Callee, TapEvent::Audio { at: Duration::from_millis(2980), samples: vec![9000; 160] });
    h.audio(Leg::Callee, 3000, 6000, silence);
    h.end(6000);
    assert_eq!(h.store.closed, [CloseReason::Completed]);
    for ch in 0..2 {
        let pcm = h.store.pcm(ch, 10_000);
        assert!(pcm.iter().all(|&s| s == 0), "pre-decision audio reached the sink on channel {ch}");
        let stored = h.store.stored_ms(ch);
        assert!(
            (2_980..=3_000).contains(&stored),
            "channel {ch}: {stored} ms stored, expected the 3 s after the grant"
        );
    }
    assert!(!h.p.knows(CALL));
}

#[test]
fn decline_and_no_answer_open_nothing() {
    // dtmf mode: the caller presses the decline key (2) after the answer.
    let mut h = H::new("dtmf");
    h.start(0, false);
    h.event(0, CallEvent::Answered { call_id: CALL.into() });
    assert_eq!(h.taps_opened, 1, "dtmf mode listens to the caller's keys");
    h.audio(Leg::Caller, 0, 1000, silence);
    h.key(Leg::Caller, 1000, 2);
    h.audio(Leg::Caller, 1300, 3000, silence);
    h.end(3000);
    assert!(!h.store.ops.contains(&"open"), "{:?}", h.store.ops);
    assert_eq!(h.store.ledger, [(Decision::Declined, Method::Dtmf, "consent".into())]);
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Media(MediaCommand::CloseTap { .. }))));

    // No key within the window.
    let mut h = H::new("dtmf");
    h.start(0, false);
    h.event(0, CallEvent::Answered { call_id: CALL.into() });
    h.timeouts_until(31_000);
    h.end(31_000);
    assert_eq!(h.store.ops, ["ledger"]);
    assert_eq!(h.store.ledger[0].0, Decision::NoAnswer);
}

#[test]
fn revoke_closes_revoked_with_purge_at_once() {
    let mut h = H::new("header");
    h.start(0, false);
    h.event(500, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Granted });
    assert_eq!(h.store.ops, ["ledger", "open"]);
    h.audio(Leg::Caller, 0, 2000, sine(440.0, 3000.0));
    h.event(2000, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Revoked });
    assert_eq!(h.store.closed, [CloseReason::Revoked { purge: true }]);
    assert_eq!(h.store.ledger.last().map(|l| l.0), Some(Decision::Revoked));
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Media(MediaCommand::CloseTap { .. }))));
    // Nothing more is written after the revocation.
    let n = h.store.ops.len();
    h.audio(Leg::Caller, 2000, 3000, sine(440.0, 3000.0));
    h.end(3000);
    assert_eq!(h.store.ops.len(), n);
}

#[test]
fn retention_class_before_the_recording_is_used_at_open_and_after_it_moves_the_recording() {
    let mut h = H::new("header");
    h.start(0, false);
    let class = |c: &str| CallEvent::RetentionClass { call_id: CALL.into(), class: c.into() };
    h.event(100, class("complaint"));
    h.event(500, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Granted });
    assert_eq!(h.store.opened[0].retention_class.as_deref(), Some("complaint"));
    assert!(h.store.classes.is_empty(), "nothing to move before the recording exists");
    h.audio(Leg::Caller, 0, 1000, sine(440.0, 3000.0));
    h.event(1000, class("fraud"));
    assert_eq!(h.store.classes, [(RecordingId("rec-1".into()), "fraud".to_string())]);
    h.end(2000);
    assert_eq!(h.store.closed.len(), 1);
}

#[test]
fn signals_that_do_not_apply_are_counted() {
    let mut h = H::new("header");
    h.start(0, false);
    // header mode: the API does not decide, and there is nothing to revoke yet
    assert!(h.p.handle_api(h.at(100), CALL, ConsentSignal::Granted, &mut h.store));
    h.event(200, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Revoked });
    assert!(h.store.ops.is_empty(), "{:?}", h.store.ops);
    assert_eq!(h.metrics.consent_signals_ignored.get(), 2);
    h.event(300, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Granted });
    h.event(400, CallEvent::Consent { call_id: CALL.into(), signal: ConsentSignal::Granted });
    assert_eq!(h.store.ops, ["ledger", "open"], "one grant");
    assert_eq!(h.metrics.consent_signals_ignored.get(), 3, "the second grant is counted, once");
    h.end(1000);
    assert_eq!(h.metrics.consent_signals_ignored.get(), 3);
}

#[test]
fn keypad_revoke_sequence_stops_the_recording() {
    let mut h = H::new("dtmf");
    h.start(0, false);
    h.event(0, CallEvent::Answered { call_id: CALL.into() });
    h.audio(Leg::Caller, 0, 500, silence);
    h.key(Leg::Caller, 500, 1);
    assert!(h.store.ops.contains(&"open"));
    h.audio(Leg::Caller, 800, 1500, silence);
    h.key(Leg::Caller, 1500, 10); // *
    h.key(Leg::Caller, 2000, 9);
    assert_eq!(h.store.closed, [CloseReason::Revoked { purge: true }]);
}

#[test]
fn tap_gap_and_untranscribable_leg_become_unverified_spans() {
    let mut h = H::new("not_required");
    h.start(0, false);
    assert_eq!(h.store.ledger, [(Decision::Granted, Method::NotRequired, "legal_obligation".into())]);
    assert!(matches!(&h.store.opened[0].basis, LawfulBasis::Other { name } if name == "legal_obligation"));
    h.tap(0, Leg::Callee, TapEvent::Untranscribable { payload_type: 18 });
    h.audio(Leg::Caller, 0, 1000, silence);
    h.tap(
        1500,
        Leg::Caller,
        TapEvent::Gap { from: Duration::from_millis(1000), to: Duration::from_millis(1500), reason: GapReason::Loss },
    );
    h.audio(Leg::Caller, 1500, 3000, silence);
    h.timeouts_until(3000);
    h.end(3000);
    assert_eq!(h.store.closed, [CloseReason::Completed]);
    let unverified = |ch: u8| -> Vec<(u64, u64)> {
        h.store
            .spans
            .iter()
            .filter(|s| s.channel == ch && s.kind == SpanKind::Unverified)
            .map(|s| (s.start_ms, s.end_ms))
            .collect()
    };
    let gap = unverified(0);
    assert!(gap.iter().any(|&(a, b)| a <= 1000 && b >= 1500), "gap not muted: {gap:?}");
    let dead = unverified(1);
    assert!(dead.iter().any(|&(a, b)| a == 0 && b >= 2900), "undecodable leg not muted: {dead:?}");
}

#[test]
fn dtmf_during_recording_is_masked_and_never_stored() {
    let mut h = H::new("not_required");
    h.start(0, false);
    // Digit 5 in-band on the caller leg: 770 Hz + 1336 Hz for 200 ms.
    let tone = |n: u64| -> i16 {
        let t = n as f64 / 8000.0;
        let w = std::f64::consts::PI * 2.0;
        if (8_000..9_600).contains(&n) {
            (6000.0 * (w * 770.0 * t).sin() + 6000.0 * (w * 1336.0 * t).sin()) as i16
        } else {
            0
        }
    };
    h.audio(Leg::Caller, 0, 3000, tone);
    h.event(
        3000,
        CallEvent::InfoDtmf {
            call_id: CALL.into(),
            leg: Leg::Callee,
            digit: callveil::dtmf::Digit::D7,
            duration_ms: 200,
        },
    );
    h.audio(Leg::Callee, 0, 3000, silence);
    h.end(3000);
    let dtmf: Vec<_> = h.store.spans.iter().filter(|s| s.kind == SpanKind::Dtmf).collect();
    assert!(dtmf.iter().any(|s| s.channel == 0 && s.start_ms <= 1000 && s.end_ms >= 1200), "{dtmf:?}");
    assert!(dtmf.iter().any(|s| s.channel == 1 && s.end_ms >= 2800), "INFO key not masked: {dtmf:?}");
    let pcm = h.store.pcm(0, 3000);
    assert!(pcm[8_000..9_600].iter().all(|&s| s == 0), "tone reached the sink");
    for t in &h.store.transcript {
        assert!(!t.text.expose().chars().any(|c| c.is_ascii_digit()), "a digit in the transcript");
    }
}

fn prompt_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcm: Vec<i16> = (0..8000u64).map(sine(400.0, 2000.0)).collect();
    let f = std::fs::File::create(dir.path().join("en.wav")).expect("prompt file");
    callveil::redact::wav::write(f, 8000, &[pcm]).expect("write prompt");
    dir
}

#[test]
fn ivr_plays_the_prompt_releases_and_records_on_the_grant_key() {
    let dir = prompt_dir();
    let prompts = Prompts::load(dir.path()).expect("prompts");
    let mut h = H::with(settings("ivr", ""), prompts, None);
    h.start(0, true);
    assert!(
        matches!(&h.cmds[..], [CallCommand::Media(MediaCommand::Play { leg: Leg::Caller, pcm, .. })] if pcm.len() == 8000)
    );
    assert_eq!(h.taps_opened, 1);
    h.audio(Leg::Caller, 0, 1500, silence);
    h.key(Leg::Caller, 1500, 1);
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Media(MediaCommand::StopPlay { .. }))));
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Release { call_id } if call_id == CALL)));
    assert_eq!(h.store.ops, ["ledger", "open"]);
    assert_eq!(h.store.ledger[0].1, Method::Ivr);
    h.end(2000);
    assert_eq!(h.store.closed, [CloseReason::Completed]);

    // No key: the prompt is replayed once (ivr_reprompts = 1), then the INVITE goes on unrecorded.
    let prompts = Prompts::load(dir.path()).expect("prompts");
    let mut h = H::with(settings("ivr", ""), prompts, None);
    h.start(0, true);
    h.timeouts_until(30_000);
    let plays = h.cmds.iter().filter(|c| matches!(c, CallCommand::Media(MediaCommand::Play { .. }))).count();
    assert_eq!(plays, 2);
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Release { .. })));
    assert_eq!(h.store.ops, ["ledger"]);
    assert_eq!(h.store.ledger[0].0, Decision::NoAnswer);
}

#[test]
fn unknown_route_or_held_call_without_prompts_is_released_unrecorded() {
    let mut h = H::new("ivr");
    h.start(0, true);
    assert!(h.cmds.iter().any(|c| matches!(c, CallCommand::Release { .. })));
    assert!(!h.store.ops.contains(&"open"));
    let mut h = H::new("not_required");
    h.event(
        0,
        CallEvent::Started {
            call_id: "x".into(),
            caller: Pii::new(String::new()),
            callee: Pii::new(String::new()),
            route: "nope".into(),
            held: true,
        },
    );
    assert!(matches!(&h.cmds[..], [CallCommand::Release { call_id }] if call_id == "x"));
    assert!(h.store.ops.is_empty());
    // Frames and signals for unknown calls are refused without effect.
    assert!(!h.p.handle_api(h.at(0), "x", ConsentSignal::Granted, &mut h.store));
    h.tap(0, Leg::Caller, TapEvent::Audio { at: Duration::ZERO, samples: vec![1; 160] });
    assert!(h.store.ops.is_empty());
}

#[test]
fn real_model_masks_a_spoken_card_number_in_the_sink() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = callveil::transcribe::whisper::WhisperModel::load(&root.join("models/ggml-tiny.en.bin"))
        .expect("models/ggml-tiny.en.bin (scripts/provision-model)");
    let t = model.transcriber(Default::default()).expect("transcriber");
    let pool = Pool::new(vec![Box::new(t)], 4).expect("pool");
    let bytes = std::fs::read(root.join("testdata/redaction/corpus/en-card-digits.wav")).expect("corpus WAV");
    let wav = callveil::redact::wav::read(&bytes).expect("wav");
    assert_eq!(wav.rate, 8000);
    let pcm = wav.channels[0].clone();
    let mut h = H::with(settings("not_required", ""), Prompts::default(), Some(pool));
    h.start(0, false);
    let len_ms = pcm.len() as u64 / 8 / 20 * 20;
    h.audio(Leg::Caller, 0, len_ms, |n| pcm.get(n as usize).copied().unwrap_or(0));
    h.end(len_ms);
    assert_eq!(h.store.closed, [CloseReason::Completed]);
    // Ground truth (manifest.json): the card number is spoken over 5795..11958 ms.
    let stored = h.store.pcm(0, len_ms);
    let (a, b) = (5_795 * 8, 11_958 * 8);
    let loud = stored[a..b].iter().filter(|s| s.unsigned_abs() > 200).count();
    assert_eq!(loud, 0, "{loud} samples of the card number survived");
    let text: String = h.store.transcript.iter().map(|t| t.text.expose().clone()).collect::<Vec<_>>().join(" ");
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    assert!(!digits.contains("1111"), "card digits in the transcript");
    // Speech outside the card number is kept (not everything muted).
    let kept = stored[300 * 8..3_400 * 8].iter().filter(|s| s.unsigned_abs() > 200).count();
    assert!(kept > 1000, "the non-PII opening was muted too");
}

#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A store whose every write fails: the recording path logs the failures, never the data.
struct Failing;

impl RecordingSink for Failing {
    fn open(&mut self, _: RecordingMeta) -> Result<RecordingId, SinkError> {
        Ok(RecordingId("r".into()))
    }
    fn audio(&mut self, _: &RecordingId, _: ClearedAudio) -> Result<(), SinkError> {
        Err(SinkError::Backend("disk full".into()))
    }
    fn transcript(&mut self, _: &RecordingId, _: TranscriptSegment) -> Result<(), SinkError> {
        Err(SinkError::Backend("disk full".into()))
    }
    fn span(&mut self, _: &RecordingId, _: RedactionSpan) -> Result<(), SinkError> {
        Err(SinkError::Backend("disk full".into()))
    }
    fn close(&mut self, _: &RecordingId, _: CloseReason) -> Result<(), SinkError> {
        Err(SinkError::Backend("disk full".into()))
    }
}

impl ConsentLedger for Failing {
    fn append_consent(&mut self, _: LedgerEntry) -> Result<String, SinkError> {
        Err(SinkError::Backend("ledger down".into()))
    }
}

#[test]
fn failures_are_logged_and_counted_without_personal_data_or_digits() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // Consent needs a ledger record: with the ledger down, nothing is recorded (fail closed).
        let mut h = H::new("header");
        let mut store = Failing;
        let t = h.at(0);
        let started = |id: &str| CallEvent::Started {
            call_id: id.into(),
            caller: Pii::new("+34600111222".into()),
            callee: Pii::new("5551234".into()),
            route: "r".into(),
            held: false,
        };
        h.p.handle_event(t, started("a"), &mut store);
        h.p.handle_event(t, CallEvent::Consent { call_id: "a".into(), signal: ConsentSignal::Granted }, &mut store);
        assert_eq!(h.p.recordings(), 0, "recorded without a ledger record");
        assert_eq!(
            h.metrics.sink_errors.get_or_create(&callveil::metrics::KindLabels { kind: "ledger".into() }).get(),
            1
        );
        // not_required needs no consent record: writes fail and are counted.
        let mut h = H::new("not_required");
        h.p.handle_event(t, started("b"), &mut store);
        for k in 0..100u64 {
            let frame = TapFrame {
                call: 1,
                stream: 0,
                leg: Leg::Caller,
                event: TapEvent::Audio { at: Duration::from_millis(k * 20), samples: vec![0; 160] },
            };
            h.p.handle_tap(h.at(k * 20 + 20), "b", frame, &mut store);
        }
        h.p.handle_event(
            h.at(2000),
            CallEvent::InfoDtmf {
                call_id: "b".into(),
                leg: Leg::Caller,
                digit: callveil::dtmf::Digit::D8,
                duration_ms: 100,
            },
            &mut store,
        );
        h.p.handle_event(h.at(2000), CallEvent::Ended { call_id: "b".into() }, &mut store);
        assert!(h.metrics.sink_errors.get_or_create(&callveil::metrics::KindLabels { kind: "write".into() }).get() > 0);
        h.p.handle_event(
            t,
            CallEvent::Started {
                call_id: "c".into(),
                caller: Pii::new("+34600111222".into()),
                callee: Pii::new("5551234".into()),
                route: "other".into(),
                held: true,
            },
            &mut store,
        );
    });
    let logs = String::from_utf8(capture.0.lock().expect("capture").clone()).expect("utf8");
    assert!(logs.contains("disk full") && logs.contains("ledger down"), "failures not logged: {logs}");
    for secret in ["600111222", "5551234"] {
        assert!(!logs.contains(secret), "personal data in logs: {logs}");
    }
}

#[test]
fn a_second_audio_stream_of_the_call_is_refused_not_mixed_in() {
    let mut h = H::new("not_required");
    h.start(0, false);
    h.audio(Leg::Caller, 0, 1000, silence);
    let other = TapFrame {
        call: 7,
        stream: 1,
        leg: Leg::Caller,
        event: TapEvent::Audio { at: Duration::from_millis(100), samples: vec![12_000; 160] },
    };
    h.p.handle_tap(h.at(1000), CALL, other, &mut h.store);
    h.pump(1000);
    h.end(1000);
    assert!(h.store.pcm(0, 1000).iter().all(|&s| s == 0));
    assert_eq!(
        h.metrics.rejected.get_or_create(&callveil::metrics::KindLabels { kind: "extra_stream".into() }).get(),
        1
    );
}

/// Measurement (run with `--ignored --nocapture`): how much call audio the core (DTMF detection,
/// time mapping, pipeline, sink writes; transcription faked) handles per second of one core.
#[test]
#[ignore]
fn measure_core_throughput() {
    let calls = 20u64;
    let secs = 30u64;
    let mut h = H::new("not_required");
    for c in 0..calls {
        h.p.handle_event(
            h.at(0),
            CallEvent::Started {
                call_id: format!("m{c}"),
                caller: Pii::new(String::new()),
                callee: Pii::new(String::new()),
                route: "r".into(),
                held: false,
            },
            &mut h.store,
        );
    }
    h.pump(0);
    let voice = sine(300.0, 4000.0);
    #[allow(clippy::disallowed_methods)] // measuring wall time
    let t = Instant::now();
    for k in 0..secs * 50 {
        let at = k * 20;
        for c in 0..calls {
            for leg in [Leg::Caller, Leg::Callee] {
                // 2 s talk, 1 s pause
                let samples: Vec<i16> =
                    (at * 8..(at + 20) * 8).map(|n| if (n / 8000) % 3 < 2 { voice(n) } else { 0 }).collect();
                let f = TapFrame {
                    call: c,
                    stream: 0,
                    leg,
                    event: TapEvent::Audio { at: Duration::from_millis(at), samples },
                };
                h.p.handle_tap(h.at(at + 20), &format!("m{c}"), f, &mut h.store);
            }
        }
        h.pump(at + 20);
    }
    for c in 0..calls {
        h.event(secs * 1000, CallEvent::Ended { call_id: format!("m{c}") });
    }
    let took = t.elapsed();
    assert_eq!(h.store.closed.len() as u64, calls);
    let audio_s = (calls * secs * 2) as f64;
    println!(
        "{calls} calls x {secs} s x 2 legs = {audio_s} s of audio in {:.2} s: {:.0}x real time ({:.1} concurrent legs per core)",
        took.as_secs_f64(),
        audio_s / took.as_secs_f64(),
        audio_s / took.as_secs_f64()
    );
}
