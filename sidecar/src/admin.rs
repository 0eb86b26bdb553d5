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
//! The JSON is derived from the types (`serde::Serialize`; `strait_proto` derives it for the
//! protobuf messages): field names are the `.proto` names, enums are their value names
//! (`"MESH_TLS_MODE_STRICT"`), an absent message is `null`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use strait_identity::{Identity, IdentityStatus};
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

/// `/config`: the running config with a `sidecar` object beside its fields.
#[derive(Serialize)]
struct ConfigDump<'a> {
    #[serde(flatten)]
    config: &'a pb::SidecarConfig,
    sidecar: SidecarDump<'a>,
}

/// What the sidecar itself runs with: its settings, identity and the app's health.
#[derive(Serialize)]
struct SidecarDump<'a> {
    settings: &'a SidecarSettings,
    identity: IdentityStatus,
    app_health: AppHealth,
}

fn dump(sources: &AdminSources, config: &pb::SidecarConfig) -> Value {
    let dump = ConfigDump {
        config,
        sidecar: SidecarDump {
            settings: &sources.settings,
            identity: sources.identity.status(),
            app_health: sources.health.borrow().clone(),
        },
    };
    serde_json::to_value(&dump).unwrap_or_else(|err| {
        // Only a map with non-string keys fails, and the types have none; say so if it happens.
        tracing::warn!(%err, "cannot render /config");
        Value::Null
    })
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pushed config as JSON, as `strait_proto` derives it: every field by its `.proto` name,
/// enums by their value names, a oneof's case as a field (see `strait_proto::json`).
pub fn config_json(c: &pb::SidecarConfig) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
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
                port_policies: Default::default(),
            }],
            inbound: Some(pb::InboundPolicy {
                tls_mode: pb::MeshTlsMode::Strict as i32,
                permissions: vec![pb::PermissionPolicy {
                    default_deny: true,
                    rules: vec![pb::PermissionRule {
                        allow: true,
                        from: vec!["spiffe://strait.local/ns/demo/sa/*".into()],
                        ..Default::default()
                    }],
                    name: "demo/echo-access".into(),
                }],
                rate_limit: None,
                app_protocol: pb::Protocol::Grpc as i32,
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
        assert_eq!(v["inbound"]["tls_mode"], "MESH_TLS_MODE_STRICT");
        assert_eq!(v["inbound"]["permissions"][0]["default_deny"], true);
        assert_eq!(v["inbound"]["permissions"][0]["name"], "demo/echo-access");
        assert_eq!(v["inbound"]["app_protocol"], "PROTOCOL_GRPC");
        assert_eq!(v["deny_list"][0], "c");
        assert_eq!(v["locality"]["region"], "eu");
    }
}
