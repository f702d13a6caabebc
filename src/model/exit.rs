//! The process exit codes: few, documented and stable, so that a CI job can branch on them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done: the rollout finished, or reached the hold it was asked to stop at (a canary `--weight` waiting for `promote`), or stopped because of `rollout pause`; a read-only command worked |
//! | 1 | cluster error: the API server could not be reached or refused a request (RBAC, conflict that retries did not settle, faults that outlasted the step's deadline), or a rollback could not be completed, or a run stopped part-way after it began to write |
//! | 2 | bad input: flags, image reference, strategy file, manifest, or a StatefulSet that does not exist or cannot be rolled (the same code clap uses for usage errors) |
//! | 3 | rolled back: a gate failed (or someone ran `abort`) and the StatefulSet is back on the stable revision; also a failed gate held by `--no-rollback` |
//! | 4 | locked: another run holds the StatefulSet's Lease; the message names the holder; also a rollout stopped because someone else changed the StatefulSet under it (a `kubectl apply`, `helm upgrade`, `kubectl patch`, the record removed): the message names the change and the field manager, nothing was rolled back |
//! | 5 | timed out: a step or the whole rollout passed its deadline (rolled back unless `--no-rollback`), or a shadow's comparison ended with too few answers to judge (the shadow removed, the set untouched): not a pass |

use serde::{Deserialize, Serialize};

use super::state::{Phase, RollbackCause, RolloutState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[repr(u8)]
pub enum ExitCode {
    Done = 0,
    ClusterError = 1,
    BadInput = 2,
    GateFailed = 3,
    Locked = 4,
    TimedOut = 5,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Done => "done",
            ExitCode::ClusterError => "cluster error",
            ExitCode::BadInput => "bad input",
            ExitCode::GateFailed => "gate failed, rolled back",
            ExitCode::Locked => "locked by another run",
            ExitCode::TimedOut => "timed out",
        }
    }

    /// The code for a run that ended with `record`: a rollback that could not finish is a
    /// cluster error (1), whatever caused it; otherwise as [`ExitCode::for_outcome`].
    pub fn of_record(record: &RolloutState) -> ExitCode {
        if record.phase == Phase::Failed && record.rollback.is_some() {
            return ExitCode::ClusterError;
        }
        ExitCode::for_outcome(record.phase, record.rollback_cause)
    }

    /// The code for a run that ended with the record in `phase` (an active phase means the run
    /// stopped at a hold it was asked to wait at, or left the rest to another run).
    pub fn for_outcome(phase: Phase, cause: Option<RollbackCause>) -> ExitCode {
        match (phase, cause) {
            (Phase::Succeeded | Phase::Progressing | Phase::Paused | Phase::Released, _) => {
                ExitCode::Done
            }
            (_, Some(RollbackCause::TimedOut)) => ExitCode::TimedOut,
            (Phase::RolledBack | Phase::Aborted, _) => ExitCode::GateFailed,
            (Phase::Failed | Phase::RollingBack, Some(_)) => ExitCode::GateFailed,
            (Phase::Failed | Phase::RollingBack, None) => ExitCode::ClusterError,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let cases = [
            (ExitCode::Done, 0),
            (ExitCode::ClusterError, 1),
            (ExitCode::BadInput, 2),
            (ExitCode::GateFailed, 3),
            (ExitCode::Locked, 4),
            (ExitCode::TimedOut, 5),
        ];
        for (code, number) in cases {
            assert_eq!(code.code(), number, "{}", code.describe());
        }
    }

    #[test]
    fn outcomes_map_to_codes() {
        use Phase::*;
        let cases = [
            (Succeeded, None, ExitCode::Done),
            (Paused, None, ExitCode::Done),
            (
                RolledBack,
                Some(RollbackCause::GateFailed),
                ExitCode::GateFailed,
            ),
            (
                RolledBack,
                Some(RollbackCause::TimedOut),
                ExitCode::TimedOut,
            ),
            (Failed, Some(RollbackCause::TimedOut), ExitCode::TimedOut),
            (
                Failed,
                Some(RollbackCause::GateFailed),
                ExitCode::GateFailed,
            ),
            (Aborted, Some(RollbackCause::Aborted), ExitCode::GateFailed),
            (Released, Some(RollbackCause::Released), ExitCode::Done),
            (Failed, None, ExitCode::ClusterError),
        ];
        for (phase, cause, code) in cases {
            assert_eq!(
                ExitCode::for_outcome(phase, cause),
                code,
                "{phase} {cause:?}"
            );
        }
    }
}
