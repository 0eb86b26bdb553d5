//! Fixed-rate load (an open model: requests go out on schedule whether or not earlier ones
//! answered, as real clients do), recording which zone answered.
//!
//! - [`Protocol::Http`]: each request a `GET` on a fresh connection; the answering zone is read
//!   from the response body's JSON field `zone` (what `strait demo-app` answers); a 2xx answer
//!   without one counts as zone `unknown`.
//! - [`Protocol::Grpc`]: each request a `strait.demo.v1.Greeter/Hello` call on one long-lived
//!   HTTP/2 channel (what `strait demo-app --protocol grpc` serves), see [`crate::grpc`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use strait_proto::demo::v1::greeter_client::GreeterClient;
use tonic::transport::Channel;

use crate::timeline::{Sample, SampleResult};

/// The largest answer read; the demo app's is about 150 bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// What the load speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `GET path` over HTTP/1.1, a fresh connection per request.
    #[default]
    Http,
    /// `Greeter/Hello` over gRPC, one channel for the whole load.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub path: String,
    /// Requests per second.
    pub rate: u32,
    /// Per request, connect to the end of the answer.
    pub timeout: Duration,
    /// Requests in flight beyond this are not sent and count as errors (the client's own
    /// limit, so a hung target cannot exhaust this process).
    pub max_in_flight: usize,
}

impl LoadConfig {
    pub fn new(target: SocketAddr, rate: u32) -> Self {
        Self {
            target,
            protocol: Protocol::Http,
            path: "/".to_owned(),
            rate: rate.max(1),
            timeout: Duration::from_secs(5),
            max_in_flight: 512,
        }
    }
}

/// Counts so far, for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    /// The zone of the latest answer.
    pub last_zone: Option<String>,
}

/// A running load. [`Load::stop`] ends it and returns every sample.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Load {
    /// Starts sending at `config.rate` per second. Must be called inside a tokio runtime.
    pub fn start(config: LoadConfig) -> Self {
        let started = Instant::now();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (stop, mut stopped) = watch::channel(false);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let shared = samples.clone();
        let caller = Arc::new(Caller::new(&config));
        let config = Arc::new(config);
        let scheduler = tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(config.rate));
            let mut ticks = tokio::time::interval(period);
            // Late ticks are sent at once: the schedule, not the target, sets the rate.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks: Vec<JoinHandle<()>> = Vec::new();
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.wait_for(|s| *s) => return tasks,
                }
                let sent = started.elapsed();
                if in_flight.load(Ordering::Relaxed) >= config.max_in_flight {
                    lock(&shared).push(Sample {
                        sent,
                        latency: Duration::ZERO,
                        result: SampleResult::Failed {
                            reason: "not sent: too many requests in flight".into(),
                        },
                    });
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (config, shared, in_flight, caller) = (
                    config.clone(),
                    shared.clone(),
                    in_flight.clone(),
                    caller.clone(),
                );
                tasks.retain(|t| !t.is_finished());
                tasks.push(tokio::spawn(async move {
                    let begin = Instant::now();
                    let result = caller.call(&config).await;
                    lock(&shared).push(Sample {
                        sent,
                        latency: begin.elapsed(),
                        result,
                    });
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                }));
            }
        });
        Self {
            started,
            samples,
            stop,
            scheduler,
        }
    }

    /// Time since the load started (the samples' clock).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn progress(&self) -> Progress {
        let samples = lock(&self.samples);
        let mut p = Progress {
            sent: samples.len() as u64,
            ..Progress::default()
        };
        for s in samples.iter() {
            match &s.result {
                SampleResult::Answered { .. } => p.answered += 1,
                SampleResult::Failed { .. } => p.errors += 1,
            }
        }
        p.last_zone = samples.iter().rev().find_map(|s| match &s.result {
            SampleResult::Answered { zone } => Some(zone.clone()),
            SampleResult::Failed { .. } => None,
        });
        p
    }

    /// Errors so far (cheap enough to call a few times a second).
    pub fn errors(&self) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|s| matches!(s.result, SampleResult::Failed { .. }))
            .count() as u64
    }

    /// Stops sending, waits for the requests in flight (each bounded by its timeout) and
    /// returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        if let Ok(tasks) = self.scheduler.await {
            for task in tasks {
                let _ = task.await;
            }
        }
        std::mem::take(&mut *lock(&self.samples))
    }
}

/// How the load sends one request.
enum Caller {
    Http,
    /// A clone per call shares the channel.
    Grpc(GreeterClient<Channel>),
}

impl Caller {
    /// Must be called inside a tokio runtime (a gRPC channel starts its worker).
    fn new(config: &LoadConfig) -> Self {
        match config.protocol {
            Protocol::Http => Caller::Http,
            Protocol::Grpc => Caller::Grpc(crate::grpc::client(config.target)),
        }
    }

    /// One request, bounded by `config.timeout`.
    async fn call(&self, config: &LoadConfig) -> SampleResult {
        let sent = async {
            match self {
                Caller::Http => request(config).await,
                Caller::Grpc(client) => crate::grpc::hello(client, config.timeout).await,
            }
        };
        // The gRPC deadline ends a call at `timeout` already; this bounds the rest (and HTTP).
        match tokio::time::timeout(config.timeout + GRACE, sent).await {
            Ok(result) => result,
            Err(_) => SampleResult::Failed {
                reason: format!("timed out after {:?}", config.timeout),
            },
        }
    }
}

/// Past a request's own timeout, how long the load waits before it gives up on it.
const GRACE: Duration = Duration::from_millis(100);

/// One request as `config` describes it (outside a load: a check that the target answers at
/// all).
pub async fn request_once_with(config: &LoadConfig) -> SampleResult {
    Caller::new(config).call(config).await
}

/// One `GET` to `target` on a fresh connection, bounded by `timeout` (outside a load: a check
/// that a path answers at all).
pub async fn request_once(target: SocketAddr, timeout: Duration) -> SampleResult {
    let config = LoadConfig {
        timeout,
        ..LoadConfig::new(target, 1)
    };
    request_once_with(&config).await
}

/// One `GET` on a fresh connection.
async fn request(config: &LoadConfig) -> SampleResult {
    let failed = |reason: String| SampleResult::Failed { reason };
    let mut stream = match TcpStream::connect(config.target).await {
        Ok(s) => s,
        Err(e) => return failed(format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: strait-drill\r\nConnection: close\r\n\r\n",
        config.path, config.target
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return failed(format!("send: {e}"));
    }
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&chunk[..n]);
                if reply.len() > MAX_RESPONSE {
                    break;
                }
            }
            Err(e) if reply.is_empty() => return failed(format!("receive: {e}")),
            Err(_) => break,
        }
    }
    parse(&reply)
}

/// The outcome of a raw HTTP/1.1 answer.
pub fn parse(reply: &[u8]) -> SampleResult {
    let text = String::from_utf8_lossy(reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return SampleResult::Failed {
            reason: if reply.is_empty() {
                "closed without an answer".into()
            } else {
                "malformed answer".into()
            },
        };
    };
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        let error = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-strait-error")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        return SampleResult::Failed {
            reason: format!("{status} {error}").trim().to_owned(),
        };
    }
    let zone = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| v.get("zone").and_then(|z| z.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    SampleResult::Answered { zone }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use strait_test_support::wait::{PATIENCE, eventually};

    #[test]
    fn answers_are_read_for_their_zone_and_failures_for_their_reason() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"zone\":\"b\",\"service\":\"echo\"}";
        assert_eq!(parse(ok), SampleResult::Answered { zone: "b".into() });
        let plain = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse(plain),
            SampleResult::Answered {
                zone: "unknown".into()
            }
        );
        let refused = b"HTTP/1.1 503 Service Unavailable\r\nx-strait-error: zone-unreachable\r\n\r\nzone-unreachable: ...";
        assert_eq!(
            parse(refused),
            SampleResult::Failed {
                reason: "503 zone-unreachable".into()
            }
        );
        assert!(matches!(parse(b""), SampleResult::Failed { .. }));
        assert!(matches!(parse(b"garbage"), SampleResult::Failed { .. }));
    }

    #[tokio::test]
    async fn the_rate_holds_and_failures_are_counted() {
        // A listener that answers like the demo app.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0_u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\n\r\n{\"zone\":\"a\"}")
                        .await;
                });
            }
        });
        let load = Load::start(LoadConfig::new(addr, 200));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;
        // 200/s for 0.5 s: about 100 (the first tick fires at once).
        assert!((80..=125).contains(&samples.len()), "{}", samples.len());
        assert!(
            samples
                .iter()
                .all(|s| s.result == SampleResult::Answered { zone: "a".into() })
        );

        // Nobody listening: every request is an error, none is lost.
        drop(samples);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let load = Load::start(LoadConfig::new(closed, 100));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let samples = load.stop().await;
        assert!(!samples.is_empty());
        assert!(
            samples
                .iter()
                .all(|s| matches!(s.result, SampleResult::Failed { .. }))
        );
    }

    /// A stand-in `Greeter`: answers from zone `a`, or fails every call with `UNAVAILABLE`.
    struct FakeGreeter {
        fail: bool,
    }

    #[tonic::async_trait]
    impl strait_proto::demo::v1::greeter_server::Greeter for FakeGreeter {
        async fn hello(
            &self,
            _: tonic::Request<strait_proto::demo::v1::HelloRequest>,
        ) -> Result<tonic::Response<strait_proto::demo::v1::HelloReply>, tonic::Status> {
            if self.fail {
                return Err(tonic::Status::unavailable("no-healthy-upstream"));
            }
            Ok(tonic::Response::new(strait_proto::demo::v1::HelloReply {
                zone: "a".into(),
                ..Default::default()
            }))
        }

        type CountStream =
            tokio_stream::Empty<Result<strait_proto::demo::v1::CountReply, tonic::Status>>;

        async fn count(
            &self,
            _: tonic::Request<strait_proto::demo::v1::CountRequest>,
        ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    async fn greeter(fail: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(strait_proto::demo::v1::greeter_server::GreeterServer::new(
                    FakeGreeter { fail },
                ))
                .serve_with_incoming(incoming),
        );
        addr
    }

    fn grpc(target: SocketAddr, rate: u32) -> LoadConfig {
        LoadConfig {
            protocol: Protocol::Grpc,
            ..LoadConfig::new(target, rate)
        }
    }

    #[tokio::test]
    async fn grpc_load_holds_the_rate_and_counts_failures_by_status() {
        let ok = greeter(false).await;
        let load = Load::start(grpc(ok, 200));
        let sent = |load: &Load, n: u64| load.progress().sent >= n;
        eventually("100 calls sent", PATIENCE, async || sent(&load, 100)).await;
        let samples = load.stop().await;
        assert!(samples.len() >= 100, "{}", samples.len());
        // Open loop at 200/s: call i leaves no earlier than i × 5 ms.
        for (i, s) in samples.iter().enumerate() {
            assert!(
                s.sent >= Duration::from_millis(5 * i as u64),
                "call {i}: {s:?}"
            );
        }
        assert!(
            samples
                .iter()
                .all(|s| s.result == SampleResult::Answered { zone: "a".into() }),
            "{samples:?}"
        );

        let failing = greeter(true).await;
        let load = Load::start(grpc(failing, 100));
        eventually("10 calls sent", PATIENCE, async || sent(&load, 10)).await;
        let samples = load.stop().await;
        assert!(!samples.is_empty());
        for s in &samples {
            let SampleResult::Failed { reason } = &s.result else {
                panic!("answered: {s:?}");
            };
            assert_eq!(reason, "grpc UNAVAILABLE: no-healthy-upstream");
            assert_eq!(crate::grpc::status_of(reason), "UNAVAILABLE");
        }

        // Nobody listening: every call fails (UNAVAILABLE from the channel), none is lost.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let result = request_once_with(&LoadConfig {
            timeout: Duration::from_secs(2),
            ..grpc(closed, 1)
        })
        .await;
        let SampleResult::Failed { reason } = result else {
            panic!("a closed port answered");
        };
        assert_eq!(crate::grpc::status_of(&reason), "UNAVAILABLE", "{reason}");
    }
}
