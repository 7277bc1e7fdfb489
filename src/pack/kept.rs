//! The last verified packed archive deployed to a dest, kept under
//! `<state dir>/packed/` (one file per dest, named by a hash of the dest's
//! resolved path) for the next delta fetch to reuse members from. Only
//! packed archives are kept; each deploy that placed one replaces it
//! after its post hooks (whatever they returned), unless a signal stopped
//! the run.
//! Runs on one dest hold its lock, so one run at a time reads or writes.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::{read_members, MemberRef};

const DIR: &str = "packed";

/// Where the packed archive last deployed to one dest is kept.
#[derive(Debug, Clone)]
pub struct Kept {
    dest: String,
    path: PathBuf,
}

impl Kept {
    /// The place for `dest`'s archive in `state_dir`.
    pub fn for_dest(state_dir: &Path, dest: &str) -> Kept {
        let resolved = crate::lock::resolve_link(Path::new(dest));
        let key = Sha256::digest(resolved.as_os_str().as_encoded_bytes());
        Kept {
            dest: dest.to_string(),
            path: state_dir
                .join(DIR)
                .join(format!("{}.tar.gz", hex::encode(&key[..16]))),
        }
    }

    /// The dest it is kept for.
    pub fn dest(&self) -> &str {
        &self.dest
    }

    /// The kept archive and the data members its index lists; `None`
    /// when none is kept.
    pub fn open(&self) -> Result<Option<(File, Vec<MemberRef>)>> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        let members =
            read_members(&file).with_context(|| format!("reading {}", self.path.display()))?;
        Ok(Some((file, members)))
    }

    /// Keeps `archive` (verified against the manifest's checksum) when it
    /// is a packed archive, replacing the one kept before; a plain archive
    /// is not kept. Returns whether it was.
    pub fn keep(&self, archive: &Path) -> Result<bool> {
        let packed = File::open(archive)
            .ok()
            .is_some_and(|f| read_members(&f).is_ok());
        if !packed {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!(".{name}.tmp"));
        // Removed when dropped: a part-copied archive never stays behind.
        let temp = tempfile::TempPath::try_from_path(&temp)
            .with_context(|| format!("keeping the archive at {}", temp.display()))?;
        let _ = std::fs::remove_file(&temp);
        if std::fs::hard_link(archive, &temp).is_err() {
            std::fs::copy(archive, &temp)
                .with_context(|| format!("copying the archive to {}", temp.display()))?;
        }
        temp.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_that_fails_leaves_no_part_copy_in_the_state_dir() {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("a"), "a").unwrap();
        let archive = work.path().join("app.tar.gz");
        let opts = crate::pack::Options {
            member_size: 1 << 10,
            excludes: crate::sync::Excludes::new(&[], "pack").unwrap(),
        };
        crate::pack::pack(&tree, &archive, &opts).unwrap();
        let state = work.path().join("state");
        let kept = Kept::for_dest(&state, "/srv/app");
        // A directory where the archive goes: the rename fails.
        std::fs::create_dir_all(kept.path.join("x")).unwrap();
        let e = kept.keep(&archive).unwrap_err();
        assert!(format!("{e:#}").contains("renaming to"), "{e:#}");
        let mut left: Vec<_> = std::fs::read_dir(state.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, [kept.path.file_name().unwrap()]);
        std::fs::remove_dir_all(&kept.path).unwrap();
        assert!(kept.keep(&archive).unwrap());
        assert_eq!(
            std::fs::read(&kept.path).unwrap(),
            std::fs::read(&archive).unwrap()
        );
    }
}
