//! The contract between the recording path and storage: what may be stored, and in what shape.
//!
//! Only redaction produces [`ClearedAudio`] (its constructor is crate-private and is called by the
//! redactor's masker alone), so storage can accept nothing that has not been cleared or muted:
//! DESIGN.md invariant 2 expressed in types. Transcript text is redacted text, but it can still
//! hold names and other personal data, so it travels as [`Pii`]. This module defines types and
//! the trait only; it does not encrypt, write files, or decide retention.

use std::fmt;
use std::time::SystemTime;

use crate::pii::Pii;

/// Opaque, unguessable recording identifier (printable; no personal data in it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordingId(pub String);

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    Caller,
    Agent,
}

/// Why recording is allowed for this call (GDPR art. 6): consent, or a configured other basis
/// recorded as such, never as consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LawfulBasis {
    /// The caller consented; `ledger_ref` points at the consent ledger record.
    Consent { ledger_ref: String },
    /// A non-consent basis named in config (e.g. "legal_obligation").
    Other { name: String },
}

/// What is known about a recording when it opens.
#[derive(Clone, Debug)]
pub struct RecordingMeta {
    pub call_id: String,
    pub route: String,
    pub caller: Pii<String>,
    pub callee: Pii<String>,
    pub basis: LawfulBasis,
    /// Retention class chosen by config rules or a trusted header; None = the default class.
    pub retention_class: Option<String>,
    /// Wall-clock start, supplied by the driver (sans-IO cores never read clocks).
    pub started_at: SystemTime,
    /// Channel layout, index = channel number.
    pub channels: Vec<Party>,
    pub sample_rate: u32,
}

/// Kinds of redaction span, as printed in reports (`pan`, `cvv`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Pan,
    Cvv,
    Expiry,
    NationalId,
    Iban,
    Ssn,
    Dtmf,
    Digits,
    /// Audio that could not be cleared in time and was muted (fail closed).
    Unverified,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Pan => "pan",
            SpanKind::Cvv => "cvv",
            SpanKind::Expiry => "expiry",
            SpanKind::NationalId => "national_id",
            SpanKind::Iban => "iban",
            SpanKind::Ssn => "ssn",
            SpanKind::Dtmf => "dtmf",
            SpanKind::Digits => "digits",
            SpanKind::Unverified => "unverified",
        }
    }
}

/// A masked interval in media time (milliseconds from the recording's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedactionSpan {
    pub channel: u8,
    pub start_ms: u64,
    pub end_ms: u64,
    pub kind: SpanKind,
}

/// PCM16 audio that redaction has cleared (or muted). Construct only in the redactor.
#[derive(Clone)]
pub struct ClearedAudio {
    channel: u8,
    start_ms: u64,
    sample_rate: u32,
    samples: Vec<i16>,
}

impl ClearedAudio {
    /// Called by the redaction masker only, after every span overlapping these samples has been
    /// applied and the window was cleared (or muted as unverified).
    pub(crate) fn cleared(channel: u8, start_ms: u64, sample_rate: u32, samples: Vec<i16>) -> ClearedAudio {
        ClearedAudio { channel, start_ms, sample_rate, samples }
    }

    pub fn channel(&self) -> u8 {
        self.channel
    }

    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }
}

impl fmt::Debug for ClearedAudio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearedAudio")
            .field("channel", &self.channel)
            .field("start_ms", &self.start_ms)
            .field("samples", &self.samples.len())
            .finish()
    }
}

/// A redacted transcript segment (markers such as `[PAN]` in place of what was removed).
#[derive(Clone, Debug)]
pub struct TranscriptSegment {
    pub channel: u8,
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: Pii<String>,
}

/// How a recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Completed,
    /// Consent was revoked: per policy, what was stored for the call is purged.
    Revoked {
        purge: bool,
    },
    /// The process or pipeline stopped before a clean end.
    Truncated,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("unknown recording {0}")]
    UnknownRecording(RecordingId),
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// Storage for cleared recordings. Implemented by the vault; the pipeline calls it from its own
/// worker, never from the live media path.
pub trait RecordingSink: Send {
    fn open(&mut self, meta: RecordingMeta) -> Result<RecordingId, SinkError>;
    fn audio(&mut self, id: &RecordingId, audio: ClearedAudio) -> Result<(), SinkError>;
    fn transcript(&mut self, id: &RecordingId, segment: TranscriptSegment) -> Result<(), SinkError>;
    fn span(&mut self, id: &RecordingId, span: RedactionSpan) -> Result<(), SinkError>;
    fn close(&mut self, id: &RecordingId, reason: CloseReason) -> Result<(), SinkError>;
    /// A trusted PBX asked, after the recording was opened, to keep it under retention class
    /// `class` (e.g. an agent flagged a complaint mid-call). Sinks without retention (the batch
    /// CLI's memory sink) have nothing to do.
    fn retention_class(&mut self, id: &RecordingId, class: &str) -> Result<(), SinkError> {
        let _ = (id, class);
        Ok(())
    }
}
