//! Low on room: what rsync does first. When placing runs out of room (the
//! `--max-extract-size` budget or a full disk), the archive's member names
//! are read (a names-only pass, skipping data), what dest has and the
//! archive lacks is deleted, and placing starts again with the freed room
//! credited: files already placed pass the quick check.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{make_dest, Counts, Placer};
use crate::archive::{self, Data, Kind, Member, Sink};
use crate::sync::{Excludes, Job};

impl<'a> Placer<'a> {
    /// Deletes what dest has and the archive lacks (as the end-of-run
    /// delete pass does), then gives a placer that starts again with the
    /// room that freed and the counts so far.
    pub(super) fn prune(self, job: &Job<'_>) -> Result<Placer<'a>> {
        log::info!(
            "low on room in {}: deleting what the archive lacks first",
            self.dest.display()
        );
        // Members held back go with the placer that held them.
        let Placer {
            dest,
            excludes,
            room,
            into,
            counts,
            root,
            ..
        } = self;
        let Names { seen, files, .. } = Names::read(job, &excludes)?;
        let mut pruner = Placer::new(dest, excludes, room, into)?;
        make_dest(dest, root)?;
        for path in &seen {
            pruner.seen.insert(path);
        }
        pruner.as_files = files;
        pruner.counts = counts;
        pruner.delete_extra(Path::new(""), job.cancel)?;
        let mut next = Placer::new(dest, pruner.excludes, pruner.room, pruner.into)?;
        let c = pruner.counts;
        next.counts = Counts {
            placed_before: c.written,
            ..c
        };
        Ok(next)
    }
}

/// The paths of the archive's tree, as placing would see them.
#[derive(Default)]
struct Names<'e> {
    excludes: Option<&'e Excludes>,
    /// Every path the tree has, with the directories above each.
    seen: BTreeSet<PathBuf>,
    /// The paths the tree has as non-directories.
    files: HashSet<PathBuf>,
}

impl<'e> Names<'e> {
    /// Reads the member names of the job's archive (not its data).
    fn read(job: &Job<'_>, excludes: &'e Excludes) -> Result<Self> {
        let mut names = Names {
            excludes: Some(excludes),
            ..Names::default()
        };
        archive::apply_indexed(job.archive, &mut names, job.cancel)?;
        Ok(names)
    }

    /// Adds the directories above `rel`, up to an excluded one.
    fn add_parents(&mut self, rel: &Path) {
        let mut above: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        above.reverse();
        for dir in above {
            if self.excludes.is_some_and(|e| e.excludes(dir, true)) {
                break;
            }
            self.files.remove(dir);
            self.seen.insert(dir.to_path_buf());
        }
    }
}

impl Sink for Names<'_> {
    fn member(&mut self, m: &Member, _: &mut Data<'_>) -> Result<()> {
        let rel = m.path.as_path();
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        let is_dir = m.kind == Kind::Dir;
        let excluded = self
            .excludes
            .is_some_and(|e| e.excludes_here_or_above(rel, is_dir));
        self.add_parents(rel);
        if excluded {
            return Ok(());
        }
        if is_dir {
            self.files.remove(rel);
        } else {
            // A later member at the same path wins, as with tar, and a
            // non-directory takes whatever was below its path.
            let below: Vec<PathBuf> = self
                .seen
                .range::<Path, _>((std::ops::Bound::Excluded(rel), std::ops::Bound::Unbounded))
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            for p in below {
                self.seen.remove(&p);
                self.files.remove(&p);
            }
            self.files.insert(rel.to_path_buf());
        }
        self.seen.insert(rel.to_path_buf());
        Ok(())
    }
}
