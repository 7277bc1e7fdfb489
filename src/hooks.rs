//! Hook runner: each command line is `sh -c <line>` in its own process group.
//! `pre`/`post` output is streamed into the log line by line; `success` and
//! `failure` get the run log on stdin and write straight to our stdout/stderr.
//! A hook is stopped on a signal or at its timeout (SIGTERM to its group,
//! SIGKILL to what is left after a grace); a background process it leaves
//! holding its pipes does not keep the agent waiting.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use crate::units::format_duration;

/// How long a stopped hook's process group has to exit after SIGTERM
/// before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// How long a hook's pipes are still served once its shell has exited.
const LINGER: Duration = Duration::from_secs(1);

/// The phase a hook runs in; exported to it as `STRETCHER_PHASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before extraction.
    Pre,
    /// After sync.
    Post,
    /// After a successful deploy.
    Success,
    /// After a failed deploy.
    Failure,
    /// A `verify:` `command` check.
    Verify,
    /// After an automatic rollback (`commands.rollback`).
    Rollback,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
            Phase::Success => "success",
            Phase::Failure => "failure",
            Phase::Verify => "verify",
            Phase::Rollback => "rollback",
        }
    }
}

/// Runs hook command lines with the deploy's `STRETCHER_*` variables and
/// the manifest's `commands.env`.
pub struct Hooks<'a> {
    /// Variables exported to every hook (besides `STRETCHER_PHASE`).
    pub env: Vec<(&'static str, String)>,
    /// The manifest's `commands.env`, applied last: it wins over the
    /// agent's environment and the variables above.
    pub manifest_env: &'a [(String, String)],
    /// Bound on each command line; `None` waits as long as it runs.
    pub timeout: Option<Duration>,
    /// Fires on the first SIGINT/SIGTERM: a running `pre`/`post` hook's
    /// group gets SIGTERM.
    pub cancel: &'a CancellationToken,
    /// Fires on a second signal: a running `success`/`failure` hook's group
    /// gets SIGTERM too, and a `pre`/`post` hook's group still alive after
    /// the first one gets SIGKILL, so the agent can clean up and exit.
    pub abort: &'a CancellationToken,
    /// Discard `success`/`failure` hook output: a `serf query` handler's
    /// stdout and stderr are its one-line answer.
    pub quiet: bool,
}

impl Hooks<'_> {
    /// Runs `lines` in order with output logged; the first failure stops them.
    pub async fn run(&self, phase: Phase, lines: &[String]) -> Result<()> {
        for line in lines {
            self.run_line(phase, line).await?;
        }
        Ok(())
    }

    /// Runs one command line as a `phase` hook: its environment, its output
    /// logged, stopped by a signal or at the timeout.
    pub async fn run_line(&self, phase: Phase, line: &str) -> Result<()> {
        let mut child = self
            .command(phase, line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed: {line}: cannot run sh"))?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let pumps = async move {
            tokio::join!(log_lines(out), log_lines(err));
        };
        let stops = Stops {
            signal: self.cancel,
            kill_now: Some(self.abort),
            timeout: self.timeout,
        };
        let (status, open) = supervise(&mut child, line, pumps, &stops).await?;
        if let Some(pumps) = open {
            log::info!("a background process kept the output of {line} open: going on without it");
            // Still read while the agent runs, so that process is not
            // killed by SIGPIPE for writing to a closed pipe.
            tokio::spawn(pumps);
        }
        check(line, status)
    }

    /// Runs `lines` in order, each fed `log` on stdin; their output passes
    /// through. A hook that does not read its stdin is not an error.
    pub async fn run_piped(&self, phase: Phase, lines: &[String], log: &[u8]) -> Result<()> {
        for line in lines {
            if self.abort.is_cancelled() {
                bail!("skipped {line}: stopping on a second signal");
            }
            let mut child = self
                .command(phase, line)
                .stdin(Stdio::piped())
                .stdout(self.passthrough())
                .stderr(self.passthrough())
                .spawn()
                .with_context(|| format!("failed: {line}: cannot run sh"))?;
            let feed = feed(child.stdin.take(), log, line);
            // Not cut short by the signal that failed the run: these hooks
            // report the outcome. A second signal stops them.
            let stops = Stops {
                signal: self.abort,
                kill_now: None,
                timeout: self.timeout,
            };
            let (status, open) = supervise(&mut child, line, feed, &stops).await?;
            if open.is_some() {
                log::info!(
                    "a background process kept the stdin of {line} open: going on without it"
                );
            }
            check(line, status)?;
        }
        Ok(())
    }

    /// Runs `line` as a `phase` command quietly (a polled `verify` check):
    /// the hooks' environment, its output kept rather than logged, its
    /// process group stopped by a signal or after `limit`, and killed if
    /// the caller gives up on it. A background process still holding its
    /// output gets the same second as a hook's. Returns the exit status
    /// and the last line it wrote (stderr first).
    pub async fn run_quiet(
        &self,
        phase: Phase,
        line: &str,
        limit: Duration,
    ) -> Result<(ExitStatus, String)> {
        let mut child = self
            .shell(phase, line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed: {line}: cannot run sh"))?;
        let armed = KillGroupOnDrop(child.id().and_then(|id| i32::try_from(id).ok()));
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let (mut output, mut errors) = (Vec::new(), Vec::new());
        let io = async {
            tokio::join!(
                read_all(out.as_mut(), &mut output),
                read_all(err.as_mut(), &mut errors)
            );
        };
        let stops = Stops {
            signal: self.cancel,
            kill_now: Some(self.abort),
            timeout: Some(limit),
        };
        let supervised = supervise(&mut child, line, io, &stops).await;
        std::mem::forget(armed);
        let (status, _) = supervised?;
        let said = [&errors, &output]
            .into_iter()
            .filter_map(|b| {
                let text = String::from_utf8_lossy(b);
                let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
                Some(last.trim().to_string())
            })
            .next()
            .unwrap_or_default();
        Ok((status, said))
    }

    fn passthrough(&self) -> Stdio {
        if self.quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        }
    }

    fn command(&self, phase: Phase, line: &str) -> Command {
        log::info!("invoking command: {line}");
        self.shell(phase, line)
    }

    /// `sh -c <line>` with the hooks' variables, `STRETCHER_PHASE` and
    /// `commands.env`, in its own process group, killed on drop; not
    /// logged (a polled `verify` check runs it often).
    pub fn shell(&self, phase: Phase, line: &str) -> Command {
        let mut cmd = Command::new(sh_path());
        cmd.arg0("sh")
            .arg("-c")
            .arg(line)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("STRETCHER_PHASE", phase.name())
            .envs(self.manifest_env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// `sh` as the agent's own PATH finds it, as Go's `exec.Command` looks it
/// up; std would search a PATH set by `commands.env` instead.
fn sh_path() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join("sh"))
            .find(|sh| is_executable(sh))
    });
    found.unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Reads a pipe to its end into `buf`; a read error ends it.
async fn read_all(pipe: Option<&mut (impl AsyncRead + Unpin)>, buf: &mut Vec<u8>) {
    if let Some(pipe) = pipe {
        let _ = tokio::io::AsyncReadExt::read_to_end(pipe, buf).await;
    }
}

/// Kills a command's process group when its caller stops waiting for it
/// (a dropped future); forgotten once the command has been waited for.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            signal_group(group, libc::SIGKILL);
        }
    }
}

/// Writes `log` to a hook's stdin and closes it; EPIPE (a hook that does
/// not read it) is not an error.
async fn feed(stdin: Option<ChildStdin>, log: &[u8], line: &str) {
    let Some(mut stdin) = stdin else { return };
    let written = async {
        stdin.write_all(log).await?;
        stdin.shutdown().await
    };
    match written.await {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            log::info!("failed to write to STDIN of {line}: {e}")
        }
        _ => {}
    }
}

/// What stops a running hook.
struct Stops<'a> {
    /// SIGTERM to the hook's group, the run fails.
    signal: &'a CancellationToken,
    /// SIGKILL to a group stopped by `signal` without waiting out the grace.
    kill_now: Option<&'a CancellationToken>,
    /// Stop the hook, as `signal` does, once it has run this long.
    timeout: Option<Duration>,
}

/// Waits for the hook's shell while `io` serves its pipes, stopping its
/// process group on a signal or at the timeout. Once the shell has exited,
/// `io` gets [`LINGER`] to finish; if a background process the hook
/// started still holds a pipe, the unfinished `io` is handed back.
async fn supervise<F: Future<Output = ()>>(
    child: &mut Child,
    line: &str,
    io: F,
    stops: &Stops<'_>,
) -> Result<(ExitStatus, Option<Pin<Box<F>>>)> {
    let group = child.id().and_then(|id| i32::try_from(id).ok());
    let mut io = Box::pin(io);
    let mut io_done = false;
    let expiry = async {
        match stops.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.with_context(|| format!("failed: {line}"))?,
            () = &mut io, if !io_done => io_done = true,
            () = stops.signal.cancelled() => {
                stop(child, group, line, stops.kill_now).await;
                bail!("failed: {line}: interrupted by signal");
            }
            () = &mut expiry => {
                stop(child, group, line, stops.kill_now).await;
                let limit = stops.timeout.map(format_duration).unwrap_or_default();
                bail!("failed: {line} timeout {limit}");
            }
        }
    };
    if io_done || tokio::time::timeout(LINGER, &mut io).await.is_ok() {
        return Ok((status, None));
    }
    Ok((status, Some(io)))
}

/// Stops a hook: SIGTERM to its process group, then SIGKILL to whatever is
/// left of the group after [`GRACE`], or at once when `kill_now` fires.
async fn stop(
    child: &mut Child,
    group: Option<i32>,
    line: &str,
    kill_now: Option<&CancellationToken>,
) {
    let Some(group) = group else {
        let _ = child.wait().await;
        return;
    };
    signal_group(group, libc::SIGTERM);
    let gone = async {
        let _ = child.wait().await;
        while group_alive(group) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let now = async {
        match kill_now {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = gone => return,
        () = tokio::time::sleep(GRACE) => {
            log::info!("{line}: still running {} after SIGTERM, sending SIGKILL", format_duration(GRACE));
        }
        () = now => log::info!("{line}: sending SIGKILL"),
    }
    signal_group(group, libc::SIGKILL);
    let _ = child.wait().await;
}

fn signal_group(group: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid
    // addresses the hook's own process group.
    unsafe { libc::kill(-group, signal) };
}

/// Whether a process of `group` still runs. Zombies do not count: an init
/// that does not reap orphans (a container's) would keep them for good.
fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 sends nothing.
    if unsafe { libc::kill(-group, 0) } != 0 {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid pgrp …`: comm may hold anything, the last
        // `)` ends it.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().take(3).collect())
            .unwrap_or_default();
        matches!(fields.as_slice(), [state, _, pgrp]
            if !matches!(*state, "Z" | "X") && pgrp.parse() == Ok(group))
    })
}

fn check(line: &str, status: ExitStatus) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => bail!("failed: {line} exit status {code}"),
        (None, Some(sig)) => bail!("failed: {line} signal: {sig}"),
        (None, None) => bail!("failed: {line} {status}"),
    }
}

/// Logs each line a hook writes as it arrives.
async fn log_lines(pipe: Option<impl AsyncRead + Unpin>) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                log::info!("{}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}
