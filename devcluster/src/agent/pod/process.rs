//! A container's process: started through `devcluster pod-init` in its own session (so signals
//! reach everything it forks via the process group), with a cleared environment and output
//! appended to the container's log; stopped the way the kubelet stops containers (SIGTERM, the
//! grace period, then SIGKILL). `pod-init` reports over a pipe when the process is inside its
//! namespaces and mounts ([`SetupSignal`]), so exec probes and hooks never enter it too early.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::podinit::PodInit;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not open the container log {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not make the setup pipe for container {container}")]
    SetupPipe {
        container: String,
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
    setup: SetupSignal,
}

/// Whether `pod-init` has put the process into its pod's namespaces and mounts: `None` while
/// unknown, then `Some(true)`, or `Some(false)` when it ended without saying so (setup failed).
#[derive(Debug, Clone)]
pub struct SetupSignal(watch::Receiver<Option<bool>>);

impl SetupSignal {
    /// Waits for the outcome of the setup.
    pub async fn done(&mut self) -> bool {
        match self.0.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }

    pub fn is_done(&self) -> bool {
        *self.0.borrow() == Some(true)
    }

    /// Follows the read end of the setup pipe: one byte means done, end of file without it
    /// means pod-init stopped before the exec.
    fn follow(mut pipe: tokio::net::unix::pipe::Receiver) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let ok = matches!(pipe.read(&mut byte).await, Ok(1));
            let _ = tx.send(Some(ok));
        });
        SetupSignal(rx)
    }
}

/// A pipe whose ends are close-on-exec, the write end numbered above the standard streams.
fn setup_pipe() -> Result<(OwnedFd, OwnedFd), std::io::Error> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array with fresh descriptors this function then owns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child's standard streams are set by number; keep the pipe clear of 0..=2.
    // SAFETY: duplicates a descriptor we own; the result is owned below.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh descriptor owned by nobody else.
    Ok((read, unsafe { OwnedFd::from_raw_fd(high) }))
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
    let pipe_err = |source| ProcessError::SetupPipe {
        container: container.to_string(),
        source,
    };
    let (read, write) = setup_pipe().map_err(pipe_err)?;
    let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(pipe_err)?;
    let write_fd = write.as_raw_fd();
    let init = PodInit {
        ready_fd: Some(write_fd),
        ..init.clone()
    };
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
    // SAFETY: setsid and fcntl are async-signal-safe and touch no memory of the parent. Only
    // this child's copy of the write end loses close-on-exec, so no other child inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::fcntl(write_fd, libc::F_SETFD, 0) < 0 {
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
    // Only the child may hold the write end, so its exit (or exec) ends the pipe.
    drop(write);
    let setup = SetupSignal::follow(read);
    let pid = child.id().map_or(0, |p| p as i32);
    Ok(Process {
        child,
        pid,
        started_at: SystemTime::now(),
        setup,
    })
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain syscall; the group is the container's own session.
        unsafe { libc::kill(-pgid, sig) };
    }
}

impl Process {
    /// Whether (and when) the process is inside its namespaces and mounts.
    pub fn setup(&self) -> SetupSignal {
        self.setup.clone()
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (tokio::net::unix::pipe::Receiver, OwnedFd) {
        let (read, write) = setup_pipe().expect("a pipe");
        let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read).expect("a pipe reader");
        (read, write)
    }

    #[test]
    fn the_write_end_stays_clear_of_the_standard_streams_and_of_other_children() {
        let (_read, write) = setup_pipe().expect("a pipe");
        assert!(write.as_raw_fd() > 2);
        // SAFETY: reads the flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[tokio::test]
    async fn a_byte_means_setup_is_done() {
        let (read, write) = pipe();
        let mut setup = SetupSignal::follow(read);
        assert!(!setup.is_done());
        std::fs::File::from(write).write_all(b"1").expect("write");
        assert!(setup.done().await);
        assert!(setup.is_done());
    }

    #[tokio::test]
    async fn a_pipe_closed_without_a_byte_means_setup_failed() {
        let (read, write) = pipe();
        let mut setup = SetupSignal::follow(read);
        drop(write);
        assert!(!setup.done().await);
        assert!(!setup.is_done());
    }
}
