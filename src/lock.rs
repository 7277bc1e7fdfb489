//! Runs that target the same `dest` take turns: an exclusive flock on
//! `<dest>.stretcher.lock`, held from download to the `post` hooks.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::units::format_duration;

const POLL: Duration = Duration::from_millis(50);

/// A held lock; released when dropped (the kernel also drops it if the
/// process dies).
pub struct DestLock {
    _file: File,
}

/// The lock file for `dest`.
pub fn lock_path(dest: &str) -> PathBuf {
    PathBuf::from(format!("{}.stretcher.lock", dest.trim_end_matches('/')))
}

/// Takes the lock for `dest`, waiting at most `timeout` (forever if `None`).
/// Cancel-safe: dropping the future stops the wait.
pub async fn acquire(dest: &str, timeout: Option<Duration>) -> Result<DestLock> {
    let path = lock_path(dest);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    let started = Instant::now();
    let mut logged = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(DestLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        if !logged {
            log::info!(
                "waiting for lock {} (another stretcher run is deploying to {dest})",
                path.display()
            );
            logged = true;
        }
        if let Some(limit) = timeout {
            if started.elapsed() >= limit {
                bail!(
                    "lock {} still held after {}",
                    path.display(),
                    format_duration(limit)
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
