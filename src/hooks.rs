//! Hook runner: each command line is `sh -c <line>` in its own process group.
//! `pre`/`post` output is streamed into the log line by line; `success` and
//! `failure` get the run log on stdin and write straight to our stdout/stderr.

use std::process::{ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

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

/// Runs hook command lines with the deploy's `STRETCHER_*` variables.
pub struct Hooks<'a> {
    /// Variables exported to every hook (besides `STRETCHER_PHASE`).
    pub env: Vec<(&'static str, String)>,
    /// Fires on the first SIGINT/SIGTERM: a running `pre`/`post` hook's
    /// group gets SIGTERM.
    pub cancel: &'a CancellationToken,
    /// Fires on a second signal: a running `success`/`failure` hook's group
    /// gets SIGTERM too, so the agent can clean up and exit.
    pub abort: &'a CancellationToken,
    /// Discard `success`/`failure` hook output: a `serf query` handler's
    /// stdout and stderr are its one-line answer.
    pub quiet: bool,
}

impl Hooks<'_> {
    /// Runs `lines` in order with output logged; the first failure stops them.
    pub async fn run(&self, phase: Phase, lines: &[String]) -> Result<()> {
        for line in lines {
            let mut child = self
                .command(phase, line)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("failed: {line}: cannot run sh"))?;
            let (out, err) = (child.stdout.take(), child.stderr.take());
            let pumps = async { tokio::join!(log_lines(out), log_lines(err)) };
            let status = wait(&mut child, line, pumps, self.cancel).await?;
            check(line, status)?;
        }
        Ok(())
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
            let stdin = child.stdin.take();
            let feed = async move {
                let Some(mut stdin) = stdin else { return };
                let res = async {
                    stdin.write_all(log).await?;
                    stdin.shutdown().await
                }
                .await;
                match res {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        log::info!("failed to write to STDIN of {line}: {e}")
                    }
                    _ => {}
                }
            };
            // Not cut short by the signal that failed the run: these hooks
            // report the outcome. A second signal stops them.
            let status = wait(&mut child, line, feed, self.abort).await?;
            check(line, status)?;
        }
        Ok(())
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

    /// `sh -c <line>` with the hooks' variables and `STRETCHER_PHASE`, in
    /// its own process group, killed on drop; not logged (a polled
    /// `verify` check runs it often).
    pub fn shell(&self, phase: Phase, line: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(line)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("STRETCHER_PHASE", phase.name())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// Waits for the child and `io` to finish, or terminates the child's
/// process group when `cancel` fires.
async fn wait(
    child: &mut Child,
    line: &str,
    io: impl std::future::Future<Output = impl Sized>,
    cancel: &CancellationToken,
) -> Result<ExitStatus> {
    let finished = async {
        let (status, _) = tokio::join!(child.wait(), io);
        status
    };
    tokio::select! {
        status = finished => Ok(status.with_context(|| format!("failed: {line}"))?),
        () = cancel.cancelled() => {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory-safety preconditions; a
                // negative pid addresses the hook's own process group.
                unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
            }
            let _ = child.wait().await;
            bail!("failed: {line}: interrupted by signal")
        }
    }
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
