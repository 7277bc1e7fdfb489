//! SPEC 8.6: per-host results. `--report-file` (one JSON object per run)
//! and `--metrics-file` (Prometheus text, read back with prometheus_client's
//! parser), after successes, failures and skipped replays.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{app_manifest, consul_event, gzip, hostname, sha256, Fixture};
use serde_json::Value;

const FIELDS: [&str; 15] = [
    "result",
    "manifest",
    "src",
    "checksum",
    "dest",
    "release",
    "rolled_back",
    "started_at",
    "duration_seconds",
    "bytes",
    "error",
    "step",
    "event_id",
    "host",
    "version",
];

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// Runs the agent with `--report-file` and `--metrics-file` in the fixture.
fn run_reporting(fx: &Fixture, stdin: &str, env: &[(&str, &str)]) -> common::Run {
    let report = fx.path("out/report.json").display().to_string();
    let metrics = fx.path("out/stretcher.prom").display().to_string();
    std::fs::create_dir_all(fx.path("out")).unwrap();
    let args = [
        "--report-file",
        &report,
        "--metrics-file",
        &metrics,
        "--state-dir",
        "state",
    ];
    fx.run(stdin, &args, env)
}

/// The metrics file as prometheus_client's text parser reads it:
/// family name → (type, help, samples as (name, labels, value)).
type Families = BTreeMap<String, (String, String, Vec<(String, BTreeMap<String, String>, f64)>)>;

fn parse_metrics(path: &Path) -> Families {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
print(json.dumps({f.name: [f.type, f.documentation,
                           [[s.name, s.labels, s.value] for s in f.samples]]
                  for f in text_string_to_metric_families(text)}))
"#;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python");
    let out = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("target/test-venv (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "prometheus_client refused {}:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gauge(families: &Families, name: &str) -> f64 {
    let (kind, help, samples) = &families[name];
    assert_eq!(kind, "gauge", "{name}");
    assert!(!help.is_empty(), "{name} has HELP");
    assert_eq!(samples.len(), 1, "{name}");
    samples[0].2
}

/// `stretcher_runs_total` per result label.
fn runs(families: &Families) -> BTreeMap<String, f64> {
    let (kind, help, samples) = &families["stretcher_runs"];
    assert_eq!(kind, "counter");
    assert!(!help.is_empty());
    samples
        .iter()
        .filter(|(name, ..)| name == "stretcher_runs_total")
        .map(|(_, labels, value)| (labels["result"].clone(), *value))
        .collect()
}

fn counts(success: f64, failure: f64, skipped: f64) -> BTreeMap<String, f64> {
    [
        ("success".to_string(), success),
        ("failure".to_string(), failure),
        ("skipped".to_string(), skipped),
    ]
    .into()
}

#[test]
fn a_successful_deploy_reports_every_field_and_its_metrics() {
    let fx = Fixture::new();
    let url = fx.manifest(&app_manifest(&fx, ""));
    let archive = std::fs::read(fx.path("app.tar.gz")).unwrap();
    let before = chrono::Utc::now().timestamp();
    run_reporting(&fx, &url, &[]).ok();

    let report = read_json(&fx.path("out/report.json"));
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), FIELDS.len(), "{report}");
    for field in FIELDS {
        assert!(keys.contains(&field), "{field} missing: {report}");
    }
    assert_eq!(report["result"], "success");
    assert_eq!(report["manifest"], url.as_str());
    assert_eq!(report["src"], fx.url("app.tar.gz").as_str());
    assert_eq!(report["checksum"], sha256(&archive).as_str());
    assert_eq!(report["dest"], fx.dest().display().to_string().as_str());
    assert!(report["release"].is_null(), "no release strategy: {report}");
    assert_eq!(report["rolled_back"], false);
    assert_eq!(report["bytes"], archive.len() as u64);
    assert!(report["error"].is_null() && report["step"].is_null());
    assert!(report["event_id"].is_null(), "a plain line has no event");
    assert_eq!(report["host"], hostname().as_str());
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    let started_at = report["started_at"].as_str().unwrap();
    assert!(started_at.ends_with('Z'), "UTC: {started_at}");
    let started = chrono::DateTime::parse_from_rfc3339(started_at).unwrap();
    assert!((started.timestamp() - before).abs() <= 2, "{started_at}");
    let took = report["duration_seconds"].as_f64().unwrap();
    assert!(took > 0.0 && took < 60.0, "{took}");

    let metrics = parse_metrics(&fx.path("out/stretcher.prom"));
    assert_eq!(gauge(&metrics, "stretcher_last_run_success"), 1.0);
    assert_eq!(gauge(&metrics, "stretcher_last_run_rolled_back"), 0.0);
    assert_eq!(
        gauge(&metrics, "stretcher_last_run_bytes"),
        archive.len() as f64
    );
    assert_eq!(gauge(&metrics, "stretcher_last_run_duration_seconds"), took);
    let ended = gauge(&metrics, "stretcher_last_run_timestamp_seconds");
    assert!((ended - before as f64).abs() < 30.0, "{ended}");
    assert_eq!(runs(&metrics), counts(1.0, 0.0, 0.0));
}

#[test]
fn a_failure_reports_its_step_and_error_even_when_consul_gets_exit_0() {
    let fx = Fixture::new();
    let data = gzip(&common::app_tar());
    fx.write("app.tar.gz", &data);
    let wrong = "0".repeat(64);
    let url = fx.manifest(&common::manifest_for(
        &fx,
        &fx.url("app.tar.gz"),
        &wrong,
        "",
    ));
    let run = run_reporting(
        &fx,
        &consul_event("ev-1", 1, &url),
        &[("CONSUL_INDEX", "1")],
    );
    assert_eq!(run.code(), 0, "consul watch always gets 0");

    let report = read_json(&fx.path("out/report.json"));
    assert_eq!(report["result"], "failure", "{report}");
    assert_eq!(report["step"], "download");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_eq!(report["event_id"], "ev-1");
    assert_eq!(report["checksum"], wrong.as_str());
    let metrics = parse_metrics(&fx.path("out/stretcher.prom"));
    assert_eq!(gauge(&metrics, "stretcher_last_run_success"), 0.0);
    assert_eq!(runs(&metrics), counts(0.0, 1.0, 0.0));

    // A failing hook names its own step.
    let url = fx.manifest(&app_manifest(&fx, "commands:\n  pre: ['exit 3']\n"));
    run_reporting(&fx, &url, &[]).failed();
    let report = read_json(&fx.path("out/report.json"));
    assert_eq!(report["step"], "pre", "{report}");
    assert!(report["error"].as_str().unwrap().contains("exit status 3"));
    assert_eq!(report["bytes"], data.len() as u64, "downloaded before pre");
}

#[test]
fn counters_carry_over_across_runs_and_a_replay_counts_as_skipped() {
    let fx = Fixture::new();
    let good = fx.manifest(&app_manifest(&fx, ""));
    let consul = [("CONSUL_INDEX", "1")];
    run_reporting(&fx, &consul_event("ev-1", 1, &good), &consul).ok();
    run_reporting(&fx, "file:///no/such/manifest.yml", &[]).failed();
    run_reporting(&fx, &consul_event("ev-2", 2, &good), &consul).ok();
    let log = run_reporting(&fx, &consul_event("ev-2", 2, &good), &consul).ok();
    assert!(
        log.contains("Event ev-2 already deployed, skipping"),
        "{log}"
    );

    let report = read_json(&fx.path("out/report.json"));
    assert_eq!(report["result"], "skipped", "{report}");
    assert_eq!(report["event_id"], "ev-2");
    assert_eq!(report["manifest"], good.as_str());
    assert!(report["error"].is_null() && report["step"].is_null());
    assert_eq!(report["bytes"], 0);
    let metrics = parse_metrics(&fx.path("out/stretcher.prom"));
    assert_eq!(runs(&metrics), counts(2.0, 1.0, 1.0));
    assert_eq!(
        gauge(&metrics, "stretcher_last_run_success"),
        1.0,
        "a replay skipped is not a failure"
    );
}

#[test]
fn files_are_replaced_atomically_and_readable_by_monitoring() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path("out")).unwrap();
    let old = "{\"result\":\"failure\"}\n";
    fx.write("out/report.json", old);
    // A reader holding the old file keeps reading the old content: the new
    // one is renamed over it, not rewritten in place.
    std::fs::hard_link(fx.path("out/report.json"), fx.path("held.json")).unwrap();
    let url = fx.manifest(&app_manifest(&fx, ""));
    run_reporting(&fx, &url, &[]).ok();

    assert_eq!(std::fs::read_to_string(fx.path("held.json")).unwrap(), old);
    assert_eq!(read_json(&fx.path("out/report.json"))["result"], "success");
    let mut left: Vec<String> = std::fs::read_dir(fx.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["report.json", "stretcher.prom"], "no temp files");
    for file in left {
        let mode = std::fs::metadata(fx.path("out").join(&file))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(
            mode & 0o044,
            0o044,
            "{file} is readable by others: {mode:o}"
        );
    }
}

#[test]
fn an_unreadable_metrics_file_starts_the_counters_from_zero_with_a_log_line() {
    let fx = Fixture::new();
    fx.write(
        "out/stretcher.prom",
        "stretcher_runs_total{result=\"success\"} lots\n",
    );
    let url = fx.manifest(&app_manifest(&fx, ""));
    let log = run_reporting(&fx, &url, &[]).ok();
    let path = fx.path("out/stretcher.prom");
    assert!(
        log.contains(&format!(
            "metrics file {} has no readable stretcher_runs_total counters; counting runs from zero",
            path.display()
        )),
        "{log}"
    );
    assert_eq!(runs(&parse_metrics(&path)), counts(1.0, 0.0, 0.0));
}

#[test]
fn a_report_that_cannot_be_written_is_logged_and_the_deploy_still_succeeds() {
    let fx = Fixture::new();
    let url = fx.manifest(&app_manifest(&fx, ""));
    let missing = fx.path("no/such/dir/report.json");
    let run = fx.run(
        &url,
        &["--report-file", &missing.display().to_string()],
        &[],
    );
    let log = run.ok();
    assert!(
        log.contains(&format!("writing report file {}", missing.display())),
        "{log}"
    );
    assert!(fx.dest().join("index.html").exists());
}
