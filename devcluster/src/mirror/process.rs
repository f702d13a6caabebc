//! The mirror gateway as one of the devcluster's tracked processes: `up` (and an `up` that heals
//! a running cluster) starts it when it is not running, and returns once it listens.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{controlplane, procs, Layout};

/// Its pid file and log are `pids/mirror-gateway.pid` and `logs/mirror-gateway.log`.
pub const PROCESS: &str = "mirror-gateway";
/// How long `up` waits for it to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn listen_addr() -> String {
    format!("{}:{}", super::ADDRESS, super::PORT)
}

/// Starts the mirror gateway unless it runs; `Some` when it was started here.
pub async fn ensure_running(layout: &Layout) -> anyhow::Result<Option<procs::Started>> {
    let running = procs::recorded(&layout.pids_dir())
        .iter()
        .any(|p| p.name == PROCESS && procs::alive(p.pid));
    if running {
        return Ok(None);
    }
    let addr = listen_addr();
    if tokio::net::TcpStream::connect(&addr).await.is_ok() {
        bail!("{addr} is taken by a process the devcluster did not start; stop it, then run `devcluster up` again to start the mirror gateway there");
    }
    let me = std::env::current_exe().context("finding the devcluster binary")?;
    let kubeconfig = layout.pki_dir().join("agent.kubeconfig");
    let args = vec![
        "gateway-serve".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--listen={addr}"),
    ];
    let envs = [
        ("ROLLOUT_DEVCLUSTER_DIR", layout.root.display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    let started = procs::spawn(
        &layout.pids_dir(),
        &layout.logs_dir(),
        PROCESS,
        &me,
        &args,
        &envs,
    )?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if !procs::alive(started.pid) {
            let (log, tail) = controlplane::log_tail(layout, PROCESS, 30);
            bail!(
                "the mirror gateway exited; its log is {}:\n{tail}",
                log.display()
            );
        }
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok(Some(started));
        }
        if Instant::now() > deadline {
            bail!(
                "the mirror gateway (pid {}) did not listen on {addr} within {}s; see {}",
                started.pid,
                START_TIMEOUT.as_secs(),
                layout.logs_dir().join(format!("{PROCESS}.log")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
