//! The demo's verdict on what the vault stored: no digit run of six or more from the card number
//! the caller said, and no run of nine or more digits at all, in the stored transcript or in
//! what Whisper hears when it listens to the stored (decrypted, redacted) caller audio again.
//!
//! Digits are found after [`normalize`], so "four one one one" and "4111-1111" count alike. A
//! finding says which rule failed and how long the run was, never the digits. This module only
//! reads: the vault it is given, and the model file.

use std::path::Path;

use crate::pii::Pii;
use crate::redact::normalize::{normalize, Lang, TokKind};
use crate::transcribe::resample::to_16k;
use crate::transcribe::vad::{Segmenter, VadConfig};
use crate::transcribe::whisper::{WhisperConfig, WhisperModel};
use crate::transcribe::{TranscribeError, Transcriber, Word};

/// Digits of the card number in a stored text this long are a leak.
pub const CARD_RUN: usize = 6;
/// Any digit run this long is a leak.
pub const ANY_RUN: usize = 9;

/// One broken rule, described without the digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    /// `len` consecutive digits of the card number.
    CardDigits { len: usize },
    /// A run of `len` digits.
    LongRun { len: usize },
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leak::CardDigits { len } => write!(f, "{len} consecutive digits of the card number"),
            Leak::LongRun { len } => write!(f, "a run of {len} digits"),
        }
    }
}

/// Runs of consecutive digit tokens in `text` after normalisation (English number words,
/// digits with separators); any other token ends a run.
pub fn digit_runs(text: &str) -> Vec<Pii<String>> {
    let words: Vec<Word> = text
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| Word { text: Pii::new(w.to_string()), start_ms: i as u64 * 300, end_ms: i as u64 * 300 + 250 })
        .collect();
    let mut runs = Vec::new();
    let mut cur = String::new();
    for t in normalize(Lang::En, &words) {
        match t.kind {
            TokKind::Digits(d) => cur.push_str(&d),
            _ => {
                if !cur.is_empty() {
                    runs.push(Pii::new(std::mem::take(&mut cur)));
                }
            }
        }
    }
    if !cur.is_empty() {
        runs.push(Pii::new(cur));
    }
    runs
}

/// The rules broken by `text`, given the card number the caller said.
pub fn leaks(text: &str, card: &Pii<String>) -> Vec<Leak> {
    let card = card.expose();
    let mut out = Vec::new();
    for run in digit_runs(text) {
        let run = run.expose();
        if run.len() >= ANY_RUN {
            out.push(Leak::LongRun { len: run.len() });
        }
        // the longest stretch of the run that also appears in the card number
        let longest = (CARD_RUN..=run.len())
            .rev()
            .find(|&n| (0..=run.len() - n).any(|i| card.contains(&run[i..i + n])))
            .unwrap_or(0);
        if longest >= CARD_RUN {
            out.push(Leak::CardDigits { len: longest });
        }
    }
    out
}

/// Transcribes 8 kHz PCM16 with the model at `model`, window by window (cut at pauses, like the
/// live pipeline), and returns the text. Silent windows are skipped.
pub fn transcribe(model: &Path, samples: &[i16], rate: u32) -> Result<Pii<String>, TranscribeError> {
    let model = WhisperModel::load(model)?;
    let mut asr = model.transcriber(WhisperConfig::default())?;
    let mut seg = Segmenter::new(VadConfig::default(), rate);
    let mut cuts = seg.push(samples);
    cuts.extend(seg.flush());
    let mut text = String::new();
    for c in cuts.into_iter().filter(|c| c.speech) {
        let (a, b) = (usize::try_from(c.start).unwrap_or(0), usize::try_from(c.end).unwrap_or(usize::MAX));
        let Some(window) = samples.get(a..b.min(samples.len())) else { continue };
        for w in asr.transcribe(&to_16k(window, rate))? {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(w.text.expose());
        }
    }
    Ok(Pii::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Pii<String> {
        Pii::new("4111111111111111".to_string())
    }

    #[test]
    fn spoken_and_written_card_numbers_leak() {
        let l = leaks("my card number is 4111 1111 1111 1111 thanks", &card());
        assert!(l.contains(&Leak::LongRun { len: 16 }) && l.contains(&Leak::CardDigits { len: 16 }), "{l:?}");
        let l = leaks("it is four one one one one one, thanks", &card());
        assert_eq!(l, vec![Leak::CardDigits { len: 6 }]);
        let l = leaks("call 555-123-4567 please", &card());
        assert_eq!(l, vec![Leak::LongRun { len: 10 }]);
    }

    #[test]
    fn redacted_text_and_short_numbers_pass() {
        assert!(leaks("my card number is [PAN] and the expiry is [EXPIRY]", &card()).is_empty());
        assert!(leaks("I have 2 kids and the rent is 950, call me at 5", &card()).is_empty());
        assert!(leaks("", &card()).is_empty());
        // five digits of the card, then a marker, then five more: no run reaches six
        assert!(leaks("4111 1 [PAN] 11111", &card()).is_empty());
    }

    #[test]
    fn findings_never_print_digits() {
        for l in leaks("4111 1111 1111 1111", &card()) {
            assert!(!l.to_string().contains("4111"), "{l}");
        }
    }
}
