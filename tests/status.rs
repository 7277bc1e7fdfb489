//! `stretcher status`: the last run (from --report-file) and the last
//! deploy to each dest (from --state-dir), as text and as JSON.

mod common;

use common::{app_manifest, consul_event, hostname, Fixture};
use serde_json::Value;

/// Deploys the app from Consul event `id`, recording into `state` and
/// `report.json`; then a run that fails at the manifest step, when `fail`.
fn deploy_then(fx: &Fixture, id: &str, fail: bool) {
    let url = fx.manifest(&app_manifest(fx, ""));
    let args = ["--state-dir", "state", "--report-file", "report.json"];
    let consul = [("CONSUL_INDEX", "1")];
    fx.run(&consul_event(id, 1, &url), &args, &consul).ok();
    if fail {
        fx.run("file:///no/such.yml", &args, &[]).failed();
    }
}

fn status(fx: &Fixture, args: &[&str]) -> common::Run {
    let mut full = vec!["status"];
    full.extend_from_slice(args);
    fx.run("", &full, &[])
}

#[test]
fn status_shows_the_last_run_and_the_last_deploy_to_each_dest() {
    let fx = Fixture::new();
    deploy_then(&fx, "ev-7", false);
    let run = status(
        &fx,
        &["--state-dir", "state", "--report-file", "report.json"],
    );
    let out = run.stdout();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("Last run: success at "), "{out}");
    assert!(first.contains(&format!("on {}", hostname())), "{out}");
    let dest = fx.dest().display().to_string();
    assert!(out.contains(&format!("dest:     {dest}")), "{out}");
    assert!(out.contains("event:    ev-7"), "{out}");
    assert!(out.contains("Last deploy to each dest (state):"), "{out}");
    assert!(out.contains(&format!("\n  {dest}\n")), "{out}");
    let sum = common::sha256(&std::fs::read(fx.path("app.tar.gz")).unwrap());
    assert!(out.contains(&format!("checksum: {sum}")), "{out}");
}

#[test]
fn status_of_a_failed_run_names_the_step_and_the_error() {
    let fx = Fixture::new();
    deploy_then(&fx, "ev-1", true);
    let out = status(
        &fx,
        &["--report-file", "report.json", "--state-dir", "state"],
    )
    .stdout();
    assert!(out.starts_with("Last run: failure at "), "{out}");
    assert!(out.contains("step:     manifest"), "{out}");
    assert!(out.contains("error:    load manifest failed:"), "{out}");
    // The last good deploy is still on record.
    assert!(out.contains("event:    ev-1"), "{out}");
}

#[test]
fn status_json_is_for_scripts() {
    let fx = Fixture::new();
    deploy_then(&fx, "ev-3", true);
    let run = status(
        &fx,
        &[
            "--json",
            "--state-dir",
            "state",
            "--report-file",
            "report.json",
        ],
    );
    let json: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(json["last_run"]["result"], "failure");
    assert_eq!(json["last_run"]["step"], "manifest");
    let dest = fx.dest().display().to_string();
    assert_eq!(json["dests"][&dest]["event"], "ev-3", "{json}");
    assert!(json["dests"][&dest]["checksum"].as_str().unwrap().len() == 64);
}

#[test]
fn status_without_a_state_dir_shows_only_the_last_run() {
    let fx = Fixture::new();
    deploy_then(&fx, "ev-1", false);
    let out = status(&fx, &["--report-file", "report.json"]).stdout();
    assert!(out.starts_with("Last run: success"), "{out}");
    assert!(!out.contains("Last deploy"), "{out}");
    let run = status(&fx, &["--report-file", "report.json", "--json"]);
    let json: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(json["last_run"]["result"], "success");
    assert!(json["dests"].is_null(), "{json}");
}

#[test]
fn status_before_any_run_says_so() {
    let fx = Fixture::new();
    let run = status(
        &fx,
        &["--report-file", "report.json", "--state-dir", "state"],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let out = run.stdout();
    assert!(out.contains("No run recorded yet in report.json"), "{out}");
    assert!(out.contains("No deploy recorded yet in state"), "{out}");
    assert!(!fx.path("state").exists(), "status creates nothing");
    let run = status(&fx, &["--state-dir", "state", "--json"]);
    let json: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert!(json["last_run"].is_null(), "{json}");
    assert_eq!(json["dests"], serde_json::json!({}));
}

#[test]
fn status_errors_are_one_line_naming_what_is_wrong() {
    let fx = Fixture::new();
    let run = status(&fx, &[]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(
        err.contains("--report-file") && err.contains("--state-dir"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    fx.write("report.json", "not json");
    let run = status(&fx, &["--report-file", "report.json"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("reading report file report.json"),
        "{}",
        run.stderr()
    );
}
