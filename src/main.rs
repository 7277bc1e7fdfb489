//! The `stretcher` binary: flags, signals, one run, exit status.

use std::io::Write;
use std::process::ExitCode;

use stretcher::cli::{self, Command, Subcommand};
use stretcher::event::Invocation;
use tokio::signal::unix::{signal, Signal, SignalKind};

fn main() -> ExitCode {
    one_malloc_arena();
    let config = match cli::parse(std::env::args_os()) {
        Command::Version => {
            println!("stretcher {}", stretcher::VERSION);
            return ExitCode::SUCCESS;
        }
        Command::Run(config) => config,
        Command::Subcommand(sub) => return subcommand(sub),
        Command::Exit { text, code } => {
            if code == 0 {
                print!("{text}");
            } else {
                eprintln!("{text}");
            }
            return ExitCode::from(code);
        }
    };
    let how = Invocation::from_env();
    // consul watch stops calling a handler that exits non-zero and replays
    // events when restarted; serf query drops the answer of a handler that
    // fails (the answer line carries the outcome). Under either, exit 0.
    let failure_code = if how.consul || how.is_serf_query() {
        0
    } else {
        1
    };
    stretcher::log::init(how.is_serf_query());
    survive_file_size_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = runtime.block_on(async {
        // `stretcher-status` and `stretcher-rollback` queries answer, not deploy.
        if let Some(answer) = stretcher::answer::Answer::for_query(&how) {
            println!("{}", answer.line(&config, &how).await);
            return true;
        }
        let signals = stretcher::Signals::default();
        // Handlers are in place before the run starts, so no early signal
        // kills the process with temp files left behind.
        let handlers = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let (Ok(int), Ok(term)) = handlers else {
            eprintln!("cannot install signal handlers");
            return false;
        };
        tokio::spawn(on_signals(int, term, signals.clone()));
        stretcher::run(&config, &how, &signals).await.is_ok()
    });
    // Exit without waiting for a stdin reader blocked on a silent pipe.
    std::process::exit(if ok { 0 } else { failure_code })
}

/// Runs a subcommand: its output on stdout, an error on stderr (exit 1).
fn subcommand(sub: Subcommand) -> ExitCode {
    let output: anyhow::Result<Vec<u8>> = match sub {
        Subcommand::Status(args) => stretcher::status::show(
            args.report_file.as_deref(),
            args.state_dir.as_deref(),
            args.json,
        )
        .map(String::into_bytes),
        Subcommand::Releases(args) => with_lock(&args.dest, args.lock_timeout, || {
            stretcher::releases::show(&args.dest, args.json)
        })
        .map(String::into_bytes),
        Subcommand::Rollback(args) => rollback(&args).map(|()| Vec::new()),
        Subcommand::Pack(args) => pack(&args).map(String::into_bytes),
        Subcommand::Fleet(command) => return fleet(command),
        Subcommand::Completions { shell } => Ok(cli::completions(shell)),
        Subcommand::Man => cli::man_page().map_err(Into::into),
    };
    let written = output.and_then(|bytes| Ok(std::io::stdout().write_all(&bytes)?));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stretcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `stretcher pack`: writes the archive, prints its checksum.
fn pack(args: &cli::PackArgs) -> anyhow::Result<String> {
    let opts = stretcher::pack::Options {
        member_size: usize::try_from(args.member_size)?,
        excludes: stretcher::sync::Excludes::new(&args.excludes, "pack")?,
    };
    let summary = stretcher::pack::pack(&args.dir, &args.output, &opts)?;
    Ok(summary.report(&args.output))
}

/// `stretcher fleet …`: prints as it goes; exit 1 unless every host is ok.
fn fleet(command: cli::FleetCommand) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(stretcher::fleet::run(command)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("stretcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `stretcher rollback`, logging what it switched as the agent logs.
fn rollback(args: &cli::RollbackArgs) -> anyhow::Result<()> {
    stretcher::log::init(false);
    with_lock(&args.dest, args.lock_timeout, || {
        let state = args
            .state_dir
            .as_deref()
            .map(stretcher::state::StateDir::open)
            .transpose()?;
        stretcher::releases::rollback(&args.dest, args.to.as_deref(), state.as_ref())
    })
}

/// Runs `f` holding the lock deploys to `dest` take.
fn with_lock<T>(
    dest: &std::path::Path,
    timeout: Option<std::time::Duration>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let dest = dest.to_string_lossy();
    let _lock = runtime.block_on(stretcher::lock::acquire_switched(&dest, timeout))?;
    f()
}

/// A file size limit (`ulimit -f`, RLIMIT_FSIZE) is a full disk in
/// miniature, but by default its SIGXFSZ kills the agent mid-write, before
/// it can remove its temp files or run the `failure` hooks. With a handler
/// the write fails with EFBIG instead, and the run fails like on ENOSPC. A
/// handler, unlike `SIG_IGN`, is reset by exec: hooks and rsync keep the
/// default.
fn survive_file_size_limit() {
    extern "C" fn on_xfsz(_: libc::c_int) {}
    let handler: extern "C" fn(libc::c_int) = on_xfsz;
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { libc::signal(libc::SIGXFSZ, handler as libc::sighandler_t) };
}

/// The first SIGINT/SIGTERM cancels the run; a second one also stops the
/// `success`/`failure` hooks. Either way the run returns through its
/// cleanup (temp file, extraction dir, lock) before the process exits.
async fn on_signals(mut int: Signal, mut term: Signal, signals: stretcher::Signals) {
    for round in 0.. {
        tokio::select! {
            _ = int.recv() => log::info!("Received SIGINT, stopping"),
            _ = term.recv() => log::info!("Received SIGTERM, stopping"),
        }
        if round == 0 {
            signals.cancel.cancel();
        } else {
            log::info!("Second signal: stopping the remaining hooks");
            signals.abort.cancel();
        }
    }
}

/// One malloc arena for every thread. glibc gives each thread that
/// allocates an arena of its own, and a buffer freed in one stays mapped
/// there: with the download's, the hash's and the writer's threads that
/// costs a few MB of resident memory for nothing (the agent's threads pass
/// buffers along; they never allocate much at once).
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
