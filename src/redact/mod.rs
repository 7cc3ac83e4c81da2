//! Redaction before storage: finds card numbers, security codes, expiry dates, national IDs,
//! IBANs and long digit runs in what was said, and cuts them from the audio and the transcript
//! before anything reaches a [`crate::vault::sink::RecordingSink`].
//!
//! `normalize` turns ASR words into digit tokens, `checks` holds the check-digit validators,
//! `detect` finds spans in a word stream, `plan` pads and merges spans in media time, `mask`
//! applies them to held audio, and `pipeline` is the sans-IO core that holds audio per channel,
//! cuts windows, asks for transcriptions, enforces deadlines and fails closed (mutes as
//! `unverified`) when audio cannot be cleared in time. `wav` reads and writes the WAV files the
//! offline `callveil redact` command works on. Nothing here opens sockets or reads the clock.

pub mod batch;
pub mod checks;
pub mod detect;
pub mod mask;
pub mod normalize;
pub mod pipeline;
pub mod plan;
pub mod wav;
