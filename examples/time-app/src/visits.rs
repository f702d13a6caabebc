//! The visit record: `visits.log` on the pod's data volume, one line per visit.
//!
//! The file is only ever appended to, one whole line per `write`, under a lock, and synced before
//! the visit counts as recorded. A crash can therefore leave at most one torn line at the end.
//! Reading ignores a line without its newline, and opening the file ends such a line first, so the
//! next visit starts on a line of its own and the torn fragment stays skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file name inside `DATA_DIR`.
pub const VISITS_FILE: &str = "visits.log";

const RECORD_PREFIX: &str = "Moscow time: ";

/// What a visits file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VisitLog {
    /// Complete visit records, oldest first.
    pub visits: Vec<String>,
    /// Lines that were not visit records (a torn write, a foreign line).
    pub skipped: usize,
}

/// Splits a visits file into records, leaving out anything that is not a complete record.
pub fn parse_visits(contents: &str) -> VisitLog {
    let mut log = VisitLog::default();
    // `split_inclusive` keeps the newline, which tells a finished line from a torn tail.
    for line in contents.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(record) if is_visit_record(record) => log.visits.push(record.to_string()),
            _ => log.skipped += 1,
        }
    }
    log
}

/// Whether `line` (without its newline) is a visit record, `Moscow time: HH:MM:SS`.
pub fn is_visit_record(line: &str) -> bool {
    let Some(clock) = line.strip_prefix(RECORD_PREFIX) else {
        return false;
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let limits = [24, 60, 60];
    fields.len() == limits.len()
        && fields.iter().zip(limits).all(|(field, limit)| {
            field.len() == 2
                && field.bytes().all(|byte| byte.is_ascii_digit())
                && field.parse::<u32>().is_ok_and(|value| value < limit)
        })
}

/// A failure to keep or read the visit record.
#[derive(Debug, thiserror::Error)]
pub enum VisitStoreError {
    #[error("create data directory {dir}")]
    CreateDataDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open visits file {path}")]
    OpenVisitsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("append a visit to {path}")]
    AppendVisit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read visits file {path}")]
    ReadVisitsFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The open visits file. Its methods block; call them off the async runtime.
#[derive(Debug)]
pub struct VisitStore {
    path: PathBuf,
    // One lock serialises appends and reads, so a read never sees half of a line this process
    // is writing and two visits never interleave.
    file: Mutex<File>,
}

impl VisitStore {
    /// Opens (creating if needed) `visits.log` in `data_dir`, and ends a torn last line.
    pub fn open(data_dir: &Path) -> Result<Self, VisitStoreError> {
        fs::create_dir_all(data_dir).map_err(|source| VisitStoreError::CreateDataDir {
            dir: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(VISITS_FILE);
        let open_error = |source| VisitStoreError::OpenVisitsFile {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(open_error)?;
        let len = file.metadata().map_err(open_error)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).map_err(open_error)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")
                    .and_then(|()| file.sync_data())
                    .map_err(open_error)?;
            }
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// Where the visits are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it to disk.
    pub fn append(&self, record: &str) -> Result<(), VisitStoreError> {
        let line = format!("{record}\n");
        let mut file = self.lock();
        // One write of the whole line: with O_APPEND it lands at the end in one piece.
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|source| VisitStoreError::AppendVisit {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads every complete record.
    pub fn read(&self) -> Result<VisitLog, VisitStoreError> {
        let _guard = self.lock();
        let bytes = fs::read(&self.path).map_err(|source| VisitStoreError::ReadVisitsFile {
            path: self.path.clone(),
            source,
        })?;
        // Bytes that are not UTF-8 can only come from damage; they fail the record check.
        Ok(parse_visits(&String::from_utf8_lossy(&bytes)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        // A panic while holding the lock cannot leave the file half-updated in memory (the
        // state is on disk), so a poisoned lock is still safe to use.
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_visits_cases() {
        let cases: &[(&str, &[&str], usize, &str)] = &[
            ("", &[], 0, "empty file"),
            (
                "Moscow time: 16:46:01\n",
                &["Moscow time: 16:46:01"],
                0,
                "one record",
            ),
            (
                "Moscow time: 16:46:01\nMoscow time: 16:46:11\n",
                &["Moscow time: 16:46:01", "Moscow time: 16:46:11"],
                0,
                "two records, oldest first",
            ),
            (
                "Moscow time: 16:46:01\nMoscow ti",
                &["Moscow time: 16:46:01"],
                1,
                "torn tail is skipped",
            ),
            (
                "Moscow time: 16:46:01",
                &[],
                1,
                "a record without its newline may be torn",
            ),
            (
                "Moscow ti\nMoscow time: 00:00:00\n",
                &["Moscow time: 00:00:00"],
                1,
                "torn line ended on reopen, next record intact",
            ),
            ("\n\n", &[], 2, "blank lines"),
            (
                "hello\nMoscow time: 23:59:59\n",
                &["Moscow time: 23:59:59"],
                1,
                "foreign line",
            ),
        ];
        for (contents, visits, skipped, why) in cases {
            let log = parse_visits(contents);
            assert_eq!(log.visits, *visits, "{why}");
            assert_eq!(log.skipped, *skipped, "{why}");
        }
    }

    #[test]
    fn is_visit_record_cases() {
        let cases: &[(&str, bool)] = &[
            ("Moscow time: 00:00:00", true),
            ("Moscow time: 23:59:59", true),
            ("Moscow time: 24:00:00", false),
            ("Moscow time: 12:60:00", false),
            ("Moscow time: 12:00:60", false),
            ("Moscow time: 1:00:00", false),
            ("Moscow time: 12:00", false),
            ("Moscow time: 12:00:00:00", false),
            ("Moscow time: +1:00:00", false),
            ("Moscow time: 12:00:00 ", false),
            ("moscow time: 12:00:00", false),
            ("Moscow time: 12:00:0", false),
            ("", false),
        ];
        for (line, want) in cases {
            assert_eq!(is_visit_record(line), *want, "{line:?}");
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "time-app-unit-{}-{name}-{}",
            std::process::id(),
            crate::clock::now_unix_secs()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn store_appends_reads_and_survives_reopen() {
        let dir = temp_dir("reopen").join("nested");
        let store = VisitStore::open(&dir).expect("open creates the directory");
        store.append("Moscow time: 01:02:03").expect("append");
        store.append("Moscow time: 01:02:04").expect("append");
        drop(store);
        let store = VisitStore::open(&dir).expect("reopen");
        store.append("Moscow time: 01:02:05").expect("append");
        let log = store.read().expect("read");
        assert_eq!(
            log.visits,
            [
                "Moscow time: 01:02:03",
                "Moscow time: 01:02:04",
                "Moscow time: 01:02:05"
            ]
        );
        assert_eq!(log.skipped, 0);
        let _ = fs::remove_dir_all(dir.parent().unwrap_or(&dir));
    }

    #[test]
    fn open_ends_a_torn_line_so_new_visits_stay_readable() {
        let dir = temp_dir("torn");
        fs::create_dir_all(&dir).expect("create test dir");
        fs::write(dir.join(VISITS_FILE), "Moscow time: 10:00:00\nMoscow t").expect("seed");
        let store = VisitStore::open(&dir).expect("open");
        store.append("Moscow time: 10:00:01").expect("append");
        let log = store.read().expect("read");
        assert_eq!(
            log.visits,
            ["Moscow time: 10:00:00", "Moscow time: 10:00:01"]
        );
        assert_eq!(log.skipped, 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
