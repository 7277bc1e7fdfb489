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

/// Stops rsync's processes (the process group `group`) at once. rsync
/// renames each file into place whole, so dest holds every file either old
/// or new; only the temp file it was writing is left, and that is removed
/// here. (On SIGTERM rsync removes it itself, but takes half a second to
/// exit.) The group is frozen first, so the temp files found open for
/// writing are all there are.
fn stop(group: i32, dest: &Path, child: &mut std::process::Child) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-group, libc::SIGSTOP) };
    let temps = open_temp_files(group, dest);
    // SAFETY: as above.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    for temp in temps {
        if let Err(e) = std::fs::remove_file(&temp) {
            log::info!("could not remove rsync's temp file {}: {e}", temp.display());
        }
    }
}

/// Files under `dest` that processes of the group `group` hold open for
/// writing and that carry rsync's temp names (`.name.XXXXXX`).
fn open_temp_files(group: i32, dest: &Path) -> Vec<std::path::PathBuf> {
    let dest = dest.canonicalize().unwrap_or_else(|_| dest.to_path_buf());
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for proc in procs.flatten() {
        let pid = proc.path();
        let in_group = std::fs::read_to_string(pid.join("stat")).is_ok_and(|stat| {
            // Fields after the command (which may hold spaces), in ")":
            // state, ppid, pgrp.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_owned))
                .is_some_and(|pgrp| pgrp == group.to_string())
        });
        if !in_group {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(pid.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let writing = std::fs::read_to_string(pid.join("fdinfo").join(fd.file_name()))
                .ok()
                .and_then(|info| {
                    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                    u32::from_str_radix(flags.trim(), 8).ok()
                })
                .is_some_and(|flags| flags & 0o3 != 0);
            if writing && target.starts_with(&dest) && is_temp_name(&target) {
                found.push(target);
            }
        }
    }
    found
}

/// Whether `path`'s name looks like rsync's temp names: `.name.XXXXXX`.
fn is_temp_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    rest.rsplit_once('.').is_some_and(|(base, suffix)| {
        !base.is_empty() && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
    })
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
                // The group id is our child's pid; it is not reaped yet.
                let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
                stop(group, to, &mut child);
                break None;
            }
            std::thread::sleep(POLL);
        };
        let output = output
            .join()
            .map_err(|_| anyhow!("rsync output reader panicked"))?
            .context("reading rsync output")?;
        for line in String::from_utf8_lossy(&output).lines() {
            log::info!("{line}");
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

    /// A stopped group is killed at once, and the rsync-style temp file it
    /// was writing in dest is removed; a dotfile it only reads stays.
    #[test]
    fn stopping_kills_the_group_and_removes_its_open_temp_file() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join(".env"), "read only").unwrap();
        let script = "exec 3>.big.Ab3xZ9 4<.env; echo ready; exec sleep 30";
        let mut child = Command::new("sh")
            .args(["-c", script])
            .current_dir(dest.path())
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
        let group = i32::try_from(child.id()).unwrap();
        let started = std::time::Instant::now();
        stop(group, dest.path(), &mut child);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(!dest.path().join(".big.Ab3xZ9").exists(), "temp file left");
        assert!(
            dest.path().join(".env").exists(),
            "a file it read was removed"
        );
        // SAFETY: kill with signal 0 only checks that the group exists.
        assert_ne!(unsafe { libc::kill(-group, 0) }, 0, "the group survived");
    }

    #[test]
    fn temp_names_are_rsyncs() {
        for (name, want) in [
            (".app.js.x9Yz0Q", true),
            (".a.abcdef", true),
            (".env", false),
            ("..abcdef", false),
            (".a.abc", false),
            ("a.abcdef", false),
            (".a.abc-ef", false),
        ] {
            assert_eq!(is_temp_name(Path::new(name)), want, "{name}");
        }
    }

    #[test]
    fn args_follow_upstream_order() {
        let r = Rsync(Settings {
            excludes: vec!["*.pid".into(), "tmp/".into()],
            exclude_from: "exclude.list".into(),
            rsync_verbose: "-vv".into(),
            keep_releases: None,
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
