//! A scripted Kubernetes API server for tests, as kube-rs tests itself (`mock_tests.rs`): a
//! `kube::Client` over `tower_test::mock`, whose every request the test receives as a
//! [`Call`] and answers with JSON, an API error or (for watches) a stream of events.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<ResponseBody>>;
type Responder = tower_test::mock::SendResponse<Response<ResponseBody>>;

/// The test's side of the client.
pub struct ApiServer {
    handle: Handle,
}

/// A client whose API server is the returned [`ApiServer`].
pub fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// One request, to answer.
pub struct Call {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The request body as JSON (`Null` when empty).
    pub body: Value,
    respond: Responder,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}?{}", self.method, self.path, self.query)
    }
}

impl ApiServer {
    /// The next request; panics after 5 s without one (the code under test is stuck).
    pub async fn next(&mut self) -> Call {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("no request to the API server within 5s")
                .expect("the client is gone");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request body is JSON")
            },
            respond,
        }
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: http::Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request {call:?}"
        );
        call
    }
}

impl Call {
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|kv| kv == "watch=true")
    }

    /// Answers with `status` and a JSON body.
    pub fn json(self, status: u16, body: Value) {
        let bytes = Bytes::from(serde_json::to_vec(&body).expect("JSON"));
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes).boxed_unsync())
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers with 200 and the request's own body (what an apply or update returns, near
    /// enough).
    pub fn echo(self) {
        let body = self.body.clone();
        self.json(200, body);
    }

    /// Answers with an API error (`metav1.Status`).
    pub fn error(self, code: u16, reason: &str) {
        self.json(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("scripted {reason}"), "reason": reason, "code": code}),
        );
    }

    /// Answers a watch: events sent on the returned channel (one JSON watch event each)
    /// reach the client until the channel is dropped.
    pub fn stream(self) -> mpsc::Sender<Value> {
        let (tx, rx) = mpsc::channel::<Value>(16);
        let frames = ReceiverStream::new(rx).map(|event| {
            let mut line = serde_json::to_vec(&event).expect("JSON");
            line.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        });
        let response = Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(frames).boxed_unsync())
            .expect("response");
        self.respond.send_response(response);
        tx
    }
}

/// A list response.
pub fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": "1"}, "items": items})
}
