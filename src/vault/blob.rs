//! Blob storage for sealed chunks: an object-store-shaped trait (put / get / delete / list by key)
//! and a local-directory implementation. An S3-compatible backend can implement the same trait.
//!
//! Blobs are already ciphertext when they get here; this module never sees plaintext and does not
//! encrypt. The directory store writes each object to a temporary file in the same filesystem,
//! fsyncs it, renames it into place and fsyncs the directory, so a crash leaves either the whole
//! object or none of it (plus, at worst, a stray ciphertext temp file that [`FsBlobStore::open`]
//! removes).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("invalid blob key `{0}`")]
    InvalidKey(String),
    #[error("blob store I/O on {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

/// Object storage by key. Keys are `/`-separated segments of `[a-z0-9._-]` not starting with `.`.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `key`, replacing any previous object, atomically and durably.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, BlobError>;
    /// Removes the object; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Keys starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
}

pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            // No segment may start with '.': that excludes `.`, `..` and the temp directory.
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

const TMP_DIR: &str = ".tmp";

/// A directory of files, one per object (`root/<key>`).
#[derive(Debug)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating) the store at `root` and removes temp files a crash left behind.
    pub fn open(root: &Path) -> Result<FsBlobStore, BlobError> {
        let io = |source| BlobError::Io { key: root.display().to_string(), source };
        fs::create_dir_all(root.join(TMP_DIR)).map_err(io)?;
        for entry in fs::read_dir(root.join(TMP_DIR)).map_err(io)? {
            let entry = entry.map_err(io)?;
            let _ = fs::remove_file(entry.path());
        }
        Ok(FsBlobStore { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        if !valid_key(key) {
            return Err(BlobError::InvalidKey(key.to_string()));
        }
        Ok(self.root.join(key))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl BlobStore for FsBlobStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let io = |source| BlobError::Io { key: key.to_string(), source };
        let parent = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(io)?;
        let mut rnd = [0u8; 12];
        rand::rng().fill_bytes(&mut rnd);
        let tmp = self.root.join(TMP_DIR).join(super::crypto::hex(&rnd));
        let result = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(key)?;
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::NotFound(key.to_string()),
            _ => BlobError::Io { key: key.to_string(), source: e },
        })
    }

    fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BlobError::Io { key: key.to_string(), source: e }),
        }
        // Prune now-empty directories up to the root so erased recordings leave no names behind.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        if let Some(p) = path.parent() {
            let _ = sync_dir(if p.exists() { p } else { &self.root });
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        // Walk only the deepest directory the prefix names fully, then filter by the prefix.
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        if !dir_part.is_empty() && !valid_key(dir_part) {
            return Err(BlobError::InvalidKey(prefix.to_string()));
        }
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BlobError::Io { key: prefix.to_string(), source: e }),
            };
            for entry in entries {
                let entry = entry.map_err(|e| BlobError::Io { key: prefix.to_string(), source: e })?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else { continue };
                let rel = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                if rel == TMP_DIR {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| BlobError::Io { key: rel.clone(), source: e })?;
                if ft.is_dir() {
                    stack.push(path);
                } else if rel.starts_with(prefix) {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::open(dir.path()).unwrap();
        s.put("rec/ab/ch0/0000000001", b"one").unwrap();
        s.put("rec/ab/ch0/0000000000", b"zero").unwrap();
        s.put("rec/ab/tx/0000000000", b"t").unwrap();
        s.put("rec/abc/tx/0000000000", b"other").unwrap();
        assert_eq!(s.get("rec/ab/ch0/0000000000").unwrap(), b"zero");
        s.put("rec/ab/ch0/0000000000", b"replaced").unwrap();
        assert_eq!(s.get("rec/ab/ch0/0000000000").unwrap(), b"replaced");
        assert_eq!(
            s.list("rec/ab/").unwrap(),
            vec!["rec/ab/ch0/0000000000", "rec/ab/ch0/0000000001", "rec/ab/tx/0000000000"]
        );
        assert_eq!(s.list("rec/ab").unwrap().len(), 4);
        for k in s.list("rec/ab/").unwrap() {
            s.delete(&k).unwrap();
        }
        s.delete("rec/ab/ch0/0000000000").unwrap();
        assert!(matches!(s.get("rec/ab/tx/0000000000"), Err(BlobError::NotFound(_))));
        assert!(!dir.path().join("rec/ab").exists(), "empty directories are pruned");
        assert_eq!(s.list("").unwrap(), vec!["rec/abc/tx/0000000000"]);
        assert!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().next().is_none(), "no temp files left");
    }

    #[test]
    fn hostile_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::open(dir.path()).unwrap();
        for k in ["", "../x", "a/../../x", "/etc/passwd", "a//b", "A", "a b", ".tmp/../x", "a/./b", ".tmp/x"] {
            assert!(matches!(s.put(k, b"x"), Err(BlobError::InvalidKey(_))), "{k}");
            assert!(matches!(s.get(k), Err(BlobError::InvalidKey(_))), "{k}");
        }
        assert!(matches!(s.list("../"), Err(BlobError::InvalidKey(_))));
    }

    #[test]
    fn stray_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(FsBlobStore::open(dir.path()).unwrap());
        fs::write(dir.path().join(TMP_DIR).join("half"), b"ciphertext").unwrap();
        let s = FsBlobStore::open(dir.path()).unwrap();
        assert!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().next().is_none());
        assert!(s.list("").unwrap().is_empty());
    }
}
