//! The one write path: every member, in archive order, through the same
//! checks. A later member replaces whatever an earlier one left at its path
//! (a file, a symlink, a directory with its contents), never writing through
//! a symlink at that path. Directory metadata is applied at the end,
//! deepest first, so read-only directories can be filled meanwhile.
//!
//! The extraction dir is private and starts empty, so only symlinks made by
//! this archive can lead outside it. Each is remembered at its physical
//! place (its parent resolved); a member whose parent path meets one has
//! that parent resolved and checked to stay inside the dir.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use filetime::FileTime;

use super::stream::{Kind, Member};
use super::{Budget, Data, Sink};

/// A directory's metadata, applied after every member is written.
struct DirMeta {
    mode: u32,
    mtime: FileTime,
    owner: Option<(u32, u32)>,
}

/// Writes members into one extraction dir.
pub(super) struct Writer<'a> {
    dir: &'a Path,
    /// `dir` with symlinks resolved.
    real_dir: PathBuf,
    /// Running as root: owners and modes kept as stored.
    root: bool,
    umask: u32,
    /// Who new files belong to, to skip a chown that changes nothing.
    ids: (u32, u32),
    /// New files take their group from a setgid dir: always chown.
    setgid_dir: bool,
    /// Directories known to exist (physical relative paths).
    made: HashSet<PathBuf>,
    /// Symlinks in the tree (physical relative paths).
    symlinks: HashSet<PathBuf>,
    /// Directory members by physical relative path: the last one wins.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// `--max-extract-size`, charged for every file member.
    budget: Budget,
}

impl<'a> Writer<'a> {
    /// A writer into the existing, empty directory `dir`.
    pub fn new(dir: &'a Path, budget: Budget) -> Result<Self> {
        let real_dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let meta = fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        let root = super::is_root();
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let ids = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Writer {
            dir,
            real_dir,
            root,
            umask: super::umask(),
            ids,
            setgid_dir: meta.mode() & 0o2000 != 0,
            made: HashSet::new(),
            symlinks: HashSet::new(),
            dirs: BTreeMap::new(),
            budget,
        })
    }
}

impl Sink for Writer<'_> {
    /// Writes `m` at its place in the extraction dir.
    fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
        if m.kind == Kind::File {
            self.budget.charge(m.size, &m.name)?;
        }
        let rel = self.place(&m.path, &m.name)?;
        let path = self.dir.join(&rel);
        match m.kind {
            Kind::Dir => self.dir_member(m, rel, &path),
            Kind::File => self
                .file(m, &rel, &path, data)
                .with_context(|| format!("extracting {} to {}", m.name, path.display())),
            Kind::Symlink => self
                .symlink(m, rel, &path)
                .with_context(|| format!("extracting symlink {} to {}", m.name, path.display())),
            Kind::HardLink => self.hard_link(m, rel, &path),
            // Never handed to a sink.
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => Ok(()),
        }
    }
}

impl Writer<'_> {
    /// Applies directory metadata, deepest first, to paths that are still
    /// directories.
    pub fn finish(self) -> Result<()> {
        for (rel, meta) in self.dirs.iter().rev() {
            let path = self.dir.join(rel);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Some((uid, gid)) = meta.owner {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            set_mtime(&path, meta.mtime)
                .with_context(|| format!("setting mtime of {}", path.display()))?;
        }
        Ok(())
    }

    /// Makes `rel`'s parent directories and returns `rel`'s physical
    /// relative path. Fails when the parent resolves outside the dir.
    fn place(&mut self, rel: &Path, name: &str) -> Result<PathBuf> {
        let Some(parent) = rel.parent() else {
            return Ok(PathBuf::new());
        };
        let Some(file_name) = rel.file_name() else {
            return Ok(rel.to_path_buf());
        };
        if !self.through_symlink(parent) {
            self.make_dirs(parent)?;
            return Ok(rel.to_path_buf());
        }
        let real = self.resolve_parent(parent, name)?;
        Ok(real.join(file_name))
    }

    /// `rel`'s physical relative path, for an existing `rel`: its parent
    /// resolved when it meets a symlink. Creates nothing.
    fn locate(&self, rel: &Path, name: &str) -> Result<PathBuf> {
        match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(file_name)) if self.through_symlink(parent) => {
                Ok(self.inside(&self.dir.join(parent), name)?.join(file_name))
            }
            _ => Ok(rel.to_path_buf()),
        }
    }

    /// Creates `parent` (a path through a symlink) and returns its physical
    /// relative path, checking each step stays inside the dir.
    fn resolve_parent(&mut self, parent: &Path, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(parent);
        // The part that exists must resolve inside; then the rest is made
        // by mkdir, which never follows a symlink it would create over.
        let existing = path.ancestors().find(|p| p.exists()).unwrap_or(self.dir);
        self.inside(existing, name)?;
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let real = self.inside(&path, name)?;
        Ok(real)
    }

    /// `path` resolved, relative to the resolved dir; fails outside it.
    fn inside(&self, path: &Path, name: &str) -> Result<PathBuf> {
        let real = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        match real.strip_prefix(&self.real_dir) {
            Ok(rel) => Ok(rel.to_path_buf()),
            Err(_) => bail!("archive member {name:?} would land outside the extraction dir"),
        }
    }

    /// Whether `rel` or a directory above it is a symlink in the tree.
    fn through_symlink(&self, rel: &Path) -> bool {
        !self.symlinks.is_empty() && rel.ancestors().any(|p| self.symlinks.contains(p))
    }

    /// Creates the directory `rel` and its parents, once.
    fn make_dirs(&mut self, rel: &Path) -> Result<()> {
        if rel.as_os_str().is_empty() || self.made.contains(rel) {
            return Ok(());
        }
        let path = self.dir.join(rel);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        for p in rel.ancestors() {
            if p.as_os_str().is_empty() || !self.made.insert(p.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// Runs `make`; if something is in the way at `path`, removes it and
    /// runs `make` again.
    fn replacing<T>(
        &mut self,
        rel: &Path,
        path: &Path,
        make: impl Fn() -> std::io::Result<T>,
    ) -> Result<T> {
        match make() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.remove(rel, path)?;
                Ok(make()?)
            }
            other => Ok(other?),
        }
    }

    /// Removes whatever is at `path`, a directory with its contents.
    fn remove(&mut self, rel: &Path, path: &Path) -> Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            fs::remove_dir_all(path).with_context(|| format!("replacing {}", path.display()))?;
            self.made.retain(|p| !p.starts_with(rel));
            self.symlinks.retain(|p| !p.starts_with(rel));
            let below: Vec<PathBuf> = self
                .dirs
                .range(rel.to_path_buf()..)
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(rel))
                .cloned()
                .collect();
            for p in below {
                self.dirs.remove(&p);
            }
        } else {
            fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
            self.symlinks.remove(rel);
        }
        Ok(())
    }

    /// Permission bits to give: as stored when root, else under the umask.
    fn mode(&self, m: &Member) -> u32 {
        if self.root {
            m.mode & 0o7777
        } else {
            m.mode & 0o777 & !self.umask
        }
    }

    /// Owner and group to give, when root ([`Member::owner`]).
    fn owner(&self, m: &Member) -> Result<Option<(u32, u32)>> {
        if !self.root {
            return Ok(None);
        }
        m.owner().map(Some)
    }

    fn dir_member(&mut self, m: &Member, rel: PathBuf, path: &Path) -> Result<()> {
        if !rel.as_os_str().is_empty() && !self.made.contains(&rel) {
            let made = self.replacing(&rel, path, || match fs::create_dir(path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match fs::symlink_metadata(path) {
                        Ok(meta) if meta.is_dir() => Ok(()),
                        _ => Err(e),
                    }
                }
                other => other,
            });
            made.with_context(|| format!("creating {}", path.display()))?;
            self.made.insert(rel.clone());
        }
        let meta = DirMeta {
            mode: self.mode(m),
            mtime: FileTime::from_unix_time(m.mtime.0, m.mtime.1),
            owner: self.owner(m)?,
        };
        self.dirs.insert(rel, meta);
        Ok(())
    }

    fn file(&mut self, m: &Member, rel: &Path, path: &Path, data: &mut Data<'_>) -> Result<()> {
        let mode = self.mode(m);
        let owner = self.owner(m)?;
        // Created with the permission bits it will keep where the kernel's
        // umask gives exactly them, so no chmod is needed.
        let created = (m.mode & 0o777) & !self.umask;
        let file = self.replacing(rel, path, || {
            // create_new never follows a symlink at the final component.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(m.mode & 0o777)
                .open(path)
        })?;
        data.write_to(m, &file)?;
        if let Some((uid, gid)) = owner {
            if self.setgid_dir || (uid, gid) != self.ids {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).context("chown")?;
            }
        }
        // After the chown, which clears setuid and setgid (never in `created`).
        if mode != created {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .context("chmod")?;
        }
        let mtime = FileTime::from_unix_time(m.mtime.0, m.mtime.1);
        filetime::set_file_handle_times(&file, None, Some(mtime)).context("setting mtime")
    }

    fn symlink(&mut self, m: &Member, rel: PathBuf, path: &Path) -> Result<()> {
        self.replacing(&rel, path, || std::os::unix::fs::symlink(&m.link, path))?;
        self.symlinks.insert(rel);
        if let Some((uid, gid)) = self.owner(m)? {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).context("chown")?;
        }
        let mtime = FileTime::from_unix_time(m.mtime.0, m.mtime.1);
        filetime::set_symlink_file_times(path, mtime, mtime).context("setting mtime")
    }

    /// A hard link to an earlier member. Linking never follows a symlink
    /// at either end; a link to a symlink is a symlink, remembered as one.
    fn hard_link(&mut self, m: &Member, rel: PathBuf, path: &Path) -> Result<()> {
        let target = self.dir.join(self.locate(&m.target, &m.name)?);
        let context = || format!("hard link {} to {}", m.name, m.target.display());
        let meta = fs::symlink_metadata(&target).with_context(context)?;
        if let Ok(existing) = fs::symlink_metadata(path) {
            if (existing.dev(), existing.ino()) == (meta.dev(), meta.ino()) {
                return Ok(());
            }
        }
        self.replacing(&rel, path, || fs::hard_link(&target, path))
            .with_context(context)?;
        if meta.file_type().is_symlink() {
            self.symlinks.insert(rel);
        }
        Ok(())
    }
}

/// Sets the mtime of `path` (not following a symlink) and leaves its atime,
/// without opening it: a directory we may not read still gets its mtime.
pub(crate) fn set_mtime(path: &Path, mtime: FileTime) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.unix_seconds(),
            tv_nsec: i64::from(mtime.nanoseconds()),
        },
    ];
    // SAFETY: `c_path` is a valid NUL-terminated string and `times` holds
    // two timespecs, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{each_member, MaxSize, TarStream, MAX_MEMBERS};
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn write_all(data: &[u8], dir: &Path, limit: Option<u64>, max_members: u64) -> Result<()> {
        let cancel = CancellationToken::new();
        let max_size = limit.map_or(MaxSize::Unlimited, MaxSize::from_flag);
        let mut writer = Writer::new(dir, Budget::new(max_size, dir)?)?;
        let reader: Box<dyn std::io::BufRead + Send> =
            Box::new(std::io::Cursor::new(data.to_vec()));
        let mut tar = TarStream::new(reader);
        each_member(&mut tar, &mut writer, &cancel, max_members)?;
        writer.finish()
    }

    #[test]
    fn the_member_limit_stops_the_extraction() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let e = write_all(&data, dir.path(), None, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "archive has more than 2 members (the limit): stopped at c"
        );
        write_all(&data, tempfile::tempdir().unwrap().path(), None, 3).unwrap();
    }

    #[test]
    fn the_size_limit_counts_member_data_before_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(&[("a", b"12345"), ("b", b"678"), ("c", b"9")]);
        let e = write_all(&data, dir.path(), Some(8), MAX_MEMBERS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "archive expands past 8 bytes (--max-extract-size): stopped at c"
        );
        assert!(!dir.path().join("c").exists());
        let exact = tempfile::tempdir().unwrap();
        let data = archive(&[("a", b"12345"), ("b", b"678")]);
        write_all(&data, exact.path(), Some(8), MAX_MEMBERS).unwrap();
    }
}
