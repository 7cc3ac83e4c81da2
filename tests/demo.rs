//! `callveil demo` and its simulated user agents.
//!
//! `user_agents_carry_a_call_through_callveil` runs the carrier and PBX user agents through a
//! real in-process callveil (consent `not_required`) and requires the SIP call to complete and the
//! caller's and agent's audio to arrive byte-exact through callveil's relay. The end-to-end
//! `callveil demo` test runs the binary itself: IVR consent, tap, redaction and vault, and its own
//! check of the stored transcript and audio.
#![allow(clippy::disallowed_methods)] // a real proxy runs on real time

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use callveil::app;
use callveil::config::{ConsentMode, Settings};
use callveil::demo::carrier::{self, CarrierConfig};
use callveil::demo::pbx::{PbxConfig, PbxUa};
use callveil::demo::{audio_arrived, FRAME_SAMPLES};

/// A recognisable µ-law "speech" signal: every frame differs, so a reordered, dropped or
/// duplicated packet breaks the byte-exact comparison.
fn pattern(frames: usize, seed: u8) -> Vec<u8> {
    (0..frames * FRAME_SAMPLES).map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) | 0x01).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agents_carry_a_call_through_callveil() {
    let pbx = PbxUa::bind([127, 0, 0, 1].into()).await.unwrap();
    let args = callveil::cli::demo::Args { consent: Some(ConsentMode::NotRequired), ..Default::default() };
    let mut settings = callveil::cli::demo::demo_settings(&args, pbx.sip_addr()).unwrap();
    settings.raw.recording.enabled = false;
    let settings = Settings::validate(settings.raw).unwrap();
    let running = app::start(settings).await.unwrap();
    let proxy = running.sip_endpoints()[0].addr;

    let caller_audio = pattern(100, 3); // 2 s
    let agent_audio = pattern(60, 101);
    let cfg = CarrierConfig {
        proxy,
        caller: "+15550100123".into(),
        callee: "support".into(),
        caller_audio: caller_audio.clone(),
        prompt_listen: Duration::from_millis(300),
        consent_key: 1,
        pause_before_speech: Duration::from_millis(200),
        tail: Duration::from_millis(300),
        timeout: Duration::from_secs(20),
    };
    let pcfg = PbxConfig { agent_audio: agent_audio.clone(), timeout: Duration::from_secs(25) };
    let (c, p) = tokio::join!(carrier::run(cfg), pbx.run(pcfg));
    let (c, p) = (c.expect("the carrier's call completes"), p.expect("the PBX serves the call"));
    running.stop().await;

    assert!(!c.early_media, "today's callveil forwards the INVITE at once (no IVR yet)");
    assert!(c.key_pressed && !c.key_pressed_early, "no early media: the key is pressed after the answer");
    assert!(c.answered_after.is_some());
    assert_eq!(p.invites, 1, "no INVITE retransmission needed on loopback");
    assert!(p.bye_received, "the BYE reached the agent");
    assert!(audio_arrived(&p.received_pcmu, &caller_audio), "caller audio reached the agent byte-exact");
    assert!(audio_arrived(&c.received_pcmu, &agent_audio), "agent audio reached the caller byte-exact");
    // the key press travels as RFC 4733 events (8 packets) unless callveil suppresses them
    assert!(p.event_packets == 0 || p.event_packets == 8, "{} event packets", p.event_packets);
    assert!(c.call_time >= Duration::from_secs(2), "the speech was paced at 20 ms per frame");
}

#[tokio::test]
async fn carrier_reports_a_silent_proxy() {
    // nothing answers at this address: Timer A retransmits, then the call times out clearly
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = CarrierConfig {
        proxy: sink.local_addr().unwrap(),
        caller: "1".into(),
        callee: "2".into(),
        caller_audio: vec![0xff; FRAME_SAMPLES],
        prompt_listen: Duration::from_millis(100),
        consent_key: 1,
        pause_before_speech: Duration::ZERO,
        tail: Duration::ZERO,
        timeout: Duration::from_millis(1700),
    };
    let err = carrier::run(cfg).await.unwrap_err().to_string();
    assert!(err.contains("no answer from callveil"), "{err}");
    let mut buf = [0u8; 4096];
    let mut invites = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), sink.recv_from(&mut buf)).await {
        invites += 1;
    }
    assert_eq!(invites, 3, "INVITE at 0, 0.5 and 1.5 s (Timer A doubling)");
}

fn demo_inputs_present() -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = root.join("models/ggml-tiny.en.bin").is_file();
    let audio = Command::new(root.join("scripts/make-demo-audio")).current_dir(root).status();
    let prompts = root.join("scripts/make-prompts");
    let prompts = !prompts.exists() || Command::new(prompts).current_dir(root).status().is_ok_and(|s| s.success());
    ok && audio.is_ok_and(|s| s.success()) && prompts
}

#[test]
fn demo_stores_a_redacted_call() {
    assert!(demo_inputs_present(), "model, demo audio and prompts are needed (make demo sets them up)");
    let storage = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callveil"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["demo", "--storage"])
        .arg(storage.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("[PAN]"), "the stored transcript shows the card number redacted:\n{stdout}");
    assert!(!stdout.contains("4111 1111") && !stdout.contains("41111111"), "no card number printed");
    assert!(stdout.contains("recordings --config"), "the export command is printed");
    assert!(stdout.contains("IVR prompt:"), "callveil's IVR asked:\n{stdout}");
    assert!(stdout.contains("basis: consent (ledger cl-"), "recorded on the caller's consent:\n{stdout}");
}

#[test]
fn demo_without_inputs_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callveil"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["demo", "--storage"])
        .arg(dir.path())
        .arg("--audio")
        .arg(dir.path().join("no-audio"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scripts/make-demo-audio"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_callveil"))
        .args(["demo", "--model"])
        .arg(dir.path().join("missing.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/provision-model"));
}

#[test]
fn audio_check_hears_an_unredacted_card_number() {
    // The demo's audio check must be able to fail: on the caller's original (unredacted) speech
    // it has to find card digits, or a passing demo would prove nothing.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/ggml-tiny.en.bin");
    assert!(model.is_file(), "{} missing: run scripts/provision-model (make test does)", model.display());
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(root.join("scripts/make-demo-audio")).arg(dir.path()).status().unwrap();
    assert!(made.success(), "scripts/make-demo-audio needs espeak-ng and sox (scripts/setup)");
    let wav = std::fs::read(dir.path().join("caller.wav")).unwrap();
    let audio = callveil::redact::wav::read(&wav).unwrap();
    let heard = callveil::demo::check::transcribe(&model, &audio.channels[0], audio.rate).unwrap();
    let card = callveil::pii::Pii::new(callveil::cli::demo::DEMO_CARD.to_string());
    let leaks = callveil::demo::check::leaks(heard.expose(), &card);
    assert!(!leaks.is_empty(), "the check found no card digits in the unredacted caller audio");
}
