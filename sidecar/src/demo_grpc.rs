//! The demo gRPC service (`strait demo-app --protocol grpc`): `strait.demo.v1.Greeter`, which
//! says which zone and instance served a call (and which identity its sidecar verified), plus
//! the standard `grpc.health.v1.Health` service, on one cleartext port.
//!
//! The same port answers plain HTTP `GET /ready` and `GET /healthz` with `200 ok` (HTTP/1.1 or
//! HTTP/2), so `strait up` sees it ready the way it sees every other process; anything with a
//! `content-type: application/grpc...` goes to the gRPC services.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_proto::demo::v1::greeter_server::{Greeter, GreeterServer};
use strait_proto::demo::v1::{CountReply, CountRequest, HelloReply, HelloRequest};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::codegen::Service;

use crate::inbound::PEER_IDENTITY_HEADER;

/// The most answers one `Count` call may ask for.
pub const MAX_COUNT: u32 = 1_000;
/// The longest pause between two `Count` answers.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// The `Greeter` of one demo instance.
#[derive(Debug, Clone)]
pub struct DemoGreeter {
    zone: Arc<str>,
    instance: Arc<str>,
}

impl DemoGreeter {
    pub fn new(zone: &str, instance: &str) -> Self {
        Self {
            zone: zone.into(),
            instance: instance.into(),
        }
    }

    /// The answer to `Hello` from `name`, called through a sidecar that verified
    /// `peer_identity`.
    pub fn hello_reply(&self, name: &str, peer_identity: Option<&str>) -> HelloReply {
        let name = if name.is_empty() { "world" } else { name };
        HelloReply {
            message: format!("hello {name}"),
            zone: self.zone.to_string(),
            instance: self.instance.to_string(),
            peer_identity: peer_identity.unwrap_or_default().to_owned(),
        }
    }

    /// What a `Count` request asks for, checked: how many answers, how far apart.
    pub fn count_plan(request: &CountRequest) -> Result<(u32, Duration), tonic::Status> {
        if request.count == 0 || request.count > MAX_COUNT {
            return Err(tonic::Status::invalid_argument(format!(
                "count must be 1 to {MAX_COUNT}, not {}",
                request.count
            )));
        }
        let interval = Duration::from_millis(u64::from(request.interval_ms));
        if interval > MAX_INTERVAL {
            return Err(tonic::Status::invalid_argument(format!(
                "interval_ms must be at most {}",
                MAX_INTERVAL.as_millis()
            )));
        }
        Ok((request.count, interval))
    }
}

type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for DemoGreeter {
    async fn hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let peer = request
            .metadata()
            .get(PEER_IDENTITY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(tonic::Response::new(
            self.hello_reply(&request.get_ref().name, peer.as_deref()),
        ))
    }

    type CountStream = CountStream;

    async fn count(
        &self,
        request: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<CountStream>, tonic::Status> {
        let (count, interval) = Self::count_plan(request.get_ref())?;
        let me = self.clone();
        let stream = futures::stream::unfold(1_u32, move |n| {
            let me = me.clone();
            async move {
                if n > count {
                    return None;
                }
                if n > 1 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let reply = CountReply {
                    n,
                    zone: me.zone.to_string(),
                    instance: me.instance.to_string(),
                };
                Some((Ok(reply), n + 1))
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Whether `request` is a gRPC call (the rest of the port answers plain HTTP).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The plain-HTTP side of the port: `/ready` and `/healthz` answer `ok`, anything else 404.
fn plain<B>(request: &Request<B>) -> Response<tonic::body::Body> {
    let (status, body): (StatusCode, &'static [u8]) = match request.uri().path() {
        "/ready" | "/healthz" => (StatusCode::OK, b"ok\n"),
        _ => (
            StatusCode::NOT_FOUND,
            b"a gRPC server: strait.demo.v1.Greeter, grpc.health.v1.Health\n",
        ),
    };
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves the demo gRPC service on `listener` until `shutdown` completes (open connections are
/// then closed).
pub async fn run_demo_grpc(
    listener: TcpListener,
    zone: String,
    instance: String,
    shutdown: impl Future,
) {
    let greeter = DemoGreeter::new(&zone, &instance);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GreeterServer<DemoGreeter>>().await;
    let routes =
        tonic::service::Routes::new(GreeterServer::new(greeter)).add_service(health_service);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(listen = ?listener.local_addr().ok(), %zone, %instance, "demo gRPC service serving");
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let routes = routes.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                            let mut routes = routes.clone();
                            async move {
                                if is_grpc(&request) {
                                    routes.call(request).await
                                } else {
                                    Ok::<_, Infallible>(plain(&request))
                                }
                            }
                        });
                        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        builder
                            .http1()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30));
                        if let Err(err) = builder.serve_connection(TokioIo::new(tcp), service).await {
                            tracing::debug!(%peer, %err, "demo gRPC connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "demo gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use strait_proto::demo::v1::greeter_client::GreeterClient;

    #[test]
    fn hello_names_the_instance_and_the_caller() {
        let g = DemoGreeter::new("b", "greeter-b");
        let reply = g.hello_reply("drill", Some("spiffe://strait.local/ns/demo/sa/client"));
        assert_eq!(reply.message, "hello drill");
        assert_eq!(reply.zone, "b");
        assert_eq!(reply.instance, "greeter-b");
        assert_eq!(
            reply.peer_identity,
            "spiffe://strait.local/ns/demo/sa/client"
        );
        assert_eq!(g.hello_reply("", None).message, "hello world");
        assert_eq!(g.hello_reply("", None).peer_identity, "");
    }

    #[test]
    fn count_requests_are_bounded() {
        let ok = CountRequest {
            count: 3,
            interval_ms: 5,
        };
        assert_eq!(
            DemoGreeter::count_plan(&ok).unwrap(),
            (3, Duration::from_millis(5))
        );
        for bad in [
            CountRequest {
                count: 0,
                interval_ms: 0,
            },
            CountRequest {
                count: MAX_COUNT + 1,
                interval_ms: 0,
            },
            CountRequest {
                count: 1,
                interval_ms: 60_000,
            },
        ] {
            let err = DemoGreeter::count_plan(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn only_grpc_content_goes_to_the_grpc_services() {
        let grpc = Request::builder()
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap();
        assert!(is_grpc(&grpc));
        let ready = Request::builder().uri("/ready").body(()).unwrap();
        assert!(!is_grpc(&ready));
        assert_eq!(plain(&ready).status(), StatusCode::OK);
        let other = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(plain(&other).status(), StatusCode::NOT_FOUND);
    }

    /// The real server on loopback: a tonic client's Hello, Count and Health, and `/ready`.
    #[tokio::test]
    async fn serves_greeter_health_and_ready_on_one_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_demo_grpc(
            listener,
            "a".into(),
            "greeter-a".into(),
            stopped,
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = GreeterClient::new(channel.clone());
        let reply = client
            .hello(HelloRequest { name: "t".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (reply.zone.as_str(), reply.instance.as_str()),
            ("a", "greeter-a")
        );
        let answers: Vec<u32> = client
            .count(CountRequest {
                count: 4,
                interval_ms: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().n)
            .collect()
            .await;
        assert_eq!(answers, [1, 2, 3, 4]);
        let status = client
            .count(CountRequest {
                count: 0,
                interval_ms: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            serving.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&reply)
        );

        let _ = stop.send(());
        server.await.unwrap();
    }
}
