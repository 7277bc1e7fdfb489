//! Checksum algorithm chosen by the length of the manifest's hex checksum:
//! 32 md5, 40 sha1, 64 sha256, 128 sha512.

use std::fmt;

use anyhow::{bail, Result};
use sha2::digest::DynDigest;

/// A checksum algorithm, as the length of a hex checksum names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 32 hex characters.
    Md5,
    /// 40 hex characters.
    Sha1,
    /// 64 hex characters.
    Sha256,
    /// 128 hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm a hex checksum of this length is made with, if any.
    pub fn of(checksum: &str) -> Option<Self> {
        match checksum.len() {
            32 => Some(Self::Md5),
            40 => Some(Self::Sha1),
            64 => Some(Self::Sha256),
            128 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Whether collisions are practical (md5, sha1): two archives with one
    /// checksum can be made, so the checksum does not pin one archive.
    pub fn is_weak(self) -> bool {
        matches!(self, Self::Md5 | Self::Sha1)
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Self::Md5 => Box::new(md5::Md5::default()),
            Self::Sha1 => Box::new(sha1::Sha1::default()),
            Self::Sha256 => Box::new(sha2::Sha256::default()),
            Self::Sha512 => Box::new(sha2::Sha512::default()),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        })
    }
}

/// A running hash of the downloaded bytes and the checksum it must match.
pub struct Verifier {
    hasher: Box<dyn DynDigest + Send>,
    expected: String,
}

impl Verifier {
    /// Picks the algorithm for `checksum`; any other length, or a non-hex
    /// character, is an error naming the field.
    pub fn new(checksum: &str) -> Result<Self> {
        let Some(algorithm) = Algorithm::of(checksum) else {
            bail!(
                "checksum must be an md5, sha1, sha256 or sha512 hex string \
                 (32, 40, 64 or 128 characters), got {} characters: {checksum:?}",
                checksum.len()
            );
        };
        if !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("checksum is not a hex string: {checksum:?}");
        }
        Ok(Self {
            hasher: algorithm.hasher(),
            expected: checksum.to_string(),
        })
    }

    /// Feeds downloaded bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Finishes the hash; returns the lowercase hex digest when it matches
    /// (case-insensitively), else the mismatch error.
    pub fn finish(self) -> Result<String> {
        let got = hex::encode(self.hasher.finalize());
        if !got.eq_ignore_ascii_case(&self.expected) {
            bail!("checksum mismatch. expected:{} got:{got}", self.expected);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sum: &str) -> Result<String> {
        let mut v = Verifier::new(sum)?;
        v.update(b"hello\n");
        v.finish()
    }

    #[test]
    fn algorithm_follows_length_and_compare_ignores_case() {
        assert!(check("b1946ac92492d2347c6235b4d2611184").is_ok());
        assert!(check("F572D396FAE9206628714FB2CE00F72E94F2258F").is_ok());
        assert!(check("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03").is_ok());
        assert!(check(
            "e7c22b994c59d9cf2b48e549b1e24666636045930d3da7c1acb299d1c3b7f931\
             f94aae41edda2c2b207a36e10f8bcb8d45223e54878f5b316e7ce3b6bc019629"
        )
        .is_ok());
    }

    #[test]
    fn mismatch_and_bad_lengths_are_errors() {
        let err = check("00000000000000000000000000000000")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("checksum mismatch. expected:0000"), "{err}");
        assert!(
            err.contains("got:b1946ac92492d2347c6235b4d2611184"),
            "{err}"
        );
        let err = check("abc").unwrap_err().to_string();
        assert!(err.contains("got 3 characters"), "{err}");
        let err = check("zz946ac92492d2347c6235b4d2611184")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a hex string"), "{err}");
    }
}
