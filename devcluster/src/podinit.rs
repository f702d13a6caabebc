//! `devcluster pod-init`: the first process of every container. It joins the pod's network
//! namespace, makes a private mount namespace (so nothing it mounts shows on the host), bind-mounts
//! the pod's volumes at their mount paths, sets the pod's hostname, changes to the working
//! directory and execs the container's command, which keeps its pid. The agent starts it with the
//! container's environment already in place.
//!
//! Command line (built by [`PodInit::to_args`], read by [`PodInit::parse`]):
//!
//! ```text
//! devcluster pod-init [--netns NAME] [--hostname NAME] [--bind SRC:DST[:ro]]...
//!                     [--workdir DIR] [--mountpoints-file FILE] [--ready-fd FD] -- CMD [ARGS...]
//! ```
//!
//! `--ready-fd` names an inherited pipe: once the namespaces, mounts and working directory are in
//! place it gets one byte and is closed, just before the exec. The agent runs exec probes and
//! hooks (which enter the container's namespaces through its pid) only after that byte: before
//! it, the pid is still in the host's namespaces, and a probe would run there, outside the pod's
//! volumes.
//!
//! It must run before any thread starts: `unshare(CLONE_NEWNS)` fails in a multi-threaded
//! process. Failures print a message to stderr (the container's log) and exit with 125 (setup),
//! 126 (command not executable) or 127 (command not found), as container runtimes do.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// A bind mount of a host path at a path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

impl Bind {
    fn parse(s: &str) -> Result<Self, ArgError> {
        let bad = || ArgError::BadBind {
            value: s.to_string(),
        };
        let mut parts = s.split(':');
        let src = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let dst = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() || !dst.starts_with('/') {
            return Err(bad());
        }
        Ok(Bind {
            src: src.into(),
            dst: dst.into(),
            read_only,
        })
    }

    fn to_arg(&self) -> String {
        let ro = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{ro}", self.src.display(), self.dst.display())
    }

    /// Paths with `:` cannot be written in the `SRC:DST` form.
    pub fn is_representable(&self) -> bool {
        let ok = |p: &Path| !p.as_os_str().as_bytes().contains(&b':');
        ok(&self.src) && ok(&self.dst)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInit {
    pub netns: Option<String>,
    pub hostname: Option<String>,
    pub binds: Vec<Bind>,
    pub workdir: Option<PathBuf>,
    /// Where to append the host directories (and files) it had to create as mount points.
    pub mountpoints_file: Option<PathBuf>,
    /// An inherited pipe to tell the agent that setup is done (see the module doc).
    pub ready_fd: Option<i32>,
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("pod-init: {flag} needs a value")]
    MissingValue { flag: String },
    #[error("pod-init: unknown option {flag}")]
    UnknownFlag { flag: String },
    #[error("pod-init: bad --bind {value:?} (want SRC:DST or SRC:DST:ro with an absolute DST)")]
    BadBind { value: String },
    #[error("pod-init: no command given after --")]
    NoCommand,
    #[error("pod-init: bad --ready-fd {value:?} (want a file descriptor number above 2)")]
    BadReadyFd { value: String },
}

impl PodInit {
    /// Reads the arguments after `pod-init`. The command starts after `--`, or at the first
    /// argument that is not an option (in case the caller's parser swallowed the `--`).
    pub fn parse(args: &[String]) -> Result<Self, ArgError> {
        let mut out = PodInit::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = |flag: &str| {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| ArgError::MissingValue {
                        flag: flag.to_string(),
                    })
            };
            match flag {
                "--" => {
                    out.command = it.by_ref().cloned().collect();
                    break;
                }
                "--netns" => out.netns = Some(value(flag)?),
                "--hostname" => out.hostname = Some(value(flag)?),
                "--bind" => out.binds.push(Bind::parse(&value(flag)?)?),
                "--workdir" => out.workdir = Some(value(flag)?.into()),
                "--mountpoints-file" => out.mountpoints_file = Some(value(flag)?.into()),
                "--ready-fd" => {
                    let v = value(flag)?;
                    let fd = v.parse::<i32>().ok().filter(|fd| *fd > 2);
                    out.ready_fd = Some(fd.ok_or(ArgError::BadReadyFd { value: v })?);
                }
                f if f.starts_with("--") => {
                    return Err(ArgError::UnknownFlag {
                        flag: f.to_string(),
                    })
                }
                _ => {
                    out.command = std::iter::once(a).chain(it.by_ref()).cloned().collect();
                    break;
                }
            }
        }
        if out.command.is_empty() {
            return Err(ArgError::NoCommand);
        }
        Ok(out)
    }

    /// The arguments to put after `devcluster pod-init`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut push = |flag: &str, v: String| {
            a.push(flag.to_string());
            a.push(v);
        };
        if let Some(ns) = &self.netns {
            push("--netns", ns.clone());
        }
        if let Some(h) = &self.hostname {
            push("--hostname", h.clone());
        }
        for b in &self.binds {
            push("--bind", b.to_arg());
        }
        if let Some(w) = &self.workdir {
            push("--workdir", w.display().to_string());
        }
        if let Some(f) = &self.mountpoints_file {
            push("--mountpoints-file", f.display().to_string());
        }
        if let Some(fd) = self.ready_fd {
            push("--ready-fd", fd.to_string());
        }
        a.push("--".to_string());
        a.extend(self.command.iter().cloned());
        a
    }
}

/// The ancestors of `path` (itself included) that do not exist, outermost first: the
/// directories that creating `path` will add to the host.
pub fn missing_dirs(path: &Path, exists: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !exists(p))
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// Entry point of `devcluster pod-init ARGS`; never returns.
pub fn main(args: &[String]) -> ! {
    let init = match PodInit::parse(args) {
        Ok(i) => i,
        Err(e) => fail(125, &e.to_string()),
    };
    if let Err(msg) = setup(&init) {
        fail(125, &format!("pod-init: {msg}"));
    }
    if let Some(fd) = init.ready_fd {
        signal_ready(fd);
    }
    let err = std::process::Command::new(&init.command[0])
        .args(&init.command[1..])
        .exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    fail(
        code,
        &format!("pod-init: could not run {:?}: {err}", init.command[0]),
    )
}

/// One byte on the agent's pipe, then the pipe is closed so the command does not inherit it.
/// The write cannot fail while the agent holds the read end; should it fail anyway, the agent
/// runs no probes for this start: a container that never turns Ready, rather than probes run in
/// the wrong place.
fn signal_ready(fd: i32) {
    // SAFETY: writes one byte from a live buffer to a descriptor this process owns, then closes it.
    unsafe {
        if libc::write(fd, b"1".as_ptr().cast(), 1) != 1 {
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                last_os_error("pod-init: telling the agent setup is done")
            );
        }
        libc::close(fd);
    }
}

fn fail(code: i32, msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{msg}");
    std::process::exit(code)
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains a NUL byte", p.display()))
}

fn last_os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn setup(init: &PodInit) -> Result<(), String> {
    if let Some(ns) = &init.netns {
        enter_netns(ns)?;
    }
    // SAFETY: unshare only affects this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) } != 0 {
        return Err(last_os_error("unshare(mount, uts)"));
    }
    // Without this, mounts propagate to the host's shared root mount.
    let root = cstr(Path::new("/"))?;
    // SAFETY: valid NUL-terminated strings; null fs type and data are allowed for MS_PRIVATE.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_os_error("making / private"));
    }
    if let Some(h) = &init.hostname {
        // SAFETY: pointer and length describe the hostname bytes.
        if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
            return Err(last_os_error(&format!("setting hostname {h}")));
        }
    }
    let mut created = Vec::new();
    let result = (|| {
        for b in &init.binds {
            bind(b, &mut created)?;
        }
        if let Some(w) = &init.workdir {
            create_dirs(w, &mut created)?;
            std::env::set_current_dir(w)
                .map_err(|e| format!("changing to working directory {}: {e}", w.display()))?;
        }
        Ok(())
    })();
    if let Some(f) = &init.mountpoints_file {
        record_created(f, &created);
    }
    result
}

fn enter_netns(ns: &str) -> Result<(), String> {
    let path = Path::new("/var/run/netns").join(ns);
    let c = cstr(&path)?;
    // SAFETY: valid path; the fd is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_os_error(&format!(
            "opening network namespace {}",
            path.display()
        )));
    }
    // SAFETY: fd is an open namespace file.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let err = (rc != 0).then(|| last_os_error(&format!("entering network namespace {ns}")));
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    err.map_or(Ok(()), Err)
}

fn create_dirs(path: &Path, created: &mut Vec<PathBuf>) -> Result<(), String> {
    for d in missing_dirs(path, Path::exists) {
        match std::fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", d.display())),
        }
    }
    Ok(())
}

fn bind(b: &Bind, created: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta =
        std::fs::metadata(&b.src).map_err(|e| format!("volume source {}: {e}", b.src.display()))?;
    if meta.is_dir() {
        create_dirs(&b.dst, created)?;
    } else if !b.dst.exists() {
        // A file mounted on a file (subPath of a config map): the target must be a file too.
        if let Some(parent) = b.dst.parent() {
            create_dirs(parent, created)?;
        }
        std::fs::File::create(&b.dst)
            .map_err(|e| format!("creating mount point {}: {e}", b.dst.display()))?;
        created.push(b.dst.clone());
    }
    let (src, dst) = (cstr(&b.src)?, cstr(&b.dst)?);
    // SAFETY: valid NUL-terminated paths; bind mounts ignore fs type and data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!(
            "bind-mounting {} at {}",
            b.src.display(),
            b.dst.display()
        )));
    }
    if b.read_only {
        // A bind mount only becomes read-only through a remount of that mount.
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(last_os_error(&format!(
                "making {} read-only",
                b.dst.display()
            )));
        }
    }
    Ok(())
}

fn record_created(file: &Path, created: &[PathBuf]) {
    if created.is_empty() {
        return;
    }
    let lines: String = created
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    // One append write per container start keeps concurrent starts from interleaving lines.
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(lines.as_bytes()));
    if let Err(e) = result {
        let _ = writeln!(
            std::io::stderr(),
            "pod-init: could not record created mount points in {}: {e}",
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn round_trips_through_the_command_line() {
        let init = PodInit {
            netns: Some("rdc-0011aabb".into()),
            hostname: Some("web-0".into()),
            binds: vec![
                Bind {
                    src: "/var/tmp/v/pvc-1".into(),
                    dst: "/app/data".into(),
                    read_only: false,
                },
                Bind {
                    src: "/var/tmp/p/cm".into(),
                    dst: "/etc/cfg".into(),
                    read_only: true,
                },
            ],
            workdir: Some("/app".into()),
            mountpoints_file: Some("/var/tmp/created".into()),
            ready_fd: Some(7),
            command: s(&["python3", "-m", "http.server", "--bind", "0.0.0.0"]),
        };
        assert_eq!(PodInit::parse(&init.to_args()), Ok(init));
    }

    #[test]
    fn parse_cases() {
        let ok = PodInit::parse(&s(&["--netns=n1", "sleep", "infinity"])).expect("parses");
        assert_eq!(ok.netns.as_deref(), Some("n1"));
        assert_eq!(ok.command, s(&["sleep", "infinity"]));

        let cases: Vec<(Vec<String>, ArgError)> = vec![
            (
                s(&["--netns"]),
                ArgError::MissingValue {
                    flag: "--netns".into(),
                },
            ),
            (
                s(&["--bogus", "x", "--", "a"]),
                ArgError::UnknownFlag {
                    flag: "--bogus".into(),
                },
            ),
            (
                s(&["--bind", "/a", "--", "a"]),
                ArgError::BadBind { value: "/a".into() },
            ),
            (
                s(&["--bind", "/a:rel", "--", "a"]),
                ArgError::BadBind {
                    value: "/a:rel".into(),
                },
            ),
            (
                s(&["--bind", "/a:/b:rx", "--", "a"]),
                ArgError::BadBind {
                    value: "/a:/b:rx".into(),
                },
            ),
            (s(&["--netns", "n", "--"]), ArgError::NoCommand),
            (
                s(&["--ready-fd", "1", "--", "a"]),
                ArgError::BadReadyFd { value: "1".into() },
            ),
            (
                s(&["--ready-fd=x", "--", "a"]),
                ArgError::BadReadyFd { value: "x".into() },
            ),
            (s(&[]), ArgError::NoCommand),
        ];
        for (args, want) in cases {
            assert_eq!(PodInit::parse(&args), Err(want), "{args:?}");
        }
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_options() {
        let p = PodInit::parse(&s(&["--", "--netns", "x"])).expect("parses");
        assert_eq!(p.command, s(&["--netns", "x"]));
        assert_eq!(p.netns, None);
    }

    #[test]
    fn paths_with_colons_are_flagged() {
        let b = Bind {
            src: "/a:b".into(),
            dst: "/c".into(),
            read_only: false,
        };
        assert!(!b.is_representable());
        let b = Bind {
            src: "/a".into(),
            dst: "/c".into(),
            read_only: false,
        };
        assert!(b.is_representable());
    }

    #[test]
    fn missing_dirs_are_listed_outermost_first() {
        let existing = ["/", "/app"];
        let exists = |p: &Path| existing.iter().any(|e| Path::new(e) == p);
        assert_eq!(
            missing_dirs(Path::new("/app/data/x"), exists),
            vec![PathBuf::from("/app/data"), PathBuf::from("/app/data/x")]
        );
        assert!(missing_dirs(Path::new("/app"), exists).is_empty());
    }
}
