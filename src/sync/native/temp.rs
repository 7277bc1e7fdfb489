//! Temp names beside the path they replace, as rsync names them.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

/// A temp name beside a path, removed on drop unless renamed away.
pub(super) struct TempName(pub(super) PathBuf);

impl TempName {
    /// `.<name>.<random>` in `path`'s directory, as rsync names its temp
    /// files.
    pub(super) fn beside(path: &Path) -> Result<Self> {
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
    pub(super) fn keep(mut self) {
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
