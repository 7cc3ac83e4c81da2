//! IVR prompts: `scripts/make-prompts` makes loadable 8 kHz mono prompts and is idempotent, and
//! `Prompts::load` refuses files the relay could not play, naming the file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use callveil::consent::prompts::{PromptError, Prompts};
use callveil::redact::wav;

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn write_wav(path: &Path, rate: u32, channels: &[Vec<i16>]) {
    let f = std::fs::File::create(path).unwrap();
    wav::write(std::io::BufWriter::new(f), rate, channels).unwrap();
}

fn tone(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16).collect()
}

#[test]
fn make_prompts_makes_three_loadable_prompts_and_is_idempotent() {
    if !(has("espeak-ng") && has("sox")) {
        // scripts/setup installs both; without them the script cannot run here. The loader is
        // still covered by the tests below, which write their WAVs themselves.
        eprintln!("espeak-ng or sox missing: skipping the make-prompts run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prompts");
    let run = || {
        let s = Command::new("scripts/make-prompts").arg(&out).status().unwrap();
        assert!(s.success());
    };
    run();
    let prompts = Prompts::load(&out).unwrap();
    assert_eq!(prompts.languages().collect::<Vec<_>>(), ["en", "es", "pt"]);
    let mut hashes = Vec::new();
    for lang in ["en", "es", "pt"] {
        let p = prompts.get(lang).unwrap();
        assert_eq!(p.language, lang);
        assert_eq!(p.id, format!("consent-{lang}"));
        assert_eq!(p.sha256.len(), 64);
        assert!(
            p.duration > Duration::from_secs(3) && p.duration < Duration::from_secs(30),
            "{lang}: {:?}",
            p.duration
        );
        assert_eq!(p.pcm.len() as u64, p.duration.as_micros() as u64 / 125);
        assert!(p.pcm.iter().any(|s| s.unsigned_abs() > 1000), "{lang}: prompt is silent");
        hashes.push(p.sha256.clone());
    }
    let mtimes: Vec<_> = ["en", "es", "pt"]
        .iter()
        .map(|l| std::fs::metadata(out.join(format!("{l}.wav"))).unwrap().modified().unwrap())
        .collect();
    run();
    let again = Prompts::load(&out).unwrap();
    for (i, lang) in ["en", "es", "pt"].iter().enumerate() {
        assert_eq!(again.get(lang).unwrap().sha256, hashes[i], "{lang} regenerated");
        let m = std::fs::metadata(out.join(format!("{lang}.wav"))).unwrap().modified().unwrap();
        assert_eq!(m, mtimes[i], "{lang} rewritten");
    }
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
    // A deleted prompt is made again, the others are kept.
    std::fs::remove_file(out.join("es.wav")).unwrap();
    run();
    assert!(Prompts::load(&out).unwrap().get("es").is_some());
    assert_eq!(Prompts::load(&out).unwrap().get("en").unwrap().sha256, hashes[0]);
}

#[test]
fn loads_8khz_mono_and_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    write_wav(&dir.path().join("en.wav"), 8000, &[tone(16_000)]);
    std::fs::write(dir.path().join("README.txt"), "not a prompt").unwrap();
    write_wav(&dir.path().join("not a language.wav"), 16_000, &[tone(10)]);
    let p = Prompts::load(dir.path()).unwrap();
    assert_eq!(p.languages().collect::<Vec<_>>(), ["en"]);
    let en = p.get("en").unwrap();
    assert_eq!(en.duration, Duration::from_secs(2));
    assert_eq!(&en.pcm[..], &tone(16_000)[..]);
    assert!(p.get("es").is_none());
    // The hash is of the file: another file gives another hash.
    write_wav(&dir.path().join("es.wav"), 8000, &[tone(16_001)]);
    let p = Prompts::load(dir.path()).unwrap();
    assert_ne!(p.get("es").unwrap().sha256, p.get("en").unwrap().sha256);
}

/// Writes one bad prompt file at the given path.
type MakeFile = Box<dyn Fn(&Path)>;

#[test]
fn refuses_wrong_rate_channels_garbage_and_missing_dir_naming_the_file() {
    let cases: [(&str, MakeFile, &str); 4] = [
        ("en.wav", Box::new(|p| write_wav(p, 16_000, &[tone(100)])), "16000 Hz"),
        ("es.wav", Box::new(|p| write_wav(p, 8000, &[tone(100), tone(100)])), "2 channels"),
        ("pt.wav", Box::new(|p| std::fs::write(p, b"RIFF\x00\x00\x00\x00WAVEjunk").unwrap()), "pt.wav"),
        ("fr.wav", Box::new(|p| write_wav(p, 8000, &[Vec::new()])), "no audio"),
    ];
    for (name, make, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        make(&file);
        let err = Prompts::load(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(expect), "{name}: {msg}");
    }
    let err = Prompts::load(Path::new("/nonexistent/callveil/prompts")).unwrap_err();
    assert!(matches!(err, PromptError::Dir { .. }));
    assert!(err.to_string().contains("/nonexistent/callveil/prompts"));
}
