//! `rsync -a --delete <verbose> [--exclude-from F] [--exclude X]… <from>/ <to>/`,
//! its output logged as one block when it exits, as upstream does (with
//! `-v` that is a line per file: one log write instead of thousands).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::{extract_to_scratch, rename_into_empty_dest, Job, Leftovers, Settings, Strategy};
use crate::step::{AtStep, Failure, Step};

/// How often a running rsync is checked for exit or a signal.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The default strategy: the real rsync binary.
pub struct Rsync(pub Settings);

impl Rsync {
    fn args(&self, from: &Path, to: &Path) -> Vec<String> {
        let from = with_slash(from);
        let mut args = vec!["-a".to_string(), "--delete".to_string()];
        if !self.0.rsync_verbose.is_empty() {
            args.push(self.0.rsync_verbose.clone());
        }
        if !self.0.exclude_from.is_empty() {
            args.push("--exclude-from".into());
            args.push(format!("{from}{}", self.0.exclude_from));
        }
        for pattern in &self.0.excludes {
            args.push("--exclude".into());
            args.push(pattern.clone());
        }
        args.push(from);
        args.push(with_slash(to));
        args
    }
}

impl Rsync {
    /// The first deploy into an empty dest renames the extracted tree
    /// into place ([`rename_into_empty_dest`]) unless something is excluded
    /// (excluded files must not arrive).
    fn move_into_empty_dest(&self, from: &Path, to: &Path) -> bool {
        self.0.excludes.is_empty()
            && self.0.exclude_from.is_empty()
            && rename_into_empty_dest(from, to)
    }
}

fn with_slash(p: &Path) -> String {
    let s = p.display().to_string();
    if s.ends_with('/') {
        s
    } else {
        s + "/"
    }
}

impl Strategy for Rsync {
    fn place(&self, job: &Job<'_>) -> Result<Leftovers, Failure> {
        let tree = extract_to_scratch(job)?;
        self.sync(tree.path(), job.dest, job.cancel)
            .at(Step::Sync)?;
        Ok(Leftovers::dir(tree))
    }
}

impl Rsync {
    fn sync(&self, from: &Path, to: &Path, cancel: &CancellationToken) -> Result<()> {
        if self.move_into_empty_dest(from, to) {
            return Ok(());
        }
        let args = self.args(from, to);
        log::info!("rsync [{}]", args.join(" "));
        let (mut reader, writer) = std::io::pipe().context("creating a pipe for rsync")?;
        let mut child = {
            let mut cmd = Command::new("rsync");
            // Its own process group: a signal stops rsync's receiver and
            // generator processes too, not only the one we started.
            cmd.process_group(0)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(writer.try_clone()?)
                .stderr(writer);
            cmd.spawn().context("cannot run rsync (is it installed?)")?
            // `cmd` and its copies of the pipe's write end drop here, so the
            // reader sees EOF when rsync exits.
        };
        let output = std::thread::spawn(move || {
            let mut output = Vec::new();
            crate::progress::CountLines(&mut reader)
                .read_to_end(&mut output)
                .map(|_| output)
        });
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for rsync")? {
                break Some(status);
            }
            if cancel.is_cancelled() {
                // rsync renames each file into place whole: stopping it
                // leaves every file in dest either old or new.
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our own child, not yet reaped.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(POLL);
        };
        let output = output
            .join()
            .map_err(|_| anyhow!("rsync output reader panicked"))?
            .context("reading rsync output")?;
        if !output.is_empty() {
            log::info!("{}", String::from_utf8_lossy(&output));
        }
        match status {
            None => bail!("rsync stopped: interrupted by signal"),
            Some(status) if !status.success() => {
                bail!("rsync into {} failed: {status}", to.display())
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_upstream_order() {
        let r = Rsync(Settings {
            excludes: vec!["*.pid".into(), "tmp/".into()],
            exclude_from: "exclude.list".into(),
            rsync_verbose: "-vv".into(),
        });
        assert_eq!(
            r.args(Path::new("/tmp/x"), Path::new("/srv/app")),
            [
                "-a",
                "--delete",
                "-vv",
                "--exclude-from",
                "/tmp/x/exclude.list",
                "--exclude",
                "*.pid",
                "--exclude",
                "tmp/",
                "/tmp/x/",
                "/srv/app/"
            ]
        );
        let quiet = Rsync(Settings::default());
        assert_eq!(
            quiet.args(Path::new("/a/"), Path::new("/b")),
            ["-a", "--delete", "/a/", "/b/"]
        );
    }
}
