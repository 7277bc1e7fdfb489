//! Command-line flags: both upstream generations (v1.1's Go `flag` spellings
//! such as `-timeout 30`, and the later `--max-band-width` style), parsed into
//! a plain [`Config`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use clap_complete::Shell;

use crate::archive::MaxSize;
use crate::signature::{Policy, TrustedKey};
use crate::units::{parse_bytes, parse_duration};

/// What `--help` and the man page say after the flags: how the URL arrives.
const AFTER_HELP: &str = "\
The manifest URL is read from stdin: a plain line (typed, or piped from a \
script or a Rundeck step), a Serf user event's payload, or the event list \
that `consul watch -type event` writes. s3://, gs://, http(s):// and \
file:// URLs are supported.

Examples:
  echo s3://bucket/app/manifest.yml | stretcher
  echo https://deploy.internal/app.yml | stretcher --retry 3
  consul watch -type event -name deploy /usr/local/bin/stretcher
  serf agent -event-handler \"user:deploy=/usr/local/bin/stretcher\"
  stretcher status --report-file /var/lib/stretcher/report.json";

#[derive(Parser, Debug)]
#[command(
    name = "stretcher",
    version,
    about = "Deploy agent: reads a manifest URL on stdin (Consul event JSON, Serf event or a plain line) and deploys it",
    after_help = AFTER_HELP,
    disable_version_flag = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "SUBCOMMAND"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Subcommand>,

    /// Max bandwidth for downloading src archives, per second (10M, 10MiB, 500k)
    #[arg(long = "max-band-width", alias = "max-bandwidth", value_name = "SIZE", value_parser = parse_bytes)]
    max_bandwidth: Option<u64>,

    /// Stop extracting an archive whose files add up to more than this (10GiB, 500MB; 0 = no limit) [default: the smaller of 50GiB and the free space in TMPDIR]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    max_extract_size: Option<u64>,

    /// Timeout for fetching the manifest and downloading src archives (Go duration like 1m30s, or seconds; 0 = none)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    timeout: Option<Duration>,

    /// Bound on each hook command (Go duration like 1m30s, or seconds; 0 = none): on expiry its process group gets SIGTERM, then SIGKILL, and the step fails. A manifest's commands.timeout applies to its own hooks instead
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    hook_timeout: Option<Duration>,

    /// Sleep a random time in [0, DURATION) on start
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    random_delay: Option<Duration>,

    /// Extra attempts for downloading src archives
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    retry: u32,

    /// Wait between download attempts
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "3s",
          allow_hyphen_values = true)]
    retry_wait: Duration,

    /// Verbosity option passed to rsync: "", -v, -vv or -vvv
    #[arg(long, value_name = "OPT", default_value = "-v", allow_hyphen_values = true,
          value_parser = ["", "-v", "-vv", "-vvv"])]
    rsync_verbose: String,

    /// Remember deployed events here and skip replays of them (the run fails before deploying if it cannot write DIR)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Deploy even if --state-dir says the event was already deployed
    #[arg(long)]
    force: bool,

    /// Give up waiting for another run on the same dest after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    lock_timeout: Option<Duration>,

    /// Only deploy manifests signed with this minisign public key (the base64 line of its .pub file); repeatable, for key rollover
    #[arg(long = "verify-key", value_name = "KEY", value_parser = TrustedKey::from_base64)]
    verify_keys: Vec<TrustedKey>,

    /// Like --verify-key, with the key read from a minisign .pub file; repeatable
    #[arg(long = "verify-key-file", value_name = "PATH", value_parser = key_file)]
    verify_key_files: Vec<TrustedKey>,

    /// Deploy a signed manifest even if it was signed earlier than the one last deployed to its dest (--state-dir)
    #[arg(long)]
    allow_downgrade: bool,

    /// Deploy a signed manifest whose checksum is md5 or sha1 (refused under --verify-key: their collisions are practical), while migrating to sha256
    #[arg(long)]
    allow_weak_checksum: bool,

    /// Refuse manifest signatures whose timestamp is older than this (0 = no limit)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    max_signature_age: Option<Duration>,

    /// After each run, write its result as one JSON object to PATH (replaced atomically)
    #[arg(long, value_name = "PATH")]
    report_file: Option<PathBuf>,

    /// After each run, write Prometheus metrics to PATH for node_exporter's textfile collector (replaced atomically; run counters carry over)
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,

    /// When a `sync_strategy: release` deploy fails its post hooks or verify checks, leave the new release live instead of switching back to the previous one
    #[arg(long)]
    no_auto_rollback: bool,

    /// Show version and exit
    #[arg(short = 'v', long)]
    version: bool,
}

/// The subcommands. One is recognised only as the first argument
/// (`stretcher status …`); without one the agent reads a manifest URL on
/// stdin, as it always has. Each is one variant here, run by `main`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Subcommand {
    /// Show the last run (from --report-file) and the last deploy to each dest (from --state-dir)
    Status(StatusArgs),
    /// List the releases of a `sync_strategy: release` dest, newest first, the live one marked
    Releases(ReleasesArgs),
    /// Point a `sync_strategy: release` dest at the previous (or a named) release, running nothing else
    Rollback(RollbackArgs),
    /// Write DIR as a packed .tar.gz (any tar extracts it; agents with --state-dir then fetch only its changed parts)
    Pack(PackArgs),
    /// Deploy to a Serf cluster (all at once or in batches) and see what each host runs, through the local Serf agent's RPC
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Print a completion script for SHELL on stdout
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) on stdout
    #[command(hide = true)]
    Man,
}

/// `stretcher status`'s flags: the same paths the agent was given.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The agent's --state-dir: shows the last deploy to each dest
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The agent's --report-file: shows the last run
    #[arg(long, value_name = "PATH")]
    pub report_file: Option<PathBuf>,
    /// Print one JSON object for scripts
    #[arg(long)]
    pub json: bool,
}

/// `stretcher releases`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ReleasesArgs {
    /// The manifest's dest (the symlink)
    #[arg(long, value_name = "DEST")]
    pub dest: PathBuf,
    /// Print one JSON object for scripts
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for a deploy to the same dest after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
}

/// `stretcher rollback`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RollbackArgs {
    /// The manifest's dest (the symlink)
    #[arg(long, value_name = "DEST")]
    pub dest: PathBuf,
    /// The release to switch to (a name from `stretcher releases`) [default: the one before the live one]
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    /// The agent's --state-dir: records the rollback, so an event for the release rolled back from does not deploy it again without --force
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Give up waiting for a deploy to the same dest after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
}

/// `stretcher pack`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct PackArgs {
    /// The directory to pack (as `tar -C DIR -czf FILE .` would)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The archive to write
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Bytes of tar each gzip member holds at least: smaller members mean fewer bytes to fetch after a small change, and a slightly larger archive
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = member_size)]
    pub member_size: u64,
    /// Leave out paths matching PAT (rsync's exclude rules, as the manifest's excludes); repeatable
    #[arg(long = "exclude", value_name = "PAT")]
    pub excludes: Vec<String>,
}

/// `--member-size`: a size from 512 bytes to [`crate::pack::MAX_MEMBER_SIZE`].
fn member_size(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if !(512..=crate::pack::MAX_MEMBER_SIZE).contains(&n) {
        return Err(format!("{s}: must be from 512 bytes to 64MiB"));
    }
    Ok(n)
}

/// `stretcher fleet`'s commands (SPEC 8.8).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum FleetCommand {
    /// Send the deploy query to every matching host; print each answer as it arrives, and return as soon as all have answered
    Query(FleetQueryArgs),
    /// Ask every matching host what it runs; print the hosts grouped by the checksum live in their dests
    Status(FleetStatusArgs),
    /// Deploy batch by batch, stopping at the first batch with too many failures
    Rollout(FleetRolloutArgs),
}

/// The Serf agent to talk to, and which members to ask: every fleet
/// command takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct RpcArgs {
    /// The Serf agent's RPC address [default: $SERF_RPC_ADDR, else 127.0.0.1:7373]
    #[arg(long, value_name = "HOST:PORT")]
    pub rpc_addr: Option<String>,
    /// The Serf agent's RPC auth key [default: $SERF_RPC_AUTH]
    #[arg(long, value_name = "KEY")]
    pub rpc_auth: Option<String>,
    /// Only members whose tag KEY matches VALUE, a regular expression over the whole value; repeatable
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::fleet::parse_tag)]
    pub tags: Vec<(String, String)>,
}

/// `stretcher fleet query`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetQueryArgs {
    /// The manifest URL each host deploys
    #[arg(value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Only this member; repeatable
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// How long hosts have to answer
    #[arg(long, value_name = "DURATION", value_parser = crate::fleet::parse_timeout, default_value = "60s")]
    pub timeout: Duration,
    /// Print one JSON object for scripts
    #[arg(long)]
    pub json: bool,
}

/// `stretcher fleet status`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetStatusArgs {
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// How long hosts have to answer
    #[arg(long, value_name = "DURATION", value_parser = crate::fleet::parse_timeout, default_value = "10s")]
    pub timeout: Duration,
    /// Print one JSON object for scripts
    #[arg(long)]
    pub json: bool,
}

/// `stretcher fleet rollout`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetRolloutArgs {
    /// The manifest URL each host deploys
    #[arg(value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub rpc: RpcArgs,
    /// Hosts per batch: a number (10) or a share of the matching hosts (10%)
    #[arg(long, value_name = "N|P%", value_parser = crate::fleet::Batch::parse)]
    pub batch: crate::fleet::Batch,
    /// Stop after a batch with more than this many failed or missing answers
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failed: usize,
    /// Wait this long between batches
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub pause: Duration,
    /// How long each batch's hosts have to answer
    #[arg(long, value_name = "DURATION", value_parser = crate::fleet::parse_timeout, default_value = "60s")]
    pub timeout: Duration,
    /// When a batch stops the rollout, roll back its hosts that deployed (sync_strategy: release)
    #[arg(long)]
    pub rollback_on_failure: bool,
}

/// What the agent was asked to do, with every value already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Download rate limit in bytes per second.
    pub max_bandwidth: Option<u64>,
    /// Bound on the manifest fetch and on the whole src download, retries
    /// included; `None` (also for `--timeout 0`) is unbounded.
    pub timeout: Option<Duration>,
    /// Bound on each hook command unless the manifest sets
    /// `commands.timeout`; `None` (also for `--hook-timeout 0`) is none.
    pub hook_timeout: Option<Duration>,
    /// Bound on the member data one extraction writes.
    pub max_extract_size: MaxSize,
    /// Upper bound of the random start-up sleep.
    pub random_delay: Option<Duration>,
    /// Extra download attempts after the first.
    pub retry: u32,
    /// Pause between download attempts.
    pub retry_wait: Duration,
    /// rsync verbosity argument; empty adds none.
    pub rsync_verbose: String,
    /// Replay guard directory.
    pub state_dir: Option<PathBuf>,
    /// Ignore the replay guard.
    pub force: bool,
    /// Bound on waiting for the dest lock.
    pub lock_timeout: Option<Duration>,
    /// What manifest signatures must satisfy (SPEC 8.5); `None` without
    /// `--verify-key` or `--verify-key-file`, as upstream.
    pub signatures: Option<Policy>,
    /// Where each run's JSON result goes (SPEC 8.6).
    pub report_file: Option<PathBuf>,
    /// Where each run's Prometheus metrics go (SPEC 8.6).
    pub metrics_file: Option<PathBuf>,
    /// Switch a release dest back when `post` or `verify` fails (SPEC
    /// 8.7); off with `--no-auto-rollback`.
    pub auto_rollback: bool,
}

/// The outcome of parsing the command line.
pub enum Command {
    /// Print the version and exit 0.
    Version,
    /// Run the agent.
    Run(Config),
    /// Run a subcommand instead of the agent.
    Subcommand(Subcommand),
    /// Print `text` (help on stdout, an error on stderr) and exit with `code`.
    Exit {
        /// What to print.
        text: String,
        /// The exit status: 0 for `--help`, 1 for a bad flag or value.
        code: u8,
    },
}

/// Rewrites v1.1's single-dash long flags (`-timeout`, `-retry-wait=1`) to
/// their double-dash form. Values are never touched: only an argument whose
/// name is one of clap's long flags (the agent's or a subcommand's) is
/// rewritten.
fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Args::command();
    let long_flags: Vec<&str> = std::iter::once(&command)
        .chain(command.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
        })
        .chain(["help"])
        .collect();
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(s) = arg.to_str().filter(|_| i > 0) else {
                return arg;
            };
            match s.strip_prefix('-') {
                Some(rest) if !rest.starts_with('-') => {
                    let name = rest.split('=').next().unwrap_or(rest);
                    if long_flags.contains(&name) {
                        OsString::from(format!("-{s}"))
                    } else {
                        arg
                    }
                }
                _ => arg,
            }
        })
        .collect()
}

/// Parses the process arguments. A bad flag or value becomes a one-line
/// error naming the flag (clap's usage hint would only add noise to a
/// handler's log).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Command {
    let args = match Args::try_parse_from(normalize_args(args)) {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            return Command::Exit {
                text: line.to_string(),
                code: 1,
            };
        }
        Err(e) => {
            return Command::Exit {
                text: e.render().to_string(),
                code: 0,
            }
        }
    };
    if args.version {
        return Command::Version;
    }
    if let Some(sub) = args.command {
        return Command::Subcommand(sub);
    }
    let keys: Vec<TrustedKey> = args
        .verify_keys
        .into_iter()
        .chain(args.verify_key_files)
        .collect();
    let signatures = if keys.is_empty() {
        let orphan = [
            (args.allow_downgrade, "--allow-downgrade"),
            (args.allow_weak_checksum, "--allow-weak-checksum"),
            (args.max_signature_age.is_some(), "--max-signature-age"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        if let Some(flag) = orphan {
            return Command::Exit {
                text: format!("error: {flag} needs --verify-key or --verify-key-file"),
                code: 1,
            };
        }
        None
    } else {
        Some(Policy {
            keys,
            allow_downgrade: args.allow_downgrade,
            allow_weak_checksum: args.allow_weak_checksum,
            max_age: args.max_signature_age.filter(|d| !d.is_zero()),
        })
    };
    Command::Run(Config {
        max_bandwidth: args.max_bandwidth,
        // Go: `if Timeout != 0`; a zero timeout means none.
        timeout: args.timeout.filter(|t| !t.is_zero()),
        hook_timeout: args.hook_timeout.filter(|t| !t.is_zero()),
        max_extract_size: args
            .max_extract_size
            .map_or(MaxSize::Default, MaxSize::from_flag),
        random_delay: args.random_delay,
        retry: args.retry,
        retry_wait: args.retry_wait,
        rsync_verbose: args.rsync_verbose,
        state_dir: args.state_dir,
        force: args.force,
        lock_timeout: args.lock_timeout,
        signatures,
        report_file: args.report_file,
        metrics_file: args.metrics_file,
        auto_rollback: !args.no_auto_rollback,
    })
}

/// The completion script for `shell`, generated from the flags above.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "stretcher", &mut script);
    script
}

/// The man page (roff), generated from the flags above.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut page)?;
    Ok(page)
}

/// `--verify-key-file`'s value: a minisign `.pub` file.
fn key_file(path: &str) -> Result<TrustedKey, String> {
    TrustedKey::from_file(std::path::Path::new(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn single_dash_long_flags_are_rewritten_but_values_are_not() {
        let got = normalize_args(os(&[
            "stretcher",
            "-timeout",
            "30",
            "-retry-wait=1",
            "-rsync-verbose",
            "-vv",
            "-v",
        ]));
        assert_eq!(
            got,
            os(&[
                "stretcher",
                "--timeout",
                "30",
                "--retry-wait=1",
                "--rsync-verbose",
                "-vv",
                "-v"
            ])
        );
    }

    #[test]
    fn a_zero_timeout_means_none_as_in_go() {
        for flag in ["--timeout=0", "--timeout=0s", "-timeout=0"] {
            let Command::Run(config) = parse(os(&["stretcher", flag])) else {
                panic!("{flag}: not a run");
            };
            assert_eq!(config.timeout, None, "{flag}");
        }
        let Command::Run(config) = parse(os(&["stretcher", "--timeout", "30"])) else {
            panic!("not a run");
        };
        assert_eq!(config.timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn hook_timeout_parses_like_timeout_and_zero_is_none() {
        for (flag, want) in [
            ("--hook-timeout=0", None),
            ("-hook-timeout=0s", None),
            ("--hook-timeout=1m30s", Some(Duration::from_secs(90))),
            ("--hook-timeout=2.5", Some(Duration::from_millis(2500))),
        ] {
            let Command::Run(config) = parse(os(&["stretcher", flag])) else {
                panic!("{flag}: not a run");
            };
            assert_eq!(config.hook_timeout, want, "{flag}");
        }
        let Command::Exit { text, code } = parse(os(&["stretcher", "--hook-timeout", "soon"]))
        else {
            panic!("not an exit");
        };
        assert_eq!(code, 1);
        assert!(
            text.contains("--hook-timeout") && !text.contains('\n'),
            "{text}"
        );
    }

    const KEY: &str = "RWQN77ZpWCrGH1pFNneNqzFknN7Z4R9MESXPXUW9TCkAzYk4nVx9eTGR";

    #[test]
    fn verify_keys_make_a_signature_policy() {
        let Command::Run(config) = parse(os(&["stretcher"])) else {
            panic!("not a run");
        };
        assert!(config.signatures.is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.pub");
        std::fs::write(
            &file,
            "untrusted comment: minisign public key BD2ABCB82DBD4AA0\n\
             RWSgSr0tuLwqvU/KYDJtizuz0x6GbmzSiHmv8PALN4yrG9r2RIRMLkP2\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let args = [
            "stretcher",
            "-verify-key",
            KEY,
            "--verify-key-file",
            &file,
            "--max-signature-age=1h",
            "--allow-downgrade",
            "--allow-weak-checksum",
        ];
        let Command::Run(config) = parse(os(&args)) else {
            panic!("not a run");
        };
        let policy = config.signatures.unwrap();
        let ids: Vec<&str> = policy.keys.iter().map(|k| k.id()).collect();
        assert_eq!(ids, ["1FC62A5869B6EF0D", "BD2ABCB82DBD4AA0"]);
        assert!(policy.allow_downgrade && policy.allow_weak_checksum);
        assert_eq!(policy.max_age, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_keys_and_orphan_signature_flags_are_one_line_errors() {
        for (args, flag) in [
            (vec!["--verify-key", "RWQbogus"], "--verify-key"),
            (
                vec!["--verify-key-file", "/nonexistent.pub"],
                "--verify-key-file",
            ),
            (vec!["--allow-downgrade"], "--allow-downgrade"),
            (vec!["--allow-weak-checksum"], "--allow-weak-checksum"),
            (vec!["--max-signature-age", "1h"], "--max-signature-age"),
            (
                vec!["--verify-key", KEY, "--max-signature-age", "x"],
                "--max-signature-age",
            ),
        ] {
            let mut full = vec!["stretcher"];
            full.extend(&args);
            let Command::Exit { text, code } = parse(os(&full)) else {
                panic!("{args:?}: not an exit");
            };
            assert_eq!(code, 1, "{args:?}");
            assert!(text.contains(flag) && !text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn bad_values_and_help_do_not_exit_the_process() {
        let Command::Exit { text, code } = parse(os(&["stretcher", "--retry", "x"])) else {
            panic!("not an exit");
        };
        assert_eq!(code, 1);
        assert!(text.contains("--retry") && !text.contains('\n'), "{text}");
        let Command::Exit { code, .. } = parse(os(&["stretcher", "-help"])) else {
            panic!("not an exit");
        };
        assert_eq!(code, 0);
    }
}
