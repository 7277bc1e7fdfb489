//! Runs that target the same `dest` take turns, with flocks on directories
//! the deploy already reaches, so the lock never needs more access than the
//! deploy itself (no lock file to create):
//! - `dest` holds a tree: a shared lock on its parent, then an exclusive
//!   lock on `dest` itself. Runs on sibling dests go side by side.
//! - `dest` is missing or empty (a first deploy, which may rename a whole
//!   new tree into place): an exclusive lock on the parent (the nearest
//!   existing ancestor), which also waits out every run on a sibling.
//!
//! A run holding the parent exclusively blocks the shared lock every other
//! run takes first, so a run never locks a `dest` directory that another run
//! is about to replace.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::units::format_duration;

const POLL: Duration = Duration::from_millis(50);

/// Held locks; released when dropped (the kernel also drops them if the
/// process dies).
pub struct DestLock {
    _held: Vec<File>,
}

/// Takes the lock for `dest`, waiting at most `timeout` (forever if `None`).
/// Cancel-safe: dropping the future stops the wait.
pub async fn acquire(dest: &str, timeout: Option<Duration>) -> Result<DestLock> {
    let dest = Path::new(dest.trim_end_matches('/'));
    let parent = nearest_existing_parent(dest);
    let started = Instant::now();
    let mut logged = false;
    loop {
        match try_acquire(dest, &parent) {
            Attempt::Held(lock) => return Ok(lock),
            Attempt::Unlockable(why) => {
                log::info!(
                    "cannot lock {}: {why}; deploying without the lock",
                    dest.display()
                );
                return Ok(DestLock { _held: Vec::new() });
            }
            Attempt::Busy => {}
        }
        if !logged {
            log::info!(
                "waiting for lock on {} (another stretcher run is deploying to it or beside it)",
                dest.display()
            );
            logged = true;
        }
        if let Some(limit) = timeout {
            if started.elapsed() >= limit {
                bail!(
                    "lock on {} still held after {}",
                    dest.display(),
                    format_duration(limit)
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

enum Attempt {
    Held(DestLock),
    Busy,
    /// Neither `dest` nor a parent can be opened for reading.
    Unlockable(String),
}

fn try_acquire(dest: &Path, parent: &Path) -> Attempt {
    let parent_dir = File::open(parent);
    let populated = std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some());
    match (parent_dir, populated) {
        (Ok(parent_dir), true) => {
            if !locked(parent_dir.try_lock_shared()) {
                return Attempt::Busy;
            }
            match File::open(dest) {
                Ok(dest_dir) if locked(dest_dir.try_lock()) => Attempt::Held(DestLock {
                    _held: vec![parent_dir, dest_dir],
                }),
                Ok(_) => Attempt::Busy,
                // Gone since we looked: the next round takes the parent.
                Err(_) => Attempt::Busy,
            }
        }
        (Ok(parent_dir), false) => {
            if locked(parent_dir.try_lock()) {
                Attempt::Held(DestLock {
                    _held: vec![parent_dir],
                })
            } else {
                Attempt::Busy
            }
        }
        // An unreadable parent (mode --x): the dest dir alone still
        // serializes runs on a populated dest.
        (Err(e), _) => match File::open(dest) {
            Ok(dest_dir) if locked(dest_dir.try_lock()) => Attempt::Held(DestLock {
                _held: vec![dest_dir],
            }),
            Ok(_) => Attempt::Busy,
            Err(_) => Attempt::Unlockable(format!("{}: {e}", parent.display())),
        },
    }
}

/// Whether a try-lock took the lock. A filesystem without flock support
/// counts as taken: waiting could never end.
fn locked(result: Result<(), TryLockError>) -> bool {
    !matches!(result, Err(TryLockError::WouldBlock))
}

/// `dest`'s parent, or its nearest ancestor that exists (`.` for a bare
/// relative name).
fn nearest_existing_parent(dest: &Path) -> PathBuf {
    dest.ancestors()
        .skip(1)
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_the_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/app");
        assert_eq!(nearest_existing_parent(&dest), dir.path());
        assert_eq!(nearest_existing_parent(Path::new("app")), Path::new("."));
    }

    #[tokio::test]
    async fn a_populated_dest_locks_itself_and_siblings_go_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        for app in ["app", "api"] {
            std::fs::create_dir(dir.path().join(app)).unwrap();
            std::fs::write(dir.path().join(app).join("f"), "x").unwrap();
        }
        let app = dir.path().join("app").display().to_string();
        let api = dir.path().join("api").display().to_string();
        let held = acquire(&app, None).await.unwrap();
        let short = Some(Duration::from_millis(120));
        assert!(acquire(&app, short).await.is_err(), "same dest waits");
        acquire(&api, short).await.expect("a sibling does not wait");
        drop(held);
        acquire(&app, short).await.expect("released on drop");
    }

    #[tokio::test]
    async fn a_first_deploy_holds_the_parent_against_every_run_below_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("api")).unwrap();
        std::fs::write(dir.path().join("api/f"), "x").unwrap();
        let fresh = dir.path().join("app").display().to_string();
        let api = dir.path().join("api").display().to_string();
        let held = acquire(&fresh, None).await.unwrap();
        // The first run creates dest; a run arriving now must still wait.
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/f"), "x").unwrap();
        let short = Some(Duration::from_millis(120));
        assert!(acquire(&fresh, short).await.is_err());
        assert!(acquire(&api, short).await.is_err());
        drop(held);
        acquire(&fresh, short).await.unwrap();
    }
}
