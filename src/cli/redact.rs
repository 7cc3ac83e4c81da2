//! `callveil redact --in IN.wav --out OUT.wav --report REPORT.json`: offline redaction of a
//! recording through the same pipeline the live tap feeds (DESIGN.md "Contracts").
//!
//! IN is mono or stereo, 8 or 16 kHz, PCM16 / µ-law / A-law; OUT has the same rate, channels and
//! length in PCM16; REPORT lists the spans and the redacted transcript. A one-line summary (no
//! personal data) goes to stderr. Exit status: 0 done, 64 bad arguments or config, 65 IN is not a
//! usable WAV, 66 IN unreadable, 69 the speech model is unavailable, 73 OUT/REPORT not writable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{RedactionConfig, Settings};
use crate::redact::batch::{self, MemorySink};
use crate::redact::detect::{DetectConfig, Detectors};
use crate::redact::normalize::Lang;
use crate::redact::pipeline::PipelineConfig;
use crate::redact::wav;
use crate::transcribe::pool::{default_workers, Pool};
use crate::transcribe::whisper::{WhisperConfig, WhisperModel};
use crate::transcribe::Transcriber;

pub struct Args {
    pub input: PathBuf,
    pub output: PathBuf,
    pub report: PathBuf,
    pub config: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub language: Option<Lang>,
    pub workers: Option<usize>,
}

const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_CANTCREAT: u8 = 73;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("callveil redact: {msg}");
    ExitCode::from(code)
}

/// The pipeline settings a `[redaction]` section describes.
pub fn pipeline_config(r: &RedactionConfig) -> PipelineConfig {
    PipelineConfig {
        detect: DetectConfig {
            lang: r.language,
            detectors: Detectors::from_names(&r.detectors).unwrap_or_default(),
            min_digits: r.min_digits,
            payment_context_ms: r.payment_context_ms,
            ..DetectConfig::default()
        },
        pad_ms: r.pad_ms,
        lead_pad_ms: r.lead_pad_ms,
        mask: r.mask,
        hold_ms: r.hold_seconds * 1000,
        deadline: Some(std::time::Duration::from_millis(r.deadline_ms)),
        ..PipelineConfig::default()
    }
}

pub fn run(args: Args) -> ExitCode {
    let settings = match &args.config {
        Some(p) => Settings::load(p),
        None => Ok(Settings::embedded()),
    };
    let mut rc = match settings {
        Ok(s) => s.raw.redaction,
        Err(e) => return fail(crate::cli::EX_USAGE, e),
    };
    if let Some(m) = args.model {
        rc.model = m;
    }
    if let Some(l) = args.language {
        rc.language = l;
    }
    if let Some(w) = args.workers {
        rc.workers = w;
    }
    let bytes = match std::fs::read(&args.input) {
        Ok(b) => b,
        Err(e) => return fail(EX_NOINPUT, format!("cannot read {}: {e}", args.input.display())),
    };
    let audio = match wav::read(&bytes) {
        Ok(a) => a,
        Err(e) => return fail(EX_DATAERR, format!("{}: {e}", args.input.display())),
    };
    let model = match WhisperModel::load(&rc.model) {
        Ok(m) => m,
        Err(e) => return fail(EX_UNAVAILABLE, e),
    };
    if rc.language != Lang::En && !model.is_multilingual() {
        return fail(
            crate::cli::EX_USAGE,
            format!(
                "language {} needs a multilingual model; {} is English-only",
                rc.language.code(),
                rc.model.display()
            ),
        );
    }
    let workers = if rc.workers == 0 { default_workers() } else { rc.workers };
    // Offline there is no relay to leave a core for, but never more workers than channels help.
    let workers = workers.min(audio.channels.len()).max(1);
    let wcfg = WhisperConfig { language: rc.language.code().into(), threads: 1, max_tokens: rc.max_tokens };
    let mut ts: Vec<Box<dyn Transcriber>> = Vec::new();
    for _ in 0..workers {
        match model.transcriber(wcfg.clone()) {
            Ok(t) => ts.push(Box::new(t)),
            Err(e) => return fail(EX_UNAVAILABLE, e),
        }
    }
    let pool = match Pool::new(ts, 4) {
        Ok(p) => p,
        Err(e) => return fail(EX_UNAVAILABLE, format!("cannot start transcription workers: {e}")),
    };
    let mut sink = MemorySink::default();
    let stats = match batch::run(pipeline_config(&rc), audio.rate, &audio.channels, &pool, &mut sink, None) {
        Ok(s) => s,
        Err(e) => return fail(EX_UNAVAILABLE, e),
    };
    drop(pool);
    let len = audio.channels.first().map_or(0, Vec::len);
    let out: Vec<Vec<i16>> = (0..audio.channels.len()).map(|c| sink.channel_pcm(c as u8, audio.rate, len)).collect();
    if let Err(e) = write_atomic(&args.output, |f| wav::write(f, audio.rate, &out)) {
        return fail(EX_CANTCREAT, format!("cannot write {}: {e}", args.output.display()));
    }
    let report = report_json(&sink);
    if let Err(e) = write_atomic(&args.report, |mut f| std::io::Write::write_all(&mut f, report.as_bytes())) {
        return fail(EX_CANTCREAT, format!("cannot write {}: {e}", args.report.display()));
    }
    let ch = audio.channels.len().max(1) as f64;
    let rtf = stats.transcribe_ms as f64 / (stats.audio_ms.max(1) as f64 * ch);
    eprintln!(
        "callveil redact: {:.1} s audio, {} channel(s), {} windows transcribed in {:.1} s worker time, \
         rtf {:.3} per channel, {} spans, {} ms unverified",
        stats.audio_ms as f64 / 1000.0,
        audio.channels.len(),
        stats.jobs,
        stats.transcribe_ms as f64 / 1000.0,
        rtf,
        sink.spans.len(),
        stats.unverified_ms
    );
    ExitCode::SUCCESS
}

/// The REPORT document (DESIGN.md): spans and the redacted transcript, in time order.
pub fn report_json(sink: &MemorySink) -> String {
    let mut spans = sink.spans.clone();
    spans.sort_by_key(|s| (s.start_ms, s.channel));
    let mut tr: Vec<_> = sink.transcript.iter().collect();
    tr.sort_by_key(|t| (t.start_ms, t.channel));
    let v = serde_json::json!({
        "spans": spans.iter().map(|s| serde_json::json!({
            "channel": s.channel, "start_ms": s.start_ms, "end_ms": s.end_ms, "kind": s.kind.as_str(),
        })).collect::<Vec<_>>(),
        "transcript": tr.iter().map(|t| serde_json::json!({
            "channel": t.channel, "start_ms": t.start_ms, "end_ms": t.end_ms, "text": t.text.expose(),
        })).collect::<Vec<_>>(),
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes through a temporary file in the same directory, then renames it into place, so a
/// reader never sees a half-written file.
fn write_atomic(path: &Path, f: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    f(&mut file)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
