//! Placing members: each archive member is checked, then made a
//! directory, written to a temp name and renamed over dest's entry, or left
//! when rsync's quick check passes (see `quick_check.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use filetime::FileTime;

use super::meta::{mtime_of, Owner, Wanted};
use super::quick_check::{fix_in_place, Check, Looked};
use super::temp::TempName;
use super::{make_dest, DirMeta, Placer, Target};
use crate::archive::{Data, Kind, Member, Sink};

impl Sink for Placer<'_> {
    fn expect(&mut self, entries: u64) {
        self.seen
            .reserve_total(usize::try_from(entries).unwrap_or(usize::MAX));
    }

    fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
        let rel = m.path.as_path();
        self.index += 1;
        if !self.dest_ready {
            if make_dest(self.dest, self.root)? {
                self.fresh.insert(PathBuf::new());
            }
            self.made.insert(PathBuf::new());
            self.dest_ready = true;
        }
        if !self.pending.is_empty() {
            // A later member at the same path wins, as with tar.
            // A non-directory also takes whatever was below its path.
            let gone: Vec<PathBuf> = match m.kind {
                Kind::Dir => self
                    .pending
                    .get_key_value(rel)
                    .map(|(p, _)| p.clone())
                    .into_iter()
                    .collect(),
                // Paths below `rel` sort right after it.
                _ => self
                    .pending
                    .range::<Path, _>((std::ops::Bound::Included(rel), std::ops::Bound::Unbounded))
                    .map(|(p, _)| p)
                    .take_while(|p| p.starts_with(rel))
                    .cloned()
                    .collect(),
            };
            for p in gone {
                self.pending.remove(&p);
                self.seen.remove(&p);
            }
        }
        if rel.as_os_str().is_empty() {
            let meta = self.dir_meta(m)?;
            self.dirs.insert(PathBuf::new(), meta);
            return Ok(());
        }
        if let Some(link) = rel.ancestors().skip(1).find(|a| self.symlinks.contains(*a)) {
            bail!(
                "archive member {:?} goes through the symlink {:?} in the archive: \
                 sync_strategy {} never writes through links (rsync does this)",
                m.name,
                link,
                self.into.strategy()
            );
        }
        if let Some(file) = rel
            .ancestors()
            .skip(1)
            .find(|a| self.seen.contains(a) && !self.dirs.contains_key(*a))
        {
            bail!(
                "archive member {:?} is below {:?}, which the archive made a file",
                m.name,
                file
            );
        }
        if m.kind == Kind::Symlink {
            self.symlinks.insert(rel.to_path_buf());
        } else {
            self.symlinks.remove(rel);
        }
        if !self.deferred.is_empty() {
            self.supersede(rel, m.kind == Kind::Dir);
        }
        if self
            .excludes
            .excludes_here_or_above(rel, m.kind == Kind::Dir)
        {
            // Not in the tree this run places (dest's entry, if any, stays).
            self.seen.remove(rel);
            // Its parents are in the tree all the same, up to an excluded one.
            let kept = rel
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .take_while(|a| !self.excludes.excludes(a, true))
                .last();
            if let Some(dir) = kept {
                self.make_dirs(dir, &m.name)?;
            }
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent, &m.name)?;
        }
        let path = self.dest.join(rel);
        let mut looked = None;
        if m.kind != Kind::Dir {
            let defer;
            (defer, looked) = self.must_defer(rel, &path);
            if defer {
                return self
                    .defer(m, rel, &path, data)
                    .with_context(|| format!("placing {} at {}", m.name, path.display()));
            }
        }
        match m.kind {
            Kind::Dir => self.dir(m, rel, &path),
            Kind::File => self.file(m, rel, &path, data, looked),
            Kind::Symlink => {
                let owner = self.owner(m)?;
                self.symlink(rel, &path, &m.link, owner, mtime_of(m))
            }
            Kind::HardLink => self.hard_link(m, rel, &path, looked),
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => Ok(()),
        }
        .with_context(|| format!("placing {} at {}", m.name, path.display()))
    }
}

impl Placer<'_> {
    /// Permission bits to give: as stored when root, else under the umask.
    pub(super) fn mode(&self, m: &Member) -> u32 {
        if self.root {
            m.mode & 0o7777
        } else {
            m.mode & 0o777 & !self.umask
        }
    }

    /// Owner and group to give: the member's as root; else our group,
    /// which rsync -g copies from the tree it extracted as us.
    pub(super) fn owner(&self, m: &Member) -> Result<Owner> {
        if !self.root {
            return Ok(Owner::ours(false, self.ids));
        }
        let (uid, gid) = m.owner()?;
        Ok(Owner {
            uid: Some(uid),
            gid,
        })
    }

    fn dir_meta(&self, m: &Member) -> Result<DirMeta> {
        Ok(DirMeta {
            mode: self.mode(m),
            mtime: Some(mtime_of(m)),
            owner: self.owner(m)?,
        })
    }

    /// Makes `parent` and every directory above it real directories in
    /// dest: made when missing, replacing a file or symlink left by an
    /// earlier deploy.
    fn make_dirs(&mut self, parent: &Path, name: &str) -> Result<()> {
        if parent.as_os_str().is_empty() || self.made.contains(parent) {
            return Ok(());
        }
        let mut missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !self.made.contains(*a))
            .collect();
        missing.reverse();
        for dir in missing {
            if self.seen.contains(dir) && !self.dirs.contains_key(dir) {
                bail!(
                    "archive member {name:?} is below {:?}, which the archive made a file",
                    dir
                );
            }
            let path = self.dest.join(dir);
            self.ensure_dir(dir, &path)?;
            self.seen.insert(dir);
            if !self.dirs.contains_key(dir) {
                let meta = DirMeta {
                    mode: 0o777 & !self.umask,
                    mtime: None,
                    owner: Owner::ours(self.root, self.ids),
                };
                self.dirs.insert(dir.to_path_buf(), meta);
            }
        }
        Ok(())
    }

    /// Makes `path` a directory we can write into.
    fn ensure_dir(&mut self, rel: &Path, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                if !self.root && meta.mode() & 0o700 != 0o700 {
                    // Its final mode is applied at the end.
                    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))
                        .with_context(|| format!("chmod {}", path.display()))?;
                }
            }
            Ok(meta) => {
                self.note_original(rel, &meta);
                fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
                self.room.give_back(&meta);
                fs::create_dir(path).with_context(|| format!("mkdir {}", path.display()))?;
                self.fresh.insert(rel.to_path_buf());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(path).with_context(|| format!("mkdir {}", path.display()))?;
                self.fresh.insert(rel.to_path_buf());
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
        self.made.insert(rel.to_path_buf());
        Ok(())
    }

    fn dir(&mut self, m: &Member, rel: &Path, path: &Path) -> Result<()> {
        if !self.made.contains(rel) {
            self.ensure_dir(rel, path)?;
        }
        let meta = self.dir_meta(m)?;
        self.dirs.insert(rel.to_path_buf(), meta);
        self.seen.insert(rel);
        Ok(())
    }

    /// The metadata and size a file member gets.
    pub(super) fn wanted(&self, m: &Member) -> Result<(Wanted, u64)> {
        let want = Wanted {
            mode: self.mode(m),
            owner: self.owner(m)?,
            mtime: mtime_of(m),
        };
        Ok((want, m.sparse.as_ref().map_or(m.size, |s| s.size)))
    }

    fn file(
        &mut self,
        m: &Member,
        rel: &Path,
        path: &Path,
        data: &mut Data<'_>,
        looked: Looked,
    ) -> Result<()> {
        let (want, size) = self.wanted(m)?;
        let (want, vacant) = match self.quick_check(rel, path, size, want, looked)? {
            Check::Same(meta, want) => return fix_in_place(path, meta, &want),
            Check::Differs(want) => (want, false),
            Check::Vacant(want) => (want, true),
        };
        if self.link(rel, path, size, &want, vacant)? {
            return Ok(());
        }
        self.room.charge(m.size, &m.name)?;
        self.replace_with_file(rel, path, &want, vacant, |file| data.write_to(m, file))
    }

    /// A hard link in the archive is a copy in dest, as with rsync -a.
    fn hard_link(&mut self, m: &Member, rel: &Path, path: &Path, looked: Looked) -> Result<()> {
        let target = m.target.as_path();
        let through_link = target
            .ancestors()
            .skip(1)
            .any(|a| self.symlinks.contains(a));
        let unplaced = self.deferred.contains_key(target)
            || !self.seen.contains(target)
                && (self.excludes.excludes_here_or_above(target, false)
                    || self.excludes.excludes_here_or_above(target, true));
        if !through_link && unplaced {
            // Its data has gone by: read the archive again at the end.
            self.seen.insert(rel);
            self.defer_link(m, rel);
            return Ok(());
        }
        if through_link || !self.seen.contains(target) {
            bail!(
                "hard link {} to {}: no such member",
                m.name,
                target.display()
            );
        }
        let source = self.dest.join(target);
        let meta =
            fs::symlink_metadata(&source).with_context(|| format!("stat {}", source.display()))?;
        let mtime = match self.kept.get(target) {
            Some(&mtime) => mtime,
            None => FileTime::from_last_modification_time(&meta),
        };
        let owner = match self.root {
            true => Owner {
                uid: Some(meta.uid()),
                gid: meta.gid(),
            },
            false => Owner::ours(false, self.ids),
        };
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&source)?;
            self.symlinks.insert(rel.to_path_buf());
            return self.symlink(rel, path, &link, owner, mtime);
        }
        if !meta.is_file() {
            bail!("hard link {} to the directory {}", m.name, target.display());
        }
        let want = Wanted {
            mode: meta.mode() & 0o7777,
            owner,
            mtime,
        };
        let (want, vacant) = match self.quick_check(rel, path, meta.len(), want, looked)? {
            Check::Same(meta, want) => return fix_in_place(path, meta, &want),
            Check::Differs(want) => (want, false),
            Check::Vacant(want) => (want, true),
        };
        let left = !self.written.contains(target) && !self.in_fresh(target);
        if left || self.linked.contains(target) {
            // The quick check left dest's file there, or it is linked from
            // the live release: its bytes may not be the member's, which
            // rsync copies.
            self.defer_link(m, rel);
            return Ok(());
        }
        if self.link(rel, path, meta.len(), &want, vacant)? {
            return Ok(());
        }
        self.room.charge(meta.len(), &m.name)?;
        self.replace_with_file(rel, path, &want, vacant, |file| {
            let mut from =
                File::open(&source).with_context(|| format!("open {}", source.display()))?;
            std::io::copy(&mut from, &mut &*file)?;
            Ok(())
        })
    }

    /// Whether this run builds a new release.
    pub(super) fn new_release(&self) -> bool {
        matches!(self.into, Target::NewRelease(_))
    }

    /// Hard links `path` to the same file in the live release when that one is
    /// a regular file with exactly the wanted size, mtime, mode and owner,
    /// and ours (a file of another user is never shared), in place of
    /// what is at `path` (nothing, when `vacant`). Whether it did; a link
    /// that fails (another filesystem, too many links) is written instead.
    pub(super) fn link(
        &mut self,
        rel: &Path,
        path: &Path,
        size: u64,
        want: &Wanted,
        vacant: bool,
    ) -> Result<bool> {
        let Some(from) = self.in_live_release(rel, size, want) else {
            return Ok(false);
        };
        if vacant {
            if fs::hard_link(&from, path).is_err() {
                return Ok(false);
            }
        } else {
            // An earlier member at the same path: replaced as a write would.
            let temp = TempName::beside(path)?;
            if fs::hard_link(&from, &temp.0).is_err() {
                return Ok(false);
            }
            self.rename_over(rel, path, temp)?;
            self.written.insert(rel.to_path_buf());
        }
        self.linked.insert(rel.to_path_buf());
        Ok(true)
    }

    /// The live release's file at `rel`, when this run builds a new
    /// release and that file has exactly the wanted size, mtime, mode and
    /// owner, and is ours (a file of another user is never shared).
    pub(super) fn in_live_release(&self, rel: &Path, size: u64, want: &Wanted) -> Option<PathBuf> {
        let Target::NewRelease(Some(live)) = self.into else {
            return None;
        };
        let from = live.join(rel);
        let meta = fs::symlink_metadata(&from).ok()?;
        let same = meta.is_file()
            && meta.len() == size
            && FileTime::from_last_modification_time(&meta) == want.mtime
            && meta.mode() & 0o7777 == want.mode
            && !want.owner.differs(&meta)
            && want.owner.uid.unwrap_or(self.ids.0) == meta.uid();
        same.then_some(from)
    }

    /// Writes a new file with `fill` under a temp name beside `path`, gives
    /// it the wanted metadata, and renames it over whatever is at `path`
    /// (nothing, when `vacant`).
    fn replace_with_file(
        &mut self,
        rel: &Path,
        path: &Path,
        want: &Wanted,
        vacant: bool,
        fill: impl FnOnce(&File) -> Result<()>,
    ) -> Result<()> {
        let temp = TempName::beside(path)?;
        // Created with its final permission bits when the umask keeps them
        // (it holds the member's bytes, which end up that readable anyway).
        let created = want.mode & 0o777;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(created)
            .open(&temp.0)
            .with_context(|| format!("creating {}", temp.0.display()))?;
        fill(&file)?;
        let mut mode = created & !self.umask;
        if want.owner.differs(&file.metadata()?) {
            std::os::unix::fs::fchown(&file, want.owner.uid, Some(want.owner.gid))
                .context("chown")?;
            // A chown may clear setuid and setgid.
            mode = u32::MAX;
        }
        if mode != want.mode {
            file.set_permissions(fs::Permissions::from_mode(want.mode))
                .context("chmod")?;
        }
        filetime::set_file_handle_times(&file, None, Some(want.mtime)).context("setting mtime")?;
        drop(file);
        if vacant {
            fs::rename(&temp.0, path).with_context(|| format!("rename to {}", path.display()))?;
            temp.keep();
        } else {
            self.rename_over(rel, path, temp)?;
            self.written.insert(rel.to_path_buf());
        }
        self.counts.written += 1;
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        rel: &Path,
        path: &Path,
        link: &Path,
        owner: Owner,
        mtime: FileTime,
    ) -> Result<()> {
        self.seen.insert(rel);
        let current = fs::symlink_metadata(path).ok();
        let same = current.as_ref().is_some_and(|meta| {
            meta.file_type().is_symlink() && fs::read_link(path).is_ok_and(|l| l == link)
        });
        if !same {
            let temp = TempName::beside(path)?;
            std::os::unix::fs::symlink(link, &temp.0)
                .with_context(|| format!("creating {}", temp.0.display()))?;
            self.rename_over(rel, path, temp)?;
            self.counts.written += 1;
        } else {
            self.counts.unchanged += 1;
        }
        let meta = fs::symlink_metadata(path)?;
        if owner.differs(&meta) {
            owner.set(path)?;
        }
        self.kept.remove(rel);
        if meta.mtime() != mtime.unix_seconds() || !same {
            filetime::set_symlink_file_times(path, mtime, mtime).context("setting mtime")?;
        } else if FileTime::from_last_modification_time(&meta) != mtime {
            // Left with its own nanoseconds, as rsync leaves it.
            self.kept.insert(rel.to_path_buf(), mtime);
        }
        Ok(())
    }

    /// Renames `temp` to `path`, first removing a directory in the way.
    pub(super) fn rename_over(&mut self, rel: &Path, path: &Path, temp: TempName) -> Result<()> {
        let replaced = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                self.remove_dir(rel, path)?;
                None
            }
            Ok(meta) => {
                self.note_original(rel, &meta);
                Some(meta)
            }
            Err(_) => None,
        };
        fs::rename(&temp.0, path).with_context(|| format!("rename to {}", path.display()))?;
        temp.keep();
        if let Some(meta) = replaced {
            // The old file went as its replacement landed.
            self.room.give_back(&meta);
        }
        self.made.remove(rel);
        Ok(())
    }
}
