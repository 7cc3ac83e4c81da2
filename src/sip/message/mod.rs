//! SIP message layer (placeholder until the parser lands).
pub mod framing;
