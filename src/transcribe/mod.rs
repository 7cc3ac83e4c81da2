//! Speech to timestamped words for the recording path: the [`Transcriber`] trait, energy-based
//! VAD windowing (`vad`), 8 → 16 kHz resampling (`resample`), the whisper-rs backend (`whisper`)
//! and a worker pool that runs transcribers on their own threads (`pool`, a driver).
//!
//! Transcribers take 16 kHz mono f32 audio of one window and return words with times relative to
//! the window's start. They do not know about calls, consent or redaction, and they never log
//! what was said.

pub mod pool;
pub mod resample;
pub mod vad;
pub mod whisper;

use std::fmt;

use crate::pii::Pii;

/// Sample rate every transcriber takes.
pub const ASR_RATE: u32 = 16_000;

/// One recognised word; times in milliseconds (relative to the window for a transcriber's
/// output, absolute media time once the pipeline has placed it).
#[derive(Clone, PartialEq, Eq)]
pub struct Word {
    pub text: Pii<String>,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Word({{REDACTED}}, {}..{} ms)", self.start_ms, self.end_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("speech model unavailable: {0}")]
    ModelUnavailable(String),
    #[error("transcription failed: {0}")]
    Failed(String),
    #[error("transcription worker stopped")]
    WorkerGone,
}

/// Speech recognition for one window of 16 kHz mono audio.
pub trait Transcriber: Send {
    fn transcribe(&mut self, audio: &[f32]) -> Result<Vec<Word>, TranscribeError>;
}
