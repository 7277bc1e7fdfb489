//! Placing a verified archive into `dest`: one strategy per file behind one
//! trait, chosen by the manifest's `sync_strategy`. `rsync` and `mv`
//! extract into a private temp dir first, then move that tree; `native`
//! streams the archive into `dest` itself; `release` streams it into a new
//! release dir and switches the `dest` symlink to it. Every strategy reads members
//! through [`crate::archive`], so the extraction safety rules live in one
//! place.

mod excludes;
mod mv;
mod native;
mod release;
mod rsync;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, MaxSize};
use crate::scratch::ScratchDir;
use crate::step::{interrupted, AtStep, Failure, Step};

pub use excludes::Excludes;
pub use mv::Mv;
pub use native::Native;
use release::Placed;
pub use release::Release;
pub use rsync::Rsync;

/// A verified archive and where it goes.
pub struct Job<'a> {
    /// The downloaded archive, its checksum verified.
    pub archive: &'a archive::Archive,
    /// Its source URL, for messages.
    pub src: &'a str,
    /// Its checksum (hex), which names a release.
    pub checksum: &'a str,
    /// The manifest's `dest`.
    pub dest: &'a Path,
    /// The manifest's `dest_mode`, for dest's root.
    pub dest_mode: u32,
    /// `--max-extract-size`.
    pub max_size: MaxSize,
    /// The first SIGINT/SIGTERM: stop, leaving no temp file behind.
    pub cancel: &'a CancellationToken,
}

/// Makes `dest` hold exactly the archive's tree.
pub trait Strategy: Send + Sync {
    /// Refuses a `dest` the strategy cannot deploy into, before anything
    /// is downloaded.
    fn check(&self, _dest: &Path) -> Result<()> {
        Ok(())
    }

    /// Whether it replaces the `dest` symlink (and works beside it), so
    /// deploys lock the directory holding `dest` ([`crate::lock`]).
    fn switches_dest(&self) -> bool {
        false
    }

    /// Places the job's archive into its dest. Blocking; stops early (with
    /// an error) when the job's `cancel` fires.
    fn place(&self, job: &Job<'_>) -> Result<Leftovers, Failure>;
}

/// What a strategy leaves to finish once the `post` hooks have run, so the
/// hooks do not wait for it; done on drop. For `rsync` and `mv`, their
/// extraction dir, removed then; for `release`, the new release, whose old
/// siblings are pruned then.
#[must_use]
pub struct Leftovers {
    _extraction_dir: Option<ScratchDir>,
    release: Option<Placed>,
}

impl Leftovers {
    /// The extraction dir `dir`, to remove later.
    fn dir(dir: ScratchDir) -> Self {
        Leftovers {
            _extraction_dir: Some(dir),
            release: None,
        }
    }

    /// A release made live, to prune beside later.
    fn release(placed: Placed) -> Self {
        Leftovers {
            _extraction_dir: None,
            release: Some(placed),
        }
    }

    /// Nothing to remove.
    pub fn none() -> Self {
        Leftovers {
            _extraction_dir: None,
            release: None,
        }
    }

    /// The release dir this deploy made live (`release` only).
    pub fn release_dir(&self) -> Option<&Path> {
        self.release.as_ref().map(Placed::dir)
    }
}

/// Manifest settings a strategy needs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// rsync `--exclude` patterns, in order.
    pub excludes: Vec<String>,
    /// rsync `--exclude-from` file, relative to the archive's root.
    pub exclude_from: String,
    /// rsync verbosity argument; empty adds none.
    pub rsync_verbose: String,
    /// `release`: how many releases to keep (`None`: the default).
    pub keep_releases: Option<u64>,
}

/// Picks the strategy named in the manifest (`""` is rsync). Settings a
/// strategy cannot honour exactly are refused here, before any download.
pub fn from_name(name: &str, settings: Settings) -> Result<Box<dyn Strategy>> {
    if settings.keep_releases.is_some() && name != "release" {
        bail!("keep_releases is only used with sync_strategy: release");
    }
    match name {
        "" | "rsync" => Ok(Box::new(Rsync(settings))),
        "mv" => Ok(Box::new(Mv)),
        "native" => Ok(Box::new(Native::new(settings)?)),
        "release" => Ok(Box::new(Release::new(settings)?)),
        _ => bail!("invalid strategy name: {name}"),
    }
}

/// Extracts the job's archive into a private temp dir and gives its root
/// `dest_mode` (SPEC 5, steps 5 and 6): the tree `rsync` and `mv` sync
/// from.
fn extract_to_scratch(job: &Job<'_>) -> Result<ScratchDir, Failure> {
    let dir = ScratchDir::new("stretcher_src").at(Step::Extract)?;
    extract_into(job, dir)
}

/// Extracts the job's archive into the empty dir `dir` and gives its root
/// `dest_mode`.
fn extract_into(job: &Job<'_>, dir: ScratchDir) -> Result<ScratchDir, Failure> {
    log::info!(
        "Extract archive: {} to {}",
        job.archive.path().display(),
        dir.path().display()
    );
    let whole = job.archive.whole().at(Step::Extract)?;
    archive::extract(whole, dir.path(), job.src, job.max_size, job.cancel).at(Step::Extract)?;
    interrupted(job.cancel).at(Step::Extract)?;
    log::info!("Set dest mode {:04o}", job.dest_mode);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(job.dest_mode))
        .with_context(|| format!("chmod {}", dir.path().display()))
        .at(Step::Extract)?;
    Ok(dir)
}

/// Into a dest that does not exist or is an empty directory, `rsync -a
/// --delete` produces exactly the extracted tree `from` (modes, owners,
/// mtimes, the root included), so renaming the tree into place gives the
/// same result without copying every file: a fresh host's first deploy.
/// Not when the tree has hard links (rsync -a without -H copies them
/// apart). A rename that fails (another filesystem, a mount point, a dest
/// that just got files) leaves everything as it was. Whether it renamed.
fn rename_into_empty_dest(from: &Path, to: &Path) -> bool {
    if !empty_or_missing(to) || has_hard_links(from) {
        return false;
    }
    let moved = std::fs::rename(from, to).is_ok();
    if moved {
        log::info!(
            "dest {} is empty: moved the extracted tree into place (what rsync would copy)",
            to.display()
        );
    }
    moved
}

/// Whether `dir` does not exist or is an empty directory.
fn empty_or_missing(dir: &Path) -> bool {
    match std::fs::symlink_metadata(dir) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(meta) => meta.is_dir() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()),
    }
}

/// Whether any regular file under `dir` has more than one link.
fn has_hard_links(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return true; // unsure: treat it as having them
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() && m.nlink() > 1 => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    }
    false
}
