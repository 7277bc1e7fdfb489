//! One probe per check kind: what it found when it does not pass, in
//! the words of the error line (`503`, `Connection refused (os error
//! 111)`, `generation 2 is still the newest (none started since post)`).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use url::{Host, Url};

use super::{seconds, Check};
use crate::hooks::{Hooks, Phase};

/// Longest wait for one `http` answer or `tcp` connection; less when the
/// verify timeout is nearer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an `http` answer's body is searched for `contains`.
const MAX_BODY: usize = 1 << 20;
/// Longest result text kept from a `command` check's output.
const MAX_RESULT: usize = 200;

/// Runs `check` once, with `left` to do it in; `was` is what it saw
/// before `post` (server_starter, pidfile).
pub(super) async fn probe(
    check: &Check,
    was: Option<u64>,
    hooks: &Hooks<'_>,
    clients: &mut Clients,
    left: Duration,
) -> Probe {
    match check {
        Check::Http {
            url,
            status,
            contains,
        } => match clients.for_url(url) {
            Ok(c) => http(c, url, status, contains.as_deref(), left).await,
            Err(e) => Err(format!("{e:#}")),
        },
        Check::Tcp(addr) => tcp(addr, left).await,
        Check::Command(line) => command(hooks, line, left).await,
        Check::ServerStarter(path) => server_starter(path, was),
        Check::Pidfile(path) => pidfile(path, was),
    }
}

/// The HTTP clients of one verify run: direct for loopback hosts, through
/// the environment's proxy otherwise.
#[derive(Default)]
pub(super) struct Clients {
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
pub(super) type Probe = Result<(), String>;

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
    let started = std::time::Instant::now();
    let (status, said) = match hooks.run_quiet(Phase::Verify, line, left).await {
        Ok(done) => done,
        Err(_) if started.elapsed() >= left => {
            return Err(format!("still running after {}", seconds(left)))
        }
        Err(e) => return Err(format!("{e:#}")),
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
    if !said.is_empty() {
        result.push_str(": ");
        result.extend(said.chars().take(MAX_RESULT));
    }
    Err(result)
}

/// Server::Starter's status file: `generation:pid` lines, sorted by
/// generation.
pub(super) fn generations(path: &Path) -> Result<Vec<(u64, i32)>, String> {
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
pub(super) fn read_pid(path: &Path) -> Result<u64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
