//! Long-lived processes of the devcluster: start each in its own session (so it outlives the
//! shell that ran `up`), remember its pid in a file, and stop them all again, including any that
//! `up` started before it crashed.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("could not create the log file {path} for {name}")]
    OpenLog {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start {name} ({program})")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("could not record the pid of {name} in {path}")]
    WritePid {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A process `up` started: its name (also the pid file's and the log's name) and pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub name: String,
    pub pid: i32,
}

/// Starts `program args` detached in a new session, with output appended to `logs/<name>.log`
/// and the pid written to `pids/<name>.pid` before this returns.
pub fn spawn(
    pids_dir: &Path,
    logs_dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
) -> Result<Started, ProcError> {
    let log_path = logs_dir.join(format!("{name}.log"));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ProcError::OpenLog {
            name: name.into(),
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ProcError::OpenLog {
        name: name.into(),
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ProcError::Spawn {
        name: name.into(),
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id() as i32;
    let pid_path = pids_dir.join(format!("{name}.pid"));
    fs::write(&pid_path, format!("{pid}\n")).map_err(|source| ProcError::WritePid {
        name: name.into(),
        path: pid_path,
        source,
    })?;
    // The child is deliberately not waited on here: it lives on after `up` exits.
    std::mem::forget(child);
    Ok(Started {
        name: name.into(),
        pid,
    })
}

/// The processes recorded in `pids_dir`, in the order they should be stopped (the node agent
/// first so it does not restart pods, then the control plane from the top down to etcd).
pub fn recorded(pids_dir: &Path) -> Vec<Started> {
    let mut out: Vec<Started> = fs::read_dir(pids_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".pid")?
                .to_string();
            let pid = fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            Some(Started { name, pid })
        })
        .collect();
    out.sort_by_key(|s| stop_rank(&s.name));
    out
}

fn stop_rank(name: &str) -> u8 {
    match name {
        "prometheus" | "prometheus-sd" | "agent" | "mirror-gateway" => 0,
        "kube-scheduler" => 1,
        "kube-controller-manager" => 2,
        "kube-apiserver" => 3,
        "etcd" => 4,
        _ => 5,
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|s| !s.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// SIGTERM to the process's group, up to `grace` to exit, then SIGKILL.
pub fn stop(pid: i32, grace: Duration) {
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal_group(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal_group(pid: i32, sig: i32) {
    unsafe {
        // The processes lead their own session, so their pid is their group id.
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Pids of live processes whose command line or working directory mentions `root`: what a
/// crashed `up` or agent may have left behind without a pid file.
pub fn stragglers(root: &Path) -> Vec<i32> {
    let root_s = root.to_string_lossy().to_string();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if mentions(&cmdline, &cwd, &root_s) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn mentions(cmdline: &str, cwd: &Path, root: &str) -> bool {
    cmdline.split_whitespace().any(|arg| arg.contains(root)) || cwd.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_order_is_agent_then_control_plane_top_down() {
        let mut names = [
            "etcd",
            "agent",
            "kube-apiserver",
            "kube-scheduler",
            "kube-controller-manager",
        ];
        names.sort_by_key(|n| stop_rank(n));
        assert_eq!(
            names,
            [
                "agent",
                "kube-scheduler",
                "kube-controller-manager",
                "kube-apiserver",
                "etcd"
            ]
        );
    }

    #[test]
    fn straggler_matching() {
        let root = "/var/tmp/rollout-devcluster";
        let cases = [
            (
                "etcd --data-dir /var/tmp/rollout-devcluster/etcd",
                "/",
                true,
            ),
            ("sleep infinity", "/var/tmp/rollout-devcluster/pods/x", true),
            ("sleep infinity", "/root", false),
            ("vim /var/tmp/other", "/", false),
        ];
        for (cmd, cwd, want) in cases {
            assert_eq!(mentions(cmd, Path::new(cwd), root), want, "{cmd} in {cwd}");
        }
    }

    #[test]
    fn spawn_records_pid_and_stop_ends_the_group() {
        let dir = std::env::temp_dir().join(format!("procs-test-{}", std::process::id()));
        let (pids, logs) = (dir.join("pids"), dir.join("logs"));
        fs::create_dir_all(&pids).unwrap();
        fs::create_dir_all(&logs).unwrap();
        let s = spawn(
            &pids,
            &logs,
            "sleeper",
            Path::new("sh"),
            &["-c".into(), "sleep 30 & sleep 30".into()],
            &[],
        )
        .unwrap();
        assert!(alive(s.pid));
        assert_eq!(recorded(&pids), vec![s.clone()]);
        stop(s.pid, Duration::from_secs(2));
        assert!(!alive(s.pid));
        fs::remove_dir_all(&dir).unwrap();
    }
}
