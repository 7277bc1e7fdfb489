//! `release`: each deploy streams the archive into a new dir in
//! `releases/` beside `dest`, hard-linking the files the live release
//! already has unchanged, then points the `dest` symlink at it in one
//! rename (SPEC 8.2). A reader through `dest` sees the old tree or the new
//! one, never a mix. Old releases beyond `keep_releases` are removed after
//! the `post` hooks.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::native::{self, Native, Target};
use super::{Job, Leftovers, Settings, Strategy};
use crate::releases::{Layout, Switch, BUILDING};
use crate::scratch::ScratchDir;
use crate::step::{interrupted, AtStep, Failure, Step};

/// How many releases a deploy keeps when the manifest does not say.
pub const DEFAULT_KEEP: u64 = 5;

/// The release strategy.
pub struct Release {
    native: Native,
    keep: usize,
}

impl Release {
    /// Checks the manifest's `excludes` and `keep_releases` now, before any
    /// download.
    pub fn new(settings: Settings) -> Result<Self> {
        let keep = settings.keep_releases.unwrap_or(DEFAULT_KEEP);
        if keep == 0 {
            anyhow::bail!("keep_releases must be at least 1 (the live release is always kept)");
        }
        Ok(Release {
            native: Native::named(settings, "release")?,
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
        })
    }
}

impl Strategy for Release {
    fn check(&self, dest: &std::path::Path) -> Result<()> {
        Layout::of(dest)?.check_dest()
    }

    fn switches_dest(&self) -> bool {
        true
    }

    fn place(&self, job: &Job<'_>) -> Result<Leftovers, Failure> {
        let layout = Layout::of(job.dest).at(Step::Sync)?;
        layout.check_dest().at(Step::Sync)?;
        let excludes = self.native.excludes_for(job)?;
        std::fs::create_dir_all(&layout.dir)
            .with_context(|| format!("mkdir {}", layout.dir.display()))
            .at(Step::Sync)?;
        layout.remove_unfinished();
        // Only a release this agent made: a tree dest pointed at before
        // the migration may still be written in place.
        let live = layout.live().map(|name| layout.dir.join(name));
        let name = layout.new_name(job.checksum, chrono::Utc::now());
        // Built under a hidden name, removed on any failure: only a
        // complete release ever gets its name.
        let building =
            ScratchDir::new_in(&layout.dir, &format!("{BUILDING}{name}.")).at(Step::Sync)?;
        let tree = building.path().join("tree");
        log::info!(
            "Build release {} from {}{}",
            layout.dir.join(&name).display(),
            job.archive.path().display(),
            live.as_ref()
                .map(|l| format!(", linking unchanged files from {}", l.display()))
                .unwrap_or_default()
        );
        native::stream(job, &tree, excludes, Target::NewRelease(live.as_deref()))
            .with_context(|| job.src.to_string())
            .at(Step::Sync)?;
        interrupted(job.cancel).at(Step::Sync)?;
        let dir = layout.dir.join(&name);
        std::fs::rename(&tree, &dir)
            .with_context(|| format!("rename {} to {}", tree.display(), dir.display()))
            .at(Step::Sync)?;
        drop(building);
        let previous = layout.live();
        if let Err(e) = layout.switch(&name) {
            let _ = crate::scratch::remove_tree(&dir);
            return Err(e).at(Step::Sync);
        }
        if let Err(e) = layout.note(Switch::Deploy, previous.as_deref(), &name) {
            log::info!(
                "could not note the switch in {}: {e:#}",
                layout.dir.display()
            );
        }
        log::info!(
            "Switched {} to releases/{name}{}",
            layout.dest.display(),
            previous
                .as_ref()
                .map(|p| format!(" (was releases/{p})"))
                .unwrap_or_default()
        );
        Ok(Leftovers::release(Placed {
            layout,
            dir,
            name,
            previous,
            keep: self.keep,
        }))
    }
}

/// A release just made live. Dropped after the `post` hooks: then the
/// releases beyond `keep` are removed.
pub struct Placed {
    layout: Layout,
    dir: PathBuf,
    name: String,
    previous: Option<String>,
    keep: usize,
}

impl Placed {
    /// The new release's directory (`STRETCHER_RELEASE_DIR`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let mut spare = vec![self.name.as_str()];
        spare.extend(self.previous.as_deref());
        if let Err(e) = self.layout.prune(self.keep, &spare) {
            log::info!("could not prune old releases: {e:#}");
        }
    }
}
