//! `rsync -a --delete <verbose> [--exclude-from F] [--exclude X]… <from>/ <to>/`,
//! its output logged as one block when it exits, as upstream does (with
//! `-v` that is a line per file: one log write instead of thousands).

use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Settings, SyncStrategy};

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

fn with_slash(p: &Path) -> String {
    let s = p.display().to_string();
    if s.ends_with('/') {
        s
    } else {
        s + "/"
    }
}

impl SyncStrategy for Rsync {
    fn sync(&self, from: &Path, to: &Path) -> Result<()> {
        let args = self.args(from, to);
        log::info!("rsync [{}]", args.join(" "));
        let (reader, writer) = std::io::pipe().context("creating a pipe for rsync")?;
        let mut child = {
            let mut cmd = Command::new("rsync");
            cmd.args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(writer.try_clone()?)
                .stderr(writer);
            cmd.spawn().context("cannot run rsync (is it installed?)")?
            // `cmd` and its copies of the pipe's write end drop here, so the
            // reader sees EOF when rsync exits.
        };
        let mut output = Vec::new();
        let read = (&reader).read_to_end(&mut output);
        let status = child.wait().context("waiting for rsync")?;
        read.context("reading rsync output")?;
        if !output.is_empty() {
            log::info!("{}", String::from_utf8_lossy(&output));
        }
        if !status.success() {
            bail!("rsync failed: {status}");
        }
        Ok(())
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
