//! `--max-extract-size` as native counts it: the bytes a run holds at once
//! beyond what dest held before it. A file's old bytes go as its
//! replacement lands, so a redeploy that changes every file needs room for
//! one more file, as rsync does, not for two trees (the default limit is
//! the free space when the run starts).

use std::fs;
use std::os::unix::fs::MetadataExt;

use anyhow::Result;

use crate::archive::Budget;

/// The bytes a run holds, charged against the limit at their peak.
pub(super) struct Room {
    budget: Budget,
    /// Bytes written less bytes given back, so far.
    now: i128,
    /// The most `now` has been: what the budget was charged.
    peak: i128,
}

impl Room {
    /// Counts against `budget`.
    pub(super) fn new(budget: Budget) -> Self {
        Room {
            budget,
            now: 0,
            peak: 0,
        }
    }

    /// Charges `bytes` about to be written for member `name`; fails past
    /// the limit (and then charges nothing).
    pub(super) fn charge(&mut self, bytes: u64, name: &str) -> Result<()> {
        let now = self.now + i128::from(bytes);
        if now > self.peak {
            let more = u64::try_from(now - self.peak).unwrap_or(u64::MAX);
            self.budget.charge(more, name)?;
            self.peak = now;
        }
        self.now = now;
        Ok(())
    }

    /// Gives back the bytes of an entry that went (`meta`, as it was): a
    /// regular file's, unless another link keeps them.
    pub(super) fn give_back(&mut self, meta: &fs::Metadata) {
        if meta.is_file() && meta.nlink() == 1 {
            self.now -= i128::from(meta.len());
        }
    }
}
