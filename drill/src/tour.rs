//! `strait demo`'s plan of checks: the calls from zone a's client (HTTP, gRPC, WebSocket) with
//! the zone each must be answered in, planned from the exported services and the client
//! sidecar's zone-pinned VIPs (pure); running one of them; the DNS names it asks and what each
//! must answer; the greeter `Retry` it applies; the failover drills it runs. No printing: the
//! binary prints each outcome as it comes (`src/commands/demo.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use strait_global::admin_client::{AdminClient, ClientError};
use strait_proto as pb;
use strait_proto::demo::v1::HelloReply;

use crate::failover::DrillSpec;
use crate::load::Protocol;
use crate::outage::Mode;
use crate::probe::{ProbeError, call, until};

/// The demo's apps: the tour waits until each has a VIP in zone a.
pub const SERVICES: [&str; 4] = ["echo", "ledger", "greeter", "wsecho"];

/// What the demo's `Retry` for `greeter` retries.
pub const GREETER_RETRY_ON: &str = "connect-failure, unavailable";

/// gRPC calls the kill drill may lose: those in flight on the killed instance.
pub const KILL_IN_FLIGHT: u64 = 3;

/// The message a WebSocket check sends and expects back.
pub const WEBSOCKET_MESSAGE: &str = "hello over the mesh";

/// The numbers a `Greeter/Count(5)` stream must carry.
const COUNT: [u32; 5] = [1, 2, 3, 4, 5];

/// The groups of calls, in the order the tour makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Http,
    Grpc,
    WebSocket,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Http, Section::Grpc, Section::WebSocket];

    /// The service whose zone-pinned VIPs the section calls.
    pub fn pinned_service(self) -> &'static str {
        match self {
            Section::Http => "echo",
            Section::Grpc => "greeter",
            Section::WebSocket => "wsecho",
        }
    }
}

/// What a check sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /` (the demo app's JSON answer).
    Http,
    /// `strait.demo.v1.Greeter/Hello`.
    Hello,
    /// `strait.demo.v1.Greeter/Count(5)`: a server stream.
    Count,
    /// A WebSocket round trip.
    WebSocket,
}

/// One call of the tour: what is called, through which VIP, and the zone that must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub kind: Kind,
    /// `VIP:PORT`; `None` when zone a's client has no VIP for it (the check fails).
    pub target: Option<String>,
    pub expected: String,
}

impl Check {
    fn new(what: impl Into<String>, kind: Kind, vip: Option<&str>, expected: &str) -> Self {
        Check {
            what: what.into(),
            kind,
            target: vip.map(|v| format!("{v}:8080")),
            expected: expected.to_owned(),
        }
    }
}

/// The VIP of service `name` in `zone`.
pub fn vip(services: &[pb::ServiceStatus], name: &str, zone: &str) -> Option<String> {
    services
        .iter()
        .find(|s| s.service.as_ref().is_some_and(|r| r.name == name))
        .and_then(|s| s.vips.get(zone).cloned())
}

/// Whether every one of [`SERVICES`] has a VIP in zone a.
pub fn all_listed(services: &[pb::ServiceStatus]) -> bool {
    SERVICES
        .iter()
        .all(|name| vip(services, name, "a").is_some())
}

/// The checks of `section`, from the exported services and the zone-pinned VIPs (zone → VIP)
/// of [`Section::pinned_service`] in zone a's client. An HTTP call without a VIP is left out
/// (the DNS checks show what is missing); a gRPC or WebSocket one stays, and fails.
pub fn plan(
    section: Section,
    services: &[pb::ServiceStatus],
    pinned: &BTreeMap<String, String>,
) -> Vec<Check> {
    let vip = |name: &str| vip(services, name, "a");
    let pinned_to = |zone: &str| pinned.get(zone).map(String::as_str);
    let mut checks = Vec::new();
    match section {
        Section::Http => {
            if let Some(v) = vip("echo") {
                checks.push(Check::new("echo", Kind::Http, Some(&v), "a"));
            }
            if let Some(v) = vip("ledger") {
                let what = "ledger (runs only in zone c)";
                checks.push(Check::new(what, Kind::Http, Some(&v), "c"));
            }
            for zone in ["b", "c"] {
                if let Some(v) = pinned_to(zone) {
                    let what = format!("echo pinned to zone {zone}");
                    checks.push(Check::new(what, Kind::Http, Some(v), zone));
                }
            }
        }
        Section::Grpc => {
            checks.push(Check::new(
                "greeter",
                Kind::Hello,
                vip("greeter").as_deref(),
                "a",
            ));
            for zone in ["b", "c"] {
                let what = format!("greeter pinned to zone {zone}");
                checks.push(Check::new(what, Kind::Hello, pinned_to(zone), zone));
            }
            let count = Check::new("greeter pinned to zone b", Kind::Count, pinned_to("b"), "b");
            if count.socket_addr().is_some() {
                checks.push(count);
            }
        }
        Section::WebSocket => {
            checks.push(Check::new(
                "wsecho",
                Kind::WebSocket,
                vip("wsecho").as_deref(),
                "a",
            ));
            let what = "wsecho pinned to zone b";
            checks.push(Check::new(what, Kind::WebSocket, pinned_to("b"), "b"));
        }
    }
    checks
}

impl Check {
    fn socket_addr(&self) -> Option<SocketAddr> {
        self.target.as_deref().and_then(|t| t.parse().ok())
    }

    /// Makes the call, retried for a while (right after `strait up` the zones are still
    /// learning about each other, and a client sidecar may not listen on a new VIP yet).
    pub async fn run(&self, websocket: &impl WebSocketClient) -> Outcome {
        if self.kind == Kind::Http {
            // Unreachable without a target: HTTP checks are only planned with a VIP.
            return Outcome::Http(call(self.target.as_deref().unwrap_or_default()).await);
        }
        let Some(target) = self.socket_addr() else {
            return Outcome::NoVip;
        };
        match self.kind {
            Kind::Http | Kind::Hello => Outcome::Hello(
                until(
                    Duration::from_secs(30),
                    |_| true,
                    async || crate::grpc::hello_once(target, Duration::from_secs(5)).await,
                )
                .await,
            ),
            Kind::Count => {
                Outcome::Count(crate::grpc::count_once(target, 5, Duration::from_secs(5)).await)
            }
            Kind::WebSocket => {
                let not_listening = |err: &WebSocketError| err.not_listening;
                let trip = until(Duration::from_secs(10), not_listening, async || {
                    websocket.round_trip(target).await
                })
                .await;
                Outcome::WebSocket(trip.map_err(|err| err.message))
            }
        }
    }
}

/// A WebSocket round trip through a VIP, passed in: the client lives with the demo app
/// (`strait_sidecar::demo_ws`), a sibling component this crate does not depend on.
pub trait WebSocketClient: Sync {
    /// Upgrades `GET /` at `target`, reads the app's hello and has [`WEBSOCKET_MESSAGE`]
    /// echoed, within a few seconds.
    fn round_trip(
        &self,
        target: SocketAddr,
    ) -> impl Future<Output = Result<WebSocketTrip, WebSocketError>> + Send;
}

/// What a WebSocket round trip saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketTrip {
    /// The zone named by the upgrade's answer headers.
    pub zone: Option<String>,
    /// The app's first message (JSON naming who answered and who called).
    pub hello: serde_json::Value,
    /// The message sent, echoed back.
    pub echoed: String,
}

/// A WebSocket round trip failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketError {
    /// Nothing listens on the VIP (yet): worth another try. A refused upgrade is not.
    pub not_listening: bool,
    pub message: String,
}

/// What a check got.
#[derive(Debug)]
pub enum Outcome {
    /// A gRPC or WebSocket check without a VIP in zone a's client.
    NoVip,
    /// The demo app's JSON answer.
    Http(Result<serde_json::Value, ProbeError>),
    Hello(Result<HelloReply, tonic::Status>),
    /// The streamed numbers and the zone of the last answer.
    Count(Result<(Vec<u32>, String), tonic::Status>),
    WebSocket(Result<WebSocketTrip, String>),
}

impl Outcome {
    /// Whether the call got an answer (from whichever zone).
    pub fn answered(&self) -> bool {
        match self {
            Outcome::NoVip => false,
            Outcome::Http(r) => r.is_ok(),
            Outcome::Hello(r) => r.is_ok(),
            Outcome::Count(r) => r.is_ok(),
            Outcome::WebSocket(r) => r.is_ok(),
        }
    }

    /// Whether zone `expected` answered (and, for a stream, every number came; for a
    /// WebSocket, both the upgrade and the app's hello name it).
    pub fn met(&self, expected: &str) -> bool {
        match self {
            Outcome::Http(Ok(body)) => answer_field(body, "zone") == expected,
            Outcome::Hello(Ok(reply)) => reply.zone == expected,
            Outcome::Count(Ok((numbers, zone))) => numbers[..] == COUNT && zone == expected,
            Outcome::WebSocket(Ok(trip)) => {
                answer_field(&trip.hello, "zone") == expected
                    && trip.zone.as_deref() == Some(expected)
            }
            _ => false,
        }
    }
}

/// A field of the demo app's JSON answer, `?` when it has none.
pub fn answer_field<'a>(answer: &'a serde_json::Value, name: &str) -> &'a str {
    answer[name].as_str().unwrap_or("?")
}

/// The exported services once every one of [`SERVICES`] has a VIP in zone a (the workloads
/// started last may not be exported yet), or whatever is listed after `within`: the checks
/// then say what is missing.
pub async fn listed_services(
    admin: &AdminClient,
    within: Duration,
) -> Result<Vec<pb::ServiceStatus>, ClientError> {
    let listed = until(
        within,
        |e: &Result<_, _>| e.is_ok(),
        async || {
            let services = admin
                .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
                .await;
            match services.map(|reply| reply.services) {
                Ok(services) if all_listed(&services) => Ok(services),
                Ok(services) => Err(Ok(services)),
                Err(err) => Err(Err(err)),
            }
        },
    )
    .await;
    match listed {
        Ok(services) | Err(Ok(services)) => Ok(services),
        Err(Err(err)) => Err(err),
    }
}

/// The demo's `Retry` for `greeter`: a gRPC call is a `POST`, which the mesh retries only on a
/// connect failure unless `retryOn` names gRPC statuses; `unavailable` also retries a call
/// answered trailers-only `UNAVAILABLE` (nothing reached the caller yet).
pub fn greeter_retry() -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Retry
metadata:
  name: greeter-retries
  namespace: demo
spec:
  targetRef: {{service: greeter}}
  attempts: 2
  retryOn: [{GREETER_RETRY_ON}]
  backoff: {{base: 25ms, max: 250ms}}
"
    )
}

/// Applies `yaml` (as `strait apply -f` would) on behalf of `source`.
pub async fn apply(admin: &AdminClient, yaml: String, source: &str) -> Result<(), ClientError> {
    let request = pb::ApplyPoliciesRequest {
        yaml,
        source: source.to_owned(),
        dry_run: false,
    };
    admin
        .call(|mut c| {
            let r = request.clone();
            async move { c.apply_policies(r).await }
        })
        .await?;
    Ok(())
}

/// A DNS name the tour asks zone a's server and what the answer must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCheck {
    pub name: String,
    pub expect: DnsExpect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsExpect {
    /// Any answer: shown, not judged.
    Shown,
    /// An answer holding this address (echo's VIP in zone a; `None`: it has none, a failure).
    Address(Option<String>),
    NxDomain,
}

/// The names to ask: echo and ledger everywhere, echo pinned to zone b when zone a's client
/// has zone-pinned VIPs for echo, and a name nobody exports.
pub fn dns_checks(echo_vip: Option<String>, echo_pinned: bool) -> Vec<DnsCheck> {
    let check = |name: &str, expect| DnsCheck {
        name: name.to_owned(),
        expect,
    };
    let mut checks = vec![
        check(
            "echo.demo.svc.clusterset.local",
            DnsExpect::Address(echo_vip),
        ),
        check("ledger.demo.svc.clusterset.local", DnsExpect::Shown),
    ];
    if echo_pinned {
        checks.push(check("echo.demo.svc.b.mesh.local", DnsExpect::Shown));
    }
    checks.push(check("nope.demo.svc.clusterset.local", DnsExpect::NxDomain));
    checks
}

impl DnsCheck {
    /// Whether an answer with `code` and `addresses` is what was expected.
    pub fn met(&self, code: ResponseCode, addresses: &[String]) -> bool {
        match &self.expect {
            DnsExpect::Shown => true,
            DnsExpect::Address(vip) => vip.as_ref().is_some_and(|v| addresses.contains(v)),
            DnsExpect::NxDomain => code == ResponseCode::NXDomain,
        }
    }
}

/// One failover drill of the tour.
#[derive(Debug, Clone)]
pub struct TourDrill {
    pub title: String,
    /// Said before it runs.
    pub note: Option<String>,
    pub spec: DrillSpec,
    /// A zone that must have answered some of the load (where traffic must move to).
    pub moves_to: Option<&'static str>,
}

/// The tour's drills, in order, in the federation under `dir`: echo drained in zone a (traffic
/// must move to b, same region), then killed; the same for greeter under gRPC load.
pub fn drills(dir: &Path) -> Vec<TourDrill> {
    let drain = DrillSpec {
        service: "echo".into(),
        namespace: "demo".into(),
        zone: "a".into(),
        from: Some("a".into()),
        mode: Mode::Drain,
        protocol: Protocol::Http,
        rate: 50,
        duration: Duration::from_secs(3),
        max_errors: 50,
        objective_rto: Duration::from_secs(1),
        objective_errors: 0,
        dir: Some(dir.to_path_buf()),
    };
    let kill = |spec: &DrillSpec| DrillSpec {
        mode: Mode::Kill,
        duration: Duration::from_secs(2),
        ..spec.clone()
    };
    let grpc_drain = DrillSpec {
        service: "greeter".into(),
        protocol: Protocol::Grpc,
        ..drain.clone()
    };
    let drill = |title: String, spec: DrillSpec| TourDrill {
        title,
        note: None,
        spec,
        moves_to: None,
    };
    vec![
        TourDrill {
            moves_to: Some("b"),
            ..drill(
                "Failover drill: echo drained in zone a while zone a's client calls it".into(),
                drain.clone(),
            )
        },
        drill(
            "Failover drill: echo's processes in zone a SIGKILLed, then restarted".into(),
            kill(&drain),
        ),
        drill(
            format!(
                "Failover drill under gRPC load: greeter drained in zone a (Retry: {GREETER_RETRY_ON})"
            ),
            grpc_drain.clone(),
        ),
        // A call in flight on the instance at the moment it is killed is reset mid-call, and a
        // reset POST is not retried (the app may have run it): at 50 calls/s that is rarely
        // more than one call. The report names them; more than this many is a real failure.
        TourDrill {
            note: Some(format!(
                "(calls in flight on the killed instance are lost: at most {KILL_IN_FLIGHT} allowed)"
            )),
            ..drill(
                "Failover drill under gRPC load: greeter's processes in zone a SIGKILLed, then restarted"
                    .into(),
                DrillSpec {
                    objective_errors: KILL_IN_FLIGHT,
                    ..kill(&grpc_drain)
                },
            )
        },
    ]
}

#[cfg(test)]
mod tests;
