//! stretcher: a deploy agent. Reads a manifest URL on stdin, fetches the
//! manifest and the archive it names, verifies, extracts and syncs it into
//! `dest`, running the manifest's hooks around it. [`run`] is the whole
//! sequence; each module owns one step of it.

pub mod answer;
pub mod archive;
pub mod cli;
pub mod digest;
pub mod event;
pub mod fetch;
pub mod fleet;
pub mod guard;
pub mod hooks;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod pack;
pub mod progress;
pub mod query;
pub mod releases;
pub mod report;
pub mod scratch;
pub mod signature;
pub mod source;
pub mod state;
pub mod status;
pub mod step;
pub mod sync;
pub mod template;
pub mod units;
pub mod verify;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::Config;
use crate::event::{Event, Invocation};
use crate::guard::Guard;
use crate::hooks::{Hooks, Phase};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::query::Outcome;
use crate::report::{Facts, Report};
use crate::state::StateDir;
use crate::step::{interrupted, AtStep, Failure, Step};

/// This build's version, as `stretcher --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// SIGINT/SIGTERM as the run sees them.
#[derive(Clone, Default)]
pub struct Signals {
    /// The first signal: stop the step under way, fail the run, still run
    /// the `failure` hooks.
    pub cancel: CancellationToken,
    /// A second signal: stop the `success`/`failure` hooks too. Temp files
    /// are removed either way.
    pub abort: CancellationToken,
}

/// Runs the agent once: stdin → manifest → deploy → hooks. Every error is
/// logged here; the result only tells the caller which exit status to use.
/// Under `serf query`, the one-line outcome is printed on stdout; with
/// `--report-file`/`--metrics-file`, the run's result is written there.
pub async fn run(config: &Config, how: &Invocation, signals: &Signals) -> Result<(), Failure> {
    ::log::info!("Starting up stretcher agent {VERSION}");
    let (started, started_at) = (Instant::now(), chrono::Utc::now());
    let mut facts = Facts::default();
    let result = run_logged(config, how, signals, &mut facts).await;
    let outcome = match &result {
        Ok(outcome) => outcome.clone(),
        Err(failure) => Outcome::Failed {
            step: failure.step.name(),
            error: failure.to_string(),
        },
    };
    if how.is_serf_query() {
        println!("{}", outcome.line(started.elapsed()));
    }
    publish(
        config,
        &Report::new(facts, &outcome, started_at, started.elapsed()),
    );
    result.map(|_| ())
}

/// Writes the run's report and metrics files, when asked to. A failure to
/// write them is logged; it does not change the run's result.
fn publish(config: &Config, report: &Report) {
    if let Some(Err(e)) = config.report_file.as_deref().map(|p| report.write(p)) {
        ::log::info!("{e:#}");
    }
    if let Some(Err(e)) = config
        .metrics_file
        .as_deref()
        .map(|p| metrics::update(p, report))
    {
        ::log::info!("{e:#}");
    }
}

/// Everything up to the deploy fails before a manifest (and so its hooks)
/// exists: those errors are logged as they are.
async fn run_logged(
    config: &Config,
    how: &Invocation,
    signals: &Signals,
    facts: &mut Facts,
) -> Result<Outcome, Failure> {
    let cancel = &signals.cancel;
    let before_deploy = async {
        if let Some(limit) = config.random_delay.filter(|d| !d.is_zero()) {
            let delay = limit.mul_f64(rand::random::<f64>());
            ::log::info!("Sleeping {}", units::format_duration(delay));
            cancellable(cancel, async {
                tokio::time::sleep(delay).await;
                Ok(())
            })
            .await
            .at(Step::Event)?;
        }
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let event = cancellable(cancel, event::read_event(stdin, how))
            .await
            .context("could not parse event")
            .at(Step::Event)?;
        facts.event(&event);
        let state = config
            .state_dir
            .as_deref()
            .map(StateDir::open_writable)
            .transpose()
            .at(Step::Event)?;
        if let (Some(state), Some(source), false) = (&state, &event.source, config.force) {
            if state.already_deployed(source).at(Step::Event)? {
                ::log::info!("Event {} already deployed, skipping", source.label());
                return Ok(Err(Outcome::Skipped(source.label())));
            }
        }
        ::log::info!("Loading manifest: {}", event.url);
        let (manifest, signed) = load_manifest(config, &event.url, state.as_ref(), cancel).await?;
        facts.manifest(&manifest);
        ::log::info!("Executing manifest {}", event.url);
        Ok(Ok((event, state, manifest, signed)))
    };
    let (event, state, manifest, signed) = match before_deploy.await {
        Ok(Ok(found)) => found,
        Ok(Err(skipped)) => return Ok(skipped),
        Err(failure) => {
            ::log::info!("{failure}");
            return Err(failure);
        }
    };

    let mut hooks = Hooks {
        env: vec![
            ("STRETCHER_MANIFEST_URL", event.url.clone()),
            ("STRETCHER_SRC", manifest.src.clone()),
            ("STRETCHER_DEST", manifest.dest.clone()),
            ("STRETCHER_CHECKSUM", manifest.checksum.clone()),
            ("STRETCHER_VERSION", VERSION.to_string()),
        ],
        manifest_env: &manifest.commands.env,
        timeout: manifest.commands.timeout_or(config.hook_timeout),
        cancel,
        abort: &signals.abort,
        quiet: how.is_serf_query(),
    };
    let refused = match (&state, config.force) {
        (Some(state), false) => not_rolled_back(state, &manifest).err(),
        _ => None,
    };
    let guard = Guard::new(
        config.signatures.as_ref(),
        state.as_ref(),
        signed.as_ref(),
        &manifest.dest,
    );
    let result = match refused {
        Some(failure) => Err(failure),
        None => {
            let records = Records {
                state: state.as_ref(),
                guard: guard.as_ref(),
            };
            deploy(&manifest, config, records, &mut hooks, facts).await
        }
    };
    let (phase, lines) = match &result {
        Ok(()) => {
            ::log::info!("Deploy manifest succeeded.");
            let signed_at = signed.as_ref().and_then(|s| s.signed_at);
            if let Some(Err(e)) = state
                .as_ref()
                .map(|s| record(s, &event, &manifest, signed_at))
            {
                ::log::info!("could not record the deploy in the state dir: {e:#}");
            }
            (Phase::Success, &manifest.commands.success)
        }
        Err(failure) => {
            ::log::info!("Deploy manifest failed: {failure}");
            (Phase::Failure, &manifest.commands.failure)
        }
    };
    if let Err(e) = hooks.run_piped(phase, lines, &log::snapshot()).await {
        ::log::info!("{e:#}");
    }
    ::log::info!("Done");
    result.map(|()| Outcome::Deployed {
        dest: manifest.dest.clone(),
        checksum: manifest.checksum.clone(),
    })
}

/// After `stretcher rollback`, the archive rolled back from is not deployed
/// to that dest again by a replayed or repeated event: only with `--force`
/// (or after another archive was deployed there).
fn not_rolled_back(state: &StateDir, m: &Manifest) -> Result<(), Failure> {
    if m.src.is_empty() {
        return Ok(());
    }
    let rolled_back = state.rollbacks(&m.dest).at(Step::Validate)?;
    let ours = |rb: &&state::RolledBack| {
        let sum = releases::checksum_prefix(&rb.from);
        sum.zip(m.checksum.get(..8))
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
    };
    let Some(rb) = rolled_back.iter().find(ours) else {
        return Ok(());
    };
    Err(anyhow!(
        "dest {} was rolled back from release {} to {} at {}: not deploying \
         that archive again (a replayed event would put it live again); use \
         --force to deploy it anyway",
        m.dest,
        rb.from,
        rb.to,
        rb.at
    ))
    .at(Step::Validate)
}

fn record(state: &StateDir, event: &Event, m: &Manifest, signed_at: Option<u64>) -> Result<()> {
    let entry = state::DestRecord {
        manifest: event.url.clone(),
        checksum: m.checksum.clone(),
        event: event.source.as_ref().map(|s| s.label()),
        deployed_at: chrono::Utc::now().to_rfc3339(),
        signed_at,
        rolled_back: Vec::new(),
    };
    state.record(event.source.as_ref(), &m.dest, entry)
}

/// Fetches and parses the manifest. With `--verify-key`, its raw bytes are
/// first checked against `<url>.minisig` (fetched under the same timeout and
/// the download's retry policy), and once its `dest` is known, against the
/// signature time of what is deployed there (SPEC 8.5; checked again under
/// the dest lock).
async fn load_manifest(
    config: &Config,
    url: &str,
    state: Option<&StateDir>,
    cancel: &CancellationToken,
) -> Result<(Manifest, Option<signature::Verified>), Failure> {
    let text = cancellable(
        cancel,
        with_timeout(config.timeout, url, source::read_to_string(url)),
    )
    .await
    .context("load manifest failed")
    .at(Step::Manifest)?;
    let Some(policy) = &config.signatures else {
        let manifest = Manifest::parse(&text).context("load manifest failed");
        return Ok((manifest.at(Step::Manifest)?, None));
    };
    let sig_url = signature::url_for(url);
    let sig = signature::fetch(&sig_url, config.retry, config.retry_wait);
    let sig = cancellable(cancel, with_timeout(config.timeout, &sig_url, sig))
        .await
        .at(Step::Manifest)?;
    let signed = policy
        .verify(&sig_url, text.as_bytes(), &sig)
        .at(Step::Manifest)?;
    let manifest = Manifest::parse(&text)
        .context("load manifest failed")
        .at(Step::Manifest)?;
    if let Some(guard) = Guard::new(Some(policy), state, Some(&signed), &manifest.dest) {
        guard.check().at(Step::Manifest)?;
    }
    Ok((manifest, Some(signed)))
}

/// What a deploy checks and records in `--state-dir`: its rollback records
/// and, for a signed manifest, the downgrade guard.
struct Records<'a> {
    state: Option<&'a StateDir>,
    guard: Option<&'a Guard<'a>>,
}

/// The deploy pipeline, in SPEC order: validate, lock, download and verify,
/// `pre`, place the archive into dest (the strategy's job: extract and
/// sync, or stream), `post`. A signed manifest's guard is checked under
/// the lock and told once dest may have changed. The temp file and dir are
/// removed, and the lock released, on return.
async fn deploy(
    m: &Manifest,
    config: &Config,
    records: Records<'_>,
    hooks: &mut Hooks<'_>,
    facts: &mut Facts,
) -> Result<(), Failure> {
    let cancel = hooks.cancel;
    if m.src.is_empty() {
        hooks.run(Phase::Pre, &m.commands.pre).await.at(Step::Pre)?;
        return post_and_verify(m, hooks).await;
    }

    let strategy = sync::from_name(
        &m.sync_strategy,
        sync::Settings {
            excludes: m.excludes.clone(),
            exclude_from: m.exclude_from.clone(),
            rsync_verbose: config.rsync_verbose.clone(),
            keep_releases: m.keep_releases,
        },
    )
    .at(Step::Validate)?;
    digest::Verifier::new(&m.checksum).at(Step::Validate)?;
    if let Some(policy) = &config.signatures {
        policy.check_checksum(&m.checksum).at(Step::Validate)?;
    }
    strategy.check(Path::new(&m.dest)).at(Step::Validate)?;

    let lock = async {
        match strategy.switches_dest() {
            true => lock::acquire_switched(&m.dest, config.lock_timeout).await,
            false => lock::acquire(&m.dest, config.lock_timeout).await,
        }
    };
    let _lock = cancellable(cancel, lock).await.at(Step::Lock)?;
    // Again under the lock: a run that waited may be behind a newer deploy
    // or a rollback.
    if let (Some(state), false) = (records.state, config.force) {
        not_rolled_back(state, m)?;
    }
    if let Some(guard) = records.guard {
        guard.check().at(Step::Validate)?;
    }

    let options = fetch::Options {
        max_bandwidth: config.max_bandwidth,
        timeout: config.timeout,
        retry: config.retry,
        retry_wait: config.retry_wait,
        kept: (config.state_dir.as_deref()).map(|dir| pack::Kept::for_dest(dir, &m.dest)),
    };
    let download = cancellable(cancel, fetch::fetch(&m.src, &m.checksum, &options))
        .await
        .at(Step::Download)?;
    facts.bytes = download.size();

    hooks.run(Phase::Pre, &m.commands.pre).await.at(Step::Pre)?;
    interrupted(cancel).at(Step::Pre)?;

    let download = std::sync::Arc::new(download);
    let (archive, src, checksum, dest) = (
        std::sync::Arc::clone(&download),
        m.src.clone(),
        m.checksum.clone(),
        Path::new(&m.dest).to_path_buf(),
    );
    let (dest_mode, max_size, stop) = (m.dest_mode(), config.max_extract_size, cancel.clone());
    let shown = Progress::counting(format!("deploying into {}", m.dest));
    let placed = blocking(move || {
        let job = sync::Job {
            archive: &archive,
            src: &src,
            checksum: &checksum,
            dest: &dest,
            dest_mode,
            max_size,
            cancel: &stop,
        };
        Ok(strategy.place(&job))
    });
    let placed = placed.await;
    if let Some(guard) = records.guard {
        guard.dest_changed();
    }
    let leftovers = placed.at(Step::Sync)??;
    drop(shown);
    // From here on the new release is live: post, success and failure
    // hooks see it.
    if let Some(dir) = leftovers.release_dir() {
        facts.release = Some(dir.display().to_string());
        hooks
            .env
            .push(("STRETCHER_RELEASE_DIR", dir.display().to_string()));
    }
    interrupted(cancel).at(Step::Sync)?;

    let result = post_and_verify(m, hooks).await;
    // Kept for the next delta fetch once the hooks ran, whatever they
    // returned (dest has it): after a delta fetch this copies the reused
    // members in, off the deploy's path. Not after a signal.
    if !cancel.is_cancelled() {
        let kept = options.kept;
        let _ = blocking(move || {
            fetch::keep(kept.as_ref(), &download);
            Ok(())
        })
        .await;
    }
    let rollback = verify::AutoRollback {
        dest: Path::new(&m.dest),
        release: leftovers.release_dir(),
        enabled: config.auto_rollback,
        strategy: &m.sync_strategy,
        lines: &m.commands.rollback,
        state: records.state,
        verify: m.verify.as_ref(),
    };
    let (result, live) = rollback.after(result, hooks).await;
    if let Some(dir) = live {
        facts.rolled_back = true;
        facts.release = Some(dir.display().to_string());
    }
    result
}

/// `post`, then the `verify:` checks, which compare with what they saw
/// just before `post` ran (SPEC 8.7).
async fn post_and_verify(m: &Manifest, hooks: &Hooks<'_>) -> Result<(), Failure> {
    let before = m.verify.as_ref().map(verify::Verify::baseline);
    hooks
        .run(Phase::Post, &m.commands.post)
        .await
        .at(Step::Post)?;
    match (&m.verify, before) {
        (Some(checks), Some(before)) => checks.run(&before, hooks).await.at(Step::Verify),
        _ => Ok(()),
    }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("worker thread failed: {e}"))?
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

/// Bounds the manifest fetch by `--timeout`, as the src download is.
async fn with_timeout<T>(
    limit: Option<Duration>,
    url: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let Some(limit) = limit else {
        return fut.await;
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        anyhow!(
            "timeout {} reached while fetching {url}",
            units::format_duration(limit)
        )
    })?
}
