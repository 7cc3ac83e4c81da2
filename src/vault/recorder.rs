//! The vault's [`RecordingSink`]: what the recording pipeline writes cleared audio, redacted
//! transcript segments and redaction spans into.
//!
//! Each open recording has its data key in memory and one buffer per stream (audio channel,
//! transcript). Audio is sealed into a chunk once `vault.chunk_ms` of it is buffered; transcript
//! segments are sealed as they arrive (they are few, and the text is what QA reads). Buffers are
//! plaintext in RAM only and zeroized; nothing reaches disk unsealed. `close` seals the rest as
//! each stream's final chunk. After a crash, sealed chunks stay readable and the buffered partial
//! chunk is lost by design; [`Recorder::start`] finalises such recordings as truncated.
//! Synchronous by contract: call it from the pipeline's worker thread, not from an async task.

use std::collections::HashMap;
use std::time::SystemTime;

use rand::RngCore;
use zeroize::Zeroizing;

use super::crypto::{self, hex, DataKey, StreamTag};
use super::meta::{ConsentRow, NewRecording, RecordingState};
use super::retention::{ClassSource, RetentionPolicy};
use super::sink::{
    ClearedAudio, CloseReason, LawfulBasis, RecordingId, RecordingMeta, RecordingSink, RedactionSpan, SinkError,
    TranscriptSegment,
};
use super::{chunk_key, framing, ms, ConsentRecord, Vault, VaultError};

/// Wall clock for the few timestamps the sink needs (close time, audit); injected by the driver.
pub type Clock = Box<dyn FnMut() -> SystemTime + Send>;

struct StreamBuf {
    next_index: u64,
    buf: Zeroizing<Vec<u8>>,
    samples: usize,
}

impl StreamBuf {
    fn new(capacity: usize) -> StreamBuf {
        // Pre-sized so pushing never reallocates: a reallocation would leave an un-zeroized copy
        // of plaintext in freed memory.
        StreamBuf { next_index: 0, buf: Zeroizing::new(Vec::with_capacity(capacity)), samples: 0 }
    }
}

struct OpenRecording {
    key: DataKey,
    sample_rate: u32,
    streams: HashMap<StreamTag, StreamBuf>,
    chunk_samples: usize,
}

/// Writes recordings into a [`Vault`].
pub struct Recorder {
    vault: Vault,
    clock: Clock,
    open: HashMap<RecordingId, OpenRecording>,
    /// Exclusive advisory lock on `recorder.lock` in the vault directory, held for the
    /// recorder's life (the OS drops it when the process dies, even by `kill -9`).
    _writer_lock: std::fs::File,
}

/// Name of the lock file that makes a recorder the vault's only writer.
pub const WRITER_LOCK: &str = "recorder.lock";

/// Takes the writer lock of the vault in `dir`, or says who holds it. Readers (the QA command
/// line, erasure, the sweep) do not take it: SQLite and the blob store serialise those; only
/// crash recovery must never run beside a live recorder.
fn take_writer_lock(dir: &std::path::Path) -> Result<std::fs::File, VaultError> {
    let path = dir.join(WRITER_LOCK);
    let io = |source| VaultError::Io { path: path.display().to_string(), source };
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(VaultError::InUse { dir: dir.display().to_string() }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

fn backend(e: VaultError) -> SinkError {
    // VaultError messages carry ids and reasons, never personal data.
    SinkError::Backend(e.to_string())
}

/// Input the sink refuses (counted as `bad_input`; storage failures come from [`backend`]).
fn reject(problem: String) -> SinkError {
    SinkError::Backend(format!("{REJECTED}{problem}"))
}

const REJECTED: &str = "rejected: ";

/// Longest recording timeline accepted: audio placed later than this is refused at write time,
/// so a bad timestamp cannot make a stored recording unreadable.
const MAX_TIMELINE_MS: u64 = 24 * 3_600_000;

fn new_id() -> RecordingId {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    RecordingId(hex(&b))
}

impl Recorder {
    /// What the application wiring calls once at start-up (from a plain thread, not an async
    /// task): opens the vault named by `settings`, counts into `metrics`, recovers, and returns
    /// the recorder with the ids it finalised as truncated. The retention sweep is
    /// `recorder.vault().sweep(now)`, run on the same thread.
    pub fn from_settings(
        settings: &crate::config::Settings,
        metrics: crate::metrics::VaultMetrics,
        clock: Clock,
    ) -> Result<(Recorder, Vec<String>), VaultError> {
        let mut vault = Vault::open(super::VaultOptions::from_settings(settings)?)?;
        vault.set_metrics(metrics);
        Recorder::start(vault, clock)
    }

    /// Takes over `vault` as its only writer (refused with [`VaultError::InUse`] while another
    /// recorder, in this process or another, holds it): first finalises recordings a crash left
    /// open.
    /// Returns the recorder and the ids it recovered.
    pub fn start(vault: Vault, mut clock: Clock) -> Result<(Recorder, Vec<String>), VaultError> {
        let lock = take_writer_lock(vault.dir())?;
        let recovered = vault.recover(clock())?;
        Ok((Recorder { vault, clock, open: HashMap::new(), _writer_lock: lock }, recovered))
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Ids of recordings open in this recorder.
    pub fn open_ids(&self) -> impl Iterator<Item = &RecordingId> {
        self.open.keys()
    }

    fn seal_put(
        &self,
        id: &RecordingId,
        key: &DataKey,
        stream: StreamTag,
        index: u64,
        last: bool,
        pt: &[u8],
    ) -> Result<(), SinkError> {
        let obj = crypto::seal_chunk(key, &id.0, stream, index, last, pt)
            .map_err(|source| backend(VaultError::Crypto { id: id.0.clone(), source }))?;
        self.vault.blobs().put(&chunk_key(&id.0, stream, index), &obj).map_err(|e| backend(e.into()))?;
        self.vault.metrics().chunks_sealed.inc();
        self.vault.metrics().bytes_sealed.inc_by(pt.len() as u64);
        Ok(())
    }

    /// Seals the stream's buffer as its next chunk (if it holds anything, or if `last`).
    fn flush(&mut self, id: &RecordingId, stream: StreamTag, last: bool) -> Result<(), SinkError> {
        let rec = self.open.get_mut(id).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        let Some(sb) = rec.streams.get_mut(&stream) else { return Ok(()) };
        if sb.buf.is_empty() && !last {
            return Ok(());
        }
        let index = sb.next_index;
        let cap = sb.buf.capacity();
        let pt = std::mem::replace(&mut sb.buf, Zeroizing::new(Vec::with_capacity(cap)));
        sb.samples = 0;
        let key = rec.key.clone();
        self.seal_put(id, &key, stream, index, last, &pt)?;
        if let Some(sb) = self.open.get_mut(id).and_then(|r| r.streams.get_mut(&stream)) {
            sb.next_index = index + 1;
        }
        Ok(())
    }
}

impl Recorder {
    /// Appends one consent decision to the ledger and returns its id (what
    /// `LawfulBasis::Consent { ledger_ref }` names). The caller number is stored only as its
    /// keyed hash. Refuses a record that would blur consent and other bases: `not_required` is
    /// never consent, and a non-consent basis is recorded only with `not_required`.
    pub fn append_consent(&mut self, rec: ConsentRecord) -> Result<String, SinkError> {
        let r = self.append_consent_inner(rec);
        self.track(r)
    }

    fn append_consent_inner(&mut self, rec: ConsentRecord) -> Result<String, SinkError> {
        use crate::consent::{Basis, Method};
        if rec.call_id.is_empty() || rec.call_id.len() > 1024 {
            return Err(reject("consent record: call id must be 1 to 1024 bytes".into()));
        }
        match (&rec.basis, rec.method) {
            (Basis::Consent, Method::NotRequired) => {
                return Err(reject("consent record: method not_required cannot carry basis consent".into()))
            }
            (Basis::Other(name), m) if m != Method::NotRequired || name.is_empty() || name == "consent" => {
                return Err(reject("consent record: a non-consent basis needs method not_required and a name".into()))
            }
            _ => {}
        }
        let id = format!("cl-{}", new_id().0);
        let prompt = rec.prompt.as_ref();
        let row = ConsentRow {
            id: id.clone(),
            call_id: rec.call_id,
            subject_hash: self.vault.keys().subject_hash(rec.caller.expose()),
            route: rec.route,
            basis: rec.basis.as_str().to_string(),
            method: rec.method.as_str().to_string(),
            decision: rec.decision.as_str().to_string(),
            prompt_id: prompt.map(|p| p.id.clone()),
            prompt_language: prompt.map(|p| p.language.clone()),
            prompt_sha256: prompt.map(|p| p.sha256.clone()),
            decided_at_ms: ms(rec.decided_at),
            recording_id: rec.recording_id,
        };
        self.vault.block(self.vault.meta().append_consent(&row)).map_err(backend)?.map_err(|e| backend(e.into()))?;
        Ok(id)
    }

    fn open_inner(&mut self, meta: RecordingMeta) -> Result<RecordingId, SinkError> {
        if meta.channels.is_empty() || meta.channels.len() > 8 {
            return Err(reject(format!("{} channels: between 1 and 8 are supported", meta.channels.len())));
        }
        if !(8_000..=48_000).contains(&meta.sample_rate) {
            return Err(reject(format!("sample rate {} Hz is not supported", meta.sample_rate)));
        }
        let id = new_id();
        let key = DataKey::generate();
        let wrapped = self.vault.keys().wrap(&key, &id.0).map_err(|e| backend(VaultError::Keys(e)))?;
        let (class, source) =
            self.vault.retention().classify(&meta.route, &meta.basis, meta.retention_class.as_deref());
        let expires = RetentionPolicy::expiry(class, meta.started_at);
        let mut parties = Zeroizing::new(Vec::new());
        framing::push_str(&mut parties, &meta.call_id);
        framing::push_str(&mut parties, meta.caller.expose());
        framing::push_str(&mut parties, meta.callee.expose());
        let sealed_parties = crypto::seal_chunk(&key, &id.0, StreamTag::Parties, 0, true, &parties)
            .map_err(|source| backend(VaultError::Crypto { id: id.0.clone(), source }))?;
        if let LawfulBasis::Other { name } = &meta.basis {
            if name.is_empty() {
                return Err(reject("lawful basis name is empty".into()));
            }
        }
        let row = NewRecording {
            id: id.0.clone(),
            started_at_ms: ms(meta.started_at),
            route: meta.route.clone(),
            sample_rate: meta.sample_rate,
            channels: meta.channels.clone(),
            subject_hash: self.vault.keys().subject_hash(meta.caller.expose()),
            basis: meta.basis.clone(),
            retention_class: class.name.clone(),
            expires_at_ms: ms(expires),
            sealed_parties,
            key: wrapped,
        };
        let class_source = match source {
            ClassSource::Header => "header".to_string(),
            ClassSource::Rule(i) => format!("rule {i}"),
            ClassSource::Default => "default".to_string(),
        };
        self.vault.block(self.vault.meta().insert(&row)).map_err(backend)?.map_err(|e| backend(e.into()))?;
        let now = (self.clock)();
        self.vault
            .audit("recorder", "create", Some(&id.0), &format!("class={} ({class_source})", row.retention_class), now)
            .map_err(backend)?;
        let chunk_samples = (meta.sample_rate as usize * self.vault.chunk_ms() as usize / 1000).max(1);
        let mut streams = HashMap::new();
        for c in 0..meta.channels.len() {
            // Room for the samples plus per-frame headers of 20 ms frames.
            let cap = chunk_samples * 2 + (chunk_samples / 160 + 8) * 12 + 4096;
            streams.insert(StreamTag::Audio(c as u8), StreamBuf::new(cap));
        }
        streams.insert(StreamTag::Transcript, StreamBuf::new(4096));
        self.open.insert(id.clone(), OpenRecording { key, sample_rate: meta.sample_rate, streams, chunk_samples });
        Ok(id)
    }

    fn audio_inner(&mut self, id: &RecordingId, audio: ClearedAudio) -> Result<(), SinkError> {
        let rec = self.open.get_mut(id).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        if audio.sample_rate() != rec.sample_rate {
            return Err(reject(format!("audio at {} Hz for a {} Hz recording", audio.sample_rate(), rec.sample_rate)));
        }
        let len_ms = audio.samples().len() as u64 * 1000 / u64::from(rec.sample_rate);
        if audio.start_ms().saturating_add(len_ms) > MAX_TIMELINE_MS {
            return Err(reject(format!("audio at {} ms is beyond the 24 h timeline", audio.start_ms())));
        }
        let stream = StreamTag::Audio(audio.channel());
        let chunk_samples = rec.chunk_samples;
        let sb = rec.streams.get_mut(&stream).ok_or_else(|| {
            SinkError::Backend(format!("channel {} is not in the recording's layout", audio.channel()))
        })?;
        let needed = 12 + audio.samples().len() * 2;
        if sb.buf.len() + needed > sb.buf.capacity() {
            // Would reallocate: seal what is buffered first (a short chunk is fine).
            self.flush(id, stream, false)?;
        }
        let rec = self.open.get_mut(id).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        let sb = rec.streams.get_mut(&stream).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        if needed > sb.buf.capacity() {
            // An oversized frame gets a buffer of its own, sealed at once.
            let mut own = Zeroizing::new(Vec::with_capacity(needed));
            framing::push_audio(&mut own, audio.start_ms(), audio.samples());
            let index = sb.next_index;
            let key = rec.key.clone();
            self.seal_put(id, &key, stream, index, false, &own)?;
            if let Some(sb) = self.open.get_mut(id).and_then(|r| r.streams.get_mut(&stream)) {
                sb.next_index = index + 1;
            }
            return Ok(());
        }
        framing::push_audio(&mut sb.buf, audio.start_ms(), audio.samples());
        sb.samples += audio.samples().len();
        if sb.samples >= chunk_samples {
            self.flush(id, stream, false)?;
        }
        Ok(())
    }

    fn transcript_inner(&mut self, id: &RecordingId, segment: TranscriptSegment) -> Result<(), SinkError> {
        let rec = self.open.get_mut(id).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        if !rec.streams.contains_key(&StreamTag::Audio(segment.channel)) {
            return Err(reject(format!("transcript for channel {} not in the layout", segment.channel)));
        }
        if segment.end_ms < segment.start_ms || segment.text.expose().len() > 1 << 20 {
            return Err(reject("transcript segment with end before start, or over 1 MiB".into()));
        }
        let sb = rec.streams.get_mut(&StreamTag::Transcript).ok_or_else(|| SinkError::UnknownRecording(id.clone()))?;
        if sb.buf.len() + 21 + segment.text.expose().len() > sb.buf.capacity() {
            sb.buf = Zeroizing::new(Vec::with_capacity(21 + segment.text.expose().len()));
        }
        framing::push_segment(&mut sb.buf, &segment);
        self.flush(id, StreamTag::Transcript, false)
    }

    fn span_inner(&mut self, id: &RecordingId, span: RedactionSpan) -> Result<(), SinkError> {
        if !self.open.contains_key(id) {
            return Err(SinkError::UnknownRecording(id.clone()));
        }
        self.vault.block(self.vault.meta().add_span(&id.0, &span)).map_err(backend)?.map_err(|e| backend(e.into()))
    }

    fn close_inner(&mut self, id: &RecordingId, reason: CloseReason) -> Result<(), SinkError> {
        if !self.open.contains_key(id) {
            return Err(SinkError::UnknownRecording(id.clone()));
        }
        let now = (self.clock)();
        if let CloseReason::Revoked { purge: true } = reason {
            // Nothing buffered is sealed: the caller withdrew consent and the policy is to purge.
            self.open.remove(id);
            self.vault
                .block(self.vault.meta().finish(&id.0, RecordingState::Revoked, ms(now)))
                .map_err(backend)?
                .map_err(|e| backend(e.into()))?;
            self.vault.metrics().closed("revoked");
            let row = self.vault.get(&id.0).map_err(backend)?;
            if row.legal_hold {
                // Legal hold outranks the purge: the sealed part stays, marked revoked.
                return self.vault.audit("recorder", "purge.held", Some(&id.0), "", now).map_err(backend);
            }
            return self.vault.erase_row(&row, "revoked", "recorder", now).map_err(backend);
        }
        let mut streams: Vec<StreamTag> =
            self.open.get(id).map(|r| r.streams.keys().copied().collect()).unwrap_or_default();
        streams.sort();
        for s in streams {
            self.flush(id, s, true)?;
        }
        self.open.remove(id);
        let state = match reason {
            CloseReason::Completed => RecordingState::Complete,
            CloseReason::Truncated => RecordingState::Truncated,
            CloseReason::Revoked { .. } => RecordingState::Revoked,
        };
        self.vault
            .block(self.vault.meta().finish(&id.0, state, ms(now)))
            .map_err(backend)?
            .map_err(|e| backend(e.into()))?;
        self.vault.metrics().closed(state.as_str());
        Ok(())
    }
}

impl Recorder {
    /// Counts a failed sink call by kind; the error itself goes back to the pipeline unchanged.
    fn track<T>(&self, r: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(e) = &r {
            let m = self.vault.metrics();
            match e {
                SinkError::UnknownRecording(_) => m.sink_error("unknown_recording"),
                SinkError::Backend(msg) if msg.starts_with(REJECTED) => m.sink_error("bad_input"),
                _ => m.sink_error("storage"),
            }
        }
        r
    }
}

impl RecordingSink for Recorder {
    fn open(&mut self, meta: RecordingMeta) -> Result<RecordingId, SinkError> {
        let r = self.open_inner(meta);
        if r.is_ok() {
            self.vault.metrics().recordings_opened.inc();
            self.vault.metrics().recordings_open.inc();
        }
        self.track(r)
    }

    fn audio(&mut self, id: &RecordingId, audio: ClearedAudio) -> Result<(), SinkError> {
        let r = self.audio_inner(id, audio);
        self.track(r)
    }

    fn transcript(&mut self, id: &RecordingId, segment: TranscriptSegment) -> Result<(), SinkError> {
        let r = self.transcript_inner(id, segment);
        self.track(r)
    }

    fn span(&mut self, id: &RecordingId, span: RedactionSpan) -> Result<(), SinkError> {
        let r = self.span_inner(id, span);
        self.track(r)
    }

    fn close(&mut self, id: &RecordingId, reason: CloseReason) -> Result<(), SinkError> {
        let was_open = self.open.contains_key(id);
        let r = self.close_inner(id, reason);
        if was_open && !self.open.contains_key(id) {
            self.vault.metrics().recordings_open.dec();
        }
        self.track(r)
    }

    /// Honoured only with `retention.trust_header`, like the class asked for at creation; an
    /// unknown class is refused (counted as bad input) and the recording keeps its class.
    fn retention_class(&mut self, id: &RecordingId, class: &str) -> Result<(), SinkError> {
        if !self.vault.retention().trusts_header() {
            return Ok(());
        }
        let now = (self.clock)();
        let r = match self.vault.set_class(&id.0, class, "pbx", now) {
            Err(VaultError::UnknownClass(c)) => Err(reject(format!("no retention class `{c}`"))),
            Err(VaultError::UnknownRecording(_)) => Err(SinkError::UnknownRecording(id.clone())),
            r => r.map_err(backend),
        };
        self.track(r)
    }
}
