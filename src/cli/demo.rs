//! `callveil demo`: one consented, redacted call on loopback with nothing else running.
//!
//! callveil starts in-process on the embedded defaults (SIP on an ephemeral UDP port, no metrics
//! listener, storage in `var/callveil` or `--storage DIR`); the simulated PBX ([`PbxUa`]) answers
//! as the route's upstream and the simulated carrier ([`carrier::run`]) calls in, presses `1` for
//! the IVR, says a card number and hangs up. Then the demo waits (bounded) for the recording to
//! close in the vault, prints what was stored, and checks it ([`check`]): exit 0 only if the
//! stored transcript and the stored audio (re-transcribed) hold no card digits. Missing audio,
//! prompts or model: exit 64 with the command that makes them. This is a driver (it reads the
//! clock); it is not used by `callveil run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::app;
use crate::config::{ConsentMode, Settings};
use crate::demo::carrier::{self, CarrierConfig, CarrierReport};
use crate::demo::check;
use crate::demo::pbx::{PbxConfig, PbxReport, PbxUa};
use crate::demo::{load_ulaw, DemoError};
use crate::pii::Pii;
use crate::vault::meta::{ListFilter, RecordingRow, RecordingState};
use crate::vault::sink::{LawfulBasis, Party};
use crate::vault::{Vault, VaultOptions};

/// The Luhn-valid test card number `scripts/make-demo-audio` has the caller say.
pub const DEMO_CARD: &str = "4111111111111111";
const DEFAULT_AUDIO_DIR: &str = "var/demo";
/// The call itself (IVR, 15 s of speech, hang-up) must be over by then.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// `callveil demo` options.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Storage directory for the vault (and its key file) [default: storage.dir].
    pub storage: Option<PathBuf>,
    /// Where caller.wav and agent.wav are [default: var/demo].
    pub audio_dir: Option<PathBuf>,
    /// ggml Whisper model [default: redaction.model].
    pub model: Option<PathBuf>,
    /// Consent mode of the demo route [default: consent.mode, i.e. ivr].
    pub consent: Option<ConsentMode>,
    /// How long to wait for the recording to close after the call [default: 30 s].
    pub wait_recording: Option<Duration>,
}

/// `ivr`, `dtmf`, `header`, `api` or `not_required` as in `[consent] mode`.
pub fn consent_mode(s: &str) -> Option<ConsentMode> {
    Some(match s {
        "ivr" => ConsentMode::Ivr,
        "dtmf" => ConsentMode::Dtmf,
        "header" => ConsentMode::Header,
        "api" => ConsentMode::Api,
        "not_required" => ConsentMode::NotRequired,
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{what} is missing: run `{command}` first")]
    Missing { what: String, command: String },
    #[error("{0}")]
    Setup(String),
    #[error("the call failed: {0}")]
    Call(#[from] DemoError),
    #[error("{0}")]
    Check(String),
}

/// Runs the demo; see the module docs for the exit status.
pub fn run(args: Args) -> ExitCode {
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Failure::Missing { .. }) => {
            eprintln!("callveil demo: {e}");
            ExitCode::from(super::EX_USAGE)
        }
        Err(e) => {
            eprintln!("callveil demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn missing(what: &Path, command: &str) -> Failure {
    Failure::Missing { what: what.display().to_string(), command: command.to_string() }
}

/// The settings the demo runs callveil with: embedded defaults, loopback on ephemeral ports, the
/// route pointed at `pbx` (UDP), storage in `storage`.
pub fn demo_settings(args: &Args, pbx: std::net::SocketAddr) -> Result<Settings, crate::config::ConfigError> {
    let mut raw = Settings::embedded().raw;
    raw.sip.listen = vec!["udp:127.0.0.1:0".into()];
    raw.metrics.listen = String::new();
    if let Some(route) = raw.sip.routes.first_mut() {
        route.upstream = vec![format!("udp:{pbx}")];
        route.name = Some("demo".into());
        if let Some(mode) = args.consent {
            route.consent = Some(mode);
        }
    }
    raw.sip.routes.truncate(1);
    if let Some(dir) = &args.storage {
        raw.storage.dir = dir.clone();
        raw.vault.key_file = dir.join("vault.keys");
    }
    if let Some(m) = &args.model {
        raw.redaction.model = m.clone();
    }
    Settings::validate(raw)
}

/// The running proxy with whatever the demo needs beside it. The one place that changes when the
/// live recording path is wired in (`app::start_with(settings, events)` plus the recording
/// service): everything else only needs a SIP address and `stop`.
struct Callveil {
    running: app::Running,
}

impl Callveil {
    async fn start(settings: Settings) -> anyhow::Result<Callveil> {
        let running = app::start(settings).await?;
        Ok(Callveil { running })
    }

    fn sip_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.sip_endpoints().iter().find(|e| e.transport == crate::config::Transport::Udp).map(|e| e.addr)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

#[allow(clippy::disallowed_methods)] // a driver: the demo reads the wall clock for the vault
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

#[allow(clippy::disallowed_methods)] // a driver: bounded waits and the demo's own timing
fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}

fn demo(args: &Args) -> Result<(), Failure> {
    // Prerequisites first, so a fresh checkout gets one clear instruction and nothing starts.
    let probe = demo_settings(args, ([127, 0, 0, 1], 9).into()).map_err(|e| Failure::Setup(e.to_string()))?;
    let model = probe.raw.redaction.model.clone();
    if !model.is_file() {
        return Err(missing(&model, "scripts/provision-model tiny.en"));
    }
    let audio_dir = args.audio_dir.clone().unwrap_or_else(|| DEFAULT_AUDIO_DIR.into());
    let make_audio = format!("scripts/make-demo-audio {}", audio_dir.display());
    let caller_wav = audio_dir.join("caller.wav");
    let agent_wav = audio_dir.join("agent.wav");
    for f in [&caller_wav, &agent_wav] {
        if !f.is_file() {
            return Err(missing(f, &make_audio));
        }
    }
    let route = probe.routes.first().ok_or_else(|| Failure::Setup("no route".into()))?;
    if route.consent == ConsentMode::Ivr {
        let prompt = probe.raw.consent.prompt_dir.join(format!("{}.wav", route.language));
        if !prompt.is_file() {
            return Err(missing(&prompt, "scripts/make-prompts"));
        }
    }
    let caller_audio = load_ulaw(&caller_wav)?;
    let agent_audio = load_ulaw(&agent_wav)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Setup(format!("cannot start the runtime: {e}")))?;
    let began = wall_clock();
    let t0 = monotonic();
    let (callveil, call) = rt.block_on(async {
        let pbx = PbxUa::bind([127, 0, 0, 1].into()).await?;
        let settings = demo_settings(args, pbx.sip_addr()).map_err(|e| Failure::Setup(e.to_string()))?;
        let callveil =
            Callveil::start(settings).await.map_err(|e| Failure::Setup(format!("starting callveil: {e:#}")))?;
        let proxy = callveil.sip_addr().ok_or_else(|| Failure::Setup("callveil has no UDP listener".into()))?;
        println!("callveil listening on udp:{proxy}; PBX/agent at udp:{}", pbx.sip_addr());
        let cfg = CarrierConfig {
            proxy,
            caller: "+15550100123".into(),
            callee: "support".into(),
            caller_audio: caller_audio.clone(),
            prompt_listen: Duration::from_millis(1500),
            consent_key: 1,
            pause_before_speech: Duration::from_millis(500),
            tail: Duration::from_millis(800),
            timeout: CALL_TIMEOUT,
        };
        let pcfg = PbxConfig { agent_audio: agent_audio.clone(), timeout: CALL_TIMEOUT + Duration::from_secs(5) };
        let (c, p) = tokio::join!(carrier::run(cfg), pbx.run(pcfg));
        let call = c.and_then(|c| p.map(|p| (c, p)));
        Ok::<_, Failure>((callveil, call))
    })?;
    let outcome = match call {
        Ok((c, p)) => {
            print_call(&c, &p, &caller_audio, &agent_audio);
            // verified outside the runtime: the vault is synchronous
            verify_stored(args, &probe, began, t0)
        }
        Err(e) => Err(Failure::Call(e)),
    };
    rt.block_on(callveil.stop());
    outcome
}

fn print_call(c: &CarrierReport, p: &PbxReport, caller_audio: &[u8], agent_audio: &[u8]) {
    println!("call:");
    if c.early_media {
        let first = c.prompt_first_after.map_or("never".into(), |d| format!("{} ms after the 183", d.as_millis()));
        println!("  IVR prompt: {} packets (first {first})", c.prompt_packets);
    } else {
        println!("  no early media (callveil forwarded the INVITE at once)");
    }
    let when = if c.key_pressed_early { "during the prompt" } else { "after the answer" };
    println!("  consent key pressed: {} ({when})", if c.key_pressed { "yes" } else { "no" });
    if let Some(a) = c.answered_after {
        println!("  answered after {} ms; call lasted {:.1} s", a.as_millis(), c.call_time.as_secs_f64());
    }
    println!(
        "  caller audio at the agent: {}; agent audio at the caller: {}",
        if crate::demo::audio_arrived(&p.received_pcmu, caller_audio) { "complete, byte-exact" } else { "INCOMPLETE" },
        if crate::demo::audio_arrived(&c.received_pcmu, agent_audio) { "complete, byte-exact" } else { "INCOMPLETE" },
    );
    println!(
        "  SIP retransmissions: INVITE {}, BYE {}; RTP sent: caller {}, agent {}",
        c.invite_retransmissions, c.bye_retransmissions, c.rtp_sent, p.rtp_sent
    );
}

fn party_name(row: &RecordingRow, channel: u8) -> &'static str {
    match row.channels.get(usize::from(channel)) {
        Some(Party::Caller) => "caller",
        Some(Party::Agent) => "agent",
        None => "?",
    }
}

/// Waits for the call's recording to close, prints it, and checks transcript and audio.
fn verify_stored(args: &Args, settings: &Settings, began: SystemTime, t0: std::time::Instant) -> Result<(), Failure> {
    let opts = VaultOptions::from_settings(settings).map_err(|e| Failure::Setup(e.to_string()))?;
    let vault = Vault::open(opts).map_err(|e| Failure::Setup(format!("opening the vault: {e}")))?;
    // recordings of this call started after `began` (minus slack for clock granularity)
    let since_ms = Some(began.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64) - 2000);
    let wait = args.wait_recording.unwrap_or(Duration::from_secs(30));
    let waited = monotonic();
    let row = loop {
        let rows = vault
            .list(&ListFilter { since_ms, ..ListFilter::default() })
            .map_err(|e| Failure::Check(format!("listing recordings: {e}")))?;
        if let Some(r) = rows.iter().rev().find(|r| r.state != RecordingState::Recording) {
            break r.clone();
        }
        if waited.elapsed() > wait {
            let open = rows.iter().any(|r| r.state == RecordingState::Recording);
            return Err(Failure::Check(if open {
                format!("the recording was still open {} s after the call", wait.as_secs())
            } else {
                "no recording was stored for the call".to_string()
            }));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let detail = vault.show(&row.id).map_err(|e| Failure::Check(format!("reading the recording: {e}")))?;
    println!("\nrecording {} ({}, route {})", row.id, row.state.as_str(), row.route);
    match &row.basis {
        LawfulBasis::Consent { ledger_ref } => println!("  basis: consent (ledger {ledger_ref})"),
        LawfulBasis::Other { name } => println!("  basis: {name} (no consent asked)"),
    }
    println!("  transcript (redacted, as stored):");
    let mut stored_text = String::new();
    for l in &detail.transcript {
        println!(
            "    [{:>6.1}s] {:<6} {}",
            l.start_ms as f64 / 1000.0,
            party_name(&row, l.channel),
            // the stored transcript is already redacted: printing it is the point of the demo
            l.text.expose()
        );
        stored_text.push_str(l.text.expose());
        stored_text.push('\n');
    }
    println!("  redaction spans:");
    for (ch, s, e, kind) in &detail.spans {
        println!("    {kind:<11} {:<6} {:.2}-{:.2} s", party_name(&row, *ch), *s as f64 / 1000.0, *e as f64 / 1000.0);
    }
    if detail.spans.is_empty() {
        println!("    (none)");
    }

    // The checks: transcript as stored, then the stored caller audio heard again.
    let card = Pii::new(DEMO_CARD.to_string());
    let mut problems = Vec::new();
    for l in check::leaks(&stored_text, &card) {
        problems.push(format!("stored transcript holds {l}"));
    }
    let (rate, channels) = vault.read_audio(&row.id).map_err(|e| Failure::Check(format!("reading the audio: {e}")))?;
    let caller = channels.iter().find(|c| c.party == Party::Caller);
    match caller {
        None => problems.push("the recording has no caller channel".into()),
        Some(c) => {
            let heard = check::transcribe(&settings.raw.redaction.model, &c.samples, rate)
                .map_err(|e| Failure::Check(format!("re-transcribing the stored audio: {e}")))?;
            for l in check::leaks(heard.expose(), &card) {
                problems.push(format!("stored caller audio, heard again, holds {l}"));
            }
        }
    }
    let export = match &args.storage {
        Some(dir) => {
            format!("callveil recordings --config {} export {} --out call.wav", dir.join("demo.toml").display(), row.id)
        }
        None => format!("callveil recordings export {} --out call.wav", row.id),
    };
    if let Some(dir) = &args.storage {
        write_recordings_config(dir, settings);
    }
    println!("\nlisten to what was stored:\n  {export}\n  play call.wav    # or: aplay call.wav");
    println!("demo took {:.1} s", t0.elapsed().as_secs_f64());
    if problems.is_empty() {
        println!("check: PASSED (no card digits in the stored transcript or audio)");
        Ok(())
    } else {
        Err(Failure::Check(format!("check: {}", problems.join("; "))))
    }
}

/// A config file that points `callveil recordings` at the demo's storage (for `--storage`).
fn write_recordings_config(dir: &Path, settings: &Settings) {
    let toml = format!(
        "# written by `callveil demo --storage`: `callveil recordings --config THIS ...` reads the demo's vault\n\
         [sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[[sip.routes]]\nmatch_user = \".*\"\nupstream = [\"udp:127.0.0.1:9\"]\n\
         [metrics]\nlisten = \"\"\n[storage]\ndir = {:?}\n[vault]\nkey_file = {:?}\n",
        settings.raw.storage.dir.display().to_string(),
        settings.raw.vault.key_file.display().to_string(),
    );
    if let Err(e) = std::fs::write(dir.join("demo.toml"), toml) {
        eprintln!("callveil demo: cannot write {}: {e}", dir.join("demo.toml").display());
    }
}
