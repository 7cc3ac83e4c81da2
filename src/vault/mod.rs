//! Where cleared audio and transcripts come to rest. For now only the [`sink::RecordingSink`]
//! contract between the redaction pipeline and storage; the encrypted store implements it.

pub mod blob;
pub mod crypto;
pub mod sink;
