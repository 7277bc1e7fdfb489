//! The `stretcher` binary: flags, signals, one run, exit status.

use std::process::ExitCode;

use stretcher::cli::{self, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os()) {
        Command::Version => {
            println!("stretcher {}", stretcher::VERSION);
            return ExitCode::SUCCESS;
        }
        Command::Run(config) => config,
    };
    let query = stretcher::event::Invocation::from_env().is_serf_query();
    stretcher::log::init(query);
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
        tokio::spawn(cancel_on_signal(cancel.clone()));
        stretcher::run(&config, &cancel).await.is_ok()
    });
    // Exit without waiting for a stdin reader blocked on a silent pipe.
    std::process::exit(exit_code(ok))
}

/// 0 on success, 1 on failure; always 0 under `consul watch`, which stops
/// calling a handler that exits non-zero and replays events when restarted,
/// and under `serf query`, which drops the answer of a handler that fails
/// (the answer line carries the outcome).
fn exit_code(ok: bool) -> i32 {
    let query = std::env::var("SERF_EVENT").is_ok_and(|e| e == "query");
    if ok || query || std::env::var_os("CONSUL_INDEX").is_some() {
        0
    } else {
        1
    }
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = int.recv() => log::info!("Received SIGINT, stopping"),
            _ = term.recv() => log::info!("Received SIGTERM, stopping"),
        }
        if round > 0 {
            // A second signal while failure hooks run: stop now.
            std::process::exit(exit_code(false));
        }
        cancel.cancel();
    }
}
