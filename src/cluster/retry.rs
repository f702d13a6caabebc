//! Surviving API faults: which failures of a call are worth another try (429, 500, 502, 503,
//! 504 and a connection that failed, was reset or timed out), how long to wait before it
//! (exponential back-off with jitter, or the server's `Retry-After`), and until when (the
//! caller's deadline: a step's deadline while a step runs, [`DEFAULT_BUDGET`] elsewhere).
//!
//! Everything that decides is pure ([`Backoff::delay`], [`wait_before_retry`], [`fault_of`]);
//! [`retrying`] is the one loop that sleeps, and both clusters (the real one and the fake that
//! can inject faults) send every call but the proxied probes through it. A conflict (409) is
//! never retried here: it means someone else wrote first, and the executor reads again and
//! decides again.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::ApiError;

/// How long a call may keep retrying when no step deadline bounds it (commands such as
/// `status` or `pause`, the lease's renewals, the checks before a rollout starts).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// The longest `Retry-After` honoured as it is; a longer one is cut to this (the deadline
/// still bounds the whole).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// An exponential back-off: the n-th wait (from 0) is drawn from the upper half of
/// `first * 2^n`, capped at `max` ("equal jitter": never less than half, so retries of many
/// clients spread out without any of them hammering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

/// The back-off of API calls and of re-established watches.
pub const API_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_secs(4),
};

impl Backoff {
    /// The wait before retry `attempt` (0 for the first retry); `jitter` in `[0, 1]`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .first
            .checked_mul(2u32.saturating_pow(attempt.min(30)))
            .unwrap_or(self.max)
            .min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Why a call failed, when another try may go better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429: the API server asks to come back later (after `retry_after` when it said).
    Throttled { retry_after: Option<Duration> },
    /// 500, 502, 503, 504: the API server (or what is in front of it) failed for now.
    ServerError,
    /// No answer: refused, reset, timed out.
    Connection,
}

/// The fault behind `error`, or `None` when another try would get the same answer (not found,
/// a conflict, a refusal by validation or RBAC).
pub fn fault_of(error: &ApiError) -> Option<Fault> {
    match error {
        ApiError::Unavailable {
            code: 429,
            retry_after,
            ..
        } => Some(Fault::Throttled {
            retry_after: *retry_after,
        }),
        ApiError::Unavailable { .. } => Some(Fault::ServerError),
        ApiError::Unreachable(_) => Some(Fault::Connection),
        ApiError::NotFound
        | ApiError::Conflict(_)
        | ApiError::AlreadyExists(_)
        | ApiError::Refused { .. } => None,
    }
}

/// True for the HTTP statuses that say "not now" rather than "no".
pub fn is_transient_status(code: u16) -> bool {
    matches!(code, 429 | 500 | 502 | 503 | 504)
}

/// How long to wait before retry `attempt` after `fault`, or `None` when that wait would not
/// end before the time `left` (the caller's deadline): then the fault is the answer.
pub fn wait_before_retry(
    fault: Fault,
    attempt: u32,
    jitter: f64,
    left: Duration,
    backoff: Backoff,
) -> Option<Duration> {
    let wait = match fault {
        Fault::Throttled {
            retry_after: Some(after),
        } => after.min(MAX_RETRY_AFTER),
        _ => backoff.delay(attempt, jitter),
    };
    (wait < left).then_some(wait)
}

/// The back-off between runs of a gate that could not decide.
pub const UNDECIDED_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(2),
    max: Duration::from_secs(30),
};

/// What follows a gate that could not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// Run it again after this wait.
    RunAgainIn(Duration),
    /// No run would end before the step's deadline: wait this long (to the deadline), then
    /// the step fails.
    FailIn(Duration),
}

/// What follows a gate that could not decide for the `attempt`-th time (from 0), with `left`
/// until the step's deadline and `took` the time that try took: another run after the
/// back-off while one as long still fits before the deadline, otherwise the failure once the
/// deadline has passed (a try cut off by the deadline would say less than "it stayed
/// undecided").
pub fn after_undecided(attempt: u32, jitter: f64, left: Duration, took: Duration) -> Undecided {
    let wait = UNDECIDED_BACKOFF.delay(attempt, jitter);
    if wait + took < left {
        Undecided::RunAgainIn(wait)
    } else {
        Undecided::FailIn(left)
    }
}

tokio::task_local! {
    /// The deadline of the work this task does (a step's), for the calls it makes.
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as the limit of every retry of the calls it makes.
pub async fn within<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// Until when a call made now may retry: the deadline set by [`within`], or
/// [`DEFAULT_BUDGET`] from now.
fn deadline() -> Instant {
    DEADLINE
        .try_with(|d| *d)
        .unwrap_or_else(|_| Instant::now() + DEFAULT_BUDGET)
}

/// Makes a call with `attempt`, again after each fault that [`fault_of`] finds, with back-off,
/// until it answers or the deadline would pass; `what` names the call in the logs. A call
/// that keeps failing gives its last error.
pub async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let deadline = deadline();
    let mut retries = 0u32;
    loop {
        let error = match attempt().await {
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        let Some(fault) = fault_of(&error) else {
            return Err(error);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(wait) = wait_before_retry(fault, retries, fastrand::f64(), left, API_BACKOFF)
        else {
            tracing::warn!(call = what, %error, retries, "API fault; out of time to retry");
            return Err(error);
        };
        tracing::info!(call = what, %error, retries, wait_ms = wait.as_millis() as u64, "API fault; retrying");
        tokio::time::sleep(wait).await;
        retries += 1;
    }
}

/// The back-off of a watch that is re-established after an error, as kube-runtime asks for
/// it: [`API_BACKOFF`], restarting from the first wait once the watch works again.
#[derive(Debug, Clone, Default)]
pub struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = API_BACKOFF.delay(self.attempt, fastrand::f64());
        self.attempt = self.attempt.saturating_add(1);
        // Never ends: a watch is re-established for as long as someone waits on it.
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[allow(non_snake_case)]
    fn MS(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn back_off_doubles_up_to_its_ceiling() {
        let b = Backoff {
            first: MS(100),
            max: MS(1000),
        };
        let cases = [
            (0, 0.0, MS(50)),
            (0, 1.0, MS(100)),
            (1, 0.0, MS(100)),
            (1, 1.0, MS(200)),
            (2, 0.5, MS(300)),
            (3, 1.0, MS(800)),
            (4, 1.0, MS(1000)),
            (4, 0.0, MS(500)),
            (200, 1.0, MS(1000)),
            (u32::MAX, 0.0, MS(500)),
            // Jitter outside [0, 1] is clamped.
            (0, 7.0, MS(100)),
            (0, -1.0, MS(50)),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(b.delay(attempt, jitter), expected, "{attempt} {jitter}");
        }
    }

    #[test]
    fn only_faults_that_may_pass_are_retried() {
        let unavailable = |code| ApiError::Unavailable {
            code,
            reason: String::new(),
            message: String::new(),
            retry_after: None,
        };
        let cases = [
            (
                unavailable(429),
                Some(Fault::Throttled { retry_after: None }),
            ),
            (unavailable(503), Some(Fault::ServerError)),
            (unavailable(500), Some(Fault::ServerError)),
            (
                ApiError::Unreachable("connection reset".into()),
                Some(Fault::Connection),
            ),
            (ApiError::Conflict("modified".into()), None),
            (ApiError::AlreadyExists("web".into()), None),
            (ApiError::NotFound, None),
            (
                ApiError::Refused {
                    code: 422,
                    reason: "Invalid".into(),
                    message: String::new(),
                },
                None,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(fault_of(&error), expected, "{error}");
        }
        let transient: Vec<u16> = (400..600).filter(|c| is_transient_status(*c)).collect();
        assert_eq!(transient, [429, 500, 502, 503, 504]);
    }

    #[test]
    fn retries_wait_for_retry_after_and_stop_at_the_deadline() {
        let b = Backoff {
            first: MS(100),
            max: MS(1000),
        };
        let throttled = |s| Fault::Throttled {
            retry_after: Some(Duration::from_secs(s)),
        };
        let cases = [
            // Retry-After is honoured as given, whatever the attempt.
            (throttled(3), 0, MS(10_000), Some(MS(3000))),
            (throttled(3), 5, MS(10_000), Some(MS(3000))),
            // A long one is cut, and still must end before the deadline.
            (throttled(600), 0, MS(60_000), Some(MS(30_000))),
            (throttled(600), 0, MS(20_000), None),
            // Without one: the back-off.
            (
                Fault::Throttled { retry_after: None },
                1,
                MS(10_000),
                Some(MS(200)),
            ),
            (Fault::ServerError, 0, MS(10_000), Some(MS(100))),
            (Fault::Connection, 9, MS(10_000), Some(MS(1000))),
            // Not enough time left: no retry.
            (Fault::Connection, 9, MS(1000), None),
            (Fault::ServerError, 0, Duration::ZERO, None),
        ];
        for (fault, attempt, left, expected) in cases {
            assert_eq!(
                wait_before_retry(fault, attempt, 1.0, left, b),
                expected,
                "{fault:?} {attempt} {left:?}"
            );
        }
    }

    #[test]
    fn an_undecided_gate_runs_again_until_the_deadline() {
        use Undecided::*;
        // (attempt, jitter, time left, the try took, what follows)
        let cases = [
            (0, 1.0, MS(60_000), MS(0), RunAgainIn(MS(2000))),
            (0, 0.0, MS(60_000), MS(1000), RunAgainIn(MS(1000))),
            (3, 1.0, MS(60_000), MS(2000), RunAgainIn(MS(16_000))),
            (9, 1.0, MS(60_000), MS(2000), RunAgainIn(MS(30_000))),
            // No run fits before the deadline: wait for it, then fail.
            (9, 1.0, MS(5000), MS(0), FailIn(MS(5000))),
            (0, 1.0, MS(2000), MS(0), FailIn(MS(2000))),
            (0, 1.0, Duration::ZERO, MS(0), FailIn(Duration::ZERO)),
            // The back-off fits, but not another try as long as the last one.
            (3, 1.0, MS(17_000), MS(2000), FailIn(MS(17_000))),
            (3, 1.0, MS(18_500), MS(2000), RunAgainIn(MS(16_000))),
        ];
        for (attempt, jitter, left, took, expected) in cases {
            assert_eq!(
                after_undecided(attempt, jitter, left, took),
                expected,
                "{attempt} {left:?} {took:?}"
            );
        }
    }

    #[test]
    fn a_watch_backs_off_and_starts_over_once_it_works() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = WatchBackoff::default();
        let waits: Vec<Duration> = backoff.by_ref().take(8).collect();
        assert!(waits.iter().all(|w| *w <= API_BACKOFF.max), "{waits:?}");
        assert!(waits[7] >= API_BACKOFF.max / 2, "{waits:?}");
        backoff.reset();
        assert!(backoff.next().is_some_and(|w| w <= API_BACKOFF.first));
    }

    #[tokio::test]
    async fn a_call_is_retried_until_it_answers_or_its_deadline() {
        let calls = AtomicU32::new(0);
        let flaky = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(ApiError::Unreachable("connection refused".into()))
                } else {
                    Ok(n)
                }
            }
        };
        assert_eq!(retrying("get", flaky).await.ok(), Some(3));

        // Never answers: given up within the deadline, with the last error.
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);
        let down = || async { Err::<(), _>(ApiError::Unreachable("reset".into())) };
        let result = within(deadline, retrying("get", down)).await;
        assert!(matches!(result, Err(ApiError::Unreachable(_))));
        assert!(Instant::now() <= deadline);

        // A conflict is the answer at once.
        let calls = AtomicU32::new(0);
        let conflict = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(ApiError::Conflict("modified".into())) }
        };
        assert!(matches!(
            retrying("patch", conflict).await,
            Err(ApiError::Conflict(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
