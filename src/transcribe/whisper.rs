//! whisper-rs backend: one shared model context, one reused state per worker, greedy decoding
//! without temperature fallback (FACTS.md §2: fallback made runs slow and non-repeatable), a cap
//! on tokens per window, and word times from DTW onsets (alignment heads per model). A window is
//! decoded in single-pass whisper calls; when the decoder stops early or loops, the rest of the
//! window is decoded again from where its words stopped (at most three calls per window).
//!
//! whisper.cpp's own logging is routed into `tracing` (target `whisper_rs`) so it never writes
//! to stderr on its own. This module never logs recognised text.

use std::path::Path;
use std::sync::Arc;

use whisper_rs::{
    DtwMode, DtwModelPreset, DtwParameters, FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters,
    WhisperState,
};

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
        let mut params = WhisperContextParameters::default();
        // Word times from DTW over the alignment heads' cross-attention: the decoder's own token
        // times drift by seconds over a long window (a card number timed 3 s early, its end left
        // audible), DTW's stay within a few hundred ms.
        let hp = read_hparams(path)?;
        params.dtw_parameters(DtwParameters { mode: dtw_mode(&hp), ..DtwParameters::default() });
        let ctx = WhisperContext::new_with_params(path, params)
            .map_err(|e| TranscribeError::ModelUnavailable(format!("{}: {e}", path.display())))?;
        Ok(WhisperModel { ctx: Arc::new(ctx) })
    }

    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }

    /// A transcriber with its own state (one per worker thread).
    pub fn transcriber(&self, cfg: WhisperConfig) -> Result<WhisperTranscriber, TranscribeError> {
        let state = self.ctx.create_state().map_err(|e| TranscribeError::ModelUnavailable(e.to_string()))?;
        Ok(WhisperTranscriber {
            state,
            cfg,
            multilingual: self.is_multilingual(),
            eot: self.ctx.token_eot(),
            beg: self.ctx.token_beg(),
        })
    }
}

pub struct WhisperTranscriber {
    state: WhisperState,
    cfg: WhisperConfig,
    multilingual: bool,
    /// End-of-text token id: every id at or above it is special (timestamps, language...).
    eot: i32,
    /// Timestamp tokens are the ids above this one (`<|0.00|>`).
    beg: i32,
}

impl Transcriber for WhisperTranscriber {
    fn transcribe(&mut self, audio: &[f32]) -> Result<Vec<Word>, TranscribeError> {
        if audio.is_empty() {
            return Ok(Vec::new());
        }
        // One decoding pass per whisper call (DTW times are computed per call). Whisper may end
        // its text before the audio ends (it stops after a digit string, say); the rest is then
        // decoded in another call from where its last timestamp says it stopped, as whisper.cpp
        // itself would seek, so the words after it are heard and not masked as unverified.
        let total_ms = audio.len() as u64 * 1000 / 16_000;
        let mut toks: Vec<(String, u64, u64)> = Vec::new();
        let mut offset_ms = 0u64;
        for _ in 0..MAX_PASSES {
            let from = (offset_ms * 16) as usize;
            let pass = decode_pass(&mut self.state, &self.cfg, self.multilingual, self.eot, self.beg, &audio[from..])?;
            let mut tokens = pass.tokens;
            let rest_ms = total_ms - offset_ms;
            // A decoder stuck in a loop ("1, 1, 1, ..." to the token cap) shows as word onsets
            // that stop moving: what follows the stall is decoded again from there.
            let stall = stall_at(&tokens).filter(|&k| {
                let at = tokens[k].1;
                at >= MIN_ADVANCE_MS && at + MIN_REST_MS < rest_ms
            });
            let stop = match stall {
                Some(k) => {
                    let at = tokens[k].1;
                    tokens.truncate(k);
                    at
                }
                // Where this pass's text ends: its closing timestamp when whisper gave one after
                // the last word, else a little after the last word's onset.
                None => {
                    let Some(last_onset) = tokens.iter().map(|t| t.1).max() else { break };
                    pass.stopped_ms.filter(|&t| t > last_onset).unwrap_or(last_onset + LAST_WORD_MS)
                }
            };
            toks.extend(tokens.into_iter().map(|(t, a, b)| (t, a + offset_ms, b + offset_ms)));
            if stop < MIN_ADVANCE_MS || stop + MIN_REST_MS >= rest_ms {
                break;
            }
            offset_ms += stop;
        }
        Ok(words_from_tokens(toks, total_ms))
    }
}

/// The index of the first word-starting token from which `STALL_WORDS` more words start within
/// `STALL_MS`: nobody speaks that fast, so the decoder is repeating itself over the same audio.
fn stall_at(tokens: &[(String, u64, u64)]) -> Option<usize> {
    const STALL_WORDS: usize = 4;
    const STALL_MS: u64 = 300;
    let starts: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].0.starts_with(' ')).collect();
    starts.windows(STALL_WORDS + 1).find(|w| tokens[w[STALL_WORDS]].1 - tokens[w[0]].1 < STALL_MS).map(|w| w[0])
}

/// Whisper calls per window at most.
const MAX_PASSES: usize = 3;
/// Another pass only when at least this much audio is left after the text ended...
const MIN_REST_MS: u64 = 1_500;
/// ...and the pass moved on by at least this much (no loop on the same audio).
const MIN_ADVANCE_MS: u64 = 1_000;
/// Without a closing timestamp, the last word is taken to last this long from its onset.
const LAST_WORD_MS: u64 = 600;

struct Pass {
    /// Text tokens: text, start (DTW onset when computed), end; ms from the pass's audio start.
    tokens: Vec<(String, u64, u64)>,
    /// The last timestamp token: where whisper says its text ends.
    stopped_ms: Option<u64>,
}

fn decode_pass(
    state: &mut WhisperState,
    cfg: &WhisperConfig,
    multilingual: bool,
    eot: i32,
    beg: i32,
    audio: &[f32],
) -> Result<Pass, TranscribeError> {
    let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    p.set_n_threads(cfg.threads.max(1) as i32);
    p.set_language(Some(if multilingual { cfg.language.as_str() } else { "en" }));
    p.set_translate(false);
    p.set_no_context(true);
    p.set_temperature(0.0);
    p.set_temperature_inc(0.0);
    // Tokens in proportion to the audio (speech is ~3-4 tokens/s in English, more in Spanish
    // and Portuguese): a looping decoder ("one one one ...", FACTS.md §2) stops early instead of
    // running to the cap.
    let secs = audio.len() as f64 / 16_000.0;
    let cap = (8.0 + secs * 10.0).min(cfg.max_tokens as f64) as i32;
    p.set_max_tokens(cap);
    p.set_token_timestamps(true);
    p.set_suppress_blank(true);
    p.set_suppress_nst(true);
    // Never drop a window as "no speech": on narrow-band digits whisper.cpp's silence test
    // (no_speech_prob high and avg logprob low) fired on whole card numbers, returning nothing,
    // which for redaction is the worst answer. An empty window is still safe to get from VAD,
    // not from here.
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
    // One pass per call: DTW timing is computed per pass (a window is never longer than the
    // 30 s whisper decodes at once).
    p.set_single_segment(true);
    // whisper.cpp's DTW needs a few frames to align; audio shorter than a second (the tail of a
    // call) is padded with silence, which adds no words.
    let padded;
    let audio = if audio.len() < MIN_SAMPLES {
        let mut v = audio.to_vec();
        v.resize(MIN_SAMPLES, 0.0);
        padded = v;
        &padded[..]
    } else {
        audio
    };
    state.full(p, audio).map_err(|e| TranscribeError::Failed(e.to_string()))?;
    let mut tokens = Vec::new();
    let mut stopped_ms = None;
    for seg in state.as_iter() {
        for k in 0..seg.n_tokens() {
            let Some(tok) = seg.get_token(k) else { continue };
            let id = tok.token_id();
            if id > beg {
                // <|t|> in 20 ms steps
                stopped_ms = Some((id - beg) as u64 * 20);
                continue;
            }
            if id >= eot {
                continue; // other special tokens
            }
            let Ok(text) = tok.to_str_lossy() else { continue };
            let data = tok.token_data();
            let (t0, t1) = (data.t0.max(0) as u64 * 10, data.t1.max(0) as u64 * 10);
            // DTW's time is where the token starts being said; -1 when it was not computed.
            let start = if data.t_dtw >= 0 { data.t_dtw as u64 * 10 } else { t0 };
            tokens.push((text.into_owned(), start, t1.max(start)));
        }
    }
    Ok(Pass { tokens, stopped_ms })
}

/// Shortest audio handed to whisper (1 s at 16 kHz).
const MIN_SAMPLES: usize = 16_000;

/// Joins tokens into words (a leading space starts a word) and times them: a word starts at its
/// first token's start and ends where the next word starts (DTW gives onsets, not ends), the last
/// one at its own end but at least `MIN_WORD_MS` after its start, never past `audio_ms`.
fn words_from_tokens(toks: Vec<(String, u64, u64)>, audio_ms: u64) -> Vec<Word> {
    const MIN_WORD_MS: u64 = 300;
    let mut words: Vec<(String, u64, u64)> = Vec::new();
    for (text, start, end) in toks {
        if text.trim().is_empty() {
            continue;
        }
        match words.last_mut() {
            Some(w) if !text.starts_with(' ') => {
                w.0.push_str(&text);
                w.2 = w.2.max(end);
            }
            _ => words.push((text.trim().to_string(), start, end)),
        }
    }
    // Onsets are monotonic in speech; DTW can step back a frame between tokens.
    let mut at = 0;
    for w in &mut words {
        w.1 = w.1.max(at).min(audio_ms);
        at = w.1;
    }
    let n = words.len();
    let starts: Vec<u64> = words.iter().map(|w| w.1).collect();
    words
        .into_iter()
        .enumerate()
        .map(|(i, (text, start, end))| {
            let end = if i + 1 < n { starts[i + 1].max(start) } else { end.max(start + MIN_WORD_MS).min(audio_ms) };
            Word { text: Pii::new(text), start_ms: start, end_ms: end.max(start) }
        })
        .collect()
}

/// The header fields of a ggml Whisper file that say which model it is.
#[derive(Debug, Clone, Copy)]
struct HParams {
    n_vocab: i32,
    n_audio_layer: i32,
    n_text_layer: i32,
    n_mels: i32,
}

fn read_hparams(path: &Path) -> Result<HParams, TranscribeError> {
    use std::io::Read;
    let bad = |why: &str| TranscribeError::ModelUnavailable(format!("{}: {why}", path.display()));
    let mut head = [0u8; 48];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| bad(&format!("cannot read the header: {e}")))?;
    let at = |i: usize| i32::from_le_bytes([head[4 * i], head[4 * i + 1], head[4 * i + 2], head[4 * i + 3]]);
    if at(0) as u32 != 0x6767_6d6c {
        return Err(bad("not a ggml Whisper model (bad magic)"));
    }
    // magic, n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
    // n_text_state, n_text_head, n_text_layer, n_mels, ftype
    Ok(HParams { n_vocab: at(1), n_audio_layer: at(5), n_text_layer: at(9), n_mels: at(10) })
}

/// The alignment heads for DTW: whisper.cpp's preset for the standard models, else the top half
/// of the text layers (any other ggml model still gets word times, a little less exact).
fn dtw_mode(hp: &HParams) -> DtwMode<'static> {
    let multilingual = hp.n_vocab >= 51_865;
    let preset = match (hp.n_audio_layer, hp.n_text_layer, multilingual) {
        (4, 4, false) => Some(DtwModelPreset::TinyEn),
        (4, 4, true) => Some(DtwModelPreset::Tiny),
        (6, 6, false) => Some(DtwModelPreset::BaseEn),
        (6, 6, true) => Some(DtwModelPreset::Base),
        (12, 12, false) => Some(DtwModelPreset::SmallEn),
        (12, 12, true) => Some(DtwModelPreset::Small),
        (24, 24, false) => Some(DtwModelPreset::MediumEn),
        (24, 24, true) => Some(DtwModelPreset::Medium),
        (32, 4, true) => Some(DtwModelPreset::LargeV3Turbo),
        (32, 32, true) if hp.n_mels == 128 => Some(DtwModelPreset::LargeV3),
        _ => None,
    };
    match preset {
        Some(model_preset) => DtwMode::ModelPreset { model_preset },
        None => DtwMode::TopMost { n_top: (hp.n_text_layer / 2).max(1) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_join_tokens_and_end_where_the_next_begins() {
        let t = |s: &str, a: u64, b: u64| (s.to_string(), a, b);
        let w = words_from_tokens(
            vec![t(" My", 100, 200), t(" card", 400, 500), t("s", 600, 700), t(" 4", 900, 950)],
            5_000,
        );
        let got: Vec<(String, u64, u64)> = w.iter().map(|w| (w.text.expose().clone(), w.start_ms, w.end_ms)).collect();
        assert_eq!(got, vec![t("My", 100, 400), t("cards", 400, 900), t("4", 900, 1_200)]);
    }

    #[test]
    fn onsets_never_go_back_and_stay_inside_the_audio() {
        let t = |s: &str, a: u64, b: u64| (s.to_string(), a, b);
        let w = words_from_tokens(vec![t(" one", 800, 900), t(" two", 700, 750), t(" three", 9_000, 9_100)], 2_000);
        let got: Vec<(u64, u64)> = w.iter().map(|w| (w.start_ms, w.end_ms)).collect();
        assert_eq!(got, vec![(800, 800), (800, 2_000), (2_000, 2_000)]);
    }

    #[test]
    fn a_looping_decoder_is_found_where_its_words_stop_moving() {
        let t = |s: &str, a: u64| (s.to_string(), a, a);
        let mut toks = vec![t(" my", 0), t(" card", 300), t(" is", 700), t(" 4", 1_000), t(",", 1_000)];
        assert_eq!(stall_at(&toks), None);
        for k in 0..10 {
            toks.push(t(" 1", 1_400 + k * 40));
            toks.push(t(",", 1_400 + k * 40));
        }
        assert_eq!(stall_at(&toks), Some(5));
        // Fast but human speech (five words in 800 ms) is not a stall.
        let fast: Vec<_> = (0..10).map(|k| t(" one", k * 200)).collect();
        assert_eq!(stall_at(&fast), None);
    }

    #[test]
    fn dtw_heads_for_standard_and_unknown_models() {
        let hp = |v, a, t, m| HParams { n_vocab: v, n_audio_layer: a, n_text_layer: t, n_mels: m };
        assert!(matches!(
            dtw_mode(&hp(51_864, 4, 4, 80)),
            DtwMode::ModelPreset { model_preset: DtwModelPreset::TinyEn }
        ));
        assert!(matches!(dtw_mode(&hp(51_865, 6, 6, 80)), DtwMode::ModelPreset { model_preset: DtwModelPreset::Base }));
        assert!(matches!(dtw_mode(&hp(51_865, 32, 32, 80)), DtwMode::TopMost { n_top: 16 }));
    }
}
