//! The server API key: read from a file, re-read whenever the file changes (a Kubernetes Secret
//! volume swaps a symlink on rotation, a hand edit changes size or mtime), so a rotated key takes
//! effect on the next request without a restart and the old key stops working at the same time.
//!
//! Every request `stat`s the file (one syscall, far cheaper than the request itself) and re-reads
//! it only when its identity (inode, size, mtime) changed. Keys are compared in constant time for
//! a given length, so response timing does not tell an attacker how much of a guess was right.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{info, warn};

/// The shortest key accepted: 128 bits of a random hex or base64 string.
pub const MIN_KEY_BYTES: usize = 16;
/// The longest key accepted (a header longer than this is refused before any comparison).
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to read the API key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API key in {path} is {len} bytes; use {MIN_KEY_BYTES} to {MAX_KEY_BYTES} (e.g. `openssl rand -hex 32`)"
    )]
    Length { path: PathBuf, len: usize },
}

/// What identifies one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
        }
    }
}

struct Loaded {
    stamp: Stamp,
    key: Vec<u8>,
}

/// The API key, kept in step with its file.
pub struct ApiKey {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn read_key(path: &Path) -> Result<(Stamp, Vec<u8>), KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mut key = std::fs::read(path).map_err(read)?;
    // Secrets mounted from files often end with a newline that is not part of the key.
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(KeyError::Length {
            path: path.to_owned(),
            len: key.len(),
        });
    }
    Ok((Stamp::of(&meta), key))
}

impl ApiKey {
    /// Loads the key; a missing, unreadable, too short or too long key is a start-up error.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let (stamp, key) = read_key(path)?;
        Ok(ApiKey {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded { stamp, key }),
        })
    }

    /// Whether `presented` is the current key. Re-reads the file first when it changed; a file
    /// that is missing or bad at that moment keeps the last good key (a rotation in progress
    /// must not lock every backend out), and says so in the log.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(meta) = std::fs::metadata(&self.path)
            && Stamp::of(&meta) != loaded.stamp
        {
            match read_key(&self.path) {
                Ok((stamp, key)) => {
                    info!(details.path = %self.path.display(), "API key file changed; using the new key");
                    *loaded = Loaded { stamp, key };
                }
                Err(e) => {
                    // Remembered, so the warning comes once per change, not once per request.
                    loaded.stamp = Stamp::of(&meta);
                    warn!(details.reason = %e, "API key file changed but cannot be used; keeping the previous key")
                }
            }
        }
        constant_time_eq(&loaded.key, presented)
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_keys_only() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"abcde", b"abcdef"));
        assert!(!constant_time_eq(b"", b"\xff"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn follows_the_file_and_keeps_the_last_good_key() {
        let dir = std::env::temp_dir().join(format!("chat-api-key-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "first-key-0123456789\n").unwrap();
        let key = ApiKey::load(&path).unwrap();
        assert!(
            key.matches(b"first-key-0123456789"),
            "trailing newline trimmed"
        );
        assert!(!key.matches(b"first-key-012345678"));
        // Rotation by rename (as a Secret volume does it): a new inode.
        let next = dir.join("next");
        std::fs::write(&next, "second-key-0123456789").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(key.matches(b"second-key-0123456789"));
        assert!(
            !key.matches(b"first-key-0123456789"),
            "the old key stops working"
        );
        // A bad new version keeps the last good key.
        std::fs::write(&path, "short").unwrap();
        assert!(key.matches(b"second-key-0123456789"));
        std::fs::remove_file(&path).unwrap();
        assert!(key.matches(b"second-key-0123456789"));
        assert!(matches!(ApiKey::load(&path), Err(KeyError::Read { .. })));
        std::fs::write(&path, "x".repeat(MAX_KEY_BYTES + 1)).unwrap();
        assert!(matches!(ApiKey::load(&path), Err(KeyError::Length { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
