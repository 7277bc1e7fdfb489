//! Members that wait: a non-directory replacing a directory in dest (or
//! whose path is excluded as a directory) is held back until the whole
//! archive is read, and a hard link whose data has gone by is placed by a
//! second read of the archive.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use filetime::FileTime;

use super::delete::paths_below;
use super::meta::{mtime_of, Owner, Wanted};
use super::quick_check::{fix_in_place, Check, Looked};
use super::temp::TempName;
use super::{Job, Placer};
use crate::archive::{self, Data, Kind, Member, Sink};

impl Placer<'_> {
    /// Whether the non-directory member at `rel` must wait for the end of
    /// the archive: it would replace a directory in dest, or a later
    /// directory member there would be excluded. With what dest has at
    /// `path`, when it looked (the quick check needs it next).
    pub(super) fn must_defer(&self, rel: &Path, path: &Path) -> (bool, Looked) {
        if self.excludes.excludes(rel, true) {
            return (true, None);
        }
        if !self.seen.contains(rel) && self.in_fresh(rel) {
            return (false, None);
        }
        let meta = fs::symlink_metadata(path);
        (meta.as_ref().is_ok_and(|meta| meta.is_dir()), Some(meta))
    }

    /// Whether `rel` is in a directory this run created.
    pub(super) fn in_fresh(&self, rel: &Path) -> bool {
        rel.parent().is_some_and(|dir| self.fresh.contains(dir))
    }

    /// Holds back the non-directory member `m` at `rel`: a file's data goes
    /// to a temp name beside `path`, a hard link waits for the second read.
    /// The archive's tree has no directory at `rel` any more.
    pub(super) fn defer(
        &mut self,
        m: &Member,
        rel: &Path,
        path: &Path,
        data: &mut Data<'_>,
    ) -> Result<()> {
        if fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir()) {
            let below = paths_below(rel, path);
            self.forget_dir(rel, below);
            // What it holds stays until the end, unseen: the delete pass
            // must look in the directories above it.
            for dir in rel.ancestors() {
                self.fresh.remove(dir);
            }
        }
        self.dirs.remove(rel);
        self.made.remove(rel);
        self.seen.insert(rel);
        let captured = match m.kind {
            Kind::File => {
                let (want, size) = self.wanted(m)?;
                if self.would_leave(rel, size, &want) {
                    // No copy: rsync leaves the file, and its directory.
                    let held = Deferred {
                        name: m.name.clone(),
                        captured: Captured::Left(want, size),
                    };
                    self.deferred.insert(rel.to_path_buf(), held);
                    return Ok(());
                }
                Captured::File(self.capture(m, path, data)?, want, size)
            }
            Kind::Symlink => Captured::Symlink(m.link.clone(), self.owner(m)?, mtime_of(m)),
            Kind::HardLink => {
                self.defer_link(m, rel);
                return Ok(());
            }
            Kind::Dir | Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => return Ok(()),
        };
        let held = Deferred {
            name: m.name.clone(),
            captured,
        };
        self.deferred.insert(rel.to_path_buf(), held);
        Ok(())
    }

    /// Drops held-back members that the member at `rel` replaces: one at
    /// `rel` and, for a non-directory, those below it.
    pub(super) fn supersede(&mut self, rel: &Path, dir: bool) {
        self.deferred.remove(rel);
        if !dir {
            let below: Vec<PathBuf> = self
                .deferred
                .range::<Path, _>((std::ops::Bound::Excluded(rel), std::ops::Bound::Unbounded))
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            for p in below {
                self.deferred.remove(&p);
            }
        }
    }

    /// Places the members held back, now that no later member replaces
    /// them.
    pub(super) fn place_deferred(&mut self) -> Result<()> {
        for (rel, held) in std::mem::take(&mut self.deferred) {
            let p = Pending {
                index: 0,
                target: rel.clone(),
                rel,
                name: held.name,
            };
            self.place_captured(&p, held.captured)?;
        }
        Ok(())
    }

    /// Writes the data of the file member `m` under a temp name beside
    /// `path` (charged against the room): a copy held until its place's
    /// turn.
    fn capture(&mut self, m: &Member, path: &Path, data: &mut Data<'_>) -> Result<TempName> {
        let temp = TempName::beside(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp.0)
            .with_context(|| format!("creating {}", temp.0.display()))?;
        self.room.charge(m.size, &m.name)?;
        data.write_to(m, &file)?;
        Ok(temp)
    }

    /// Places the hard link `m` (at `rel`) after a second read of the
    /// archive, which finds its target's data.
    pub(super) fn defer_link(&mut self, m: &Member, rel: &Path) {
        let link = Pending {
            index: self.index,
            rel: rel.to_path_buf(),
            target: m.target.clone(),
            name: m.name.clone(),
        };
        self.pending.insert(rel.to_path_buf(), link);
    }
}

impl Placer<'_> {
    /// Reads the archive again for the members whose data pending hard
    /// links need, and places copies of them at the links' paths.
    pub(super) fn place_pending(&mut self, job: &Job<'_>) -> Result<()> {
        let mut due: BTreeMap<u64, Vec<Pending>> = BTreeMap::new();
        let mut by_target: HashMap<PathBuf, Vec<(u64, PathBuf)>> = HashMap::new();
        for p in std::mem::take(&mut self.pending).into_values() {
            by_target
                .entry(p.target.clone())
                .or_default()
                .push((p.index, p.rel.clone()));
            due.entry(p.index).or_default().push(p);
        }
        let mut late = Late {
            placer: self,
            index: 0,
            due,
            by_target,
            captured: HashMap::new(),
            captured_by_target: BTreeMap::new(),
        };
        archive::apply_indexed(job.archive, &mut late, job.cancel)?;
        match late.due.values().flatten().next() {
            Some(p) => bail!(
                "hard link {} to {}: no such member",
                p.name,
                p.target.display()
            ),
            None => Ok(()),
        }
    }

    /// Fails unless every directory above `rel` in dest is a real
    /// directory: nothing is ever written through a link.
    fn real_dirs_above(&self, rel: &Path) -> Result<()> {
        for dir in rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
        {
            let path = self.dest.join(dir);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                bail!(
                    "{} is not a directory: not writing below it",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Places what was captured for the pending link `p`.
    fn place_captured(&mut self, p: &Pending, captured: Captured) -> Result<()> {
        self.real_dirs_above(&p.rel)?;
        let path = self.dest.join(&p.rel);
        match captured {
            Captured::Symlink(link, owner, mtime) => {
                self.symlinks.insert(p.rel.clone());
                self.symlink(&p.rel, &path, &link, owner, mtime)
            }
            Captured::File(temp, want, size) => {
                match self.quick_check(&p.rel, &path, size, want, None)? {
                    Check::Same(meta, want) => fix_in_place(&path, meta, &want),
                    Check::Differs(want) => {
                        self.place_temp(&p.rel, &path, temp, &want, size, false)
                    }
                    Check::Vacant(want) => self.place_temp(&p.rel, &path, temp, &want, size, true),
                }
            }
            Captured::Left(want, size) => {
                let (want, vacant) = match self.quick_check(&p.rel, &path, size, want, None)? {
                    Check::Same(meta, want) => return fix_in_place(&path, meta, &want),
                    Check::Differs(want) => (want, false),
                    Check::Vacant(want) => (want, true),
                };
                // A new release's: linked from the live release.
                if !self.link(&p.rel, &path, size, &want, vacant)? {
                    bail!("{} changed while the archive was read", path.display());
                }
                Ok(())
            }
        }
        .with_context(|| format!("placing {} at {}", p.name, path.display()))
    }

    /// Gives the captured file `temp` (`size` bytes) the wanted metadata
    /// and renames it to `path` (in a new release, links the live
    /// release's file there instead when it has exactly that).
    fn place_temp(
        &mut self,
        rel: &Path,
        path: &Path,
        temp: TempName,
        want: &Wanted,
        size: u64,
        vacant: bool,
    ) -> Result<()> {
        if self.link(rel, path, size, want, vacant)? {
            return Ok(());
        }
        if want.owner.differs(&fs::symlink_metadata(&temp.0)?) {
            want.owner.set(&temp.0)?;
        }
        fs::set_permissions(&temp.0, fs::Permissions::from_mode(want.mode)).context("chmod")?;
        archive::set_mtime(&temp.0, want.mtime).context("setting mtime")?;
        self.rename_over(rel, path, temp)?;
        self.counts.written += 1;
        Ok(())
    }
}

/// The second read of the archive, for pending hard links.
struct Late<'p, 'a> {
    placer: &'p mut Placer<'a>,
    index: u64,
    /// Pending links by their place in the archive.
    due: BTreeMap<u64, Vec<Pending>>,
    /// Pending links' places and paths, by target.
    by_target: HashMap<PathBuf, Vec<(u64, PathBuf)>>,
    /// What each pending link (by path) will be: the last member at its
    /// target before it.
    captured: HashMap<PathBuf, Captured>,
    /// The links captured so far, by target.
    captured_by_target: BTreeMap<PathBuf, Vec<PathBuf>>,
}

/// A link target's data or symlink, kept until the link's turn.
pub(super) enum Captured {
    /// A temp file beside the link's path, the metadata and size it gets.
    File(TempName, Wanted, u64),
    /// A symlink: its target, owner and mtime.
    Symlink(PathBuf, Owner, FileTime),
    /// A file dest already has by the quick check (or, for a new release,
    /// the live release has to link), when captured: the metadata and
    /// size it gets.
    Left(Wanted, u64),
}

impl Sink for Late<'_, '_> {
    fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
        self.index += 1;
        let index = self.index;
        if m.kind != Kind::Dir && !self.captured.is_empty() {
            // A non-directory takes away what was below its path, as in
            // the extracted tree.
            let gone: Vec<PathBuf> = self
                .captured_by_target
                .range::<Path, _>((
                    std::ops::Bound::Excluded(m.path.as_path()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(t, _)| t.starts_with(&m.path))
                .flat_map(|(_, rels)| rels.iter().cloned())
                .collect();
            for rel in gone {
                self.captured.remove(&rel);
            }
        }
        for p in self.due.remove(&index).unwrap_or_default() {
            let Some(captured) = self.captured.remove(&p.rel) else {
                bail!(
                    "hard link {} to {}: no such member",
                    p.name,
                    p.target.display()
                );
            };
            self.placer.place_captured(&p, captured)?;
        }
        let waiting: Vec<PathBuf> = self
            .by_target
            .get(&m.path)
            .into_iter()
            .flatten()
            .filter(|(i, _)| *i > index)
            .map(|(_, rel)| rel.clone())
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        for rel in &waiting {
            self.captured.remove(rel);
        }
        self.captured_by_target
            .insert(m.path.clone(), waiting.clone());
        match m.kind {
            Kind::Symlink => {
                let owner = self.placer.owner(m)?;
                for rel in waiting {
                    let c = Captured::Symlink(m.link.clone(), owner, mtime_of(m));
                    self.captured.insert(rel, c);
                }
            }
            Kind::File => {
                let (want, size) = self.placer.wanted(m)?;
                for rel in &waiting {
                    self.placer.real_dirs_above(rel)?;
                }
                // A link whose path dest's file passes the quick check for
                // needs no copy (rsync leaves it, and its directory).
                let (left, waiting): (Vec<PathBuf>, Vec<PathBuf>) = waiting
                    .into_iter()
                    .partition(|rel| self.placer.would_leave(rel, size, &want));
                for rel in left {
                    self.captured.insert(rel, Captured::Left(want, size));
                }
                let Some(first) = waiting.first() else {
                    return Ok(());
                };
                let first_path = self.placer.dest.join(first);
                let temp = self.placer.capture(m, &first_path, data)?;
                for rel in &waiting[1..] {
                    self.placer.room.charge(m.size, &m.name)?;
                    let copy = TempName::beside(&self.placer.dest.join(rel))?;
                    fs::copy(&temp.0, &copy.0)
                        .with_context(|| format!("creating {}", copy.0.display()))?;
                    self.captured
                        .insert(rel.clone(), Captured::File(copy, want, size));
                }
                self.captured
                    .insert(first.clone(), Captured::File(temp, want, size));
            }
            // Not a file: the links to it fail when their turn comes.
            _ => {}
        }
        Ok(())
    }
}

/// A member held back until the end of the archive.
pub(super) struct Deferred {
    pub(super) name: String,
    pub(super) captured: Captured,
}

/// A hard link to a member that is excluded (so not in dest): the second
/// read of the archive copies that member's data.
pub(super) struct Pending {
    /// The link's place in the archive.
    pub(super) index: u64,
    pub(super) rel: PathBuf,
    pub(super) target: PathBuf,
    pub(super) name: String,
}
