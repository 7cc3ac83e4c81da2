//! Configuration: serde types with defaults, loading from TOML, and validation.
//!
//! Every error names the offending key (`sip.routes[0].match_user: ...`) so an operator can fix a
//! file without reading code; `main` turns any [`ConfigError`] into exit status 64 (EX_USAGE).
//! Parsed, validated forms of string values (listen addresses, upstreams, regexes, port ranges) are
//! produced here once, so the rest of the program never re-parses configuration strings.
//! This module does not open sockets or files other than the config file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// The demo defaults, compiled in so `callveil demo` needs no file on disk.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../config/callveil.toml");

#[derive(Debug, thiserror::Error)]
#[error("config error: {key}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `sip.routes[0].upstream[1]`.
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError { key: key.into(), problem: problem.into() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub consent: ConsentConfig,
    pub recording: RecordingConfig,
    pub storage: StorageConfig,
    pub vault: VaultConfig,
    pub retention: RetentionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub redaction: RedactionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// `udp:HOST:PORT` or `tcp:HOST:PORT`.
    pub listen: Vec<String>,
    /// Ordered routing rules; the first whose `match_user` matches the Request-URI user wins.
    pub routes: Vec<RouteConfig>,
    /// Largest message accepted (UDP datagram or framed TCP message), in bytes.
    pub max_message_bytes: usize,
    /// RFC 3261 T1 (RTT estimate), T2 and T4, in milliseconds.
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    /// Most concurrent TCP connections accepted.
    pub max_tcp_connections: usize,
    /// Idle TCP connections are closed after this many seconds.
    pub tcp_idle_timeout_s: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()],
            routes: vec![RouteConfig::default()],
            max_message_bytes: 65_535,
            t1_ms: 500,
            t2_ms: 4_000,
            t4_ms: 5_000,
            max_tcp_connections: 4_096,
            tcp_idle_timeout_s: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Name used in metadata and retention rules; defaults to `routes[N]`.
    pub name: Option<String>,
    /// Regex on the Request-URI user part (anchored: it must match the whole user part).
    pub match_user: String,
    /// Upstreams in failover order: `udp:HOST:PORT` or `tcp:HOST:PORT`.
    pub upstream: Vec<String>,
    /// Overrides `consent.mode` for calls on this route.
    pub consent: Option<ConsentMode>,
    /// Overrides `consent.lawful_basis` (used when this route's mode is `not_required`).
    pub lawful_basis: Option<String>,
    /// IVR prompt language for this route (`en`, `es`, `pt`); else `consent.language`.
    pub language: Option<String>,
    /// Suppress the caller's DTMF toward the agent for the whole call (secure entry).
    pub secure_entry: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: None,
            match_user: ".*".into(),
            upstream: vec!["udp:127.0.0.1:5070".into()],
            consent: None,
            lawful_basis: None,
            language: None,
            secure_entry: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub bind: String,
    pub advertise: String,
    pub ports: String,
    /// A call whose media stops for this long is ended with BYE on both legs.
    pub inactivity_timeout_s: u64,
    /// The same while a leg has the call on hold (phones may send nothing at all).
    pub hold_timeout_s: u64,
    /// A released port pair is not reused for this long.
    pub quarantine_s: u64,
    /// Relay threads; 0 means one per CPU.
    pub shards: usize,
    /// After relaying, a shard polls without sleeping this many µs before it blocks again: lower
    /// added latency (no thread wake-up per packet) for CPU spent spinning. 0 = off.
    pub busy_poll_us: u64,
    /// Per leg and stream: sustained packets per second before packets are dropped as a flood.
    pub flood_pps: u32,
    /// Media protection toward each leg when an offer is forwarded to it: `same` (SRTP exactly
    /// when the offering leg used it), `plain` or `sdes`.
    pub srtp_to_caller: String,
    pub srtp_to_callee: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind: "127.0.0.1".into(),
            advertise: "127.0.0.1".into(),
            ports: "30000-39999".into(),
            inactivity_timeout_s: 60,
            hold_timeout_s: 3600,
            quarantine_s: 5,
            shards: 0,
            busy_poll_us: 0,
            flood_pps: 1000,
            srtp_to_caller: "same".into(),
            srtp_to_callee: "same".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMode {
    Ivr,
    Dtmf,
    Header,
    Api,
    NotRequired,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// How a call's recording gets permitted; routes may override it.
    pub mode: ConsentMode,
    /// GDPR art. 6 basis recorded for `not_required` calls: `legal_obligation`, `contract`,
    /// `vital_interests`, `public_task` or `legitimate_interests` (never `consent`).
    pub lawful_basis: String,
    /// Key that grants consent in `ivr` and `dtmf` modes.
    pub grant_digit: String,
    /// Key that declines.
    pub decline_digit: String,
    /// Keys that revoke consent at any time during the call (caller's keypad), e.g. `*9`.
    pub revoke_sequence: String,
    /// `dtmf` mode: seconds from the answer during which the caller's keys count as a decision.
    pub window_s: u64,
    /// Header a trusted PBX sets to `granted`, `declined` or `revoked` (any mode).
    pub header: String,
    /// Delete what was recorded for a call when its consent is revoked.
    pub purge_on_revoke: bool,
    /// `ivr`: directory of prompt WAVs named `LANG.wav` (8 kHz mono PCM16; scripts/make-prompts).
    pub prompt_dir: PathBuf,
    /// `ivr`: default prompt language.
    pub language: String,
    /// `ivr`: seconds to wait for a key after each prompt.
    pub ivr_timeout_s: u64,
    /// `ivr`: times the prompt is repeated when no key comes.
    pub ivr_reprompts: u32,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            mode: ConsentMode::Ivr,
            lawful_basis: "legal_obligation".into(),
            grant_digit: "1".into(),
            decline_digit: "2".into(),
            revoke_sequence: "*9".into(),
            window_s: 30,
            header: "X-Recording-Consent".into(),
            purge_on_revoke: true,
            prompt_dir: PathBuf::from("var/prompts"),
            language: "en".into(),
            ivr_timeout_s: 8,
            ivr_reprompts: 1,
        }
    }
}

impl ConsentConfig {
    /// Checks keys and ranges; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |s: &str| s.len() == 1 && s.chars().all(|c| c.is_ascii_digit() || "*#ABCD".contains(c));
        if !key(&self.grant_digit) {
            return Err(ConfigError::new("consent.grant_digit", "must be one key: 0-9, *, #, A-D"));
        }
        if !key(&self.decline_digit) || self.decline_digit == self.grant_digit {
            return Err(ConfigError::new(
                "consent.decline_digit",
                "must be one key (0-9, *, #, A-D) other than consent.grant_digit",
            ));
        }
        let seq = &self.revoke_sequence;
        if seq.is_empty()
            || seq.len() > 8
            || !seq.chars().all(|c| c.is_ascii_digit() || "*#ABCD".contains(c))
            || seq == &self.grant_digit
        {
            return Err(ConfigError::new(
                "consent.revoke_sequence",
                "must be 1 to 8 keys (0-9, *, #, A-D), not just the grant key",
            ));
        }
        if !(1..=3_600).contains(&self.window_s) {
            return Err(ConfigError::new("consent.window_s", "must be between 1 and 3600"));
        }
        let h = &self.header;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b)) {
            return Err(ConfigError::new("consent.header", "must be a SIP header name (token characters)"));
        }
        if !(1..=120).contains(&self.ivr_timeout_s) {
            return Err(ConfigError::new("consent.ivr_timeout_s", "must be between 1 and 120"));
        }
        if self.ivr_reprompts > 10 {
            return Err(ConfigError::new("consent.ivr_reprompts", "must be at most 10"));
        }
        Ok(())
    }
}

/// Lawful bases other than consent that `consent.lawful_basis` may name.
pub const NON_CONSENT_BASES: [&str; 5] =
    ["legal_obligation", "contract", "vital_interests", "public_task", "legitimate_interests"];

/// Prompt languages callveil ships prompts for.
pub const PROMPT_LANGUAGES: [&str; 3] = ["en", "es", "pt"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    pub enabled: bool,
    /// Tap frames queued between the relay and the recording path (20 ms each); when full the
    /// tap drops and marks a gap, which the recording path mutes.
    pub tap_queue: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig { enabled: true, tap_queue: 8192 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { dir: PathBuf::from("var/callveil") }
    }
}

/// The encrypted recording vault (under `storage.dir`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Key file with the pepper and key-encryption keys (`CALLVEIL_VAULT_KEYS` overrides it).
    pub key_file: PathBuf,
    /// Create the key file with fresh keys when it is missing (demo); keep false in production,
    /// where a missing key file must stop the service rather than start a new, unrelated vault.
    pub create_keys: bool,
    /// Audio is sealed in chunks of this many milliseconds: what a crash can lose.
    pub chunk_ms: u32,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig { key_file: PathBuf::from("var/callveil/vault.keys"), create_keys: false, chunk_ms: 2_000 }
    }
}

/// Retention classes and the rules that pick one (first match wins; else `default_class`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub default_class: String,
    /// Accept the class a trusted PBX names in `X-Retention-Class`.
    pub trust_header: bool,
    pub classes: Vec<RetentionClassConfig>,
    pub rules: Vec<RetentionRuleConfig>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default_class: "standard".into(),
            trust_header: true,
            classes: vec![RetentionClassConfig { name: "standard".into(), days: 90 }],
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionClassConfig {
    pub name: String,
    pub days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    /// Regex on the route name (whole-match).
    pub route: Option<String>,
    /// `consent` or the name of a configured non-consent lawful basis.
    pub basis: Option<String>,
    pub class: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus `/metrics` endpoint; empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

/// `[redaction]`: transcription and redaction of the recording path (and `callveil redact`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Any whisper.cpp ggml model file (scripts/provision-model builds the default).
    pub model: PathBuf,
    /// Number words and keywords: `en`, `es` or `pt` (es/pt need a multilingual model).
    pub language: crate::redact::normalize::Lang,
    /// Transcription workers; 0 = one per core but one, which is left for the media relay.
    pub workers: usize,
    /// Padding on both sides of every redaction, in ms (ASR word times are inexact).
    pub pad_ms: u64,
    /// Padding before a detected number when larger than `pad_ms` (its first digit is the one
    /// ASR most often mishears or times late).
    pub lead_pad_ms: u64,
    /// Fail-safe: digit runs at least this long are redacted even when no check digit matches.
    pub min_digits: usize,
    /// After card data (number, code, expiry), this many ms in which any number of two or more
    /// digits is redacted: the rest of the card data follows, and its keywords are what ASR
    /// garbles. 0 turns it off.
    pub payment_context_ms: u64,
    /// `silence` or `tone` (1 kHz) over redacted audio.
    pub mask: crate::redact::mask::MaskStyle,
    /// Most audio held in RAM per channel before the oldest is released muted (unverified).
    pub hold_seconds: u64,
    /// A window not transcribed within this many ms of closing is released muted (unverified).
    pub deadline_ms: u64,
    /// Detectors that run: pan, cvv, expiry, national_id, iban, ssn, digits.
    pub detectors: Vec<String>,
    /// Cap on tokens Whisper may produce per window.
    pub max_tokens: usize,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            model: PathBuf::from("models/ggml-tiny.en.bin"),
            language: crate::redact::normalize::Lang::En,
            workers: 0,
            pad_ms: 500,
            lead_pad_ms: 1_000,
            min_digits: 9,
            payment_context_ms: 15_000,
            mask: crate::redact::mask::MaskStyle::Silence,
            hold_seconds: 60,
            deadline_ms: 20_000,
            detectors: ["pan", "cvv", "expiry", "national_id", "iban", "ssn", "digits"].map(String::from).to_vec(),
            max_tokens: 128,
        }
    }
}

impl RedactionConfig {
    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pad_ms > 5_000 {
            return Err(ConfigError::new("redaction.pad_ms", "must be at most 5000"));
        }
        if !(4..=19).contains(&self.min_digits) {
            return Err(ConfigError::new("redaction.min_digits", "must be between 4 and 19"));
        }
        // A window is up to 12 s long; the hold must fit two of them plus padding.
        if self.lead_pad_ms > 5_000 {
            return Err(ConfigError::new("redaction.lead_pad_ms", "must be at most 5000"));
        }
        if self.payment_context_ms > 120_000 {
            return Err(ConfigError::new("redaction.payment_context_ms", "must be at most 120000"));
        }
        if !(30..=3_600).contains(&self.hold_seconds) {
            return Err(ConfigError::new("redaction.hold_seconds", "must be between 30 and 3600"));
        }
        if !(1_000..=600_000).contains(&self.deadline_ms) {
            return Err(ConfigError::new("redaction.deadline_ms", "must be between 1000 and 600000"));
        }
        if self.workers > 256 {
            return Err(ConfigError::new("redaction.workers", "must be at most 256"));
        }
        if !(8..=448).contains(&self.max_tokens) {
            return Err(ConfigError::new("redaction.max_tokens", "must be between 8 and 448"));
        }
        crate::redact::detect::Detectors::from_names(&self.detectors)
            .map_err(|e| ConfigError::new("redaction.detectors", e))?;
        Ok(())
    }
}

/// Transport of a SIP listener or upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// `udp:HOST:PORT` / `tcp:HOST:PORT`, resolved to a socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (t, rest) =
            s.split_once(':').ok_or_else(|| format!("`{s}` is not TRANSPORT:HOST:PORT (e.g. udp:127.0.0.1:5060)"))?;
        let transport = match t.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            other => return Err(format!("unknown transport `{other}` (expected udp or tcp)")),
        };
        let addr: SocketAddr =
            rest.parse().map_err(|_| format!("`{rest}` is not an IP:PORT address (IPv6 as [::1]:5060)"))?;
        Ok(Endpoint { transport, addr })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str().to_ascii_lowercase(), self.addr)
    }
}

/// An inclusive even..odd port range for RTP/RTCP pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("`{s}` is not FIRST-LAST"))?;
        let first: u16 = a.trim().parse().map_err(|_| format!("`{a}` is not a port number"))?;
        let last: u16 = b.trim().parse().map_err(|_| format!("`{b}` is not a port number"))?;
        if first < 1024 {
            return Err(format!("first port {first} is below 1024"));
        }
        if last <= first {
            return Err(format!("last port {last} must be above first port {first}"));
        }
        if last - first < 1 {
            return Err("range must hold at least one RTP/RTCP pair".into());
        }
        Ok(PortRange { first, last })
    }
}

/// A route with its regex compiled, upstreams parsed and consent settings resolved.
#[derive(Debug, Clone)]
pub struct Route {
    /// `name` from the config, else `routes[N]`.
    pub name: String,
    pub match_user: regex::Regex,
    pub upstreams: Vec<Endpoint>,
    /// `consent` of the route, else `consent.mode`.
    pub consent: ConsentMode,
    /// `lawful_basis` of the route, else `consent.lawful_basis`.
    pub lawful_basis: String,
    /// `language` of the route, else `consent.language`.
    pub language: String,
    pub secure_entry: bool,
}

/// The validated form of [`Config`]: what the program runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub sip_listen: Vec<Endpoint>,
    pub routes: Vec<Route>,
    pub media_bind: std::net::IpAddr,
    pub media_advertise: std::net::IpAddr,
    pub media_ports: PortRange,
    pub metrics_listen: Option<SocketAddr>,
}

impl Settings {
    /// Loads the file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("(file)", format!("cannot read {}: {e}", path.display())))?;
        Settings::from_toml(&text)
    }

    /// The compiled-in demo defaults.
    pub fn embedded() -> Settings {
        Settings::from_toml(EMBEDDED_DEFAULTS).expect("embedded config/callveil.toml is valid")
    }

    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error("(syntax)", e))?;
        let raw: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_string() } else { key };
            toml_error(&key, e.into_inner())
        })?;
        Settings::validate(raw)
    }

    pub fn validate(raw: Config) -> Result<Settings, ConfigError> {
        if raw.sip.listen.is_empty() {
            return Err(ConfigError::new("sip.listen", "at least one listener is required"));
        }
        let mut sip_listen = Vec::new();
        for (i, l) in raw.sip.listen.iter().enumerate() {
            let ep: Endpoint = l.parse().map_err(|p| ConfigError::new(format!("sip.listen[{i}]"), p))?;
            if ep.addr.port() == 0 && sip_listen.iter().any(|e: &Endpoint| e.transport == ep.transport) {
                return Err(ConfigError::new(format!("sip.listen[{i}]"), "port 0 may be used once per transport"));
            }
            sip_listen.push(ep);
        }
        if raw.sip.routes.is_empty() {
            return Err(ConfigError::new("sip.routes", "at least one route is required"));
        }
        let mut routes = Vec::new();
        for (i, r) in raw.sip.routes.iter().enumerate() {
            let re = regex::Regex::new(&format!("^(?:{})$", r.match_user))
                .map_err(|e| ConfigError::new(format!("sip.routes[{i}].match_user"), format!("invalid regex: {e}")))?;
            if r.upstream.is_empty() {
                return Err(ConfigError::new(format!("sip.routes[{i}].upstream"), "at least one upstream is required"));
            }
            let mut ups = Vec::new();
            for (j, u) in r.upstream.iter().enumerate() {
                let ep: Endpoint =
                    u.parse().map_err(|p| ConfigError::new(format!("sip.routes[{i}].upstream[{j}]"), p))?;
                if ep.addr.port() == 0 || ep.addr.ip().is_unspecified() {
                    return Err(ConfigError::new(
                        format!("sip.routes[{i}].upstream[{j}]"),
                        "an upstream needs a concrete address and port",
                    ));
                }
                ups.push(ep);
            }
            let lawful_basis = r.lawful_basis.clone().unwrap_or_else(|| raw.consent.lawful_basis.clone());
            if !NON_CONSENT_BASES.contains(&lawful_basis.as_str()) {
                let key = if r.lawful_basis.is_some() {
                    format!("sip.routes[{i}].lawful_basis")
                } else {
                    "consent.lawful_basis".to_string()
                };
                return Err(ConfigError::new(
                    key,
                    format!("`{lawful_basis}` is not one of {}", NON_CONSENT_BASES.join(", ")),
                ));
            }
            let language = r.language.clone().unwrap_or_else(|| raw.consent.language.clone());
            if !PROMPT_LANGUAGES.contains(&language.as_str()) {
                let key =
                    if r.language.is_some() { format!("sip.routes[{i}].language") } else { "consent.language".into() };
                return Err(ConfigError::new(
                    key,
                    format!("`{language}` is not one of {}", PROMPT_LANGUAGES.join(", ")),
                ));
            }
            routes.push(Route {
                name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                match_user: re,
                upstreams: ups,
                consent: r.consent.unwrap_or(raw.consent.mode),
                lawful_basis,
                language,
                secure_entry: r.secure_entry,
            });
        }
        if !(512..=1_048_576).contains(&raw.sip.max_message_bytes) {
            return Err(ConfigError::new("sip.max_message_bytes", "must be between 512 and 1048576"));
        }
        if raw.sip.t1_ms == 0 || raw.sip.t1_ms > 60_000 {
            return Err(ConfigError::new("sip.t1_ms", "must be between 1 and 60000"));
        }
        if raw.sip.t2_ms < raw.sip.t1_ms {
            return Err(ConfigError::new("sip.t2_ms", "must not be below sip.t1_ms"));
        }
        if raw.sip.t4_ms == 0 {
            return Err(ConfigError::new("sip.t4_ms", "must be above 0"));
        }
        if raw.sip.max_tcp_connections == 0 {
            return Err(ConfigError::new("sip.max_tcp_connections", "must be above 0"));
        }
        let media_bind = raw
            .media
            .bind
            .parse()
            .map_err(|_| ConfigError::new("media.bind", format!("`{}` is not an IP address", raw.media.bind)))?;
        let media_advertise = raw.media.advertise.parse().map_err(|_| {
            ConfigError::new("media.advertise", format!("`{}` is not an IP address", raw.media.advertise))
        })?;
        let media_ports = raw.media.ports.parse().map_err(|p| ConfigError::new("media.ports", p))?;
        if raw.media.inactivity_timeout_s == 0 {
            return Err(ConfigError::new("media.inactivity_timeout_s", "must be at least 1"));
        }
        if raw.media.hold_timeout_s < raw.media.inactivity_timeout_s {
            return Err(ConfigError::new("media.hold_timeout_s", "must not be below media.inactivity_timeout_s"));
        }
        if raw.media.flood_pps < 50 {
            return Err(ConfigError::new("media.flood_pps", "must be at least 50 (one G.711 stream)"));
        }
        for (key, v) in
            [("media.srtp_to_caller", &raw.media.srtp_to_caller), ("media.srtp_to_callee", &raw.media.srtp_to_callee)]
        {
            if !["same", "plain", "sdes"].contains(&v.as_str()) {
                return Err(ConfigError::new(key, format!("`{v}` is not one of same, plain, sdes")));
            }
        }
        if raw.media.shards > 256 {
            return Err(ConfigError::new("media.shards", "at most 256"));
        }
        if raw.media.busy_poll_us > 10_000 {
            return Err(ConfigError::new("media.busy_poll_us", "at most 10000"));
        }
        let metrics_listen = if raw.metrics.listen.is_empty() {
            None
        } else {
            Some(raw.metrics.listen.parse().map_err(|_| {
                ConfigError::new("metrics.listen", format!("`{}` is not an IP:PORT address", raw.metrics.listen))
            })?)
        };
        raw.redaction.validate()?;
        raw.consent.validate()?;
        if !(64..=1_000_000).contains(&raw.recording.tap_queue) {
            return Err(ConfigError::new("recording.tap_queue", "must be between 64 and 1000000"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            return Err(ConfigError::new("log.level", format!("invalid filter: {e}")));
        }
        if !(100..=60_000).contains(&raw.vault.chunk_ms) {
            return Err(ConfigError::new("vault.chunk_ms", "must be between 100 and 60000"));
        }
        crate::vault::retention::RetentionPolicy::from_config(&raw.retention)?;
        Ok(Settings { raw, sip_listen, routes, media_bind, media_advertise, media_ports, metrics_listen })
    }
}

fn toml_error(key: &str, e: toml::de::Error) -> ConfigError {
    // toml's message is multi-line with a source excerpt; keep its first line, which says what
    // was wrong, and the line/column so the operator can find it.
    let msg = e.message().lines().next().unwrap_or("invalid value").to_string();
    let key = if key == "(syntax)" || key == "(top level)" {
        e.span().map(|s| format!("{key} at byte {}", s.start)).unwrap_or_else(|| key.to_string())
    } else {
        key.to_string()
    };
    ConfigError::new(key, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let s = Settings::embedded();
        assert!(!s.sip_listen.is_empty());
        assert!(!s.routes.is_empty());
    }

    #[test]
    fn bench_config_is_valid() {
        let s = Settings::from_toml(include_str!("../../config/bench.toml")).unwrap();
        assert!(!s.raw.recording.enabled);
        assert_eq!(s.raw.consent.mode, ConsentMode::NotRequired);
    }

    fn err(text: &str) -> ConfigError {
        Settings::from_toml(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("[sip]\nlisten = [\"udp:nowhere\"]\n");
        assert_eq!(e.key, "sip.listen[0]", "{e}");
        let e = err("[[sip.routes]]\nmatch_user = \"(\"\nupstream=[\"udp:127.0.0.1:5070\"]\n");
        assert_eq!(e.key, "sip.routes[0].match_user", "{e}");
        let e = err("[[sip.routes]]\nmatch_user = \".*\"\nupstream=[\"udp:127.0.0.1:5070\", \"sctp:1.2.3.4:5\"]\n");
        assert_eq!(e.key, "sip.routes[0].upstream[1]", "{e}");
        let e = err("[media]\nports = \"40000-30000\"\n");
        assert_eq!(e.key, "media.ports", "{e}");
        assert_eq!(err("[media]\ninactivity_timeout_s = 0\n").key, "media.inactivity_timeout_s");
        assert_eq!(err("[media]\nflood_pps = 10\n").key, "media.flood_pps");
        assert_eq!(err("[media]\nsrtp_to_callee = \"maybe\"\n").key, "media.srtp_to_callee");
        let e = err("[consent]\nmode = \"maybe\"\n");
        assert_eq!(e.key, "consent.mode", "{e}");
        assert!(e.problem.contains("maybe"), "{e}");
        let e = err("[sip]\nlisen = []\n");
        assert!(e.key.starts_with("sip"), "{e}");
        assert!(e.problem.contains("lisen"), "{e}");
        let e = err("[sip]\nt1_ms = \"fast\"\n");
        assert_eq!(e.key, "sip.t1_ms", "{e}");
        let e = err("[metrics]\nlisten = \"here\"\n");
        assert_eq!(e.key, "metrics.listen", "{e}");
        let e = err("[redaction]\nmin_digits = 2\n");
        assert_eq!(e.key, "redaction.min_digits", "{e}");
        let e = err("[redaction]\ndetectors = [\"pan\", \"dna\"]\n");
        assert_eq!(e.key, "redaction.detectors", "{e}");
        let e = err("[redaction]\nlanguage = \"fr\"\n");
        assert_eq!(e.key, "redaction.language", "{e}");
        let e = err("[sip\n");
        assert!(e.key.starts_with("(syntax)"), "{e}");
    }

    #[test]
    fn endpoints_parse_ipv6() {
        let e: Endpoint = "tcp:[::1]:5070".parse().unwrap();
        assert_eq!(e.transport, Transport::Tcp);
        assert!(e.addr.is_ipv6());
    }
}
