//! The `stretcher` binary: flags, signals, one run, exit status.

use std::process::ExitCode;

use stretcher::cli::{self, Command};
use stretcher::event::Invocation;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os()) {
        Command::Version => {
            println!("stretcher {}", stretcher::VERSION);
            return ExitCode::SUCCESS;
        }
        Command::Run(config) => config,
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
        let cancel = CancellationToken::new();
        // Handlers are in place before the run starts, so no early signal
        // kills the process with temp files left behind.
        let signals = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let (Ok(int), Ok(term)) = signals else {
            eprintln!("cannot install signal handlers");
            return false;
        };
        tokio::spawn(cancel_on_signal(int, term, cancel.clone(), failure_code));
        stretcher::run(&config, &how, &cancel).await.is_ok()
    });
    // Exit without waiting for a stdin reader blocked on a silent pipe.
    std::process::exit(if ok { 0 } else { failure_code })
}

/// The first SIGINT/SIGTERM cancels the run; a second one (while failure
/// hooks run) exits with `failure_code`.
async fn cancel_on_signal(
    mut int: Signal,
    mut term: Signal,
    cancel: CancellationToken,
    failure_code: i32,
) {
    for round in 0.. {
        tokio::select! {
            _ = int.recv() => log::info!("Received SIGINT, stopping"),
            _ = term.recv() => log::info!("Received SIGTERM, stopping"),
        }
        if round > 0 {
            // A second signal while failure hooks run: stop now.
            std::process::exit(failure_code);
        }
        cancel.cancel();
    }
}
