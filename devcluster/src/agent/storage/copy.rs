//! Volume directories on disk: make an empty one, or clone one by copying it recursively with
//! each entry's mode, owner and times, as a CSI driver's clone would give. A clone is built under
//! a temporary name and renamed into place, so a directory under its final name is always
//! complete, even if the agent died half way through an earlier attempt.
//!
//! The source may be the claim of a running pod, as CSI drivers allow. Files are copied one after
//! another while the app may still write, so the copy is not one point-in-time snapshot: each
//! file is as it was when read, a file appended to meanwhile may end in a partial last record
//! (the time app skips a torn last line), and entries removed meanwhile are left out rather than
//! failing the clone.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a fresh volume: writable by whatever user the pod's processes run as (the same choice
/// as minikube's hostpath provisioner).
const FRESH_VOLUME_MODE: u32 = 0o777;

/// Creates the empty volume directory `dir`; an existing one is kept as it is.
pub fn make_empty(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(FRESH_VOLUME_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `dir` a copy of `source`. If `dir` already exists it is the result of an earlier,
/// completed clone (see the module doc) and is kept.
pub fn make_clone(source: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let partial = partial_path(dir);
    if fs::symlink_metadata(&partial).is_ok() {
        fs::remove_dir_all(&partial)?;
    }
    copy_tree(source, &partial)?;
    fs::rename(&partial, dir)
}

/// Removes a volume directory; one that is already gone is fine. Says whether there was one.
pub fn remove(dir: &Path) -> io::Result<bool> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn partial_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.partial"))
}

/// Copies `src` to `dst` (which must not exist), recursing into directories. Regular files,
/// directories and symlinks are copied; sockets, fifos and device nodes are skipped, as they
/// carry no data.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            let (from, to) = (entry.path(), dst.join(entry.file_name()));
            match copy_tree(&from, &to) {
                // The source may be in use (a clone of a running pod's claim, as CSI drivers
                // allow): an entry its app removed while we copied is simply not in the copy.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && fs::symlink_metadata(&from).is_err() =>
                {
                    let _ = fs::remove_dir_all(&to).or_else(|_| fs::remove_file(&to));
                }
                r => r?,
            }
        }
    } else if kind.is_file() {
        fs::copy(src, dst)?;
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else {
        return Ok(());
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    // A directory gets its mode only after its entries are in, so a read-only source directory
    // does not stop its own copy; symlinks have no mode of their own on Linux.
    if !kind.is_symlink() {
        fs::set_permissions(dst, meta.permissions())?;
    }
    set_times(dst, &meta)
}

/// Sets access and modification times (with nanoseconds) without following a symlink.
fn set_times(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: c_path is a valid NUL-terminated string and `times` holds exactly the two entries
    // utimensat reads; both outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A scratch directory removed when the test ends.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "rdc-copy-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn set_mtime(p: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        fs::File::open(p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }

    /// A source volume: a visits file, a read-only nested directory and a symlink, all with old
    /// times and unusual modes.
    fn source_tree(root: &Path) -> PathBuf {
        let src = root.join("pvc-src");
        fs::create_dir_all(src.join("nested/deeper")).unwrap();
        fs::write(src.join("visits.log"), "2024-01-01T00:00:00+03:00\n").unwrap();
        fs::write(src.join("nested/deeper/blob"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("visits.log", src.join("latest")).unwrap();
        fs::set_permissions(src.join("visits.log"), fs::Permissions::from_mode(0o640)).unwrap();
        set_mtime(&src.join("visits.log"), 3600);
        set_mtime(&src.join("nested/deeper/blob"), 7200);
        set_mtime(&src.join("nested/deeper"), 5000);
        fs::set_permissions(src.join("nested"), fs::Permissions::from_mode(0o555)).unwrap();
        set_mtime(&src.join("nested"), 9000);
        src
    }

    #[test]
    fn clone_preserves_content_modes_times_and_links() {
        let s = Scratch::new("clone");
        let src = source_tree(&s.0);
        let dst = s.0.join("pvc-new");
        make_clone(&src, &dst).unwrap();

        for rel in ["visits.log", "nested/deeper/blob"] {
            assert_eq!(
                fs::read(src.join(rel)).unwrap(),
                fs::read(dst.join(rel)).unwrap(),
                "content of {rel}"
            );
        }
        for rel in [
            "",
            "visits.log",
            "nested",
            "nested/deeper",
            "nested/deeper/blob",
        ] {
            let (a, b) = (
                fs::metadata(src.join(rel)).unwrap(),
                fs::metadata(dst.join(rel)).unwrap(),
            );
            assert_eq!(a.mode(), b.mode(), "mode of {rel:?}");
            assert_eq!(
                (a.mtime(), a.mtime_nsec()),
                (b.mtime(), b.mtime_nsec()),
                "mtime of {rel:?}"
            );
            assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {rel:?}");
        }
        assert_eq!(
            fs::read_link(dst.join("latest")).unwrap(),
            Path::new("visits.log")
        );
        assert!(!partial_path(&dst).exists(), "no partial copy left behind");

        // The clone is independent of its source.
        fs::write(dst.join("visits.log"), "changed").unwrap();
        assert_ne!(fs::read(src.join("visits.log")).unwrap(), b"changed");
    }

    #[test]
    fn clone_is_idempotent_and_discards_partial_attempts() {
        let s = Scratch::new("retry");
        let src = source_tree(&s.0);
        let dst = s.0.join("pvc-new");
        // A crashed earlier attempt left a half copy under the temporary name.
        fs::create_dir(partial_path(&dst)).unwrap();
        fs::write(partial_path(&dst).join("junk"), "x").unwrap();
        make_clone(&src, &dst).unwrap();
        assert!(!dst.join("junk").exists());
        assert!(dst.join("visits.log").is_file());

        // A finished clone is kept, not copied again over files the pod may already have changed.
        fs::write(dst.join("visits.log"), "written by the new pod").unwrap();
        make_clone(&src, &dst).unwrap();
        assert_eq!(
            fs::read_to_string(dst.join("visits.log")).unwrap(),
            "written by the new pod"
        );
    }

    #[test]
    fn clone_of_missing_source_fails_and_leaves_nothing() {
        let s = Scratch::new("missing");
        let dst = s.0.join("pvc-new");
        assert!(make_clone(&s.0.join("nope"), &dst).is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn empty_volume_is_world_writable_and_kept_if_present() {
        let s = Scratch::new("empty");
        let dir = s.0.join("pvc-1");
        make_empty(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o777);
        fs::write(dir.join("data"), "keep").unwrap();
        make_empty(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("data")).unwrap(), "keep");
        assert!(remove(&dir).unwrap(), "removed");
        assert!(!dir.exists());
        assert!(!remove(&dir).unwrap(), "already gone is fine");
    }
}
