//! Metric families: one [`Metrics`] is built in `main`/`app` around one registry and passed down.
//!
//! Components hold cheap clones of the families they update (prometheus-client metrics are
//! `Arc`-backed atomics), so updating a metric never takes a lock shared with another component.
//! No labels ever carry personal data: only methods, status classes, kinds and outcomes.
//! Serving `/metrics` over HTTP is the job of `net::metrics_http`, not of this module.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Request method; unknown methods are folded into `OTHER` so a hostile peer cannot grow the
    /// label set without bound.
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// `1xx` .. `6xx`.
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CallOutcome {
    Answered,
    Cancelled,
    Rejected,
    TimedOut,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: CallOutcome,
}

/// SIP signaling metrics.
#[derive(Clone, Debug, Default)]
pub struct SipMetrics {
    pub requests: Family<MethodLabels, Counter>,
    pub responses: Family<ClassLabels, Counter>,
    pub transactions_in_flight: Gauge,
    pub parse_errors: Family<KindLabels, Counter>,
    pub dropped: Family<KindLabels, Counter>,
    pub retransmissions_absorbed: Counter,
    pub retransmissions_sent: Counter,
    pub failovers: Counter,
    pub calls: Family<OutcomeLabels, Counter>,
    pub dialogs_active: Gauge,
    pub tcp_connections: Gauge,
}

impl SipMetrics {
    pub fn request(&self, method: &str) {
        const KNOWN: &[&str] = &[
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "INFO",
            "UPDATE",
            "PRACK",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "MESSAGE",
            "PUBLISH",
        ];
        let method = if KNOWN.contains(&method) { method } else { "OTHER" };
        self.requests.get_or_create(&MethodLabels { method: method.to_string() }).inc();
    }

    pub fn response(&self, code: u16) {
        let class = match code / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "6xx",
        };
        self.responses.get_or_create(&ClassLabels { class: class.to_string() }).inc();
    }

    pub fn parse_error(&self, kind: &'static str) {
        self.parse_errors.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }

    pub fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&KindLabels { kind: reason.to_string() }).inc();
    }

    pub fn call(&self, outcome: CallOutcome) {
        self.calls.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Exports zero for the common series from startup, so `rate()` and absence alerts work
    /// before the first call instead of seeing a missing series.
    fn prime(&self) {
        for method in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"] {
            let _ = self.requests.get_or_create(&MethodLabels { method: method.to_string() });
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"] {
            let _ = self.responses.get_or_create(&ClassLabels { class: class.to_string() });
        }
        for outcome in [CallOutcome::Answered, CallOutcome::Cancelled, CallOutcome::Rejected, CallOutcome::TimedOut] {
            let _ = self.calls.get_or_create(&OutcomeLabels { outcome });
        }
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("sip");
        r.register("requests", "SIP requests received, by method", self.requests.clone());
        r.register("responses", "SIP responses received, by status class", self.responses.clone());
        r.register(
            "transactions_in_flight",
            "SIP transactions not yet terminated",
            self.transactions_in_flight.clone(),
        );
        r.register("parse_errors", "SIP messages that failed to parse, by kind", self.parse_errors.clone());
        r.register("dropped", "SIP messages dropped without an answer, by reason", self.dropped.clone());
        r.register(
            "retransmissions_absorbed",
            "Retransmitted requests and responses absorbed by a transaction",
            self.retransmissions_absorbed.clone(),
        );
        r.register(
            "retransmissions_sent",
            "Requests, responses and ACKs re-sent by callveil's transactions (counted when the transaction ends)",
            self.retransmissions_sent.clone(),
        );
        r.register("failovers", "Initial requests moved to the next upstream", self.failovers.clone());
        r.register("calls", "INVITE dialogs ended, by outcome", self.calls.clone());
        r.register("dialogs_active", "INVITE dialogs early or confirmed", self.dialogs_active.clone());
        r.register("tcp_connections", "Open SIP TCP connections", self.tcp_connections.clone());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `caller_to_callee` or `callee_to_caller`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Media relay metrics. The relay shards count locally and add their counts here about once a
/// second, so the packet path touches no shared cache line.
#[derive(Clone, Debug)]
pub struct MediaMetrics {
    pub packets: Family<DirectionLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub sessions_active: Gauge,
    pub ports_in_use: Gauge,
    pub ports_quarantined: Gauge,
    pub tap_dropped: Counter,
    pub tap_frames: Counter,
    pub inactivity_timeouts: Counter,
    pub bind_failures: Counter,
    /// Per stream and leg at the end of a stream: fraction of expected packets lost.
    pub loss_ratio: Histogram,
    /// Per stream and leg at the end of a stream: RFC 3550 interarrival jitter in milliseconds.
    pub jitter_ms: Histogram,
    /// RTP packets of callveil's own prompts (IVR) sent toward a leg.
    pub played_packets: Counter,
    /// Caller telephone-event packets not forwarded to the callee (secure entry).
    pub dtmf_events_suppressed: Counter,
    /// Milliseconds of caller audio replaced by silence toward the callee (secure entry).
    pub tone_suppressed_ms: Counter,
    /// Offers whose transaction failed (re-INVITE/UPDATE answered 4xx-6xx or timed out): the
    /// call's media went back to what it was before the offer.
    pub offers_rolled_back: Counter,
}

impl Default for MediaMetrics {
    fn default() -> Self {
        MediaMetrics {
            packets: Family::default(),
            bytes: Family::default(),
            dropped: Family::default(),
            sessions_active: Gauge::default(),
            ports_in_use: Gauge::default(),
            ports_quarantined: Gauge::default(),
            tap_dropped: Counter::default(),
            tap_frames: Counter::default(),
            inactivity_timeouts: Counter::default(),
            bind_failures: Counter::default(),
            loss_ratio: Histogram::new([0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            jitter_ms: Histogram::new([1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]),
            played_packets: Counter::default(),
            dtmf_events_suppressed: Counter::default(),
            tone_suppressed_ms: Counter::default(),
            offers_rolled_back: Counter::default(),
        }
    }
}

impl MediaMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("media");
        r.register("packets", "RTP/RTCP packets relayed, by direction", self.packets.clone());
        r.register("bytes", "RTP/RTCP bytes relayed, by direction", self.bytes.clone());
        r.register("dropped", "Media packets dropped, by reason", self.dropped.clone());
        r.register("sessions_active", "Anchored media streams", self.sessions_active.clone());
        r.register("ports_in_use", "RTP/RTCP port pairs held by calls", self.ports_in_use.clone());
        r.register("ports_quarantined", "Port pairs waiting out quarantine", self.ports_quarantined.clone());
        r.register("tap_dropped", "Tap frames dropped because the recording path was behind", self.tap_dropped.clone());
        r.register("tap_frames", "Tap frames handed to the recording path", self.tap_frames.clone());
        r.register("inactivity_timeouts", "Calls ended for lack of media", self.inactivity_timeouts.clone());
        r.register("bind_failures", "Port pairs that could not be bound", self.bind_failures.clone());
        r.register("loss_ratio", "Per-leg packet loss at stream end", self.loss_ratio.clone());
        r.register("jitter_ms", "Per-leg interarrival jitter at stream end", self.jitter_ms.clone());
        r.register("played_packets", "Prompt packets callveil sent toward a leg", self.played_packets.clone());
        r.register(
            "dtmf_events_suppressed",
            "Caller telephone-event packets kept from the callee (secure entry)",
            self.dtmf_events_suppressed.clone(),
        );
        r.register(
            "tone_suppressed_ms",
            "Caller audio replaced by silence toward the callee (secure entry)",
            self.tone_suppressed_ms.clone(),
        );
        r.register(
            "offers_rolled_back",
            "Offers whose re-INVITE or UPDATE failed; the media went back to its state before them",
            self.offers_rolled_back.clone(),
        );
    }

    fn prime(&self) {
        for direction in ["caller_to_callee", "callee_to_caller"] {
            let _ = self.packets.get_or_create(&DirectionLabels { direction });
            let _ = self.bytes.get_or_create(&DirectionLabels { direction });
        }
    }
}

/// Recording vault metrics. Labels are states, reasons and error kinds only.
#[derive(Clone, Debug, Default)]
pub struct VaultMetrics {
    pub recordings_opened: Counter,
    pub recordings_open: Gauge,
    /// By final state: complete, truncated, revoked.
    pub recordings_closed: Family<KindLabels, Counter>,
    pub recordings_recovered: Counter,
    pub chunks_sealed: Counter,
    pub bytes_sealed: Counter,
    /// Sink calls refused or failed: unknown_recording, bad_input, storage.
    pub sink_errors: Family<KindLabels, Counter>,
    /// By reason: erasure_request, subject_request, retention, revoked.
    pub erasures: Family<KindLabels, Counter>,
}

impl VaultMetrics {
    pub fn closed(&self, state: &str) {
        self.recordings_closed.get_or_create(&KindLabels { kind: state.to_string() }).inc();
    }

    pub fn sink_error(&self, kind: &'static str) {
        self.sink_errors.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }

    pub fn erased(&self, reason: &str) {
        self.erasures.get_or_create(&KindLabels { kind: reason.to_string() }).inc();
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("vault");
        r.register("recordings_opened", "Recordings opened in the vault", self.recordings_opened.clone());
        r.register("recordings_open", "Recordings currently being written", self.recordings_open.clone());
        r.register("recordings_closed", "Recordings closed, by final state", self.recordings_closed.clone());
        r.register(
            "recordings_recovered",
            "Recordings left open by a crash and finalised as truncated at start-up",
            self.recordings_recovered.clone(),
        );
        r.register("chunks_sealed", "Encrypted chunks written to the blob store", self.chunks_sealed.clone());
        r.register("bytes_sealed", "Plaintext bytes sealed into chunks", self.bytes_sealed.clone());
        r.register("sink_errors", "Recording sink calls refused or failed, by kind", self.sink_errors.clone());
        r.register("erasures", "Recordings erased, by reason", self.erasures.clone());
    }
}

/// Recording-path metrics (transcription and redaction, issue 5). Labels are kinds only.
#[derive(Clone, Debug, Default)]
pub struct RedactMetrics {
    /// Seconds from a window's close to its transcript, last observed.
    pub transcription_lag_ms: Gauge,
    /// Worker time / audio time of the last window, in thousandths (250 = RTF 0.25).
    pub real_time_factor_milli: Gauge,
    /// Windows waiting for a transcription worker.
    pub queue_depth: Gauge,
    pub redactions: Family<KindLabels, Counter>,
    pub unverified_ms: Counter,
    pub windows: Counter,
}

impl RedactMetrics {
    pub fn redaction(&self, kind: &'static str, n: u64) {
        self.redactions.get_or_create(&KindLabels { kind: kind.to_string() }).inc_by(n);
    }

    /// One transcribed window: its audio length, the worker's time on it and the lag.
    pub fn window(&self, audio_ms: u64, took_ms: u64, lag_ms: u64) {
        self.windows.inc();
        self.transcription_lag_ms.set(lag_ms as i64);
        self.real_time_factor_milli.set((took_ms * 1000 / audio_ms.max(1)) as i64);
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("redact");
        r.register(
            "transcription_lag_ms",
            "Time from a window's close to its transcript",
            self.transcription_lag_ms.clone(),
        );
        r.register(
            "real_time_factor_milli",
            "Transcription worker time per audio time of the last window, x1000",
            self.real_time_factor_milli.clone(),
        );
        r.register("queue_depth", "Windows waiting for a transcription worker", self.queue_depth.clone());
        r.register("redactions", "Spans redacted, by kind", self.redactions.clone());
        r.register("unverified_ms", "Audio muted because it could not be cleared in time", self.unverified_ms.clone());
        r.register("windows", "Windows transcribed", self.windows.clone());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `ivr`, `dtmf`, `header`, `api`, `not_required`.
    pub method: String,
    /// `granted`, `declined`, `revoked`, `no_answer`.
    pub decision: String,
}

/// Live recording path metrics (tap -> consent -> redaction -> vault). Labels are methods,
/// decisions and reasons only.
#[derive(Clone, Debug, Default)]
pub struct RecordingMetrics {
    /// Calls whose recording is open now.
    pub sessions_active: Gauge,
    /// Calls the recording path follows (recording or not).
    pub calls_active: Gauge,
    pub consent_decisions: Family<DecisionLabels, Counter>,
    /// Consent signals (PBX header, API) that did not apply: wrong source for the route's mode,
    /// nothing to revoke, a grant after a decision (`consent::Gate::ignored`).
    pub consent_signals_ignored: Counter,
    /// Tap frames discarded before recording was permitted (used for DTMF only, never kept).
    pub frames_dropped_pre_consent: Counter,
    pub recordings_opened: Counter,
    /// By reason: completed, revoked, purged, truncated.
    pub recordings_closed: Family<KindLabels, Counter>,
    /// Windows released muted because no transcriber is available (model missing).
    pub windows_without_transcriber: Counter,
    /// Sink and ledger calls that failed, by kind.
    pub sink_errors: Family<KindLabels, Counter>,
    /// Inputs refused (unknown call, bad telephone-event payload, frame refused by the pipeline).
    pub rejected: Family<KindLabels, Counter>,
}

impl RecordingMetrics {
    pub fn decision(&self, method: &str, decision: &str) {
        self.consent_decisions
            .get_or_create(&DecisionLabels { method: method.to_string(), decision: decision.to_string() })
            .inc();
    }

    pub fn closed(&self, reason: &str) {
        self.recordings_closed.get_or_create(&KindLabels { kind: reason.to_string() }).inc();
    }

    pub fn sink_error(&self, kind: &str) {
        self.sink_errors.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }

    pub fn rejected(&self, kind: &str) {
        self.rejected.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("recording");
        r.register("sessions_active", "Recordings open now", self.sessions_active.clone());
        r.register("calls_active", "Calls followed by the recording path", self.calls_active.clone());
        r.register("consent_decisions", "Consent decisions, by method and decision", self.consent_decisions.clone());
        r.register(
            "consent_signals_ignored",
            "Consent signals that did not apply (wrong source for the mode, nothing to revoke, already decided)",
            self.consent_signals_ignored.clone(),
        );
        r.register(
            "frames_dropped_pre_consent",
            "Tap frames discarded before recording was permitted (DTMF detection only)",
            self.frames_dropped_pre_consent.clone(),
        );
        r.register("recordings_opened", "Recordings opened by the live path", self.recordings_opened.clone());
        r.register(
            "recordings_closed",
            "Recordings closed by the live path, by reason",
            self.recordings_closed.clone(),
        );
        r.register(
            "windows_without_transcriber",
            "Windows released muted because no transcriber was available",
            self.windows_without_transcriber.clone(),
        );
        r.register("sink_errors", "Sink or ledger calls that failed, by kind", self.sink_errors.clone());
        r.register("rejected", "Recording path inputs refused, by kind", self.rejected.clone());
    }
}

/// All of callveil's metrics and the registry that exposes them.
pub struct Metrics {
    pub registry: Registry,
    pub sip: SipMetrics,
    pub media: MediaMetrics,
    pub vault: VaultMetrics,
    pub redact: RedactMetrics,
    pub recording: RecordingMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("callveil");
        let sip = SipMetrics::default();
        sip.register(&mut registry);
        sip.prime();
        let media = MediaMetrics::default();
        media.register(&mut registry);
        media.prime();
        let vault = VaultMetrics::default();
        vault.register(&mut registry);
        let redact = RedactMetrics::default();
        redact.register(&mut registry);
        let recording = RecordingMetrics::default();
        recording.register(&mut registry);
        Metrics { registry, sip, media, vault, redact, recording }
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_fold_into_other() {
        let m = Metrics::new();
        m.sip.request("INVITE");
        m.sip.request("XYZZY");
        m.sip.response(486);
        m.sip.call(CallOutcome::Answered);
        let text = m.encode();
        assert!(text.contains("callveil_sip_requests_total{method=\"INVITE\"} 1"), "{text}");
        assert!(text.contains("callveil_sip_requests_total{method=\"OTHER\"} 1"), "{text}");
        assert!(text.contains("callveil_sip_responses_total{class=\"4xx\"} 1"), "{text}");
        assert!(text.contains("callveil_sip_calls_total{outcome=\"Answered\"} 1"), "{text}");
        assert!(!text.contains("XYZZY"));
        m.redact.redaction("pan", 2);
        m.redact.window(4_000, 600, 900);
        let text = m.encode();
        assert!(text.contains("callveil_redact_redactions_total{kind=\"pan\"} 2"), "{text}");
        assert!(text.contains("callveil_redact_real_time_factor_milli 150"), "{text}");
    }
}
