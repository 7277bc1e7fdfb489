//! SPEC 6: hooks — order, failures, log piping, environment, streaming, signals.

mod common;

use std::time::{Duration, Instant};

use common::{
    alive, app_manifest, app_tar, gzip, read_pid, sha256, signal, wait_exit, wait_for, Fixture,
};

/// An app deploy manifest with `commands` as its commands section.
fn with_commands(fx: &Fixture, commands: &str) -> String {
    app_manifest(fx, &format!("commands:\n{commands}"))
}

#[test]
fn failing_hook_stops_its_list_and_failure_hooks_get_the_log() {
    let fx = Fixture::new();
    let failure = fx.path("failure.log");
    let log = fx
        .deploy(&with_commands(
            &fx,
            &format!(
                "  pre:\n    - echo one\n    - exit 3\n    - echo never\n  failure:\n    - cat > {}\n",
                failure.display()
            ),
        ))
        .failed();
    assert!(
        log.contains("Deploy manifest failed: failed: exit 3 exit status 3"),
        "{log}"
    );
    assert!(!log.contains("never"), "{log}");
    assert!(
        !fx.dest().exists(),
        "nothing synced after a failed pre hook"
    );
    let stdin = std::fs::read_to_string(failure).unwrap();
    assert!(stdin.starts_with(log.lines().next().unwrap()), "{stdin}");
    assert!(
        stdin.contains("one\n") && stdin.contains("exit status 3"),
        "{stdin}"
    );
    fx.assert_no_temp_files();
}

#[test]
fn success_hooks_get_the_whole_log_and_their_errors_do_not_fail_the_run() {
    let fx = Fixture::new();
    let got = fx.path("success.log");
    let run = fx.deploy(&with_commands(
        &fx,
        &format!(
            "  post:\n    - echo post-output\n  success:\n    - exit 5\n    - cat > {}\n",
            got.display()
        ),
    ));
    let log = run.ok();
    assert!(log.contains("failed: exit 5 exit status 5"), "{log}");
    assert!(!got.exists(), "the list stops at the failed hook");

    let run = fx.deploy(&with_commands(
        &fx,
        &format!(
            "  success:\n    - cat > {}\n    - echo to-stdout\n",
            got.display()
        ),
    ));
    let log = run.ok();
    let stdin = std::fs::read_to_string(&got).unwrap();
    let upto = &log[..log.find("Deploy manifest succeeded.").unwrap()];
    assert!(
        stdin.starts_with(upto),
        "hook stdin is the log so far:\n{stdin}"
    );
    assert!(stdin.contains("Deploy manifest succeeded."), "{stdin}");
    assert_eq!(
        run.stdout(),
        "to-stdout\n",
        "success hook output passes through"
    );
}

#[test]
fn a_hook_that_ignores_a_large_log_is_not_an_error() {
    let fx = Fixture::new();
    let done = fx.path("second-ran");
    let log = fx
        .deploy(&with_commands(
            &fx,
            &format!(
                "  pre:\n    - seq 1 30000\n  success:\n    - 'true'\n    - touch {}\n",
                done.display()
            ),
        ))
        .ok();
    assert!(log.len() > 128 * 1024, "log should exceed a pipe buffer");
    assert!(!log.contains("failed to write"), "EPIPE must be ignored");
    assert!(done.exists());
}

#[test]
fn hooks_see_stretcher_variables_and_run_in_the_agents_cwd() {
    let fx = Fixture::new();
    let env_out = fx.path("env");
    let manifest = with_commands(
        &fx,
        &format!(
            "  pre:\n    - pwd >> {o}\n  post:\n    - env | grep ^STRETCHER_ | sort >> {o}\n",
            o = env_out.display()
        ),
    );
    let url = fx.manifest(&manifest);
    fx.run(&url, &[], &[]).ok();
    let got = std::fs::read_to_string(env_out).unwrap();
    let want = format!(
        "{}\nSTRETCHER_CHECKSUM={}\nSTRETCHER_DEST={}\nSTRETCHER_MANIFEST_URL={url}\nSTRETCHER_PHASE=post\nSTRETCHER_SRC={}\nSTRETCHER_VERSION={}\n",
        fx.root.path().display(),
        sha256(&gzip(&app_tar())),
        fx.dest().display(),
        fx.url("app.tar.gz"),
        env!("CARGO_PKG_VERSION"),
    );
    assert_eq!(got, want);
}

#[test]
fn pre_hook_output_is_logged_as_it_arrives() {
    let fx = Fixture::new();
    let go = fx.path("go");
    // The hook waits (bounded) for the test to see its first line. Markers
    // are computed by the shell so the logged command line cannot match.
    let url = fx.manifest(&with_commands(
        &fx,
        &format!(
            "  pre:\n    - 'echo marker-$((0+1)); i=0; while [ ! -e {g} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ -e {g} ] && echo marker-$((1+1))'\n",
            g = go.display()
        ),
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "marker-1");
    std::fs::write(&go, "").unwrap();
    wait_for(&rx, "marker-2");
    assert_eq!(wait_exit(&mut child), 0);
}

#[test]
fn sigterm_stops_the_running_hook_and_fails_the_run() {
    let fx = Fixture::new();
    let pid_file = fx.path("sleep.pid");
    let failure = fx.path("failure-ran");
    let url = fx.manifest(&with_commands(
        &fx,
        &format!(
            "  pre:\n    - 'sleep 30 & echo $! > {p}; echo hook-$((1+1))-up; wait'\n  failure:\n    - touch {f}\n",
            p = pid_file.display(),
            f = failure.display()
        ),
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "hook-2-up");
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    let lines = wait_for(&rx, "Done");
    assert!(
        lines.iter().any(|l| l.contains("interrupted by signal")),
        "{lines:?}"
    );
    assert!(failure.exists(), "failure hooks run after a signal");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid), "the hook's child process survived SIGTERM");
    assert!(!fx.dest().exists());
    fx.assert_no_temp_files();
}

#[test]
fn sigint_while_waiting_for_stdin_cancels() {
    let fx = Fixture::new();
    let (mut child, rx) = fx.watch(None, &[]);
    wait_for(&rx, "Waiting for events from STDIN");
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child), 1);
    let lines = wait_for(&rx, "interrupted by signal");
    assert!(
        lines.iter().any(|l| l.contains("could not parse event")),
        "{lines:?}"
    );
}

#[test]
fn random_delay_sleeps_before_reading_stdin_and_a_signal_cancels_it() {
    let fx = Fixture::new();
    let (mut child, rx) = fx.watch(None, &["--random-delay", "1h"]);
    let seen = wait_for(&rx, "Sleeping ");
    assert!(
        !seen.iter().any(|l| l.contains("Waiting for events")),
        "{seen:?}"
    );
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for(&rx, "interrupted by signal");
}

#[test]
fn commands_env_reaches_every_hook_over_the_agents_environment() {
    let fx = Fixture::new();
    let out = fx.path("env.log");
    let show = format!(
        "'echo \"$STRETCHER_PHASE port=$PORT flag=$FLAG mode=$MODE empty=[$EMPTY] null=[$NULL] greeting=$GREETING agent=$AGENT_VAR\" >> {}'",
        out.display()
    );
    let env = "  env:\n    PORT: 8080\n    FLAG: true\n    MODE: 0751\n    EMPTY: ''\n    NULL: ~\n    GREETING: '{{ env \"GREETING\" }}'\n    AGENT_VAR: from-manifest\n";
    let agent_env = [("GREETING", "hi"), ("AGENT_VAR", "from-agent")];
    let manifest = |pre: &str| {
        with_commands(
            &fx,
            &format!(
                "{env}  pre: [{pre}]\n  post: [{show}]\n  success: [{show}]\n  failure: [{show}]\n"
            ),
        )
    };
    let log = fx.run(&fx.manifest(&manifest(&show)), &[], &agent_env).ok();
    assert!(!log.contains("unknown key"), "{log}");
    fx.run(&fx.manifest(&manifest("'exit 1'")), &[], &agent_env)
        .failed();
    let want: String = ["pre", "post", "success", "failure"]
        .iter()
        .map(|phase| {
            format!("{phase} port=8080 flag=true mode=0751 empty=[] null=[] greeting=hi agent=from-manifest\n")
        })
        .collect();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
}

/// Go looks `sh` up on the agent's PATH; a PATH the manifest gives its
/// hooks does not decide which shell runs them.
#[test]
fn a_path_in_commands_env_is_the_hooks_path_not_the_agents() {
    let fx = Fixture::new();
    let out = fx.path("path");
    fx.deploy(&format!(
        "commands:\n  env:\n    PATH: /opt/app/bin\n  post:\n    - echo \"$PATH\" > {}\n",
        out.display()
    ))
    .ok();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "/opt/app/bin\n");
}

/// `post: ["sleep 30 &"]`, as a hook starting a server does: the shell
/// exits at once while the background process still holds the hook's
/// output. The deploy goes on, and the process keeps running.
#[test]
fn a_background_process_holding_hook_output_does_not_hold_up_any_strategy() {
    for strategy in ["rsync", "mv", "native", "release"] {
        let fx = Fixture::new();
        let pid = fx.path("server.pid");
        let yaml = app_manifest(
            &fx,
            &format!(
                "sync_strategy: {strategy}\ncommands:\n  post:\n    - 'sleep 30 & echo $! > {}'\n",
                pid.display()
            ),
        );
        let started = Instant::now();
        let log = fx.deploy(&yaml).ok();
        let took = started.elapsed();
        let server = read_pid(&pid);
        let running = alive(server);
        // SAFETY: stopping the test's own background process.
        unsafe { libc::kill(server, libc::SIGKILL) };
        assert!(took < Duration::from_secs(3), "{strategy}: took {took:?}");
        assert!(running, "{strategy}: the background process was killed");
        assert!(
            log.contains("a background process kept the output of"),
            "{strategy}: {log}"
        );
        assert!(log.contains("Deploy manifest succeeded."), "{log}");
    }
}

/// A background process holding a `success` hook's stdin without reading
/// it: the log (larger than a pipe buffer) cannot all be written.
#[test]
fn a_background_process_holding_a_success_hooks_stdin_does_not_hold_up_the_agent() {
    let fx = Fixture::new();
    let pid = fx.path("reader.pid");
    let url = fx.manifest(&with_commands(
        &fx,
        &format!(
            "  pre:\n    - seq 1 30000\n  success:\n    - 'exec 3<&0; sleep 30 <&3 3<&- >/dev/null 2>&1 & echo $! > {}'\n",
            pid.display()
        ),
    ));
    let started = Instant::now();
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    let code = wait_exit(&mut child);
    let took = started.elapsed();
    let reader = read_pid(&pid);
    let running = alive(reader);
    // SAFETY: stopping the test's own background process.
    unsafe { libc::kill(reader, libc::SIGKILL) };
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(running, "the background process was killed");
    wait_for(&rx, "a background process kept the stdin of");
}

#[test]
fn hook_timeout_stops_the_hook_and_its_children_naming_the_line() {
    let fx = Fixture::new();
    let pid = fx.path("child.pid");
    let failure = fx.path("failure-ran");
    let line = format!("sleep 60 & echo $! > {}; sleep 60", pid.display());
    let url = fx.manifest(&with_commands(
        &fx,
        &format!(
            "  pre:\n    - '{line}'\n  failure:\n    - touch {}\n",
            failure.display()
        ),
    ));
    let started = Instant::now();
    let log = fx.run(&url, &["--hook-timeout", "1s"], &[]).failed();
    assert!(started.elapsed() < Duration::from_secs(4), "{log}");
    assert!(
        log.contains(&format!(
            "Deploy manifest failed: failed: {line} timeout 1s"
        )),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !alive(read_pid(&pid)),
        "the hook's child outlived the timeout"
    );
    assert!(failure.exists(), "failure hooks run after a timeout");
    assert!(!fx.dest().exists());
    fx.assert_no_temp_files();
}

#[test]
fn commands_timeout_wins_over_the_flag_and_zero_means_none() {
    let fx = Fixture::new();
    let pid = fx.path("stubborn.pid");
    // 1s from the manifest, not the flag's hour; the hook ignores SIGTERM,
    // so its group is killed after the grace.
    let line = format!("trap '' TERM; sleep 60 & echo $! > {}; wait", pid.display());
    let url = fx.manifest(&with_commands(
        &fx,
        &format!("  timeout: 1\n  pre:\n    - \"{line}\"\n"),
    ));
    let started = Instant::now();
    let log = fx.run(&url, &["--hook-timeout", "1h"], &[]).failed();
    assert!(started.elapsed() < Duration::from_secs(7), "{log}");
    assert!(log.contains(&format!("failed: {line} timeout 1s")), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(read_pid(&pid)), "a hook ignoring SIGTERM survived");

    // `commands.timeout: 0` is none, whatever the flag says.
    let url = fx.manifest(&with_commands(
        &fx,
        "  timeout: 0\n  pre:\n    - sleep 1.5\n",
    ));
    fx.run(&url, &["--hook-timeout", "1"], &[]).ok();
    // So is `--hook-timeout 0`, as `--timeout 0` is.
    let url = fx.manifest(&with_commands(&fx, "  pre:\n    - sleep 0.2\n"));
    fx.run(&url, &["--hook-timeout", "0"], &[]).ok();
}
