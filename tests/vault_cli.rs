//! The `callveil recordings` and `callveil keys` command lines against a real vault on disk:
//! list filters, show, export, tag, legal hold, erase by id and by subject, sweep, key rotation,
//! and the clear errors for unknown ids, wrong keys and tampered blobs.
//!
//! Recordings are made through the public `Recorder` (transcript and spans; audio can only come
//! from the redactor, so the exported WAV here is empty; audio round trips are unit-tested).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callveil::config::Settings;
use callveil::pii::Pii;
use callveil::vault::recorder::Recorder;
use callveil::vault::sink::*;
use callveil::vault::{Vault, VaultOptions};

const BIN: &str = env!("CARGO_BIN_EXE_callveil");

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("callveil.toml");
        let text = format!(
            "[storage]\ndir = {:?}\n[vault]\nkey_file = {:?}\ncreate_keys = true\n\
             [retention]\ndefault_class = \"standard\"\nclasses = [{{ name = \"standard\", days = 90 }}, \
             {{ name = \"short\", days = 1 }}]\n[[retention.rules]]\nroute = \"sales\"\nclass = \"short\"\n",
            dir.path().join("store"),
            dir.path().join("vault.keys")
        );
        std::fs::write(&config, text).unwrap();
        Env { dir, config }
    }

    fn vault(&self) -> Vault {
        let s = Settings::load(&self.config).unwrap();
        Vault::open(VaultOptions::from_settings(&s).unwrap()).unwrap()
    }

    /// Records a call (transcript + spans, no audio) and returns its id.
    fn record(&self, caller: &str, route: &str, started: SystemTime) -> String {
        let (mut rec, _) = Recorder::start(self.vault(), Box::new(move || started + Duration::from_secs(60))).unwrap();
        let id = rec
            .open(RecordingMeta {
                call_id: "c1@host".into(),
                route: route.into(),
                caller: Pii::new(caller.into()),
                callee: Pii::new("sip:agent@pbx".into()),
                basis: LawfulBasis::Consent { ledger_ref: "L-9".into() },
                retention_class: None,
                started_at: started,
                channels: vec![Party::Caller, Party::Agent],
                sample_rate: 8000,
            })
            .unwrap();
        rec.transcript(
            &id,
            TranscriptSegment { channel: 0, start_ms: 0, end_ms: 3000, text: Pii::new("my card is [PAN]".into()) },
        )
        .unwrap();
        rec.span(&id, RedactionSpan { channel: 0, start_ms: 1000, end_ms: 2500, kind: SpanKind::Pan }).unwrap();
        rec.close(&id, CloseReason::Completed).unwrap();
        id.0
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg(args[0]).arg("--config").arg(&self.config).args(&args[1..]).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str], code: i32, needle: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: stderr `{stderr}` lacks `{needle}`");
    }

    fn blobs(&self, id: &str) -> PathBuf {
        self.dir.path().join("store/blobs/rec").join(id)
    }
}

fn recent() -> SystemTime {
    // A start time no retention class has expired yet: the far future.
    UNIX_EPOCH + Duration::from_secs(4_000_000_000)
}

fn old() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000_000) // 2001
}

#[test]
fn list_show_tag_hold_erase() {
    let env = Env::new();
    let a = env.record("+34 600 111 222", "support", recent());
    let b = env.record("+1 555 0100", "sales", recent());

    let list = env.ok(&["recordings", "list"]);
    assert!(list.contains(&a) && list.contains(&b) && list.contains("2 recording(s)"), "{list}");
    let short = env.ok(&["recordings", "list", "--class", "short"]);
    assert!(short.contains(&b) && !short.contains(&a), "{short}");
    let none = env.ok(&["recordings", "list", "--until", "2001-01-01"]);
    assert!(none.contains("0 recording(s)"), "{none}");
    env.fails(&["recordings", "list", "--since", "yesterday"], 64, "--since");

    let show = env.ok(&["recordings", "show", &a]);
    for needle in ["state:      complete", "caller:     +34 600 111 222", "consent (L-9)", "pan=1", "my card is [PAN]"]
    {
        assert!(show.contains(needle), "{needle} missing from\n{show}");
    }

    env.ok(&["recordings", "tag", &a, "complaint", "q4"]);
    let tagged = env.ok(&["recordings", "list", "--tag", "complaint"]);
    assert!(tagged.contains(&a) && !tagged.contains(&b), "{tagged}");
    let out = env.ok(&["recordings", "tag", &a, "--remove", "q4"]);
    assert!(out.contains("tags complaint"), "{out}");
    env.fails(&["recordings", "tag", &a, "bad tag!"], 1, "invalid tag");

    let moved = env.ok(&["recordings", "class", &b, "standard"]);
    assert!(moved.contains("class standard"), "{moved}");
    let short = env.ok(&["recordings", "list", "--class", "short"]);
    assert!(!short.contains(&b), "{short}");
    env.fails(&["recordings", "class", &b, "forever"], 1, "no retention class `forever`");

    env.ok(&["recordings", "hold", &a, "on"]);
    env.fails(&["recordings", "erase", "--id", &a], 1, "legal hold");
    env.ok(&["recordings", "hold", &a, "off"]);
    env.ok(&["recordings", "erase", "--id", &a]);
    assert!(!env.blobs(&a).exists());
    env.fails(&["recordings", "show", &a], 1, "was erased (erasure_request)");
    env.fails(&["recordings", "show", "0000"], 1, "no recording with id `0000`");
    let audit = env.ok(&["recordings", "--actor", "dpo-anna", "audit", &a]);
    for action in ["create", "show", "tag", "hold.on", "hold.off", "erase"] {
        assert!(audit.contains(action), "{action} missing from\n{audit}");
    }
    assert!(audit.contains("reason=erasure_request") && !audit.contains("600"), "{audit}");
    env.fails(&["recordings", "erase"], 64, "required");

    let wav = env.dir.path().join("b.wav");
    let out = env.ok(&["recordings", "export", &b, "--out", wav.to_str().unwrap()]);
    assert!(out.contains("wrote"), "{out}");
    let r = hound::WavReader::open(&wav).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate, r.spec().bits_per_sample), (2, 8000, 16));
}

#[test]
fn erase_by_subject_and_sweep() {
    let env = Env::new();
    let mine = [env.record("+34 600 111 222", "support", recent()), env.record("0034600111222", "support", recent())];
    let other = env.record("+1 555 0100", "support", recent());
    let out = env.ok(&["recordings", "erase", "--subject", "tel:+34600111222"]);
    assert!(out.contains("2 erased, 0 kept"), "{out}");
    for id in &mine {
        assert!(!env.blobs(id).exists());
    }
    env.ok(&["recordings", "show", &other]);
    env.fails(&["recordings", "erase", "--subject", "anonymous"], 64, "no digits");

    let expired = env.record("+1 555 0199", "sales", old());
    let held = env.record("+1 555 0198", "sales", old());
    env.ok(&["recordings", "hold", &held, "on"]);
    let out = env.ok(&["recordings", "sweep"]);
    assert!(out.contains(&format!("{expired}: expired, erased")), "{out}");
    assert!(out.contains(&format!("{held}: expired, kept")), "{out}");
    env.fails(&["recordings", "show", &expired], 1, "erased (retention)");
}

#[test]
fn wrong_keys_and_tampered_blobs_are_clear_errors() {
    let env = Env::new();
    let id = env.record("+34 600 111 222", "support", recent());

    let other_keys = other_key_file_text();
    let out = Command::new(BIN)
        .args(["recordings", "--config"])
        .arg(&env.config)
        .args(["show", &id])
        .env("CALLVEIL_VAULT_KEYS", other_keys)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong key file"), "{stderr}");

    let out = Command::new(BIN)
        .args(["recordings", "--config"])
        .arg(&env.config)
        .args(["list"])
        .env("CALLVEIL_VAULT_KEYS", "pepper 00")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CALLVEIL_VAULT_KEYS") && stderr.contains("pepper"), "{stderr}");

    let tx = first_file(&env.blobs(&id).join("tx"));
    let mut bytes = std::fs::read(&tx).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&tx, bytes).unwrap();
    env.fails(&["recordings", "show", &id], 1, "failed authentication");
}

#[test]
fn key_rotation_from_the_command_line() {
    let env = Env::new();
    let ids = [env.record("+34 600 111 222", "support", recent()), env.record("+1 555 0100", "support", recent())];
    let out = env.ok(&["keys", "rotate"]);
    assert!(out.contains("re-wrapped 0 data key(s) with key `k1`"), "{out}");
    let out = env.ok(&["keys", "rotate", "--new", "k2"]);
    assert!(out.contains("re-wrapped 2 data key(s) with key `k2`"), "{out}");
    env.fails(&["keys", "rotate", "--new", "k2"], 64, "appears twice");
    env.fails(&["keys", "rotate", "--new", "bad/id"], 64, "key id");
    // Drop k1 from the file: every recording still opens.
    let key_file = env.dir.path().join("vault.keys");
    let text = std::fs::read_to_string(&key_file).unwrap();
    let kept: String = text.lines().filter(|l| !l.starts_with("kek k1 ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&key_file, kept).unwrap();
    for id in &ids {
        env.ok(&["recordings", "show", id]);
    }
    env.fails(&["keys", "init"], 64, "cannot create");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

fn other_key_file_text() -> String {
    callveil::vault::crypto::Keyring::generate_file_text("k1")
}

fn first_file(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v.remove(0)
}
