//! Runs that target the same `dest` take turns, with flocks on directories
//! the deploy already reaches, so the lock never needs more access than the
//! deploy itself (no lock file to create). `dest` is resolved to one
//! physical path first (symlinks in it followed), so every spelling of it
//! takes the same locks.
//! - `dest` holds a tree: a shared lock on its parent, then an exclusive
//!   lock on `dest` itself. Runs on sibling dests go side by side.
//! - `dest` is missing or empty (a first deploy, which may rename a whole
//!   new tree into place): an exclusive lock on its nearest existing
//!   ancestor, which also waits out every run below that directory.
//!
//! - `dest` is a symlink a release deploy switches (`sync_strategy:
//!   release`, `stretcher rollback`): an exclusive lock on the directory
//!   that holds it and its `releases/`, resolved without following `dest`.
//!
//! Every run also takes shared locks on all existing ancestors above those,
//! so a run whose dest's parents were created after a first deploy locked
//! a higher ancestor still waits for it, and a run never locks a `dest`
//! directory that another run is about to replace.

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
    acquire_for(dest, false, timeout).await
}

/// Takes the lock for a `dest` symlink that release deploys switch and
/// prune beside (see the module docs), waiting at most `timeout`.
pub async fn acquire_switched(dest: &str, timeout: Option<Duration>) -> Result<DestLock> {
    acquire_for(dest, true, timeout).await
}

async fn acquire_for(dest: &str, switched: bool, timeout: Option<Duration>) -> Result<DestLock> {
    let shown = Path::new(dest.trim_end_matches('/'));
    let started = Instant::now();
    let mut logged = false;
    loop {
        // Resolved every round: a run ahead of us may create dest or the
        // directories above it.
        let dest = match switched {
            true => resolve_link(shown),
            false => resolve(shown),
        };
        match try_acquire(&dest, switched) {
            Attempt::Held(lock) => return Ok(lock),
            Attempt::Unlockable(why) => {
                log::info!(
                    "cannot lock {}: {why}; deploying without the lock",
                    shown.display()
                );
                return Ok(DestLock { _held: Vec::new() });
            }
            Attempt::Busy => {}
        }
        if !logged {
            log::info!(
                "waiting for lock on {} (another stretcher run is deploying to it or beside it)",
                shown.display()
            );
            logged = true;
        }
        if let Some(limit) = timeout {
            if started.elapsed() >= limit {
                bail!(
                    "lock on {} still held after {}",
                    shown.display(),
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

/// Takes shared locks on every existing ancestor above the nearest one, so
/// a run that holds any of them exclusively (a first deploy that found only
/// that ancestor) is waited for, then the lock this dest needs.
/// With `switched`, `dest` is treated as missing: its parent is locked
/// exclusively.
fn try_acquire(dest: &Path, switched: bool) -> Attempt {
    let mut ancestors: Vec<&Path> = dest.ancestors().skip(1).filter(|p| p.is_dir()).collect();
    ancestors.reverse();
    let Some(nearest) = ancestors.pop() else {
        return Attempt::Unlockable(format!("no existing parent of {}", dest.display()));
    };
    let mut held = Vec::new();
    for dir in ancestors {
        // An ancestor we may not read cannot be locked by anyone else either.
        if let Ok(file) = File::open(dir) {
            if !locked(file.try_lock_shared()) {
                return Attempt::Busy;
            }
            held.push(file);
        }
    }
    let populated = !switched && std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some());
    match (File::open(nearest), populated) {
        (Ok(parent), true) => {
            if !locked(parent.try_lock_shared()) {
                return Attempt::Busy;
            }
            held.push(parent);
            match File::open(dest) {
                Ok(dest_dir) if locked(dest_dir.try_lock()) => {
                    held.push(dest_dir);
                    Attempt::Held(DestLock { _held: held })
                }
                // Held by another run, or gone since we looked (the next
                // round takes the parent).
                _ => Attempt::Busy,
            }
        }
        (Ok(parent), false) => {
            if locked(parent.try_lock()) {
                held.push(parent);
                Attempt::Held(DestLock { _held: held })
            } else {
                Attempt::Busy
            }
        }
        // An unreadable parent (mode --x): the dest dir alone still
        // serializes runs on a populated dest.
        (Err(e), _) => match File::open(dest) {
            Ok(dest_dir) if locked(dest_dir.try_lock()) => {
                held.push(dest_dir);
                Attempt::Held(DestLock { _held: held })
            }
            Ok(_) => Attempt::Busy,
            Err(_) => Attempt::Unlockable(format!("{}: {e}", nearest.display())),
        },
    }
}

/// Whether a try-lock took the lock. A filesystem without flock support
/// counts as taken: waiting could never end.
fn locked(result: Result<(), TryLockError>) -> bool {
    !matches!(result, Err(TryLockError::WouldBlock))
}

/// `link` (a symlink, or where one goes) as one physical path, however it
/// is written: its parent resolved as [`resolve`] does, `link` itself not
/// followed, a trailing `/` ignored.
pub fn resolve_link(link: &Path) -> PathBuf {
    let text = link.to_string_lossy();
    let link = Path::new(text.trim_end_matches('/'));
    let parent = match link.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match link.file_name() {
        Some(name) => resolve(parent).join(name),
        None => resolve(link),
    }
}

/// `dest` as one physical path, whichever way it is written: its longest
/// existing prefix with symlinks resolved (a dest given through a symlink
/// and by its real path lock the same directories), the rest as written.
pub fn resolve(dest: &Path) -> PathBuf {
    let dest = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(dest)
    };
    for existing in dest.ancestors() {
        if let Ok(real) = existing.canonicalize() {
            let rest = dest.strip_prefix(existing).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
    }
    dest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dest_resolves_through_symlinks_and_keeps_its_missing_tail() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("real")).unwrap();
        std::os::unix::fs::symlink(real.join("real"), real.join("link")).unwrap();
        assert_eq!(resolve(&real.join("link")), real.join("real"));
        assert_eq!(resolve(&real.join("link/a/app")), real.join("real/a/app"));
    }

    #[test]
    fn a_link_resolves_its_parent_only() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(real.join("real/releases/r1")).unwrap();
        std::os::unix::fs::symlink(real.join("real"), real.join("srv")).unwrap();
        std::os::unix::fs::symlink("releases/r1", real.join("real/current")).unwrap();
        let want = real.join("real/current");
        assert_eq!(resolve_link(&real.join("srv/current")), want);
        assert_eq!(resolve_link(&real.join("srv/current/")), want);
        assert_eq!(resolve_link(&real.join("real/./current")), want);
        assert_eq!(
            resolve(&real.join("srv/current")),
            real.join("real/releases/r1")
        );
    }

    #[tokio::test]
    async fn a_first_deploy_is_waited_for_after_it_creates_dests_parents() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("srv/a/app").display().to_string();
        let held = acquire(&dest, None).await.unwrap();
        // The first run's hooks create the missing parents.
        std::fs::create_dir_all(dir.path().join("srv/a")).unwrap();
        let short = Some(Duration::from_millis(120));
        assert!(acquire(&dest, short).await.is_err(), "same dest waits");
        drop(held);
        acquire(&dest, short).await.unwrap();
    }

    #[tokio::test]
    async fn a_dest_named_through_a_symlink_takes_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real/app")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real/app"), dir.path().join("link")).unwrap();
        let held = acquire(&dir.path().join("link").display().to_string(), None)
            .await
            .unwrap();
        let short = Some(Duration::from_millis(120));
        let real = dir.path().join("real/app").display().to_string();
        assert!(acquire(&real, short).await.is_err());
        drop(held);
        acquire(&real, short).await.unwrap();
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
