//! The recording service's driver thread end to end on real channels: events in, `OpenTap`
//! with a tap queue out, frames through the queue, shutdown; without a speech model every
//! speech window is stored muted (fail closed). And the `api` consent endpoint over HTTP:
//! `POST /calls/{call_id}/consent` answers 202 / 404 / 400 / 405 and reaches the gate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callveil::config::Settings;
use callveil::consent::prompts::Prompts;
use callveil::consent::Decision;
use callveil::media::tap::{TapEvent, TapFrame};
use callveil::metrics::Metrics;
use callveil::net::metrics_http::MetricsServer;
use callveil::pii::Pii;
use callveil::recording::core::{ConsentLedger, LedgerEntry, PathConfig};
use callveil::recording::driver::{RecordingService, ServiceOptions};
use callveil::sip::events::{CallCommand, CallEvent, MediaCommand};
use callveil::sip::sdp::Leg;
use callveil::vault::sink::{
    ClearedAudio, CloseReason, RecordingId, RecordingMeta, RecordingSink, RedactionSpan, SinkError, SpanKind,
    TranscriptSegment,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Store {
    opened: usize,
    audio: Vec<ClearedAudio>,
    spans: Vec<RedactionSpan>,
    closed: Vec<CloseReason>,
    ledger: Vec<Decision>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Store>>);

impl Shared {
    fn get(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().expect("store lock")
    }
}

impl RecordingSink for Shared {
    fn open(&mut self, _: RecordingMeta) -> Result<RecordingId, SinkError> {
        self.get().opened += 1;
        Ok(RecordingId("r1".into()))
    }
    fn audio(&mut self, _: &RecordingId, a: ClearedAudio) -> Result<(), SinkError> {
        self.get().audio.push(a);
        Ok(())
    }
    fn transcript(&mut self, _: &RecordingId, _: TranscriptSegment) -> Result<(), SinkError> {
        Ok(())
    }
    fn span(&mut self, _: &RecordingId, s: RedactionSpan) -> Result<(), SinkError> {
        self.get().spans.push(s);
        Ok(())
    }
    fn close(&mut self, _: &RecordingId, r: CloseReason) -> Result<(), SinkError> {
        self.get().closed.push(r);
        Ok(())
    }
}

impl ConsentLedger for Shared {
    fn append_consent(&mut self, e: LedgerEntry) -> Result<String, SinkError> {
        self.get().ledger.push(e.decision);
        Ok("l1".into())
    }
}

fn settings(mode: &str) -> Settings {
    Settings::from_toml(&format!(
        "[[sip.routes]]\nname = \"r\"\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:5070\"]\n[consent]\nmode = \"{mode}\"\n"
    ))
    .expect("config")
}

fn start(
    mode: &str,
    metrics: &Metrics,
) -> (RecordingService, std::sync::mpsc::Sender<CallEvent>, tokio::sync::mpsc::UnboundedReceiver<CallCommand>, Shared) {
    let s = settings(mode);
    let opts = ServiceOptions { path: PathConfig::from_settings(&s, Prompts::default()), tap_queue: 64, pool: None };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = Shared::default();
    let (svc, events) = RecordingService::start_with(
        opts,
        metrics.recording.clone(),
        metrics.redact.clone(),
        tx,
        Box::new(store.clone()),
    )
    .expect("service");
    (svc, events, rx, store)
}

fn started(call_id: &str) -> CallEvent {
    CallEvent::Started {
        call_id: call_id.into(),
        caller: Pii::new("+15550001111".into()),
        callee: Pii::new("200".into()),
        route: "r".into(),
        held: false,
    }
}

#[test]
fn without_a_model_speech_is_stored_muted_and_the_recording_closes() {
    let metrics = Metrics::new();
    let (svc, events, mut cmds, store) = start("not_required", &metrics);
    events.send(started("c1")).expect("send");
    let sink = loop {
        match cmds.blocking_recv() {
            Some(CallCommand::Media(MediaCommand::OpenTap { call_id, sink })) if call_id == "c1" => break sink,
            Some(_) => continue,
            None => panic!("service stopped"),
        }
    };
    // 2 s of a loud tone (speech to the VAD), then 1 s of silence, 20 ms frames.
    for k in 0..150u64 {
        let samples: Vec<i16> = (0..160u64)
            .map(|n| if k < 100 { (8000.0 * ((k * 160 + n) as f64 * 0.3).sin()) as i16 } else { 0 })
            .collect();
        let ev = TapEvent::Audio { at: Duration::from_millis(k * 20), samples };
        // The relay's side: never blocks; a full queue would become a gap.
        while sink.try_send(TapFrame { call: 1, stream: 0, leg: Leg::Caller, event: ev.clone() }).is_err() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    events.send(CallEvent::Ended { call_id: "c1".into() }).expect("send");
    std::thread::sleep(Duration::from_millis(200));
    svc.stop();
    let st = store.get();
    assert_eq!(st.opened, 1);
    assert_eq!(st.closed.len(), 1, "{:?}", st.closed);
    assert!(
        st.spans.iter().any(|s| s.kind == SpanKind::Unverified && s.start_ms <= 100 && s.end_ms >= 1900),
        "{:?}",
        st.spans
    );
    let loud = st.audio.iter().flat_map(|a| a.samples()).filter(|s| s.unsigned_abs() > 100).count();
    assert_eq!(loud, 0, "speech stored without being cleared");
    assert!(metrics.recording.windows_without_transcriber.get() >= 1);
    assert_eq!(metrics.recording.recordings_opened.get(), 1);
    assert_eq!(metrics.recording.sessions_active.get(), 0);
}

async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_api_endpoint() {
    let metrics = Arc::new(Metrics::new());
    let (svc, events, mut cmds, store) = start("api", &metrics);
    let server =
        MetricsServer::start_with_api("127.0.0.1:0".parse().expect("addr"), metrics.clone(), Some(svc.consent_api()))
            .await
            .expect("server");
    let addr = server.local_addr();
    assert_eq!(http(addr, "POST", "/calls/nope/consent", "granted").await.0, 404);
    events.send(started("abc")).expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, text) = http(addr, "POST", "/calls/abc/consent", "maybe").await;
    assert_eq!(code, 400);
    assert!(text.contains("granted, declined, revoked"), "{text}");
    assert_eq!(http(addr, "POST", "/calls/abc/consent", &"x".repeat(500)).await.0, 400);
    assert_eq!(http(addr, "GET", "/calls/abc/consent", "").await.0, 405);
    assert_eq!(store.get().opened, 0);
    assert_eq!(http(addr, "POST", "/calls/abc/consent", "granted\n").await.0, 202);
    assert_eq!(store.get().opened, 1);
    assert_eq!(store.get().ledger, [Decision::Granted]);
    assert!(matches!(cmds.recv().await, Some(CallCommand::Media(MediaCommand::OpenTap { .. }))));
    assert_eq!(http(addr, "POST", "/calls/abc/consent", "revoked").await.0, 202);
    assert_eq!(store.get().closed, [CloseReason::Revoked { purge: true }]);
    let (code, text) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    assert!(
        text.contains("callveil_recording_consent_decisions_total{method=\"api\",decision=\"granted\"} 1"),
        "{text}"
    );
    server.stop().await;
    tokio::task::spawn_blocking(move || svc.stop()).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_entry_api_endpoint() {
    let metrics = Arc::new(Metrics::new());
    let (svc, events, mut cmds, _store) = start("ivr", &metrics);
    let server =
        MetricsServer::start_with_api("127.0.0.1:0".parse().expect("addr"), metrics.clone(), Some(svc.consent_api()))
            .await
            .expect("server");
    let addr = server.local_addr();
    assert_eq!(http(addr, "POST", "/calls/nope/secure-entry", "on").await.0, 404);
    events.send(started("se1")).expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, text) = http(addr, "POST", "/calls/se1/secure-entry", "yes").await;
    assert_eq!(code, 400);
    assert!(text.contains("on, off"), "{text}");
    assert_eq!(http(addr, "GET", "/calls/se1/secure-entry", "").await.0, 405);
    for (body, on) in [("on", true), ("OFF\n", false)] {
        assert_eq!(http(addr, "POST", "/calls/se1/secure-entry", body).await.0, 202);
        let got = loop {
            match tokio::time::timeout(Duration::from_secs(5), cmds.recv()).await.expect("command") {
                Some(CallCommand::SecureEntry { call_id, on }) => break (call_id, on),
                Some(_) => continue,
                None => panic!("service stopped"),
            }
        };
        assert_eq!(got, ("se1".to_string(), on));
    }
    events.send(CallEvent::Ended { call_id: "se1".into() }).expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(http(addr, "POST", "/calls/se1/secure-entry", "on").await.0, 404, "ended call");
    server.stop().await;
    tokio::task::spawn_blocking(move || svc.stop()).await.expect("stop");
}

/// The production store: the vault's `Recorder` takes the ledger record and the recording, and
/// the decision is in the ledger with the recording's basis pointing at it.
#[test]
fn with_the_vault_recorder_as_store() {
    use callveil::vault::meta::{ListFilter, RecordingState};
    use callveil::vault::recorder::Recorder;
    use callveil::vault::{ConsentQuery, Vault, VaultOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[[sip.routes]]\nname = \"r\"\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:5070\"]\n\
         [consent]\nmode = \"header\"\n[storage]\ndir = {:?}\n[vault]\nkey_file = {:?}\ncreate_keys = true\n",
        dir.path().join("store"),
        dir.path().join("vault.keys")
    );
    let s = Settings::from_toml(&text).expect("config");
    let metrics = Metrics::new();
    let clock = Box::new(|| std::time::UNIX_EPOCH + Duration::from_secs(1_790_000_000));
    let (recorder, _) = Recorder::from_settings(&s, metrics.vault.clone(), clock).expect("recorder");
    let opts = ServiceOptions { path: PathConfig::from_settings(&s, Prompts::default()), tap_queue: 64, pool: None };
    let (tx, mut cmds) = tokio::sync::mpsc::unbounded_channel();
    let (svc, events) =
        RecordingService::start_with(opts, metrics.recording.clone(), metrics.redact.clone(), tx, Box::new(recorder))
            .expect("service");
    events.send(started("v1")).expect("send");
    events
        .send(CallEvent::Consent { call_id: "v1".into(), signal: callveil::sip::events::ConsentSignal::Granted })
        .expect("send");
    let sink = loop {
        match cmds.blocking_recv() {
            Some(CallCommand::Media(MediaCommand::OpenTap { sink, .. })) => break sink,
            Some(_) => continue,
            None => panic!("service stopped"),
        }
    };
    for k in 0..50u64 {
        let ev = TapEvent::Audio { at: Duration::from_millis(k * 20), samples: vec![0; 160] };
        sink.send(TapFrame { call: 1, stream: 0, leg: Leg::Callee, event: ev }).expect("tap");
    }
    std::thread::sleep(Duration::from_millis(100));
    events.send(CallEvent::Ended { call_id: "v1".into() }).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    svc.stop();
    let vault = Vault::open(VaultOptions::from_settings(&s).expect("options")).expect("vault");
    let rows = vault.list(&ListFilter::default()).expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, RecordingState::Complete);
    let ledger = vault.consent_records(&ConsentQuery::Call("v1".into())).expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!((ledger[0].method.as_str(), ledger[0].decision.as_str()), ("header", "granted"));
    assert!(
        matches!(&rows[0].basis, callveil::vault::sink::LawfulBasis::Consent { ledger_ref } if *ledger_ref == ledger[0].id)
    );
}
