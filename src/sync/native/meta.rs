//! What a placed entry ends with: owner, mode, mtime.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use filetime::FileTime;

use crate::archive::Member;

/// Who a placed entry belongs to. As root, the member's owner and group.
/// Otherwise only the group is ours to set (rsync -a without root: -g, not
/// -o), and a group we may not set is left, where rsync would fail.
#[derive(Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: Option<u32>,
    pub(super) gid: u32,
}

impl Owner {
    /// Our own (`ids`): what implied directories get.
    pub(super) fn ours(root: bool, ids: (u32, u32)) -> Self {
        Owner {
            uid: root.then_some(ids.0),
            gid: ids.1,
        }
    }

    /// Whether `meta` has another owner or group than this.
    pub(super) fn differs(&self, meta: &fs::Metadata) -> bool {
        self.uid.is_some_and(|uid| uid != meta.uid()) || self.gid != meta.gid()
    }

    /// Sets this owner on `path` (not following a symlink).
    pub(super) fn set(&self, path: &Path) -> Result<()> {
        match std::os::unix::fs::lchown(path, self.uid, Some(self.gid)) {
            Err(e) if self.uid.is_none() && e.kind() == ErrorKind::PermissionDenied => Ok(()),
            other => other.with_context(|| format!("chown {}", path.display())),
        }
    }
}

/// Metadata a placed file ends with.
#[derive(Clone, Copy)]
pub(super) struct Wanted {
    pub(super) mode: u32,
    pub(super) owner: Owner,
    pub(super) mtime: FileTime,
}

pub(super) fn mtime_of(m: &Member) -> FileTime {
    FileTime::from_unix_time(m.mtime.0, m.mtime.1)
}
