//! `mv`: rename the extracted tree to `dest`. `dest` must not exist or be an
//! empty directory. Across filesystems the tree is copied next to `dest`
//! first and then renamed, so `dest` never holds half a tree.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{extract_to_scratch, Job, Leftovers, Strategy};
use crate::step::{AtStep, Failure, Step};

/// Rename (or copy + rename) the extracted tree into place.
pub struct Mv;

impl Strategy for Mv {
    fn place(&self, job: &Job<'_>) -> Result<Leftovers, Failure> {
        let tree = extract_to_scratch(job)?;
        rename(tree.path(), job.dest).at(Step::Sync)?;
        Ok(Leftovers::dir(tree))
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    log::info!("Rename srcdir {} to dest {}", from.display(), to.display());
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_then_rename(from, to),
        Err(e) => Err(e).with_context(|| format!("rename {} to {}", from.display(), to.display())),
    }
}

fn copy_then_rename(from: &Path, to: &Path) -> Result<()> {
    if fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "rename {} to {}: directory not empty",
            from.display(),
            to.display()
        );
    }
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    log::info!("{} is on another filesystem: copying", to.display());
    let staging = tempfile::Builder::new()
        .prefix(".stretcher_mv")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging dir in {}", parent.display()))?;
    let copy = staging.path().join("tree");
    copy_tree(from, &copy)?;
    fs::rename(&copy, to).with_context(|| format!("rename {} to {}", copy.display(), to.display()))
}

/// Copies a tree keeping modes, mtimes, symlinks and (as root) owners.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).with_context(|| format!("stat {}", from.display()))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        fs::create_dir(to).with_context(|| format!("mkdir {}", to.display()))?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        fs::copy(from, to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    }
    if crate::archive::is_root() {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    }
    if !kind.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let mtime = filetime::FileTime::from_last_modification_time(&meta);
    filetime::set_symlink_file_times(to, mtime, mtime)?;
    crate::progress::count(1);
    Ok(())
}
