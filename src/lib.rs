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
pub mod log;
pub mod manifest;
pub mod source;
pub mod sync;
pub mod template;
pub mod units;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::Config;
use crate::hooks::{Hooks, Phase};
use crate::manifest::Manifest;

/// This build's version, as `stretcher --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent once: stdin → manifest → deploy → hooks. Every error is
/// logged here; the result only tells the caller which exit status to use.
pub async fn run(config: &Config, cancel: &CancellationToken) -> Result<()> {
    ::log::info!("Starting up stretcher agent {VERSION}");
    let result = run_logged(config, cancel).await;
    match &result {
        Err(e) if !e.is::<Logged>() => ::log::info!("{e:#}"),
        _ => {}
    }
    result
}

async fn run_logged(config: &Config, cancel: &CancellationToken) -> Result<()> {
    if let Some(limit) = config.random_delay.filter(|d| !d.is_zero()) {
        let delay = limit.mul_f64(rand::random::<f64>());
        ::log::info!("Sleeping {}", units::format_duration(delay));
        cancellable(cancel, async {
            tokio::time::sleep(delay).await;
            Ok(())
        })
        .await?;
    }

    let consul = std::env::var_os("CONSUL_INDEX").is_some();
    let serf_event = std::env::var("SERF_USER_EVENT").ok();
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let event = cancellable(
        cancel,
        event::read_event(stdin, consul, serf_event.as_deref()),
    )
    .await
    .context("could not parse event")?;

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
    };
    let result = deploy(&manifest, config, &hooks, cancel).await;
    let outcome = match result {
        Ok(()) => {
            ::log::info!("Deploy manifest succeeded.");
            let ran = hooks
                .run_piped(Phase::Success, &manifest.commands.success, &log::snapshot())
                .await;
            if let Err(e) = ran {
                ::log::info!("{e:#}");
            }
            Ok(())
        }
        Err(e) => {
            ::log::info!("Deploy manifest failed: {e:#}");
            let ran = hooks
                .run_piped(Phase::Failure, &manifest.commands.failure, &log::snapshot())
                .await;
            if let Err(e) = ran {
                ::log::info!("{e:#}");
            }
            Err(Logged.into())
        }
    };
    ::log::info!("Done");
    outcome
}

/// A failed deploy, already logged as `Deploy manifest failed: …`.
#[derive(Debug)]
pub struct Logged;

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deploy manifest failed")
    }
}

impl std::error::Error for Logged {}

/// The deploy pipeline, in SPEC order: validate, download and verify, `pre`,
/// extract, chmod, sync, `post`. The temp file and dir are removed on return.
async fn deploy(
    m: &Manifest,
    config: &Config,
    hooks: &Hooks<'_>,
    cancel: &CancellationToken,
) -> Result<()> {
    if m.src.is_empty() {
        hooks.run(Phase::Pre, &m.commands.pre).await?;
        return hooks.run(Phase::Post, &m.commands.post).await;
    }

    let strategy = sync::from_name(
        &m.sync_strategy,
        sync::Settings {
            excludes: m.excludes.clone(),
            exclude_from: m.exclude_from.clone(),
            rsync_verbose: config.rsync_verbose.clone(),
        },
    )?;
    digest::Verifier::new(&m.checksum)?;

    let options = fetch::Options {
        max_bandwidth: config.max_bandwidth,
        timeout: config.timeout,
        retry: config.retry,
        retry_wait: config.retry_wait,
    };
    let download = cancellable(cancel, fetch::fetch(&m.src, &m.checksum, &options)).await?;

    hooks.run(Phase::Pre, &m.commands.pre).await?;
    interrupted(cancel)?;

    let dir = tempfile::Builder::new()
        .prefix("stretcher_src")
        .tempdir()
        .context("creating the extraction dir")?;
    let archive = download.file.path().to_path_buf();
    ::log::info!(
        "Extract archive: {} to {}",
        archive.display(),
        dir.path().display()
    );
    let root = dir.path().to_path_buf();
    blocking(move || archive::extract(&archive, &root)).await?;
    drop(download);
    interrupted(cancel)?;

    ::log::info!("Set dest mode {:04o}", m.dest_mode());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m.dest_mode()))
        .with_context(|| format!("chmod {}", dir.path().display()))?;

    let (from, to) = (dir.path().to_path_buf(), Path::new(&m.dest).to_path_buf());
    blocking(move || strategy.sync(&from, &to)).await?;
    interrupted(cancel)?;

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
