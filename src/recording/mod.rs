//! The recording path of DESIGN.md's picture: tap -> DTMF -> consent gate -> redaction
//! pipeline -> vault, for live calls.
pub mod api;
pub mod core;
pub mod driver;
pub mod dtmf;
pub mod session;
