//! SPEC 8.7: the manifest's `verify:` checks, that the new version is
//! serving. They are read into one [`Check`] enum when the manifest is
//! parsed (a check that cannot be read fails the run before the download),
//! compared with a [`Baseline`] taken just before `post` runs, and polled
//! by one loop ([`Verify::run`]) after `post` until all pass in one round
//! or the timeout ends. [`AutoRollback`] is what a `sync_strategy: release`
//! deploy does when `post` or the checks fail.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use url::{Host, Url};

use crate::hooks::{Hooks, Phase};
use crate::manifest::Text;
use crate::state::StateDir;
use crate::step::Failure;

/// Default for `verify.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `verify.interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one `http` answer or `tcp` connection; less when the
/// verify timeout is nearer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time a probe gets, even when the verify timeout is nearer: an
/// attempt cut to a few milliseconds would only say "no answer", hiding
/// what the earlier ones saw.
const MIN_PROBE: Duration = Duration::from_secs(1);
/// How much of an `http` answer's body is searched for `contains`.
const MAX_BODY: usize = 1 << 20;
/// Longest result text kept from a `command` check's output.
const MAX_RESULT: usize = 200;

/// The manifest's `verify:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawVerify")]
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
                    Check::ServerStarter(path) => generations(path)
                        .ok()?
                        .last()
                        .map(|&(generation, _)| generation),
                    Check::Pidfile(path) => read_pid(path).ok(),
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
        let mut client = Clients::default();
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
        client: &mut Clients,
        deadline: Instant,
    ) -> Option<(usize, String)> {
        for (index, check) in self.checks.iter().enumerate() {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_PROBE);
            let was = before.0.get(index).copied().flatten();
            let probed = match check {
                Check::Http {
                    url,
                    status,
                    contains,
                } => match client.for_url(url) {
                    Ok(c) => http(c, url, status, contains.as_deref(), left).await,
                    Err(e) => Err(format!("{e:#}")),
                },
                Check::Tcp(addr) => tcp(addr, left).await,
                Check::Command(line) => command(hooks, line, left).await,
                Check::ServerStarter(path) => server_starter(path, was),
                Check::Pidfile(path) => pidfile(path, was),
            };
            if let Err(result) = probed {
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

/// The HTTP clients of one verify run: direct for loopback hosts, through
/// the environment's proxy otherwise.
#[derive(Default)]
struct Clients {
    direct: Option<reqwest::Client>,
    proxied: Option<reqwest::Client>,
}

impl Clients {
    fn for_url(&mut self, url: &Url) -> Result<&reqwest::Client> {
        let loopback = match url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(name)) => {
                name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost")
            }
            None => false,
        };
        let slot = if loopback {
            &mut self.direct
        } else {
            &mut self.proxied
        };
        if slot.is_none() {
            let mut builder =
                reqwest::Client::builder().user_agent(format!("Stretcher/{}", crate::VERSION));
            if loopback {
                builder = builder.no_proxy();
            }
            *slot = Some(builder.build()?);
        }
        slot.as_ref().ok_or_else(|| anyhow!("no HTTP client"))
    }
}

/// What a probe found when it does not pass.
type Probe = Result<(), String>;

async fn http(
    client: &reqwest::Client,
    url: &Url,
    want: &[u16],
    contains: Option<&str>,
    left: Duration,
) -> Probe {
    let limit = left.min(PROBE_TIMEOUT);
    let ask = async {
        let mut resp = client.get(url.clone()).send().await.map_err(root_cause)?;
        let code = resp.status().as_u16();
        let status_ok = if want.is_empty() {
            resp.status().is_success()
        } else {
            want.contains(&code)
        };
        if !status_ok {
            return Err(code.to_string());
        }
        let Some(text) = contains else {
            return Ok(());
        };
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match resp.chunk().await.map_err(root_cause)? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
            if has(&body, text.as_bytes()) {
                return Ok(());
            }
        }
        match has(&body, text.as_bytes()) {
            true => Ok(()),
            false => Err(format!("{code} without {text:?} in the body")),
        }
    };
    tokio::time::timeout(limit, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", seconds(limit))))
}

fn has(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The innermost cause of an error: `Connection refused (os error 111)`
/// rather than reqwest's `error sending request for url (…)`.
fn root_cause(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut cause: &dyn std::error::Error = &e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

async fn tcp(addr: &str, left: Duration) -> Probe {
    let limit = left.min(PROBE_TIMEOUT);
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {}", seconds(limit))),
    }
}

/// `sh -c LINE` with the hooks' environment (`STRETCHER_PHASE=verify`),
/// bounded by what is left of the verify timeout; its process group is
/// killed when that ends. Its output is kept for the result, not logged:
/// a polled check would fill the log.
async fn command(hooks: &Hooks<'_>, line: &str, left: Duration) -> Probe {
    let mut child = hooks
        .shell(Phase::Verify, line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let finished = async {
        let read_out = async {
            if let Some(pipe) = out.as_mut() {
                let _ = pipe.read_to_end(&mut output).await;
            }
        };
        let read_err = async {
            if let Some(pipe) = err.as_mut() {
                let _ = pipe.read_to_end(&mut errors).await;
            }
        };
        let (status, (), ()) = tokio::join!(child.wait(), read_out, read_err);
        status
    };
    let status = tokio::time::timeout(left, finished).await;
    let status = match status {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory-safety preconditions; a
                // negative pid addresses the check's own process group.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(format!("still running after {}", seconds(left)));
        }
    };
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let mut result = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("signal: {sig}"),
        (None, None) => status.to_string(),
    };
    let said = [&errors, &output]
        .into_iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .find_map(|text| {
            let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
            Some(last.trim().chars().take(MAX_RESULT).collect::<String>())
        });
    if let Some(said) = said {
        result.push_str(": ");
        result.push_str(&said);
    }
    Err(result)
}

/// Server::Starter's status file: `generation:pid` lines, sorted by
/// generation.
fn generations(path: &Path) -> Result<Vec<(u64, i32)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut listed = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed = line
            .split_once(':')
            .and_then(|(g, p)| Some((g.parse().ok()?, p.parse().ok()?)));
        listed.push(parsed.ok_or_else(|| format!("not a generation:pid line: {line:?}"))?);
    }
    listed.sort_unstable();
    Ok(listed)
}

fn server_starter(path: &Path, before: Option<u64>) -> Probe {
    let listed = generations(path)?;
    let [(generation, pid)] = listed[..] else {
        if listed.is_empty() {
            return Err("no generation listed".to_string());
        }
        let all: Vec<String> = listed.iter().map(|(g, _)| g.to_string()).collect();
        return Err(format!(
            "generations {} running (the old workers are not gone)",
            all.join(", ")
        ));
    };
    if before.is_some_and(|b| generation <= b) {
        return Err(format!(
            "generation {generation} is still the newest (none started since post)"
        ));
    }
    if !alive(pid) {
        return Err(format!("generation {generation} pid {pid} is not running"));
    }
    Ok(())
}

/// The pid in a pid file.
fn read_pid(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    text.trim()
        .parse()
        .ok()
        .filter(|&pid: &u64| pid > 0 && i32::try_from(pid).is_ok())
        .ok_or_else(|| format!("not a pid: {:?}", text.trim()))
}

fn pidfile(path: &Path, before: Option<u64>) -> Probe {
    let pid = read_pid(path)?;
    if before == Some(pid) {
        return Err(format!("pid {pid} unchanged since before post"));
    }
    if !alive(pid as i32) {
        return Err(format!("pid {pid} is not running"));
    }
    let mut oldbin = path.as_os_str().to_owned();
    oldbin.push(".oldbin");
    if std::fs::symlink_metadata(&oldbin).is_ok() {
        return Err(format!(
            "{} is still there (the old master has not exited)",
            Path::new(&oldbin).display()
        ));
    }
    Ok(())
}

/// Whether process `pid` runs (a zombie does not count).
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only probes; it sends nothing.
    let probed = unsafe { libc::kill(pid, 0) };
    let exists = probed == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            Some(state == "Z" || state == "X")
        })
        .unwrap_or(false);
    exists && !zombie
}

/// What an automatic rollback needs (SPEC 8.7): a `sync_strategy:
/// release` deploy whose `post` or `verify` failed with its new release
/// live.
pub struct AutoRollback<'a> {
    /// The manifest's `dest` (the symlink).
    pub dest: &'a Path,
    /// `commands.rollback`, run once `dest` is switched back.
    pub lines: &'a [String],
    /// The agent's `--state-dir`, where the rollback is recorded as
    /// `stretcher rollback` records it.
    pub state: Option<&'a StateDir>,
    /// The manifest's checks, run again after the rollback hooks.
    pub verify: Option<&'a Verify>,
}

impl AutoRollback<'_> {
    /// Switches `dest` back to the release the failed deploy replaced,
    /// runs the `rollback` hooks (`STRETCHER_RELEASE_DIR` is the release
    /// switched back to), then the checks again. Returns the deploy's
    /// failure with what happened appended, and the live release's dir
    /// when `dest` was switched back.
    pub async fn run(&self, failure: Failure, hooks: &mut Hooks<'_>) -> (Failure, Option<PathBuf>) {
        let Failure { step, error } = failure;
        let mut said = format!("{error:#}");
        let live = self.switch_back(&mut said, hooks).await;
        let error = anyhow!(said);
        (Failure { step, error }, live)
    }

    async fn switch_back(&self, said: &mut String, hooks: &mut Hooks<'_>) -> Option<PathBuf> {
        if hooks.cancel.is_cancelled() {
            log::info!("Not rolling back: interrupted by signal");
            return None;
        }
        log::info!("Rolling back {}", self.dest.display());
        let switched = crate::releases::roll_back_deploy(self.dest, self.state);
        let name = match switched {
            Ok(Some(name)) => name,
            Ok(None) => {
                log::info!("No previous release to roll back to");
                said.push_str("; no previous release to roll back to");
                return None;
            }
            Err(e) => {
                log::info!("Rollback failed: {e:#}");
                said.push_str(&format!("; rollback failed: {e:#}"));
                return None;
            }
        };
        let dir = crate::releases::Layout::of(self.dest)
            .map(|layout| layout.dir.join(&name))
            .unwrap_or_else(|_| PathBuf::from(&name));
        said.push_str(&format!("; rolled back to release {name}"));
        let before = self.verify.map(Verify::baseline);
        let shown = dir.display().to_string();
        let was = set_env(hooks, "STRETCHER_RELEASE_DIR", shown);
        let hooks_ran = hooks.run(Phase::Rollback, self.lines).await;
        if let Some(was) = was {
            set_env(hooks, "STRETCHER_RELEASE_DIR", was);
        }
        if let Err(e) = hooks_ran {
            log::info!("Rollback hooks failed: {e:#}");
            said.push_str(&format!(", but its rollback hook {e:#}"));
            return Some(dir);
        }
        if let (Some(verify), Some(before)) = (self.verify, before) {
            match verify.without_contains().run(&before, hooks).await {
                Ok(()) => log::info!("Release {name} is serving again"),
                Err(e) => {
                    log::info!("Verify after the rollback failed: {e:#}");
                    said.push_str(&format!(", but it failed verify too: {e:#}"));
                }
            }
        }
        Some(dir)
    }
}

/// Sets hook variable `name` to `value`; the value it had, if any.
fn set_env(hooks: &mut Hooks<'_>, name: &'static str, value: String) -> Option<String> {
    match hooks.env.iter_mut().find(|(k, _)| *k == name) {
        Some((_, old)) => Some(std::mem::replace(old, value)),
        None => {
            hooks.env.push((name, value));
            None
        }
    }
}

/// `verify:` as written; [`Verify::try_from`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    #[serde(default)]
    timeout: Option<Text>,
    #[serde(default)]
    interval: Option<Text>,
    #[serde(default)]
    checks: Option<Vec<Check>>,
}

impl TryFrom<RawVerify> for Verify {
    type Error = String;

    fn try_from(raw: RawVerify) -> Result<Self, String> {
        let duration = |field: &str, given: Option<Text>, default| match given {
            None => Ok(default),
            Some(Text(text)) if text.trim().is_empty() => Ok(default),
            Some(Text(text)) => match crate::units::parse_duration(&text) {
                Ok(d) if d.is_zero() => Err(format!("verify.{field}: must be more than 0")),
                Ok(d) => Ok(d),
                Err(e) => Err(format!("verify.{field}: {e}")),
            },
        };
        let checks = raw.checks.unwrap_or_default();
        if checks.is_empty() {
            return Err("verify.checks: no checks listed".to_string());
        }
        Ok(Verify {
            timeout: duration("timeout", raw.timeout, DEFAULT_TIMEOUT)?,
            interval: duration("interval", raw.interval, DEFAULT_INTERVAL)?,
            checks,
        })
    }
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = Check;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a check: one of {}, with its value", KINDS.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Check, A::Error> {
        let mut kind: Option<(String, String)> = None;
        let mut unknown: Option<String> = None;
        let mut status = None;
        let mut contains = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "status" => status = Some(map.next_value::<Statuses>()?.0),
                "contains" => {
                    contains = map.next_value::<Option<Text>>()?.map(|t| t.0);
                }
                k if KINDS.contains(&k) => {
                    let value = map.next_value::<Option<Text>>()?.map(|t| t.0);
                    if let Some((first, _)) = &kind {
                        return Err(de::Error::custom(format!(
                            "one check per list item, found {first} and {key}"
                        )));
                    }
                    kind = Some((key, value.unwrap_or_default()));
                }
                _ => {
                    // Read, not skipped: the manifest's warning for an
                    // ignored key would follow the error.
                    map.next_value::<yaml_serde::Value>()?;
                    unknown.get_or_insert(key);
                }
            }
        }
        let Some((kind, value)) = kind else {
            let found = unknown.map(|k| format!("unknown check kind {k:?}: "));
            return Err(de::Error::custom(format!(
                "{}a check is one of {}",
                found.unwrap_or_default(),
                KINDS.join(", ")
            )));
        };
        if let Some(key) = unknown {
            let takes = if kind == "http" {
                "it takes status and contains"
            } else {
                "it takes no options"
            };
            return Err(de::Error::custom(format!(
                "unknown key {key:?} in a {kind} check ({takes})"
            )));
        }
        if kind != "http" && (status.is_some() || contains.is_some()) {
            return Err(de::Error::custom(format!(
                "{kind}: status and contains are for http checks"
            )));
        }
        Check::new(&kind, value.trim(), status.unwrap_or_default(), contains)
            .map_err(|e| de::Error::custom(format!("{kind}: {e}")))
    }
}

impl Check {
    /// A check of `kind` on `value` (URL, address, line or path).
    fn new(kind: &str, value: &str, status: Vec<u16>, contains: Option<String>) -> Result<Check> {
        if value.is_empty() {
            return Err(anyhow!("empty"));
        }
        Ok(match kind {
            "http" => {
                let url = Url::parse(value).map_err(|e| anyhow!("invalid URL {value:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(anyhow!("invalid URL {value:?}: not http(s)://host/…"));
                }
                Check::Http {
                    url,
                    status,
                    contains: contains.filter(|c| !c.is_empty()),
                }
            }
            "tcp" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow!("{value:?} is not HOST:PORT"))?;
                match port.parse::<u16>() {
                    Ok(p) if p > 0 && !host.is_empty() => Check::Tcp(value.to_string()),
                    _ => return Err(anyhow!("{value:?} is not HOST:PORT")),
                }
            }
            "command" => Check::Command(value.to_string()),
            "server_starter" => Check::ServerStarter(PathBuf::from(value)),
            _ => Check::Pidfile(PathBuf::from(value)),
        })
    }
}

/// `status: 200` or `status: [200, 204]`.
struct Statuses(Vec<u16>);

impl<'de> Deserialize<'de> for Statuses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StatusVisitor)
    }
}

struct StatusVisitor;

fn status_code<E: de::Error>(v: u64) -> Result<u16, E> {
    match u16::try_from(v) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(E::custom(format!("status {v} is not an HTTP status"))),
    }
}

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = Statuses;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an HTTP status or a list of them")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Statuses, E> {
        Ok(Statuses(vec![status_code(v)?]))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Statuses, E> {
        self.visit_u64(
            u64::try_from(v).map_err(|_| E::custom(format!("status {v} is not an HTTP status")))?,
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Statuses, E> {
        let n = v
            .trim()
            .parse()
            .map_err(|_| E::custom(format!("status {v:?} is not an HTTP status")))?;
        self.visit_u64(n)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Statuses, A::Error> {
        let mut all = Vec::new();
        while let Some(one) = seq.next_element::<Statuses>()? {
            all.extend(one.0);
        }
        Ok(Statuses(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn parse(section: &str) -> Result<Option<Verify>> {
        Ok(Manifest::parse(&format!("verify:\n{section}"))?.verify)
    }

    fn error(section: &str) -> String {
        format!("{:#}", parse(section).expect_err(section))
    }

    #[test]
    fn a_section_reads_into_checks_with_defaults() {
        let v = parse(
            "  checks:\n\
             \x20   - http: http://127.0.0.1:8080/up\n\
             \x20     status: [200, 204]\n\
             \x20     contains: 0123\n\
             \x20   - http: https://app.example/\n\
             \x20     status: 503\n\
             \x20   - tcp: '[::1]:80'\n\
             \x20   - command: 'test -f ready: yes'\n\
             \x20   - server_starter: /run/app.status\n\
             \x20   - pidfile: /run/unicorn.pid\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((v.timeout, v.interval), (DEFAULT_TIMEOUT, DEFAULT_INTERVAL));
        let shown: Vec<String> = v.checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "http://127.0.0.1:8080/up",
                "https://app.example/",
                "tcp [::1]:80",
                "command test -f ready: yes",
                "server_starter /run/app.status",
                "pidfile /run/unicorn.pid"
            ]
        );
        let Check::Http {
            status, contains, ..
        } = &v.checks[0]
        else {
            panic!("{:?}", v.checks[0]);
        };
        // YAML 1.1 text, as every manifest string: not the number 123.
        assert_eq!(
            (status.as_slice(), contains.as_deref()),
            (&[200, 204][..], Some("0123"))
        );
        let v = parse("  timeout: 1m30s\n  interval: 0.5\n  checks: [{tcp: 'localhost:1'}]\n")
            .unwrap()
            .unwrap();
        assert_eq!(v.timeout, Duration::from_secs(90));
        assert_eq!(v.interval, Duration::from_millis(500));
        assert!(Manifest::parse("verify:\n").unwrap().verify.is_none());
        assert!(Manifest::parse("dest: /srv\n").unwrap().verify.is_none());
    }

    #[test]
    fn a_check_that_cannot_be_read_is_a_one_line_error_naming_its_field() {
        for (section, want) in [
            (
                "  checks:\n    - htp: http://x/\n",
                "verify.checks[0]: unknown check kind \"htp\"",
            ),
            (
                "  checks:\n    - tcp: a:1\n    - http: 'ht tp://x'\n",
                "verify.checks[1]: http: invalid URL \"ht tp://x\"",
            ),
            (
                "  checks:\n    - http: ftp://x/\n",
                "http: invalid URL \"ftp://x/\"",
            ),
            ("  checks:\n    - http: /up\n", "http: invalid URL \"/up\""),
            (
                "  timeout: 6o\n  checks: [{tcp: a:1}]\n",
                "verify.timeout: unknown unit \"o\" in duration \"6o\"",
            ),
            (
                "  interval: 0s\n  checks: [{tcp: a:1}]\n",
                "verify.interval: must be more than 0",
            ),
            (
                "  timout: 5s\n  checks: [{tcp: a:1}]\n",
                "unknown field `timout`",
            ),
            ("  checks: []\n", "verify.checks: no checks listed"),
            ("  timeout: 5s\n", "verify.checks: no checks listed"),
            (
                "  checks:\n    - tcp: 'a:b'\n",
                "tcp: \"a:b\" is not HOST:PORT",
            ),
            (
                "  checks:\n    - tcp: '8080'\n",
                "tcp: \"8080\" is not HOST:PORT",
            ),
            (
                "  checks:\n    - tcp: a:1\n      status: 200\n",
                "tcp: status and contains are for http checks",
            ),
            (
                "  checks:\n    - http: http://x/\n      status: 700\n",
                "status 700 is not an HTTP status",
            ),
            (
                "  checks:\n    - http: http://x/\n      contain: ok\n",
                "unknown key \"contain\" in a http check",
            ),
            (
                "  checks:\n    - http: http://x/\n      tcp: a:1\n",
                "one check per list item, found http and tcp",
            ),
            ("  checks:\n    - command: ''\n", "command: empty"),
            (
                "  checks:\n    - pidfile\n",
                "verify.checks[0]: invalid type",
            ),
        ] {
            let got = error(section);
            assert!(got.contains(want), "{section}: {got}");
            assert!(!got.contains('\n'), "{got}");
        }
    }

    #[test]
    fn server_starter_passes_on_one_new_live_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("status");
        let me = std::process::id();
        let dead = i32::MAX - 1;
        std::fs::write(&file, format!("3:{me}\n")).unwrap();
        assert_eq!(server_starter(&file, None), Ok(()));
        let stale = server_starter(&file, Some(3)).unwrap_err();
        assert!(
            stale.contains("generation 3 is still the newest"),
            "{stale}"
        );
        std::fs::write(&file, format!("3:{me}\n4:{me}\n")).unwrap();
        let two = server_starter(&file, Some(3)).unwrap_err();
        assert!(two.contains("generations 3, 4 running"), "{two}");
        std::fs::write(&file, format!("4:{dead}\n")).unwrap();
        let gone = server_starter(&file, Some(3)).unwrap_err();
        assert!(gone.contains("not running"), "{gone}");
        std::fs::write(&file, "4:x\n").unwrap();
        assert!(server_starter(&file, None).is_err());
        let missing = server_starter(&dir.path().join("none"), None).unwrap_err();
        assert!(missing.contains("cannot read it"), "{missing}");
    }

    #[test]
    fn pidfile_passes_on_a_new_live_pid_without_oldbin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.pid");
        let me = u64::from(std::process::id());
        std::fs::write(&file, format!("{me}\n")).unwrap();
        assert_eq!(pidfile(&file, None), Ok(()));
        assert_eq!(pidfile(&file, Some(1)), Ok(()));
        let same = pidfile(&file, Some(me)).unwrap_err();
        assert!(same.contains("unchanged"), "{same}");
        std::fs::write(dir.path().join("app.pid.oldbin"), "1\n").unwrap();
        let old = pidfile(&file, Some(1)).unwrap_err();
        assert!(old.contains("app.pid.oldbin is still there"), "{old}");
        std::fs::write(&file, format!("{}\n", i32::MAX - 1)).unwrap();
        assert!(pidfile(&file, None).unwrap_err().contains("not running"));
    }
}
