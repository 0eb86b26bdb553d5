//! The sidecar's admin endpoint, on [`strait_observe::serve`]:
//!
//! - `/metrics`: every sidecar metric (the control's registry);
//! - `/ready`: `200` once the sidecar holds a valid certificate *and* has accepted a first
//!   config from its zone; `503` with the reason otherwise (re-checked every second, so an
//!   expired certificate shows);
//! - `/healthz`: `200` while the process runs;
//! - `/config`: the config it runs, as JSON ([`config_json`]), plus a `sidecar` object with its
//!   settings, identity and app health, rendered when asked for (rendering it every second
//!   cost ~130,000 instructions in a process whose requests cost ~80,000 each).
//!
//! The JSON is written by hand from the protobuf types (prost generates no serde): the field
//! names are the `.proto` names, enums are their names (`"STRICT"`), empty optional parts are
//! left out.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use strait_identity::Identity;
use strait_observe::{AdminState, Readiness};
use strait_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::SidecarSettings;
use crate::discovery::{AppHealth, Control};

/// How often readiness is re-checked even without a config change (to notice an expired
/// certificate).
const REFRESH: Duration = Duration::from_secs(1);

/// What the admin endpoint reports on; cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminSources {
    pub settings: SidecarSettings,
    pub identity: Identity,
    pub config: watch::Receiver<Arc<pb::SidecarConfig>>,
    pub health: watch::Receiver<AppHealth>,
    pub registry: prometheus::Registry,
}

impl AdminSources {
    pub fn from_control(control: &Control) -> Self {
        Self {
            settings: control.settings.clone(),
            identity: control.identity.clone(),
            config: control.config.clone(),
            health: control.health.clone(),
            registry: control.registry.clone(),
        }
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, sources: AdminSources, shutdown: impl Future) {
    let state = AdminState::new(sources.registry.clone());
    let rendered = sources.clone();
    state.config.set_computed(move || {
        let config = rendered.config.borrow().clone();
        dump(&rendered, &config)
    });
    refresh(&state, &sources);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(strait_observe::serve(listener, state.clone(), async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    let mut config = sources.config.clone();
    // False once discovery is gone: then only the timer refreshes.
    let mut config_open = true;
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = config.changed(), if config_open => {
                config_open = changed.is_ok();
                refresh(&state, &sources);
            }
            _ = ticks.tick() => refresh(&state, &sources),
        }
    }
    state.readiness.set_not_ready("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
}

/// Updates readiness from the sources.
pub fn refresh(state: &AdminState, sources: &AdminSources) {
    set_readiness(
        &state.readiness,
        &sources.identity,
        &sources.config.borrow(),
    );
}

fn set_readiness(readiness: &Readiness, identity: &Identity, config: &pb::SidecarConfig) {
    let info = identity.creds().cert_info();
    if !info.is_valid_at(SystemTime::now()) {
        readiness.set_not_ready(format!(
            "the workload certificate is not valid now (not after {})",
            unix_seconds(info.not_after)
        ));
    } else if config.version == 0 {
        readiness.set_not_ready("waiting for the first config from the zone control plane");
    } else {
        readiness.set_ready();
    }
}

/// `/config`: the running config plus a `sidecar` object.
fn dump(sources: &AdminSources, config: &pb::SidecarConfig) -> Value {
    let info = sources.identity.creds().cert_info();
    let health = sources.health.borrow().clone();
    let settings = serde_json::to_value(&sources.settings).unwrap_or(Value::Null);
    let mut value = config_json(config);
    if let Value::Object(map) = &mut value {
        map.insert(
            "sidecar".to_owned(),
            json!({
                "settings": settings,
                "identity": {
                    "spiffe_id": sources.identity.id().to_string(),
                    "not_before_unix": unix_seconds(info.not_before),
                    "not_after_unix": unix_seconds(info.not_after),
                    "trust_roots": sources.identity.trust().current().pins(),
                },
                "app_health": {"healthy": health.healthy, "reason": health.reason},
            }),
        );
    }
    value
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === pb::SidecarConfig as JSON ===

/// A pushed config as JSON: every field, `.proto` names, enums by name.
pub fn config_json(c: &pb::SidecarConfig) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), json!(c.version));
    m.insert("nonce".into(), json!(c.nonce));
    m.insert("zone".into(), json!(c.zone));
    if let Some(l) = &c.locality {
        m.insert("locality".into(), locality(l));
    }
    m.insert("trust_domain".into(), json!(c.trust_domain));
    m.insert(
        "services".into(),
        Value::Array(c.services.iter().map(service).collect()),
    );
    if let Some(i) = &c.inbound {
        m.insert("inbound".into(), inbound(i));
    }
    m.insert("deny_list".into(), json!(c.deny_list));
    Value::Object(m)
}

fn locality(l: &pb::Locality) -> Value {
    json!({"region": l.region, "zone": l.zone, "subzone": l.subzone})
}

fn service_ref(s: Option<&pb::ServiceRef>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({"namespace": s.namespace, "name": s.name}),
    )
}

fn port(p: &pb::Port) -> Value {
    let protocol = pb::Protocol::try_from(p.protocol)
        .map_or_else(|_| p.protocol.to_string(), |p| p.as_str_name().to_owned());
    json!({"name": p.name, "port": p.port, "protocol": protocol})
}

fn service(s: &pb::OutboundService) -> Value {
    let mut m = Map::new();
    m.insert("service".into(), service_ref(s.service.as_ref()));
    m.insert(
        "ports".into(),
        Value::Array(s.ports.iter().map(port).collect()),
    );
    m.insert("vip".into(), json!(s.vip));
    m.insert("zone_vips".into(), json!(sorted(&s.zone_vips)));
    m.insert(
        "localities".into(),
        Value::Array(s.localities.iter().map(locality_group).collect()),
    );
    if let Some(p) = &s.policy {
        m.insert("policy".into(), route_policy(p));
    }
    Value::Object(m)
}

fn sorted(
    map: &std::collections::HashMap<String, String>,
) -> std::collections::BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn locality_group(g: &pb::LocalityGroup) -> Value {
    json!({
        "zone": g.zone,
        "region": g.region,
        "priority": g.priority,
        "endpoints": g.endpoints.iter().map(|e| json!({
            "address": e.address,
            "instance": e.instance,
            "labels": sorted(&e.labels),
            "spiffe_id": e.spiffe_id,
            "healthy": e.healthy,
        })).collect::<Vec<_>>(),
        "local_gateways": g.local_gateways,
        "weight": g.weight,
        "drained": g.drained,
        "total": g.total,
    })
}

fn route_match(r: &pb::RouteMatch) -> Value {
    json!({
        "path_exact": r.path_exact,
        "path_prefix": r.path_prefix,
        "path_regex": r.path_regex,
        "method": r.method,
        "headers": r.headers.iter().map(|h| {
            use pb::header_match::Match;
            let mut m = Map::new();
            m.insert("name".into(), json!(h.name));
            match &h.r#match {
                Some(Match::Exact(v)) => { m.insert("exact".into(), json!(v)); }
                Some(Match::Prefix(v)) => { m.insert("prefix".into(), json!(v)); }
                Some(Match::Regex(v)) => { m.insert("regex".into(), json!(v)); }
                Some(Match::Present(v)) => { m.insert("present".into(), json!(v)); }
                None => {}
            }
            Value::Object(m)
        }).collect::<Vec<_>>(),
    })
}

fn route_policy(p: &pb::RoutePolicy) -> Value {
    let mut m = Map::new();
    m.insert(
        "routes".into(),
        Value::Array(
            p.routes
                .iter()
                .map(|r| {
                    json!({
                        "matches": r.matches.iter().map(route_match).collect::<Vec<_>>(),
                        "split": r.split.iter().map(|w| json!({
                            "labels": sorted(&w.labels),
                            "weight": w.weight,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ),
    );
    if let Some(r) = &p.retry {
        m.insert(
            "retry".into(),
            json!({
                "attempts": r.attempts,
                "per_try_timeout_ms": r.per_try_timeout_ms,
                "retry_on": r.retry_on,
                "retriable_status_codes": r.retriable_status_codes,
                "backoff_base_ms": r.backoff_base_ms,
                "backoff_max_ms": r.backoff_max_ms,
                "budget_percent": r.budget_percent,
                "min_retries_per_second": r.min_retries_per_second,
            }),
        );
    }
    if let Some(t) = &p.timeout {
        m.insert(
            "timeout".into(),
            json!({"connect_ms": t.connect_ms, "request_ms": t.request_ms, "idle_ms": t.idle_ms}),
        );
    }
    if let Some(c) = &p.circuit_breaker {
        m.insert(
            "circuit_breaker".into(),
            json!({
                "max_connections": c.max_connections,
                "max_pending_requests": c.max_pending_requests,
                "max_requests": c.max_requests,
                "consecutive_5xx": c.consecutive_5xx,
                "consecutive_connect_failures": c.consecutive_connect_failures,
                "interval_ms": c.interval_ms,
                "base_ejection_ms": c.base_ejection_ms,
                "max_ejection_percent": c.max_ejection_percent,
            }),
        );
    }
    if let Some(f) = &p.fault {
        m.insert(
            "fault".into(),
            json!({
                "delay_percent": f.delay_percent,
                "delay_ms": f.delay_ms,
                "abort_percent": f.abort_percent,
                "abort_status": f.abort_status,
                "matches": f.matches.iter().map(route_match).collect::<Vec<_>>(),
            }),
        );
    }
    if let Some(r) = &p.rate_limit {
        m.insert("rate_limit".into(), rate_limit(r));
    }
    m.insert("failover_order".into(), json!(p.failover_order));
    m.insert(
        "overprovisioning_percent".into(),
        json!(p.overprovisioning_percent),
    );
    Value::Object(m)
}

fn rate_limit(r: &pb::RateLimitPolicy) -> Value {
    json!({
        "requests": r.requests,
        "interval_ms": r.interval_ms,
        "burst": r.burst,
        "status": r.status,
    })
}

fn inbound(i: &pb::InboundPolicy) -> Value {
    let tls_mode = match pb::MeshTlsMode::try_from(i.tls_mode) {
        Ok(pb::MeshTlsMode::Strict) => "STRICT".to_owned(),
        Ok(pb::MeshTlsMode::Permissive) => "PERMISSIVE".to_owned(),
        Err(_) => i.tls_mode.to_string(),
    };
    let mut m = Map::new();
    m.insert("tls_mode".into(), json!(tls_mode));
    if let Some(p) = &i.permission {
        m.insert(
            "permission".into(),
            json!({
                "default_deny": p.default_deny,
                "rules": p.rules.iter().map(|r| json!({
                    "allow": r.allow,
                    "from": r.from,
                    "methods": r.methods,
                    "path_prefixes": r.path_prefixes,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    if let Some(r) = &i.rate_limit {
        m.insert("rate_limit".into(), rate_limit(r));
    }
    Value::Object(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn config_as_json() {
        let config = pb::SidecarConfig {
            version: 7,
            nonce: "n".into(),
            zone: "a".into(),
            locality: Some(pb::Locality {
                region: "eu".into(),
                zone: "a".into(),
                subzone: String::new(),
            }),
            trust_domain: "strait.local".into(),
            services: vec![pb::OutboundService {
                service: Some(pb::ServiceRef {
                    namespace: "demo".into(),
                    name: "echo".into(),
                }),
                ports: vec![pb::Port {
                    name: "http".into(),
                    port: 8080,
                    protocol: pb::Protocol::Http as i32,
                }],
                vip: "127.240.0.5".into(),
                zone_vips: [("b".to_owned(), "127.241.0.5".to_owned())].into(),
                localities: vec![pb::LocalityGroup {
                    zone: "a".into(),
                    endpoints: vec![pb::Endpoint {
                        address: "127.0.0.1:7001".into(),
                        instance: "echo-1".into(),
                        labels: [("version".to_owned(), "v1".to_owned())].into(),
                        spiffe_id: "spiffe://strait.local/ns/demo/sa/echo".into(),
                        healthy: true,
                    }],
                    ..Default::default()
                }],
                policy: Some(pb::RoutePolicy {
                    retry: Some(pb::RetryPolicy {
                        attempts: 3,
                        ..Default::default()
                    }),
                    routes: vec![pb::Route {
                        matches: vec![pb::RouteMatch {
                            headers: vec![pb::HeaderMatch {
                                name: "x-canary".into(),
                                r#match: Some(pb::header_match::Match::Exact("1".into())),
                            }],
                            ..Default::default()
                        }],
                        split: vec![],
                    }],
                    ..Default::default()
                }),
            }],
            inbound: Some(pb::InboundPolicy {
                tls_mode: pb::MeshTlsMode::Strict as i32,
                permission: Some(pb::PermissionPolicy {
                    default_deny: true,
                    rules: vec![pb::PermissionRule {
                        allow: true,
                        from: vec!["spiffe://strait.local/ns/demo/sa/*".into()],
                        ..Default::default()
                    }],
                }),
                rate_limit: None,
            }),
            deny_list: vec!["c".into()],
        };
        let v = config_json(&config);
        assert_eq!(v["version"], 7);
        let echo = &v["services"][0];
        assert_eq!(echo["service"]["name"], "echo");
        assert_eq!(echo["vip"], "127.240.0.5");
        assert_eq!(echo["zone_vips"]["b"], "127.241.0.5");
        assert_eq!(echo["ports"][0]["protocol"], "PROTOCOL_HTTP");
        let endpoint = &echo["localities"][0]["endpoints"][0];
        assert_eq!(endpoint["address"], "127.0.0.1:7001");
        assert_eq!(endpoint["labels"]["version"], "v1");
        assert_eq!(echo["policy"]["retry"]["attempts"], 3);
        assert_eq!(
            echo["policy"]["routes"][0]["matches"][0]["headers"][0]["exact"],
            "1"
        );
        assert_eq!(v["inbound"]["tls_mode"], "STRICT");
        assert_eq!(v["inbound"]["permission"]["default_deny"], true);
        assert_eq!(v["deny_list"][0], "c");
        assert_eq!(v["locality"]["region"], "eu");
    }
}
