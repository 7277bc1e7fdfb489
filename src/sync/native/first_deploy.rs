//! A first deploy, into a dest that is missing or an empty directory, with
//! nothing excluded: the archive is extracted into a private dir beside
//! dest, on dest's filesystem, and renamed into place whole, so a reader
//! sees no dest or the whole tree. A dest that is a mount point (its
//! parent is another filesystem) is streamed into instead. A run killed
//! while it extracts leaves its dir, which the next deploy removes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::extract_into;
use super::Job;
use crate::scratch::ScratchDir;
use crate::step::{Failure, Step};

/// Length of the random part tempfile gives a dir's name.
const RANDOM: usize = 6;

/// The archive extracted into a private dir beside `dest`, ready to be
/// renamed into place, or `None` when it could not be renamed there (dest
/// is a mount point, or has no name) or its parent takes no new dir: then
/// files are placed one by one.
pub(super) fn extract_beside(job: &Job<'_>) -> Result<Option<ScratchDir>, Failure> {
    let parent = parent_of(job.dest);
    let Some(prefix) = prefix(job.dest) else {
        return Ok(None);
    };
    if is_mount_point(job.dest, parent) {
        return Ok(None);
    }
    let Ok(dir) = ScratchDir::new_in(parent, &prefix) else {
        return Ok(None);
    };
    let tree = extract_into(job, dir).map_err(|f| Failure {
        step: Step::Sync,
        ..f
    })?;
    Ok(Some(tree))
}

/// Removes the extraction dirs a killed deploy to `dest` left beside it.
/// Only dirs named for this dest: one for a dest beside it may be in use.
pub(super) fn remove_leftovers(dest: &Path) {
    let Some(prefix) = prefix(dest) else {
        return;
    };
    let entries = fs::read_dir(parent_of(dest))
        .into_iter()
        .flatten()
        .flatten();
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.strip_prefix(&prefix).is_some_and(|rest| {
            rest.len() == RANDOM && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
            log::info!("Removing {name}, left beside dest by a deploy that was stopped");
            if let Err(e) = crate::scratch::remove_tree(&entry.path()) {
                log::info!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The name of the extraction dir beside `dest`, but its random part:
/// `.stretcher_src.<dest's name>.`.
fn prefix(dest: &Path) -> Option<String> {
    let name = dest.file_name()?;
    Some(format!(".stretcher_src.{}.", name.to_string_lossy()))
}

/// The directory holding `dest`.
fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `dest` exists on another filesystem than `parent`: a tree
/// extracted beside it could not be renamed into it.
fn is_mount_point(dest: &Path, parent: &Path) -> bool {
    match (fs::metadata(dest), fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}
