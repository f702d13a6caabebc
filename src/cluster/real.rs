//! The real cluster: each call of the seam is one `kube::Api` call in one namespace; a watch is
//! a kube-runtime watcher folded into a [`Listing`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use tokio::sync::watch;

use super::retry::{self, retrying, WatchBackoff};
use super::{error_chain, ApiError, Cluster, Listing, Object, PatchKind, ProxyAnswer, ProxyTo};
use super::{Select, Watched};

/// The real cluster: `kube::Api` calls in one namespace.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    namespace: String,
}

impl KubeCluster {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        KubeCluster {
            client,
            namespace: namespace.to_string(),
        }
    }

    fn api<K: Object>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// How long one watch request lasts before the server ends it (and the watcher starts the
/// next); the client's read timeout must be longer.
pub const WATCH_TIMEOUT_SECS: u32 = 50;

/// The field manager name the API server records for rollout's writes.
const FIELD_MANAGER: &str = crate::model::drift::FIELD_MANAGER;

fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.to_string()),
    }
}

impl Select {
    fn list_params(&self) -> ListParams {
        let mut params = ListParams::default();
        if let Some(labels) = &self.labels {
            params = params.labels(labels);
        }
        if let Some(name) = &self.name {
            params = params.fields(&format!("metadata.name={name}"));
        }
        params
    }

    fn watcher_config(&self) -> watcher::Config {
        // Below the client's read timeout (`crate::exec::connect`), so a quiet watch is ended
        // by the server, not cut by the client.
        let mut config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(labels) = &self.labels {
            config = config.labels(labels);
        }
        if let Some(name) = &self.name {
            config = config.fields(&format!("metadata.name={name}"));
        }
        config
    }
}

impl ProxyTo {
    /// `pods/web-0:8080` or `services/web:http`: the collection and the name the proxy
    /// subresource hangs off.
    fn collection_and_name(&self, namespace: &str) -> (String, String) {
        match self {
            ProxyTo::Pod { name, port } => (
                format!("/api/v1/namespaces/{namespace}/pods"),
                format!("{name}:{port}"),
            ),
            ProxyTo::Service { name, port } => (
                format!("/api/v1/namespaces/{namespace}/services"),
                format!("{name}:{port}"),
            ),
        }
    }
}

impl Cluster for KubeCluster {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, ApiError> {
        let api = self.api::<K>();
        retrying("get", || async { Ok(api.get_opt(name).await?) }).await
    }

    async fn list<K: Object>(&self, select: &Select) -> Result<Vec<K>, ApiError> {
        let (api, params) = (self.api::<K>(), select.list_params());
        retrying("list", || async { Ok(api.list(&params).await?.items) }).await
    }

    async fn create<K: Object>(&self, object: &K, dry_run: bool) -> Result<K, ApiError> {
        let api = self.api::<K>();
        let params = post_params(dry_run);
        let name = object.meta().name.clone().unwrap_or_default();
        // A create that failed without an answer may have been stored all the same: its retry
        // then finds the object there. That is this call's own object when it is what was
        // sent (same labels and annotations) and rollout wrote it; anything else is someone
        // else's and stays a refusal.
        let may_have_landed = std::sync::atomic::AtomicBool::new(false);
        retrying("create", || async {
            match api.create(&params, object).await.map_err(ApiError::from) {
                Err(ApiError::AlreadyExists(message))
                    if may_have_landed.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    match api.get_opt(&name).await? {
                        Some(found) if is_own_create(object, &found) => Ok(found),
                        _ => Err(ApiError::AlreadyExists(message)),
                    }
                }
                Err(e) => {
                    if retry::fault_of(&e).is_some() {
                        may_have_landed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e)
                }
                ok => ok,
            }
        })
        .await
    }

    async fn replace<K: Object>(&self, object: &K) -> Result<K, ApiError> {
        let name = object.meta().name.clone().unwrap_or_default();
        let (api, params) = (self.api::<K>(), post_params(false));
        // The object's resourceVersion is the precondition: a replace that landed before its
        // answer was lost meets a conflict on its retry, which the caller reads again for.
        retrying("replace", || async {
            Ok(api.replace(&name, &params, object).await?)
        })
        .await
    }

    async fn patch<K: Object>(
        &self,
        name: &str,
        patch: &Value,
        kind: PatchKind,
        dry_run: bool,
    ) -> Result<K, ApiError> {
        let params = PatchParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        tracing::debug!(kind = %K::kind(&()), name, dry_run, patch = %patch, "patching");
        let patch = match kind {
            PatchKind::Merge => Patch::Merge(patch),
            PatchKind::Strategic => Patch::Strategic(patch),
        };
        let api = self.api::<K>();
        retrying("patch", || async {
            Ok(api.patch(name, &params, &patch).await?)
        })
        .await
    }

    async fn delete<K: Object>(
        &self,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<(), ApiError> {
        let params = DeleteParams {
            preconditions: (preconditions != &Preconditions::default())
                .then(|| preconditions.clone()),
            ..DeleteParams::default()
        };
        let api = self.api::<K>();
        // A delete that landed before its answer was lost finds nothing on its retry: the
        // callers take "not found" as done.
        retrying("delete", || async {
            api.delete(name, &params).await?;
            Ok(())
        })
        .await
    }

    fn observe<K: Object>(&self, select: &Select) -> Watched<K> {
        let (tx, rx) = watch::channel(Arc::new(Listing::default()));
        // The watcher re-lists by itself after a 410 Gone and re-establishes the watch after
        // any error, with back-off so an unreachable API server is not hammered; the stream
        // never ends, so a watch only stops when nobody listens any more.
        let events =
            watcher(self.api::<K>(), select.watcher_config()).backoff(WatchBackoff::default());
        let what = format!("{} {select:?}", K::kind(&()));
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut fold = Fold::default();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    event = events.next() => {
                        let Some(event) = event else { break };
                        match event {
                            Ok(event) => if fold.apply(event) {
                                tx.send_replace(Arc::new(fold.listing()));
                            },
                            // The watcher retries by itself (with back-off); a dropped watch is
                            // routine, a cluster that stays away shows up as a lost lease.
                            Err(e) => tracing::info!(watch = %what, error = %e, "watch error; retrying"),
                        }
                    }
                }
            }
        });
        rx
    }

    async fn get_at(&self, collection: &str, name: &str) -> Result<Option<Value>, ApiError> {
        retrying("get", || async {
            let request = kube::core::Request::new(collection)
                .get(name, &kube::api::GetParams::default())
                .map_err(|e| ApiError::Refused {
                    code: 400,
                    reason: "BadRequest".into(),
                    message: format!("building the request for {collection}/{name}: {e}"),
                })?;
            match self.client.request::<Value>(request).await {
                Ok(v) => Ok(Some(v)),
                Err(e) => match ApiError::from(e) {
                    ApiError::NotFound => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn proxy_get(&self, to: &ProxyTo, path: &str) -> Result<ProxyAnswer, ApiError> {
        let (collection, name) = to.collection_and_name(&self.namespace);
        let request = kube::core::Request::new(collection)
            .get_subresource(&format!("proxy{path}"), &name)
            .map_err(|e| ApiError::Refused {
                code: 400,
                reason: "BadRequest".into(),
                message: format!("building the proxy request for {name}: {e}"),
            })?
            .map(kube::client::Body::from);
        let unreachable = |e: kube::Error| ApiError::Unreachable(error_chain(&e));
        let response = self.client.send(request).await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .map_err(unreachable)?;
        Ok(ProxyAnswer {
            status,
            body: body.to_vec(),
        })
    }
}

/// True when `found` is the object `sent` by a create whose answer was lost: the labels and
/// annotations sent, and a field manager entry of rollout's.
fn is_own_create<K: Object>(sent: &K, found: &K) -> bool {
    let (a, b) = (sent.meta(), found.meta());
    let written_by_rollout = b
        .managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER));
    a.labels.clone().unwrap_or_default() == b.labels.clone().unwrap_or_default()
        && a.annotations.clone().unwrap_or_default() == b.annotations.clone().unwrap_or_default()
        && written_by_rollout
}

/// One watch folded into a listing: a (re)list is buffered until `InitDone`, so a relist never
/// shows a half-empty listing, then changes apply one by one.
struct Fold<K> {
    items: BTreeMap<String, K>,
    synced: bool,
    buffer: Option<BTreeMap<String, K>>,
}

impl<K> Default for Fold<K> {
    fn default() -> Self {
        Fold {
            items: BTreeMap::new(),
            synced: false,
            buffer: None,
        }
    }
}

impl<K: Object> Fold<K> {
    /// Applies one event; true when the listing should be sent again.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        let key = |k: &K| k.meta().name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.buffer = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(k) => {
                if let Some(buffer) = self.buffer.as_mut() {
                    buffer.insert(key(&k), k);
                }
                false
            }
            watcher::Event::InitDone => {
                self.items = self.buffer.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(k) => {
                self.items.insert(key(&k), k);
                self.synced
            }
            watcher::Event::Delete(k) => {
                self.items.remove(&key(&k));
                self.synced
            }
        }
    }

    fn listing(&self) -> Listing<K> {
        Listing {
            synced: self.synced,
            items: self.items.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(fold: &Fold<Pod>) -> Vec<String> {
        fold.listing()
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    #[test]
    fn a_watch_buffers_relists() {
        let mut fold = Fold::default();
        assert!(!fold.apply(watcher::Event::Init));
        assert!(!fold.apply(watcher::Event::InitApply(pod("web-0"))));
        assert!(fold.apply(watcher::Event::InitDone));
        assert!(fold.listing().synced);
        assert_eq!(names(&fold), ["web-0"]);
        // A relist: until it is done, the old objects stay visible.
        fold.apply(watcher::Event::Init);
        fold.apply(watcher::Event::InitApply(pod("web-1")));
        assert_eq!(names(&fold), ["web-0"]);
        fold.apply(watcher::Event::InitDone);
        assert_eq!(names(&fold), ["web-1"]);
        assert!(fold.apply(watcher::Event::Delete(pod("web-1"))));
        assert!(fold.listing().items.is_empty());
    }

    /// An API server on 127.0.0.1 that keeps each request's method, path and content type,
    /// answers proxied GETs with 200 and refuses every patch with a conflict.
    async fn api_server(seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap| async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok());
                let line = format!("{method} {uri} {}", kind.unwrap_or("-"));
                seen.lock().map(|mut s| s.push(line)).unwrap_or_default();
                if method == Method::PATCH {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Conflict", "code": 409, "message": "the object has been modified"});
                    return (StatusCode::CONFLICT, status.to_string());
                }
                (StatusCode::OK, "ok".to_string())
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let listener = listener.unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{address}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        kube::Client::try_from(kube::Config::new(url)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn requests_go_where_the_api_server_expects_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cluster = KubeCluster::new(api_server(seen.clone()).await, "shop");
        let pod = ProxyTo::Pod {
            name: "web-1".into(),
            port: 8080,
        };
        let answer = cluster.proxy_get(&pod, "/healthz?full=1").await;
        assert_eq!(
            answer.ok().map(|a| (a.status, a.body)),
            Some((200, b"ok".to_vec()))
        );
        let service = ProxyTo::Service {
            name: "web".into(),
            port: "http".into(),
        };
        let answer = cluster.proxy_get(&service, "/").await;
        assert_eq!(answer.ok().map(|a| a.status), Some(200));
        let patch = json!({"metadata": {"resourceVersion": "7"}});
        let refused = cluster
            .patch::<Pod>("web-1", &patch, PatchKind::Strategic, true)
            .await;
        assert!(matches!(refused, Err(ApiError::Conflict(_))), "{refused:?}");
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [
                "GET /api/v1/namespaces/shop/pods/web-1:8080/proxy/healthz?full=1 -",
                "GET /api/v1/namespaces/shop/services/web:http/proxy/ -",
                "PATCH /api/v1/namespaces/shop/pods/web-1?&dryRun=All&fieldManager=rollout application/strategic-merge-patch+json",
            ]
        );
    }
}
