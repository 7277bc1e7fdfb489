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
//!
//! The parts: this file holds the strategy, the run ([`stream`]) and its
//! end (the delete pass, then directory metadata); `first_deploy.rs`
//! renames a whole extracted tree into an empty dest; `place.rs` places
//! each member; `quick_check.rs` decides what is left as it is;
//! `held_back.rs` holds the members that wait for the end of the archive
//! or for a second read; `delete.rs` removes what dest has and the archive
//! lacks; `prune.rs` deletes it first when placing runs out of room;
//! `room.rs` counts the bytes held against `--max-extract-size`;
//! `meta.rs` and `temp.rs` are the metadata an entry gets and the temp
//! names it is written under.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use filetime::FileTime;
use tokio_util::sync::CancellationToken;

mod delete;
mod first_deploy;
mod held_back;
mod meta;
mod path_set;
mod place;
mod prune;
mod quick_check;
mod room;
mod temp;

use self::held_back::{Deferred, Pending};
use self::meta::Owner;
use self::path_set::PathSet;
use self::quick_check::Original;
use self::room::Room;
use super::{
    empty_or_missing, rename_into_empty_dest, Excludes, Job, Leftovers, Settings, Strategy,
};
use crate::archive::{self, Budget, Data, Kind, Member, Sink};
use crate::step::{AtStep, Failure, Step};

/// The in-process strategy.
pub struct Native {
    excludes: Excludes,
    exclude_from: String,
}

impl Native {
    /// Checks the manifest's `excludes` now, before any download.
    pub fn new(settings: Settings) -> Result<Self> {
        Self::named(settings, "native")
    }

    /// The engine of the `sync_strategy` named `strategy` (`release`
    /// builds on it), which its messages name.
    pub(super) fn named(settings: Settings, strategy: &'static str) -> Result<Self> {
        Ok(Native {
            excludes: Excludes::new(&settings.excludes, strategy)?,
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
        first_deploy::remove_leftovers(job.dest);
        let excludes = self.excludes_for(job)?;
        if excludes.is_empty() && empty_or_missing(job.dest) {
            if let Some(tree) = first_deploy::extract_beside(job)? {
                if rename_into_empty_dest(tree.path(), job.dest) {
                    return Ok(Leftovers::none());
                }
            }
        }
        log::info!(
            "Sync archive {} into {} (native)",
            job.archive.path().display(),
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

impl Target<'_> {
    /// The `sync_strategy` that places this way, for messages.
    fn strategy(&self) -> &'static str {
        match self {
            Target::Dest => "native",
            Target::NewRelease(_) => "release",
        }
    }
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
    let into_dest = matches!(into, Target::Dest);
    let mut placer = Placer::new(dest, excludes, Room::new(budget), into)?;
    match placer.place_all(job) {
        Err(e) if into_dest && archive::out_of_room(&e) => {
            placer = placer.prune(job)?;
            placer.place_all(job)?;
        }
        placed => placed?,
    }
    placer.finish(job.dest_mode, job.cancel)
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
    archive::apply_indexed(job.archive, &mut find, job.cancel)
        .with_context(|| job.src.to_string())?;
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
    /// Files written before placing started again (see `prune.rs`): the
    /// second time they pass the quick check, but were not unchanged.
    placed_before: u64,
}

/// Places members into `dest`.
struct Placer<'a> {
    dest: &'a Path,
    excludes: Excludes,
    /// `--max-extract-size`, against the bytes held at once.
    room: Room,
    /// Running as root: owners and modes kept as stored.
    root: bool,
    umask: u32,
    /// Who we are: the owner of directories the archive only implies.
    ids: (u32, u32),
    /// Every path the archive's tree has, so far.
    seen: PathSet,
    /// Paths the archive's whole tree has as non-directories, when known
    /// before placing (see `prune.rs`): a directory in dest there goes.
    as_files: HashSet<PathBuf>,
    /// Directory metadata to apply at the end, by path ("" is dest).
    dirs: HashMap<PathBuf, DirMeta>,
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

impl<'a> Placer<'a> {
    fn new(dest: &'a Path, excludes: Excludes, room: Room, into: Target<'a>) -> Result<Self> {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let ids = unsafe { (libc::geteuid(), libc::getegid()) };
        let root = ids.0 == 0;
        let umask = archive::umask();
        let mut dirs = HashMap::new();
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
            room,
            root,
            umask,
            ids,
            seen: PathSet::new(),
            as_files: HashSet::new(),
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

    /// Places every member: the archive, then the members held back.
    fn place_all(&mut self, job: &Job<'_>) -> Result<()> {
        archive::apply_indexed(job.archive, self, job.cancel)?;
        self.place_deferred()?;
        if !self.pending.is_empty() {
            self.place_pending(job)?;
        }
        Ok(())
    }

    /// Deletes what dest has and the archive lacks (keeping excluded
    /// paths), then gives directories their metadata, deepest first; dest
    /// itself gets `dest_mode`.
    fn finish(mut self, dest_mode: u32, cancel: &CancellationToken) -> Result<()> {
        if !self.dest_ready && make_dest(self.dest, self.root)? {
            self.fresh.insert(PathBuf::new());
        }
        let dest_fresh = self.fresh.contains(Path::new(""));
        if !dest_fresh {
            self.delete_extra(Path::new(""), cancel)?;
        }
        if let Some(root) = self.dirs.get_mut(Path::new("")) {
            root.mode = dest_mode;
        }
        // Deepest first: a directory sorts before what it holds.
        let mut dirs: Vec<_> = self.dirs.iter().collect();
        dirs.sort_unstable_by(|a, b| b.0.cmp(a.0));
        for (rel, meta) in dirs {
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
            // chown and chmod leave the mtime as `now` has it.
            if let Some(mtime) = meta.mtime {
                if now.mtime() != mtime.unix_seconds() {
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
                c.unchanged.saturating_sub(c.placed_before),
                c.deleted
            );
        }
        Ok(())
    }
}
