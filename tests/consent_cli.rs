//! `callveil consent list` against a real vault on disk: all rows, by call id, by subject (any
//! spelling of the number), the link to the recording, no number in the output, the listing
//! audited, and usage errors exiting 64.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callveil::config::Settings;
use callveil::consent::{Basis, Decision, Method};
use callveil::pii::Pii;
use callveil::vault::recorder::Recorder;
use callveil::vault::sink::*;
use callveil::vault::{ConsentRecord, PromptRef, Vault, VaultOptions};

const BIN: &str = env!("CARGO_BIN_EXE_callveil");
const CALLER: &str = "+34 600 111 222";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

fn setup() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("callveil.toml");
    let text = format!(
        "[storage]\ndir = {:?}\n[vault]\nkey_file = {:?}\ncreate_keys = true\n",
        dir.path().join("store"),
        dir.path().join("vault.keys")
    );
    std::fs::write(&config, text).unwrap();
    let s = Settings::load(&config).unwrap();
    let vault = Vault::open(VaultOptions::from_settings(&s).unwrap()).unwrap();
    let (mut rec, _) = Recorder::start(vault, Box::new(|| at(100))).unwrap();
    let record = |call: &str, caller: &str, basis: Basis, method: Method, decision: Decision, t: u64| ConsentRecord {
        call_id: call.into(),
        caller: Pii::new(caller.into()),
        route: "support".into(),
        basis,
        method,
        decision,
        prompt: (method == Method::Ivr).then(|| PromptRef {
            id: "consent-es".into(),
            language: "es".into(),
            sha256: "0123456789abcdef".repeat(4),
        }),
        decided_at: at(t),
        recording_id: None,
    };
    let grant =
        rec.append_consent(record("call-a@sbc", CALLER, Basis::Consent, Method::Ivr, Decision::Granted, 1)).unwrap();
    let id = rec
        .open(RecordingMeta {
            call_id: "call-a@sbc".into(),
            route: "support".into(),
            caller: Pii::new(CALLER.into()),
            callee: Pii::new("sip:agent@pbx".into()),
            basis: LawfulBasis::Consent { ledger_ref: grant },
            retention_class: None,
            started_at: at(1),
            channels: vec![Party::Caller, Party::Agent],
            sample_rate: 8000,
        })
        .unwrap();
    rec.close(&id, CloseReason::Completed).unwrap();
    rec.append_consent(record("call-b@sbc", "+44 20 7946 0000", Basis::Consent, Method::Dtmf, Decision::Declined, 2))
        .unwrap();
    rec.append_consent(record(
        "call-c@sbc",
        "0034600111222",
        Basis::Other("legal_obligation".into()),
        Method::NotRequired,
        Decision::Granted,
        3,
    ))
    .unwrap();
    (dir, config, id.0)
}

fn consent(config: &PathBuf, args: &[&str]) -> Output {
    Command::new(BIN).arg("consent").arg("--config").arg(config).arg("--actor").arg("dpo").args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn lists_all_by_call_and_by_subject_without_numbers() {
    let (_dir, config, rec_id) = setup();
    let all = stdout(&consent(&config, &["list"]));
    assert!(all.starts_with("LEDGER ID"), "{all}");
    assert!(all.contains("3 ledger record(s)"), "{all}");
    // Long needles only: ids and hash prefixes are random hex and may hold short digit runs.
    for needle in ["600111222", "600 111 222", "7946 0000", "2079460000"] {
        assert!(!all.contains(needle), "number fragment {needle} printed:\n{all}");
    }

    let by_call = stdout(&consent(&config, &["list", "--call-id", "call-a@sbc"]));
    assert!(by_call.contains("1 ledger record(s)"), "{by_call}");
    let line = by_call.lines().nth(1).unwrap();
    for field in ["call-a@sbc", "support", "consent", "ivr", "granted", "es:0123456789ab", rec_id.as_str()] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    // Another spelling of the same number finds both of that caller's rows, and only those.
    let by_subject = stdout(&consent(&config, &["list", "--subject", "sip:+34600111222@carrier"]));
    assert!(by_subject.contains("2 ledger record(s)"), "{by_subject}");
    assert!(by_subject.contains("legal_obligation") && by_subject.contains("not_required"), "{by_subject}");
    assert!(!by_subject.contains("call-b@sbc"));
    let none = stdout(&consent(&config, &["list", "--subject", "+1 555 0100"]));
    assert!(none.contains("0 ledger record(s)"), "{none}");

    // Every listing is audited, without the number.
    let audit = stdout(&Command::new(BIN).args(["recordings", "audit", "--config"]).arg(&config).output().unwrap());
    assert!(audit.contains("consent.list"), "{audit}");
    assert!(audit.contains("by=subject rows=2"), "{audit}");
    assert!(!audit.contains("600111222") && !audit.contains("600 111 222"), "{audit}");
}

#[test]
fn usage_errors_exit_64() {
    let (_dir, config, _) = setup();
    let both = consent(&config, &["list", "--call-id", "x", "--subject", "1"]);
    assert_eq!(both.status.code(), Some(64));
    let bad_config =
        Command::new(BIN).args(["consent", "list", "--config", "/nonexistent/callveil.toml"]).output().unwrap();
    assert_eq!(bad_config.status.code(), Some(64));
}
