//! The recording path of DESIGN.md's picture, for live calls: tap -> DTMF -> consent gate ->
//! redaction pipeline -> vault.
//!
//! [`core::RecordingPath`] is the sans-IO core: per call a consent [`crate::consent::Gate`], one
//! DTMF stream per leg ([`dtmf::LegDtmf`]: RFC 4733 and in-band from the tap, plus SIP INFO from
//! the proxy), and once recording is permitted a [`session::Session`] that maps tap media time
//! onto recording time and feeds the redaction pipeline, whose cleared or muted output is all
//! that reaches the store. [`driver::RecordingService`] is its thread: tap queues, transcription
//! pool, clocks. [`api::ConsentApi`] carries the `api` mode's HTTP signals to it.
//!
//! It does not relay media, parse SIP, decide consent (the gate does), detect PII (the redactor
//! does) or encrypt (the vault does); it never waits on the live path nor makes it wait.
pub mod api;
pub mod core;
pub mod driver;
pub mod dtmf;
pub mod session;
