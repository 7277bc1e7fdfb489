//! stretcher: a deploy agent. Reads a manifest URL on stdin, fetches the
//! manifest and the archive it names, verifies, extracts and syncs it into
//! `dest`, running the manifest's hooks around it. [`run`] is the whole
//! sequence; each module owns one step of it.

pub mod archive;
pub mod cli;
pub mod digest;
pub mod event;
pub mod fetch;
pub mod hooks;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod query;
pub mod source;
pub mod state;
pub mod sync;
pub mod template;
pub mod units;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::Config;
use crate::event::{Event, Invocation};
use crate::hooks::{Hooks, Phase};
use crate::manifest::Manifest;
use crate::query::Outcome;
use crate::state::StateDir;

/// This build's version, as `stretcher --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent once: stdin → manifest → deploy → hooks. Every error is
/// logged here; the result only tells the caller which exit status to use.
/// Under `serf query`, the one-line outcome is printed on stdout.
pub async fn run(config: &Config, how: &Invocation, cancel: &CancellationToken) -> Result<()> {
    ::log::info!("Starting up stretcher agent {VERSION}");
    let started = Instant::now();
    let mut step = "event";
    let result = run_logged(config, how, cancel, &mut step).await;
    let outcome = match &result {
        Ok(outcome) => outcome.clone(),
        Err(e) => {
            if !e.is::<Logged>() {
                ::log::info!("{e:#}");
            }
            Outcome::Failed {
                step,
                error: e
                    .downcast_ref::<Logged>()
                    .map_or_else(|| format!("{e:#}"), |l| l.0.clone()),
            }
        }
    };
    if how.is_serf_query() {
        println!("{}", outcome.line(started.elapsed()));
    }
    result.map(|_| ())
}

async fn run_logged(
    config: &Config,
    how: &Invocation,
    cancel: &CancellationToken,
    step: &mut &'static str,
) -> Result<Outcome> {
    if let Some(limit) = config.random_delay.filter(|d| !d.is_zero()) {
        let delay = limit.mul_f64(rand::random::<f64>());
        ::log::info!("Sleeping {}", units::format_duration(delay));
        cancellable(cancel, async {
            tokio::time::sleep(delay).await;
            Ok(())
        })
        .await?;
    }

    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let event = cancellable(cancel, event::read_event(stdin, how))
        .await
        .context("could not parse event")?;

    let state = config
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()?;
    if let (Some(state), Some(source), false) = (&state, &event.source, config.force) {
        if state.already_deployed(source)? {
            ::log::info!("Event {} already deployed, skipping", source.label());
            return Ok(Outcome::Skipped(source.label()));
        }
    }

    *step = "manifest";
    ::log::info!("Loading manifest: {}", event.url);
    let manifest = source::read_to_string(&event.url)
        .await
        .and_then(|text| Manifest::parse(&text))
        .context("load manifest failed")?;
    ::log::info!("Executing manifest {}", event.url);

    let hooks = Hooks {
        env: vec![
            ("STRETCHER_MANIFEST_URL", event.url.clone()),
            ("STRETCHER_SRC", manifest.src.clone()),
            ("STRETCHER_DEST", manifest.dest.clone()),
            ("STRETCHER_CHECKSUM", manifest.checksum.clone()),
            ("STRETCHER_VERSION", VERSION.to_string()),
        ],
        cancel,
        quiet: how.is_serf_query(),
    };
    let result = deploy(&manifest, config, &hooks, cancel, step).await;
    let outcome = match result {
        Ok(()) => {
            ::log::info!("Deploy manifest succeeded.");
            if let Some(Err(e)) = state.as_ref().map(|s| record(s, &event, &manifest)) {
                ::log::info!("could not record the deploy in the state dir: {e:#}");
            }
            let ran = hooks
                .run_piped(Phase::Success, &manifest.commands.success, &log::snapshot())
                .await;
            if let Err(e) = ran {
                ::log::info!("{e:#}");
            }
            Ok(Outcome::Deployed {
                dest: manifest.dest.clone(),
                checksum: manifest.checksum.clone(),
            })
        }
        Err(e) => {
            let message = format!("{e:#}");
            ::log::info!("Deploy manifest failed: {message}");
            let ran = hooks
                .run_piped(Phase::Failure, &manifest.commands.failure, &log::snapshot())
                .await;
            if let Err(e) = ran {
                ::log::info!("{e:#}");
            }
            Err(Logged(message).into())
        }
    };
    ::log::info!("Done");
    outcome
}

fn record(state: &StateDir, event: &Event, m: &Manifest) -> Result<()> {
    let entry = state::DestRecord {
        manifest: event.url.clone(),
        checksum: m.checksum.clone(),
        event: event.source.as_ref().map(|s| s.label()),
        deployed_at: chrono::Utc::now().to_rfc3339(),
    };
    state.record(event.source.as_ref(), &m.dest, entry)
}

/// A failed deploy, already logged as `Deploy manifest failed: …`.
#[derive(Debug)]
struct Logged(String);

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deploy manifest failed: {}", self.0)
    }
}

impl std::error::Error for Logged {}

/// The deploy pipeline, in SPEC order: validate, lock, download and verify,
/// `pre`, extract, chmod, sync, `post`. The temp file and dir are removed,
/// and the lock released, on return. `step` names the step under way, for
/// the one-line result.
async fn deploy(
    m: &Manifest,
    config: &Config,
    hooks: &Hooks<'_>,
    cancel: &CancellationToken,
    step: &mut &'static str,
) -> Result<()> {
    if m.src.is_empty() {
        *step = "pre";
        hooks.run(Phase::Pre, &m.commands.pre).await?;
        *step = "post";
        return hooks.run(Phase::Post, &m.commands.post).await;
    }

    *step = "validate";
    let strategy = sync::from_name(
        &m.sync_strategy,
        sync::Settings {
            excludes: m.excludes.clone(),
            exclude_from: m.exclude_from.clone(),
            rsync_verbose: config.rsync_verbose.clone(),
        },
    )?;
    digest::Verifier::new(&m.checksum)?;

    *step = "lock";
    let _lock = cancellable(cancel, lock::acquire(&m.dest, config.lock_timeout)).await?;

    *step = "download";
    let options = fetch::Options {
        max_bandwidth: config.max_bandwidth,
        timeout: config.timeout,
        retry: config.retry,
        retry_wait: config.retry_wait,
    };
    let download = cancellable(cancel, fetch::fetch(&m.src, &m.checksum, &options)).await?;

    *step = "pre";
    hooks.run(Phase::Pre, &m.commands.pre).await?;
    interrupted(cancel)?;

    *step = "extract";
    let dir = tempfile::Builder::new()
        .prefix("stretcher_src")
        .tempdir()
        .context("creating the extraction dir")?;
    let archive = download.path().to_path_buf();
    ::log::info!(
        "Extract archive: {} to {}",
        archive.display(),
        dir.path().display()
    );
    let root = dir.path().to_path_buf();
    let (src, token) = (m.src.clone(), cancel.clone());
    blocking(move || archive::extract(&archive, &root, &src, &token)).await?;
    drop(download);
    interrupted(cancel)?;

    ::log::info!("Set dest mode {:04o}", m.dest_mode());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m.dest_mode()))
        .with_context(|| format!("chmod {}", dir.path().display()))?;

    *step = "sync";
    let (from, to) = (dir.path().to_path_buf(), Path::new(&m.dest).to_path_buf());
    blocking(move || strategy.sync(&from, &to)).await?;
    interrupted(cancel)?;

    *step = "post";
    hooks.run(Phase::Post, &m.commands.post).await
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("worker thread failed: {e}"))?
}

/// Fails the run if a signal arrived.
fn interrupted(cancel: &CancellationToken) -> Result<()> {
    if cancel.is_cancelled() {
        bail!("interrupted by signal");
    }
    Ok(())
}

/// Runs `fut` unless a signal arrives first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        () = cancel.cancelled() => bail!("interrupted by signal"),
    }
}
