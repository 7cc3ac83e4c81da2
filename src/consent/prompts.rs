//! IVR consent prompts: `LANG.wav` files (8 kHz mono PCM16, made by `scripts/make-prompts`) loaded
//! once at start-up into shared PCM buffers the media anchor plays from.
//!
//! Each prompt carries the sha256 of its file, so the consent ledger can prove which exact words
//! a caller heard. Files that are not 8 kHz mono are refused with an error naming the file (the
//! relay plays 20 ms packets of 160 samples and does not resample). This module reads files only
//! in [`Prompts::load`]; it does not play audio or choose a language for a call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::redact::wav;

/// Prompt files are small (seconds of speech); anything larger is not a prompt.
const MAX_PROMPT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read prompt {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("prompt {file}: {source}")]
    Wav { file: PathBuf, source: wav::WavError },
    #[error("prompt {file}: {problem}")]
    Format { file: PathBuf, problem: String },
}

/// One language's prompt.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// Stable name of the prompt (`consent-LANG`); the sha256 tells versions apart.
    pub id: String,
    pub language: String,
    /// Lowercase hex sha256 of the WAV file as loaded.
    pub sha256: String,
    /// 8 kHz mono samples.
    pub pcm: Arc<[i16]>,
    pub duration: Duration,
}

/// The prompts of a directory, by language.
#[derive(Clone, Debug, Default)]
pub struct Prompts {
    by_lang: BTreeMap<String, Prompt>,
}

fn lang_of(path: &Path) -> Option<String> {
    if path.extension()?.to_str()? != "wav" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    // Language tags only (`en`, `pt-BR`): other WAVs in the directory are not prompts.
    let ok = !stem.is_empty() && stem.len() <= 16 && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| stem.to_string())
}

impl Prompt {
    /// Reads and checks one prompt file.
    pub fn load(file: &Path, language: &str) -> Result<Prompt, PromptError> {
        let read = |source| PromptError::Read { file: file.to_path_buf(), source };
        let len = std::fs::metadata(file).map_err(read)?.len();
        if len > MAX_PROMPT_BYTES {
            return Err(PromptError::Format {
                file: file.to_path_buf(),
                problem: format!("{len} bytes is too large for a prompt (at most {MAX_PROMPT_BYTES})"),
            });
        }
        let bytes = std::fs::read(file).map_err(read)?;
        let audio = wav::read(&bytes).map_err(|source| PromptError::Wav { file: file.to_path_buf(), source })?;
        let format = |problem: String| PromptError::Format { file: file.to_path_buf(), problem };
        if audio.rate != 8000 {
            return Err(format(format!("sample rate is {} Hz; prompts must be 8000 Hz mono", audio.rate)));
        }
        if audio.channels.len() != 1 {
            return Err(format(format!("{} channels; prompts must be 8000 Hz mono", audio.channels.len())));
        }
        let samples = audio.channels.into_iter().next().unwrap_or_default();
        if samples.is_empty() {
            return Err(format("no audio".into()));
        }
        let duration = Duration::from_micros(samples.len() as u64 * 125);
        Ok(Prompt {
            id: format!("consent-{language}"),
            language: language.to_string(),
            sha256: crate::vault::crypto::hex(&Sha256::digest(&bytes)),
            pcm: samples.into(),
            duration,
        })
    }
}

impl Prompts {
    /// Loads every `LANG.wav` in `dir`. Any unreadable or malformed prompt fails the whole load:
    /// an IVR that silently lost a language would record nobody's consent in it.
    pub fn load(dir: &Path) -> Result<Prompts, PromptError> {
        let dir_err = |source| PromptError::Dir { dir: dir.to_path_buf(), source };
        let mut by_lang = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let path = entry.map_err(dir_err)?.path();
            let Some(lang) = lang_of(&path) else { continue };
            let prompt = Prompt::load(&path, &lang)?;
            by_lang.insert(lang, prompt);
        }
        Ok(Prompts { by_lang })
    }

    pub fn get(&self, lang: &str) -> Option<&Prompt> {
        self.by_lang.get(lang)
    }

    /// Loaded languages, sorted.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.by_lang.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_lang.is_empty()
    }
}
