//! What the agent knows about a pod it runs, as plain data: each container's state (waiting,
//! running, terminated), its previous termination and restart count, plus the pod's sandbox
//! address. The container lifecycles write it, [`super::status`] turns it into the pod status.
//! Also the pure lifecycle rules: when to restart, and the kubelet's back-off timings.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    pub container_id: Option<String>,
}

impl Terminated {
    /// From a reaped process: the exit code, or 128 + signal when a signal ended it.
    pub fn from_exit(
        code: Option<i32>,
        signal: Option<i32>,
        started_at: SystemTime,
        finished_at: SystemTime,
        container_id: String,
    ) -> Self {
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message: None,
            started_at: Some(started_at),
            finished_at,
            container_id: Some(container_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: SystemTime,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub restart_count: i32,
    pub state: ContainerState,
    pub last_terminated: Option<Terminated>,
    pub started: bool,
    pub ready: bool,
}

impl ContainerView {
    pub fn new(name: &str, image: &str, waiting_reason: &str) -> Self {
        ContainerView {
            name: name.to_string(),
            image: image.to_string(),
            image_id: None,
            container_id: None,
            restart_count: 0,
            state: ContainerState::Waiting {
                reason: waiting_reason.to_string(),
                message: None,
            },
            last_terminated: None,
            started: false,
            ready: false,
        }
    }

    pub fn set_waiting(&mut self, reason: &str, message: Option<String>) {
        self.state = ContainerState::Waiting {
            reason: reason.to_string(),
            message,
        };
        self.started = false;
        self.ready = false;
    }

    /// A new process runs. A restart moves the previous termination to `last_terminated` and
    /// counts.
    pub fn set_running(&mut self, started_at: SystemTime, container_id: String, image_id: String) {
        let previous = std::mem::replace(&mut self.state, ContainerState::Running { started_at });
        if let ContainerState::Terminated(t) = previous {
            self.last_terminated = Some(t);
            self.restart_count += 1;
        } else if self.last_terminated.is_some() {
            // Back-off waiting in between: the termination was moved there already.
            self.restart_count += 1;
        }
        self.container_id = Some(container_id);
        self.image_id = Some(image_id);
        self.started = false;
        self.ready = false;
    }

    pub fn set_terminated(&mut self, t: Terminated) {
        self.state = ContainerState::Terminated(t);
        self.started = false;
        self.ready = false;
    }

    /// Waiting for a restart: the termination becomes `lastState`, as the kubelet shows it
    /// during CrashLoopBackOff.
    pub fn set_back_off(&mut self, message: String) {
        if let ContainerState::Terminated(t) = &self.state {
            self.last_terminated = Some(t.clone());
        }
        self.set_waiting("CrashLoopBackOff", Some(message));
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }
}

/// The whole pod as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub pod_ip: Option<Ipv4Addr>,
    pub start_time: Option<SystemTime>,
    /// All init containers completed (true at once when there are none).
    pub initialized: bool,
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Init,
    Main,
}

/// Whether a container that exited with `exit_code` starts again. Init containers run until
/// they succeed once, whatever the policy, unless the policy is Never.
pub fn should_restart(policy: RestartPolicy, role: Role, exit_code: i32) -> bool {
    match (role, policy) {
        (Role::Init, RestartPolicy::Never) => false,
        (Role::Init, _) => exit_code != 0,
        (Role::Main, RestartPolicy::Always) => true,
        (Role::Main, RestartPolicy::OnFailure) => exit_code != 0,
        (Role::Main, RestartPolicy::Never) => false,
    }
}

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The kubelet's crash-loop back-off: the first restart is immediate; a container that fails
/// again within the current back-off waits out the rest of it; each restart doubles it (10 s up
/// to 5 min); 10 minutes without a restart forget it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashBackoff {
    /// Time of the last restart, and the back-off in force since then.
    entry: Option<(Instant, Duration)>,
}

impl CrashBackoff {
    fn live_entry(&self, at: Instant) -> Option<(Instant, Duration)> {
        self.entry
            .filter(|(last, _)| at.saturating_duration_since(*last) <= 2 * BACKOFF_MAX)
    }

    /// Until when a container that finished at `finished` must wait before its restart.
    pub fn wait_until(&self, finished: Instant) -> Option<Instant> {
        let (last, backoff) = self.live_entry(finished)?;
        (finished.saturating_duration_since(last) < backoff).then_some(last + backoff)
    }

    /// The back-off to report while waiting (the kubelet's "back-off 20s restarting ...").
    pub fn current(&self) -> Duration {
        self.entry.map_or(BACKOFF_INITIAL, |(_, b)| b)
    }

    /// A restart happens at `now`.
    pub fn restarted(&mut self, now: Instant) {
        let next = match self.live_entry(now) {
            Some((_, b)) => (b * 2).min(BACKOFF_MAX),
            None => BACKOFF_INITIAL,
        };
        self.entry = Some((now, next));
    }
}

/// Retries after image or configuration errors: 10 s, doubling to 5 min, reset on success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryBackoff {
    failures: u32,
}

impl RetryBackoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = BACKOFF_INITIAL
            .saturating_mul(1u32 << self.failures.min(6))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The pod phase from its containers, as the kubelet computes it.
pub fn phase(view: &PodView, policy: RestartPolicy) -> &'static str {
    let failed_init = view.init_containers.iter().any(|c| {
        matches!(&c.state, ContainerState::Terminated(t) if t.exit_code != 0)
            && policy == RestartPolicy::Never
    });
    if failed_init {
        return "Failed";
    }
    if !view.initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            ContainerState::Running { .. } => running += 1,
            ContainerState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting to restart after having run counts as stopped.
            ContainerState::Waiting { .. } if c.last_terminated.is_some() => stopped += 1,
            ContainerState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            RestartPolicy::Always => "Running",
            RestartPolicy::OnFailure if stopped == succeeded => "Succeeded",
            RestartPolicy::OnFailure => "Running",
            RestartPolicy::Never if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
        }
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> Terminated {
        Terminated::from_exit(
            Some(code),
            None,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
            "devcluster://1".into(),
        )
    }

    #[test]
    fn exit_statuses_map_to_kubelet_terminations() {
        let ok = term(0);
        assert_eq!((ok.exit_code, ok.reason.as_str()), (0, "Completed"));
        let err = term(1);
        assert_eq!((err.exit_code, err.reason.as_str()), (1, "Error"));
        let killed = Terminated::from_exit(
            None,
            Some(9),
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
            "x".into(),
        );
        assert_eq!(
            (killed.exit_code, killed.signal, killed.reason.as_str()),
            (137, Some(9), "Error")
        );
    }

    #[test]
    fn restart_rules() {
        use RestartPolicy::*;
        for (policy, role, code, want) in [
            (Always, Role::Main, 0, true),
            (Always, Role::Main, 1, true),
            (OnFailure, Role::Main, 0, false),
            (OnFailure, Role::Main, 2, true),
            (Never, Role::Main, 1, false),
            (Always, Role::Init, 0, false),
            (Always, Role::Init, 1, true),
            (OnFailure, Role::Init, 1, true),
            (Never, Role::Init, 1, false),
        ] {
            assert_eq!(
                should_restart(policy, role, code),
                want,
                "{policy:?} {role:?} {code}"
            );
        }
        assert_eq!(RestartPolicy::parse(None), Always);
        assert_eq!(RestartPolicy::parse(Some("Never")), Never);
    }

    #[test]
    fn crash_backoff_first_restart_is_immediate_then_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut b = CrashBackoff::default();
        // Crash right after the first start: restart at once.
        let mut now = t0 + Duration::from_millis(100);
        assert_eq!(b.wait_until(now), None);
        b.restarted(now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            // Crashes again 100 ms after each restart.
            let finished = now + Duration::from_millis(100);
            let until = b.wait_until(finished).expect("in back-off");
            waits.push((until - now).as_secs());
            now = until;
            b.restarted(now);
        }
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn crash_backoff_is_forgotten_after_ten_minutes_of_running() {
        let t0 = Instant::now();
        let mut b = CrashBackoff::default();
        b.restarted(t0);
        b.restarted(t0 + Duration::from_secs(10));
        assert_eq!(b.current(), Duration::from_secs(20));
        // Ran 11 minutes, then crashed: no wait, and the next back-off starts over.
        let finished = t0 + Duration::from_secs(10 + 660);
        assert_eq!(b.wait_until(finished), None);
        b.restarted(finished);
        assert_eq!(b.current(), BACKOFF_INITIAL);
    }

    #[test]
    fn a_crash_after_the_backoff_window_restarts_at_once() {
        let t0 = Instant::now();
        let mut b = CrashBackoff::default();
        b.restarted(t0);
        // Ran 15 s (longer than the 10 s back-off): no wait, but the back-off keeps doubling.
        assert_eq!(b.wait_until(t0 + Duration::from_secs(15)), None);
        b.restarted(t0 + Duration::from_secs(15));
        assert_eq!(b.current(), Duration::from_secs(20));
    }

    #[test]
    fn retry_backoff_doubles_to_the_cap_and_resets() {
        let mut r = RetryBackoff::default();
        let got: Vec<u64> = (0..8).map(|_| r.next_delay().as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        r.reset();
        assert_eq!(r.next_delay().as_secs(), 10);
    }

    #[test]
    fn container_view_transitions_count_restarts() {
        let mut c = ContainerView::new("app", "time-app:v1", "ContainerCreating");
        c.set_running(
            SystemTime::UNIX_EPOCH,
            "devcluster://10".into(),
            "img".into(),
        );
        assert_eq!(c.restart_count, 0);
        c.set_terminated(term(1));
        c.set_back_off("back-off 10s".into());
        assert_eq!(c.last_terminated.as_ref().map(|t| t.exit_code), Some(1));
        assert!(
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        c.set_running(
            SystemTime::UNIX_EPOCH,
            "devcluster://11".into(),
            "img".into(),
        );
        assert_eq!(c.restart_count, 1);
        // Immediate restart (no back-off wait in between).
        c.set_terminated(term(2));
        c.set_running(
            SystemTime::UNIX_EPOCH,
            "devcluster://12".into(),
            "img".into(),
        );
        assert_eq!(c.restart_count, 2);
        assert_eq!(c.last_terminated.as_ref().map(|t| t.exit_code), Some(2));
    }

    fn view(init_done: bool, containers: Vec<ContainerView>) -> PodView {
        PodView {
            pod_ip: None,
            start_time: None,
            initialized: init_done,
            init_containers: vec![],
            containers,
        }
    }

    fn with_state(state: ContainerState, last: Option<Terminated>) -> ContainerView {
        ContainerView {
            state,
            last_terminated: last,
            ..ContainerView::new("c", "i", "x")
        }
    }

    #[test]
    fn phases() {
        use RestartPolicy::*;
        let running = || {
            with_state(
                ContainerState::Running {
                    started_at: SystemTime::UNIX_EPOCH,
                },
                None,
            )
        };
        let creating = || {
            with_state(
                ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                None,
            )
        };
        let backoff = || {
            with_state(
                ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: None,
                },
                Some(term(1)),
            )
        };
        let done = |code| with_state(ContainerState::Terminated(term(code)), None);
        let cases: Vec<(&str, PodView, RestartPolicy, &str)> = vec![
            ("creating", view(true, vec![creating()]), Always, "Pending"),
            (
                "not initialized",
                view(false, vec![creating()]),
                Always,
                "Pending",
            ),
            (
                "running",
                view(true, vec![running(), backoff()]),
                Always,
                "Running",
            ),
            (
                "crash looping",
                view(true, vec![backoff()]),
                Always,
                "Running",
            ),
            (
                "one creating one running",
                view(true, vec![running(), creating()]),
                Always,
                "Pending",
            ),
            (
                "job done",
                view(true, vec![done(0)]),
                OnFailure,
                "Succeeded",
            ),
            (
                "job failed, retrying",
                view(true, vec![done(1)]),
                OnFailure,
                "Running",
            ),
            (
                "never, failed",
                view(true, vec![done(1), done(0)]),
                Never,
                "Failed",
            ),
            (
                "never, succeeded",
                view(true, vec![done(0)]),
                Never,
                "Succeeded",
            ),
            (
                "always, exited 0",
                view(true, vec![done(0)]),
                Always,
                "Running",
            ),
        ];
        for (name, v, policy, want) in cases {
            assert_eq!(phase(&v, policy), want, "{name}");
        }
        let mut failed_init = view(false, vec![creating()]);
        failed_init.init_containers = vec![done(1)];
        assert_eq!(phase(&failed_init, Never), "Failed");
        assert_eq!(phase(&failed_init, Always), "Pending");
    }
}
