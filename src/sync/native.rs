//! `native`: `rsync -a --delete`'s result, streamed from the archive
//! straight into `dest` (SPEC 8.1). No extraction dir, no second copy.
//!
//! Each member is compared with what `dest` holds (rsync's quick check:
//! type, size, mtime to the second). A file that passes is not written;
//! its mode (and, as root, owner) is fixed in place. Anything else is
//! written under a temp name in its directory and renamed over the old
//! entry, so a reader sees the old file or the new one, never half of one.
//! Archive order is arbitrary: parents are made as needed, a later member
//! replaces an earlier one, directory metadata is applied at the end,
//! deepest first. Then paths in `dest` the archive lacks are deleted,
//! except excluded ones (`--delete` without `--delete-excluded`).
//!
//! Hard links are placed as separate files (rsync `-a` has no `-H`). A
//! member whose parent path goes through a symlink in the archive is
//! refused, as is a hard link to an excluded member: `dest` holds files
//! from earlier deploys, so nothing is ever written through a link.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use filetime::FileTime;
use tokio_util::sync::CancellationToken;

use super::{Excludes, Job, Settings, Strategy};
use crate::archive::{self, Budget, Data, Kind, Member, Sink};
use crate::step::{interrupted, AtStep, Failure, Step};

/// The in-process strategy.
pub struct Native {
    excludes: Excludes,
    exclude_from: String,
}

impl Native {
    /// Checks the manifest's `excludes` now, before any download.
    pub fn new(settings: Settings) -> Result<Self> {
        Ok(Native {
            excludes: Excludes::new(&settings.excludes)?,
            exclude_from: settings.exclude_from,
        })
    }
}

impl Strategy for Native {
    fn place(&self, job: &Job<'_>) -> Result<(), Failure> {
        let mut excludes = self.excludes.clone();
        if !self.exclude_from.is_empty() {
            let text = read_member(job, &self.exclude_from).at(Step::Extract)?;
            excludes
                .add_file(&self.exclude_from, &text)
                .at(Step::Validate)?;
        }
        log::info!(
            "Sync archive {} into {} (native)",
            job.archive.display(),
            job.dest.display()
        );
        let placed = (|| {
            make_dest(job.dest)?;
            let budget = Budget::new(job.max_size, job.dest)?;
            let mut placer = Placer::new(job.dest, excludes, budget)?;
            archive::apply(job.archive, &mut placer, job.cancel)?;
            placer.finish(job.dest_mode, job.cancel)
        })();
        placed.with_context(|| job.src.to_string()).at(Step::Sync)
    }
}

/// Creates `dest` (its parent must exist, as with rsync) unless it is
/// already a directory.
fn make_dest(dest: &Path) -> Result<()> {
    match fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!("dest {} is not a directory", dest.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir(dest).with_context(|| format!("mkdir {}", dest.display()))
        }
        Err(e) => Err(e).with_context(|| format!("stat {}", dest.display())),
    }
}

/// The text of the archive's last regular file at `rel` (`exclude_from`,
/// which rsync reads from the extracted tree).
fn read_member(job: &Job<'_>, rel: &str) -> Result<String> {
    struct Find<'a> {
        rel: &'a Path,
        found: Option<Vec<u8>>,
    }
    impl Sink for Find<'_> {
        fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
            if m.path == self.rel {
                self.found = match m.kind {
                    Kind::File => Some(data.read_small(m)?),
                    _ => None,
                };
            }
            Ok(())
        }
    }
    let wanted: PathBuf = Path::new(rel)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let mut find = Find {
        rel: &wanted,
        found: None,
    };
    archive::apply(job.archive, &mut find, job.cancel).with_context(|| job.src.to_string())?;
    let bytes = find
        .found
        .ok_or_else(|| anyhow!("exclude_from: {rel} is not a file in the archive"))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("exclude_from: {rel} is not UTF-8 text"))
}

/// What a directory is given once its contents are in place.
struct DirMeta {
    mode: u32,
    /// `None` for a directory the archive only implies: its mtime is left.
    mtime: Option<FileTime>,
    owner: Option<(u32, u32)>,
}

/// Counts for the closing log line.
#[derive(Default)]
struct Counts {
    written: u64,
    unchanged: u64,
    deleted: u64,
}

/// Places members into `dest`.
struct Placer<'a> {
    dest: &'a Path,
    excludes: Excludes,
    budget: Budget,
    /// Running as root: owners and modes kept as stored.
    root: bool,
    umask: u32,
    /// Who we are: the owner of directories the archive only implies.
    ids: (u32, u32),
    /// Every path the archive's tree has, so far.
    seen: BTreeSet<PathBuf>,
    /// Directory metadata to apply at the end, by path ("" is dest).
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Directories known to be real directories in dest now.
    made: HashSet<PathBuf>,
    /// Files written by this run (a later duplicate is written again).
    written: HashSet<PathBuf>,
    /// Symlinks the archive placed.
    symlinks: HashSet<PathBuf>,
    counts: Counts,
}

impl Sink for Placer<'_> {
    fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
        let rel = m.path.as_path();
        if rel.as_os_str().is_empty() {
            let meta = self.dir_meta(m)?;
            self.dirs.insert(PathBuf::new(), meta);
            return Ok(());
        }
        if let Some(link) = rel.ancestors().skip(1).find(|a| self.symlinks.contains(*a)) {
            bail!(
                "archive member {:?} goes through the symlink {:?} in the archive: \
                 sync_strategy native never writes through links (rsync does this)",
                m.name,
                link
            );
        }
        if m.kind == Kind::Symlink {
            self.symlinks.insert(rel.to_path_buf());
        } else {
            self.symlinks.remove(rel);
        }
        if self.excludes.excludes_here_or_above(rel, m.kind == Kind::Dir) {
            return Ok(());
        }
        self.make_parents(rel, &m.name)?;
        let path = self.dest.join(rel);
        match m.kind {
            Kind::Dir => self.dir(m, rel, &path),
            Kind::File => self.file(m, rel, &path, data),
            Kind::Symlink => {
                let owner = self.owner(m)?;
                self.symlink(rel, &path, &m.link, owner, mtime_of(m))
            }
            Kind::HardLink => self.hard_link(m, rel, &path),
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => Ok(()),
        }
        .with_context(|| format!("placing {} at {}", m.name, path.display()))
    }
}

impl<'a> Placer<'a> {
    fn new(dest: &'a Path, excludes: Excludes, budget: Budget) -> Result<Self> {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let ids = unsafe { (libc::geteuid(), libc::getegid()) };
        let root = ids.0 == 0;
        let umask = archive::umask();
        let mut dirs = BTreeMap::new();
        dirs.insert(
            PathBuf::new(),
            DirMeta {
                mode: 0,
                mtime: None,
                owner: root.then_some(ids),
            },
        );
        Ok(Placer {
            dest,
            excludes,
            budget,
            root,
            umask,
            ids,
            seen: BTreeSet::new(),
            dirs,
            made: HashSet::new(),
            written: HashSet::new(),
            symlinks: HashSet::new(),
            counts: Counts::default(),
        })
    }

    /// Permission bits to give: as stored when root, else under the umask.
    fn mode(&self, m: &Member) -> u32 {
        if self.root {
            m.mode & 0o7777
        } else {
            m.mode & 0o777 & !self.umask
        }
    }

    /// Owner and group to give, when root.
    fn owner(&self, m: &Member) -> Result<Option<(u32, u32)>> {
        if !self.root {
            return Ok(None);
        }
        let id =
            |n: u64| u32::try_from(n).map_err(|_| anyhow!("{}: owner id {n} out of range", m.name));
        Ok(Some((id(m.uid)?, id(m.gid)?)))
    }

    fn dir_meta(&self, m: &Member) -> Result<DirMeta> {
        Ok(DirMeta {
            mode: self.mode(m),
            mtime: Some(mtime_of(m)),
            owner: self.owner(m)?,
        })
    }

    /// Makes every directory above `rel` a real directory in dest: made
    /// when missing, replacing a file or symlink left by an earlier deploy.
    fn make_parents(&mut self, rel: &Path, name: &str) -> Result<()> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.made.contains(parent) {
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
            self.seen.insert(dir.to_path_buf());
            if !self.dirs.contains_key(dir) {
                let meta = DirMeta {
                    mode: 0o777 & !self.umask,
                    mtime: None,
                    owner: self.root.then_some(self.ids),
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
                if !self.root && meta.mode() & 0o300 != 0o300 {
                    // Its final mode is applied at the end.
                    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))
                        .with_context(|| format!("chmod {}", path.display()))?;
                }
            }
            Ok(_) => {
                fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
                fs::create_dir(path).with_context(|| format!("mkdir {}", path.display()))?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(path).with_context(|| format!("mkdir {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
        self.made.insert(rel.to_path_buf());
        Ok(())
    }

    fn dir(&mut self, m: &Member, rel: &Path, path: &Path) -> Result<()> {
        if !self.made.contains(rel) {
            self.written.remove(rel);
            self.ensure_dir(rel, path)?;
        }
        let meta = self.dir_meta(m)?;
        self.dirs.insert(rel.to_path_buf(), meta);
        self.seen.insert(rel.to_path_buf());
        Ok(())
    }

    fn file(&mut self, m: &Member, rel: &Path, path: &Path, data: &mut Data<'_>) -> Result<()> {
        let size = m.sparse.as_ref().map_or(m.size, |s| s.size);
        let want = Wanted {
            mode: self.mode(m),
            owner: self.owner(m)?,
            mtime: mtime_of(m),
        };
        if let Some(meta) = self.unchanged(rel, path, size, want.mtime)? {
            return fix_in_place(path, meta, &want);
        }
        self.budget.charge(m.size, &m.name)?;
        self.replace_with_file(rel, path, &want, |file| data.write_to(m, file))
    }

    /// A hard link in the archive is a copy in dest, as with rsync -a.
    fn hard_link(&mut self, m: &Member, rel: &Path, path: &Path) -> Result<()> {
        let target = m.target.as_path();
        let through_link = target
            .ancestors()
            .skip(1)
            .any(|a| self.symlinks.contains(a));
        if through_link || !self.seen.contains(target) {
            if self.excludes.excludes_here_or_above(target, false)
                || self.excludes.excludes_here_or_above(target, true)
            {
                bail!(
                    "hard link {} to the excluded {}: sync_strategy native cannot place it",
                    m.name,
                    target.display()
                );
            }
            bail!("hard link {} to {}: no such member", m.name, target.display());
        }
        let source = self.dest.join(target);
        let meta = fs::symlink_metadata(&source)
            .with_context(|| format!("stat {}", source.display()))?;
        let mtime = FileTime::from_last_modification_time(&meta);
        let owner = self.root.then_some((meta.uid(), meta.gid()));
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
        if let Some(meta) = self.unchanged(rel, path, meta.len(), mtime)? {
            return fix_in_place(path, meta, &want);
        }
        self.budget.charge(meta.len(), &m.name)?;
        self.replace_with_file(rel, path, &want, |file| {
            let mut from =
                File::open(&source).with_context(|| format!("open {}", source.display()))?;
            std::io::copy(&mut from, &mut &*file)?;
            Ok(())
        })
    }

    /// rsync's quick check: dest holds a regular file of this size and
    /// mtime (to the second), not written earlier in this run. Its
    /// metadata, if so.
    fn unchanged(
        &mut self,
        rel: &Path,
        path: &Path,
        size: u64,
        mtime: FileTime,
    ) -> Result<Option<fs::Metadata>> {
        self.seen.insert(rel.to_path_buf());
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        };
        let same = meta.is_file()
            && meta.len() == size
            && meta.mtime() == mtime.unix_seconds()
            && !self.written.contains(rel);
        if !same {
            return Ok(None);
        }
        self.counts.unchanged += 1;
        Ok(Some(meta))
    }

    /// Writes a new file with `fill` under a temp name beside `path`, gives
    /// it the wanted metadata, and renames it over whatever is at `path`.
    fn replace_with_file(
        &mut self,
        rel: &Path,
        path: &Path,
        want: &Wanted,
        fill: impl FnOnce(&File) -> Result<()>,
    ) -> Result<()> {
        let temp = TempName::beside(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp.0)
            .with_context(|| format!("creating {}", temp.0.display()))?;
        fill(&file)?;
        if let Some((uid, gid)) = want.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).context("chown")?;
        }
        file.set_permissions(fs::Permissions::from_mode(want.mode))
            .context("chmod")?;
        filetime::set_file_handle_times(&file, None, Some(want.mtime)).context("setting mtime")?;
        drop(file);
        self.rename_over(rel, path, temp)?;
        self.written.insert(rel.to_path_buf());
        self.counts.written += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        rel: &Path,
        path: &Path,
        link: &Path,
        owner: Option<(u32, u32)>,
        mtime: FileTime,
    ) -> Result<()> {
        self.seen.insert(rel.to_path_buf());
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
        if let Some((uid, gid)) = owner {
            if (meta.uid(), meta.gid()) != (uid, gid) {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid)).context("chown")?;
            }
        }
        if meta.mtime() != mtime.unix_seconds() || !same {
            filetime::set_symlink_file_times(path, mtime, mtime).context("setting mtime")?;
        }
        Ok(())
    }

    /// Renames `temp` to `path`, first removing a directory in the way.
    fn rename_over(&mut self, rel: &Path, path: &Path, temp: TempName) -> Result<()> {
        if fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir()) {
            self.remove_dir(rel, path)?;
            self.forget_dir(rel);
        }
        fs::rename(&temp.0, path).with_context(|| format!("rename to {}", path.display()))?;
        temp.keep();
        self.made.remove(rel);
        Ok(())
    }

    /// Removes a directory that a non-directory replaces. Excluded paths
    /// inside it are kept, and then it cannot go (rsync fails the same way).
    fn remove_dir(&mut self, rel: &Path, path: &Path) -> Result<()> {
        if self.excludes.is_empty() {
            return crate::scratch::remove_tree(path)
                .with_context(|| format!("replacing {}", path.display()));
        }
        if !self.delete_unprotected(rel, path)? {
            bail!(
                "cannot replace the directory {}: it holds excluded paths",
                path.display()
            );
        }
        Ok(())
    }

    /// Forgets the directory at `rel` and what this run placed below it:
    /// a non-directory replaced it.
    fn forget_dir(&mut self, rel: &Path) {
        self.dirs.remove(rel);
        self.made.remove(rel);
        let below: Vec<PathBuf> = self
            .seen
            .range(rel.to_path_buf()..)
            .skip(1)
            .take_while(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in below {
            self.seen.remove(&p);
            self.dirs.remove(&p);
            self.made.remove(&p);
            self.written.remove(&p);
            self.symlinks.remove(&p);
        }
    }

    /// Deletes what dest has and the archive lacks (keeping excluded
    /// paths), then gives directories their metadata, deepest first; dest
    /// itself gets `dest_mode`.
    fn finish(mut self, dest_mode: u32, cancel: &CancellationToken) -> Result<()> {
        self.delete_extra(Path::new(""), cancel)?;
        if let Some(root) = self.dirs.get_mut(Path::new("")) {
            root.mode = dest_mode;
        }
        for (rel, meta) in self.dirs.iter().rev() {
            let path = self.dest.join(rel);
            let Ok(now) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !now.is_dir() {
                continue;
            }
            let mut chowned = false;
            if let Some((uid, gid)) = meta.owner {
                if (now.uid(), now.gid()) != (uid, gid) {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                        .with_context(|| format!("chown {}", path.display()))?;
                    chowned = true;
                }
            }
            if now.mode() & 0o7777 != meta.mode || chowned {
                fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                    .with_context(|| format!("chmod {}", path.display()))?;
            }
            if let Some(mtime) = meta.mtime {
                if fs::symlink_metadata(&path)?.mtime() != mtime.unix_seconds() {
                    filetime::set_file_mtime(&path, mtime)
                        .with_context(|| format!("setting mtime of {}", path.display()))?;
                }
            }
        }
        let c = &self.counts;
        log::info!(
            "native sync: {} written, {} unchanged, {} deleted",
            c.written,
            c.unchanged,
            c.deleted
        );
        Ok(())
    }

    /// Deletes the entries of the directory `rel` that the archive lacks,
    /// and recurses into those it has.
    fn delete_extra(&mut self, rel: &Path, cancel: &CancellationToken) -> Result<()> {
        interrupted(cancel)?;
        let dir = self.dest.join(rel);
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            if self.seen.contains(&child) {
                if is_dir {
                    self.delete_extra(&child, cancel)?;
                }
                continue;
            }
            if self.excludes.excludes(&child, is_dir) {
                continue;
            }
            let path = entry.path();
            if !is_dir {
                fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
                self.counts.deleted += 1;
            } else if self.excludes.is_empty() {
                crate::scratch::remove_tree(&path)
                    .with_context(|| format!("deleting {}", path.display()))?;
                self.counts.deleted += 1;
            } else {
                // What cannot go because it holds excluded paths stays,
                // as with rsync.
                self.delete_unprotected(&child, &path)?;
            }
        }
        Ok(())
    }

    /// Deletes the directory `path` (at `rel`) except excluded paths in it;
    /// whether it could go entirely.
    fn delete_unprotected(&mut self, rel: &Path, path: &Path) -> Result<bool> {
        let mut empty = true;
        let meta = fs::symlink_metadata(path)?;
        if !self.root && meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))?;
        }
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            if self.excludes.excludes(&child, is_dir) {
                empty = false;
            } else if is_dir {
                empty &= self.delete_unprotected(&child, &entry.path())?;
            } else {
                fs::remove_file(entry.path())
                    .with_context(|| format!("deleting {}", entry.path().display()))?;
                self.counts.deleted += 1;
            }
        }
        if empty {
            fs::remove_dir(path).with_context(|| format!("deleting {}", path.display()))?;
            self.counts.deleted += 1;
        }
        Ok(empty)
    }
}

/// Gives an unchanged file (now `meta`) the wanted mode and owner.
fn fix_in_place(path: &Path, meta: fs::Metadata, want: &Wanted) -> Result<()> {
    let mut mode = meta.mode() & 0o7777;
    if let Some((uid, gid)) = want.owner {
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).context("chown")?;
            // A chown clears setuid and setgid.
            mode = fs::symlink_metadata(path)?.mode() & 0o7777;
        }
    }
    if mode != want.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(want.mode)).context("chmod")?;
    }
    Ok(())
}

/// Metadata a placed file ends with.
struct Wanted {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: FileTime,
}

fn mtime_of(m: &Member) -> FileTime {
    FileTime::from_unix_time(m.mtime.0, m.mtime.1)
}

/// A temp name beside a path, removed on drop unless renamed away.
struct TempName(PathBuf);

impl TempName {
    /// `.<name>.<random>` in `path`'s directory, as rsync names its temp
    /// files.
    fn beside(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".{:06x}", rand::random::<u32>() & 0xff_ffff));
        Ok(TempName(path.with_file_name(temp)))
    }

    /// The temp name was renamed away: nothing to remove.
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}
