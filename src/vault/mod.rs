//! Where cleared audio and transcripts come to rest: the encrypted recording vault.
//!
//! - [`crypto`]: per-recording data keys, authenticated chunks, KEK wrapping, subject hashes.
//! - [`blob`]: the object-store-shaped blob trait and its local-directory implementation.
//! - [`meta`]: metadata, wrapped keys, tags, spans, tombstones and audit log (sqlx, SQLite).
//! - [`retention`]: classes, rules and expiry (pure).
//! - the consent ledger ([`ConsentRecord`] in, [`meta::ConsentRow`] out): append-only rows that
//!   prove each consent decision; written through [`recorder::Recorder::append_consent`], read
//!   with [`Vault::consent_records`]. Erasure by subject keeps them (see [`Vault::erase_subject`]).
//! - [`recorder`]: the [`sink::RecordingSink`] implementation the pipeline writes into.
//! - [`Vault`] (here): the synchronous face over all of them used by the recorder and the QA/DPO
//!   command line: list, show, export, tag, hold, erase, sweep, key rotation, crash recovery.
//!
//! sqlx is async, but the pipeline calls the sink synchronously from its own worker thread and
//! the CLI is synchronous too, so the vault owns a small current-thread tokio runtime and blocks
//! on it. The consequence: [`Vault`] methods must not be called from inside an async task (they
//! return [`VaultError::InsideAsyncRuntime`] instead of panicking). Time is always a parameter;
//! the vault never reads the clock. One process at a time may write recordings into a storage
//! directory (the recorder runs crash recovery at start-up).

pub mod blob;
pub mod crypto;
pub mod meta;
pub mod recorder;
pub mod retention;
pub mod sink;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use self::blob::{BlobError, BlobStore, FsBlobStore};
use self::crypto::{CryptoError, DataKey, Keyring, StreamTag};
use self::meta::{
    AuditEntry, ConsentRow, ListFilter, MetaError, MetaStore, RecordingRow, RecordingState, RedactionSummary, Tombstone,
};
use self::retention::RetentionPolicy;
use self::sink::Party;
use crate::config::{ConfigError, Settings};
use crate::metrics::VaultMetrics;
use crate::pii::Pii;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no recording with id `{0}`")]
    UnknownRecording(String),
    #[error("recording `{id}` was erased ({reason}) at {at}")]
    Erased { id: String, reason: String, at: String },
    #[error("recording `{0}` is under legal hold; release it with `recordings hold {0} off` first")]
    LegalHold(String),
    #[error("recording `{0}` is still being recorded")]
    StillRecording(String),
    #[error("recording `{0}` has no data key (it was crypto-shredded)")]
    Shredded(String),
    #[error("recording `{id}`: {source}")]
    Crypto { id: String, source: CryptoError },
    #[error(transparent)]
    Keys(CryptoError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("recording `{id}` is corrupt: {problem}")]
    Corrupt { id: String, problem: String },
    #[error("I/O on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid tag `{0}`: use 1-64 characters of [A-Za-z0-9._:-]")]
    InvalidTag(String),
    #[error("no retention class `{0}` (see retention.classes)")]
    UnknownClass(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the vault is synchronous and must not be called from inside an async runtime")]
    InsideAsyncRuntime,
    #[error(
        "another process is recording into {dir} (it holds {dir}/recorder.lock); \
         two recorders on one vault would finalise each other's live recordings as truncated"
    )]
    InUse { dir: String },
}

/// Everything needed to open a vault.
#[derive(Clone, Debug)]
pub struct VaultOptions {
    /// The storage directory: `vault.db` and `blobs/` live here.
    pub dir: PathBuf,
    pub key_file: PathBuf,
    pub create_keys: bool,
    pub chunk_ms: u32,
    pub retention: RetentionPolicy,
}

impl VaultOptions {
    pub fn from_settings(s: &Settings) -> Result<VaultOptions, ConfigError> {
        Ok(VaultOptions {
            dir: s.raw.storage.dir.clone(),
            key_file: s.raw.vault.key_file.clone(),
            create_keys: s.raw.vault.create_keys,
            chunk_ms: s.raw.vault.chunk_ms,
            retention: RetentionPolicy::from_config(&s.raw.retention)?,
        })
    }
}

/// Decrypted audio of one channel, placed on the recording's timeline (gaps are silence).
#[derive(Clone, Debug)]
pub struct ChannelAudio {
    pub party: Party,
    pub samples: Vec<i16>,
}

/// Decrypted, redacted transcript segment.
#[derive(Clone, Debug)]
pub struct TranscriptLine {
    pub channel: u8,
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: Pii<String>,
}

/// The sealed identity of a call, opened.
#[derive(Clone, Debug)]
pub struct Parties {
    pub call_id: Pii<String>,
    pub caller: Pii<String>,
    pub callee: Pii<String>,
}

/// What `recordings show` prints.
#[derive(Clone, Debug)]
pub struct RecordingDetail {
    pub row: RecordingRow,
    pub parties: Parties,
    pub summary: RedactionSummary,
    pub spans: Vec<(u8, u64, u64, String)>,
    pub transcript: Vec<TranscriptLine>,
}

/// The IVR prompt a caller heard, as the ledger proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRef {
    pub id: String,
    pub language: String,
    pub sha256: String,
}

/// One consent decision to append to the ledger (see [`recorder::Recorder::append_consent`]).
#[derive(Clone, Debug)]
pub struct ConsentRecord {
    pub call_id: String,
    /// Stored only as its keyed hash.
    pub caller: Pii<String>,
    pub route: String,
    pub basis: crate::consent::Basis,
    pub method: crate::consent::Method,
    pub decision: crate::consent::Decision,
    /// The IVR prompt played (ivr method); `None` otherwise.
    pub prompt: Option<PromptRef>,
    /// Wall-clock instant of the decision, supplied by the driver.
    pub decided_at: SystemTime,
    /// The recording the decision applies to, where one exists (a revocation's recording).
    pub recording_id: Option<String>,
}

/// Which ledger rows to read.
#[derive(Clone, Debug)]
pub enum ConsentQuery {
    Call(String),
    /// Every row whose caller number normalises like this one.
    Subject(Pii<String>),
    All,
}

/// Result of a retention sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub erased: Vec<String>,
    /// Expired but under legal hold: kept.
    pub held: Vec<String>,
}

pub(crate) fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn chunk_key(id: &str, stream: StreamTag, index: u64) -> String {
    format!("rec/{id}/{}/{index:010}", stream.name())
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Plaintext framing of chunk contents. Length-prefixed, big-endian integers.
pub(crate) mod framing {
    use super::sink::TranscriptSegment;

    pub fn push_audio(buf: &mut Vec<u8>, start_ms: u64, samples: &[i16]) {
        buf.extend_from_slice(&start_ms.to_be_bytes());
        buf.extend_from_slice(&(samples.len() as u32).to_be_bytes());
        for s in samples {
            buf.extend_from_slice(&s.to_le_bytes());
        }
    }

    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }

    fn u64_of(b: &mut &[u8]) -> Option<u64> {
        take(b, 8).map(|x| u64::from_be_bytes(x.try_into().unwrap_or([0; 8])))
    }

    fn u32_of(b: &mut &[u8]) -> Option<u32> {
        take(b, 4).map(|x| u32::from_be_bytes(x.try_into().unwrap_or([0; 4])))
    }

    /// `(start_ms, samples)` records of an audio chunk; `None` if malformed.
    pub fn parse_audio(mut b: &[u8]) -> Option<Vec<(u64, Vec<i16>)>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let start = u64_of(&mut b)?;
            let n = u32_of(&mut b)? as usize;
            let raw = take(&mut b, n.checked_mul(2)?)?;
            out.push((start, raw.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect()));
        }
        Some(out)
    }

    pub fn push_segment(buf: &mut Vec<u8>, s: &TranscriptSegment) {
        buf.push(s.channel);
        buf.extend_from_slice(&s.start_ms.to_be_bytes());
        buf.extend_from_slice(&s.end_ms.to_be_bytes());
        push_str(buf, s.text.expose());
    }

    pub fn parse_segments(mut b: &[u8]) -> Option<Vec<(u8, u64, u64, String)>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let ch = take(&mut b, 1)?[0];
            let s = u64_of(&mut b)?;
            let e = u64_of(&mut b)?;
            out.push((ch, s, e, take_str(&mut b)?));
        }
        Some(out)
    }

    pub fn push_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    pub fn take_str(b: &mut &[u8]) -> Option<String> {
        let n = u32_of(b)? as usize;
        String::from_utf8(take(b, n)?.to_vec()).ok()
    }
}

/// The encrypted recording vault (synchronous face; see the module docs).
pub struct Vault {
    rt: tokio::runtime::Runtime,
    meta: MetaStore,
    blobs: Box<dyn BlobStore>,
    keys: Keyring,
    retention: RetentionPolicy,
    chunk_ms: u32,
    dir: PathBuf,
    metrics: VaultMetrics,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("dir", &self.dir).field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault at `opts.dir`, loading keys, creating the database and blob directory.
    pub fn open(opts: VaultOptions) -> Result<Vault, VaultError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(VaultError::InsideAsyncRuntime);
        }
        let keys = Keyring::load(&opts.key_file, opts.create_keys).map_err(VaultError::Keys)?;
        let io = |source| VaultError::Io { path: opts.dir.display().to_string(), source };
        if !opts.dir.exists() {
            std::fs::create_dir_all(&opts.dir).map_err(io)?;
            // A new storage directory is private to the service user: it holds subject hashes and
            // the audit log, even though every recording in it is sealed.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&opts.dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        let blobs = FsBlobStore::open(&opts.dir.join("blobs"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| VaultError::Io { path: "tokio runtime".into(), source })?;
        let meta = rt.block_on(MetaStore::open(&opts.dir.join("vault.db")))?;
        Ok(Vault {
            rt,
            meta,
            blobs: Box::new(blobs),
            keys,
            retention: opts.retention,
            chunk_ms: opts.chunk_ms,
            dir: opts.dir,
            metrics: VaultMetrics::default(),
        })
    }

    /// Counts into `m` (clones of the registered families) from now on.
    pub fn set_metrics(&mut self, m: VaultMetrics) {
        self.metrics = m;
    }

    pub fn metrics(&self) -> &VaultMetrics {
        &self.metrics
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    pub(crate) fn retention(&self) -> &RetentionPolicy {
        &self.retention
    }

    pub(crate) fn chunk_ms(&self) -> u32 {
        self.chunk_ms
    }

    pub(crate) fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub(crate) fn blobs(&self) -> &dyn BlobStore {
        &*self.blobs
    }

    pub(crate) fn block<F: std::future::Future>(&self, f: F) -> Result<F::Output, VaultError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(VaultError::InsideAsyncRuntime);
        }
        Ok(self.rt.block_on(f))
    }

    /// The row, or a clear error naming what happened to the id.
    pub fn get(&self, id: &str) -> Result<RecordingRow, VaultError> {
        if let Some(row) = self.block(self.meta.get(id))?? {
            return Ok(row);
        }
        match self.block(self.meta.tombstone(id))?? {
            Some(t) => Err(VaultError::Erased { id: id.into(), reason: t.reason, at: format_time(t.erased_at_ms) }),
            None => Err(VaultError::UnknownRecording(id.into())),
        }
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<RecordingRow>, VaultError> {
        Ok(self.block(self.meta.list(filter))??)
    }

    pub(crate) fn data_key(&self, id: &str) -> Result<DataKey, VaultError> {
        let wrapped = self.block(self.meta.key(id))??.ok_or_else(|| VaultError::Shredded(id.into()))?;
        self.keys.unwrap(&wrapped, id).map_err(|source| VaultError::Crypto { id: id.into(), source })
    }

    /// Chunk objects of one stream, in index order.
    fn stream_objects(&self, id: &str, stream: StreamTag) -> Result<Vec<(u64, Vec<u8>)>, VaultError> {
        let prefix = format!("rec/{id}/{}/", stream.name());
        let mut out = Vec::new();
        for key in self.blobs.list(&prefix)? {
            let idx = key[prefix.len()..]
                .parse::<u64>()
                .map_err(|_| VaultError::Corrupt { id: id.into(), problem: format!("unexpected blob {key}") })?;
            out.push((idx, self.blobs.get(&key)?));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    fn open_stream(&self, id: &str, key: &DataKey, stream: StreamTag) -> Result<Vec<Zeroizing<Vec<u8>>>, VaultError> {
        let objs = self.stream_objects(id, stream)?;
        crypto::open_stream(key, id, stream, objs.iter().map(|(i, o)| (*i, o.as_slice())))
            .map_err(|source| VaultError::Crypto { id: id.into(), source })
    }

    pub(crate) fn open_parties(&self, id: &str, key: &DataKey, sealed: &[u8]) -> Result<Parties, VaultError> {
        let c = crypto::open_chunk(key, id, StreamTag::Parties, 0, sealed)
            .map_err(|source| VaultError::Crypto { id: id.into(), source })?;
        let mut b: &[u8] = &c.plaintext;
        let corrupt = || VaultError::Corrupt { id: id.into(), problem: "sealed parties do not parse".into() };
        let call_id = framing::take_str(&mut b).ok_or_else(corrupt)?;
        let caller = framing::take_str(&mut b).ok_or_else(corrupt)?;
        let callee = framing::take_str(&mut b).ok_or_else(corrupt)?;
        Ok(Parties { call_id: Pii::new(call_id), caller: Pii::new(caller), callee: Pii::new(callee) })
    }

    /// Metadata, opened parties, redaction summary and the decrypted (redacted) transcript.
    pub fn show(&self, id: &str) -> Result<RecordingDetail, VaultError> {
        let row = self.get(id)?;
        let key = self.data_key(id)?;
        let parties = self.open_parties(id, &key, &row.sealed_parties)?;
        let mut transcript = Vec::new();
        if row.state != RecordingState::Recording {
            for chunk in self.open_stream(id, &key, StreamTag::Transcript)? {
                let segs = framing::parse_segments(&chunk).ok_or_else(|| VaultError::Corrupt {
                    id: id.into(),
                    problem: "transcript chunk does not parse".into(),
                })?;
                transcript.extend(segs.into_iter().map(|(channel, start_ms, end_ms, text)| TranscriptLine {
                    channel,
                    start_ms,
                    end_ms,
                    text: Pii::new(text),
                }));
            }
        }
        let summary = self.block(self.meta.summary(id))??;
        let spans = self.block(self.meta.spans(id))??;
        Ok(RecordingDetail { row, parties, summary, spans, transcript })
    }

    /// Decrypts every channel onto the recording's timeline. Fails on any authentication error.
    pub fn read_audio(&self, id: &str) -> Result<(u32, Vec<ChannelAudio>), VaultError> {
        let row = self.get(id)?;
        if row.state == RecordingState::Recording {
            return Err(VaultError::StillRecording(id.into()));
        }
        let key = self.data_key(id)?;
        let rate = u64::from(row.sample_rate);
        let mut out = Vec::new();
        for (ch, party) in row.channels.iter().enumerate() {
            let mut samples: Vec<i16> = Vec::new();
            for chunk in self.open_stream(id, &key, StreamTag::Audio(ch as u8))? {
                let frames = framing::parse_audio(&chunk).ok_or_else(|| VaultError::Corrupt {
                    id: id.into(),
                    problem: "audio chunk does not parse".into(),
                })?;
                for (start_ms, frame) in frames {
                    let at = usize::try_from(start_ms.saturating_mul(rate) / 1000).unwrap_or(usize::MAX);
                    let end = at.saturating_add(frame.len());
                    // Bound what a corrupt-but-authentic timestamp could make us allocate: 24 h.
                    if end > (rate as usize) * 86_400 {
                        return Err(VaultError::Corrupt { id: id.into(), problem: "audio beyond 24 hours".into() });
                    }
                    if samples.len() < end {
                        samples.resize(end, 0);
                    }
                    samples[at..end].copy_from_slice(&frame);
                }
            }
            out.push(ChannelAudio { party: *party, samples });
        }
        Ok((row.sample_rate, out))
    }

    /// Writes the redacted audio as a WAV file (one channel per party, PCM16) and audits it.
    pub fn export_wav(&self, id: &str, out: &Path, actor: &str, now: SystemTime) -> Result<(), VaultError> {
        let (rate, channels) = self.read_audio(id)?;
        let len = channels.iter().map(|c| c.samples.len()).max().unwrap_or(0);
        let spec = hound::WavSpec {
            channels: channels.len().max(1) as u16,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let io = |e: hound::Error| VaultError::Io {
            path: out.display().to_string(),
            source: match e {
                hound::Error::IoError(e) => e,
                other => std::io::Error::other(other.to_string()),
            },
        };
        let mut w = hound::WavWriter::create(out, spec).map_err(io)?;
        for i in 0..len {
            if channels.is_empty() {
                w.write_sample(0i16).map_err(io)?;
            }
            for c in &channels {
                w.write_sample(c.samples.get(i).copied().unwrap_or(0)).map_err(io)?;
            }
        }
        w.finalize().map_err(io)?;
        self.audit(actor, "export", Some(id), &format!("{len} frames"), now)
    }

    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        id: Option<&str>,
        detail: &str,
        now: SystemTime,
    ) -> Result<(), VaultError> {
        let e = AuditEntry {
            at_ms: ms(now),
            actor: actor.into(),
            action: action.into(),
            recording_id: id.map(str::to_string),
            detail: detail.into(),
        };
        Ok(self.block(self.meta.audit(&e))??)
    }

    pub fn audit_log(&self, id: Option<&str>) -> Result<Vec<AuditEntry>, VaultError> {
        Ok(self.block(self.meta.audit_log(id))??)
    }

    pub fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, VaultError> {
        Ok(self.block(self.meta.tombstone(id))??)
    }

    /// Adds and removes free tags.
    pub fn tag(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
        actor: &str,
        now: SystemTime,
    ) -> Result<(), VaultError> {
        self.get(id)?;
        for t in add.iter().chain(remove) {
            if !valid_tag(t) {
                return Err(VaultError::InvalidTag(t.clone()));
            }
        }
        for t in add {
            self.block(self.meta.add_tag(id, t))??;
        }
        for t in remove {
            self.block(self.meta.remove_tag(id, t))??;
        }
        self.audit(actor, "tag", Some(id), &format!("+{} -{}", add.join(","), remove.join(",")), now)
    }

    pub fn set_hold(&self, id: &str, hold: bool, actor: &str, now: SystemTime) -> Result<(), VaultError> {
        self.get(id)?;
        self.block(self.meta.set_hold(id, hold))??;
        self.audit(actor, if hold { "hold.on" } else { "hold.off" }, Some(id), "", now)
    }

    /// Moves a recording (open or closed) into retention class `class`; its expiry is computed
    /// again from its start, as if it had been created in that class. Legal hold is separate
    /// and unchanged.
    pub fn set_class(&self, id: &str, class: &str, actor: &str, now: SystemTime) -> Result<(), VaultError> {
        let row = self.get(id)?;
        let new = self.retention.class(class).ok_or_else(|| VaultError::UnknownClass(class.into()))?;
        let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(row.started_at_ms.max(0) as u64);
        let expires = ms(RetentionPolicy::expiry(new, started));
        self.block(self.meta.set_class(id, &new.name, expires))??;
        self.audit(actor, "class", Some(id), &format!("{} -> {}", row.retention_class, new.name), now)
    }

    /// Erases one recording: wrapped key (crypto-shred), then blobs, then rows; leaves a
    /// tombstone and an audit record. Refused under legal hold or while still recording.
    pub fn erase(&self, id: &str, reason: &str, actor: &str, now: SystemTime) -> Result<(), VaultError> {
        let row = self.get(id)?;
        if row.legal_hold {
            return Err(VaultError::LegalHold(id.into()));
        }
        if row.state == RecordingState::Recording {
            return Err(VaultError::StillRecording(id.into()));
        }
        self.erase_row(&row, reason, actor, now)
    }

    pub(crate) fn erase_row(
        &self,
        row: &RecordingRow,
        reason: &str,
        actor: &str,
        now: SystemTime,
    ) -> Result<(), VaultError> {
        let id = row.id.as_str();
        self.block(self.meta.shred_key(id))??;
        for key in self.blobs.list(&format!("rec/{id}/"))? {
            self.blobs.delete(&key)?;
        }
        let tomb = Tombstone {
            recording_id: id.into(),
            erased_at_ms: ms(now),
            reason: reason.into(),
            retention_class: row.retention_class.clone(),
        };
        let audit = AuditEntry {
            at_ms: ms(now),
            actor: actor.into(),
            action: "erase".into(),
            recording_id: Some(id.into()),
            detail: format!("reason={reason}"),
        };
        self.block(self.meta.erase(id, &tomb, &audit))??;
        self.metrics.erased(reason);
        Ok(())
    }

    /// Erases every recording whose caller number matches `number` (after normalisation).
    /// Returns (erased ids, ids kept because of legal hold or still recording).
    ///
    /// Consent-ledger rows of the subject are kept (the table is append-only): they hold no
    /// number, audio or text, only the pseudonymous keyed hash, and they are the controller's
    /// proof of consent, refusal or withdrawal (GDPR art. 7(1); art. 17(3)(e) exempts data needed
    /// for legal claims). The audit record counts them so the DPO can see what was kept.
    pub fn erase_subject(&self, number: &Pii<String>, actor: &str, now: SystemTime) -> Result<SweepReport, VaultError> {
        let mut report = SweepReport::default();
        let Some(hash) = self.keys.subject_hash(number.expose()) else {
            return Ok(report);
        };
        for id in self.block(self.meta.ids_by_subject(&hash))?? {
            let row = self.get(&id)?;
            if row.legal_hold || row.state == RecordingState::Recording {
                report.held.push(id);
                continue;
            }
            self.erase_row(&row, "subject_request", actor, now)?;
            report.erased.push(id);
        }
        let ledger_kept = self.block(self.meta.consent_rows(None, Some(&hash)))??.len();
        // The audit record says a subject request happened and what it did, never for whom.
        self.audit(
            actor,
            "erase.subject",
            None,
            &format!("erased={} kept={} consent_ledger_kept={ledger_kept}", report.erased.len(), report.held.len()),
            now,
        )?;
        Ok(report)
    }

    /// Consent-ledger rows of a call, of a subject (by the keyed hash of the normalised number;
    /// a value with no digits matches nothing), or all of them; oldest first.
    pub fn consent_records(&self, q: &ConsentQuery) -> Result<Vec<ConsentRow>, VaultError> {
        let (call, subject) = match q {
            ConsentQuery::Call(c) => (Some(c.as_str()), None),
            ConsentQuery::Subject(n) => match self.keys.subject_hash(n.expose()) {
                Some(h) => (None, Some(h)),
                None => return Ok(Vec::new()),
            },
            ConsentQuery::All => (None, None),
        };
        Ok(self.block(self.meta.consent_rows(call, subject.as_deref()))??)
    }

    /// Erases every closed recording whose expiry is at or before `now`, except those on hold.
    pub fn sweep(&self, now: SystemTime) -> Result<SweepReport, VaultError> {
        let mut report = SweepReport::default();
        for (id, held) in self.block(self.meta.expired(ms(now)))?? {
            if held {
                report.held.push(id);
                continue;
            }
            let row = self.get(&id)?;
            self.erase_row(&row, "retention", "retention-sweep", now)?;
            report.erased.push(id);
        }
        Ok(report)
    }

    /// Re-wraps every data key not under the active KEK with it; blobs are not touched.
    /// Returns how many keys were re-wrapped.
    pub fn rotate_keys(&self, actor: &str, now: SystemTime) -> Result<usize, VaultError> {
        let active = self.keys.active_id().to_string();
        let mut n = 0;
        for id in self.block(self.meta.keys_not_under(&active))?? {
            let Some(old) = self.block(self.meta.key(&id))?? else { continue };
            let dk = self.keys.unwrap(&old, &id).map_err(|source| VaultError::Crypto { id: id.clone(), source })?;
            let new = self.keys.wrap(&dk, &id).map_err(VaultError::Keys)?;
            if self.block(self.meta.rewrap(&id, &old, &new))?? {
                n += 1;
            }
        }
        self.audit(actor, "keys.rotate", None, &format!("active={active} rewrapped={n}"), now)?;
        Ok(n)
    }

    /// Finalises recordings left open by a crash as truncated: chunks after a gap are discarded,
    /// and every stream gets a final (empty) chunk so readers accept what was sealed. Called by
    /// the recorder at start-up; returns the ids it finalised.
    pub fn recover(&self, now: SystemTime) -> Result<Vec<String>, VaultError> {
        let mut done = Vec::new();
        for id in self.block(self.meta.ids_in_state(RecordingState::Recording))?? {
            let row = self.get(&id)?;
            let key = self.data_key(&id)?;
            let streams = (0..row.channels.len()).map(|c| StreamTag::Audio(c as u8)).chain([StreamTag::Transcript]);
            let mut discarded = 0usize;
            for stream in streams {
                let objs = self.stream_objects(&id, stream)?;
                let mut next = 0u64;
                let mut finished = false;
                for (idx, obj) in &objs {
                    let ok = !finished
                        && *idx == next
                        && crypto::open_chunk(&key, &id, stream, *idx, obj).map(|c| finished = c.last).is_ok();
                    if ok {
                        next += 1;
                    } else {
                        // Not part of the readable prefix: cannot be trusted, so it goes.
                        self.blobs.delete(&chunk_key(&id, stream, *idx))?;
                        discarded += 1;
                    }
                }
                if !finished {
                    let fin = crypto::seal_chunk(&key, &id, stream, next, true, &[])
                        .map_err(|source| VaultError::Crypto { id: id.clone(), source })?;
                    self.blobs.put(&chunk_key(&id, stream, next), &fin)?;
                }
            }
            self.block(self.meta.finish(&id, RecordingState::Truncated, ms(now)))??;
            self.audit(
                "recovery",
                "recover",
                Some(&id),
                &format!("finalised as truncated; discarded={discarded}"),
                now,
            )?;
            self.metrics.recordings_recovered.inc();
            done.push(id);
        }
        Ok(done)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix-epoch millisecond value (UTC, no time-zone database).
pub fn format_time(ms_since_epoch: i64) -> String {
    let secs = ms_since_epoch.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC) into unix-epoch milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').unwrap_or(t))),
        None => (s, None),
    };
    let mut it = date.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let (hh, mm, ss) = match time {
        Some(t) => {
            let mut it = t.splitn(3, ':');
            let hh: i64 = it.next()?.parse().ok()?;
            let mm: i64 = it.next()?.parse().ok()?;
            let ss: i64 = it.next().unwrap_or("0").parse().ok()?;
            if !(0..=23).contains(&hh) || !(0..=59).contains(&mm) || !(0..=59).contains(&ss) {
                return None;
            }
            (hh, mm, ss)
        }
        None => (0, 0, 0),
    };
    // Days-from-civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn time_format_round_trips() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("2026-11-28T02:11:03Z"), Some(1_795_831_863_000));
        assert_eq!(format_time(1_795_831_863_000), "2026-11-28T02:11:03Z");
        assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800_000));
        for bad in ["", "2024", "2024-13-01", "2024-01-01T25:00:00Z", "x-y-z", "2024-01-01Tab", "2024-01-01T-5:00"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
