//! Starts the time app: settings from the environment, the visits file, then HTTP until SIGTERM.
//!
//! Exit status: 0 after a graceful shutdown, 1 when it cannot run (or `CRASH_AT_START` asks it to
//! fail), 2 when an environment variable has an invalid value.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use time_app::server::{self, AppState};
use time_app::settings::Settings;
use time_app::visits::VisitStore;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let started = Instant::now();
    // Lossy, so a non-UTF-8 value still reaches the parser and gets a clear error.
    let env = |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    let settings = match Settings::from_lookup(env) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("time-app: {err}");
            return ExitCode::from(2);
        }
    };
    if settings.faults.crash_at_start {
        eprintln!("time-app: CRASH_AT_START is set: exiting with status 1 (simulated crash)");
        return ExitCode::from(1);
    }
    match run(settings, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("time-app: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(settings: Settings, started: Instant) -> anyhow::Result<()> {
    let store = VisitStore::open(&settings.data_dir)?;
    let on_record = store.read()?.visits.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let mut sigterm = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, settings.port))
            .await
            .with_context(|| format!("listen on 0.0.0.0:{}", settings.port))?;
        let faults = settings.faults.describe_active();
        println!(
            "time-app listening: version={} pod={} namespace={} pod_ip={} port={} data_dir={} \
             visits_on_record={} faults={}",
            settings.version,
            settings.pod,
            settings.namespace.as_deref().unwrap_or("-"),
            settings.pod_ip.as_deref().unwrap_or("-"),
            settings.port,
            settings.data_dir.display(),
            on_record,
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(",")
            },
        );
        let app = Arc::new(AppState::new(settings, store, started)?);
        let shutdown = async move {
            let signal_name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                // If SIGINT cannot be watched, that branch is disabled rather than ending the server.
                Ok(()) = tokio::signal::ctrl_c() => "SIGINT",
            };
            println!("time-app: {signal_name} received: finishing requests in flight");
        };
        server::serve(listener, app, shutdown)
            .await
            .context("serve HTTP")
    })
}
