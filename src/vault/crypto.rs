//! Envelope encryption for recordings: per-recording data keys, key-encryption keys (KEKs) with
//! ids, and authenticated chunk sealing.
//!
//! Every recording gets a fresh random 256-bit [`DataKey`]. Its content is sealed in chunks with
//! AES-256-GCM; each chunk's nonce and associated data bind the recording id, the stream (audio
//! channel, transcript, metadata), the chunk index and a final-chunk flag, so a reader detects a
//! chunk moved to another place, a stream cut short, or a flipped byte. The data key itself is
//! stored only wrapped (AES-256-GCM) by a KEK from the [`Keyring`]; rotating KEKs re-wraps data
//! keys and never touches the sealed blobs. Deleting the wrapped key is crypto-shredding.
//! Secret material is zeroized on drop and never printed (`Debug` shows ids only).
//! This module does no I/O beyond reading a key file or environment variable in [`Keyring::load`].

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Environment variable that, when set, replaces the key file (same format; `;` may separate lines).
pub const KEYS_ENV: &str = "CALLVEIL_VAULT_KEYS";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Chunk object header: magic "CVC", format version, flags, stream tag, index (u64 BE).
const CHUNK_MAGIC: [u8; 4] = *b"CVC1";
pub const CHUNK_HEADER_LEN: usize = 4 + 1 + 1 + 8;
const FLAG_FINAL: u8 = 1;
const WRAP_AAD: &[u8] = b"callveil/data-key/v1";
const CHUNK_AAD: &[u8] = b"callveil/chunk/v1";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {path}: {problem}")]
    KeyFile { path: String, problem: String },
    #[error("key `{0}` is not in the key file (it may have been removed before every data key was re-wrapped)")]
    UnknownKek(String),
    #[error("data key cannot be unwrapped with key `{0}`: wrong key file, or the wrapped key was altered")]
    WrongKey(String),
    #[error(
        "chunk {index} of stream {stream} failed authentication: the blob was altered, or sealed with another key"
    )]
    Tampered { stream: StreamTag, index: u64 },
    #[error("chunk stored as {stream}/{index} claims to be {claimed_stream}/{claimed_index}: blobs were moved")]
    Misplaced { stream: StreamTag, index: u64, claimed_stream: StreamTag, claimed_index: u64 },
    #[error("stream {stream} is truncated: {chunks} chunks and no final chunk")]
    Truncated { stream: StreamTag, chunks: u64 },
    #[error("stream {stream} is missing chunk {index}")]
    Gap { stream: StreamTag, index: u64 },
    #[error("stream {stream} has chunks after its final chunk {index}")]
    TrailingChunks { stream: StreamTag, index: u64 },
    #[error("chunk {index} of stream {stream} is malformed: {problem}")]
    Malformed { stream: StreamTag, index: u64, problem: &'static str },
    #[error("encryption failed")]
    Seal,
}

/// Which stream of a recording a chunk belongs to. Bound into every chunk's nonce and AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamTag {
    /// Audio channel N (index into `RecordingMeta::channels`).
    Audio(u8),
    /// Redacted transcript segments.
    Transcript,
    /// The sealed call identity (call id, caller, callee) kept in the metadata row.
    Parties,
}

impl StreamTag {
    fn byte(self) -> u8 {
        match self {
            StreamTag::Audio(c) => c & 0x7f,
            StreamTag::Transcript => 0xf0,
            StreamTag::Parties => 0xf1,
        }
    }

    fn from_byte(b: u8) -> Option<StreamTag> {
        match b {
            0..=0x7f => Some(StreamTag::Audio(b)),
            0xf0 => Some(StreamTag::Transcript),
            0xf1 => Some(StreamTag::Parties),
            _ => None,
        }
    }

    /// The path segment used in blob keys (`ch0`, `ch1`, `tx`).
    pub fn name(self) -> String {
        match self {
            StreamTag::Audio(c) => format!("ch{c}"),
            StreamTag::Transcript => "tx".to_string(),
            StreamTag::Parties => "parties".to_string(),
        }
    }

    pub fn parse_name(s: &str) -> Option<StreamTag> {
        if s == "tx" {
            return Some(StreamTag::Transcript);
        }
        let n: u8 = s.strip_prefix("ch")?.parse().ok()?;
        (n <= 0x7f).then_some(StreamTag::Audio(n))
    }
}

impl fmt::Display for StreamTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A recording's 256-bit data key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// A fresh key from the thread-local CSPRNG (ChaCha, seeded by the OS).
    pub fn generate() -> DataKey {
        let mut k = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut k);
        DataKey(k)
    }

    fn cipher(&self) -> Aes256Gcm {
        // A 32-byte slice always has the right length for AES-256.
        Aes256Gcm::new(&self.0.into())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key wrapped by the KEK `kek_id`: `nonce || ciphertext+tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_id: String,
    pub bytes: Vec<u8>,
}

fn chunk_nonce(stream: StreamTag, index: u64, last: bool) -> [u8; NONCE_LEN] {
    // Unique per (key, stream, index, final flag): a final marker written at index n during crash
    // recovery never shares a nonce with a data chunk n that may have been half-written.
    let mut n = [0u8; NONCE_LEN];
    n[0] = stream.byte();
    n[1] = u8::from(last);
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

fn chunk_aad(rec_id: &str, stream: StreamTag, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CHUNK_AAD.len() + rec_id.len() + 16);
    aad.extend_from_slice(CHUNK_AAD);
    aad.extend_from_slice(&(rec_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(rec_id.as_bytes());
    aad.push(stream.byte());
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Seals one chunk into the object bytes stored in the blob store.
pub fn seal_chunk(
    key: &DataKey,
    rec_id: &str,
    stream: StreamTag,
    index: u64,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = chunk_nonce(stream, index, last);
    let aad = chunk_aad(rec_id, stream, index, last);
    let ct =
        key.cipher().encrypt(&nonce.into(), Payload { msg: plaintext, aad: &aad }).map_err(|_| CryptoError::Seal)?;
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + ct.len());
    out.extend_from_slice(&CHUNK_MAGIC);
    out.push(if last { FLAG_FINAL } else { 0 });
    out.push(stream.byte());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// An opened chunk: its plaintext and whether it is the stream's final chunk.
pub struct OpenedChunk {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub last: bool,
}

/// Opens a chunk found at `stream`/`index`; fails if it was sealed for another place.
pub fn open_chunk(
    key: &DataKey,
    rec_id: &str,
    stream: StreamTag,
    index: u64,
    object: &[u8],
) -> Result<OpenedChunk, CryptoError> {
    let malformed = |problem| CryptoError::Malformed { stream, index, problem };
    if object.len() < CHUNK_HEADER_LEN + TAG_LEN {
        return Err(malformed("shorter than header and tag"));
    }
    if object[..4] != CHUNK_MAGIC {
        return Err(malformed("bad magic"));
    }
    let flags = object[4];
    if flags & !FLAG_FINAL != 0 {
        return Err(malformed("unknown flags"));
    }
    let last = flags & FLAG_FINAL != 0;
    let claimed_stream = StreamTag::from_byte(object[5]).ok_or_else(|| malformed("unknown stream tag"))?;
    let mut ib = [0u8; 8];
    ib.copy_from_slice(&object[6..14]);
    let claimed_index = u64::from_be_bytes(ib);
    if claimed_stream != stream || claimed_index != index {
        return Err(CryptoError::Misplaced { stream, index, claimed_stream, claimed_index });
    }
    // The header is only a hint: the values that decrypt are the expected ones plus the flag, and
    // the flag itself is authenticated through nonce and AAD.
    let nonce = chunk_nonce(stream, index, last);
    let aad = chunk_aad(rec_id, stream, index, last);
    let pt = key
        .cipher()
        .decrypt(&nonce.into(), Payload { msg: &object[CHUNK_HEADER_LEN..], aad: &aad })
        .map_err(|_| CryptoError::Tampered { stream, index })?;
    Ok(OpenedChunk { plaintext: Zeroizing::new(pt), last })
}

/// Opens a whole stream given its chunk objects in index order, checking that indices run
/// 0..n without gaps and that the last one (and only it) carries the final flag.
pub fn open_stream<'a>(
    key: &DataKey,
    rec_id: &str,
    stream: StreamTag,
    chunks: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<Vec<Zeroizing<Vec<u8>>>, CryptoError> {
    let mut out = Vec::new();
    let mut expected = 0u64;
    let mut finished: Option<u64> = None;
    for (index, object) in chunks {
        if let Some(f) = finished {
            return Err(CryptoError::TrailingChunks { stream, index: f });
        }
        if index != expected {
            return Err(CryptoError::Gap { stream, index: expected });
        }
        let c = open_chunk(key, rec_id, stream, index, object)?;
        if c.last {
            finished = Some(index);
        }
        out.push(c.plaintext);
        expected += 1;
    }
    if finished.is_none() {
        return Err(CryptoError::Truncated { stream, chunks: expected });
    }
    Ok(out)
}

/// A key-encryption key with its id. Zeroized on drop.
struct Kek {
    id: String,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl Kek {
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }
}

/// The vault's secrets: KEKs (the last one is active for new wraps; older ones stay to unwrap
/// until `keys rotate` has re-wrapped everything) and the pepper for subject hashes.
///
/// Key file format (also accepted from [`KEYS_ENV`], with `;` allowed as a line separator):
/// ```text
/// # comments and blank lines are ignored
/// pepper <64 hex digits>
/// kek <id> <64 hex digits>
/// ```
/// The pepper must never change: subject lookup for erasure depends on it.
pub struct Keyring {
    keks: Vec<Kek>,
    pepper: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keks.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("kek_ids", &ids).finish_non_exhaustive()
    }
}

fn decode_hex32(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let b = s.as_bytes();
    if b.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn valid_kek_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Keyring {
    /// Parses key-file text. `source` names it in errors; secrets are never echoed.
    pub fn parse(text: &str, source: &str) -> Result<Keyring, CryptoError> {
        let err = |problem: String| CryptoError::KeyFile { path: source.to_string(), problem };
        let mut keks: Vec<Kek> = Vec::new();
        let mut pepper = None;
        for (n, line) in text.split(['\n', ';']).enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["pepper", hexkey] => {
                    let k = decode_hex32(hexkey)
                        .ok_or_else(|| err(format!("entry {}: pepper must be 64 hex digits", n + 1)))?;
                    if pepper.is_some() {
                        return Err(err(format!("entry {}: more than one pepper", n + 1)));
                    }
                    pepper = Some(Zeroizing::new(k.to_vec()));
                }
                ["kek", id, hexkey] => {
                    if !valid_kek_id(id) {
                        return Err(err(format!("entry {}: key id must be 1-64 of [A-Za-z0-9._-]", n + 1)));
                    }
                    if keks.iter().any(|k| k.id == *id) {
                        return Err(err(format!("entry {}: key id `{id}` appears twice", n + 1)));
                    }
                    let key = decode_hex32(hexkey)
                        .ok_or_else(|| err(format!("entry {}: key `{id}` must be 64 hex digits", n + 1)))?;
                    keks.push(Kek { id: id.to_string(), key });
                }
                _ => return Err(err(format!("entry {}: expected `pepper HEX` or `kek ID HEX`", n + 1))),
            }
        }
        if keks.is_empty() {
            return Err(err("no `kek` entry".into()));
        }
        let pepper = pepper.ok_or_else(|| err("no `pepper` entry".into()))?;
        Ok(Keyring { keks, pepper })
    }

    /// Loads from [`KEYS_ENV`] if it is set, else from `path`. With `create`, a missing file is
    /// created (mode 0600) with a fresh pepper and KEK; otherwise a missing file is an error.
    pub fn load(path: &Path, create: bool) -> Result<Keyring, CryptoError> {
        if let Ok(text) = std::env::var(KEYS_ENV) {
            return Keyring::parse(&text, KEYS_ENV);
        }
        let shown = path.display().to_string();
        let err = |problem: String| CryptoError::KeyFile { path: shown.clone(), problem };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode =
                        std::fs::metadata(path).map_err(|e| err(format!("cannot stat: {e}")))?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(err(format!(
                            "readable by group or others (mode {:o}); run `chmod 600` on it",
                            mode & 0o777
                        )));
                    }
                }
                Keyring::parse(&text, &shown)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let text = Zeroizing::new(Keyring::generate_file_text("k1"));
                write_secret_file(path, text.as_bytes(), false).map_err(|e| err(format!("cannot create: {e}")))?;
                Keyring::parse(&text, &shown)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err(format!(
                "cannot read: {e}; create it with `callveil keys init` (or set vault.create_keys = true, \
                 or put the keys in {KEYS_ENV})"
            ))),
            Err(e) => Err(err(format!("cannot read: {e}"))),
        }
    }

    /// Text of a new key file: a fresh pepper and one KEK named `kek_id`.
    pub fn generate_file_text(kek_id: &str) -> String {
        format!(
            "# callveil vault keys. Keep secret (mode 0600) and backed up: losing them loses every recording.\n\
             # The pepper must never change. The last `kek` line is the active key.\n\
             pepper {}\n{}",
            random_hex32(),
            Keyring::generate_kek_line(kek_id)
        )
    }

    /// A `kek ID HEX` line with fresh random key material.
    pub fn generate_kek_line(kek_id: &str) -> String {
        format!("kek {kek_id} {}\n", random_hex32())
    }

    /// Id of the KEK used for new wraps.
    pub fn active_id(&self) -> &str {
        // parse() guarantees at least one KEK.
        &self.keks[self.keks.len() - 1].id
    }

    pub fn kek_ids(&self) -> impl Iterator<Item = &str> {
        self.keks.iter().map(|k| k.id.as_str())
    }

    fn kek(&self, id: &str) -> Result<&Kek, CryptoError> {
        self.keks.iter().find(|k| k.id == id).ok_or_else(|| CryptoError::UnknownKek(id.to_string()))
    }

    fn wrap_aad(kek_id: &str, rec_id: &str) -> Vec<u8> {
        let mut aad = WRAP_AAD.to_vec();
        aad.extend_from_slice(&(kek_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(kek_id.as_bytes());
        aad.extend_from_slice(rec_id.as_bytes());
        aad
    }

    /// Wraps `dk` for recording `rec_id` with the active KEK.
    pub fn wrap(&self, dk: &DataKey, rec_id: &str) -> Result<WrappedKey, CryptoError> {
        let kek = &self.keks[self.keks.len() - 1];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Keyring::wrap_aad(&kek.id, rec_id);
        let ct =
            kek.cipher().encrypt(&nonce.into(), Payload { msg: &dk.0, aad: &aad }).map_err(|_| CryptoError::Seal)?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ct);
        Ok(WrappedKey { kek_id: kek.id.clone(), bytes })
    }

    /// Unwraps a data key; fails clearly when the KEK is missing or wrong.
    pub fn unwrap(&self, wrapped: &WrappedKey, rec_id: &str) -> Result<DataKey, CryptoError> {
        let kek = self.kek(&wrapped.kek_id)?;
        if wrapped.bytes.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return Err(CryptoError::WrongKey(wrapped.kek_id.clone()));
        }
        let (nonce, ct) = wrapped.bytes.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let aad = Keyring::wrap_aad(&kek.id, rec_id);
        let pt = Zeroizing::new(
            kek.cipher()
                .decrypt(&n.into(), Payload { msg: ct, aad: &aad })
                .map_err(|_| CryptoError::WrongKey(wrapped.kek_id.clone()))?,
        );
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&pt);
        Ok(DataKey(k))
    }

    /// Keyed hash (HMAC-SHA-256 with the pepper) of a normalised subject number, hex encoded.
    /// `None` when the input holds no digits (nothing to look up by).
    pub fn subject_hash(&self, number: &str) -> Option<String> {
        let norm = Zeroizing::new(normalise_number(number)?);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.pepper).ok()?;
        mac.update(b"callveil/subject/v1:");
        mac.update(norm.as_bytes());
        Some(hex(&mac.finalize().into_bytes()))
    }
}

fn random_hex32() -> String {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rand::rng().fill_bytes(&mut *k);
    hex(&*k)
}

/// Writes a secret file atomically with mode 0600 (`append` adds to an existing file instead).
pub fn write_secret_file(path: &Path, bytes: &[u8], append: bool) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    if append {
        opts.append(true);
    } else {
        opts.write(true).create_new(true);
    }
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The caller number as subject lookups see it: the user part of a `sip:`/`tel:` URI, digits
/// only, with an international `00` prefix folded into `+`'s meaning (both become bare digits).
/// National-format numbers are not rewritten: without a home country that would be guessing.
pub fn normalise_number(input: &str) -> Option<String> {
    let s = input.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_prefix("sips:").or_else(|| s.strip_prefix("sip:")).or_else(|| s.strip_prefix("tel:")).unwrap_or(s);
    let user = s.split(['@', ';', '>']).next().unwrap_or("");
    let digits: String = user.chars().filter(char::is_ascii_digit).collect();
    let digits =
        if !user.trim_start().starts_with('+') && digits.starts_with("00") { digits[2..].to_string() } else { digits };
    (!digits.is_empty()).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::parse(&Keyring::generate_file_text("k1"), "test").unwrap()
    }

    fn stream_objects(key: &DataKey, rec: &str, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let n = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| seal_chunk(key, rec, StreamTag::Audio(0), i as u64, i + 1 == n, p).unwrap())
            .collect()
    }

    fn open(key: &DataKey, rec: &str, objs: &[(u64, Vec<u8>)]) -> Result<Vec<Vec<u8>>, CryptoError> {
        open_stream(key, rec, StreamTag::Audio(0), objs.iter().map(|(i, o)| (*i, o.as_slice())))
            .map(|v| v.into_iter().map(|z| z.to_vec()).collect())
    }

    #[test]
    fn round_trip() {
        let k = DataKey::generate();
        let objs = stream_objects(&k, "r1", &[b"hello", b"", b"world"]);
        let indexed: Vec<_> = objs.into_iter().enumerate().map(|(i, o)| (i as u64, o)).collect();
        assert_eq!(open(&k, "r1", &indexed).unwrap(), vec![b"hello".to_vec(), vec![], b"world".to_vec()]);
        // Ciphertext does not contain the plaintext.
        assert!(!indexed[0].1.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let k = DataKey::generate();
        let obj = seal_chunk(&k, "r1", StreamTag::Transcript, 3, false, b"card [PAN]").unwrap();
        for i in 0..obj.len() {
            for bit in 0..8 {
                let mut bad = obj.clone();
                bad[i] ^= 1 << bit;
                assert!(open_chunk(&k, "r1", StreamTag::Transcript, 3, &bad).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn reordering_truncation_and_moves_are_detected() {
        let k = DataKey::generate();
        let objs = stream_objects(&k, "r1", &[b"a", b"b", b"c"]);
        // Swapped chunks: each object claims its original index.
        let swapped = vec![(0, objs[1].clone()), (1, objs[0].clone()), (2, objs[2].clone())];
        assert!(matches!(open(&k, "r1", &swapped), Err(CryptoError::Misplaced { .. })));
        // Swapped chunks with rewritten headers: authentication fails.
        let mut forged = objs[1].clone();
        forged[6..14].copy_from_slice(&0u64.to_be_bytes());
        let forged = vec![(0, forged), (1, objs[1].clone()), (2, objs[2].clone())];
        assert!(matches!(open(&k, "r1", &forged), Err(CryptoError::Tampered { index: 0, .. })));
        // The final chunk removed.
        let cut = vec![(0, objs[0].clone()), (1, objs[1].clone())];
        assert!(matches!(open(&k, "r1", &cut), Err(CryptoError::Truncated { chunks: 2, .. })));
        // A non-final chunk marked final by flipping the header flag.
        let mut fake_final = objs[1].clone();
        fake_final[4] = FLAG_FINAL;
        let cut = vec![(0, objs[0].clone()), (1, fake_final)];
        assert!(matches!(open(&k, "r1", &cut), Err(CryptoError::Tampered { index: 1, .. })));
        // A missing middle chunk.
        let gap = vec![(0, objs[0].clone()), (2, objs[2].clone())];
        assert!(matches!(open(&k, "r1", &gap), Err(CryptoError::Gap { index: 1, .. })));
        // A chunk from another recording (same key, to isolate the id binding).
        let other = seal_chunk(&k, "r2", StreamTag::Audio(0), 0, true, b"x").unwrap();
        assert!(matches!(open(&k, "r1", &[(0, other)]), Err(CryptoError::Tampered { .. })));
        // Another channel's chunk.
        let ch1 = seal_chunk(&k, "r1", StreamTag::Audio(1), 0, true, b"x").unwrap();
        assert!(matches!(open(&k, "r1", &[(0, ch1)]), Err(CryptoError::Misplaced { .. })));
        // Chunks after the final one.
        let one = stream_objects(&k, "r1", &[b"a"]);
        let extra = vec![(0, one[0].clone()), (1, objs[1].clone())];
        assert!(matches!(open(&k, "r1", &extra), Err(CryptoError::TrailingChunks { .. })));
    }

    #[test]
    fn wrong_data_key_fails() {
        let objs = stream_objects(&DataKey::generate(), "r1", &[b"secret"]);
        let err = open(&DataKey::generate(), "r1", &[(0, objs[0].clone())]).unwrap_err();
        assert!(matches!(err, CryptoError::Tampered { .. }));
    }

    #[test]
    fn wrap_unwrap_rotate_and_wrong_kek() {
        let text = Keyring::generate_file_text("k1");
        let r1 = Keyring::parse(&text, "t").unwrap();
        let dk = DataKey::generate();
        let w = r1.wrap(&dk, "rec").unwrap();
        assert_eq!(w.kek_id, "k1");
        assert_eq!(r1.unwrap(&w, "rec").unwrap().0, dk.0);
        // Bound to the recording id.
        assert!(matches!(r1.unwrap(&w, "other"), Err(CryptoError::WrongKey(_))));
        // Rotation: a new active key; old wraps still open, new wraps use k2.
        let r2 = Keyring::parse(&format!("{text}{}", Keyring::generate_kek_line("k2")), "t").unwrap();
        assert_eq!(r2.active_id(), "k2");
        assert_eq!(r2.unwrap(&w, "rec").unwrap().0, dk.0);
        let w2 = r2.wrap(&r2.unwrap(&w, "rec").unwrap(), "rec").unwrap();
        assert_eq!(w2.kek_id, "k2");
        // A key file that has a different `k1`: a clear wrong-key error.
        let other = ring();
        assert!(matches!(other.unwrap(&w, "rec"), Err(CryptoError::WrongKey(id)) if id == "k1"));
        // A key file without k2.
        assert!(matches!(r1.unwrap(&w2, "rec"), Err(CryptoError::UnknownKek(id)) if id == "k2"));
    }

    #[test]
    fn key_file_errors_name_the_entry_and_hide_secrets() {
        let e = Keyring::parse("pepper 00\nkek k1 zz", "f").unwrap_err().to_string();
        assert!(e.contains("entry 1") && e.contains("pepper"), "{e}");
        let e = Keyring::parse(&format!("pepper {}\n", "ab".repeat(32)), "f").unwrap_err().to_string();
        assert!(e.contains("no `kek`"), "{e}");
        let secret = "cd".repeat(32);
        let e = Keyring::parse(&format!("pepper {secret}\nkek bad/id {secret}"), "f").unwrap_err().to_string();
        assert!(!e.contains(&secret) && e.contains("entry 2"), "{e}");
        assert!(!format!("{:?}", ring()).contains(&secret));
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(..)");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let created = Keyring::load(&path, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Keyring::load(&path, false).unwrap().active_id(), created.active_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&path, false).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let e = Keyring::load(&dir.path().join("missing"), false).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn subject_hash_normalises_and_is_keyed() {
        let r = ring();
        let h = r.subject_hash("+34 600-111-222").unwrap();
        assert_eq!(r.subject_hash("sip:+34600111222@carrier.example;user=phone").unwrap(), h);
        assert_eq!(r.subject_hash("tel:0034600111222").unwrap(), h);
        assert_ne!(r.subject_hash("+34600111223").unwrap(), h);
        assert_ne!(ring().subject_hash("+34600111222").unwrap(), h, "different pepper, different hash");
        assert!(r.subject_hash("sip:anonymous@x").is_none());
        assert!(!h.contains("600111222"));
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes where a chunk should be: an error, never a panic, never plaintext.
        #[test]
        fn open_chunk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), index in 0u64..4) {
            let key = DataKey::generate();
            prop_assert!(open_chunk(&key, "r", StreamTag::Audio(0), index, &bytes).is_err());
        }

        /// Chunk plaintext framing parsers on arbitrary bytes: None or a value, never a panic.
        #[test]
        fn framing_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = crate::vault::framing::parse_audio(&bytes);
            let _ = crate::vault::framing::parse_segments(&bytes);
            let mut b: &[u8] = &bytes;
            let _ = crate::vault::framing::take_str(&mut b);
        }

        /// Hostile key files and subject numbers: errors, never panics.
        #[test]
        fn key_file_and_number_parsers_never_panic(text in "\\PC{0,200}", number in "\\PC{0,40}") {
            let _ = Keyring::parse(&text, "t");
            let _ = normalise_number(&number);
            let _ = StreamTag::parse_name(&number);
            let _ = crate::vault::parse_time(&number);
        }

        #[test]
        fn format_time_never_panics(ms in any::<i64>()) {
            let _ = crate::vault::format_time(ms);
        }
    }
}
