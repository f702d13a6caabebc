//! Telling others what a rollout does, as it happens: a Kubernetes Event on the StatefulSet for
//! each mark of the rollout's story (`kubectl describe sts` and `kubectl get events` show it),
//! and a JSON message to each `--notify` URL (Slack and Microsoft Teams incoming webhooks take
//! `{"text": ...}`) at its start, a hold, success, failure and rollback.
//!
//! Best effort, never in the rollout's way: each Event and each post runs on a task of its own
//! with a deadline ([`SEND_TIMEOUT`]); at most [`MAX_IN_FLIGHT`] run at once and one that finds
//! no room is dropped (and logged); a refusal (403: the Role lacks `create` on events), a 5xx,
//! a URL that hangs or refuses changes nothing in the run. When the command ends, the process
//! waits at most [`DRAIN_TIMEOUT`] for what is still being sent.
//!
//! The URLs come only from the command line or a strategy file it names, never from the record
//! on the StatefulSet: the record is data anyone who may patch the set can write.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::cluster::{ApiError, Cluster};
use crate::model::state::RolloutState;
use crate::model::timeline::{cut, Mark, What};
use crate::strategy::timeline::describe_mark;

/// The `reportingController` of rollout's Events.
pub const REPORTING_CONTROLLER: &str = "rollout.dev/rollout";
/// Longest time one Event or one post may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most Events and posts being sent at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Longest time the process waits at its end for what is still being sent.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);
/// The API server's limit on an Event's note.
const MAX_NOTE: usize = 1024;

type SendEvent =
    dyn Fn(Event) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send>> + Send + Sync;

struct Inner {
    /// Creates an Event through the cluster seam (none: no Events, in unit tests).
    send_event: Option<Box<SendEvent>>,
    namespace: String,
    /// Who reports: this run's identity (`reportingInstance`, at most 128 characters).
    instance: String,
    notify: Vec<Arc<Hook>>,
    http: Option<reqwest::Client>,
    slots: Arc<Semaphore>,
    tasks: Mutex<JoinSet<()>>,
    /// `--output jsonl`: each mark as one JSON line here too.
    lines: Option<super::progress::Out>,
}

/// A `--notify` URL and the order of its posts: each post takes a ticket when it is made and
/// waits for the one before it (each bounded by [`SEND_TIMEOUT`]), so a chat shows a failure
/// before the rollback it caused.
struct Hook {
    url: reqwest::Url,
    next: AtomicU64,
    served: watch::Sender<u64>,
}

/// Where the marks of a rollout are told. Cloning shares the tasks; the default tells no one.
#[derive(Clone, Default)]
pub struct Announcer {
    inner: Option<Arc<Inner>>,
}

/// A notification URL that cannot be used (bad input).
#[derive(Debug, thiserror::Error)]
#[error("--notify {url:?} {why}; give an http:// or https:// URL, such as a Slack or Microsoft Teams incoming webhook")]
pub struct NotifyUrlError {
    pub url: String,
    pub why: String,
}

/// Checks one `--notify` URL.
pub fn notify_url(text: &str) -> Result<reqwest::Url, NotifyUrlError> {
    let url = reqwest::Url::parse(text).map_err(|e| NotifyUrlError {
        url: text.to_string(),
        why: format!("is not a URL ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(NotifyUrlError {
            url: text.to_string(),
            why: "is not an http(s) URL with a host".to_string(),
        });
    }
    Ok(url)
}

impl Announcer {
    /// Events through `cluster`, reported as `instance`, and posts to `notify`.
    pub fn new<C: Cluster>(
        cluster: &C,
        instance: &str,
        notify: Vec<reqwest::Url>,
        lines: Option<super::progress::Out>,
    ) -> Announcer {
        let events = cluster.clone();
        let send_event: Box<SendEvent> = Box::new(move |event: Event| {
            let cluster = events.clone();
            Box::pin(async move { cluster.create(&event, false).await.map(|_| ()) })
        });
        let http = if notify.is_empty() {
            None
        } else {
            reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .connect_timeout(SEND_TIMEOUT)
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no HTTP client for --notify"))
                .ok()
        };
        Announcer {
            inner: Some(Arc::new(Inner {
                send_event: Some(send_event),
                namespace: cluster.namespace().to_string(),
                instance: instance.chars().take(128).collect(),
                notify: notify
                    .into_iter()
                    .map(|url| {
                        Arc::new(Hook {
                            url,
                            next: AtomicU64::new(0),
                            served: watch::Sender::new(0),
                        })
                    })
                    .collect(),
                http,
                slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                tasks: Mutex::new(JoinSet::new()),
                lines,
            })),
        }
    }

    /// Tells `marks` of `record` (the rollout of the set whose uid is `uid`): one Event each,
    /// and a post to every URL for those worth a message. Returns at once.
    pub fn tell(&self, uid: Option<&str>, record: &RolloutState, marks: &[Mark]) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        for mark in marks {
            if let Some(out) = inner.lines.as_ref() {
                out.print(&format!("{}\n", mark_line(&inner.namespace, record, mark)));
            }
            let note = describe_mark(record, &mark.what);
            if let Some(send) = inner.send_event.as_ref() {
                let event = event_for(&inner.namespace, &inner.instance, uid, record, mark, &note);
                let sending = send(event);
                let name = record.plan.statefulset.clone();
                self.spawn(move || async move {
                    match tokio::time::timeout(SEND_TIMEOUT, sending).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(statefulset = %name, error = %e, "could not write an Event (the rollout goes on)")
                        }
                        Err(_) => {
                            tracing::warn!(statefulset = %name, "writing an Event took too long (the rollout goes on)")
                        }
                    }
                });
            }
            let Some(kind) = mark.what.notification() else {
                continue;
            };
            let Some(http) = inner.http.as_ref() else {
                continue;
            };
            let body = message(&inner.namespace, record, kind, &note);
            for hook in &inner.notify {
                let post = http
                    .post(hook.url.clone())
                    .header("X-Rollout-Event", kind)
                    .json(&body)
                    .send();
                let host = hook.url.host_str().unwrap_or_default().to_string();
                let hook = hook.clone();
                self.spawn(move || {
                    let ticket = hook.next.fetch_add(1, Ordering::SeqCst);
                    async move {
                    let mut turn = hook.served.subscribe();
                    let _ = turn.wait_for(|served| *served >= ticket).await;
                    match tokio::time::timeout(SEND_TIMEOUT, post).await {
                        Ok(Ok(answer)) if answer.status().is_success() => {}
                        Ok(Ok(answer)) => {
                            tracing::warn!(%host, status = %answer.status(), "a --notify URL refused the message")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%host, error = %e, "could not post to a --notify URL")
                        }
                        Err(_) => tracing::warn!(%host, "a --notify URL did not answer in time"),
                    }
                    hook.served.send_modify(|served| *served = ticket + 1);
                    }
                });
            }
        }
    }

    /// Runs what `make` makes on a task of its own, if there is room; `make` is called only
    /// then, in the order of the calls.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, make: impl FnOnce() -> F) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
            tracing::warn!("too many Events and notifications in flight; one was dropped");
            return;
        };
        if let Ok(mut tasks) = inner.tasks.lock() {
            // Finished tasks are collected as new ones come, so the set stays small.
            while tasks.try_join_next().is_some() {}
            let work = make();
            tasks.spawn(async move {
                work.await;
                drop(permit);
            });
        }
    }

    /// Waits (at most `within`) for what is still being sent; what is left is dropped.
    pub async fn drain(&self, within: Duration) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        let tasks = match inner.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return,
        };
        let wait = tasks.join_all();
        if tokio::time::timeout(within, wait).await.is_err() {
            tracing::warn!("some Events or notifications were not sent before the end");
        }
    }
}

/// One line of `--output jsonl`: the mark with the rollout it belongs to and its words.
pub fn mark_line(namespace: &str, record: &RolloutState, mark: &Mark) -> String {
    let mut value = serde_json::to_value(mark).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("reason".into(), mark.what.reason().into());
        object.insert("namespace".into(), namespace.into());
        object.insert("statefulset".into(), record.plan.statefulset.clone().into());
        object.insert("rollout".into(), record.id.clone().into());
        object.insert("text".into(), describe_mark(record, &mark.what).into());
    }
    value.to_string()
}

/// The Event (events.k8s.io/v1) that tells `mark`, regarding the StatefulSet.
pub fn event_for(
    namespace: &str,
    instance: &str,
    uid: Option<&str>,
    record: &RolloutState,
    mark: &Mark,
    note: &str,
) -> Event {
    let name = &record.plan.statefulset;
    let nanos = mark.at.as_nanosecond();
    let suffix = format!("{:x}{:04x}", nanos, fastrand::u16(..));
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{suffix}")),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [("rollout.dev/rollout".to_string(), label_value(&record.id))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        },
        event_time: Some(MicroTime(mark.at)),
        action: Some(action(&mark.what).to_string()),
        reason: Some(mark.what.reason().to_string()),
        note: Some(cut(note, MAX_NOTE)),
        type_: Some(
            if mark.what.is_warning() {
                "Warning"
            } else {
                "Normal"
            }
            .to_string(),
        ),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance.to_string()),
        regarding: Some(ObjectReference {
            api_version: Some("apps/v1".to_string()),
            kind: Some("StatefulSet".to_string()),
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            uid: uid.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What rollout was doing, CamelCase (the Event's `action`).
fn action(what: &What) -> &'static str {
    match what {
        What::Started => "Start",
        What::StepStarted { .. } | What::StepDone { .. } | What::StepFailed { .. } => "RunStep",
        What::GatePassed { .. } => "Gate",
        What::Paused { .. } | What::Resumed { .. } => "Pause",
        What::RollbackStarted { .. } | What::RollbackStepDone { .. } => "Rollback",
        What::Finished { .. } => "Finish",
    }
}

/// A label value from a rollout id: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends.
fn label_value(id: &str) -> String {
    let text: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    text.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The JSON of a notification: `text` is what Slack and Microsoft Teams incoming webhooks
/// show.
pub fn message(
    namespace: &str,
    record: &RolloutState,
    kind: &str,
    note: &str,
) -> serde_json::Value {
    let name = &record.plan.statefulset;
    let headline = match kind {
        "start" => "started",
        "hold" => "holding",
        "success" => "succeeded",
        "failure" => "FAILED",
        "rollback" => "rollback",
        other => other,
    };
    serde_json::json!({
        "text": format!("rollout {headline}: StatefulSet {namespace}/{name} ({} rollout {}): {note}", record.plan.strategy, record.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::tests::{sample_state, ts};
    use crate::model::state::RollbackCause;

    #[test]
    fn an_event_regards_the_set_and_says_why() {
        let r = sample_state();
        let mark = Mark {
            at: ts(1_700_000_000),
            what: What::StepFailed {
                step: 2,
                cause: RollbackCause::GateFailed,
                message: "web-1 answered 500".into(),
            },
        };
        let note = describe_mark(&r, &mark.what);
        let e = event_for("shop", "ci@runner pid 7", Some("u1"), &r, &mark, &note);
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["reason"], "GateFailed");
        assert_eq!(json["action"], "RunStep");
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["reportingController"], "rollout.dev/rollout");
        assert_eq!(json["reportingInstance"], "ci@runner pid 7");
        assert_eq!(json["regarding"]["kind"], "StatefulSet");
        assert_eq!(json["regarding"]["uid"], "u1");
        assert_eq!(json["metadata"]["labels"]["rollout.dev/rollout"], "r-1");
        assert!(json["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("web.")));
        assert!(json["note"]
            .as_str()
            .is_some_and(|n| n.ends_with("failed: web-1 answered 500")));
        assert_eq!(cut(&"x".repeat(2000), MAX_NOTE).len(), MAX_NOTE);
        assert_eq!(label_value("-a b/c-"), "a-b-c");
    }

    #[test]
    fn notify_urls_are_checked() {
        assert!(notify_url("https://hooks.example/T000/B000").is_ok());
        assert!(notify_url("http://127.0.0.1:9/x").is_ok());
        for bad in ["ftp://x/y", "hooks.example/x", "", "http://"] {
            let e = notify_url(bad).expect_err(bad);
            assert!(e.to_string().contains("--notify"), "{e}");
        }
    }

    #[test]
    fn a_message_has_the_text_chat_services_show() {
        let r = sample_state();
        let m = message("test", &r, "success", "rollout of web succeeded: all pods");
        assert_eq!(
            m,
            serde_json::json!({"text": "rollout succeeded: StatefulSet test/web (rolling rollout r-1): rollout of web succeeded: all pods"})
        );
    }

    #[tokio::test]
    async fn nothing_waits_for_a_url_that_hangs() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let fake = crate::cluster::fake::FakeCluster::new(crate::cluster::fake::statefulset(
            "web", 2, "app:v1", true,
        ));
        let url = notify_url(&format!("http://{addr}/hook")).unwrap_or_else(|e| panic!("{e}"));
        let out = crate::exec::progress::Out::memory();
        let announcer = Announcer::new(&fake, "me", vec![url], Some(out.clone()));
        let r = sample_state();
        announcer.tell(
            Some("u1"),
            &r,
            &[Mark {
                at: ts(1_700_000_000),
                what: What::Started,
            }],
        );
        announcer.drain(Duration::from_millis(200)).await;
        hold.abort();
        let events: Vec<Event> = fake
            .list(&crate::cluster::Select::all())
            .await
            .unwrap_or_default();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason.as_deref(), Some("RolloutStarted"));
        let line: serde_json::Value = serde_json::from_str(out.text().trim()).unwrap_or_default();
        assert_eq!(line["mark"], "started");
        assert_eq!(line["statefulset"], "web");
        assert_eq!(line["reason"], "RolloutStarted");
    }
}
