//! Progress on a terminal: with stderr on a pty (util-linux `script`), a
//! download bar and spinners counting extracted and synced entries; with
//! stderr on a pipe (handlers, journald, CI), plain log lines only.

mod common;

use std::process::{Command, Stdio};

use common::{bin, gzip, manifest_for, sha256, tar, Fixture, Member};

/// Files in the test archive besides `big.bin`.
const FILES: usize = 40;

/// An archive of `./`, [`FILES`] small files and 2 MB that does not
/// compress, and a dest with an old file so that rsync runs. Returns the
/// manifest URL.
fn setup(fx: &Fixture) -> String {
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i}.txt")).collect();
    let mut noise = vec![0u8; 2_000_000];
    let mut x = 0x2545_f491_u32;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut members = vec![Member::Dir("./", 0o755)];
    members.extend(names.iter().map(|n| Member::File(n, b"x\n", 0o644)));
    members.push(Member::File("big.bin", &noise, 0o644));
    let data = gzip(&tar(&members));
    fx.write("app.tar.gz", &data);
    fx.write("dest/old.txt", "old");
    fx.manifest(&manifest_for(fx, &fx.url("app.tar.gz"), &sha256(&data), ""))
}

/// Slow enough (about a second) for the bar to be drawn a few times.
const ARGS: [&str; 2] = ["--max-band-width", "2M"];

#[test]
fn a_terminal_gets_a_download_bar_and_spinners_with_counts() {
    let fx = Fixture::new();
    let url = setup(&fx);
    fx.write("url.txt", &url);
    // stdin from a file, stderr (and stdout) on the pty `script` makes;
    // the transcript of the pty comes out on script's stdout.
    let inner = format!(
        "stty cols 120 rows 40; exec '{}' {} < url.txt",
        bin(),
        ARGS.join(" ")
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .current_dir(fx.root.path())
        .env("TMPDIR", fx.path("tmp"))
        .env("TERM", "xterm")
        .env_remove("CONSUL_INDEX")
        .env_remove("SERF_EVENT")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs the agent on a pty");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("Deploy manifest succeeded."), "{screen}");
    assert!(
        screen.contains("downloading ["),
        "no download bar: {screen}"
    );
    assert!(screen.contains("B/s ETA "), "no rate and ETA: {screen}");
    assert!(
        screen.contains(&format!("deploying into {}: ", fx.dest().display())),
        "no spinner for extraction and sync: {screen}"
    );
    assert!(fx.dest().join("big.bin").exists());
    assert!(!fx.dest().join("old.txt").exists(), "rsync ran");
}

#[test]
fn without_a_terminal_the_log_is_plain_lines() {
    let fx = Fixture::new();
    let url = setup(&fx);
    let log = fx.run(&url, &ARGS, &[]).ok();
    for sign in ["\x1b", "\r", "downloading", "ETA", "entries"] {
        assert!(!log.contains(sign), "{sign:?} in a piped log:\n{log}");
    }
    assert!(log.contains(" Wrote 2,"), "{log}");
    assert!(log.contains("sending incremental file list"), "{log}");
}
