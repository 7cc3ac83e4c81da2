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
            "Requests and responses retransmitted by callveil",
            self.retransmissions_sent.clone(),
        );
        r.register("failovers", "Initial requests moved to the next upstream", self.failovers.clone());
        r.register("calls", "INVITE dialogs ended, by outcome", self.calls.clone());
        r.register("dialogs_active", "INVITE dialogs early or confirmed", self.dialogs_active.clone());
        r.register("tcp_connections", "Open SIP TCP connections", self.tcp_connections.clone());
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

/// All of callveil's metrics and the registry that exposes them.
pub struct Metrics {
    pub registry: Registry,
    pub sip: SipMetrics,
    pub redact: RedactMetrics,
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
        let redact = RedactMetrics::default();
        redact.register(&mut registry);
        Metrics { registry, sip, redact }
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
