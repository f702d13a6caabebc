//! The `rollout` binary: parse the command line, resolve it, run it, exit with a documented
//! code. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rollout::cli::Cli;
use rollout::model::ExitCode as RolloutExit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.offline_output() {
        Some(Ok(text)) => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Some(Err(e)) => {
            eprintln!("rollout: writing the output: {e}");
            return RolloutExit::ClusterError.into();
        }
        None => {}
    }
    // Logs for whoever debugs (RUST_LOG=rollout=debug,kube=debug); progress for people is
    // separate. By default only rollout's own warnings show: the client libraries' errors are
    // reported by rollout in words.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rollout=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let invocation = match cli.resolve() {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("rollout: {e}");
            return RolloutExit::BadInput.into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rollout: starting the async runtime: {e}");
            return RolloutExit::ClusterError.into();
        }
    };
    match runtime.block_on(rollout::exec::execute(invocation)) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("rollout: {e}");
            ExitCode::from(e.process_exit())
        }
    }
}
