//! Command-line flags: both upstream generations (v1.1's Go `flag` spellings
//! such as `-timeout 30`, and the later `--max-band-width` style), parsed into
//! a plain [`Config`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::units::{parse_bytes, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "stretcher",
    about = "Deploy agent: reads a manifest URL on stdin (Consul event JSON, Serf event or a plain line) and deploys it",
    disable_version_flag = true
)]
struct Args {
    /// Max bandwidth for downloading src archives, per second (10M, 10MiB, 500k)
    #[arg(long = "max-band-width", alias = "max-bandwidth", value_name = "SIZE", value_parser = parse_bytes)]
    max_bandwidth: Option<u64>,

    /// Timeout for fetching the manifest and downloading src archives (Go duration like 1m30s, or seconds; 0 = none)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    timeout: Option<Duration>,

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

    /// Remember deployed events here and skip replays of them
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Deploy even if --state-dir says the event was already deployed
    #[arg(long)]
    force: bool,

    /// Give up waiting for another run on the same dest after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    lock_timeout: Option<Duration>,

    /// Show version and exit
    #[arg(short = 'v', long)]
    version: bool,
}

/// What the agent was asked to do, with every value already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Download rate limit in bytes per second.
    pub max_bandwidth: Option<u64>,
    /// Bound on the manifest fetch and on the whole src download, retries
    /// included; `None` (also for `--timeout 0`) is unbounded.
    pub timeout: Option<Duration>,
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
}

/// The outcome of parsing the command line.
pub enum Command {
    /// Print the version and exit 0.
    Version,
    /// Run the agent.
    Run(Config),
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
/// name is one of clap's long flags is rewritten.
fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Args::command();
    let long_flags: Vec<&str> = command
        .get_arguments()
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
    Command::Run(Config {
        max_bandwidth: args.max_bandwidth,
        // Go: `if Timeout != 0`; a zero timeout means none.
        timeout: args.timeout.filter(|t| !t.is_zero()),
        random_delay: args.random_delay,
        retry: args.retry,
        retry_wait: args.retry_wait,
        rsync_verbose: args.rsync_verbose,
        state_dir: args.state_dir,
        force: args.force,
        lock_timeout: args.lock_timeout,
    })
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
