//! The release dirs of `sync_strategy: release` (SPEC 8.2): `dest` is a
//! symlink to `releases/<name>` beside it. This module names, lists,
//! switches and prunes them, and runs `stretcher releases` and `stretcher
//! rollback`. Only names this agent gives (`<UTC yyyymmddHHMMSS>-<first 8
//! of checksum>`, with `-<n>` on a collision) are ever listed or removed.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use crate::state::StateDir;

/// Where a release-managed `dest` keeps its releases.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The symlink the app reads through.
    pub dest: PathBuf,
    /// The directory holding `dest` and `releases/`.
    pub parent: PathBuf,
    /// `<parent>/releases`.
    pub dir: PathBuf,
}

/// One release dir.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// Its name in `releases/`.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Whether `dest` points to it.
    pub live: bool,
    /// When it was deployed (from its name), RFC 3339.
    pub deployed_at: String,
    /// Bytes in its regular files (files shared with other releases
    /// through hard links count in each).
    pub bytes: u64,
    #[serde(skip)]
    made: (i64, i64),
}

impl Layout {
    /// The layout of `dest` (a trailing `/` is ignored).
    pub fn of(dest: &Path) -> Result<Self> {
        let text = dest.to_string_lossy();
        let dest = PathBuf::from(text.trim_end_matches('/'));
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow!("dest {}: no directory name to make a symlink of", text))?;
        if name == ".." {
            bail!("dest {text}: no directory name to make a symlink of");
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Layout {
            dir: parent.join("releases"),
            parent,
            dest,
        })
    }

    /// Refuses a `dest` that is something other than a symlink (or
    /// missing): the agent never moves or deletes data it did not place.
    pub fn check_dest(&self) -> Result<()> {
        let d = self.dest.display();
        if self.dest.file_name() == Some(std::ffi::OsStr::new("releases")) {
            bail!("dest {d}: sync_strategy release keeps its releases in a dir named releases beside dest; name dest otherwise (current)");
        }
        if let Some(other) = self.other_release_dest() {
            bail!(
                "dest {d}: {} beside it already points into {}: give each release dest a directory of its own",
                self.parent.join(other).display(),
                self.dir.display()
            );
        }
        match fs::symlink_metadata(&self.dest) {
            Ok(meta) if meta.file_type().is_symlink() => Ok(()),
            Ok(meta) if meta.is_dir() => bail!(
                "dest {d} is a directory: sync_strategy release makes dest a symlink to \
                 {}/<release>. To migrate, move it aside (mv {d} {d}.old) and deploy again; \
                 stretcher never moves or deletes it",
                self.dir.display()
            ),
            Ok(_) => bail!(
                "dest {d} is not a symlink: sync_strategy release makes dest a symlink to \
                 {}/<release>; move it aside and deploy again",
                self.dir.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("stat {d}")),
        }
    }

    /// The release dir `dest` points to now, when it is a directory.
    pub fn live_dir(&self) -> Option<PathBuf> {
        let target = fs::read_link(&self.dest).ok()?;
        let dir = self.parent.join(target);
        dir.is_dir().then_some(dir)
    }

    /// The name of the release `dest` points to, when it is one of ours.
    pub fn live(&self) -> Option<String> {
        let live = self.live_dir()?.canonicalize().ok()?;
        let dir = self.dir.canonicalize().ok()?;
        let name = live.file_name()?.to_str()?;
        (live.parent() == Some(dir.as_path()) && is_release_name(name)).then(|| name.to_string())
    }

    /// Every release, newest first.
    pub fn list(&self) -> Result<Vec<Release>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let live = self.live();
        let mut releases = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(at) = deployed_at(&name) else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            releases.push(Release {
                live: live.as_deref() == Some(name.as_str()),
                deployed_at: at.to_rfc3339(),
                bytes: 0,
                made: (
                    at.timestamp(),
                    meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                ),
                name,
                path,
            });
        }
        releases.sort_by(|a, b| b.made.cmp(&a.made).then_with(|| b.name.cmp(&a.name)));
        Ok(releases)
    }

    /// A free name for a release of `checksum` deployed `now`.
    pub fn new_name(&self, checksum: &str, now: DateTime<Utc>) -> String {
        let sum: String = checksum.chars().take(8).collect::<String>().to_lowercase();
        let base = format!("{}-{sum}", now.format("%Y%m%d%H%M%S"));
        let mut name = base.clone();
        for n in 2.. {
            if fs::symlink_metadata(self.dir.join(&name)).is_err() {
                break;
            }
            name = format!("{base}-{n}");
        }
        name
    }

    /// Points `dest` at `releases/<name>` atomically: a new symlink renamed
    /// over the old one, then the directory synced so the switch survives
    /// a crash.
    pub fn switch(&self, name: &str) -> Result<()> {
        let target = Path::new("releases").join(name);
        let mut temp = std::ffi::OsString::from(".");
        temp.push(self.dest.file_name().unwrap_or_default());
        temp.push(format!(".switch.{:06x}", rand::random::<u32>() & 0xff_ffff));
        let temp = self.parent.join(temp);
        std::os::unix::fs::symlink(&target, &temp)
            .with_context(|| format!("creating symlink {}", temp.display()))?;
        if let Err(e) = fs::rename(&temp, &self.dest) {
            let _ = fs::remove_file(&temp);
            return Err(e).with_context(|| format!("switching {}", self.dest.display()));
        }
        // Switched: a directory that cannot be synced (opened) only leaves
        // the switch to the next writeback.
        if let Err(e) = fs::File::open(&self.parent).and_then(|dir| dir.sync_all()) {
            log::info!("could not sync {}: {e}", self.parent.display());
        }
        Ok(())
    }

    /// Removes releases beyond the newest `keep`, never one named in
    /// `spare` (the live one and the one it replaced) nor one that any
    /// symlink beside `dest` points to (another dest sharing `releases/`).
    /// Logs each removal; a release that cannot be removed is logged and
    /// left.
    pub fn prune(&self, keep: usize, spare: &[&str]) -> Result<()> {
        let in_use: Vec<String> = self.links_into_releases().map(|(_, name)| name).collect();
        for release in self.list()?.into_iter().skip(keep) {
            if release.live
                || spare.contains(&release.name.as_str())
                || in_use.contains(&release.name)
            {
                continue;
            }
            // Out of the list first: a removal that fails half way leaves
            // no damaged release to roll back to.
            let doomed = self.dir.join(format!("{REMOVING}{}", release.name));
            let removed = fs::rename(&release.path, &doomed)
                .and_then(|()| crate::scratch::remove_tree(&doomed));
            match removed {
                Ok(()) => log::info!("Removed old release {}", release.name),
                Err(e) => log::info!("could not remove old release {}: {e}", release.name),
            }
        }
        Ok(())
    }

    /// The symlinks in `parent` that point to a dir in `releases/`: (link
    /// name, release name).
    fn links_into_releases(&self) -> impl Iterator<Item = (std::ffi::OsString, String)> {
        let dir = self.dir.canonicalize().ok();
        let entries = dir.as_ref().and_then(|_| fs::read_dir(&self.parent).ok());
        entries
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(move |e| {
                if !e.file_type().ok()?.is_symlink() {
                    return None;
                }
                let target = e.path().canonicalize().ok()?;
                if target.parent() != dir.as_deref() {
                    return None;
                }
                Some((e.file_name(), target.file_name()?.to_str()?.to_string()))
            })
    }

    /// Another release dest beside this one: a symlink (not hidden, so not
    /// a switch's temp link) whose own target is `releases/<name>`, as this
    /// agent writes them. An alias of dest (`app -> current`) is not one.
    fn other_release_dest(&self) -> Option<std::ffi::OsString> {
        let name = self.dest.file_name()?;
        let entries = fs::read_dir(&self.parent).ok()?;
        entries.flatten().map(|e| e.file_name()).find(|link| {
            let target = fs::read_link(self.parent.join(link));
            link != name
                && !link.as_encoded_bytes().starts_with(b".")
                && target.is_ok_and(|t| {
                    t.parent() == Some(Path::new("releases"))
                        && t.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(is_release_name)
                })
        })
    }

    /// Removes what a killed run left: release dirs half built or half
    /// removed, and a switch's temp symlink.
    pub fn remove_unfinished(&self) {
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(BUILDING) || name.starts_with(REMOVING) {
                log::info!("Removing unfinished {name}");
                let _ = crate::scratch::remove_tree(&entry.path());
            }
        }
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(self.dest.file_name().unwrap_or_default());
        prefix.push(".switch.");
        let prefix = prefix.as_encoded_bytes();
        for entry in fs::read_dir(&self.parent).into_iter().flatten().flatten() {
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if is_link && entry.file_name().as_encoded_bytes().starts_with(prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Adds a switch of `dest` (by a deploy, or a rollback) to
    /// `releases/.history`, which keeps the last few hundred.
    pub fn note(&self, how: Switch, from: Option<&str>, to: &str) -> Result<()> {
        let path = self.dir.join(HISTORY);
        let old = fs::read(&path).unwrap_or_default();
        let old = String::from_utf8_lossy(&old);
        let mut lines: Vec<&str> = old.lines().collect();
        let skip = lines.len().saturating_sub(HISTORY_LINES - 1);
        lines.drain(..skip);
        let how = match how {
            Switch::Deploy => "deploy",
            Switch::Rollback => "rollback",
        };
        let line = format!(
            "{} {how} {} {to}",
            Utc::now().to_rfc3339(),
            from.unwrap_or("-")
        );
        lines.push(&line);
        let text = lines.join("\n") + "\n";
        crate::state::write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// The release that `name` replaced when a deploy made it live, if the
    /// history has it and it is still there.
    fn replaced_by(&self, name: &str) -> Option<String> {
        let history = fs::read(self.dir.join(HISTORY)).ok()?;
        let history = String::from_utf8_lossy(&history);
        let from = history.lines().rev().find_map(|line| {
            let mut words = line.split(' ').skip(1);
            let (how, from, to) = (words.next()?, words.next()?, words.next()?);
            (how == "deploy" && to == name).then_some(from)
        })?;
        (is_release_name(from) && self.dir.join(from).is_dir()).then(|| from.to_string())
    }
}

/// The prefix of a release dir under construction.
pub const BUILDING: &str = ".building-";
/// The prefix of a release dir being removed.
const REMOVING: &str = ".removing-";
/// The switch log in `releases/`.
const HISTORY: &str = ".history";
const HISTORY_LINES: usize = 500;

/// What switched `dest`.
#[derive(Debug, Clone, Copy)]
pub enum Switch {
    /// A deploy made a new release live.
    Deploy,
    /// `stretcher rollback`.
    Rollback,
}

/// Whether `name` is a name this agent gives releases.
pub fn is_release_name(name: &str) -> bool {
    deployed_at(name).is_some()
}

/// The first 8 hex digits of the checksum in a release name.
pub fn checksum_prefix(name: &str) -> Option<&str> {
    parts(name).map(|(_, sum)| sum)
}

/// The deploy time in a release name.
fn deployed_at(name: &str) -> Option<DateTime<Utc>> {
    let (stamp, _) = parts(name)?;
    let at = NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S").ok()?;
    Some(at.and_utc())
}

/// The time stamp and checksum digits of a release name,
/// `yyyymmddHHMMSS-xxxxxxxx[-n]`; `None` for any other name.
fn parts(name: &str) -> Option<(&str, &str)> {
    let (stamp, rest) = name.split_at_checked(14)?;
    let rest = rest.strip_prefix('-')?;
    let (sum, suffix) = rest.split_at_checked(8)?;
    let suffix_ok = suffix.is_empty()
        || suffix
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let sum_ok = sum.bytes().all(|b| b.is_ascii_hexdigit());
    let stamp_ok = stamp.bytes().all(|b| b.is_ascii_digit())
        && NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S").is_ok();
    (suffix_ok && sum_ok && stamp_ok).then_some((stamp, sum))
}

/// Bytes in the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// `stretcher releases`: the releases of `dest`, newest first, the live
/// one marked; as one JSON object with `json`.
pub fn show(dest: &Path, json: bool) -> Result<String> {
    let layout = Layout::of(dest)?;
    let mut releases = layout.list()?;
    for r in &mut releases {
        r.bytes = tree_bytes(&r.path);
    }
    if json {
        let doc = serde_json::json!({
            "dest": layout.dest,
            "live": layout.live(),
            "releases": releases,
        });
        return Ok(format!("{doc}\n"));
    }
    if releases.is_empty() {
        return Ok(format!("no releases in {}\n", layout.dir.display()));
    }
    let mut out = format!(
        "releases of {} in {}\n",
        dest.display(),
        layout.dir.display()
    );
    for r in &releases {
        let at = r.deployed_at.replace('T', " ").replace("+00:00", " UTC");
        out.push_str(&format!(
            "{} {:<28} {:>10}  {}\n",
            if r.live { "*" } else { " " },
            r.name,
            crate::units::format_bytes(r.bytes),
            at
        ));
    }
    if layout.live().is_none() {
        out.push_str(&format!(
            "{} points to none of them\n",
            layout.dest.display()
        ));
    }
    Ok(out)
}

/// `stretcher rollback`: points `dest` at the release the live one
/// replaced (or at `to`), runs nothing else, and with a state dir records
/// the rollback, so the releases rolled back from are not deployed again
/// by a replayed event. Logs what it did.
pub fn rollback(dest: &Path, to: Option<&str>, state: Option<&StateDir>) -> Result<()> {
    let layout = Layout::of(dest)?;
    layout.check_dest()?;
    layout.remove_unfinished();
    let releases = layout.list()?;
    let live = layout.live();
    let target = match to {
        Some(name) => releases
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.name.clone())
            .ok_or_else(|| anyhow!("no release {name} in {}", layout.dir.display()))?,
        None => {
            let live = live.as_deref().ok_or_else(|| {
                anyhow!(
                    "nothing to roll back to: {} points to no release in {}",
                    layout.dest.display(),
                    layout.dir.display()
                )
            })?;
            // The release the live one replaced; without a record of it,
            // the next older one.
            layout
                .replaced_by(live)
                .or_else(|| {
                    let mut older = releases.iter().skip_while(|r| r.name != live).skip(1);
                    older.next().map(|r| r.name.clone())
                })
                .ok_or_else(|| {
                    anyhow!("nothing to roll back to: {live} is the oldest release left")
                })?
        }
    };
    if live.as_deref() == Some(target.as_str()) {
        bail!("{} already points to {target}", layout.dest.display());
    }
    // A state dir that cannot be written fails the rollback before it
    // switches anything.
    if let Some(state) = state {
        state.check_writable()?;
    }
    layout.switch(&target)?;
    log::info!(
        "Rolled back {} from {} to {target}",
        layout.dest.display(),
        live.as_deref().unwrap_or("(no release)"),
    );
    if let Err(e) = layout.note(Switch::Rollback, live.as_deref(), &target) {
        log::info!(
            "could not add to {}: {e:#}",
            layout.dir.join(HISTORY).display()
        );
    }
    if let (Some(state), Some(from)) = (state, &live) {
        state.record_rollback(&layout.dest, from, &target)?;
        log::info!("Recorded the rollback in {}", state.path().display());
    }
    Ok(())
}

/// An automatic rollback (SPEC 8.7), under the deploy's lock: when the
/// live release of `dest` was made live by a deploy that replaced another
/// release still there, switches back to that one as [`rollback`] does
/// (the history, the state dir record) and returns its name; `None` when
/// the deploy replaced no release.
pub fn roll_back_deploy(dest: &Path, state: Option<&StateDir>) -> Result<Option<String>> {
    let layout = Layout::of(dest)?;
    let previous = layout.live().and_then(|live| layout.replaced_by(&live));
    let Some(previous) = previous else {
        return Ok(None);
    };
    rollback(dest, Some(&previous), state)?;
    Ok(Some(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_agent_gives_are_releases() {
        assert!(is_release_name("20261201123456-0123abcd"));
        assert!(is_release_name("20261201123456-0123abcd-2"));
        assert_eq!(
            checksum_prefix("20261201123456-0123abcd-2"),
            Some("0123abcd")
        );
        assert_eq!(checksum_prefix("shared"), None);
        for name in [
            "20261201123456-0123",
            "20261201123456-1",
            "20261301123456-0123abcd",
            "20261201123456-0123abcg",
            "20261201123456_0123abcd",
            "20261201123456-0123abcd-",
            "20261201123456-0123abcd-x",
            "shared",
            ".building-20261201123456-0123abcd",
            "2026120112345-0123abcd",
        ] {
            assert!(!is_release_name(name), "{name}");
        }
    }

    #[test]
    fn a_name_in_use_gets_a_suffix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::of(&tmp.path().join("current")).expect("layout");
        let now = DateTime::parse_from_rfc3339("2026-12-01T10:20:30Z")
            .expect("time")
            .with_timezone(&Utc);
        let first = layout.new_name("ABCDEF0123456789", now);
        assert_eq!(first, "20261201102030-abcdef01");
        fs::create_dir_all(layout.dir.join(&first)).expect("mkdir");
        let second = layout.new_name("abcdef0123456789", now);
        assert_eq!(second, "20261201102030-abcdef01-2");
        fs::create_dir_all(layout.dir.join(&second)).expect("mkdir");
        assert_eq!(
            layout.new_name("abcdef0123456789", now),
            "20261201102030-abcdef01-3"
        );
    }

    #[test]
    fn dest_must_be_a_symlink_or_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("current");
        let layout = Layout::of(&dest).expect("layout");
        layout.check_dest().expect("missing is fine");
        fs::create_dir(&dest).expect("mkdir");
        let e = layout.check_dest().expect_err("a real dir is refused");
        assert!(format!("{e}").contains("is a directory"), "{e}");
        assert!(Layout::of(Path::new("/")).is_err());
    }
}
