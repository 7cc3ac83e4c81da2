//! Vault tests that need crate-private access (only the redactor may build `ClearedAudio`):
//! round trip through the sink, tamper/truncation/wrong-key on stored recordings, key rotation,
//! retention sweep on a fake clock with legal hold, erasure by subject with a scan of every file,
//! revocation purge, and a real `kill -9` of a child process in the middle of a recording.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::crypto::{CryptoError, Keyring};
use super::meta::{ListFilter, RecordingState};
use super::recorder::Recorder;
use super::retention::RetentionPolicy;
use super::sink::*;
use super::*;
use crate::config::{RetentionClassConfig, RetentionConfig, RetentionRuleConfig};
use crate::pii::Pii;

const RATE: u32 = 8_000;
const CALLER: &str = "+34 600 111 222";
const CALLER_DIGITS: &str = "34600111222";
const T0: u64 = 1_790_000_000; // 2026-09-21, seconds since the epoch

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn options(dir: &Path, chunk_ms: u32) -> VaultOptions {
    let retention = RetentionPolicy::from_config(&RetentionConfig {
        default_class: "standard".into(),
        trust_header: true,
        classes: vec![
            RetentionClassConfig { name: "standard".into(), days: 90 },
            RetentionClassConfig { name: "short".into(), days: 7 },
            RetentionClassConfig { name: "complaint".into(), days: 730 },
        ],
        rules: vec![RetentionRuleConfig { route: Some("sales".into()), basis: None, class: "short".into() }],
    })
    .unwrap();
    VaultOptions { dir: dir.join("store"), key_file: dir.join("vault.keys"), create_keys: true, chunk_ms, retention }
}

fn recorder(dir: &Path, chunk_ms: u32) -> Recorder {
    let vault = Vault::open(options(dir, chunk_ms)).unwrap();
    Recorder::start(vault, Box::new(|| t(600))).unwrap().0
}

fn meta(caller: &str, route: &str, class: Option<&str>) -> RecordingMeta {
    RecordingMeta {
        call_id: "a84b4c76e66710@pc33.example.com".into(),
        route: route.into(),
        caller: Pii::new(caller.into()),
        callee: Pii::new("sip:agent-7@pbx.example".into()),
        basis: LawfulBasis::Consent { ledger_ref: "consent-123".into() },
        retention_class: class.map(str::to_string),
        started_at: t(0),
        channels: vec![Party::Caller, Party::Agent],
        sample_rate: RATE,
    }
}

fn sample(i: usize, ch: u8) -> i16 {
    ((i * 7 + usize::from(ch) * 1000) % 20_000) as i16 - 10_000
}

/// 20 ms frames for both channels from frame `from` (inclusive) to `to` (exclusive).
fn write_frames(rec: &mut Recorder, id: &RecordingId, from: usize, to: usize) {
    for f in from..to {
        for ch in 0..2u8 {
            let samples: Vec<i16> = (f * 160..(f + 1) * 160).map(|i| sample(i, ch)).collect();
            rec.audio(id, ClearedAudio::cleared(ch, f as u64 * 20, RATE, samples)).unwrap();
        }
    }
}

/// One complete recording: 3 s of audio, a transcript with a marker, two spans.
fn record_call(rec: &mut Recorder, caller: &str, route: &str) -> RecordingId {
    let id = rec.open(meta(caller, route, None)).unwrap();
    write_frames(rec, &id, 0, 150);
    rec.transcript(
        &id,
        TranscriptSegment { channel: 0, start_ms: 0, end_ms: 2_000, text: Pii::new("my card is [PAN] thanks".into()) },
    )
    .unwrap();
    rec.transcript(
        &id,
        TranscriptSegment { channel: 1, start_ms: 2_000, end_ms: 3_000, text: Pii::new("noted".into()) },
    )
    .unwrap();
    rec.span(&id, RedactionSpan { channel: 0, start_ms: 500, end_ms: 1_700, kind: SpanKind::Pan }).unwrap();
    rec.span(&id, RedactionSpan { channel: 0, start_ms: 2_500, end_ms: 2_900, kind: SpanKind::Unverified }).unwrap();
    rec.close(&id, CloseReason::Completed).unwrap();
    id
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn round_trip_through_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let id = record_call(&mut rec, CALLER, "support");
    let v = rec.vault();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("store")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "a new storage directory is private");
    }

    let d = v.show(&id.0).unwrap();
    assert_eq!(d.row.state, RecordingState::Complete);
    assert_eq!(d.row.retention_class, "standard");
    assert_eq!(d.row.expires_at_ms, ms(t(0)) + 90 * 86_400_000);
    assert_eq!(d.parties.caller.expose(), CALLER);
    assert_eq!(d.parties.call_id.expose(), "a84b4c76e66710@pc33.example.com");
    assert_eq!(d.transcript.len(), 2);
    assert_eq!(d.transcript[0].text.expose(), "my card is [PAN] thanks");
    assert_eq!(d.summary.counts.get("pan"), Some(&1));
    assert_eq!(d.summary.unverified_ms, 400);
    assert_eq!(d.spans[0], (0, 500, 1_700, "pan".to_string()));

    let (rate, chans) = v.read_audio(&id.0).unwrap();
    assert_eq!(rate, RATE);
    for (ch, c) in chans.iter().enumerate() {
        assert_eq!(c.samples.len(), 150 * 160);
        assert!(c.samples.iter().enumerate().all(|(i, s)| *s == sample(i, ch as u8)), "channel {ch}");
    }
    let wav = dir.path().join("out.wav");
    v.export_wav(&id.0, &wav, "qa", t(700)).unwrap();
    let mut r = hound::WavReader::open(&wav).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate), (2, RATE));
    let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(all.len(), 2 * 150 * 160);
    assert_eq!((all[2], all[3]), (sample(1, 0), sample(1, 1)));

    // Nothing stored is plaintext: no transcript text, no number, no call id in any file.
    for f in files_under(&dir.path().join("store")) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in ["[PAN] thanks", CALLER_DIGITS, "600 111 222", "pc33.example.com", "agent-7"] {
            assert!(!contains(&bytes, needle.as_bytes()), "{needle} in {}", f.display());
        }
    }
    // Route rules and trusted header classes.
    let sales = record_call(&mut rec, "+1 555 0100", "sales");
    assert_eq!(rec.vault().get(&sales.0).unwrap().retention_class, "short");
    let id3 = rec.open(meta(CALLER, "sales", Some("complaint"))).unwrap();
    rec.close(&id3, CloseReason::Completed).unwrap();
    assert_eq!(rec.vault().get(&id3.0).unwrap().retention_class, "complaint");
    let listed = rec.vault().list(&ListFilter { class: Some("short".into()), ..Default::default() }).unwrap();
    assert_eq!(listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![sales.0.as_str()]);
}

#[test]
fn sink_rejects_bad_input_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let ghost = RecordingId("nope".into());
    assert!(matches!(
        rec.audio(&ghost, ClearedAudio::cleared(0, 0, RATE, vec![0; 160])),
        Err(SinkError::UnknownRecording(_))
    ));
    assert!(matches!(rec.close(&ghost, CloseReason::Completed), Err(SinkError::UnknownRecording(_))));
    let id = rec.open(meta(CALLER, "support", None)).unwrap();
    assert!(rec.audio(&id, ClearedAudio::cleared(5, 0, RATE, vec![0; 160])).is_err(), "channel not in layout");
    assert!(rec.audio(&id, ClearedAudio::cleared(0, 0, 16_000, vec![0; 160])).is_err(), "wrong rate");
    // An oversized frame (10 s in one go) is sealed on its own.
    rec.audio(&id, ClearedAudio::cleared(0, 0, RATE, vec![7; 80_000])).unwrap();
    rec.close(&id, CloseReason::Completed).unwrap();
    assert_eq!(rec.vault().read_audio(&id.0).unwrap().1[0].samples.len(), 80_000);
    let mut m = meta(CALLER, "support", None);
    m.channels.clear();
    assert!(rec.open(m).is_err());
}

#[test]
fn tampering_truncation_and_wrong_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let id = record_call(&mut rec, CALLER, "support");
    let blobs = dir.path().join("store/blobs/rec").join(&id.0);
    let chunk1 = blobs.join("ch0/0000000001");
    let good = std::fs::read(&chunk1).unwrap();

    let mut bad = good.clone();
    let last = bad.len() - 20;
    bad[last] ^= 0x40;
    std::fs::write(&chunk1, &bad).unwrap();
    let e = rec.vault().read_audio(&id.0).unwrap_err();
    assert!(matches!(e, VaultError::Crypto { source: CryptoError::Tampered { index: 1, .. }, .. }), "{e}");
    assert!(e.to_string().contains("failed authentication"), "{e}");

    // Swap two chunks.
    let chunk2 = blobs.join("ch0/0000000002");
    let good2 = std::fs::read(&chunk2).unwrap();
    std::fs::write(&chunk1, &good2).unwrap();
    std::fs::write(&chunk2, &good).unwrap();
    assert!(matches!(
        rec.vault().read_audio(&id.0),
        Err(VaultError::Crypto { source: CryptoError::Misplaced { .. }, .. })
    ));
    std::fs::write(&chunk1, &good).unwrap();
    std::fs::write(&chunk2, &good2).unwrap();
    assert!(rec.vault().read_audio(&id.0).is_ok());

    // Drop the final chunk of the transcript.
    let tx = files_under(&blobs.join("tx"));
    std::fs::remove_file(tx.last().unwrap()).unwrap();
    let e = rec.vault().show(&id.0).unwrap_err();
    assert!(matches!(e, VaultError::Crypto { source: CryptoError::Truncated { .. }, .. }), "{e}");

    // A different key file with the same key id: a clear wrong-key error, not garbage.
    drop(rec);
    let mut opts = options(dir.path(), 500);
    opts.key_file = dir.path().join("other.keys");
    let other = Vault::open(opts).unwrap();
    let e = other.read_audio(&id.0).unwrap_err();
    assert!(matches!(e, VaultError::Crypto { source: CryptoError::WrongKey(_), .. }), "{e}");
    assert!(e.to_string().contains("wrong key file"), "{e}");
    assert!(matches!(other.get("0123"), Err(VaultError::UnknownRecording(_))));
}

#[test]
fn key_rotation_rewraps_without_touching_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let a = record_call(&mut rec, CALLER, "support");
    let b = record_call(&mut rec, "+1 555 0100", "support");
    drop(rec);
    let blob_bytes = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&d.join("store/blobs")).into_iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
    };
    let before = blob_bytes(dir.path());
    let key_file = dir.path().join("vault.keys");
    crypto::write_secret_file(&key_file, Keyring::generate_kek_line("k2").as_bytes(), true).unwrap();
    let v = Vault::open(options(dir.path(), 500)).unwrap();
    assert_eq!(v.keys().active_id(), "k2");
    assert_eq!(v.rotate_keys("ops", t(800)).unwrap(), 2);
    assert_eq!(v.rotate_keys("ops", t(801)).unwrap(), 0, "idempotent");
    assert_eq!(before, blob_bytes(dir.path()), "blobs untouched");
    drop(v);
    // With k1 removed from the key file, everything still opens.
    let text = std::fs::read_to_string(&key_file).unwrap();
    let without_k1: String = text.lines().filter(|l| !l.starts_with("kek k1 ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&key_file, without_k1).unwrap();
    let v = Vault::open(options(dir.path(), 500)).unwrap();
    assert_eq!(v.keys().kek_ids().collect::<Vec<_>>(), vec!["k2"]);
    for id in [&a, &b] {
        assert_eq!(v.show(&id.0).unwrap().transcript.len(), 2);
    }
    assert!(v.audit_log(None).unwrap().iter().any(|e| e.action == "keys.rotate" && e.detail.contains("rewrapped=2")));
}

#[test]
fn retention_sweep_on_a_fake_clock_respects_legal_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let short = record_call(&mut rec, CALLER, "sales"); // 7 days
    let held = record_call(&mut rec, CALLER, "sales"); // 7 days, on hold
    let standard = record_call(&mut rec, CALLER, "support"); // 90 days
    let open = rec.open(meta(CALLER, "sales", None)).unwrap(); // still recording: never swept
    let v = rec.vault();
    v.set_hold(&held.0, true, "dpo", t(10)).unwrap();
    let day = 86_400;

    assert_eq!(v.sweep(t(7 * day - 1)).unwrap(), SweepReport::default());
    let r = v.sweep(t(7 * day)).unwrap();
    assert_eq!(r.erased, vec![short.0.clone()]);
    assert_eq!(r.held, vec![held.0.clone()]);
    assert!(matches!(v.get(&short.0), Err(VaultError::Erased { .. })));
    assert!(v.get(&standard.0).is_ok());
    assert!(matches!(v.erase(&held.0, "erasure_request", "dpo", t(8 * day)), Err(VaultError::LegalHold(_))));
    v.set_hold(&held.0, false, "dpo", t(8 * day)).unwrap();
    let r = v.sweep(t(90 * day)).unwrap();
    assert_eq!(r.erased.len(), 2);
    assert!(v.get(&open.0).is_ok(), "open recordings are not swept");
    let tomb = v.tombstone(&standard.0).unwrap().unwrap();
    assert_eq!((tomb.reason.as_str(), tomb.retention_class.as_str()), ("retention", "standard"));
    assert!(v.list(&ListFilter::default()).unwrap().iter().all(|r| r.id == open.0));
    assert!(files_under(&dir.path().join("store/blobs/rec")).iter().all(|p| p.to_string_lossy().contains(&open.0)));
}

#[test]
fn erasing_a_subject_leaves_nothing_of_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let mine =
        [record_call(&mut rec, CALLER, "support"), record_call(&mut rec, "sip:+34600111222@carrier.example", "sales")];
    let other = record_call(&mut rec, "+44 20 7946 0000", "support");
    let v = rec.vault();
    // Everything that could decrypt the subject's data, captured before erasure.
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for id in &mine {
        secrets.push(v.block(v.meta().key(&id.0)).unwrap().unwrap().unwrap().bytes);
        secrets.push(v.get(&id.0).unwrap().sealed_parties);
        secrets.push(v.keys().subject_hash(CALLER).unwrap().into_bytes());
        for f in files_under(&dir.path().join("store/blobs/rec").join(&id.0)) {
            let b = std::fs::read(f).unwrap();
            secrets.push(b[crypto::CHUNK_HEADER_LEN..].to_vec());
        }
    }
    v.tag(&mine[0].0, &["complaint".into()], &[], "qa", t(20)).unwrap();

    let r = v.erase_subject(&Pii::new("0034 600 111 222".into()), "dpo", t(30)).unwrap();
    assert_eq!(r.erased.len(), 2);
    assert!(r.held.is_empty());
    for id in &mine {
        assert!(matches!(v.show(&id.0), Err(VaultError::Erased { .. })));
        assert!(!dir.path().join("store/blobs/rec").join(&id.0).exists());
        let tomb = v.tombstone(&id.0).unwrap().unwrap();
        assert_eq!(tomb.reason, "subject_request");
    }
    assert_eq!(v.show(&other.0).unwrap().transcript.len(), 2, "other subjects untouched");

    // Scan every file of the store: database, WAL, blobs.
    for f in files_under(&dir.path().join("store")) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [CALLER_DIGITS, "600 111 222", "600111222"] {
            assert!(!contains(&bytes, needle.as_bytes()), "{needle} in {}", f.display());
        }
        for (i, s) in secrets.iter().enumerate() {
            let probe = &s[..s.len().min(32)];
            assert!(!contains(&bytes, probe), "secret #{i} still in {}", f.display());
        }
    }
    // The audit log says what happened, never to whom.
    let log = v.audit_log(None).unwrap();
    assert!(log.iter().any(|e| e.action == "erase.subject" && e.detail == "erased=2 kept=0 consent_ledger_kept=0"));
    assert!(log.iter().all(|e| !e.detail.contains("600")));
    // Erasing again: a clear "already erased" error, and subject erasure finds nothing.
    assert!(matches!(v.erase(&mine[0].0, "erasure_request", "dpo", t(40)), Err(VaultError::Erased { .. })));
    assert_eq!(v.erase_subject(&Pii::new(CALLER.into()), "dpo", t(40)).unwrap(), SweepReport::default());
}

#[test]
fn revocation_with_purge_erases_what_was_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 200);
    let id = rec.open(meta(CALLER, "support", None)).unwrap();
    write_frames(&mut rec, &id, 0, 50);
    assert!(!files_under(&dir.path().join("store/blobs/rec").join(&id.0)).is_empty());
    rec.close(&id, CloseReason::Revoked { purge: true }).unwrap();
    assert!(!dir.path().join("store/blobs/rec").join(&id.0).exists());
    assert_eq!(rec.vault().tombstone(&id.0).unwrap().unwrap().reason, "revoked");
    let kept = rec.open(meta(CALLER, "support", None)).unwrap();
    write_frames(&mut rec, &kept, 0, 50);
    rec.close(&kept, CloseReason::Revoked { purge: false }).unwrap();
    assert_eq!(rec.vault().get(&kept.0).unwrap().state, RecordingState::Revoked);
    assert_eq!(rec.vault().read_audio(&kept.0).unwrap().1[0].samples.len(), 50 * 160);
}

const KILL9_ENV: &str = "CALLVEIL_TEST_KILL9_DIR";

/// Run by `kill_9_mid_recording` in a child process: records until it is killed.
#[test]
#[ignore = "helper: run as a child process by kill_9_mid_recording"]
fn kill9_child() {
    let Ok(dir) = std::env::var(KILL9_ENV) else { return };
    let mut rec = recorder(Path::new(&dir), 200);
    let id = rec.open(meta(CALLER, "support", None)).unwrap();
    rec.transcript(
        &id,
        TranscriptSegment { channel: 0, start_ms: 0, end_ms: 900, text: Pii::new("sealed segment".into()) },
    )
    .unwrap();
    // 1 s of audio: 5 sealed chunks per channel, then announce and keep going until killed.
    write_frames(&mut rec, &id, 0, 50);
    println!("READY {}", id.0);
    let mut f = 50;
    loop {
        write_frames(&mut rec, &id, f, f + 1);
        f += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_mid_recording() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["vault::tests::kill9_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(KILL9_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test NAME ... " without a newline before the child's own output.
            if let Some((_, id)) = line.split_once("READY ") {
                let _ = tx.send(id.trim().to_string());
            }
        }
    });
    let id = rx.recv_timeout(Duration::from_secs(60)).expect("child never became ready");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());

    // The killed process left the recording open.
    let v = Vault::open(options(dir.path(), 200)).unwrap();
    assert_eq!(v.get(&id).unwrap().state, RecordingState::Recording);
    assert!(matches!(v.read_audio(&id), Err(VaultError::StillRecording(_))));
    drop(v);

    let (rec, recovered) =
        Recorder::start(Vault::open(options(dir.path(), 200)).unwrap(), Box::new(|| t(900))).unwrap();
    assert_eq!(recovered, vec![id.clone()]);
    let v = rec.vault();
    let d = v.show(&id).unwrap();
    assert_eq!(d.row.state, RecordingState::Truncated);
    assert_eq!(d.transcript[0].text.expose(), "sealed segment");
    let (_, chans) = v.read_audio(&id).unwrap();
    for (ch, c) in chans.iter().enumerate() {
        // At least the second announced as sealed; whole chunks only (the partial one is gone).
        assert!(c.samples.len() >= 8_000, "channel {ch}: {} samples", c.samples.len());
        assert_eq!(c.samples.len() % 1_600, 0, "channel {ch}: whole 200 ms chunks only");
        assert!(c.samples.iter().enumerate().all(|(i, s)| *s == sample(i, ch as u8)), "channel {ch}");
    }
    assert!(v.audit_log(Some(&id)).unwrap().iter().any(|e| e.action == "recover"));
    assert!(std::fs::read_dir(dir.path().join("store/blobs/.tmp")).unwrap().next().is_none(), "no temp files");
    for f in files_under(&dir.path().join("store")) {
        assert!(!contains(&std::fs::read(&f).unwrap(), b"sealed segment"), "plaintext in {}", f.display());
    }
    // A second start finds nothing more to recover.
    drop(rec);
    let (_, again) = Recorder::start(Vault::open(options(dir.path(), 200)).unwrap(), Box::new(|| t(901))).unwrap();
    assert!(again.is_empty());
}

#[test]
fn metrics_count_recordings_chunks_errors_and_erasures() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = crate::metrics::Metrics::new();
    let mut vault = Vault::open(options(dir.path(), 500)).unwrap();
    vault.set_metrics(metrics.vault.clone());
    let (mut rec, _) = Recorder::start(vault, Box::new(|| t(600))).unwrap();
    let id = record_call(&mut rec, CALLER, "support");
    let open = rec.open(meta(CALLER, "support", None)).unwrap();
    // Audio placed beyond 24 h is refused up front, so it cannot make the recording unreadable.
    let late = ClearedAudio::cleared(0, 24 * 3_600_000, RATE, vec![0; 160]);
    assert!(matches!(rec.audio(&open, late), Err(SinkError::Backend(m)) if m.contains("24 h")));
    assert!(rec
        .transcript(&open, TranscriptSegment { channel: 9, start_ms: 0, end_ms: 1, text: Pii::new("x".into()) })
        .is_err());
    assert!(rec
        .span(&RecordingId("ghost".into()), RedactionSpan { channel: 0, start_ms: 0, end_ms: 1, kind: SpanKind::Pan })
        .is_err());
    rec.vault().erase(&id.0, "erasure_request", "dpo", t(700)).unwrap();
    let text = metrics.encode();
    for line in [
        "callveil_vault_recordings_opened_total 2",
        "callveil_vault_recordings_open 1",
        "callveil_vault_recordings_closed_total{kind=\"complete\"} 1",
        "callveil_vault_sink_errors_total{kind=\"bad_input\"} 2",
        "callveil_vault_sink_errors_total{kind=\"unknown_recording\"} 1",
        "callveil_vault_erasures_total{kind=\"erasure_request\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // 150 frames of 20 ms at 500 ms chunks: 6 chunks + final per channel, plus 2 transcript + final.
    assert!(text.contains("callveil_vault_chunks_sealed_total 17"), "{text}");
    assert!(!text.contains("600"), "no personal data in metrics");
}

#[test]
fn legal_hold_outranks_a_revocation_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 200);
    let id = rec.open(meta(CALLER, "support", None)).unwrap();
    write_frames(&mut rec, &id, 0, 20);
    rec.vault().set_hold(&id.0, true, "dpo", t(5)).unwrap();
    rec.close(&id, CloseReason::Revoked { purge: true }).unwrap();
    let row = rec.vault().get(&id.0).unwrap();
    assert_eq!(row.state, RecordingState::Revoked);
    assert!(rec.vault().audit_log(Some(&id.0)).unwrap().iter().any(|e| e.action == "purge.held"));
}

#[test]
fn recorder_is_a_sendable_sink_built_from_settings() {
    fn boxed(r: Recorder) -> Box<dyn RecordingSink> {
        Box::new(r)
    }
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\ndir = {:?}\n[vault]\nkey_file = {:?}\ncreate_keys = true\n",
        dir.path().join("store"),
        dir.path().join("k")
    );
    let settings = crate::config::Settings::from_toml(&text).unwrap();
    let metrics = crate::metrics::Metrics::new();
    let (rec, recovered) = Recorder::from_settings(&settings, metrics.vault.clone(), Box::new(|| t(0))).unwrap();
    assert!(recovered.is_empty());
    let mut sink = boxed(rec);
    let id = sink.open(meta(CALLER, "support", None)).unwrap();
    std::thread::spawn(move || sink.close(&id, CloseReason::Completed).unwrap()).join().unwrap();
    assert!(metrics.encode().contains("callveil_vault_recordings_closed_total{kind=\"complete\"} 1"));
    // Inside an async runtime the vault refuses instead of panicking.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let opts = options(dir.path(), 500);
    assert!(matches!(rt.block_on(async { Vault::open(opts) }), Err(VaultError::InsideAsyncRuntime)));
    // Config validation names the keys.
    let e = crate::config::Settings::from_toml("[vault]\nchunk_ms = 5\n").unwrap_err();
    assert_eq!(e.key, "vault.chunk_ms");
    let e = crate::config::Settings::from_toml("[retention]\ndefault_class = \"gold\"\n").unwrap_err();
    assert_eq!(e.key, "retention.default_class");
}

fn consent(
    call: &str,
    caller: &str,
    decision: crate::consent::Decision,
    method: crate::consent::Method,
) -> ConsentRecord {
    ConsentRecord {
        call_id: call.into(),
        caller: Pii::new(caller.into()),
        route: "support".into(),
        basis: crate::consent::Basis::Consent,
        method,
        decision,
        prompt: (method == crate::consent::Method::Ivr).then(|| PromptRef {
            id: "consent-en".into(),
            language: "en".into(),
            sha256: "ab".repeat(32),
        }),
        decided_at: t(5),
        recording_id: None,
    }
}

#[test]
fn consent_ledger_links_grant_to_recording_and_is_append_only() {
    use crate::consent::{Basis, Decision, Method};
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let grant = rec.append_consent(consent("call-1", CALLER, Decision::Granted, Method::Ivr)).unwrap();
    let mut m = meta(CALLER, "support", None);
    m.call_id = "call-1".into();
    m.basis = LawfulBasis::Consent { ledger_ref: grant.clone() };
    let id = rec.open(m).unwrap();
    write_frames(&mut rec, &id, 0, 10);
    let mut revoke = consent("call-1", CALLER, Decision::Revoked, Method::Dtmf);
    revoke.decided_at = t(9);
    revoke.recording_id = Some(id.0.clone());
    let revoke_id = rec.append_consent(revoke).unwrap();
    rec.close(&id, CloseReason::Revoked { purge: false }).unwrap();
    let mut other = consent("call-2", "+44 20 7946 0000", Decision::Declined, Method::Header);
    other.decided_at = t(1);
    rec.append_consent(other).unwrap();
    let mut legal = consent("call-3", CALLER, Decision::Granted, Method::NotRequired);
    legal.basis = Basis::Other("legal_obligation".into());
    legal.decided_at = t(20);
    rec.append_consent(legal).unwrap();

    let v = rec.vault();
    let rows = v.consent_records(&ConsentQuery::Call("call-1".into())).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].decision.as_str(), rows[0].method.as_str()),
        (grant.as_str(), "granted", "ivr")
    );
    assert_eq!(rows[0].recording_id.as_deref(), Some(id.0.as_str()), "grant linked through the recording's basis_ref");
    assert_eq!(rows[0].prompt_sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(rows[0].prompt_language.as_deref(), Some("en"));
    assert_eq!(rows[0].decided_at_ms, ms(t(5)));
    assert_eq!((rows[1].id.as_str(), rows[1].decision.as_str()), (revoke_id.as_str(), "revoked"));
    assert_eq!(rows[1].recording_id.as_deref(), Some(id.0.as_str()));
    assert_eq!(rows[0].subject_hash, v.keys().subject_hash(CALLER));
    // By subject: any spelling of the number finds the same rows; no digits finds nothing.
    let by_subject = v.consent_records(&ConsentQuery::Subject(Pii::new("0034 600 111 222".into()))).unwrap();
    assert_eq!(by_subject.len(), 3);
    assert_eq!(by_subject[2].basis, "legal_obligation");
    assert_eq!(by_subject[2].method, "not_required");
    assert!(v.consent_records(&ConsentQuery::Subject(Pii::new("anonymous".into()))).unwrap().is_empty());
    assert_eq!(v.consent_records(&ConsentQuery::All).unwrap().len(), 4);

    // The database itself refuses changes, whatever code runs against it.
    for sql in [
        "UPDATE consent_ledger SET decision = 'granted'",
        "UPDATE consent_ledger SET recording_id = NULL",
        "DELETE FROM consent_ledger",
        "DELETE FROM consent_ledger WHERE call_id = 'call-2'",
    ] {
        let err = v.block(v.meta().execute_raw(sql)).unwrap().unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // And checks the vocabulary: consent is never recorded with method not_required.
    let bad = "INSERT INTO consent_ledger (id, call_id, route, basis, method, decision, decided_at_ms) \
               VALUES ('x', 'c', 'r', 'consent', 'not_required', 'granted', 0)";
    assert!(v.block(v.meta().execute_raw(bad)).unwrap().is_err());
    assert_eq!(v.consent_records(&ConsentQuery::All).unwrap().len(), 4);

    // No number in the database files.
    for f in files_under(&dir.path().join("store")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, CALLER_DIGITS.as_bytes()), "number in {}", f.display());
        assert!(!contains(&bytes, b"600 111 222"), "number in {}", f.display());
    }
}

#[test]
fn consent_ledger_survives_subject_erasure_and_purge() {
    use crate::consent::{Decision, Method};
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let grant = rec.append_consent(consent("call-9", CALLER, Decision::Granted, Method::Dtmf)).unwrap();
    let mut m = meta(CALLER, "support", None);
    m.basis = LawfulBasis::Consent { ledger_ref: grant };
    let id = rec.open(m).unwrap();
    write_frames(&mut rec, &id, 0, 10);
    rec.close(&id, CloseReason::Completed).unwrap();
    let r = rec.vault().erase_subject(&Pii::new(CALLER.into()), "dpo", t(30)).unwrap();
    assert_eq!(r.erased, vec![id.0.clone()]);
    let rows = rec.vault().consent_records(&ConsentQuery::Subject(Pii::new(CALLER.into()))).unwrap();
    assert_eq!(rows.len(), 1, "proof of consent is kept");
    assert_eq!(rows[0].recording_id, None, "the erased recording no longer links back");
    let log = rec.vault().audit_log(None).unwrap();
    assert!(log.iter().any(|e| e.action == "erase.subject" && e.detail == "erased=1 kept=0 consent_ledger_kept=1"));
}

#[test]
fn consent_records_that_blur_the_basis_are_refused() {
    use crate::consent::{Basis, Decision, Method};
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 500);
    let not_required_as_consent = consent("c", CALLER, Decision::Granted, Method::NotRequired);
    let mut other_by_ivr = consent("c", CALLER, Decision::Granted, Method::Ivr);
    other_by_ivr.basis = Basis::Other("contract".into());
    let mut empty_call = consent("", CALLER, Decision::Granted, Method::Dtmf);
    empty_call.prompt = None;
    for r in [not_required_as_consent, other_by_ivr, empty_call] {
        let e = rec.append_consent(r).unwrap_err();
        assert!(e.to_string().contains("rejected"), "{e}");
    }
    assert!(rec.vault().consent_records(&ConsentQuery::All).unwrap().is_empty());
    // A caller with no number at all is still recorded, with no subject hash.
    let anon = rec.append_consent(consent("c", "anonymous", Decision::Declined, Method::Dtmf)).unwrap();
    let rows = rec.vault().consent_records(&ConsentQuery::All).unwrap();
    assert_eq!((rows[0].id.clone(), rows[0].subject_hash.clone()), (anon, None));
}

#[test]
fn a_second_recorder_on_the_same_vault_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = recorder(dir.path(), 200);
    let id = first.open(meta("+34600000001", "sales", None)).unwrap();
    write_frames(&mut first, &id, 0, 20);

    // A second process (or a second `run`/`demo` on the same storage) must not start: its crash
    // recovery would finalise the live recording as truncated.
    let err = Recorder::start(Vault::open(options(dir.path(), 200)).unwrap(), Box::new(|| t(700))).err().unwrap();
    assert!(matches!(err, VaultError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("recorder.lock"), "{err}");
    assert_eq!(first.vault().get(&id.0).unwrap().state, RecordingState::Recording);

    // Readers are not blocked.
    assert!(!Vault::open(options(dir.path(), 200)).unwrap().list(&Default::default()).unwrap().is_empty());

    drop(first);
    let (_, recovered) = Recorder::start(Vault::open(options(dir.path(), 200)).unwrap(), Box::new(|| t(800))).unwrap();
    assert_eq!(recovered, vec![id.0]);
}

#[test]
fn a_recording_moves_class_with_its_expiry_recomputed_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = recorder(dir.path(), 200);
    let id = rec.open(meta("+34600000002", "support", None)).unwrap();
    let before = rec.vault().get(&id.0).unwrap();
    assert_eq!(before.retention_class, "standard");

    // A trusted PBX flags a complaint mid-call: the open recording moves.
    rec.retention_class(&id, "complaint").unwrap();
    let after = rec.vault().get(&id.0).unwrap();
    assert_eq!(after.retention_class, "complaint");
    let class_days = |row: &crate::vault::meta::RecordingRow| (row.expires_at_ms - row.started_at_ms) / 86_400_000;
    assert!(class_days(&after) > class_days(&before), "{} vs {}", class_days(&after), class_days(&before));
    assert!(rec.vault().audit_log(Some(&id.0)).unwrap().iter().any(|e| e.action == "class"));

    // An unknown class is refused and changes nothing.
    assert!(rec.retention_class(&id, "forever").is_err());
    assert_eq!(rec.vault().get(&id.0).unwrap().retention_class, "complaint");
    rec.close(&id, CloseReason::Completed).unwrap();

    // The DPO can move a closed one (from the command line), but not into an unknown class.
    rec.vault().set_class(&id.0, "standard", "cli", t(700)).unwrap();
    assert_eq!(rec.vault().get(&id.0).unwrap().expires_at_ms, before.expires_at_ms);
    assert!(matches!(rec.vault().set_class(&id.0, "nope", "cli", t(700)), Err(VaultError::UnknownClass(_))));
    assert!(matches!(rec.vault().set_class("0000", "standard", "cli", t(700)), Err(VaultError::UnknownRecording(_))));
}
