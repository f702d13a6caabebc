//! End-to-end checks of the built `time-app` binary: a real process on a free 127.0.0.1 port with
//! a temporary `DATA_DIR`, spoken to over plain HTTP/1.1.
//!
//! Every wait is bounded: the start line, each request and each exit have a deadline.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_time-app");
const START_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh data directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("time-app-it-{}-{name}-{nanos}", std::process::id()));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running app; killed if a test fails before stopping it.
struct App {
    child: Child,
    port: u16,
    start_line: String,
    _stdout: Receiver<String>,
}

impl App {
    /// Starts the app with `env` and waits for its start line.
    fn start(data_dir: &Path, env: &[(&str, &str)]) -> App {
        // The port is free when picked but could be taken before the app binds; try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = app_command(data_dir, port, env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn time-app");
            let stdout = child.stdout.take().expect("piped stdout");
            let lines = spawn_line_reader(stdout);
            match wait_for_start_line(&lines) {
                Some(start_line) => {
                    // Let the app's own errors show up in the test output.
                    if let Some(stderr) = child.stderr.take() {
                        thread::spawn(move || {
                            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                                eprintln!("[time-app stderr] {line}");
                            }
                        });
                    }
                    return App {
                        child,
                        port,
                        start_line,
                        _stdout: lines,
                    };
                }
                None => {
                    let _ = child.kill();
                    let status = child.wait();
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    last_error = format!("status {status:?}, stderr: {stderr}");
                }
            }
        }
        panic!("time-app did not start: {last_error}");
    }

    fn get(&self, path: &str) -> Reply {
        http_get(self.port, path)
    }

    fn visits(&self) -> serde_json::Value {
        let reply = self.get("/visits");
        assert_eq!(reply.status, 200, "GET /visits: {}", reply.body);
        serde_json::from_str(&reply.body).expect("/visits is JSON")
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> ExitStatus {
        // kill(1) sends the signal, so this test needs no unsafe code.
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "send SIGTERM");
        wait_exit(&mut self.child, EXIT_TIMEOUT)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    fn kill_hard(mut self) {
        self.child.kill().expect("SIGKILL time-app");
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn app_command(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PORT", port.to_string())
        .env("DATA_DIR", data_dir)
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("pick a free port")
}

fn spawn_line_reader(stdout: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The start line, or None if the app exited or stayed silent past the deadline.
fn wait_for_start_line(lines: &Receiver<String>) -> Option<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("time-app listening:") => return Some(line),
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll time-app") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("time-app did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the app to its exit (it is expected to exit on its own) and returns status and stderr.
fn run_to_exit(data_dir: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = app_command(data_dir, free_port(), env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn time-app");
    let status = wait_exit(&mut child, EXIT_TIMEOUT);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status, stderr)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Asserts the identity headers and the version/pod lines of a text body.
    fn assert_identity(&self, version: &str, pod: &str) {
        assert_eq!(self.header("x-app-version"), Some(version), "{self:?}");
        assert_eq!(self.header("x-pod-name"), Some(pod), "{self:?}");
    }

    fn assert_text_identity(&self, version: &str, pod: &str) {
        self.assert_identity(version, pod);
        let lines: Vec<&str> = self.body.lines().collect();
        assert!(
            lines.contains(&format!("version: {version}").as_str()),
            "{self:?}"
        );
        assert!(lines.contains(&format!("pod: {pod}").as_str()), "{self:?}");
    }
}

/// One GET over a fresh connection (`Connection: close`, so the body ends at EOF).
fn http_get(port: u16, path: &str) -> Reply {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), REQUEST_TIMEOUT)
        .unwrap_or_else(|err| panic!("connect to 127.0.0.1:{port}: {err}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .expect("set write timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|err| panic!("read reply to GET {path}: {err}"));
    parse_reply(&String::from_utf8_lossy(&raw))
}

fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_string(),
    };
    assert_ne!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "this client reads only content-length bodies"
    );
    reply
}

fn assert_time_line(line: &str) {
    let clock = line
        .strip_prefix("Moscow time: ")
        .unwrap_or_else(|| panic!("not a time line: {line:?}"));
    let fields: Vec<u32> = clock
        .split(':')
        .map(|field| {
            assert_eq!(field.len(), 2, "{line:?}");
            field.parse().expect("digits")
        })
        .collect();
    assert_eq!(fields.len(), 3, "{line:?}");
    assert!(
        fields[0] < 24 && fields[1] < 60 && fields[2] < 60,
        "{line:?}"
    );
}

#[test]
fn serves_time_with_identity_and_counts_visits() {
    let dir = TempDir::new("basic");
    let data_dir = dir.path().join("not-yet-created");
    let app = App::start(&data_dir, &[("APP_VERSION", "v7"), ("POD_NAME", "web-3")]);
    for part in [
        "version=v7",
        "pod=web-3",
        &format!("port={}", app.port),
        &format!("data_dir={}", data_dir.display()),
        "visits_on_record=0",
    ] {
        assert!(
            app.start_line.contains(part),
            "{part} in {}",
            app.start_line
        );
    }

    let root = app.get("/");
    assert_eq!(root.status, 200, "{root:?}");
    root.assert_text_identity("v7", "web-3");
    assert_time_line(root.body.lines().next().unwrap_or_default());

    let health = app.get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    health.assert_text_identity("v7", "web-3");

    let missing = app.get("/no-such-page");
    assert_eq!(missing.status, 404, "{missing:?}");
    missing.assert_text_identity("v7", "web-3");

    assert_eq!(app.get("/").status, 200);

    let reply = app.get("/visits");
    reply.assert_identity("v7", "web-3");
    let visits: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(visits["pod"], "web-3");
    assert_eq!(visits["version"], "v7");
    assert_eq!(
        visits["total"], 2,
        "healthz and 404 are not visits: {visits}"
    );
    let list = visits["visits"].as_array().expect("visits array");
    assert_eq!(list.len(), 2);
    for visit in list {
        assert_time_line(visit.as_str().expect("string"));
    }
    assert_eq!(list[0].as_str(), root.body.lines().next());

    let on_disk = std::fs::read_to_string(data_dir.join("visits.log")).expect("visits.log");
    assert_eq!(on_disk.lines().count(), 2, "{on_disk:?}");

    let status = app.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
}

#[test]
fn visits_survive_restarts_and_crashes() {
    let dir = TempDir::new("restart");
    let env = [("APP_VERSION", "v1"), ("POD_NAME", "time-app-0")];

    let app = App::start(dir.path(), &env);
    assert_eq!(app.get("/").status, 200);
    assert_eq!(app.get("/").status, 200);
    assert_eq!(app.terminate().code(), Some(0));

    // A new version on the same volume sees the old visits.
    let app = App::start(
        dir.path(),
        &[("APP_VERSION", "v2"), ("POD_NAME", "time-app-0")],
    );
    assert!(
        app.start_line.contains("visits_on_record=2"),
        "{}",
        app.start_line
    );
    assert_eq!(app.visits()["total"], 2);
    assert_eq!(app.get("/").status, 200);
    let visits = app.visits();
    assert_eq!(visits["total"], 3);
    assert_eq!(visits["version"], "v2");
    app.kill_hard();

    let app = App::start(dir.path(), &env);
    assert_eq!(app.visits()["total"], 3, "visits survive SIGKILL");
    assert_eq!(app.terminate().code(), Some(0));
}

#[test]
fn torn_last_line_is_skipped_and_new_visits_stay_readable() {
    let dir = TempDir::new("torn");
    std::fs::create_dir_all(dir.path()).expect("create data dir");
    std::fs::write(
        dir.path().join("visits.log"),
        "Moscow time: 10:00:00\nMoscow time: 10:0",
    )
    .expect("seed visits.log");
    let app = App::start(dir.path(), &[]);
    assert_eq!(app.visits()["total"], 1);
    assert_eq!(app.get("/").status, 200);
    let visits = app.visits();
    assert_eq!(visits["total"], 2, "{visits}");
    assert_eq!(visits["visits"][0], "Moscow time: 10:00:00");
}

#[test]
fn fail_rate_one_answers_500_and_records_nothing() {
    let dir = TempDir::new("fail");
    let app = App::start(
        dir.path(),
        &[
            ("APP_VERSION", "bad"),
            ("POD_NAME", "p"),
            ("FAIL_RATE", "1"),
        ],
    );
    assert!(app.start_line.contains("FAIL_RATE=1"), "{}", app.start_line);
    for _ in 0..5 {
        let reply = app.get("/");
        assert_eq!(reply.status, 500, "{reply:?}");
        reply.assert_text_identity("bad", "p");
        assert!(reply.body.contains("FAIL_RATE"), "{reply:?}");
    }
    assert_eq!(app.get("/healthz").status, 200, "only / is affected");
    assert_eq!(app.visits()["total"], 0);
}

#[test]
fn fail_rate_zero_never_fails() {
    let dir = TempDir::new("fail-zero");
    let app = App::start(dir.path(), &[("FAIL_RATE", "0")]);
    for _ in 0..5 {
        assert_eq!(app.get("/").status, 200);
    }
    assert_eq!(app.visits()["total"], 5);
}

#[test]
fn not_ready_seconds_gives_503_then_200() {
    let dir = TempDir::new("not-ready");
    let started = Instant::now();
    let app = App::start(dir.path(), &[("NOT_READY_SECONDS", "3")]);
    let first = app.get("/");
    assert_eq!(first.status, 503, "{first:?}");
    assert!(first.body.contains("NOT_READY_SECONDS=3"), "{first:?}");
    assert_eq!(app.get("/healthz").status, 200, "healthz ignores the knob");

    let deadline = Instant::now() + Duration::from_secs(15);
    let ready_after = loop {
        let reply = app.get("/");
        match reply.status {
            200 => break started.elapsed(),
            503 => {}
            other => panic!("unexpected status {other}: {reply:?}"),
        }
        assert!(Instant::now() < deadline, "still 503 after 15 s");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ready_after >= Duration::from_secs(3),
        "ready after {ready_after:?}"
    );
    assert_eq!(app.visits()["total"], 1, "503 answers are not visits");
}

#[test]
fn latency_ms_delays_root() {
    let dir = TempDir::new("latency");
    let app = App::start(dir.path(), &[("LATENCY_MS", "400")]);
    let before = Instant::now();
    assert_eq!(app.get("/").status, 200);
    let took = before.elapsed();
    assert!(took >= Duration::from_millis(400), "took {took:?}");
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let dir = TempDir::new("graceful");
    let app = App::start(dir.path(), &[("LATENCY_MS", "1500")]);
    let port = app.port;
    let request = thread::spawn(move || http_get(port, "/"));
    // Well inside the 1.5 s delay, so the request is being handled when the signal lands.
    thread::sleep(Duration::from_millis(500));
    let status = app.terminate();
    assert_eq!(status.code(), Some(0));
    let reply = request.join().expect("request thread");
    assert_eq!(reply.status, 200, "{reply:?}");
    let on_disk = std::fs::read_to_string(dir.path().join("visits.log")).expect("visits.log");
    assert_eq!(on_disk.lines().count(), 1, "{on_disk:?}");
}

#[test]
fn crash_at_start_exits_with_status_1() {
    let dir = TempDir::new("crash");
    for value in ["1", "true"] {
        let (status, stderr) = run_to_exit(dir.path(), &[("CRASH_AT_START", value)]);
        assert_eq!(status.code(), Some(1), "CRASH_AT_START={value}: {stderr}");
        assert!(stderr.contains("CRASH_AT_START"), "{stderr}");
    }
}

#[test]
fn invalid_knobs_exit_with_status_2_naming_the_variable() {
    let dir = TempDir::new("invalid");
    let cases = [
        ("FAIL_RATE", "lots"),
        ("FAIL_RATE", "2"),
        ("LATENCY_MS", "-1"),
        ("NOT_READY_SECONDS", "soon"),
        ("CRASH_AT_START", "perhaps"),
        ("PORT", "http"),
    ];
    for (name, value) in cases {
        let (status, stderr) = run_to_exit(dir.path(), &[(name, value)]);
        assert_eq!(status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name} named in {stderr:?}");
    }
}

#[test]
fn metrics_count_answers_by_version_and_code_and_time_them() {
    let dir = TempDir::new("metrics");
    let app = App::start(
        dir.path(),
        &[
            ("APP_VERSION", "v9"),
            ("POD_NAME", "p"),
            ("FAIL_RATE", "1"),
            ("LATENCY_MS", "60"),
        ],
    );
    for _ in 0..3 {
        assert_eq!(app.get("/").status, 500);
    }
    assert_eq!(app.get("/healthz").status, 200);
    let metrics = app.get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let body = &metrics.body;
    assert!(
        body.contains(r#"http_requests_total{version="v9",code="500"} 3"#),
        "{body}"
    );
    assert!(
        body.contains(r#"http_requests_total{version="v9",code="200"} 1"#),
        "scrapes are not counted: {body}"
    );
    // The three slow answers fall above the 50 ms bucket, the quick /healthz below it.
    assert!(
        body.contains(r#"http_request_duration_seconds_bucket{le="0.05",version="v9"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"http_request_duration_seconds_count{version="v9"} 4"#),
        "{body}"
    );
}
