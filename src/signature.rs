//! Signed manifests (SPEC 8.5): with trusted minisign public keys
//! configured, `<manifest URL>.minisig` is fetched and the manifest's raw
//! bytes are verified against it before they are rendered or parsed. The
//! signature's trusted comment carries `timestamp:<unix>` (minisign's
//! default), which guards against downgrades (an older signed manifest
//! replayed onto a dest) and, with a maximum age, against freezes (a stale
//! signed manifest served forever).
//!
//! Fetching lives in [`fetch`]; everything else is plain functions of their
//! inputs, so each rule has a unit test.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use minisign_verify::{PublicKey, Signature};
use tokio::io::AsyncReadExt;

use crate::digest::Algorithm;
use crate::source;
use crate::units::format_duration;

/// A `.minisig` file is a few hundred bytes; minisign caps the trusted
/// comment at 8 KiB. Anything larger is not a signature.
const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

/// A public key manifests may be signed with.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    id: String,
    key: PublicKey,
}

impl TrustedKey {
    /// Reads the base64 line of a minisign public key (`RWQ…`), as
    /// `minisign -G` prints it and `--verify-key` takes it.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let line = text.trim();
        let key =
            PublicKey::from_base64(line).map_err(|e| format!("not a minisign public key: {e}"))?;
        let id = key_id(line).ok_or("not a minisign public key")?;
        Ok(TrustedKey { id, key })
    }

    /// Reads a minisign `.pub` file (an `untrusted comment:` line, then the
    /// key), as `--verify-key-file` takes it.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:"));
        match (lines.next(), lines.next()) {
            (Some(line), None) => {
                Self::from_base64(line).map_err(|e| format!("{}: {e}", path.display()))
            }
            _ => Err(format!(
                "{}: not a minisign public key file (expected one key line)",
                path.display()
            )),
        }
    }

    /// The key ID as minisign prints it (`1A2C24222A53F781`; no leading
    /// zeros).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What the command line asks of manifest signatures.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Keys a manifest may be signed with (more than one during a key
    /// rollover). Never empty: without keys there is no policy.
    pub keys: Vec<TrustedKey>,
    /// Deploy a manifest signed earlier than the one deployed last.
    pub allow_downgrade: bool,
    /// Deploy a manifest whose `checksum` is md5 or sha1.
    pub allow_weak_checksum: bool,
    /// Refuse signatures whose timestamp is older than this.
    pub max_age: Option<Duration>,
}

/// A signature that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// ID of the key that made it.
    pub key_id: String,
    /// Its trusted comment (signed along with the manifest).
    pub trusted_comment: String,
    /// The `timestamp:` of the trusted comment, in Unix seconds, when it
    /// has one.
    pub signed_at: Option<u64>,
}

/// Where a manifest's signature lives: its URL with `.minisig` appended to
/// the path (a query string, as on a presigned URL, stays last).
pub fn url_for(manifest_url: &str) -> String {
    match url::Url::parse(manifest_url) {
        Ok(mut url) if url.query().is_some() || url.fragment().is_some() => {
            let path = format!("{}.minisig", url.path());
            url.set_path(&path);
            url.to_string()
        }
        _ => format!("{manifest_url}.minisig"),
    }
}

/// Fetches the signature at `url`, retrying as the src download does
/// (`--retry` extra attempts, `--retry-wait` apart, any failure but a
/// permanent one). A failure means the signature is missing.
pub async fn fetch(url: &str, retry: u32, retry_wait: Duration) -> Result<String> {
    source::with_retries("signature", retry, retry_wait, || fetch_once(url))
        .await
        .map_err(|e| e.context(format!("missing signature {url}")))
}

async fn fetch_once(url: &str) -> Result<String> {
    let mut body = source::open(url).await?.body;
    let mut bytes = Vec::new();
    (&mut body)
        .take(MAX_SIGNATURE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("reading {url}"))?;
    if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
        bail!("{url} is larger than {MAX_SIGNATURE_BYTES} bytes: not a minisign signature");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{url} is not text: not a minisign signature"))
}

impl Policy {
    /// Verifies `manifest` (its raw bytes) against `signature`, the text of
    /// the `.minisig` file at `url`, then checks the signature's age. Logs
    /// the key and trusted comment on success.
    pub fn verify(&self, url: &str, manifest: &[u8], signature: &str) -> Result<Verified> {
        let verified = verify(&self.keys, url, manifest, signature)?;
        log::info!(
            "Verified manifest signature (key {}): {}",
            verified.key_id,
            verified.trusted_comment
        );
        let now = chrono::Utc::now().timestamp().try_into().unwrap_or(0);
        match (verified.signed_at, self.max_age) {
            (Some(at), Some(max)) => check_age(url, at, now, max)?,
            (None, Some(max)) => bail!(
                "signature {url} has no timestamp in its trusted comment: \
                 --max-signature-age {} cannot apply; refusing",
                format_duration(max)
            ),
            (None, None) => log::info!(
                "Signature {url} has no timestamp in its trusted comment: \
                 no downgrade or age check applies"
            ),
            (Some(_), None) => {}
        }
        Ok(verified)
    }

    /// Refuses a verified manifest's `checksum` made with an algorithm whose
    /// collisions are practical (md5, sha1), unless `--allow-weak-checksum`:
    /// the signature pins the archive no better than its checksum does.
    pub fn check_checksum(&self, checksum: &str) -> Result<()> {
        let Some(weak) = Algorithm::of(checksum).filter(|a| a.is_weak()) else {
            return Ok(());
        };
        if self.allow_weak_checksum {
            log::info!(
                "checksum is {weak}, whose collisions are practical: \
                 deploying the signed manifest anyway (--allow-weak-checksum)"
            );
            return Ok(());
        }
        bail!(
            "checksum is {weak}, whose collisions are practical: a signed manifest must pin \
             its archive by sha256 or sha512; use --allow-weak-checksum while migrating"
        )
    }

    /// Refuses `verified` when it was signed earlier than the manifest last
    /// deployed to `dest` (signed at `last`), unless `--allow-downgrade`.
    pub fn check_downgrade(
        &self,
        verified: &Verified,
        dest: &str,
        last: Option<u64>,
    ) -> Result<()> {
        let (Some(now), Some(last)) = (verified.signed_at, last) else {
            return Ok(());
        };
        if now >= last {
            return Ok(());
        }
        if self.allow_downgrade {
            log::info!(
                "Deploying a manifest signed at {} over one signed at {} (--allow-downgrade)",
                show_time(now),
                show_time(last)
            );
            return Ok(());
        }
        bail!(
            "manifest signed at {} is older than the one deployed to {dest} (signed at {}): \
             refusing a downgrade; use --allow-downgrade",
            show_time(now),
            show_time(last)
        )
    }
}

/// Checks `manifest` against the signature text with whichever trusted key
/// made it.
fn verify(keys: &[TrustedKey], url: &str, manifest: &[u8], text: &str) -> Result<Verified> {
    let malformed = |why: &dyn std::fmt::Display| anyhow!("malformed signature file {url}: {why}");
    let signature = Signature::decode(text).map_err(|e| malformed(&e))?;
    let signer = text
        .lines()
        .nth(1)
        .and_then(key_id)
        .ok_or_else(|| malformed(&"no key ID"))?;
    let candidates: Vec<&TrustedKey> = keys.iter().filter(|k| k.id == signer).collect();
    if candidates.is_empty() {
        let trusted: Vec<&str> = keys.iter().map(TrustedKey::id).collect();
        bail!(
            "signature {url} is by unknown key id {signer} (trusted: {})",
            trusted.join(", ")
        );
    }
    if !candidates
        .iter()
        .any(|k| k.key.verify(manifest, &signature, true).is_ok())
    {
        bail!(
            "bad signature {url} (key {signer}): the manifest or the trusted comment \
             was changed after signing"
        );
    }
    let trusted_comment = signature.trusted_comment().to_string();
    let signed_at = timestamp(&trusted_comment)
        .map_err(|e| anyhow!("signature {url}: trusted comment: {e}"))?;
    Ok(Verified {
        key_id: signer,
        trusted_comment,
        signed_at,
    })
}

/// The key ID in a base64 minisign key or signature line: bytes 2..10,
/// little-endian, printed as minisign prints it in a `.pub` file's comment
/// and its errors (upper-case hex, no leading zeros).
fn key_id(base64_line: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_line.trim())
        .ok()?;
    let id: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
    Some(format!("{:X}", u64::from_le_bytes(id)))
}

/// The `timestamp:<unix>` field of a trusted comment (minisign writes
/// `timestamp:1700000000\tfile:manifest.yml\thashed`).
fn timestamp(trusted_comment: &str) -> Result<Option<u64>> {
    let Some(value) = trusted_comment
        .split(['\t', ' '])
        .find_map(|field| field.strip_prefix("timestamp:"))
    else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| anyhow!("timestamp {value:?} is not a number of seconds"))
}

fn check_age(url: &str, signed_at: u64, now: u64, max: Duration) -> Result<()> {
    let age = now.saturating_sub(signed_at);
    if Duration::from_secs(age) > max {
        bail!(
            "signature {url} was made at {}, {} ago: older than --max-signature-age {}; refusing",
            show_time(signed_at),
            format_duration(Duration::from_secs(age)),
            format_duration(max)
        );
    }
    Ok(())
}

/// A signature timestamp for the log: `2024-05-01T12:00:00Z`.
fn show_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(
            || format!("timestamp:{unix}"),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `minisign -G -W` and `minisign -S -t <comment>` over MANIFEST.
    const MANIFEST: &str = "src: file:///srv/app.tar.gz\nchecksum: 0123\ndest: /srv/app\n";
    const KEY_A: &str = "RWQN77ZpWCrGH1pFNneNqzFknN7Z4R9MESXPXUW9TCkAzYk4nVx9eTGR";
    const KEY_B: &str = "RWSgSr0tuLwqvU/KYDJtizuz0x6GbmzSiHmv8PALN4yrG9r2RIRMLkP2";
    const BY_A: &str = "untrusted comment: signature from minisign secret key
RUQN77ZpWCrGH/w23DfWb0T0UwHC+u/hWOVVVDyDatGldWdftkC2gcXL1mG/rY6MBD+ljTZ/IZEYUOXMoJLLmg1jcp1TewZMMQA=
trusted comment: timestamp:1700000000\tfile:m.yml\thashed
tdKidjmkla1pk4GKIgjdMoQ/RG0qYAjTBOIydUrIySXAXgGcg2yO9/c8iJe+3Do5tXY4LaLM3P7fDtAqRFFVAg==
";
    const BY_A_NO_TIMESTAMP: &str = "untrusted comment: signature from minisign secret key
RUQN77ZpWCrGH/w23DfWb0T0UwHC+u/hWOVVVDyDatGldWdftkC2gcXL1mG/rY6MBD+ljTZ/IZEYUOXMoJLLmg1jcp1TewZMMQA=
trusted comment: release 42
rDvLZ5OazZyfKC/R9bj9UtCtFGIoShogfAOwbooHXllC5k4mwXJdb1jZJGbCqAZ1E+U5cfRlGG9WYp/LKRAPDg==
";
    const BY_A_BAD_TIMESTAMP: &str = "untrusted comment: signature from minisign secret key
RUQN77ZpWCrGH/w23DfWb0T0UwHC+u/hWOVVVDyDatGldWdftkC2gcXL1mG/rY6MBD+ljTZ/IZEYUOXMoJLLmg1jcp1TewZMMQA=
trusted comment: timestamp:soon
PrBW12rvr1C4UffJohJEjMhqHtKNe2DjeqkG81jMczYEq/c1ijBqwRzTMKf5OxmMw7Dts+f4LY6HD/8xyzXwBg==
";
    // `minisign -S -l`: the legacy mode that signs the bytes, not their hash.
    const BY_A_LEGACY: &str = "untrusted comment: signature from minisign secret key
RWQN77ZpWCrGH9EcQmFeUSPabccRUchtThYHiZbU1kCFdqdvG+Qt/Qz6FQNMGEI9reifWaNh6Fo1YJ/e63X8XdwQXqhsEXZi+QU=
trusted comment: timestamp:1700000001
G+eAan+7eVRWmwmYE/TttwOq/zj5x1Ky70iIbiJHyPF+q+Iqm9uQe501SORecGvPN1TDxVLPlEQc8SHgmjGvBA==
";
    const BY_B: &str = "untrusted comment: signature from minisign secret key
RUSgSr0tuLwqvWNKuPQwzf6XnuGl40oaCLbR6u8lYq9pLgC1ZbPUnLA6EH7Ho+1d9fM6heTdQn7Xa/coHCsmjhDnDokFtPM0xwg=
trusted comment: timestamp:1700000000\tfile:m.yml
HPbt7AcAgb8mHP3JZhfszrPuBAbGJ58YbS3UebKm3YSkY85nj5bO5dqm7BN145hHip/6tyQcD1DGJmq07RAaAw==
";
    const URL: &str = "file:///m.yml.minisig";

    fn keys(lines: &[&str]) -> Vec<TrustedKey> {
        lines
            .iter()
            .map(|l| TrustedKey::from_base64(l).unwrap())
            .collect()
    }

    fn policy(lines: &[&str]) -> Policy {
        Policy {
            keys: keys(lines),
            ..Policy::default()
        }
    }

    fn refusal(policy: &Policy, manifest: &str, signature: &str) -> String {
        let err = policy
            .verify(URL, manifest.as_bytes(), signature)
            .unwrap_err();
        format!("{err:#}")
    }

    #[test]
    fn key_ids_are_printed_as_minisign_prints_them() {
        let [a, b] = [KEY_A, KEY_B].map(|k| TrustedKey::from_base64(k).unwrap());
        assert_eq!(a.id(), "1FC62A5869B6EF0D");
        assert_eq!(b.id(), "BD2ABCB82DBD4AA0");
    }

    #[test]
    fn key_ids_have_no_leading_zeros_as_in_minisign() {
        let mut raw = vec![0x45, 0x64, 0xDA, 0x4D, 0xCD, 0xA6, 0x95, 0xB4, 0x71, 0x03];
        raw.extend([0u8; 32]);
        let line = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(key_id(&line).as_deref(), Some("371B495A6CD4DDA"));
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "RWQ", "not base64!", &KEY_A[..KEY_A.len() - 4]] {
            assert!(TrustedKey::from_base64(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_files_hold_a_comment_and_one_key_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pub");
        std::fs::write(
            &path,
            format!("untrusted comment: minisign public key 1FC62A5869B6EF0D\n{KEY_A}\n"),
        )
        .unwrap();
        assert_eq!(
            TrustedKey::from_file(&path).unwrap().id(),
            "1FC62A5869B6EF0D"
        );

        std::fs::write(&path, format!("{KEY_A}\n{KEY_B}\n")).unwrap();
        let err = TrustedKey::from_file(&path).unwrap_err();
        assert!(
            err.contains("a.pub") && err.contains("one key line"),
            "{err}"
        );
        let err = TrustedKey::from_file(&dir.path().join("missing.pub")).unwrap_err();
        assert!(err.contains("missing.pub"), "{err}");
    }

    #[test]
    fn a_good_signature_verifies_with_its_comment_and_timestamp() {
        let got = policy(&[KEY_A])
            .verify(URL, MANIFEST.as_bytes(), BY_A)
            .unwrap();
        assert_eq!(
            got,
            Verified {
                key_id: "1FC62A5869B6EF0D".into(),
                trusted_comment: "timestamp:1700000000\tfile:m.yml\thashed".into(),
                signed_at: Some(1_700_000_000),
            }
        );
        let legacy = policy(&[KEY_A])
            .verify(URL, MANIFEST.as_bytes(), BY_A_LEGACY)
            .unwrap();
        assert_eq!(legacy.signed_at, Some(1_700_000_001));
        let crlf = BY_A.replace('\n', "\r\n");
        assert!(policy(&[KEY_A])
            .verify(URL, MANIFEST.as_bytes(), &crlf)
            .is_ok());
    }

    #[test]
    fn during_a_rollover_either_key_verifies() {
        let both = policy(&[KEY_B, KEY_A]);
        assert_eq!(
            both.verify(URL, MANIFEST.as_bytes(), BY_A).unwrap().key_id,
            "1FC62A5869B6EF0D"
        );
        assert_eq!(
            both.verify(URL, MANIFEST.as_bytes(), BY_B).unwrap().key_id,
            "BD2ABCB82DBD4AA0"
        );
    }

    #[test]
    fn a_changed_manifest_or_comment_is_a_bad_signature() {
        let p = policy(&[KEY_A]);
        let err = refusal(&p, &MANIFEST.replace("/srv/app\n", "/srv/evil\n"), BY_A);
        assert!(
            err.starts_with("bad signature file:///m.yml.minisig (key 1FC62A5869B6EF0D)"),
            "{err}"
        );
        let err = refusal(&p, MANIFEST, &BY_A.replace("1700000000", "1900000000"));
        assert!(err.starts_with("bad signature"), "{err}");
    }

    #[test]
    fn a_signature_by_another_key_names_its_id() {
        let err = refusal(&policy(&[KEY_A]), MANIFEST, BY_B);
        assert_eq!(
            err,
            "signature file:///m.yml.minisig is by unknown key id BD2ABCB82DBD4AA0 \
             (trusted: 1FC62A5869B6EF0D)"
        );
    }

    #[test]
    fn malformed_signature_files_are_named() {
        let p = policy(&[KEY_A]);
        for bad in [
            "",
            "<html>not found</html>",
            &BY_A.lines().take(2).collect::<Vec<_>>().join("\n"),
            &BY_A.replace("trusted comment: ", "comment: "),
            &BY_A.replace("RUQN77", "RUQN!!"),
        ] {
            let err = refusal(&p, MANIFEST, bad);
            assert!(
                err.starts_with("malformed signature file file:///m.yml.minisig: "),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn timestamps_are_read_from_the_trusted_comment() {
        for (comment, want) in [
            (
                "timestamp:1700000000\tfile:m.yml\thashed",
                Some(1_700_000_000),
            ),
            ("file:m.yml timestamp:42", Some(42)),
            ("release 42", None),
            ("", None),
        ] {
            assert_eq!(timestamp(comment).unwrap(), want, "{comment:?}");
        }
        assert!(timestamp("timestamp:-1").is_err());
        let err = refusal(&policy(&[KEY_A]), MANIFEST, BY_A_BAD_TIMESTAMP);
        assert!(err.contains("\"soon\""), "{err}");
    }

    #[test]
    fn max_age_refuses_old_and_timestampless_signatures() {
        let old = Policy {
            max_age: Some(Duration::from_secs(3600)),
            ..policy(&[KEY_A])
        };
        let err = refusal(&old, MANIFEST, BY_A);
        assert!(
            err.contains("2023-11-14T22:13:20Z") && err.contains("--max-signature-age 1h0m0s"),
            "{err}"
        );
        let err = refusal(&old, MANIFEST, BY_A_NO_TIMESTAMP);
        assert!(err.contains("no timestamp"), "{err}");

        assert!(check_age(URL, 1000, 4600, Duration::from_secs(3600)).is_ok());
        assert!(check_age(URL, 1000, 4601, Duration::from_secs(3600)).is_err());
        // A timestamp ahead of the clock is not old.
        assert!(check_age(URL, 9000, 4600, Duration::from_secs(3600)).is_ok());

        let without = policy(&[KEY_A]);
        let got = without
            .verify(URL, MANIFEST.as_bytes(), BY_A_NO_TIMESTAMP)
            .unwrap();
        assert_eq!(got.signed_at, None);
    }

    #[test]
    fn older_signatures_than_the_deployed_one_are_downgrades() {
        let signed = |at| Verified {
            key_id: "1FC62A5869B6EF0D".into(),
            trusted_comment: String::new(),
            signed_at: at,
        };
        let p = policy(&[KEY_A]);
        let err = p
            .check_downgrade(
                &signed(Some(1_700_000_000)),
                "/srv/app",
                Some(1_700_000_060),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "manifest signed at 2023-11-14T22:13:20Z is older than the one deployed to /srv/app \
             (signed at 2023-11-14T22:14:20Z): refusing a downgrade; use --allow-downgrade"
        );
        for (now, last) in [
            (Some(1_700_000_060), Some(1_700_000_000)),
            (Some(1_700_000_000), Some(1_700_000_000)),
            (Some(1_700_000_000), None),
            (None, Some(1_700_000_000)),
        ] {
            assert!(p.check_downgrade(&signed(now), "/srv/app", last).is_ok());
        }
        let allow = Policy {
            allow_downgrade: true,
            ..p
        };
        assert!(allow
            .check_downgrade(&signed(Some(1)), "/srv/app", Some(2))
            .is_ok());
    }

    #[test]
    fn md5_and_sha1_checksums_are_refused_unless_allowed() {
        let p = policy(&[KEY_A]);
        for (sum, name) in [("0".repeat(32), "md5"), ("0".repeat(40), "sha1")] {
            let err = p.check_checksum(&sum).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("checksum is {name}, "))
                    && err.ends_with("use --allow-weak-checksum while migrating"),
                "{err}"
            );
        }
        for sum in ["0".repeat(64), "0".repeat(128)] {
            assert!(p.check_checksum(&sum).is_ok());
        }
        let allow = Policy {
            allow_weak_checksum: true,
            ..p
        };
        assert!(allow.check_checksum(&"0".repeat(32)).is_ok());
    }

    #[test]
    fn the_signature_url_appends_to_the_path() {
        for (manifest, want) in [
            ("file:///srv/m.yml", "file:///srv/m.yml.minisig"),
            ("s3://bucket/app/m.yml", "s3://bucket/app/m.yml.minisig"),
            (
                "https://h/m.yml?X-Amz-Signature=ab",
                "https://h/m.yml.minisig?X-Amz-Signature=ab",
            ),
        ] {
            assert_eq!(url_for(manifest), want);
        }
    }

    #[tokio::test]
    async fn fetching_names_the_missing_signature() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/m.yml.minisig", dir.path().display());
        let err = fetch(&url, 0, Duration::ZERO).await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("missing signature {url}: ")),
            "{err:#}"
        );
        std::fs::write(dir.path().join("m.yml.minisig"), vec![b'x'; 20 << 10]).unwrap();
        let err = fetch(&url, 0, Duration::ZERO).await.unwrap_err();
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
        std::fs::write(dir.path().join("m.yml.minisig"), BY_A).unwrap();
        assert_eq!(fetch(&url, 0, Duration::ZERO).await.unwrap(), BY_A);
    }
}
