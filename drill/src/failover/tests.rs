//! The drill's orchestration against an in-memory control plane: the fake's `set_drain` moves
//! a stand-in service (a loopback HTTP server answering as zone `a`, or as `b` while drained),
//! as a real federation's zones would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::admin::ExportedService;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How the stand-in service answers while drained.
const ANSWER_ZONE_B: u8 = 0;
const ANSWER_503: u8 = 1;

/// The stand-in service: zone `a` answers while not drained; while drained, zone `b` answers
/// (or, with [`ANSWER_503`], nobody does).
struct Service {
    addr: SocketAddr,
    drained: Arc<AtomicBool>,
    when_drained: Arc<AtomicU8>,
}

async fn service() -> std::io::Result<Service> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let drained = Arc::new(AtomicBool::new(false));
    let when_drained = Arc::new(AtomicU8::new(ANSWER_ZONE_B));
    let (d, w) = (drained.clone(), when_drained.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (d, w) = (d.clone(), w.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|x| x == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = match (d.load(Ordering::SeqCst), w.load(Ordering::SeqCst)) {
                    (false, _) => ok(r#"{"zone":"a"}"#),
                    (true, ANSWER_ZONE_B) => ok(r#"{"zone":"b"}"#),
                    (true, _) => "HTTP/1.1 503 Service Unavailable\r\nx-strait-error: no healthy upstream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(Service {
        addr,
        drained,
        when_drained,
    })
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The in-memory control plane: one exported service `demo/echo` whose VIP in zone `a` is
/// the stand-in's address; `set_drain` is recorded and moves the stand-in.
struct FakeAdmin {
    service: Option<ExportedService>,
    drained: Arc<AtomicBool>,
    calls: Mutex<Vec<(String, bool)>>,
    refuse_drain: bool,
}

impl FakeAdmin {
    fn new(service: &Service) -> Self {
        Self {
            service: Some(ExportedService {
                vips: BTreeMap::from([("a".to_owned(), service.addr.ip().to_string())]),
                ports: vec![u32::from(service.addr.port())],
            }),
            drained: service.drained.clone(),
            calls: Mutex::new(Vec::new()),
            refuse_drain: false,
        }
    }

    fn calls(&self) -> Vec<(String, bool)> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Admin for FakeAdmin {
    async fn service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ExportedService>, AdminError> {
        Ok(self
            .service
            .clone()
            .filter(|_| namespace == "demo" && name == "echo"))
    }

    async fn set_drain(
        &self,
        namespace: &str,
        service: &str,
        zone: &str,
        drained: bool,
    ) -> Result<(), AdminError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((format!("{namespace}/{service} in {zone}"), drained));
        if self.refuse_drain && drained {
            return Err("permission denied".into());
        }
        self.drained.store(drained, Ordering::SeqCst);
        Ok(())
    }
}

fn spec() -> DrillSpec {
    DrillSpec {
        service: "echo".to_owned(),
        namespace: "demo".to_owned(),
        zone: "a".to_owned(),
        from: None,
        mode: Mode::Drain,
        protocol: Protocol::Http,
        rate: 100,
        duration: Duration::from_millis(600),
        max_errors: 100,
        objective_rto: Duration::from_secs(1),
        objective_errors: 0,
        dir: None,
    }
}

fn fast() -> Timings {
    Timings {
        warmup: Duration::from_millis(400),
        failback_wait: Duration::from_secs(5),
        tail: Duration::from_millis(200),
        slice: Duration::from_millis(100),
        preflight: Duration::from_secs(2),
        poll: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn a_drain_moves_traffic_and_is_undone() -> TestResult {
    let service = service().await?;
    let admin = FakeAdmin::new(&service);
    let phases = Mutex::new(Vec::<String>::new());
    let report = run_failover(&admin, spec(), fast(), &|event| {
        if let DrillEvent::Progress { phase, .. } = event {
            let mut seen = phases.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.last().is_none_or(|p| p != phase) {
                seen.push(phase.to_owned());
            }
        }
    })
    .await?;
    assert_eq!(
        admin.calls(),
        [
            ("demo/echo in a".to_owned(), true),
            ("demo/echo in a".to_owned(), false)
        ]
    );
    assert!(!service.drained.load(Ordering::SeqCst), "left drained");
    assert_eq!(
        phases.into_inner()?,
        ["steady", "out", "restored"].map(str::to_owned)
    );
    let a = &report.analysis;
    assert_eq!(a.errors, 0, "{:?}", a.error_reasons);
    assert!(a.answers_by_zone.get("a").is_some_and(|n| *n > 0), "{a:?}");
    assert!(a.answers_by_zone.get("b").is_some_and(|n| *n > 0), "{a:?}");
    assert!(report.rto_met(), "rto {:?}", a.rto_ms);
    assert!(a.failback_ms.is_some(), "never failed back");
    assert!(report.objectives_met && !report.aborted, "{report:?}");
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(report.from, "a");
    let json = report.json();
    assert_eq!(json["mode"], "drain");
    assert_eq!(json["objectives_met"], true);
    Ok(())
}

#[tokio::test]
async fn the_guardrail_aborts_and_restores_at_once() -> TestResult {
    let service = service().await?;
    service.when_drained.store(ANSWER_503, Ordering::SeqCst);
    let admin = FakeAdmin::new(&service);
    let spec = DrillSpec {
        max_errors: 5,
        duration: Duration::from_secs(30),
        ..spec()
    };
    let started = Instant::now();
    let report = run_failover(&admin, spec, fast(), &|_| {}).await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drill stayed out for {:?}",
        started.elapsed()
    );
    assert!(report.aborted, "{report:?}");
    assert!(!report.objectives_met);
    assert!(report.analysis.errors > 5, "{:?}", report.analysis);
    assert_eq!(admin.calls().len(), 2, "{:?}", admin.calls());
    assert!(!service.drained.load(Ordering::SeqCst), "left drained");
    Ok(())
}

#[tokio::test]
async fn a_refused_drain_fails_the_drill_and_undoes_nothing() -> TestResult {
    let service = service().await?;
    let mut admin = FakeAdmin::new(&service);
    admin.refuse_drain = true;
    let restore_failures = Mutex::new(0);
    let err = run_failover(&admin, spec(), fast(), &|event| {
        if let DrillEvent::RestoreFailed(_) = event {
            *restore_failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
        }
    })
    .await
    .err()
    .ok_or("a refused drain reported success")?;
    assert!(matches!(err, DrillError::TakeOut(_)), "{err:?}");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err).ok_or("no cause")?
    );
    assert_eq!(
        chain,
        "taking the service out failed (it was restored): permission denied"
    );
    // Only the refused drain: nothing was applied, so nothing is undone.
    assert_eq!(admin.calls(), [("demo/echo in a".to_owned(), true)]);
    assert_eq!(restore_failures.into_inner()?, 0);
    Ok(())
}

#[tokio::test]
async fn a_zone_that_served_nothing_before_measures_nothing() -> TestResult {
    let service = service().await?;
    let admin = FakeAdmin::new(&service);
    // The load comes from zone a but the drill takes out zone c, which never answered it.
    let spec = DrillSpec {
        zone: "c".to_owned(),
        from: Some("a".to_owned()),
        ..spec()
    };
    // Zone c never answers again either: no need to wait long for its failback.
    let timings = Timings {
        failback_wait: Duration::from_millis(300),
        ..fast()
    };
    let report = run_failover(&admin, spec, timings, &|_| {}).await?;
    assert!(!report.objectives_met, "{report:?}");
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].starts_with("zone c answered none of zone a's requests"),
        "{}",
        report.notes[0]
    );
    Ok(())
}

#[tokio::test]
async fn unknown_services_and_zones_are_refused_before_any_load() -> TestResult {
    let service = service().await?;
    let admin = FakeAdmin::new(&service);
    let missing = DrillSpec {
        service: "ledger".to_owned(),
        ..spec()
    };
    let err = run_failover(&admin, missing, fast(), &|_| {})
        .await
        .err()
        .ok_or("drilled a service that does not exist")?;
    assert_eq!(err.to_string(), "no exported service demo/ledger");
    let elsewhere = DrillSpec {
        from: Some("b".to_owned()),
        ..spec()
    };
    let err = run_failover(&admin, elsewhere, fast(), &|_| {})
        .await
        .err()
        .ok_or("drilled from a zone without a VIP")?;
    assert_eq!(err.to_string(), "demo/echo has no VIP in zone b");
    let kill = DrillSpec {
        mode: Mode::Kill,
        ..spec()
    };
    let err = run_failover(&admin, kill, fast(), &|_| {})
        .await
        .err()
        .ok_or("kill mode without a federation directory")?;
    assert!(matches!(err, DrillError::NoFederationDir), "{err:?}");
    assert!(admin.calls().is_empty(), "{:?}", admin.calls());
    Ok(())
}

#[test]
fn only_failures_in_flight_at_the_kill_count_as_reset_by_it() {
    use crate::timeline::Sample;
    let ms = Duration::from_millis;
    let sample = |sent: u64, latency: u64, failed: bool| Sample {
        sent: ms(sent),
        latency: ms(latency),
        result: if failed {
            SampleResult::Failed {
                reason: "grpc INTERNAL: x".into(),
            }
        } else {
            SampleResult::Answered { zone: "a".into() }
        },
    };
    let samples = [
        sample(900, 50, true),  // failed, but over before the kill at 1000
        sample(980, 30, true),  // in flight at the kill: reset
        sample(990, 15, false), // in flight, answered (elsewhere or before the kill landed)
        sample(1_010, 5, true), // sent before the kill landed: reset too
        sample(1_300, 5, true), // sent well after the kill: not in flight at it
    ];
    assert_eq!(in_flight_at_kill(&samples, ms(1_000)), 2);
    assert_eq!(in_flight_at_kill(&[], ms(1_000)), 0);
}
