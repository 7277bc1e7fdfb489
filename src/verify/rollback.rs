//! The automatic rollback of a `sync_strategy: release` deploy whose
//! `post` hooks or `verify:` checks failed (SPEC 8.7).

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::Verify;
use crate::hooks::{Hooks, Phase};
use crate::state::StateDir;
use crate::step::{Failure, Step};

/// What a deploy does when its `post` hooks or `verify:` checks fail
/// (SPEC 8.7): a `sync_strategy: release` deploy switches back, unless
/// `--no-auto-rollback`; other strategies keep no previous tree.
pub struct AutoRollback<'a> {
    /// The manifest's `dest` (the symlink).
    pub dest: &'a Path,
    /// The release dir the deploy made live; `None` for strategies that
    /// keep no previous tree.
    pub release: Option<&'a Path>,
    /// Off with `--no-auto-rollback`.
    pub enabled: bool,
    /// The manifest's `sync_strategy`, for the log.
    pub strategy: &'a str,
    /// `commands.rollback`, run once `dest` is switched back.
    pub lines: &'a [String],
    /// The agent's `--state-dir`, where the rollback is recorded as
    /// `stretcher rollback` records it.
    pub state: Option<&'a StateDir>,
    /// The manifest's checks, run again after the rollback hooks.
    pub verify: Option<&'a Verify>,
}

impl AutoRollback<'_> {
    /// Takes the result of `post` and `verify`: a failure of a release
    /// deploy is rolled back (switched, `rollback` hooks, verified again),
    /// others are logged as not. Returns the result, and the release dir
    /// `dest` was switched back to.
    pub async fn after(
        &self,
        result: Result<(), Failure>,
        hooks: &mut Hooks<'_>,
    ) -> (Result<(), Failure>, Option<PathBuf>) {
        let Err(failure) = result else {
            return (result, None);
        };
        match self.release {
            Some(_) if self.enabled => {
                let (failure, live) = self.run(failure, hooks).await;
                (Err(failure), live)
            }
            Some(dir) => {
                log::info!(
                    "Not rolling back (--no-auto-rollback): {} stays live",
                    dir.display()
                );
                (Err(failure), None)
            }
            None => {
                if failure.step == Step::Verify {
                    let name = Some(self.strategy).filter(|s| !s.is_empty());
                    log::info!(
                        "sync_strategy {} keeps no previous tree: nothing to roll back to",
                        name.unwrap_or("rsync")
                    );
                }
                (Err(failure), None)
            }
        }
    }

    /// Switches `dest` back to the release the failed deploy replaced,
    /// runs the `rollback` hooks (`STRETCHER_RELEASE_DIR` is the release
    /// switched back to), then the checks again. Returns the deploy's
    /// failure with what happened appended, and the live release's dir
    /// when `dest` was switched back.
    async fn run(&self, failure: Failure, hooks: &mut Hooks<'_>) -> (Failure, Option<PathBuf>) {
        let Failure { step, error } = failure;
        let mut said = format!("{error:#}");
        let live = self.switch_back(&mut said, hooks).await;
        let error = anyhow!(said);
        (Failure { step, error }, live)
    }

    async fn switch_back(&self, said: &mut String, hooks: &mut Hooks<'_>) -> Option<PathBuf> {
        log::info!("Rolling back {}", self.dest.display());
        let switched = crate::releases::roll_back_deploy(self.dest, self.state);
        let name = match switched {
            Ok(Some(name)) => name,
            Ok(None) => {
                log::info!("No previous release to roll back to");
                said.push_str("; no previous release to roll back to");
                return None;
            }
            Err(e) => {
                log::info!("Rollback failed: {e:#}");
                said.push_str(&format!("; rollback failed: {e:#}"));
                return None;
            }
        };
        let dir = crate::releases::Layout::of(self.dest)
            .map(|layout| layout.dir.join(&name))
            .unwrap_or_else(|_| PathBuf::from(&name));
        said.push_str(&format!("; rolled back to release {name}"));
        let before = self.verify.map(Verify::baseline);
        // From here on `failure` hooks, like the rollback hooks, see the
        // release that is live again.
        set_env(hooks, "STRETCHER_RELEASE_DIR", dir.display().to_string());
        let interrupted = hooks.cancel.is_cancelled();
        let hooks_ran = match interrupted {
            // After a signal, as the `failure` hooks: a second one stops them.
            true => {
                let after_signal = Hooks {
                    env: hooks.env.clone(),
                    cancel: hooks.abort,
                    ..*hooks
                };
                after_signal.run(Phase::Rollback, self.lines).await
            }
            false => hooks.run(Phase::Rollback, self.lines).await,
        };
        if let Err(e) = hooks_ran {
            log::info!("Rollback hooks failed: {e:#}");
            said.push_str(&format!(", but its rollback hook {e:#}"));
            return Some(dir);
        }
        if interrupted {
            log::info!("Not verifying the rollback: interrupted by signal");
            return Some(dir);
        }
        if let (Some(verify), Some(before)) = (self.verify, before) {
            match verify.without_contains().run(&before, hooks).await {
                Ok(()) => log::info!("Release {name} is serving again"),
                Err(e) => {
                    log::info!("Verify after the rollback failed: {e:#}");
                    said.push_str(&format!(", but it failed verify too: {e:#}"));
                }
            }
        }
        Some(dir)
    }
}

/// Sets hook variable `name` to `value`.
fn set_env(hooks: &mut Hooks<'_>, name: &'static str, value: String) {
    match hooks.env.iter_mut().find(|(k, _)| *k == name) {
        Some((_, old)) => *old = value,
        None => hooks.env.push((name, value)),
    }
}
