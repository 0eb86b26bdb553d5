//! Fixed-rate HTTP load (an open model: requests go out on schedule whether or not earlier ones
//! answered, as real clients do), each a `GET` on a fresh connection, recording which zone
//! answered.
//!
//! The answering zone is read from the response body's JSON field `zone` (what `strait
//! demo-app` answers); a 2xx answer without one counts as zone `unknown`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::timeline::{Sample, SampleResult};

/// The largest answer read; the demo app's is about 150 bytes.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
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
                let (config, shared, in_flight) =
                    (config.clone(), shared.clone(), in_flight.clone());
                tasks.retain(|t| !t.is_finished());
                tasks.push(tokio::spawn(async move {
                    let begin = Instant::now();
                    let result = match tokio::time::timeout(config.timeout, request(&config)).await
                    {
                        Ok(result) => result,
                        Err(_) => SampleResult::Failed {
                            reason: format!("timed out after {:?}", config.timeout),
                        },
                    };
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

/// One `GET` to `target` on a fresh connection, bounded by `timeout` (outside a load: a check
/// that a path answers at all).
pub async fn request_once(target: SocketAddr, timeout: Duration) -> SampleResult {
    let config = LoadConfig {
        timeout,
        ..LoadConfig::new(target, 1)
    };
    match tokio::time::timeout(timeout, request(&config)).await {
        Ok(result) => result,
        Err(_) => SampleResult::Failed {
            reason: format!("timed out after {timeout:?}"),
        },
    }
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
}
