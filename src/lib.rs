//! callveil: a SIP/RTP proxy that sits between carriers and a contact centre's PBX.
//!
//! Signaling enters through `net/` (the only module with sockets and clocks), is parsed by
//! `sip::message`, absorbed and retransmitted by `sip::transaction`, and forwarded by the
//! stateful proxy core in `sip::proxy`, which asks `sip::route` where an initial request goes and
//! hands every SDP offer and answer to a `sip::sdp::MediaAnchor` so that media can be anchored on
//! callveil's own ports. Everything under `sip/` is sans-IO: it takes bytes and `Instant`s and
//! returns bytes to send and the next deadline, so SIP timers run on virtual time in tests.
//!
//! Later layers (media relay, consent gate, transcription, redaction, vault) hang off the same
//! picture; see DESIGN.md. Personal data is wrapped in [`pii::Pii`] so it cannot reach the logs.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod consent;
pub mod demo;
pub mod dtmf;
pub mod media;
pub mod metrics;
pub mod net;
pub mod pii;
pub mod recording;
pub mod redact;
pub mod sip;

pub mod transcribe;
pub mod vault;
