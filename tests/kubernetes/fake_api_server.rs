//! A Kubernetes API server stand-in for end-to-end tests of `strait zone run --mode kubernetes`
//! as real processes: no API server can run on these machines, so this one keeps objects in
//! memory and speaks the REST dialect the zone's kube client uses, generically for any
//! resource: get, list, watch (events after a `resourceVersion`, streamed until
//! `timeoutSeconds`), create (`409 AlreadyExists`), replace (a compare-and-swap on
//! `resourceVersion`, `409 Conflict`), patch (server-side apply and merge patches, also on
//! `/status`) and delete, with equality label selectors. It checks no permissions and runs no
//! controllers: what a test needs from a cluster it creates itself.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

/// Where an object lives: `collection` is the API prefix plus the resource
/// (`api/v1/services`, `apis/coordination.k8s.io/v1/leases`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    collection: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Event {
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every event, by resourceVersion, so a watch can start from any version.
    history: Vec<(u64, Event)>,
}

/// The running server; dropping it stops it.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(u64, Event)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A parsed request path.
#[derive(Debug)]
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("api/v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, rest @ ..] => (Some((*ns).to_owned()), {
            let mut v = vec![*resource];
            v.extend(rest);
            v
        }),
        other => (None, other.to_vec()),
    };
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    Some(Target {
        collection: format!("{prefix}/{resource}"),
        namespace,
        name,
        subresource,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a list or watch of `target` with (label, field) `selectors` includes `object`,
/// stored at `key`.
fn selects(
    target: &Target,
    (selector, fields): (&Option<String>, &Option<String>),
    key: &Key,
    object: &Value,
) -> bool {
    key.collection == target.collection
        && target
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == key.namespace)
        && selector_matches(selector.as_deref(), object)
        && field_selector_matches(fields.as_deref(), object)
}

/// The `key=value` terms of a selector (`==` too; equality only, which is all the zone uses);
/// none for no selector.
fn equality_terms<'a>(
    selector: Option<&'a str>,
    kind: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    selector
        .filter(|s| !s.is_empty())
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(move |term| {
            term.split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or_else(|| panic!("unsupported {kind} selector term {term:?}"))
        })
}

/// `metadata.name=x` / `metadata.namespace=y` (what the zone uses).
fn field_selector_matches(selector: Option<&str>, object: &Value) -> bool {
    equality_terms(selector, "field").all(|(field, value)| match field {
        "metadata.name" => object["metadata"]["name"].as_str() == Some(value),
        "metadata.namespace" => object["metadata"]["namespace"].as_str() == Some(value),
        other => panic!("the fake API server does not select on field {other:?}"),
    })
}

/// `a=b,c=d`.
fn selector_matches(selector: Option<&str>, object: &Value) -> bool {
    equality_terms(selector, "label")
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
}

fn kind_of(collection: &str) -> String {
    let resource = collection.rsplit('/').next().unwrap_or_default();
    match resource {
        "services" => "Service",
        "endpointslices" => "EndpointSlice",
        "pods" => "Pod",
        "namespaces" => "Namespace",
        "serviceexports" => "ServiceExport",
        "serviceimports" => "ServiceImport",
        "leases" => "Lease",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "tokenreviews" => "TokenReview",
        other => panic!("the fake API server does not know resource {other:?}"),
    }
    .to_owned()
}

fn api_version_of(collection: &str) -> String {
    let parts: Vec<&str> = collection.split('/').collect();
    match parts.as_slice() {
        ["api", v, _] => (*v).to_owned(),
        ["apis", group, version, _] => format!("{group}/{version}"),
        _ => String::new(),
    }
}

/// RFC 7386 JSON merge patch (also what apply does here: the zone applies whole objects).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes).boxed())
        .unwrap_or_default()
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let (events, _) = broadcast::channel(1024);
        let task = tokio::spawn({
            let store = store.clone();
            let events = events.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let store = store.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let store = store.clone();
                            let events = events.clone();
                            async move { Ok::<_, Infallible>(handle(req, store, events).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            store,
            events,
            task,
        }
    }

    /// A kubeconfig pointing at this server (plain HTTP, any token).
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user:\n    token: fake\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
            self.addr
        )
    }

    /// Creates or replaces an object, as `kubectl apply` would (`collection` as in [`Key`]).
    pub fn put(&self, collection: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_owned();
        let key = Key {
            collection: collection.to_owned(),
            namespace: namespace.to_owned(),
            name,
        };
        let mut store = self.store.lock().unwrap();
        let kind = if store.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        write(&mut store, &self.events, key, object, kind);
    }

    /// Deletes an object if it exists.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let key = Key {
            collection: collection.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let mut store = self.store.lock().unwrap();
        if let Some(object) = store.objects.remove(&key) {
            record(&mut store, &self.events, key, object, "DELETED");
        }
    }

    /// An object as stored.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            collection: collection.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.store.lock().unwrap().objects.get(&key).cloned()
    }
}

/// Stores `object` under `key` with the next resourceVersion and records the event.
fn write(
    store: &mut Store,
    events: &broadcast::Sender<(u64, Event)>,
    key: Key,
    mut object: Value,
    kind: &'static str,
) -> Value {
    store.version += 1;
    let version = store.version;
    let metadata = &mut object["metadata"];
    metadata["resourceVersion"] = json!(version.to_string());
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    if metadata["uid"].is_null() {
        metadata["uid"] = json!(format!("uid-{version}"));
    }
    if metadata["creationTimestamp"].is_null() {
        metadata["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
    }
    object["apiVersion"] = json!(api_version_of(&key.collection));
    object["kind"] = json!(kind_of(&key.collection));
    store.objects.insert(key.clone(), object.clone());
    record(store, events, key, object.clone(), kind);
    object
}

fn record(
    store: &mut Store,
    events: &broadcast::Sender<(u64, Event)>,
    key: Key,
    mut object: Value,
    kind: &'static str,
) {
    if kind == "DELETED" {
        store.version += 1;
        object["metadata"]["resourceVersion"] = json!(store.version.to_string());
    }
    let event = (store.version, Event { key, kind, object });
    store.history.push(event.clone());
    let _ = events.send(event);
}

async fn handle(
    req: Request<Incoming>,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(u64, Event)>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "body".into()),
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        }
    };
    let Some(target) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
        );
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let key = |name: &str| Key {
        collection: target.collection.clone(),
        namespace: namespace.clone(),
        name: name.to_owned(),
    };
    match (&method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let selector = query_param(&query, "labelSelector");
            let fields = query_param(&query, "fieldSelector");
            if query_param(&query, "watch").as_deref() == Some("true") {
                let from: u64 = query_param(&query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = query_param(&query, "timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(290);
                return watch(&store, &events, target, (selector, fields), from, timeout);
            }
            let store = store.lock().unwrap();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| selects(&target, (&selector, &fields), k, v))
                .map(|(_, v)| v.clone())
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", kind_of(&target.collection)),
                        "apiVersion": api_version_of(&target.collection),
                        "metadata": {"resourceVersion": store.version.to_string()},
                        "items": items}),
            )
        }
        (&Method::GET, Some(name)) => match store.lock().unwrap().objects.get(&key(name)) {
            Some(object) => json_response(StatusCode::OK, object),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{name} not found"),
            ),
        },
        (&Method::POST, None) => {
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "no name".into(),
                );
            };
            let mut store = store.lock().unwrap();
            if store.objects.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{name} already exists"),
                );
            }
            let object = write(&mut store, &events, key(&name), body, "ADDED");
            json_response(StatusCode::CREATED, &object)
        }
        (&Method::PUT, Some(name)) => {
            let mut store = store.lock().unwrap();
            let Some(current) = store.objects.get(&key(name)) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{name} not found"),
                );
            };
            let sent = &body["metadata"]["resourceVersion"];
            if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("{name}: the object has been modified"),
                );
            }
            let object = match target.subresource.as_deref() {
                Some("status") => {
                    let mut object = current.clone();
                    object["status"] = body["status"].clone();
                    object
                }
                _ => body,
            };
            let object = write(&mut store, &events, key(name), object, "MODIFIED");
            json_response(StatusCode::OK, &object)
        }
        (&Method::PATCH, Some(name)) => {
            let mut store = store.lock().unwrap();
            let current = store.objects.get(&key(name)).cloned();
            let apply = content_type.starts_with("application/apply-patch");
            let (mut object, kind) = match current {
                Some(current) => (current, "MODIFIED"),
                None if apply => (json!({"metadata": {"name": name}}), "ADDED"),
                None => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    );
                }
            };
            if content_type.starts_with("application/json-patch") {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "JSON patches are not supported by the fake API server".into(),
                );
            }
            merge(&mut object, &body);
            let object = write(&mut store, &events, key(name), object, kind);
            json_response(StatusCode::OK, &object)
        }
        (&Method::DELETE, Some(name)) => {
            let mut store = store.lock().unwrap();
            match store.objects.remove(&key(name)) {
                Some(object) => {
                    record(&mut store, &events, key(name), object.clone(), "DELETED");
                    json_response(StatusCode::OK, &object)
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{name} not found"),
                ),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}

/// Streams the events of `target`'s collection after `from`, then live ones, for `timeout` s.
fn watch(
    store: &Arc<Mutex<Store>>,
    events: &broadcast::Sender<(u64, Event)>,
    target: Target,
    (selector, fields): (Option<String>, Option<String>),
    from: u64,
    timeout: u64,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    // Subscribed before the history is read, so nothing falls between the two.
    let mut live = events.subscribe();
    let past: Vec<(u64, Event)> = store
        .lock()
        .unwrap()
        .history
        .iter()
        .filter(|(v, _)| *v > from)
        .cloned()
        .collect();
    let matches =
        move |event: &Event| selects(&target, (&selector, &fields), &event.key, &event.object);
    tokio::spawn(async move {
        let frame = |event: &Event| {
            let mut line = serde_json::to_vec(&json!({"type": event.kind, "object": event.object}))
                .unwrap_or_default();
            line.push(b'\n');
            Ok(Frame::data(Bytes::from(line)))
        };
        let mut sent = from;
        for (version, event) in &past {
            if matches(event) && tx.send(frame(event)).await.is_err() {
                return;
            }
            sent = sent.max(*version);
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                event = live.recv() => match event {
                    Ok((version, event)) => {
                        if version > sent && matches(&event) && tx.send(frame(&event)).await.is_err() {
                            return;
                        }
                        sent = sent.max(version);
                    }
                    // Too slow a reader: end the watch, the client lists again.
                    Err(_) => return,
                },
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
        .unwrap_or_default()
}
