//! The private extraction dir: created under `$TMPDIR` and always removed,
//! even when the archive made read-only directories in it (which a non-root
//! agent could not otherwise empty).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temp dir removed on drop, whatever modes its contents have.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a new private dir in the temp dir, named `<prefix>…`.
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating the extraction dir")?;
        Ok(ScratchDir { path: dir.keep() })
    }

    /// Creates a new private dir in `dir`, named `<prefix>…`.
    pub fn new_in(dir: &Path, prefix: &str) -> Result<Self> {
        let made = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(dir)
            .with_context(|| format!("creating an extraction dir in {}", dir.display()))?;
        Ok(ScratchDir { path: made.keep() })
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::info!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Removes the directory `dir` and everything in it, read-only
/// directories included.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if std::fs::remove_dir_all(dir).is_ok() {
        return Ok(());
    }
    // A read-only dir cannot be emptied: make every dir writable first.
    make_dirs_writable(dir);
    std::fs::remove_dir_all(dir)
}

/// Adds owner rwx to `dir` and every dir below it (symlinks not followed).
fn make_dirs_writable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_dirs_are_removed() {
        let scratch = ScratchDir::new("stretcher_test").unwrap();
        let path = scratch.path().to_path_buf();
        let inner = path.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("f"), "x").unwrap();
        for d in [&inner, &path.join("a")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        drop(scratch);
        assert!(!path.exists());
    }
}
