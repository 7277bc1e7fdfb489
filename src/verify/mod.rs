//! SPEC 8.7: the manifest's `verify:` checks, that the new version is
//! serving. They are read into one [`Check`] enum when the manifest is
//! parsed (`parse`: a check that cannot be read fails the run before the
//! download), compared with a [`Baseline`] taken just before `post` runs,
//! and polled by one loop ([`Verify::run`]) after `post` until all pass in
//! one round or the timeout ends (`probe`: each kind's probe).
//! [`AutoRollback`] is what a `sync_strategy: release` deploy does when
//! `post` or the checks fail.

mod parse;
mod probe;
mod rollback;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Deserialize;
use url::Url;

use crate::hooks::Hooks;
pub use rollback::AutoRollback;

/// Default for `verify.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `verify.interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// The least time a probe gets, even when the verify timeout is nearer: an
/// attempt cut to a few milliseconds would only say "no answer", hiding
/// what the earlier ones saw.
const MIN_PROBE: Duration = Duration::from_secs(1);
/// The manifest's `verify:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "parse::RawVerify")]
pub struct Verify {
    /// All checks must pass (in one round) within this.
    pub timeout: Duration,
    /// Pause between rounds.
    pub interval: Duration,
    /// The checks, in the manifest's order; never empty.
    pub checks: Vec<Check>,
}

/// One check of `verify.checks`.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `http: URL`: the answer's status, optionally a body substring.
    Http {
        /// Where to ask (http or https).
        url: Url,
        /// Statuses that pass; empty is any 2xx.
        status: Vec<u16>,
        /// Text the body must hold.
        contains: Option<String>,
    },
    /// `tcp: HOST:PORT`: a connection is accepted.
    Tcp(String),
    /// `command: LINE`: `sh -c LINE` exits 0.
    Command(String),
    /// `server_starter: STATUS_FILE`: Server::Starter's `--status-file`
    /// lists one generation, newer than before `post`, whose pid is alive.
    ServerStarter(PathBuf),
    /// `pidfile: PATH`: a new pid, alive, and no `PATH.oldbin`.
    Pidfile(PathBuf),
}

/// The check kinds, as the manifest names them.
const KINDS: [&str; 5] = ["http", "tcp", "command", "server_starter", "pidfile"];

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Http { url, .. } => write!(f, "{url}"),
            Check::Tcp(addr) => write!(f, "tcp {addr}"),
            Check::Command(line) => write!(f, "command {line}"),
            Check::ServerStarter(path) => write!(f, "server_starter {}", path.display()),
            Check::Pidfile(path) => write!(f, "pidfile {}", path.display()),
        }
    }
}

/// What the `server_starter` and `pidfile` checks saw just before `post`
/// ran: the newest generation listed, the pid in the file. One entry per
/// check, `None` where there was nothing (or nothing to see).
#[derive(Debug, Clone, Default)]
pub struct Baseline(Vec<Option<u64>>);

impl Verify {
    /// Takes the [`Baseline`] the checks compare with: call it just
    /// before the hooks that restart the app.
    pub fn baseline(&self) -> Baseline {
        Baseline(
            self.checks
                .iter()
                .map(|check| match check {
                    Check::ServerStarter(path) => probe::generations(path)
                        .ok()?
                        .last()
                        .map(|&(generation, _)| generation),
                    Check::Pidfile(path) => probe::read_pid(path).ok(),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The same checks without `contains`: after a rollback the old
    /// release serves, and `contains` names what the new one serves.
    pub fn without_contains(&self) -> Verify {
        let mut verify = self.clone();
        for check in &mut verify.checks {
            if let Check::Http { contains, .. } = check {
                *contains = None;
            }
        }
        verify
    }

    /// Runs every check, in order, every `interval` until they all pass in
    /// one round (then `Ok`) or `timeout` ends: then the error names the
    /// check that failed last and its result. A `command` check runs with
    /// the hooks' environment. Stops on the hooks' cancel signal.
    pub async fn run(&self, before: &Baseline, hooks: &Hooks<'_>) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        log::info!(
            "Verifying {} check{} (timeout {}, every {})",
            self.checks.len(),
            if self.checks.len() == 1 { "" } else { "s" },
            seconds(self.timeout),
            seconds(self.interval)
        );
        let mut client = probe::Clients::default();
        let mut last: Option<(usize, String)> = None;
        loop {
            let round = Instant::now();
            let failed = tokio::select! {
                failed = self.round(before, hooks, &mut client, deadline) => failed,
                () = hooks.cancel.cancelled() => return Err(anyhow!("verify: interrupted by signal")),
            };
            let Some((index, result)) = failed else {
                log::info!(
                    "Verified: all checks passed in {}",
                    crate::units::format_duration(started.elapsed())
                );
                return Ok(());
            };
            if last.as_ref() != Some(&(index, result.clone())) {
                log::info!(
                    "verify {}: {result} (trying again for up to {})",
                    self.checks[index],
                    whole_seconds(deadline.saturating_duration_since(Instant::now()))
                );
            }
            last = Some((index, result));
            let next = (round + self.interval).min(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = hooks.cancel.cancelled() => return Err(anyhow!("verify: interrupted by signal")),
            }
            if Instant::now() >= deadline {
                let (index, result) = last.unwrap_or_default();
                return Err(anyhow!(
                    "verify {}: {result} after {}",
                    self.checks[index],
                    seconds(self.timeout)
                ));
            }
        }
    }

    /// One round: the first check that fails and its result, or `None`.
    async fn round(
        &self,
        before: &Baseline,
        hooks: &Hooks<'_>,
        client: &mut probe::Clients,
        deadline: Instant,
    ) -> Option<(usize, String)> {
        for (index, check) in self.checks.iter().enumerate() {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_PROBE);
            let was = before.0.get(index).copied().flatten();
            if let Err(result) = probe::probe(check, was, hooks, client, left).await {
                return Some((index, result));
            }
        }
        None
    }
}

/// `60s`, `1.5s`, `2m0.5s`: whole seconds as `Ns`, others as Go prints them.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        crate::units::format_duration(d)
    }
}

/// `d` rounded up to whole seconds: `60s`.
fn whole_seconds(d: Duration) -> String {
    format!("{}s", d.as_secs() + u64::from(d.subsec_nanos() > 0))
}
