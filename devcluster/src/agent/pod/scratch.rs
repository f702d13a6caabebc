//! A container's own writable `/tmp`, `/run` and `/var/log`, as an image's writable layer would
//! give it: directories in the pod's scratch dir, bind-mounted over the host's in the container's
//! mount namespace. Two Debian nginx pods then no longer share `/run/nginx.pid` or their logs, and
//! whatever an app leaves in `/tmp` goes away with its pod.
//!
//! `/var/log` starts with the host's directory tree (directories only, no files), as an image
//! ships `/var/log/nginx` empty: daemons refuse to start when their log directory is missing.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::podinit::Bind;

/// The host directories every container gets a private copy of, and their modes.
pub const PRIVATE_DIRS: &[(&str, u32)] = &[("/tmp", 0o1777), ("/run", 0o755), ("/var/log", 0o755)];

/// How deep `/var/log`'s directory tree is copied; app log dirs are one or two levels down.
const LOG_TREE_DEPTH: usize = 3;

/// The binds that give a container its private dirs, to be mounted before its volumes (so a volume
/// at `/var/log/app` lands on top). A dir is left shared when the container mounts a volume exactly
/// there, or when a path the container must reach from the host lies inside it (the devcluster's
/// own directory, the binaries, the runtime file: say a checkout under `/tmp`).
pub fn private_binds(root: &Path, volume_dsts: &[&Path], must_see: &[&Path]) -> Vec<Bind> {
    PRIVATE_DIRS
        .iter()
        .map(|(dir, _)| Path::new(dir))
        .filter(|dir| !volume_dsts.contains(dir))
        .filter(|dir| !must_see.iter().any(|p| p.starts_with(dir)))
        .map(|dir| Bind {
            src: source(root, dir),
            dst: dir.to_path_buf(),
            read_only: false,
        })
        .collect()
}

/// Where the private copy of `dir` lives under `root`: `/var/log` -> `root/var/log`.
fn source(root: &Path, dir: &Path) -> PathBuf {
    root.join(dir.strip_prefix("/").unwrap_or(dir))
}

/// Makes the sources of `binds`. Idempotent: a restarted container finds what it wrote before.
pub fn prepare(binds: &[Bind]) -> io::Result<()> {
    for b in binds {
        let mode = PRIVATE_DIRS
            .iter()
            .find(|(d, _)| Path::new(d) == b.dst)
            .map_or(0o755, |(_, m)| *m);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&b.src)?;
        // The umask may have trimmed the sticky, world-writable /tmp.
        fs::set_permissions(&b.src, fs::Permissions::from_mode(mode))?;
        if b.dst == Path::new("/var/log") {
            copy_dir_tree(&b.dst, &b.src, LOG_TREE_DEPTH)?;
        }
    }
    Ok(())
}

/// Recreates the directories under `from` (not the files) under `to`, with their modes and owners.
fn copy_dir_tree(from: &Path, to: &Path, depth: usize) -> io::Result<()> {
    if depth == 0 {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        let target = to.join(entry.file_name());
        if !target.exists() {
            fs::create_dir(&target)?;
            fs::set_permissions(&target, meta.permissions())?;
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()))?;
        }
        copy_dir_tree(&entry.path(), &target, depth - 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsts(binds: &[Bind]) -> Vec<&str> {
        binds.iter().map(|b| b.dst.to_str().unwrap()).collect()
    }

    #[test]
    fn which_dirs_a_container_gets_of_its_own() {
        let root = Path::new("/var/tmp/rdc/pods/p/rootfs/app");
        let layout = Path::new("/var/tmp/rdc");
        let bin = Path::new("/src/rollout/target/debug");
        // (what, volume mount paths, paths the container must see, private dirs it gets)
        type Case<'a> = (&'a str, Vec<&'a Path>, Vec<&'a Path>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "all three",
                vec![],
                vec![layout, bin],
                vec!["/tmp", "/run", "/var/log"],
            ),
            (
                "a volume at /tmp wins",
                vec![Path::new("/tmp")],
                vec![layout],
                vec!["/run", "/var/log"],
            ),
            (
                "a volume below /var/log does not",
                vec![Path::new("/var/log/app")],
                vec![layout],
                vec!["/tmp", "/run", "/var/log"],
            ),
            (
                "a checkout under /tmp keeps /tmp shared",
                vec![],
                vec![layout, Path::new("/tmp/co/target/debug")],
                vec!["/run", "/var/log"],
            ),
            (
                "a devcluster dir under /tmp too",
                vec![],
                vec![Path::new("/tmp/rdc")],
                vec!["/run", "/var/log"],
            ),
        ];
        for (name, volumes, must_see, want) in cases {
            let binds = private_binds(root, &volumes, &must_see);
            assert_eq!(dsts(&binds), want, "{name}");
            assert!(
                binds
                    .iter()
                    .all(|b| b.src.starts_with(root) && !b.read_only),
                "{name}"
            );
        }
        assert_eq!(private_binds(root, &[], &[])[2].src, root.join("var/log"));
    }

    #[test]
    fn prepare_makes_a_sticky_tmp_and_copies_the_log_tree_without_files() {
        let root = std::env::temp_dir().join(format!("scratch-test-{}", std::process::id()));
        let binds = private_binds(&root, &[], &[]);
        prepare(&binds).unwrap();
        let tmp = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        assert!(root.join("run").is_dir());
        // Whatever directories the host's /var/log has, the copy has, and no file.
        for entry in fs::read_dir("/var/log").unwrap().flatten() {
            let copy = root.join("var/log").join(entry.file_name());
            assert_eq!(copy.is_dir(), entry.path().is_dir(), "{}", copy.display());
            assert!(!copy.is_file(), "{} was copied", copy.display());
        }
        prepare(&binds).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
