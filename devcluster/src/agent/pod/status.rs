//! The pod status as the kubelet reports it, computed from the agent's [`PodView`]: phase,
//! conditions (Initialized, ContainersReady, Ready; others such as PodScheduled are kept),
//! addresses, start time and container statuses. Pure; the worker sends the result as a JSON
//! merge patch on the `status` subresource when it differs from what it sent last.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::state::{phase, ContainerState, ContainerView, PodView, RestartPolicy, Terminated};
use crate::layout::BRIDGE_IP;

pub fn time(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: t.container_id.clone(),
        exit_code: t.exit_code,
        finished_at: Some(time(t.finished_at)),
        message: t.message.clone(),
        reason: Some(t.reason.clone()),
        signal: t.signal,
        started_at: t.started_at.map(time),
    }
}

pub fn container_status(c: &ContainerView) -> ContainerStatus {
    let state = match &c.state {
        ContainerState::Waiting { reason, message } => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        ContainerState::Running { started_at } => K8sState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        ContainerState::Terminated(t) => K8sState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started && c.is_running()),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(K8sState {
            terminated: c.last_terminated.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the status computation looks at besides the view.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    pub view: &'a PodView,
    pub policy: RestartPolicy,
    /// `spec.readinessGates` condition types.
    pub readiness_gates: &'a [String],
    /// The status on the API object (conditions others own, start time).
    pub observed: Option<&'a PodStatus>,
    /// The status this agent sent last, for stable `lastTransitionTime`s.
    pub previous: Option<&'a PodStatus>,
    pub now: SystemTime,
}

const OURS: [&str; 3] = ["Initialized", "Ready", "ContainersReady"];

fn conditions_of(s: Option<&PodStatus>) -> &[PodCondition] {
    s.and_then(|s| s.conditions.as_deref()).unwrap_or(&[])
}

fn names(cs: &[&ContainerView]) -> String {
    format!(
        "[{}]",
        cs.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

pub fn desired(input: StatusInput<'_>) -> PodStatus {
    let v = input.view;
    let phase = phase(v, input.policy);
    let terminal = phase == "Succeeded" || phase == "Failed";

    let condition = |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let since = [input.previous, input.observed]
            .into_iter()
            .flat_map(conditions_of)
            .find(|c| c.type_ == type_)
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time(input.now));
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            last_transition_time: Some(since),
            reason: reason.map(String::from),
            message,
            ..Default::default()
        }
    };

    let incomplete_init: Vec<&ContainerView> = if v.initialized {
        Vec::new()
    } else {
        v.init_containers.iter().collect()
    };
    let initialized = condition(
        "Initialized",
        v.initialized,
        (!v.initialized).then_some("ContainersNotInitialized"),
        (!v.initialized).then(|| {
            format!(
                "containers with incomplete status: {}",
                names(&incomplete_init)
            )
        }),
    );

    let unready: Vec<&ContainerView> = v.containers.iter().filter(|c| !c.ready).collect();
    let containers_ready = unready.is_empty() && !terminal;
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_message = (!unready.is_empty())
        .then(|| format!("containers with unready status: {}", names(&unready)));
    let gates_pending: Vec<&String> = input
        .readiness_gates
        .iter()
        .filter(|g| {
            !conditions_of(input.observed)
                .iter()
                .any(|c| &&c.type_ == g && c.status == "True")
        })
        .collect();
    let ready = if !containers_ready {
        condition(
            "Ready",
            false,
            Some(not_ready_reason),
            unready_message.clone(),
        )
    } else if !gates_pending.is_empty() {
        let list = gates_pending
            .iter()
            .map(|g| g.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(format!(
                "corresponding condition of pod readiness gate \"{list}\" does not exist or is False"
            )),
        )
    } else {
        condition("Ready", true, None, None)
    };
    let cready = if containers_ready {
        condition("ContainersReady", true, None, None)
    } else {
        condition(
            "ContainersReady",
            false,
            Some(not_ready_reason),
            unready_message,
        )
    };

    let mut conditions = vec![initialized, ready, cready];
    conditions.extend(
        conditions_of(input.observed)
            .iter()
            .filter(|c| !OURS.contains(&c.type_.as_str()))
            .cloned(),
    );

    let start_time = input
        .observed
        .and_then(|s| s.start_time.clone())
        .or_else(|| v.start_time.map(time));
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(BRIDGE_IP.to_string()),
        pod_ip: v.pod_ip.map(|ip| ip.to_string()),
        pod_ips: v.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time,
        init_container_statuses: (!v.init_containers.is_empty())
            .then(|| v.init_containers.iter().map(container_status).collect()),
        container_statuses: Some(v.containers.iter().map(container_status).collect()),
        ..Default::default()
    }
}

/// The merge patch for the `status` subresource, or `None` when nothing changed since `previous`.
pub fn patch_if_changed(
    desired: &PodStatus,
    previous: Option<&PodStatus>,
) -> Option<serde_json::Value> {
    if previous == Some(desired) {
        return None;
    }
    Some(serde_json::json!({ "status": desired }))
}

/// Whether the Ready condition is True in a status.
pub fn is_ready(s: &PodStatus) -> bool {
    conditions_of(Some(s))
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn running(name: &str, ready: bool) -> ContainerView {
        let mut c = ContainerView::new(name, "time-app:v1", "ContainerCreating");
        c.set_running(
            at(1),
            "devcluster://42".into(),
            "devcluster://time-app:v1".into(),
        );
        c.started = true;
        c.ready = ready;
        c
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            pod_ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
            start_time: Some(at(0)),
            initialized: true,
            init_containers: vec![],
            containers,
        }
    }

    fn input<'a>(
        v: &'a PodView,
        observed: Option<&'a PodStatus>,
        previous: Option<&'a PodStatus>,
        now: u64,
    ) -> StatusInput<'a> {
        StatusInput {
            view: v,
            policy: RestartPolicy::Always,
            readiness_gates: &[],
            observed,
            previous,
            now: at(now),
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == t))
            .expect("condition present")
    }

    #[test]
    fn a_running_ready_pod_reports_like_the_kubelet() {
        let v = view(vec![running("app", true)]);
        let scheduled = PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let s = desired(input(&v, Some(&scheduled), None, 5));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.host_ip.as_deref(), Some("10.244.0.1"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(
            s.pod_ips.as_ref().map(|p| p[0].ip.as_str()),
            Some("10.244.1.2")
        );
        assert!(is_ready(&s));
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(
            (cs.name.as_str(), cs.ready, cs.started, cs.restart_count),
            ("app", true, Some(true), 0)
        );
        assert_eq!(cs.container_id.as_deref(), Some("devcluster://42"));
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["startTime"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn unready_containers_are_named_and_gates_are_honoured() {
        let v = view(vec![running("a", true), running("b", false)]);
        let s = desired(input(&v, None, None, 5));
        assert!(!is_ready(&s));
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [b]")
        );

        let v = view(vec![running("a", true)]);
        let gates = vec!["example.com/lb".to_string()];
        let no_gate = StatusInput {
            readiness_gates: &gates,
            ..input(&v, None, None, 5)
        };
        let s = desired(no_gate);
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let gate_ok = PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "example.com/lb".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(is_ready(&desired(StatusInput {
            readiness_gates: &gates,
            ..input(&v, Some(&gate_ok), None, 5)
        })));
    }

    #[test]
    fn transition_times_move_only_when_the_status_flips() {
        let not_ready = view(vec![running("app", false)]);
        let first = desired(input(&not_ready, None, None, 10));
        assert_eq!(
            cond(&first, "Ready").last_transition_time,
            Some(time(at(10)))
        );
        let again = desired(input(&not_ready, None, Some(&first), 20));
        assert_eq!(
            cond(&again, "Ready").last_transition_time,
            Some(time(at(10)))
        );
        assert_eq!(patch_if_changed(&again, Some(&first)), None);
        let ready = view(vec![running("app", true)]);
        let flipped = desired(input(&ready, None, Some(&again), 30));
        assert_eq!(
            cond(&flipped, "Ready").last_transition_time,
            Some(time(at(30)))
        );
        assert_eq!(
            cond(&flipped, "Initialized").last_transition_time,
            Some(time(at(10)))
        );
        assert!(patch_if_changed(&flipped, Some(&again)).is_some());
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_termination() {
        let mut c = running("app", false);
        c.set_terminated(Terminated::from_exit(
            Some(1),
            None,
            at(1),
            at(2),
            "devcluster://42".into(),
        ));
        c.set_back_off("back-off 10s restarting failed container=app pod=web-0_default(u)".into());
        let v = view(vec![c]);
        let s = desired(input(&v, None, None, 3));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        let waiting = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last terminated");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(cs.started, Some(false));
    }

    #[test]
    fn completed_pods_are_not_ready_with_reason_pod_completed() {
        let mut c = running("job", true);
        c.set_terminated(Terminated::from_exit(
            Some(0),
            None,
            at(1),
            at(2),
            "devcluster://42".into(),
        ));
        let v = view(vec![c]);
        let s = desired(StatusInput {
            policy: RestartPolicy::Never,
            ..input(&v, None, None, 3)
        });
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn pending_pod_before_the_sandbox() {
        let mut v = view(vec![ContainerView::new(
            "app",
            "time-app:v1",
            "ContainerCreating",
        )]);
        v.pod_ip = None;
        let s = desired(input(&v, None, None, 1));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(s.pod_ip, None);
        let json = serde_json::to_value(&s).expect("serializes");
        assert!(
            json.get("podIP").is_none(),
            "no podIP key until there is one: {json}"
        );
        assert_eq!(
            json["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(json["containerStatuses"][0]["imageID"], "");
    }

    #[test]
    fn observed_start_time_wins() {
        let mut v = view(vec![running("app", true)]);
        v.start_time = Some(at(7));
        let observed = PodStatus {
            start_time: Some(time(at(0))),
            ..Default::default()
        };
        assert_eq!(
            desired(input(&v, Some(&observed), None, 50)).start_time,
            Some(time(at(0)))
        );
        assert_eq!(
            desired(input(&v, None, None, 50)).start_time,
            Some(time(at(7)))
        );
    }

    #[test]
    fn init_containers_gate_initialized() {
        let mut v = view(vec![ContainerView::new("app", "a", "PodInitializing")]);
        v.initialized = false;
        v.init_containers = vec![ContainerView::new("setup", "b", "ContainerCreating")];
        let s = desired(input(&v, None, None, 1));
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        assert_eq!(s.init_container_statuses.as_ref().map(Vec::len), Some(1));
    }
}
