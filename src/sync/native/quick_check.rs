//! rsync's quick check against what dest held before this run, and the
//! size and mtime of files this run replaced (for a later duplicate
//! member).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use filetime::FileTime;

use super::meta::Wanted;
use super::Placer;

impl Placer<'_> {
    /// rsync's quick check, against what dest held before this run: a
    /// regular file of this size and mtime (to the second) is not written.
    /// `looked` is dest's entry when placing this member already read it.
    /// When this run already replaced the file (the archive holds the path
    /// twice), dest's original went as its replacement landed: if it would
    /// have passed, the member is written with the original's mtime, as
    /// rsync leaves it (rsync would also keep the original's bytes: they
    /// differ only for a file changed without changing its size or mtime).
    pub(super) fn quick_check(
        &mut self,
        rel: &Path,
        path: &Path,
        size: u64,
        want: Wanted,
        looked: Looked,
    ) -> Result<Check> {
        let new = self.seen.insert(rel);
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
            let original = self.originals.get(rel);
            let Some(o) = original.filter(|o| (o.len, o.mtime.unix_seconds()) == (size, secs))
            else {
                return Ok(Check::Differs(want));
            };
            let mtime = o.mtime;
            // Hard links to it get the member's mtime.
            self.kept.insert(rel.to_path_buf(), want.mtime);
            return Ok(Check::Differs(Wanted { mtime, ..want }));
        }
        let meta = match looked.unwrap_or_else(|| fs::symlink_metadata(path)) {
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

    /// Whether the file at `rel` needs no bytes from the archive: dest's
    /// would pass the quick check against a member of `size` and the
    /// wanted mtime now (nothing this run wrote is there), or, in a new
    /// release, the live release has exactly it to link. Counts nothing.
    pub(super) fn would_leave(&self, rel: &Path, size: u64, want: &Wanted) -> bool {
        if self.new_release() {
            return !self.written.contains(rel) && self.in_live_release(rel, size, want).is_some();
        }
        if self.in_fresh(rel) || self.written.contains(rel) {
            return false;
        }
        fs::symlink_metadata(self.dest.join(rel)).is_ok_and(|meta| {
            meta.is_file() && meta.len() == size && meta.mtime() == want.mtime.unix_seconds()
        })
    }

    /// Remembers the size and mtime of the regular file at `rel` (`meta`)
    /// before this run first replaces it: a later member at `rel` is
    /// quick-checked against them. The file itself is not kept.
    pub(super) fn note_original(&mut self, rel: &Path, meta: &fs::Metadata) {
        if meta.is_file() && self.written.insert(rel.to_path_buf()) {
            let original = Original {
                len: meta.len(),
                mtime: FileTime::from_last_modification_time(meta),
            };
            self.originals.insert(rel.to_path_buf(), original);
        }
        self.written.insert(rel.to_path_buf());
    }
}

/// Gives an unchanged file (now `meta`) the wanted mode and owner.
pub(super) fn fix_in_place(path: &Path, meta: fs::Metadata, want: &Wanted) -> Result<()> {
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

/// dest's entry at a path as this member's placing already read it
/// (`None`: not read yet).
pub(super) type Looked = Option<std::io::Result<fs::Metadata>>;

/// The quick check's verdict, with the metadata the file ends with.
pub(super) enum Check {
    /// Leave the file (now `Metadata`); fix its mode and owner.
    Same(fs::Metadata, Wanted),
    /// Write it.
    Differs(Wanted),
    /// Write it: nothing is there.
    Vacant(Wanted),
}

/// A regular file in dest before this run replaced it: its size and
/// mtime.
pub(super) struct Original {
    pub(super) len: u64,
    pub(super) mtime: FileTime,
}
