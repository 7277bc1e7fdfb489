//! A set of paths held as 96-bit keyed hashes, not as paths: the paths
//! the archive's tree has are one per entry, and a hash is 12 bytes (13
//! in the table) where a `PathBuf` is 24 plus its heap copy. Two
//! SipHash-1-3 hashes with keys drawn at random for the run, so no
//! archive can be made to collide (for 10 million paths, the chance of
//! any collision is about 1 in 10^15). Paths are taken as their bytes:
//! the placer's are normalized (built from sanitized member names, joined
//! a component at a time).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A set of paths (membership only).
pub(super) struct PathSet {
    keys: (RandomState, RandomState),
    set: HashSet<Key, BuildHasherDefault<Folded>>,
}

/// A path's 96-bit hash (byte-aligned: 12 bytes in the table).
type Key = [u8; 12];

impl PathSet {
    pub fn new() -> Self {
        PathSet {
            keys: (RandomState::new(), RandomState::new()),
            set: HashSet::default(),
        }
    }

    /// Room for `n` paths in all, made at once (no table regrown, and
    /// copied, on the way).
    pub fn reserve_total(&mut self, n: usize) {
        self.set.reserve(n.saturating_sub(self.set.len()));
    }

    fn key(&self, path: &Path) -> Key {
        let bytes = path.as_os_str().as_bytes();
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&self.keys.0.hash_one(bytes).to_le_bytes());
        key[8..].copy_from_slice(&self.keys.1.hash_one(bytes).to_le_bytes()[..4]);
        key
    }

    /// Adds `path`; whether it was not there.
    pub fn insert(&mut self, path: &Path) -> bool {
        let key = self.key(path);
        self.set.insert(key)
    }

    /// Removes `path`; whether it was there.
    pub fn remove(&mut self, path: &Path) -> bool {
        let key = self.key(path);
        self.set.remove(&key)
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.set.contains(&self.key(path))
    }
}

/// The hasher of keys that are hashes already: their bytes folded into
/// 64 bits.
#[derive(Default)]
struct Folded(u64);

impl Hasher for Folded {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_its_bytes() {
        let mut set = PathSet::new();
        assert!(set.insert(Path::new("a/b")));
        assert!(!set.insert(Path::new("a/b")));
        assert!(!set.contains(Path::new("ab")));
        assert!(!set.contains(Path::new("a")));
        assert!(set.remove(Path::new("a/b")));
        assert!(!set.contains(Path::new("a/b")));
        assert!(!set.remove(Path::new("a/b")));
    }
}
