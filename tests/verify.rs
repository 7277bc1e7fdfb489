//! SPEC 8.7: `verify:` checks after `post`, with real apps the hooks start
//! and restart: a Python HTTP server from the archive serving its
//! REVISION, Server::Starter (`start_server`) hot deploys, a pid-file
//! master that re-execs on USR2 as unicorn does; the failure path (step
//! `verify`, `failure` hooks, report, metrics, status, the Serf query
//! answer); the automatic rollback of `sync_strategy: release`; and
//! manifests whose checks cannot be read, refused before the download.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::http::{Route, Server};
use common::{free_port, manifest_for, sha256, tar, wait_exit, wait_for, Fixture, Member};
use serde_json::Value;

/// An HTTP app: answers every GET with `revision <REVISION>`; with a
/// `BROKEN` file beside it, it exits at start. It waits for the port while
/// the server it replaces is still stopping.
const SERVE_PY: &str = r#"import http.server, os, sys, time
here = os.path.dirname(sys.argv[0])
if os.path.exists(os.path.join(here, "BROKEN")):
    sys.exit("cannot start: BROKEN")
rev = open(os.path.join(here, "REVISION")).readline().strip()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("revision " + rev + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

for attempt in range(200):
    try:
        server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("port busy")
server.serve_forever()
"#;

/// A Server::Starter worker: sleeps until start_server stops it; with a
/// `BROKEN` file beside it, it exits at once. A shell script: start_server
/// takes a worker that still runs after `--interval` for started, so a
/// broken one must die well within it however loaded the machine is.
const WORKER_SH: &str = r#"#!/bin/sh
if [ -f "$(dirname "$0")/BROKEN" ]; then
    echo "cannot start: BROKEN" >&2
    exit 1
fi
exec sleep 100000
"#;

/// A master that hot-deploys as unicorn does: on USR2 it renames its pid
/// file to `.oldbin` and re-execs the script (the new release's code); the
/// new master writes the pid file and sends QUIT to the old one, which
/// removes `.oldbin` and exits. A new master that dies at start (a
/// `BROKEN` release) leaves the old one running with its pid file back.
const MASTER_PY: &str = r#"import os, signal, sys
if os.path.exists(os.path.join(os.path.dirname(sys.argv[0]), "BROKEN")):
    sys.exit("cannot start: BROKEN")
pidfile = sys.argv[1]
oldbin = pidfile + ".oldbin"
child = None

def reexec(signum, frame):
    global child
    os.rename(pidfile, oldbin)
    child = os.fork()
    if child == 0:
        os.execv(sys.executable, [sys.executable] + sys.argv)

def reaped(signum, frame):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child and os.path.exists(oldbin):
            os.rename(oldbin, pidfile)

def quit(signum, frame):
    if os.path.exists(oldbin) and int(open(oldbin).read()) == os.getpid():
        os.remove(oldbin)
    sys.exit(0)

signal.signal(signal.SIGUSR2, reexec)
signal.signal(signal.SIGCHLD, reaped)
signal.signal(signal.SIGQUIT, quit)
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pidfile + ".tmp", pidfile)
if os.path.exists(oldbin):
    os.kill(int(open(oldbin).read()), signal.SIGQUIT)
while True:
    signal.pause()
"#;

/// An archive of the three apps at revision `rev`, broken (each exits at
/// start) when `broken`.
fn release(rev: &str, broken: bool) -> Vec<u8> {
    let mut members = vec![
        Member::Dir("./", 0o755),
        Member::File("serve.py", SERVE_PY.as_bytes(), 0o644),
        Member::File("worker.sh", WORKER_SH.as_bytes(), 0o755),
        Member::File("master.py", MASTER_PY.as_bytes(), 0o644),
    ];
    // Each revision a different size: every member has the same mtime,
    // and rsync's quick check compares size and mtime.
    let padding = ".".repeat(rev.bytes().map(usize::from).sum::<usize>() % 64);
    let revision = format!("{rev}\n{padding}\n");
    members.push(Member::File("REVISION", revision.as_bytes(), 0o644));
    if broken {
        members.push(Member::File("BROKEN", b"", 0o644));
    }
    tar(&members)
}

/// Writes `rev`'s archive and returns a manifest deploying it, `extra`
/// appended.
fn manifest(fx: &Fixture, rev: &str, broken: bool, extra: &str) -> String {
    let data = release(rev, broken);
    let name = format!("{rev}.tar");
    fx.write(&name, &data);
    manifest_for(fx, &fx.url(&name), &sha256(&data), extra)
}

/// The Python interpreter itself, not a wrapper such as a pyenv shim
/// (which takes seconds to start on a loaded machine).
fn python() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Kills, when dropped, the process groups of the pids in these files:
/// the apps the hooks started, with every process they forked.
struct Apps(Vec<PathBuf>);

impl Drop for Apps {
    fn drop(&mut self) {
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() };
        for file in &self.0 {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let Ok(pid) = text.trim().parse::<i32>() else {
                continue;
            };
            // SAFETY: getpgid and kill have no memory-safety preconditions;
            // the group is the one a hook started, never the test's own.
            unsafe {
                let group = libc::getpgid(pid);
                if group > 1 && group != ours {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
        }
    }
}

/// The body `GET /up` answers on `port`, if anything answers.
fn get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /up HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The one-line error of a failed run: the `Deploy manifest failed:` line.
fn failure_line(log: &str) -> String {
    let line = log
        .lines()
        .find_map(|l| l.split_once("Deploy manifest failed: ").map(|(_, e)| e))
        .unwrap_or_else(|| panic!("no failure line in:\n{log}"));
    line.to_string()
}

/// The `post` (and `rollback`) hook that (re)starts the HTTP app from
/// dest: stops the one in `app.pid`, starts `serve.py` in the background.
fn restart_http(fx: &Fixture, port: u16) -> String {
    format!(
        "if [ -f app.pid ]; then kill \"$(cat app.pid)\" 2>/dev/null; fi; \
         nohup {} {}/serve.py {port} >> serve.log 2>&1 < /dev/null & echo $! > app.pid",
        python(),
        fx.dest().display()
    )
}

#[test]
fn http_verify_passes_on_the_new_revision_and_fails_when_it_never_serves() {
    let fx = Fixture::new();
    let _apps = Apps(vec![fx.path("app.pid")]);
    let port = free_port();
    let port_text = port.to_string();
    let restart = restart_http(&fx, port);
    let hooks = |post: &str, timeout: &str| {
        format!(
            "commands:\n  post:\n    - '{post}'\n  failure:\n    - 'cat > failure.log'\n\
             verify:\n  timeout: {timeout}\n  interval: 0.2s\n  checks:\n\
             \x20   - http: 'http://127.0.0.1:{{{{ env \"PORT\" }}}}/up'\n\
             \x20     contains: 'revision {{{{ env \"REVISION\" }}}}'\n"
        )
    };
    let run = |m: &str, rev: &str, args: &[&str], env: &[(&str, &str)]| {
        let url = fx.manifest(m);
        let mut all = vec![("PORT", port_text.as_str()), ("REVISION", rev)];
        all.extend_from_slice(env);
        fx.run(&url, args, &all)
    };

    // Good releases: the post hook restarts the app, the checks wait for
    // the new revision.
    for rev in ["r1", "r2"] {
        let log = run(
            &manifest(&fx, rev, false, &hooks(&restart, "60s")),
            rev,
            &[],
            &[],
        )
        .ok();
        assert!(
            log.contains("Verifying 1 check (timeout 60s, every 200ms)"),
            "{log}"
        );
        assert!(log.contains("Verified: all checks passed in"), "{log}");
        assert_eq!(
            get(port).as_deref(),
            Some(format!("revision {rev}\n").as_str())
        );
    }

    // A reload that silently does nothing: r2 still answers, so r3 fails.
    let started = Instant::now();
    let log = run(
        &manifest(&fx, "r3", false, &hooks("true", "3s")),
        "r3",
        &[],
        &[],
    )
    .failed();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        failure_line(&log),
        format!(
            "verify http://127.0.0.1:{port}/up: 200 without \"revision r3\" in the body after 3s"
        )
    );
    assert!(
        log.contains("sync_strategy rsync keeps no previous tree"),
        "{log}"
    );

    // A release whose server exits at start, run as a Serf query handler
    // with a report and metrics.
    let report = fx.path("report.json").display().to_string();
    let metrics = fx.path("stretcher.prom").display().to_string();
    let started = Instant::now();
    let out = run(
        &manifest(&fx, "r4", true, &hooks(&restart, "4s")),
        "r4",
        &["--report-file", &report, "--metrics-file", &metrics],
        &[("SERF_EVENT", "query"), ("SERF_QUERY_NAME", "deploy")],
    );
    let took = started.elapsed();
    assert_eq!(out.code(), 0, "a query handler exits 0: {}", out.stderr());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(4 + 20),
        "took {took:?}"
    );
    let want = format!("verify http://127.0.0.1:{port}/up: ");
    let answer = out.stdout();
    assert!(
        answer.starts_with(&format!("failed verify: {want}")),
        "{answer}"
    );
    assert!(answer.trim_end().ends_with(" after 4s"), "{answer}");
    assert_eq!(answer.lines().count(), 1, "{answer}");
    let ran = std::fs::read_to_string(fx.path("failure.log")).unwrap();
    assert!(
        ran.contains(&format!("Deploy manifest failed: {want}")),
        "{ran}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["result"], "failure");
    assert_eq!(json["step"], "verify");
    assert!(json["error"].as_str().unwrap().starts_with(&want), "{json}");
    assert_eq!(json["rolled_back"], false);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("\nstretcher_last_run_success 0\n"), "{prom}");
    assert!(
        prom.contains("\nstretcher_last_run_rolled_back 0\n"),
        "{prom}"
    );
    let status = fx
        .run("", &["status", "--report-file", &report], &[])
        .stdout();
    assert!(status.contains("step:     verify"), "{status}");
    assert!(status.contains(&format!("error:    {want}")), "{status}");
    let served = std::fs::read_to_string(fx.path("serve.log")).unwrap();
    assert!(served.contains("cannot start: BROKEN"), "{served}");
}

/// Manifest lines: `post` as the post hook, then a verify of `check`
/// (one check's YAML) within `timeout`, polled every 0.2 s.
fn post_then_check(post: &str, timeout: &str, check: &str) -> String {
    format!(
        "commands:\n  post:\n    - '{post}'\n\
         verify:\n  timeout: {timeout}\n  interval: 0.2s\n  checks:\n\
         \x20   - {check}\n"
    )
}

#[test]
fn server_starter_passes_when_the_hot_deploy_took_and_fails_when_the_new_worker_dies() {
    let fx = Fixture::new();
    let (status, pid) = (fx.path("app.status"), fx.path("start_server.pid"));
    let _apps = Apps(vec![pid.clone()]);
    // Start Server::Starter on the first deploy, SIGHUP it after.
    let post = format!(
        "if [ -f {pid} ]; then kill -HUP \"$(cat {pid})\"; else nohup start_server \
         --status-file={status} --pid-file={pid} --interval=2 -- {dest}/worker.sh \
         >> start_server.log 2>&1 < /dev/null & fi",
        pid = pid.display(),
        status = status.display(),
        dest = fx.dest().display()
    );
    let check = format!("server_starter: {}", status.display());
    let extra = |timeout: &str| post_then_check(&post, timeout, &check);
    let listed = || std::fs::read_to_string(&status).unwrap_or_default();
    for rev in ["r1", "r2"] {
        let log = fx.deploy(&manifest(&fx, rev, false, &extra("60s"))).ok();
        assert!(log.contains("Verified: all checks passed"), "{log}");
    }
    let gen2 = listed();
    assert!(
        gen2.starts_with("2:") && gen2.lines().count() == 1,
        "{gen2}"
    );

    // The new release's worker dies at start: start_server keeps the old
    // generation (and keeps retrying the new one), the reload "succeeded".
    let started = Instant::now();
    let log = fx.deploy(&manifest(&fx, "r3", true, &extra("4s"))).failed();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4 + 20), "took {took:?}");
    assert_eq!(
        failure_line(&log),
        format!(
            "verify server_starter {}: generation 2 is still the newest (none started since post) after 4s",
            status.display()
        )
    );
    assert_eq!(listed(), gen2, "the old generation still serves");
    let old: i32 = gen2.trim().split_once(':').unwrap().1.parse().unwrap();
    assert!(common::alive(old));
}

#[test]
fn pidfile_passes_when_the_master_reexecs_and_fails_when_the_new_one_dies() {
    let fx = Fixture::new();
    let pidfile = fx.path("master.pid");
    let _apps = Apps(vec![pidfile.clone()]);
    let post = format!(
        "if [ -f {pid} ]; then kill -USR2 \"$(cat {pid})\"; else nohup {python} {dest}/master.py \
         {pid} >> master.log 2>&1 < /dev/null & fi",
        python = python(),
        pid = pidfile.display(),
        dest = fx.dest().display()
    );
    let check = format!("pidfile: {}", pidfile.display());
    let extra = |timeout: &str| post_then_check(&post, timeout, &check);
    let pid = || {
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    let mut pids = Vec::new();
    for rev in ["r1", "r2"] {
        let log = fx.deploy(&manifest(&fx, rev, false, &extra("60s"))).ok();
        assert!(log.contains("Verified: all checks passed"), "{log}");
        pids.push(pid());
    }
    assert_ne!(pids[0], pids[1], "USR2 made a new master");
    assert!(common::alive(pids[1]));

    // The new master of a broken release dies at start; the old one takes
    // its pid file back and goes on.
    let started = Instant::now();
    let log = fx.deploy(&manifest(&fx, "r3", true, &extra("6s"))).failed();
    assert!(started.elapsed() < Duration::from_secs(6 + 20));
    assert_eq!(
        failure_line(&log),
        format!(
            "verify pidfile {}: pid {} unchanged since before post after 6s",
            pidfile.display(),
            pids[1]
        )
    );
    assert_eq!(pid(), pids[1]);
    assert!(common::alive(pids[1]));
}

#[test]
fn a_deploy_user_sees_a_root_process_in_a_pid_file_as_running() {
    let fx = Fixture::new();
    // The test runner: alive, owned by root; as nobody, kill(pid, 0) is
    // EPERM.
    let post = format!("echo {} > app.pid", std::process::id());
    let m = format!(
        "commands:\n  post:\n    - '{post}'\n\
         verify:\n  timeout: 30s\n  interval: 0.2s\n  checks:\n    - pidfile: app.pid\n"
    );
    let url = fx.manifest(&m);
    let log = fx.run_unprivileged(&url, &[], &[]).ok();
    assert!(log.contains("Verified: all checks passed"), "{log}");
}

#[test]
fn tcp_and_command_checks_run_with_the_hook_environment() {
    let fx = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ok = "test \"$STRETCHER_PHASE\" = verify && test -f \"$STRETCHER_DEST/REVISION\"";
    let m = manifest(
        &fx,
        "r1",
        false,
        &format!(
            "verify:\n  timeout: 30s\n  interval: 0.2s\n  checks:\n\
             \x20   - tcp: 127.0.0.1:{port}\n    - command: '{ok}'\n"
        ),
    );
    let log = fx.deploy(&m).ok();
    assert!(log.contains("Verifying 2 checks"), "{log}");
    assert!(
        !log.contains(&format!("invoking command: {ok}")),
        "not logged: {log}"
    );

    // A failing command names its exit status and last output line; a
    // closed port is refused.
    drop(listener);
    let m = manifest(
        &fx,
        "r2",
        false,
        "verify:\n  timeout: 1s\n  interval: 0.2s\n  checks:\n\
         \x20   - command: 'echo checking; echo not ready >&2; exit 3'\n",
    );
    let log = fx.deploy(&m).failed();
    assert_eq!(
        failure_line(&log),
        "verify command echo checking; echo not ready >&2; exit 3: exit status 3: not ready after 1s"
    );
    let m = manifest(
        &fx,
        "r3",
        false,
        &format!(
            "verify:\n  timeout: 1s\n  interval: 0.2s\n  checks:\n    - tcp: 127.0.0.1:{port}\n"
        ),
    );
    let log = fx.deploy(&m).failed();
    let line = failure_line(&log);
    assert!(
        line.starts_with(&format!("verify tcp 127.0.0.1:{port}: Connection refused")),
        "{line}"
    );
}

/// A release dest whose app is the HTTP app, restarted by `post` and by
/// `rollback` hooks that note their phase and release dir.
fn release_manifest(fx: &Fixture, port: u16, rev: &str, broken: bool) -> String {
    let restart = restart_http(fx, port);
    manifest(
        fx,
        rev,
        broken,
        &format!(
            "sync_strategy: release\ncommands:\n  post:\n    - '{restart}'\n  rollback:\n\
             \x20   - 'echo \"$STRETCHER_PHASE $STRETCHER_RELEASE_DIR\" >> rollback.log'\n\
             \x20   - '{restart}'\n\
             verify:\n  timeout: 8s\n  interval: 0.2s\n  checks:\n\
             \x20   - http: http://127.0.0.1:{port}/up\n      contains: revision {rev}\n"
        ),
    )
}

/// The release `stretcher releases` marks live.
fn live_release(fx: &Fixture) -> String {
    let dest = fx.dest().display().to_string();
    let out = fx.run("", &["releases", "--dest", &dest, "--json"], &[]);
    let json: Value = serde_json::from_str(&out.stdout()).unwrap();
    json["live"].as_str().unwrap().to_string()
}

#[test]
fn a_release_that_fails_verify_is_rolled_back_and_the_old_one_serves_again() {
    let fx = Fixture::new();
    let _apps = Apps(vec![fx.path("app.pid")]);
    let port = free_port();
    let report = fx.path("report.json").display().to_string();
    let metrics = fx.path("stretcher.prom").display().to_string();
    let args = [
        "--report-file",
        &report,
        "--metrics-file",
        &metrics,
        "--state-dir",
        "state",
    ];
    let good = release_manifest(&fx, port, "r1", false);
    fx.run(&fx.manifest(&good), &args, &[]).ok();
    let r1 = live_release(&fx);
    assert_eq!(get(port).as_deref(), Some("revision r1\n"));

    let bad = fx.manifest(&release_manifest(&fx, port, "r2", true));
    let log = fx.run(&bad, &args, &[]).failed();
    let line = failure_line(&log);
    assert!(
        line.starts_with(&format!("verify http://127.0.0.1:{port}/up: "))
            && line.ends_with(&format!(" after 8s; rolled back to release {r1}")),
        "{line}"
    );
    for step in ["Rolling back", "Rolled back", "Release "] {
        assert!(log.contains(step), "{step}: {log}");
    }
    assert!(
        log.contains(&format!("Release {r1} is serving again")),
        "{log}"
    );
    assert_eq!(live_release(&fx), r1);
    assert_eq!(get(port).as_deref(), Some("revision r1\n"));
    let rollback_log = std::fs::read_to_string(fx.path("rollback.log")).unwrap();
    assert_eq!(
        rollback_log.trim(),
        format!("rollback {}", fx.path("releases").join(&r1).display())
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["step"], "verify");
    assert_eq!(json["rolled_back"], true);
    assert_eq!(
        json["release"],
        fx.path("releases").join(&r1).display().to_string()
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("\nstretcher_last_run_rolled_back 1\n"),
        "{prom}"
    );
    let status = fx
        .run("", &["status", "--report-file", &report], &[])
        .stdout();
    assert!(
        status.contains("rollback: dest switched back to"),
        "{status}"
    );

    // Recorded as `stretcher rollback` records it: the same event does
    // not deploy the bad release again.
    let again = fx.run(&bad, &args, &[]).failed();
    assert!(again.contains("was rolled back from release"), "{again}");
}

#[test]
fn no_auto_rollback_leaves_the_failed_release_live() {
    let fx = Fixture::new();
    let _apps = Apps(vec![fx.path("app.pid")]);
    let port = free_port();
    fx.deploy(&release_manifest(&fx, port, "r1", false)).ok();
    let r1 = live_release(&fx);
    let bad = fx.manifest(&release_manifest(&fx, port, "r2", true));
    let log = fx.run(&bad, &["--no-auto-rollback"], &[]).failed();
    let line = failure_line(&log);
    assert!(line.ends_with(" after 8s"), "{line}");
    assert!(
        log.contains("Not rolling back (--no-auto-rollback)"),
        "{log}"
    );
    assert_ne!(live_release(&fx), r1);
    assert!(!fx.path("rollback.log").exists());
    assert_eq!(get(port), None, "the broken release serves nothing");
}

#[test]
fn a_failing_post_rolls_back_a_release_when_there_is_one_to_go_back_to() {
    let fx = Fixture::new();
    let extra = |post: &str| {
        format!(
            "sync_strategy: release\ncommands:\n  post:\n    - '{post}'\n  rollback:\n\
             \x20   - 'echo \"$STRETCHER_PHASE\" >> rollback.log'\n  failure:\n\
             \x20   - 'echo \"$STRETCHER_RELEASE_DIR\" > failure.env'\n"
        )
    };
    let log = fx
        .deploy(&manifest(&fx, "r1", false, &extra("exit 1")))
        .failed();
    assert_eq!(
        failure_line(&log),
        "failed: exit 1 exit status 1; no previous release to roll back to"
    );
    fx.deploy(&manifest(&fx, "r2", false, &extra("true"))).ok();
    let r2 = live_release(&fx);
    let log = fx
        .deploy(&manifest(&fx, "r3", false, &extra("exit 2")))
        .failed();
    assert_eq!(
        failure_line(&log),
        format!("failed: exit 2 exit status 2; rolled back to release {r2}")
    );
    assert_eq!(live_release(&fx), r2);
    let ran = std::fs::read_to_string(fx.path("rollback.log")).unwrap();
    assert_eq!(ran, "rollback\n");
    // `failure` hooks see the release that is live again.
    let seen = std::fs::read_to_string(fx.path("failure.env")).unwrap();
    assert_eq!(
        seen.trim(),
        fx.path("releases").join(&r2).display().to_string()
    );
}

#[test]
fn a_command_check_whose_background_process_holds_its_output_passes() {
    let fx = Fixture::new();
    let m = manifest(
        &fx,
        "r1",
        false,
        "verify:\n  timeout: 20s\n  interval: 0.2s\n  checks:\n\
         \x20   - command: '(sleep 8; echo late) & echo $! > bg.pid; true'\n",
    );
    let started = Instant::now();
    let log = fx.deploy(&m).ok();
    assert!(log.contains("Verified: all checks passed"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let bg = common::read_pid(&fx.path("bg.pid"));
    common::signal_pid(bg, libc::SIGKILL);
}

#[test]
fn a_signal_during_a_command_check_stops_it_and_still_rolls_back() {
    let fx = Fixture::new();
    let extra = |check: &str| {
        format!(
            "sync_strategy: release\nverify:\n  timeout: 60s\n  interval: 1s\n  checks:\n\
             \x20   - command: '{check}'\ncommands:\n  rollback:\n\
             \x20   - 'echo \"$STRETCHER_PHASE\" >> rollback.log'\n"
        )
    };
    fx.deploy(&manifest(&fx, "r1", false, &extra("true"))).ok();
    let r1 = live_release(&fx);
    let hang = "echo $$ > check.pid; sleep 100";
    let m = fx.manifest(&manifest(&fx, "r2", false, &extra(hang)));
    let (mut child, rx) = fx.watch(Some(&m), &[]);
    wait_for(&rx, "Verifying 1 check");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fx.path("check.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let check = common::read_pid(&fx.path("check.pid"));
    common::signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 1);
    assert!(!common::alive(check), "the check's shell still runs");
    assert_eq!(live_release(&fx), r1, "dest switched back");
    let ran = std::fs::read_to_string(fx.path("rollback.log")).unwrap();
    assert_eq!(ran, "rollback\n");
}

#[test]
fn checks_that_cannot_be_read_fail_before_the_download() {
    let fx = Fixture::new();
    let server = Server::start();
    let src = server.route("/app.tar", Route::ok(release("r1", false)));
    for (section, want) in [
        (
            "  checks:\n    - htp: http://127.0.0.1/\n",
            "verify.checks[0]: unknown check kind \"htp\"",
        ),
        (
            "  checks:\n    - http: 'http//127.0.0.1/up'\n",
            "verify.checks[0]: http: invalid URL \"http//127.0.0.1/up\"",
        ),
        (
            "  timeout: 1 minute\n  checks:\n    - tcp: 127.0.0.1:1\n",
            "verify.timeout: ",
        ),
    ] {
        let m = manifest_for(
            &fx,
            &src,
            &sha256(b"x"),
            &format!("commands:\n  pre:\n    - touch pre.ran\nverify:\n{section}"),
        );
        let log = fx.deploy(&m).failed();
        let line = log.lines().last().unwrap();
        assert!(line.contains(want), "{line}");
        assert!(line.contains("load manifest failed"), "{line}");
        assert!(!fx.path("pre.ran").exists());
    }
    assert_eq!(server.hits("/app.tar"), 0);
}
