//! The `callveil` binary's contracts (exit 64 naming the key on bad config, `sip-check` on a
//! missing file, `run` stopping cleanly on SIGTERM, the embedded-defaults fallback) and the
//! `/metrics` endpoint of an in-process `app::start`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use callveil::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_callveil");

/// Ephemeral ports, and the vault (recording is on by default) in `storage` with a key file
/// created on first use, so the test needs nothing from the checkout's var/.
fn port0_config(storage: &Path) -> String {
    format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [storage]\ndir = \"{d}\"\n[vault]\nkey_file = \"{d}/vault.keys\"\ncreate_keys = true\n",
        d = storage.display()
    )
}

#[test]
fn bad_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[sip]\nt1_ms = \"fast\"\n").unwrap();
    let out = Command::new(BIN).arg("run").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sip.t1_ms"), "stderr: {stderr}");

    std::fs::write(&path, "[[sip.routes]]\nmatch_user = \"(\"\nupstream = [\"udp:127.0.0.1:5070\"]\n").unwrap();
    let out = Command::new(BIN).arg("run").arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sip.routes[0].match_user"));
}

#[test]
fn explicit_missing_config_is_a_usage_error() {
    let out = Command::new(BIN).args(["run", "--config", "/nonexistent/callveil.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn sip_check_on_a_missing_file_fails() {
    let out = Command::new(BIN).args(["sip-check", "/nonexistent/invite.sip"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/invite.sip"));
}

/// Collects the child's stderr lines on a thread so the test can wait for one with a timeout.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("`{needle}` never logged; got: {seen:#?}"),
        }
    }
}

fn terminate(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("callveil did not exit after SIGTERM");
}

#[test]
fn run_serves_until_sigterm_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callveil.toml");
    std::fs::write(&path, port0_config(dir.path())).unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    wait_for_line(&lines, "metrics at");
    terminate(&child);
    assert_eq!(wait_exit(&mut child), Some(0));
}

#[test]
fn run_without_vault_keys_fails_and_says_how_to_create_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callveil.toml");
    let config = port0_config(dir.path()).replace("create_keys = true", "create_keys = false");
    std::fs::write(&path, config).unwrap();
    let out =
        Command::new(BIN).arg("run").arg("--config").arg(&path).env_remove("CALLVEIL_VAULT_KEYS").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("vault.keys") && stderr.contains("callveil keys init"), "stderr: {stderr}");
    assert!(!dir.path().join("vault.keys").exists(), "a key file must not appear unasked");
}

#[test]
fn run_without_config_file_says_it_uses_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Path::new(&dir.path().join("config/callveil.toml")).exists());
    let mut child = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    // Logged before binding, so this holds even if another process owns the default ports.
    wait_for_line(&lines, "embedded defaults");
    // It may already have exited (default ports taken); then there is nothing to stop.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    wait_exit(&mut child);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: callveil\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn app_start_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let running = callveil::app::start(Settings::from_toml(&port0_config(dir.path())).unwrap()).await.unwrap();
    assert!(running.sip_endpoints().iter().all(|e| e.addr.port() != 0), "{:?}", running.sip_endpoints());
    let addr = running.metrics_addr().unwrap();

    let resp = http_get(addr, "/metrics").await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("callveil_sip_requests_total{method=\"INVITE\"} 0"), "{body}");
    assert!(body.contains("# EOF"), "{body}");

    let resp = http_get(addr, "/other").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    running.stop().await;
    // Retried: a child process forked by a concurrent test holds a copy of every descriptor
    // until it execs, which can keep the listener alive for a moment.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "stop closes /metrics");
}
