//! A container's process: started through `devcluster pod-init` in its own session (so signals
//! reach everything it forks via the process group), with a cleared environment and output
//! appended to the container's log; stopped the way the kubelet stops containers (SIGTERM, the
//! grace period, then SIGKILL).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::podinit::PodInit;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not open the container log {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {program} for container {container}")]
    Spawn {
        container: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: SystemTime,
}

impl Exit {
    fn from_status(s: std::io::Result<std::process::ExitStatus>) -> Self {
        match s {
            Ok(s) => Exit {
                code: s.code(),
                signal: s.signal(),
                at: SystemTime::now(),
            },
            // Waiting failed (should not happen for our own child): report it as killed.
            Err(_) => Exit {
                code: None,
                signal: Some(libc::SIGKILL),
                at: SystemTime::now(),
            },
        }
    }
}

pub struct Process {
    child: tokio::process::Child,
    pub pid: i32,
    pub started_at: SystemTime,
}

/// Starts `exe pod-init <init args>` with exactly `env`, appending output to `log`.
pub fn spawn(
    container: &str,
    exe: &Path,
    init: &PodInit,
    env: &[(String, String)],
    log: &Path,
) -> Result<Process, ProcessError> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ProcessError::OpenLog {
                path: log.to_path_buf(),
                source,
            })
    };
    let (out, err) = (open()?, open()?);
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("pod-init")
        .args(init.to_args())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Dropping the handle must not kill it: stopping is explicit, with a grace period.
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        container: container.to_string(),
        program: init.command.first().cloned().unwrap_or_default(),
        source,
    })?;
    let pid = child.id().map_or(0, |p| p as i32);
    Ok(Process {
        child,
        pid,
        started_at: SystemTime::now(),
    })
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain syscall; the group is the container's own session.
        unsafe { libc::kill(-pgid, sig) };
    }
}

impl Process {
    /// Waits for the main process to exit, then kills what is left of its process group.
    pub async fn wait(&mut self) -> Exit {
        let exit = Exit::from_status(self.child.wait().await);
        self.kill_leftovers();
        exit
    }

    /// SIGTERM to the process group, SIGKILL after `grace`, and the exit.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        signal_group(self.pid, libc::SIGTERM);
        let exit = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => Exit::from_status(s),
            Err(_) => {
                signal_group(self.pid, libc::SIGKILL);
                Exit::from_status(self.child.wait().await)
            }
        };
        self.kill_leftovers();
        exit
    }

    /// Children the main process left behind share its process group. Once the leader is
    /// reaped its pid could be reused; no process with that pid means none can lead a group
    /// with that id, so only our leftovers are hit.
    fn kill_leftovers(&self) {
        if !Path::new(&format!("/proc/{}", self.pid)).exists() {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}
