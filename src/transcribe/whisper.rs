//! whisper-rs backend: one shared model context, one reused state per worker, greedy decoding
//! without temperature fallback (FACTS.md §2: fallback made runs slow and non-repeatable), a cap
//! on tokens per window, and token timestamps turned into word times.
//!
//! whisper.cpp's own logging is routed into `tracing` (target `whisper_rs`) so it never writes
//! to stderr on its own. This module never logs recognised text.

use std::path::Path;
use std::sync::Arc;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

use crate::pii::Pii;
use crate::transcribe::{TranscribeError, Transcriber, Word};

/// Decoding settings.
#[derive(Clone, Debug)]
pub struct WhisperConfig {
    /// Whisper language code ("en", "es", "pt"); English-only models ignore it.
    pub language: String,
    pub threads: usize,
    pub max_tokens: usize,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        WhisperConfig { language: "en".into(), threads: 1, max_tokens: 128 }
    }
}

/// A loaded model, shared by all workers.
#[derive(Clone)]
pub struct WhisperModel {
    ctx: Arc<WhisperContext>,
}

impl WhisperModel {
    pub fn load(path: &Path) -> Result<WhisperModel, TranscribeError> {
        whisper_rs::install_logging_hooks();
        if !path.is_file() {
            return Err(TranscribeError::ModelUnavailable(format!(
                "{} not found (run scripts/provision-model)",
                path.display()
            )));
        }
        let ctx = WhisperContext::new_with_params(path, WhisperContextParameters::default())
            .map_err(|e| TranscribeError::ModelUnavailable(format!("{}: {e}", path.display())))?;
        Ok(WhisperModel { ctx: Arc::new(ctx) })
    }

    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }

    /// A transcriber with its own state (one per worker thread).
    pub fn transcriber(&self, cfg: WhisperConfig) -> Result<WhisperTranscriber, TranscribeError> {
        let state = self.ctx.create_state().map_err(|e| TranscribeError::ModelUnavailable(e.to_string()))?;
        Ok(WhisperTranscriber { state, cfg, multilingual: self.is_multilingual(), eot: self.ctx.token_eot() })
    }
}

pub struct WhisperTranscriber {
    state: WhisperState,
    cfg: WhisperConfig,
    multilingual: bool,
    /// End-of-text token id: every id at or above it is special (timestamps, language...).
    eot: i32,
}

impl Transcriber for WhisperTranscriber {
    fn transcribe(&mut self, audio: &[f32]) -> Result<Vec<Word>, TranscribeError> {
        if audio.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(self.cfg.threads.max(1) as i32);
        p.set_language(Some(if self.multilingual { self.cfg.language.as_str() } else { "en" }));
        p.set_translate(false);
        p.set_no_context(true);
        p.set_temperature(0.0);
        p.set_temperature_inc(0.0);
        // Tokens in proportion to the audio (speech is ~3-4 tokens/s in English, more in Spanish and Portuguese): a looping decoder
        // ("one one one ...", FACTS.md §2) stops early instead of running to the cap.
        let secs = audio.len() as f64 / 16_000.0;
        let cap = (8.0 + secs * 10.0).min(self.cfg.max_tokens as f64) as i32;
        p.set_max_tokens(cap);
        p.set_token_timestamps(true);
        p.set_suppress_blank(true);
        p.set_suppress_nst(true);
        // Never drop a window as "no speech": on narrow-band digits whisper.cpp's silence test
        // (no_speech_prob high and avg logprob low) fired on whole card numbers, returning
        // nothing, which for redaction is the worst answer. An empty window is still safe to
        // get from VAD, not from here.
        p.set_no_speech_thold(1.0);
        p.set_logprob_thold(f32::NEG_INFINITY);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_special(false);
        p.set_print_timestamps(false);
        // Whisper pads every window to 30 s; a shorter audio context cuts the encoder's fixed cost
        // for short windows (FACTS.md §2). 1500 frames = 30 s, 50 frames per second.
        let ctx = ((secs + 1.0) * 50.0).ceil().clamp(256.0, 1500.0) as i32;
        if std::env::var_os("CALLVEIL_FULL_CTX").is_none() {
            p.set_audio_ctx(ctx);
        }
        self.state.full(p, audio).map_err(|e| TranscribeError::Failed(e.to_string()))?;
        let eot = self.eot;
        let mut words: Vec<Word> = Vec::new();
        for seg in self.state.as_iter() {
            for k in 0..seg.n_tokens() {
                let Some(tok) = seg.get_token(k) else { continue };
                if tok.token_id() >= eot {
                    continue; // special and timestamp tokens
                }
                let Ok(text) = tok.to_str_lossy() else { continue };
                let data = tok.token_data();
                let (t0, t1) = (data.t0.max(0) as u64 * 10, data.t1.max(0) as u64 * 10);
                let text = text.into_owned();
                if text.trim().is_empty() {
                    continue;
                }
                // A leading space starts a new word; otherwise the token continues the last one.
                match words.last_mut() {
                    Some(w) if !text.starts_with(' ') => {
                        let mut s = w.text.expose().clone();
                        s.push_str(&text);
                        w.text = Pii::new(s);
                        w.end_ms = w.end_ms.max(t1);
                    }
                    _ => words.push(Word { text: Pii::new(text.trim().to_string()), start_ms: t0, end_ms: t1.max(t0) }),
                }
            }
        }
        Ok(words)
    }
}
