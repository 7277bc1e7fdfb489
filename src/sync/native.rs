//! `native`: `rsync -a --delete`'s result, streamed from the archive
//! straight into `dest` (SPEC 8.1). No extraction dir, no second copy.
//!
//! Each member is compared with what `dest` holds (rsync's quick check:
//! type, size, mtime to the second). A file that passes is not written;
//! its mode and group (and, as root, owner) are fixed in place. Anything else is
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use filetime::FileTime;
use tokio_util::sync::CancellationToken;

use super::{
    empty_or_missing, extract_into, rename_into_empty_dest, Excludes, Job, Leftovers, Settings,
    Strategy,
};
use crate::archive::{self, Budget, Data, Kind, Member, Sink};
use crate::scratch::ScratchDir;
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

impl Native {
    /// The manifest's excludes with `exclude_from`'s patterns added (read
    /// from the archive, as rsync reads them from the extracted tree).
    pub(super) fn excludes_for(&self, job: &Job<'_>) -> Result<Excludes, Failure> {
        let mut excludes = self.excludes.clone();
        if !self.exclude_from.is_empty() {
            let text = read_member(job, &self.exclude_from).at(Step::Extract)?;
            excludes
                .add_file(&self.exclude_from, &text)
                .at(Step::Validate)?;
        }
        Ok(excludes)
    }
}

impl Strategy for Native {
    fn place(&self, job: &Job<'_>) -> Result<Leftovers, Failure> {
        let excludes = self.excludes_for(job)?;
        if excludes.is_empty() && empty_or_missing(job.dest) {
            if let Some(tree) = extract_beside(job)? {
                if rename_into_empty_dest(tree.path(), job.dest) {
                    return Ok(Leftovers::none());
                }
            }
        }
        log::info!(
            "Sync archive {} into {} (native)",
            job.archive.display(),
            job.dest.display()
        );
        stream(job, job.dest, excludes, Target::Dest)
            .with_context(|| job.src.to_string())
            .at(Step::Sync)?;
        Ok(Leftovers::none())
    }
}

/// Where [`stream`] places the archive.
pub(super) enum Target<'a> {
    /// Into `dest` as it is: `rsync -a --delete`'s result.
    Dest,
    /// Into a new release dir: the tree rsync makes in an empty dest. A
    /// file the earlier release (if any) has with the member's size, mtime,
    /// mode and owner is hard linked from it instead of written (`rsync
    /// --link-dest`); nothing else is ever changed there.
    NewRelease(Option<&'a Path>),
}

/// Streams the job's archive into `dest` (made when missing), as `into`
/// says.
pub(super) fn stream(
    job: &Job<'_>,
    dest: &Path,
    excludes: Excludes,
    into: Target<'_>,
) -> Result<()> {
    // The free space that bounds the default size limit is dest's, or its
    // parent's while dest does not exist yet.
    let on = match dest.exists() {
        true => dest,
        false => dest.parent().unwrap_or(dest),
    };
    let budget = Budget::new(job.max_size, on)?;
    let mut placer = Placer::new(dest, excludes, budget, into)?;
    archive::apply(job.archive, &mut placer, job.cancel)?;
    placer.place_deferred()?;
    if !placer.pending.is_empty() {
        placer.place_pending(job)?;
    }
    placer.finish(job.dest_mode, job.cancel)
}

/// For a first deploy: the archive extracted into a private dir beside
/// `dest` (same filesystem, so it can be renamed into place), or `None`
/// when dest's parent takes no new dir (then files are placed one by one).
fn extract_beside(job: &Job<'_>) -> Result<Option<ScratchDir>, Failure> {
    let parent = match job.dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(dir) = ScratchDir::new_in(parent, ".stretcher_src") else {
        return Ok(None);
    };
    let tree = extract_into(job, dir).map_err(|f| Failure {
        step: Step::Sync,
        ..f
    })?;
    Ok(Some(tree))
}

/// Creates `dest` (its parent must exist, as with rsync) unless it is
/// already a directory (then says so). As non-root, makes it writable
/// until the end, when it gets `dest_mode`.
fn make_dest(dest: &Path, root: bool) -> Result<bool> {
    match fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            if !root && meta.mode() & 0o700 != 0o700 {
                fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() | 0o700))
                    .with_context(|| format!("chmod {}", dest.display()))?;
            }
            Ok(false)
        }
        Ok(_) => bail!("dest {} is not a directory", dest.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir(dest).with_context(|| format!("mkdir {}", dest.display()))?;
            Ok(true)
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
    owner: Owner,
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
    seen: HashSet<PathBuf>,
    /// Directory metadata to apply at the end, by path ("" is dest).
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Directories known to be real directories in dest now.
    made: HashSet<PathBuf>,
    /// Directories this run created: all they hold is from this run, so
    /// nothing in them needs a look at dest (no stat, nothing to delete).
    fresh: HashSet<PathBuf>,
    /// Paths this run wrote or replaced.
    written: HashSet<PathBuf>,
    /// Regular files this run replaced, as they were: what rsync's quick
    /// check compares a later duplicate member with (rsync compares the
    /// archive's final tree with dest as it was).
    originals: HashMap<PathBuf, Original>,
    /// Files left with another mtime than their member's (the quick
    /// check compares seconds only): the member's, for hard links to them,
    /// which rsync copies from the extracted tree.
    kept: HashMap<PathBuf, FileTime>,
    /// Members read so far.
    index: u64,
    /// Hard links whose data has gone by (to excluded or skipped members,
    /// or to files the quick check left), by path: placed by a second read.
    pending: BTreeMap<PathBuf, Pending>,
    /// Symlinks the archive placed.
    symlinks: HashSet<PathBuf>,
    /// Non-directory members held back until the whole archive is read,
    /// by path: those that replace a directory in dest, and those whose
    /// path is excluded as a directory. A later member may make the path a
    /// directory again (tar's last member wins), and then dest's directory
    /// must never have been touched.
    deferred: BTreeMap<PathBuf, Deferred>,
    /// Whether dest exists (it is made on the first member, so an archive
    /// that is not a tar leaves no dest behind).
    dest_ready: bool,
    /// Into dest, or into a new release (see [`Target`]).
    into: Target<'a>,
    /// Paths hard linked from the live release.
    linked: HashSet<PathBuf>,
    counts: Counts,
}

impl Sink for Placer<'_> {
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
                 sync_strategy native never writes through links (rsync does this)",
                m.name,
                link
            );
        }
        if let Some(file) = rel
            .ancestors()
            .skip(1)
            .find(|a| self.seen.contains(*a) && !self.dirs.contains_key(*a))
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
        if m.kind != Kind::Dir && self.must_defer(rel, &path) {
            return self
                .defer(m, rel, &path, data)
                .with_context(|| format!("placing {} at {}", m.name, path.display()));
        }
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
    fn new(dest: &'a Path, excludes: Excludes, budget: Budget, into: Target<'a>) -> Result<Self> {
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
                owner: Owner::ours(root, ids),
            },
        );
        Ok(Placer {
            dest,
            excludes,
            budget,
            root,
            umask,
            ids,
            seen: HashSet::new(),
            dirs,
            made: HashSet::new(),
            fresh: HashSet::new(),
            written: HashSet::new(),
            originals: HashMap::new(),
            kept: HashMap::new(),
            index: 0,
            pending: BTreeMap::new(),
            symlinks: HashSet::new(),
            deferred: BTreeMap::new(),
            dest_ready: false,
            into,
            linked: HashSet::new(),
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

    /// Owner and group to give: the member's as root; else our group,
    /// which rsync -g copies from the tree it extracted as us.
    fn owner(&self, m: &Member) -> Result<Owner> {
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
            self.seen.insert(dir.to_path_buf());
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
                self.note_original(rel, path, &meta);
                fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
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
        let (want, vacant) = match self.quick_check(rel, path, size, want)? {
            Check::Same(meta, want) => return fix_in_place(path, meta, &want),
            Check::Differs(want) => (want, false),
            Check::Vacant(want) => (want, true),
        };
        if self.link(rel, path, size, &want, vacant)? {
            return Ok(());
        }
        self.budget.charge(m.size, &m.name)?;
        self.replace_with_file(rel, path, &want, vacant, |file| data.write_to(m, file))
    }

    /// A hard link in the archive is a copy in dest, as with rsync -a.
    fn hard_link(&mut self, m: &Member, rel: &Path, path: &Path) -> Result<()> {
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
            self.seen.insert(rel.to_path_buf());
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
        let (want, vacant) = match self.quick_check(rel, path, meta.len(), want)? {
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
        self.budget.charge(meta.len(), &m.name)?;
        self.replace_with_file(rel, path, &want, vacant, |file| {
            let mut from =
                File::open(&source).with_context(|| format!("open {}", source.display()))?;
            std::io::copy(&mut from, &mut &*file)?;
            Ok(())
        })
    }

    /// Whether the non-directory member at `rel` must wait for the end of
    /// the archive: it would replace a directory in dest, or a later
    /// directory member there would be excluded.
    fn must_defer(&self, rel: &Path, path: &Path) -> bool {
        self.excludes.excludes(rel, true)
            || (self.seen.contains(rel) || !self.in_fresh(rel))
                && fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
    }

    /// Whether `rel` is in a directory this run created.
    fn in_fresh(&self, rel: &Path) -> bool {
        rel.parent().is_some_and(|dir| self.fresh.contains(dir))
    }

    /// Holds back the non-directory member `m` at `rel`: a file's data goes
    /// to a temp name beside `path`, a hard link waits for the second read.
    /// The archive's tree has no directory at `rel` any more.
    fn defer(&mut self, m: &Member, rel: &Path, path: &Path, data: &mut Data<'_>) -> Result<()> {
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
        self.seen.insert(rel.to_path_buf());
        let captured = match m.kind {
            Kind::File => {
                let want = Wanted {
                    mode: self.mode(m),
                    owner: self.owner(m)?,
                    mtime: mtime_of(m),
                };
                let temp = TempName::beside(path)?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp.0)
                    .with_context(|| format!("creating {}", temp.0.display()))?;
                self.budget.charge(m.size, &m.name)?;
                data.write_to(m, &file)?;
                let size = m.sparse.as_ref().map_or(m.size, |s| s.size);
                Captured::File(temp, want, size)
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
    fn supersede(&mut self, rel: &Path, dir: bool) {
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
    fn place_deferred(&mut self) -> Result<()> {
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

    /// Places the hard link `m` (at `rel`) after a second read of the
    /// archive, which finds its target's data.
    fn defer_link(&mut self, m: &Member, rel: &Path) {
        let link = Pending {
            index: self.index,
            rel: rel.to_path_buf(),
            target: m.target.clone(),
            name: m.name.clone(),
        };
        self.pending.insert(rel.to_path_buf(), link);
    }

    /// Whether this run builds a new release.
    fn new_release(&self) -> bool {
        matches!(self.into, Target::NewRelease(_))
    }

    /// Hard links `path` to the same file in the live release when that one is
    /// a regular file with exactly the wanted size, mtime, mode and owner,
    /// and ours (a file of another user is never shared), in place of
    /// what is at `path` (nothing, when `vacant`). Whether it did; a link
    /// that fails (another filesystem, too many links) is written instead.
    fn link(
        &mut self,
        rel: &Path,
        path: &Path,
        size: u64,
        want: &Wanted,
        vacant: bool,
    ) -> Result<bool> {
        let Target::NewRelease(Some(live)) = self.into else {
            return Ok(false);
        };
        let from = live.join(rel);
        let Ok(meta) = fs::symlink_metadata(&from) else {
            return Ok(false);
        };
        let same = meta.is_file()
            && meta.len() == size
            && FileTime::from_last_modification_time(&meta) == want.mtime
            && meta.mode() & 0o7777 == want.mode
            && !want.owner.differs(&meta)
            && want.owner.uid.unwrap_or(self.ids.0) == meta.uid();
        if !same {
            return Ok(false);
        }
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

    /// rsync's quick check, against what dest held before this run: a
    /// regular file of this size and mtime (to the second) is not written.
    /// When this run already replaced the file (the archive holds the path
    /// twice), dest's original is gone: if it would have passed, the new
    /// file keeps its mtime, as rsync leaves it.
    fn quick_check(&mut self, rel: &Path, path: &Path, size: u64, want: Wanted) -> Result<Check> {
        let new = self.seen.insert(rel.to_path_buf());
        let secs = want.mtime.unix_seconds();
        if !self.kept.is_empty() {
            self.kept.remove(rel);
        }
        if self.in_fresh(rel) {
            // Dest had nothing here: only this run's members.
            return Ok(match new {
                true => Check::Vacant(want),
                false => Check::Differs(want),
            });
        }
        if self.written.contains(rel) {
            let original = match self.originals.remove(rel) {
                Some(o) if (o.len, o.secs) == (size, secs) => o,
                Some(o) => {
                    self.originals.insert(rel.to_path_buf(), o);
                    return Ok(Check::Differs(want));
                }
                None => return Ok(Check::Differs(want)),
            };
            let Some(saved) = original.saved else {
                // Its bytes are gone: write the member's, with its mtime.
                self.kept.insert(rel.to_path_buf(), want.mtime);
                return Ok(Check::Differs(Wanted {
                    mtime: FileTime::from_unix_time(original.secs, original.nanos),
                    ..want
                }));
            };
            // Dest's file passes after all: put it back.
            self.rename_over(rel, path, saved)?;
            self.written.remove(rel);
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Check::Differs(want)),
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        };
        // In a new release, what is there is this run's (maybe a file
        // shared with the live release): the later member is written, as
        // rsync writes the final tree into an empty dest.
        let passes = meta.is_file() && meta.len() == size && meta.mtime() == secs;
        if passes && !self.new_release() {
            self.counts.unchanged += 1;
            if FileTime::from_last_modification_time(&meta) != want.mtime {
                self.kept.insert(rel.to_path_buf(), want.mtime);
            }
            return Ok(Check::Same(meta, want));
        }
        Ok(Check::Differs(want))
    }

    /// Remembers the regular file at `rel` (`meta`) before this run first
    /// replaces it, keeping it under a temp name (a hard link) until the
    /// whole archive is placed: a later member at `rel` may pass the quick
    /// check against it.
    fn note_original(&mut self, rel: &Path, path: &Path, meta: &fs::Metadata) {
        if meta.is_file() && self.written.insert(rel.to_path_buf()) {
            let saved = TempName::beside(path)
                .ok()
                .filter(|temp| fs::hard_link(path, &temp.0).is_ok());
            let original = Original {
                len: meta.len(),
                secs: meta.mtime(),
                nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
                saved,
            };
            self.originals.insert(rel.to_path_buf(), original);
        }
        self.written.insert(rel.to_path_buf());
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

    fn symlink(
        &mut self,
        rel: &Path,
        path: &Path,
        link: &Path,
        owner: Owner,
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
    fn rename_over(&mut self, rel: &Path, path: &Path, temp: TempName) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let below = paths_below(rel, path);
                self.remove_dir(rel, path)?;
                self.forget_dir(rel, below);
            }
            Ok(meta) => self.note_original(rel, path, &meta),
            Err(_) => {}
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

    /// Forgets the directory at `rel` and what was below it (`below`): a
    /// non-directory replaced it.
    fn forget_dir(&mut self, rel: &Path, below: Vec<PathBuf>) {
        self.dirs.remove(rel);
        self.made.remove(rel);
        self.fresh.remove(rel);
        for p in below {
            self.fresh.remove(&p);
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
        if !self.dest_ready && make_dest(self.dest, self.root)? {
            self.fresh.insert(PathBuf::new());
        }
        let dest_fresh = self.fresh.contains(Path::new(""));
        // Dest's files that no later member passed go now.
        self.originals.clear();
        if !dest_fresh {
            self.delete_extra(Path::new(""), cancel)?;
        }
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
            if meta.owner.differs(&now) {
                meta.owner
                    .set(&path)
                    .with_context(|| format!("chown {}", path.display()))?;
                chowned = true;
            }
            if now.mode() & 0o7777 != meta.mode || chowned {
                fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                    .with_context(|| format!("chmod {}", path.display()))?;
            }
            if let Some(mtime) = meta.mtime {
                if fs::symlink_metadata(&path)?.mtime() != mtime.unix_seconds() {
                    archive::set_mtime(&path, mtime)
                        .with_context(|| format!("setting mtime of {}", path.display()))?;
                }
            }
        }
        let c = &self.counts;
        if self.new_release() {
            log::info!(
                "release: {} written, {} hard linked from the live release",
                c.written,
                self.linked.len()
            );
        } else {
            log::info!(
                "native sync: {} written, {} unchanged, {} deleted",
                c.written,
                c.unchanged,
                c.deleted
            );
        }
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
                if is_dir && !self.fresh.contains(&child) {
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

impl Placer<'_> {
    /// Reads the archive again for the members whose data pending hard
    /// links need, and places copies of them at the links' paths.
    fn place_pending(&mut self, job: &Job<'_>) -> Result<()> {
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
        archive::apply(job.archive, &mut late, job.cancel)?;
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
                match self.quick_check(&p.rel, &path, size, want)? {
                    Check::Same(meta, want) => fix_in_place(&path, meta, &want),
                    Check::Differs(want) => {
                        self.place_temp(&p.rel, &path, temp, &want, size, false)
                    }
                    Check::Vacant(want) => self.place_temp(&p.rel, &path, temp, &want, size, true),
                }
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
enum Captured {
    /// A temp file beside the link's path, the metadata and size it gets.
    File(TempName, Wanted, u64),
    /// A symlink: its target, owner and mtime.
    Symlink(PathBuf, Owner, FileTime),
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
        let Some(first) = waiting.first() else {
            return Ok(());
        };
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
                let want = Wanted {
                    mode: self.placer.mode(m),
                    owner: self.placer.owner(m)?,
                    mtime: mtime_of(m),
                };
                let size = m.sparse.as_ref().map_or(m.size, |s| s.size);
                for rel in &waiting {
                    self.placer.real_dirs_above(rel)?;
                }
                let temp = TempName::beside(&self.placer.dest.join(first))?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp.0)
                    .with_context(|| format!("creating {}", temp.0.display()))?;
                self.placer.budget.charge(m.size, &m.name)?;
                data.write_to(m, &file)?;
                for rel in &waiting[1..] {
                    self.placer.budget.charge(m.size, &m.name)?;
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

/// Every path below the directory `path` (at `rel`) in dest, as far as
/// it can be read.
fn paths_below(rel: &Path, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(rel.to_path_buf(), path.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((child.clone(), entry.path()));
            }
            out.push(child);
        }
    }
    out
}

/// Gives an unchanged file (now `meta`) the wanted mode and owner.
fn fix_in_place(path: &Path, meta: fs::Metadata, want: &Wanted) -> Result<()> {
    let mut mode = meta.mode() & 0o7777;
    if want.owner.differs(&meta) {
        want.owner.set(path)?;
        // A chown clears setuid and setgid.
        mode = fs::symlink_metadata(path)?.mode() & 0o7777;
    }
    if mode != want.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(want.mode)).context("chmod")?;
    }
    Ok(())
}

/// The quick check's verdict, with the metadata the file ends with.
enum Check {
    /// Leave the file (now `Metadata`); fix its mode and owner.
    Same(fs::Metadata, Wanted),
    /// Write it.
    Differs(Wanted),
    /// Write it: nothing is there.
    Vacant(Wanted),
}

/// A regular file in dest before this run replaced it.
struct Original {
    len: u64,
    secs: i64,
    nanos: u32,
    /// The file itself, under a temp name, when it could be kept.
    saved: Option<TempName>,
}

/// A member held back until the end of the archive.
struct Deferred {
    name: String,
    captured: Captured,
}

/// A hard link to a member that is excluded (so not in dest): the second
/// read of the archive copies that member's data.
struct Pending {
    /// The link's place in the archive.
    index: u64,
    rel: PathBuf,
    target: PathBuf,
    name: String,
}

/// Who a placed entry belongs to. As root, the member's owner and group.
/// Otherwise only the group is ours to set (rsync -a without root: -g, not
/// -o), and a group we may not set is left, where rsync would fail.
#[derive(Clone, Copy)]
struct Owner {
    uid: Option<u32>,
    gid: u32,
}

impl Owner {
    /// Our own (`ids`): what implied directories get.
    fn ours(root: bool, ids: (u32, u32)) -> Self {
        Owner {
            uid: root.then_some(ids.0),
            gid: ids.1,
        }
    }

    /// Whether `meta` has another owner or group than this.
    fn differs(&self, meta: &fs::Metadata) -> bool {
        self.uid.is_some_and(|uid| uid != meta.uid()) || self.gid != meta.gid()
    }

    /// Sets this owner on `path` (not following a symlink).
    fn set(&self, path: &Path) -> Result<()> {
        match std::os::unix::fs::lchown(path, self.uid, Some(self.gid)) {
            Err(e) if self.uid.is_none() && e.kind() == ErrorKind::PermissionDenied => Ok(()),
            other => other.with_context(|| format!("chown {}", path.display())),
        }
    }
}

/// Metadata a placed file ends with.
#[derive(Clone, Copy)]
struct Wanted {
    mode: u32,
    owner: Owner,
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
        // Short enough for NAME_MAX (255 bytes) with the dots and suffix.
        let name = &name.as_bytes()[..name.len().min(247)];
        let mut temp = std::ffi::OsString::from(".");
        temp.push(std::ffi::OsStr::from_bytes(name));
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
