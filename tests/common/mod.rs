//! Test harness: runs the built `stretcher` binary the way an operator does
//! (manifest URL on stdin), with fixtures built in a temp dir and a real HTTP
//! server on 127.0.0.1.
#![allow(dead_code)]

pub mod http;
#[cfg(all(feature = "s3", feature = "gcs"))]
pub mod objstore;
pub mod serf;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::Digest;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stretcher")
}

/// A scratch area: `dest` to deploy into, `tmp` as the agent's TMPDIR (so
/// leftovers are visible), and room for archives and manifests.
pub struct Fixture {
    pub root: tempfile::TempDir,
}

/// One member of a test archive.
pub enum Member<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// Fixed mtime given to every archive member.
pub const MTIME: u64 = 1_600_000_000;

impl Fixture {
    /// A fixture on disk (the system temp dir).
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// A fixture on tmpfs (`/dev/shm`), so the agent's TMPDIR and dest are
    /// on tmpfs.
    pub fn on_tmpfs() -> Self {
        Self::new_in(Path::new("/dev/shm"))
    }

    fn new_in(base: &Path) -> Self {
        let root = tempfile::Builder::new()
            .prefix("stretcher-test")
            .tempdir_in(base)
            .unwrap();
        std::fs::create_dir(root.path().join("tmp")).unwrap();
        Fixture { root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn dest(&self) -> PathBuf {
        self.path("dest")
    }

    pub fn url(&self, rel: &str) -> String {
        format!("file://{}", self.path(rel).display())
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        p
    }

    /// Writes a manifest and returns its file:// URL.
    pub fn manifest(&self, yaml: &str) -> String {
        self.write("manifest.yml", yaml);
        self.url("manifest.yml")
    }

    /// Runs the agent with `stdin`, extra args and env; cwd is the fixture.
    pub fn run(&self, stdin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_program(bin(), stdin, args, env)
    }

    /// Runs `program` (a wrapper such as `prlimit`, given the agent as an
    /// argument) the way [`Fixture::run`] runs the agent.
    pub fn run_program(
        &self,
        program: &str,
        stdin: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let child = self.spawn_program(program, Some(stdin), args, env);
        Run(child.wait_with_output().unwrap())
    }

    /// Starts the agent like [`Fixture::run`] without waiting for it: stdin
    /// is written and closed, stdout and stderr are piped.
    pub fn spawn(&self, stdin: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        self.spawn_program(bin(), Some(stdin), args, env)
    }

    /// Starts the agent with `stdin` (`None` keeps stdin open and silent, so
    /// the agent waits for a URL) and reads its stderr line by line into a
    /// channel, for [`wait_for`].
    pub fn watch(&self, stdin: Option<&str>, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self.spawn_program(bin(), stdin, args, &[]);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }

    fn spawn_program(
        &self,
        program: &str,
        stdin: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Child {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.root.path())
            .env("TMPDIR", self.path("tmp"))
            .env_remove("CONSUL_INDEX")
            .env_remove("SERF_USER_EVENT")
            .env_remove("SERF_EVENT")
            .env_remove("SERF_USER_LTIME")
            .env_remove("SERF_QUERY_NAME")
            .env_remove("SERF_QUERY_LTIME")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("STORAGE_EMULATOR_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        match stdin {
            Some(text) => {
                let _ = input.write_all(text.as_bytes());
            }
            // Keep stdin open: the agent waits for a URL.
            None => std::mem::forget(input),
        }
        child
    }

    /// Like [`Fixture::run`], but as the unprivileged user `nobody` when the
    /// tests run as root (through `setpriv`), the way a deploy user runs the
    /// agent: the fixture is handed to `nobody` first. As any other user it
    /// is a plain run.
    pub fn run_unprivileged(&self, stdin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        if !is_root() {
            return self.run(stdin, args, env);
        }
        self.chown_to_nobody();
        let mut full = vec![
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            bin(),
        ];
        full.extend_from_slice(args);
        self.run_program("setpriv", stdin, &full, env)
    }

    /// Hands everything in the fixture to `nobody` (as root).
    pub fn chown_to_nobody(&self) {
        let ok = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(self.root.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown -R nobody");
    }

    /// Deploys manifest `yaml` by piping its URL.
    pub fn deploy(&self, yaml: &str) -> Run {
        let url = self.manifest(yaml);
        self.run(&url, &[], &[])
    }

    /// Asserts the agent left nothing in its TMPDIR.
    pub fn assert_no_temp_files(&self) {
        let left: Vec<_> = std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    }
}

/// Whether process `pid` still runs (a zombie does not count).
pub fn alive(pid: i32) -> bool {
    // SAFETY: probing with signal 0 sends nothing.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The pid a hook wrote to `path` (`echo $! > path`).
pub fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {}: {text:?}", path.display()))
}

/// Sends `sig` to the agent.
pub fn signal(child: &Child, sig: i32) {
    signal_pid(child.id() as i32, sig);
}

/// Sends `sig` to process `pid`.
pub fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Waits for a stderr line containing `want`; returns every line seen.
pub fn wait_for(rx: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = line.contains(want);
            seen.push(line);
            if hit {
                return seen;
            }
        }
    }
    panic!("never saw {want:?}; got:\n{}", seen.join("\n"));
}

/// Sends `signals` to the agent and asserts it fails (exit 1) within a
/// second of the first.
pub fn stops_within_a_second(child: &mut Child, signals: &[i32]) {
    let started = Instant::now();
    for &sig in signals {
        signal(child, sig);
    }
    assert_eq!(wait_exit(child), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

pub fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("agent did not exit");
}

/// A finished run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    /// Asserts success and returns the log.
    pub fn ok(&self) -> String {
        assert_eq!(self.code(), 0, "expected success; log:\n{}", self.stderr());
        self.stderr()
    }
    /// Asserts exit 1 and returns the log.
    pub fn failed(&self) -> String {
        assert_eq!(self.code(), 1, "expected failure; log:\n{}", self.stderr());
        self.stderr()
    }
}

/// Builds an uncompressed tar with fixed mtimes.
pub fn tar(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        match m {
            Member::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Member::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Member::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            Member::HardLink(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// An archive with `n` small files in 100 dirs: placing it takes a while.
pub fn many_files(n: usize) -> Vec<u8> {
    many_files_of(n, b"some bytes of a file\n")
}

/// [`many_files`] with `data` in each file: `d{i % 100}/f{i}`, in order of
/// `i`.
pub fn many_files_of(n: usize, data: &[u8]) -> Vec<u8> {
    let names: Vec<String> = (0..n).map(|i| format!("d{}/f{i}", i % 100)).collect();
    let members: Vec<Member> = names.iter().map(|n| Member::File(n, data, 0o644)).collect();
    tar(&members)
}

/// Writes raw tar headers for names the tar crate's builder refuses (`..`, `/abs`).
pub fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A small app tree used by most deploy tests.
pub fn app_tar() -> Vec<u8> {
    tar(&[
        Member::Dir("./", 0o700),
        Member::Dir("bin/", 0o755),
        Member::File("bin/start", b"#!/bin/sh\necho start\n", 0o755),
        Member::File("index.html", b"<p>v1</p>\n", 0o644),
        Member::File("secret.conf", b"key=1\n", 0o600),
        Member::File("app.pid", b"123\n", 0o644),
        Member::File("exclude.list", b"*.log\n", 0o644),
        Member::File("debug.log", b"noise\n", 0o644),
    ])
}

/// Writes the gzipped [`app_tar`] to `app.tar.gz` in the fixture and returns
/// a manifest deploying it into the fixture's dest, `extra` appended.
pub fn app_manifest(fx: &Fixture, extra: &str) -> String {
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    manifest_for(fx, &fx.url("app.tar.gz"), &sha256(&data), extra)
}

/// Free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `len` bytes that do not compress, the same for the same `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A manifest deploying `src` (with checksum `sum`) into the fixture's dest.
pub fn manifest_for(fx: &Fixture, src: &str, sum: &str, extra: &str) -> String {
    format!(
        "src: {src}\nchecksum: {sum}\ndest: {}\n{extra}",
        fx.dest().display()
    )
}

/// One entry of [`tree`]: mode bits, mtime (0 for symlinks), contents or
/// link target.
pub type Node = (u32, i64, Vec<u8>);

/// Everything under `dir` (not `dir` itself): modes, mtimes and contents.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if meta.is_dir() {
                out.insert(
                    format!("{rel}/"),
                    (meta.mode() & 0o7777, meta.mtime(), vec![]),
                );
                walk(base, &p, out);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, (0, 0, target.display().to_string().into_bytes()));
            } else {
                let node = (
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    std::fs::read(&p).unwrap(),
                );
                out.insert(rel, node);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// A filesystem mounted for a test (as root), unmounted when dropped, also
/// when the test fails.
pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs with `options` (`size=2m`) on the existing directory `dir`.
    pub fn tmpfs(dir: &Path, options: &str) -> Self {
        Self::on(dir, &["-t", "tmpfs", "-o", options, "tmpfs"])
    }

    /// A 4 MiB ext4 filesystem made with `mkfs.ext4 -N inodes` (so about
    /// that many inodes, a few taken by ext4 itself) in an image file
    /// beside `dir`, loop-mounted on the existing directory `dir`. Unlike
    /// tmpfs, ext4 spends no inode on a hard link.
    pub fn ext4(dir: &Path, inodes: u32) -> Self {
        let image = dir.with_extension("img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(4 << 20))
            .unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-N", &inodes.to_string()])
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success(), "mkfs.ext4 {}", image.display());
        Self::on(dir, &["-o".as_ref(), "loop".as_ref(), image.as_os_str()])
    }

    fn on<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Self {
        let mounted = Command::new("mount").args(args).arg(dir).status().unwrap();
        assert!(mounted.success(), "mount on {}", dir.display());
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The stdin `consul watch -type event` gives its handler: one `deploy`
/// event with `id` and `ltime`, whose payload is `url`.
pub fn consul_event(id: &str, ltime: u64, url: &str) -> String {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD.encode(url);
    format!(
        r#"[{{"ID":"{id}","Name":"deploy","Payload":"{payload}","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":{ltime}}}]"#
    )
}

/// This machine's host name, as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}
