//! Harness for the SIPp tests: runs real SIPp callers (uac) and callees (uas) as child processes,
//! optionally with a proxy between them (callveil, or Kamailio as the reference), and reads SIPp's
//! own statistics (`-trace_stat`) to judge the outcome.
//!
//! Every process is started in its own process group and killed with its group when its guard
//! drops, so a failing assertion leaves nothing running. Ports are picked by binding port 0 and
//! releasing it. Tests are serialised with [`serial`]: they measure timing-sensitive behaviour on
//! a two-core machine and would otherwise disturb each other.
//!
//! It does not judge SIP correctness itself: the scenario XML files beside this one do (a SIPp
//! call fails on any unexpected message, missing Record-Route or wrong final status).
//!
//! Two test crates include it (`tests/sipp.rs`, `tests/consent_e2e.rs`) and each uses only part.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Set to `1` to let the tests pass without running when `sipp` is not installed (CI has it).
pub const SKIP_SIPP_ENV: &str = "CALLVEIL_SKIP_SIPP";
/// Set to `1` to let the Kamailio reference runs pass without running when `kamailio` is missing.
pub const SKIP_KAMAILIO_ENV: &str = "CALLVEIL_SKIP_KAMAILIO";

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
const KAMAILIO_TEMPLATE: &str = include_str!("kamailio.cfg.in");

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock that keeps SIPp tests from running at the same time. A test that panicked
/// poisons it; the next test still runs, since every test starts its own processes.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the caller's requests go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Straight to the callee: validates the scenario pair itself.
    Direct,
    /// Through Kamailio, the reference stateful proxy: validates that the scenarios route
    /// in-dialog requests correctly through a real Record-Routing proxy.
    Kamailio,
    /// Through the `callveil` binary under test.
    Callveil,
}

impl Hop {
    /// Value for the callees' `expect_rr` global: a proxy must Record-Route.
    pub fn expect_rr(self) -> &'static str {
        match self {
            Hop::Direct => "no",
            Hop::Kamailio | Hop::Callveil => "yes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp_flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A SIP endpoint as callveil's config spells it (`udp:127.0.0.1:5070`).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub transport: Transport,
    pub port: u16,
}

impl Endpoint {
    fn callveil(self) -> String {
        format!("{}:127.0.0.1:{}", self.transport.scheme(), self.port)
    }

    fn kamailio(self) -> String {
        format!("sip:127.0.0.1:{};transport={}", self.port, self.transport.scheme())
    }
}

/// Returns `false` (after printing why) when the test must not run because `sipp` is missing
/// and the skip variable allows it; panics when `sipp` is missing otherwise.
pub fn sipp_available() -> bool {
    tool_available("sipp", &["-v"], SKIP_SIPP_ENV)
}

/// Same as [`sipp_available`] for `kamailio`, with its own skip variable.
pub fn kamailio_available() -> bool {
    tool_available("kamailio", &["-v"], SKIP_KAMAILIO_ENV)
}

fn tool_available(tool: &str, probe: &[&str], skip_env: &str) -> bool {
    let found = Command::new(tool).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if found {
        return true;
    }
    if std::env::var(skip_env).as_deref() == Ok("1") {
        eprintln!("note: `{tool}` is not on PATH and {skip_env}=1: this test did not run");
        return false;
    }
    panic!(
        "`{tool}` is not on PATH. Install it (Debian: apt-get install -y --no-install-recommends {}) \
         or set {skip_env}=1 to skip these tests.",
        if tool == "sipp" { "sip-tester" } else { tool }
    );
}

/// A port free for both UDP and TCP on 127.0.0.1 at the time of the call.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports free for UDP and TCP (SIPp's media port uses several).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let Ok(listener) = TcpListener::bind((LOCALHOST, 0)) else { continue };
        let Ok(addr) = listener.local_addr() else { continue };
        let base = addr.port();
        drop(listener);
        if base.checked_add(n).is_none() {
            continue;
        }
        let all_free = (0..n).all(|i| {
            let port = base + i;
            TcpListener::bind((LOCALHOST, port)).is_ok() && UdpSocket::bind((LOCALHOST, port)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range of {n} on 127.0.0.1 after 200 tries");
}

/// True once a socket is bound to 127.0.0.1:`port` (UDP) or listening on it (TCP), read from
/// /proc/net so as not to bind the port ourselves: a probe bind could win the race against the
/// process starting up, which would then fail to bind.
fn listening(transport: Transport, port: u16) -> bool {
    let (table, state) = match transport {
        Transport::Udp => ("/proc/net/udp", None),
        Transport::Tcp => ("/proc/net/tcp", Some("0A")),
    };
    let Ok(text) = fs::read_to_string(table) else { return false };
    let local = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let addr = fields.next();
        let st = fields.nth(1);
        addr == Some(local.as_str()) && state.is_none_or(|want| st == Some(want))
    })
}

/// A child process in its own process group, killed with the group on drop.
struct Guarded {
    child: Child,
    name: String,
    /// Set once the child has been waited for: from then on its PID, and so the group ID, may
    /// belong to someone else, so the group is never signalled after that.
    reaped: bool,
}

impl Guarded {
    fn spawn(name: &str, mut cmd: Command) -> Guarded {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Guarded { child, name: name.to_owned(), reaped: false }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        self.reaped |= status.is_some();
        status
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn signal_group(&self, signal: &str) {
        // std cannot send SIGTERM and the crate forbids unsafe code: use kill(1). Kamailio
        // only takes its worker processes down with it on SIGTERM, hence the group.
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Not reaped yet, so even an exited leader (a zombie) still owns the group ID.
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// SIPp's cumulative counters from the last row of its `-trace_stat` file.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub successful: u64,
    pub failed: u64,
    pub incoming: u64,
    pub outgoing: u64,
    pub retransmissions: u64,
}

impl Stats {
    fn read(path: &Path) -> Option<Stats> {
        let text = fs::read_to_string(path).ok()?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines.next()?.split(';').collect();
        // SIPp rewrites the file while running; only a row as wide as the header is complete.
        let last: Vec<&str> = lines.rfind(|l| l.split(';').count() >= header.len())?.split(';').collect();
        let row: HashMap<&str, &str> = header.iter().copied().zip(last.iter().copied()).collect();
        let get = |name: &str| row.get(name).and_then(|v| v.trim().parse::<u64>().ok());
        Some(Stats {
            successful: get("SuccessfulCall(C)")?,
            failed: get("FailedCall(C)")?,
            incoming: get("IncomingCall(C)")?,
            outgoing: get("OutgoingCall(C)")?,
            retransmissions: get("Retransmissions(C)").unwrap_or(0),
        })
    }
}

/// What one SIPp process did.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub status: Option<ExitStatus>,
    pub stats: Stats,
    /// Tail of SIPp's error log and screen output, for failure messages.
    pub diagnostics: String,
}

impl Outcome {
    /// Asserts SIPp exited 0 and counted exactly `calls` successful calls and no failed one.
    pub fn assert_calls(&self, calls: u64) {
        let ok = self.status.is_some_and(|s| s.success()) && self.stats.successful == calls && self.stats.failed == 0;
        assert!(
            ok,
            "{}: expected {calls} successful and 0 failed calls with exit status 0, got {:?} and exit {:?}\n{}",
            self.name, self.stats, self.status, self.diagnostics
        );
    }

    /// Asserts the scenario did not pass: SIPp exited non-zero or counted a failed call.
    pub fn assert_failed(&self) {
        let failed = self.status.is_some_and(|s| !s.success()) || self.stats.failed > 0;
        assert!(failed, "{}: expected a failed call, got {:?} and exit {:?}", self.name, self.stats, self.status);
    }
}

/// One test's working directory and the SIPp processes it started.
pub struct Bench {
    dir: tempfile::TempDir,
    counter: u32,
    message_trace: bool,
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

impl Bench {
    pub fn new() -> Bench {
        let dir = tempfile::Builder::new().prefix("callveil-sipp-").tempdir().expect("create temp dir");
        Bench { dir, counter: 0, message_trace: true }
    }

    /// Leaves SIPp's per-message log out of the processes started from now on (large under load).
    pub fn without_message_trace(&mut self) {
        self.message_trace = false;
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&mut self, stem: &str, ext: &str) -> PathBuf {
        self.counter += 1;
        self.dir.path().join(format!("{stem}-{}.{ext}", self.counter))
    }

    /// A SIPp command with the flags every run needs: loopback-only sockets (SIPp binds 0.0.0.0
    /// and control port 8888 otherwise), explicit media and control ports, statistics to a file.
    fn sipp_command(&mut self, scenario: &str, transport: Transport) -> SippCommand {
        let stem = scenario.trim_end_matches(".xml").to_owned();
        let stats = self.file(&stem, "csv");
        let errors = self.file(&stem, "errors.log");
        let messages = self.file(&stem, "messages.log");
        let screen = self.file(&stem, "screen.log");
        let control_port = free_port();
        let local_port = free_port();
        let media_port = free_ports(4);
        let mut args: Vec<String> = vec![
            "-sf".into(),
            format!("{SCENARIO_DIR}/{scenario}"),
            "-t".into(),
            transport.sipp_flag().into(),
            "-bind_local".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-ci".into(),
            "127.0.0.1".into(),
            "-cp".into(),
            control_port.to_string(),
            "-p".into(),
            local_port.to_string(),
            "-mp".into(),
            media_port.to_string(),
            "-nostdin".into(),
            "-trace_stat".into(),
            "-stf".into(),
            stats.display().to_string(),
            "-fd".into(),
            "1".into(),
            "-trace_err".into(),
            "-error_file".into(),
            errors.display().to_string(),
            "-buff_size".into(),
            "4194304".into(),
        ];
        if self.message_trace {
            args.extend(["-trace_msg".into(), "-message_file".into(), messages.display().to_string()]);
        }
        SippCommand {
            name: stem,
            args,
            transport,
            local_port,
            control_port,
            stats,
            errors,
            messages,
            screen,
            cwd: None,
        }
    }

    /// Starts a callee; it runs until [`Uas::finish`]. `sets` are `-set` globals, `keys` `-key`s.
    pub fn uas(&mut self, scenario: &str, transport: Transport, sets: &[(&str, &str)]) -> Uas {
        let mut cmd = self.sipp_command(scenario, transport);
        cmd.push_pairs("-set", sets);
        let mut attempt = 0;
        loop {
            let name = format!("uas {} on {}", cmd.name, cmd.local_port);
            let child = Guarded::spawn(&name, cmd.command());
            let mut uas = Uas { cmd, child: Some(child), name };
            match uas.wait_listening() {
                Ok(()) => return uas,
                // A port that was free when picked can be taken by a parallel test before SIPp
                // binds it: start again on fresh ports.
                Err(why) if attempt < BIND_RETRIES && uas.cmd.lost_a_port() => {
                    eprintln!("{why}\nretrying on fresh ports");
                    attempt += 1;
                    drop(uas.child.take());
                    cmd = std::mem::replace(&mut uas.cmd, SippCommand::placeholder());
                    cmd.repick_ports();
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Prepares a caller run; see [`Uac::run`].
    pub fn uac(&mut self, scenario: &str, transport: Transport) -> Uac {
        Uac {
            cmd: self.sipp_command(scenario, transport),
            calls: 1,
            rate_cps: 10,
            call_pause_ms: 0,
            limit: None,
            timeout: Duration::from_secs(20),
        }
    }

    /// Starts a proxy between callers and `upstreams` (failover order); `None` for [`Hop::Direct`].
    pub fn proxy(&mut self, hop: Hop, upstreams: &[Endpoint], t1_ms: u64) -> Option<Proxy> {
        match hop {
            Hop::Direct => None,
            Hop::Callveil => Some(Proxy::callveil(self.path(), upstreams, t1_ms)),
            Hop::Kamailio => Some(Proxy::kamailio(self.path(), upstreams, 64 * t1_ms, 2, 64)),
        }
    }
}

/// Fresh starts allowed when SIPp could not bind a port picked for it.
const BIND_RETRIES: u32 = 3;

struct SippCommand {
    name: String,
    args: Vec<String>,
    transport: Transport,
    local_port: u16,
    control_port: u16,
    stats: PathBuf,
    errors: PathBuf,
    messages: PathBuf,
    screen: PathBuf,
    /// Working directory (relative `play_pcap_audio` files are looked up there).
    cwd: Option<PathBuf>,
}

impl SippCommand {
    fn push_pairs(&mut self, flag: &str, pairs: &[(&str, &str)]) {
        for (name, value) in pairs {
            self.args.extend([flag.to_owned(), (*name).to_owned(), (*value).to_owned()]);
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("sipp");
        cmd.args(&self.args);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let screen = fs::File::create(&self.screen).expect("create screen log");
        let screen_err = screen.try_clone().expect("clone screen log");
        cmd.stdout(screen).stderr(screen_err);
        cmd
    }

    /// SIPp stopped because a port was already in use (its error log says so).
    fn lost_a_port(&self) -> bool {
        fs::read_to_string(&self.errors).is_ok_and(|t| t.contains("Address already in use"))
    }

    /// New control, SIP and media ports, and an empty error log for the next start.
    fn repick_ports(&mut self) {
        let (control, local, media) = (free_port(), free_port(), free_ports(4));
        for (flag, value) in [("-cp", control), ("-p", local), ("-mp", media)] {
            if let Some(i) = self.args.iter().position(|a| a == flag) {
                self.args[i + 1] = value.to_string();
            }
        }
        self.control_port = control;
        self.local_port = local;
        let _ = fs::remove_file(&self.errors);
    }

    /// Stands in for a command moved out of a failed start.
    fn placeholder() -> SippCommand {
        SippCommand {
            name: String::new(),
            args: Vec::new(),
            transport: Transport::Udp,
            local_port: 0,
            control_port: 0,
            stats: PathBuf::new(),
            errors: PathBuf::new(),
            messages: PathBuf::new(),
            screen: PathBuf::new(),
            cwd: None,
        }
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (label, path, max) in [("error log", &self.errors, 3000), ("screen", &self.screen, 2500)] {
            if let Ok(text) = fs::read_to_string(path) {
                if !text.trim().is_empty() {
                    let _ = writeln!(out, "--- {label} ({}):\n{}", path.display(), tail(&text, max));
                }
            }
        }
        let _ = writeln!(out, "--- messages: {}", self.messages.display());
        out
    }

    fn outcome(&self, name: &str, status: Option<ExitStatus>) -> Outcome {
        Outcome {
            name: name.to_owned(),
            status,
            stats: Stats::read(&self.stats).unwrap_or_default(),
            diagnostics: self.diagnostics(),
        }
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A running SIPp callee.
pub struct Uas {
    cmd: SippCommand,
    child: Option<Guarded>,
    name: String,
}

impl Uas {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { transport: self.cmd.transport, port: self.cmd.local_port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.cmd.local_port))
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(self.cmd.transport, self.cmd.local_port) {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait() {
                    return Err(format!("{} exited early with {status}\n{}", self.name, self.cmd.diagnostics()));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not bind its port within 10 s", self.name));
            }
            sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Asks SIPp to quit gracefully (control command `q`: no new calls, let current ones end),
    /// waits for it, and returns what it counted.
    pub fn finish(mut self) -> Outcome {
        let mut child = self.child.take().expect("uas finished twice");
        if child.try_wait().is_none() {
            if let Ok(socket) = UdpSocket::bind((LOCALHOST, 0)) {
                let _ = socket.send_to(b"q", (LOCALHOST, self.cmd.control_port));
            }
        }
        let status = child.wait_timeout(Duration::from_secs(10));
        self.cmd.outcome(&self.name, status)
    }
}

/// A caller run being configured.
pub struct Uac {
    cmd: SippCommand,
    calls: u64,
    rate_cps: u64,
    call_pause_ms: u64,
    limit: Option<u64>,
    timeout: Duration,
}

impl Uac {
    /// Total calls (`-m`).
    pub fn calls(mut self, calls: u64) -> Uac {
        self.calls = calls;
        self
    }

    /// New calls per second (`-r`).
    pub fn rate(mut self, cps: u64) -> Uac {
        self.rate_cps = cps;
        self
    }

    /// Length of the scenario's `<pause/>` (`-d`), in milliseconds.
    pub fn pause_ms(mut self, ms: u64) -> Uac {
        self.call_pause_ms = ms;
        self
    }

    /// Most simultaneous calls (`-l`).
    pub fn limit(mut self, calls: u64) -> Uac {
        self.limit = Some(calls);
        self
    }

    /// Wall-clock limit for the whole run; SIPp is told the same (`-timeout`, as an error).
    pub fn timeout(mut self, limit: Duration) -> Uac {
        self.timeout = limit;
        self
    }

    pub fn set(mut self, name: &str, value: &str) -> Uac {
        self.cmd.push_pairs("-set", &[(name, value)]);
        self
    }

    pub fn key(mut self, name: &str, value: &str) -> Uac {
        self.cmd.push_pairs("-key", &[(name, value)]);
        self
    }

    /// Call-IDs from SIPp's `-cid_str` format (`%u` is the call number), so a test knows them.
    pub fn call_id_format(mut self, format: &str) -> Uac {
        self.cmd.args.extend(["-cid_str".into(), format.into()]);
        self
    }

    /// Runs SIPp in `dir`: where SIPp 3.6 looks for relative `play_pcap_audio` files.
    pub fn current_dir(mut self, dir: &Path) -> Uac {
        self.cmd.cwd = Some(dir.to_path_buf());
        self
    }

    /// Runs the calls against `target` (the proxy, or the callee for [`Hop::Direct`]) and waits.
    pub fn run(mut self, target: SocketAddr) -> Outcome {
        let timeout_s = self.timeout.as_secs().max(1);
        self.cmd.args.extend([
            target.to_string(),
            "-m".into(),
            self.calls.to_string(),
            "-r".into(),
            self.rate_cps.to_string(),
            "-d".into(),
            self.call_pause_ms.to_string(),
            "-timeout".into(),
            format!("{timeout_s}s"),
            "-timeout_error".into(),
        ]);
        if let Some(limit) = self.limit {
            self.cmd.args.extend(["-l".into(), limit.to_string()]);
        }
        let name = format!("uac {} -> {target}", self.cmd.name);
        let mut attempt = 0;
        loop {
            let mut child = Guarded::spawn(&name, self.cmd.command());
            let status = child.wait_timeout(self.timeout + Duration::from_secs(10));
            drop(child);
            // As for a callee: a port taken between picking and binding is not the test's fault.
            let failed = status.is_none_or(|s| !s.success());
            if failed && attempt < BIND_RETRIES && self.cmd.lost_a_port() {
                eprintln!("{name}: a port was taken before SIPp bound it; retrying on fresh ports");
                attempt += 1;
                self.cmd.repick_ports();
                continue;
            }
            return self.cmd.outcome(&name, status);
        }
    }
}

/// A running proxy (callveil or Kamailio), killed on drop.
pub struct Proxy {
    child: Guarded,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }

    /// The proxy's PID, for CPU accounting.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Asks the proxy to stop (SIGTERM to its process group) and waits up to `limit` for it to
    /// exit; `None` if it did not (it is then killed when dropped).
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.signal_group("-TERM");
        self.child.wait_timeout(limit)
    }

    /// Last lines of the proxy's own output, for failure messages.
    pub fn log_tail(&self) -> String {
        fs::read_to_string(&self.log).map(|t| tail(&t, 3000).to_owned()).unwrap_or_default()
    }

    fn callveil(dir: &Path, upstreams: &[Endpoint], t1_ms: u64) -> Proxy {
        let port = free_port();
        let metrics_port = free_port();
        Proxy::callveil_with_config(
            dir,
            port,
            metrics_port,
            &callveil_config(port, metrics_port, upstreams, t1_ms, &dir.join("var")),
        )
    }

    /// `callveil run` with the given config text (written to `dir/callveil.toml`), which must
    /// listen on `port` over UDP and TCP and serve `/metrics` on `metrics_port`; returns once
    /// all three answer.
    pub fn callveil_with_config(dir: &Path, port: u16, metrics_port: u16, config_text: &str) -> Proxy {
        let config = dir.join("callveil.toml");
        fs::write(&config, config_text).expect("write callveil config");
        let log = dir.join("callveil.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callveil"));
        cmd.arg("run").arg("--config").arg(&config);
        redirect(&mut cmd, &log);
        let mut proxy = Proxy { child: Guarded::spawn("callveil", cmd), port, log };
        proxy.wait_ready("callveil", |p| {
            http_get_ok(metrics_port, "/metrics") && listening(Transport::Udp, p) && listening(Transport::Tcp, p)
        });
        proxy
    }

    /// Kamailio from the template beside this file. `fr_timer_ms` stands in for Timer B;
    /// `shm_mb` is its shared memory (`-m`).
    pub fn kamailio(dir: &Path, upstreams: &[Endpoint], fr_timer_ms: u64, children: u32, shm_mb: u32) -> Proxy {
        let port = free_port();
        let config = dir.join("kamailio.cfg");
        let text = kamailio_config(port, upstreams, fr_timer_ms, children);
        fs::write(&config, text).expect("write kamailio config");
        let log = dir.join("kamailio.log");
        let mut cmd = Command::new("kamailio");
        cmd.arg("-f").arg(&config).args(["-DD", "-E", "-m", &shm_mb.to_string(), "-M", "8", "-w"]).arg(dir);
        redirect(&mut cmd, &log);
        let mut proxy = Proxy { child: Guarded::spawn("kamailio", cmd), port, log };
        proxy.wait_ready("kamailio", options_answered);
        proxy
    }

    fn wait_ready(&mut self, name: &str, ready: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait() {
                panic!("{name} exited with {status} before it was ready; its output:\n{}", self.log_tail());
            }
            if ready(self.port) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} not ready within 15 s; its output:\n{}", self.log_tail());
            sleep(Duration::from_millis(50));
        }
    }
}

fn redirect(cmd: &mut Command, log: &Path) {
    let out = fs::File::create(log).expect("create proxy log");
    let err = out.try_clone().expect("clone proxy log");
    cmd.stdout(out).stderr(err);
}

/// callveil's config for a test: the given SIP port on UDP and TCP, one catch-all route.
pub fn callveil_config(port: u16, metrics_port: u16, upstreams: &[Endpoint], t1_ms: u64, storage: &Path) -> String {
    let upstream: Vec<String> = upstreams.iter().map(|u| format!("\"{}\"", u.callveil())).collect();
    format!(
        "# Written by tests/sipp/harness.rs\n\
         [sip]\n\
         listen = [\"udp:127.0.0.1:{port}\", \"tcp:127.0.0.1:{port}\"]\n\
         t1_ms = {t1_ms}\n\
         \n\
         [[sip.routes]]\n\
         match_user = \".*\"\n\
         upstream = [{}]\n\
         \n\
         [consent]\n\
         mode = \"not_required\"\n\
         \n\
         [recording]\n\
         enabled = false\n\
         \n\
         [storage]\n\
         dir = \"{}\"\n\
         \n\
         [metrics]\n\
         listen = \"127.0.0.1:{metrics_port}\"\n",
        upstream.join(", "),
        storage.display()
    )
}

/// Kamailio's config from the template beside this file: listens on `port` (UDP and TCP) and
/// relays to the first upstream, failing over to the second (or the first again) on 503 or when
/// no final response came within `fr_timer_ms`.
pub fn kamailio_config(port: u16, upstreams: &[Endpoint], fr_timer_ms: u64, children: u32) -> String {
    let first = upstreams.first().expect("kamailio needs an upstream");
    let second = upstreams.get(1).unwrap_or(first);
    KAMAILIO_TEMPLATE
        .replace("@CHILDREN@", &children.to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@FR_TIMER_MS@", &fr_timer_ms.to_string())
        .replace("@UPSTREAM1@", &first.kamailio())
        .replace("@UPSTREAM2@", &second.kamailio())
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`; the status code and body, or `None` when
/// nothing answered in time.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((LOCALHOST, port)), Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

/// One plain HTTP/1.1 GET; true on a 200 status line.
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::from((LOCALHOST, port)), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && (head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

/// Sends one OPTIONS to 127.0.0.1:`port` over UDP; true when a 200 comes back.
fn options_answered(port: u16) -> bool {
    let Ok(socket) = UdpSocket::bind((LOCALHOST, 0)) else { return false };
    let Ok(local) = socket.local_addr() else { return false };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    let lp = local.port();
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK-ready-{lp}\r\n\
         From: <sip:probe@127.0.0.1:{lp}>;tag=ready\r\n\
         To: <sip:127.0.0.1:{port}>\r\n\
         Call-ID: ready-{lp}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    if socket.send_to(msg.as_bytes(), (LOCALHOST, port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 2048];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if buf.get(..n).is_some_and(|b| b.starts_with(b"SIP/2.0 200")))
}
