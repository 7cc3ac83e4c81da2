//! `callveil redact` end to end with the real Whisper model (tiny.en, provisioned by
//! `scripts/provision-model`, which `make test` runs): a short generated call (espeak-ng voice,
//! 8 kHz G.711 µ-law, as a carrier would deliver it) says a card number; the card number must be
//! gone from OUT.wav (muted where it was said, and a second transcription of OUT.wav finds no
//! digits) and from the report, while the rest of the call is kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use callveil::redact::wav;

fn tool(name: &str) {
    let ok = Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "{name} is required (scripts/setup installs it)");
}

fn model() -> PathBuf {
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ggml-tiny.en.bin");
    assert!(m.is_file(), "{} missing: run scripts/provision-model (make test does)", m.display());
    m
}

/// Speaks `text` into a 8 kHz PCM16 mono WAV; returns its samples.
fn speak(dir: &Path, name: &str, text: &str) -> Vec<i16> {
    let raw = dir.join(format!("{name}.raw.wav"));
    let out = dir.join(format!("{name}.wav"));
    assert!(Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("sox")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-e", "signed-integer", "-b", "16"])
        .arg(&out)
        .status()
        .unwrap()
        .success());
    wav::read(&std::fs::read(&out).unwrap()).unwrap().channels.remove(0)
}

fn redact(input: &Path, out: &Path, report: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_callveil"))
        .arg("redact")
        .arg("--in")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--report")
        .arg(report)
        .arg("--model")
        .arg(model())
        .output()
        .unwrap();
    assert!(o.status.success(), "redact failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

fn transcript(report: &serde_json::Value) -> String {
    report["transcript"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect::<Vec<_>>().join(" ")
}

#[test]
fn card_number_is_gone_from_audio_and_report() {
    tool("espeak-ng");
    tool("sox");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let intro = speak(d, "intro", "Hello, my name is Ann and I would like to pay my bill.");
    let card = speak(d, "card", "My card number is 4 1 1 1, 1 1 1 1, 1 1 1 1, 1 1 1 1.");
    let outro = speak(d, "outro", "Thank you very much, goodbye.");
    let mut pcm = intro.clone();
    let card_at = pcm.len();
    pcm.extend(&card);
    let card_end = pcm.len();
    pcm.extend(&outro);
    // Delivered as G.711 µ-law, like a carrier leg.
    let pcm_wav = d.join("pcm.wav");
    wav::write(std::fs::File::create(&pcm_wav).unwrap(), 8_000, &[pcm.clone()]).unwrap();
    let call = d.join("call.wav");
    assert!(Command::new("sox").arg(&pcm_wav).args(["-e", "u-law", "-b", "8"]).arg(&call).status().unwrap().success());

    let (out, report) = (d.join("out.wav"), d.join("report.json"));
    let rep = redact(&call, &out, &report);
    let text = transcript(&rep);
    assert!(!text.contains("4111") && !text.contains("1111") && !text.contains("1 1 1 1"), "{text}");
    assert!(text.contains("[PAN]") || text.contains("[DIGITS]"), "{text}");
    assert!(text.to_lowercase().contains("thank"), "the rest of the call is kept: {text}");
    let spans = rep["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["kind"] == "pan" || s["kind"] == "digits"), "{rep}");

    let o = wav::read(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((o.rate, o.encoding, o.channels.len()), (8_000, wav::Encoding::Pcm16, 1));
    assert_eq!(o.channels[0].len(), pcm.len(), "same length");
    let out_pcm = &o.channels[0];
    // The digits are the last ~75% of the card phrase ("my card number is" comes first): every
    // sample there must be muted.
    let digits_from = card_at + (card_end - card_at) / 4;
    let loud = out_pcm[digits_from..card_end].iter().filter(|s| s.unsigned_abs() > 300).count();
    assert_eq!(loud, 0, "audible samples left where the card number was said");
    // The intro is kept (not everything muted).
    let kept = out_pcm[..intro.len()].iter().filter(|s| s.unsigned_abs() > 300).count();
    assert!(kept > intro.len() / 10, "intro was muted too: {kept} loud samples");

    // A second transcription of the output hears no card digits.
    let rep2 = redact(&out, &d.join("out2.wav"), &d.join("report2.json"));
    let text2 = transcript(&rep2);
    let digits: usize = text2.chars().filter(char::is_ascii_digit).count();
    assert!(digits < 4, "digits still audible in OUT.wav: {digits}");
}

#[test]
fn stereo_16k_alaw_keeps_layout_and_masks_per_channel() {
    tool("espeak-ng");
    tool("sox");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let caller = speak(d, "caller", "Hello. My card number is 4 1 1 1, 1 1 1 1, 1 1 1 1, 1 1 1 1. Thanks.");
    let agent = speak(d, "agent", "Good afternoon, how can I help you today?");
    let len = caller.len().max(agent.len()) + 4_000;
    let pad = |mut v: Vec<i16>| {
        v.resize(len, 0);
        v
    };
    let (caller, agent) = (pad(caller), pad(agent));
    let pcm = d.join("stereo8k.wav");
    wav::write(std::fs::File::create(&pcm).unwrap(), 8_000, &[caller.clone(), agent.clone()]).unwrap();
    let call = d.join("stereo.wav");
    assert!(Command::new("sox")
        .arg(&pcm)
        .args(["-r", "16000", "-e", "a-law", "-b", "8"])
        .arg(&call)
        .status()
        .unwrap()
        .success());
    let input = wav::read(&std::fs::read(&call).unwrap()).unwrap();
    assert_eq!((input.rate, input.encoding, input.channels.len()), (16_000, wav::Encoding::Alaw, 2));
    let (out, report) = (d.join("out.wav"), d.join("report.json"));
    let rep = redact(&call, &out, &report);
    let o = wav::read(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((o.rate, o.encoding, o.channels.len()), (16_000, wav::Encoding::Pcm16, 2));
    assert_eq!(o.channels[0].len(), input.channels[0].len());
    let spans = rep["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["channel"] == 0 && s["kind"] != "unverified"), "{rep}");
    assert!(!spans.iter().any(|s| s["channel"] == 1 && s["kind"] != "unverified"), "agent has no PII: {rep}");
    let text = transcript(&rep);
    assert!(!text.contains("1111") && !text.contains("4111"), "{text}");
    // The agent channel is kept.
    assert!(o.channels[1].iter().filter(|s| s.unsigned_abs() > 300).count() > 16_000 / 2);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, b"RIFF....WAVEnope").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_callveil"))
        .args(["redact", "--in"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("o.wav"))
        .arg("--report")
        .arg(dir.path().join("r.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(65), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fmt"));
    assert!(!dir.path().join("o.wav").exists());
}
