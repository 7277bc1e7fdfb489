//! A real Serf cluster on loopback: agents whose event and query handlers
//! are the built binary, each deploying into its own dest (`$APP_DEST`,
//! `<node home>/dest`), with `$NODE` set to its node name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{bin, free_port, Fixture};

/// What the handler is registered for: the deploy user event and query,
/// and the fleet's status and rollback queries.
const EVENTS: &str = "user:deploy,query:deploy,query:stretcher-status,query:stretcher-rollback";

/// One agent.
pub struct Agent {
    pub name: String,
    pub rpc: String,
    pub home: PathBuf,
    pub dest: PathBuf,
    bind: String,
    /// The handler command line.
    handler: String,
    child: Option<Child>,
}

/// How to start a cluster.
pub struct Options<'a> {
    /// How many agents.
    pub nodes: usize,
    /// Flags for each agent's handler, given its home.
    pub handler_args: &'a dyn Fn(&Path) -> Vec<String>,
    /// The agents' RPC auth key.
    pub rpc_auth: Option<&'a str>,
}

/// The handler flags of examples/serf/serf.json: `--state-dir` and
/// `--report-file` in the node's home.
pub fn state_and_report(home: &Path) -> Vec<String> {
    vec![
        "--state-dir".into(),
        home.join("state").display().to_string(),
        "--report-file".into(),
        home.join("report.json").display().to_string(),
    ]
}

/// The agents; stopped by PID when dropped.
pub struct Cluster {
    pub agents: Vec<Agent>,
    auth: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.stop(i);
        }
    }
}

/// Runs the serf CLI.
pub fn serf<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new("serf")
        .args(args)
        .output()
        .expect("serf is installed (make deps)")
}

impl Cluster {
    /// Three agents whose handler runs without flags.
    pub fn start(fx: &Fixture) -> Cluster {
        Self::start_with(fx, false)
    }

    /// Three agents; with `state_dir`, each node's handler runs with
    /// `--state-dir <node home>/state`, as examples/serf/serf.json does.
    pub fn start_with(fx: &Fixture, state_dir: bool) -> Cluster {
        let args = move |home: &Path| match state_dir {
            true => vec![
                "--state-dir".to_string(),
                home.join("state").display().to_string(),
            ],
            false => Vec::new(),
        };
        Self::start_opts(
            fx,
            &Options {
                nodes: 3,
                handler_args: &args,
                rpc_auth: None,
            },
        )
    }

    /// Agents `node1`…`nodeN`, all joined and alive before this returns.
    pub fn start_opts(fx: &Fixture, opts: &Options) -> Cluster {
        let mut cluster = Cluster {
            agents: Vec::new(),
            auth: opts.rpc_auth.map(str::to_string),
        };
        for i in 1..=opts.nodes {
            let home = fx.path(&format!("node{i}"));
            std::fs::create_dir_all(home.join("tmp")).unwrap();
            let mut handler = vec![bin().to_string()];
            handler.extend((opts.handler_args)(&home));
            cluster.agents.push(Agent {
                handler: handler.join(" "),
                name: format!("node{i}"),
                rpc: format!("127.0.0.1:{}", free_port()),
                bind: format!("127.0.0.1:{}", free_port()),
                dest: home.join("dest"),
                home,
                child: None,
            });
            cluster.spawn(i - 1);
            // Let each agent open its ports before the next joins it.
            let rpc = cluster.agents[i - 1].rpc.clone();
            wait_until(Duration::from_secs(15), || {
                serf(&cluster.rpc_flags(&rpc, &["members"]))
                    .status
                    .success()
            });
        }
        cluster.wait_alive(opts.nodes);
        cluster
    }

    /// Starts agent `i` (again), joining the first other agent.
    fn spawn(&mut self, i: usize) {
        let join = self
            .agents
            .iter()
            .enumerate()
            .find(|(j, a)| *j != i && a.child.is_some())
            .map(|(_, a)| a.bind.clone());
        let a = &self.agents[i];
        let mut cmd = Command::new("serf");
        cmd.arg("agent")
            .arg(format!("-node={}", a.name))
            .arg(format!("-bind={}", a.bind))
            .arg(format!("-rpc-addr={}", a.rpc))
            .arg(format!("-event-handler={EVENTS}={}", a.handler))
            .arg("-log-level=warn")
            .current_dir(&a.home)
            .env("APP_DEST", &a.dest)
            .env("NODE", &a.name)
            .env("TMPDIR", a.home.join("tmp"))
            .stdin(Stdio::null());
        // The agent's warnings, for a failing test's reader.
        match std::fs::File::create(a.home.join("serf.log")) {
            Ok(log) => cmd.stdout(log).stderr(Stdio::inherit()),
            Err(_) => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        if let Some(key) = &self.auth {
            // The agent takes its RPC key from a config file only.
            let config = a.home.join("serf.json");
            std::fs::write(&config, format!(r#"{{"rpc_auth": "{key}"}}"#)).unwrap();
            cmd.arg(format!("-config-file={}", config.display()));
        }
        if let Some(join) = join {
            cmd.arg(format!("-join={join}"));
        }
        let child = cmd.spawn().expect("serf is installed (make deps)");
        self.agents[i].child = Some(child);
    }

    /// Kills agent `i` (as a crash or a power cut would: no graceful leave).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped agent `i` again under its name, and waits until
    /// `alive` agents are alive.
    pub fn restart(&mut self, i: usize, alive: usize) {
        self.spawn(i);
        self.wait_alive(alive);
    }

    /// Waits until the first agent sees `n` alive members.
    pub fn wait_alive(&self, n: usize) {
        let rpc = self.agents[0].rpc.clone();
        wait_until(Duration::from_secs(30), || {
            let out = serf(&self.rpc_flags(&rpc, &["members", "-status=alive"]));
            String::from_utf8_lossy(&out.stdout).lines().count() == n
        });
    }

    /// `-rpc-addr=…` (and `-rpc-auth=…`) for the serf CLI, after `args`.
    fn rpc_flags(&self, rpc: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push(format!("-rpc-addr={rpc}"));
        if let Some(key) = &self.auth {
            all.push(format!("-rpc-auth={key}"));
        }
        all
    }

    /// `-rpc-addr=<first agent>` for the serf CLI.
    pub fn rpc(&self) -> String {
        format!("-rpc-addr={}", self.agents[0].rpc)
    }
}

/// Polls `f` every 100 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("condition not met within {limit:?}");
}
