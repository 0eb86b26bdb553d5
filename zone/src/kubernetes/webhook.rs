//! The sidecar injector: a mutating admission webhook for pods, served by the zone control
//! plane over HTTPS (`--webhook ADDR --webhook-cert F --webhook-key F --sidecar-image IMAGE`).
//!
//! [`mutate`] is pure (an `AdmissionReview` in, an `AdmissionResponse` with a JSON patch out)
//! and golden-tested against `zone/tests/fixtures/webhook/`. For a pod being created it adds:
//!
//! - init container `strait-init` (`strait sidecar init`): the traffic-capture rules — the zone's
//!   VIP range to the sidecar's outbound port, the app's TCP ports to its mTLS inbound port —
//!   with `NET_ADMIN` and `NET_RAW` and nothing else. Ports a kubelet probe uses are left out
//!   of inbound capture: the kubelet speaks plain HTTP/TCP to them and would be sent into mTLS;
//! - the sidecar `strait-sidecar` (`strait sidecar run`) as a native sidecar (an init container
//!   with `restartPolicy: Always`, Kubernetes 1.29+): it starts, and is ready, before the app
//!   containers, so the app's first calls already find it. Its identity is the pod's service
//!   account (`spiffe://TD/ns/NS/sa/SA`), proven with a projected service-account token for
//!   audience `strait` (the zone checks it with a TokenReview). It runs as uid 1337 (which the
//!   capture rules exclude), non-root, read-only root filesystem, no capabilities, with resources
//!   and probes on its admin port;
//! - the projected token volume, the trust bundle volume and the annotation
//!   `strait.dev/injected: "true"`. The bundle is the ConfigMap the leader keeps in every
//!   injected namespace ([`super::bundles`]), passed as `--bundle-file`: the sidecar verifies
//!   its zone control plane from its first connection, with no trust on first use. The volume
//!   is not optional: until the ConfigMap exists the kubelet holds the pod in
//!   `ContainerCreating` rather than start a sidecar without it.
//!
//! Pods already injected, opted out (label or annotation `strait.dev/inject` set to `false` or
//! `disabled`) and requests other than `CREATE` pass unchanged. Which namespaces are injected
//! is the `MutatingWebhookConfiguration`'s `namespaceSelector` (the Helm chart's).
//!
//! The HTTPS listener that serves [`mutate`] ([`serve`], [`tls_config`]) lives in
//! `webhook/server.rs`.

mod server;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::{Value, json};

pub use self::server::{WebhookError, serve, tls_config};

/// Label or annotation that opts a pod out (`false` or `disabled`).
pub const INJECT_KEY: &str = "strait.dev/inject";
/// Annotation the injector sets on the pods it mutated.
pub const INJECTED_KEY: &str = "strait.dev/injected";
/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = "strait-sidecar";
/// Name of the injected init container.
pub const INIT_NAME: &str = "strait-init";
/// The projected token volume.
pub const TOKEN_VOLUME: &str = "strait-token";
/// Where the sidecar reads its service-account token.
pub const TOKEN_DIR: &str = "/var/run/secrets/strait";
/// The trust bundle volume (the [`super::bundles`] ConfigMap).
pub const BUNDLE_VOLUME: &str = "strait-bundle";
/// Where the sidecar reads the trust bundle. Not under [`TOKEN_DIR`]: a mount point inside
/// another (read-only) volume is fragile.
pub const BUNDLE_DIR: &str = "/etc/strait/bundle";

/// What the injector puts into pods.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectSettings {
    /// The image of both injected containers (it holds `strait` and `iptables`).
    pub image: String,
    pub zone: String,
    /// How sidecars reach the zone control plane (`host:port`, its Service).
    pub zone_cp: String,
    pub trust_domain: String,
    /// The zone's VIP range: what traffic capture sends to the sidecar.
    pub vip_cidr: String,
    /// The sidecar's mutual TLS inbound port (what other sidecars dial at the pod IP).
    pub inbound_port: u16,
    /// Where the sidecar takes the app's redirected VIP connections (on 127.0.0.1).
    pub outbound_port: u16,
    /// The sidecar's admin endpoint (`/ready`, `/healthz`, `/metrics`), probed by the kubelet.
    pub admin_port: u16,
    /// The uid (and gid) the sidecar runs as, excluded from capture.
    pub proxy_uid: i64,
    /// Lifetime of the projected token (the kubelet renews it at 80%).
    pub token_expiration_seconds: i64,
    pub resources: ResourceRequirements,
}

impl InjectSettings {
    /// The defaults for everything but where the zone is.
    pub fn new(
        image: impl Into<String>,
        zone: impl Into<String>,
        zone_cp: impl Into<String>,
        trust_domain: impl Into<String>,
        vip_cidr: impl Into<String>,
    ) -> Self {
        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        Self {
            image: image.into(),
            zone: zone.into(),
            zone_cp: zone_cp.into(),
            trust_domain: trust_domain.into(),
            vip_cidr: vip_cidr.into(),
            inbound_port: 15008,
            outbound_port: 15001,
            admin_port: 15020,
            proxy_uid: 1337,
            token_expiration_seconds: 3600,
            resources: ResourceRequirements {
                requests: Some(quantities("50m", "64Mi")),
                limits: Some(quantities("1", "256Mi")),
                ..ResourceRequirements::default()
            },
        }
    }

    fn own_ports(&self) -> [u16; 3] {
        [self.inbound_port, self.outbound_port, self.admin_port]
    }
}

// === the mutation ===

/// The webhook's answer to `review`: pods being created get the sidecar (a JSON patch);
/// everything else is allowed unchanged. A review that cannot be read is answered `invalid`.
pub fn mutate(review: AdmissionReview<Pod>, settings: &InjectSettings) -> AdmissionResponse {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(e.to_string()),
    };
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Create {
        return response;
    }
    let Some(pod) = &request.object else {
        return response;
    };
    if let Some(reason) = skip_reason(pod) {
        tracing::debug!(pod = ?pod.metadata.name, reason, "not injecting");
        return response;
    }
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let ops = patch_ops(pod, &namespace, settings);
    match serde_json::from_value::<json_patch::Patch>(Value::Array(ops)) {
        Ok(patch) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::from(&request).deny(e.to_string())),
        Err(e) => AdmissionResponse::from(&request).deny(format!("building the patch: {e}")),
    }
}

/// Why `pod` is left alone, if it is.
fn skip_reason(pod: &Pod) -> Option<&'static str> {
    let opted_out = |map: &Option<BTreeMap<String, String>>| {
        map.as_ref()
            .and_then(|m| m.get(INJECT_KEY))
            .is_some_and(|v| matches!(v.as_str(), "false" | "disabled"))
    };
    if opted_out(&pod.metadata.labels) || opted_out(&pod.metadata.annotations) {
        return Some("opted out");
    }
    let injected_annotation = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_KEY));
    let spec = pod.spec.as_ref()?;
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME || c.name == INIT_NAME);
    if injected_annotation || has_sidecar {
        return Some("already injected");
    }
    if spec.host_network == Some(true) {
        // Capture rules would land in the node's network namespace.
        return Some("host network");
    }
    None
}

/// The JSON patch operations (RFC 6902) that inject `pod`.
fn patch_ops(pod: &Pod, namespace: &str, settings: &InjectSettings) -> Vec<Value> {
    let spec = pod.spec.clone().unwrap_or_default();
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let app_ports = app_ports(&spec.containers, settings);
    let probe_ports = probe_ports(&spec.containers);
    let inbound: Vec<u16> = app_ports
        .iter()
        .copied()
        .filter(|p| !probe_ports.contains(p))
        .collect();
    let init = init_container(settings, &inbound);
    let sidecar = sidecar_container(
        settings,
        namespace,
        &service_account,
        app_ports.first().copied(),
    );
    let mut ops = Vec::new();
    // The capture rules first, then the sidecar: both before any init container of the pod's
    // own, which may already call a service.
    match &spec.init_containers {
        Some(existing) if !existing.is_empty() => {
            ops.push(
                json!({"op": "add", "path": "/spec/initContainers/0", "value": to_value(&sidecar)}),
            );
            ops.push(
                json!({"op": "add", "path": "/spec/initContainers/0", "value": to_value(&init)}),
            );
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/initContainers",
                             "value": [to_value(&init), to_value(&sidecar)]})),
    }
    let volumes = [
        to_value(&token_volume(settings)),
        to_value(&bundle_volume()),
    ];
    match &spec.volumes {
        Some(existing) if !existing.is_empty() => {
            for volume in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
            }
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
    }
    match &pod.metadata.annotations {
        Some(existing) if !existing.is_empty() => ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", INJECTED_KEY.replace('~', "~0").replace('/', "~1")),
            "value": "true",
        })),
        _ => ops.push(json!({"op": "add", "path": "/metadata/annotations",
                             "value": {INJECTED_KEY: "true"}})),
    }
    ops
}

/// A k8s-openapi object as JSON (their serialization cannot fail).
fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The TCP ports the pod's containers declare (sorted, without the sidecar's own).
fn app_ports(containers: &[Container], settings: &InjectSettings) -> Vec<u16> {
    let own = settings.own_ports();
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0 && !own.contains(p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The ports the kubelet probes (named ports resolved against the container's own).
fn probe_ports(containers: &[Container]) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for container in containers {
        let named = |name: &str| {
            container
                .ports
                .iter()
                .flatten()
                .find(|p: &&ContainerPort| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
        };
        let resolve = |port: &IntOrString| match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => named(name),
        };
        for probe in [
            &container.liveness_probe,
            &container.readiness_probe,
            &container.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            ports.extend(probe.http_get.as_ref().and_then(|h| resolve(&h.port)));
            ports.extend(probe.tcp_socket.as_ref().and_then(|t| resolve(&t.port)));
            ports.extend(probe.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok()));
        }
    }
    ports
}

fn init_container(settings: &InjectSettings, inbound: &[u16]) -> Container {
    let mut args: Vec<String> = vec![
        "sidecar".into(),
        "init".into(),
        "--vip-cidr".into(),
        settings.vip_cidr.clone(),
        "--proxy-uid".into(),
        settings.proxy_uid.to_string(),
        "--outbound-port".into(),
        settings.outbound_port.to_string(),
        "--inbound-port".into(),
        settings.inbound_port.to_string(),
    ];
    if !inbound.is_empty() {
        args.push("--inbound-ports".into());
        args.push(
            inbound
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    Container {
        name: INIT_NAME.into(),
        image: Some(settings.image.clone()),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("10m", "16Mi")),
            limits: Some(quantities("100m", "64Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            // iptables needs root in the pod's network namespace, with NET_ADMIN (and NET_RAW
            // for its raw sockets) — and nothing else.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn sidecar_container(
    settings: &InjectSettings,
    namespace: &str,
    service_account: &str,
    app_port: Option<u16>,
) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut args: Vec<String> = [
        "sidecar",
        "run",
        "--zone-cp",
        &settings.zone_cp,
        "--zone",
        &settings.zone,
        "--trust-domain",
        &settings.trust_domain,
        "--token-kind",
        "service-account",
        "--token-file",
        &format!("{TOKEN_DIR}/token"),
        "--bundle-file",
        &format!("{BUNDLE_DIR}/{}", super::bundles::BUNDLE_KEY),
        "--namespace",
        namespace,
        "--service",
        service_account,
        "--instance",
        "$(POD_NAME)",
        "--inbound",
        &format!("$(POD_IP):{}", settings.inbound_port),
        "--admin",
        &format!("0.0.0.0:{}", settings.admin_port),
        "--outbound",
        &format!("capture:{}", settings.outbound_port),
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(port) = app_port {
        args.push("--app".into());
        args.push(format!("127.0.0.1:{port}"));
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(settings.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.image.clone()),
        args: Some(args),
        // A native sidecar: started (and ready) before the app, stopped after it.
        restart_policy: Some("Always".into()),
        env: Some(vec![
            field("POD_NAME", "metadata.name"),
            field("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("strait-mtls".into()),
                container_port: i32::from(settings.inbound_port),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("strait-admin".into()),
                container_port: i32::from(settings.admin_port),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(settings.resources.clone()),
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        security_context: Some(SecurityContext {
            run_as_user: Some(settings.proxy_uid),
            run_as_group: Some(settings.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: BUNDLE_VOLUME.into(),
                mount_path: BUNDLE_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn token_volume(settings: &InjectSettings) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(super::tokenreview::AUDIENCE.into()),
                    expiration_seconds: Some(settings.token_expiration_seconds),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn bundle_volume() -> Volume {
    Volume {
        name: BUNDLE_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: super::bundles::CONFIGMAP_NAME.into(),
            items: Some(vec![KeyToPath {
                key: super::bundles::BUNDLE_KEY.into(),
                path: super::bundles::BUNDLE_KEY.into(),
                ..KeyToPath::default()
            }]),
            // World-readable is fine for public roots, and the sidecar's uid must read it.
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// The settings the golden fixtures were made with.
#[cfg(test)]
fn tests_settings() -> InjectSettings {
    InjectSettings::new(
        "ghcr.io/strait-mesh/strait:0.1.0",
        "eu-1",
        "strait-zone-cp.strait-system.svc:7500",
        "strait.local",
        "240.240.0.0/16",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn settings() -> InjectSettings {
        tests_settings()
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhook")
    }

    /// Every `NAME.review.json` → `NAME.patch.json` (the JSON patch, or `null` for none).
    /// `STRAIT_BLESS=1` writes the expected files from the current output (review them!).
    #[test]
    fn golden_admission_reviews() {
        let bless = std::env::var_os("STRAIT_BLESS").is_some();
        let mut seen = 0;
        let mut entries: Vec<_> = std::fs::read_dir(fixtures())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".review.json"))
            .collect();
        entries.sort();
        for input in entries {
            seen += 1;
            let name = input
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace(".review.json", "");
            let text = std::fs::read_to_string(&input).unwrap();
            let review: AdmissionReview<Pod> = serde_json::from_str(&text).unwrap();
            let raw: Value = serde_json::from_str(&text).unwrap();
            let response = mutate(review, &settings());
            assert!(response.allowed, "{name}: {:?}", response.result);
            assert_eq!(
                response.uid, raw["request"]["uid"],
                "{name}: the response must carry the request's uid"
            );
            let patch: Value = match &response.patch {
                Some(bytes) => serde_json::from_slice(bytes).unwrap(),
                None => Value::Null,
            };
            let expected_path = fixtures().join(format!("{name}.patch.json"));
            if bless {
                let mut text = serde_json::to_string_pretty(&patch).unwrap();
                text.push('\n');
                std::fs::write(&expected_path, text).unwrap();
            }
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
            assert_eq!(
                patch, expected,
                "{name}: the patch differs from {expected_path:?}"
            );
            // The patch applies to the pod it was made for, and the result is still a Pod.
            if !patch.is_null() {
                let mut pod = raw["request"]["object"].clone();
                let ops: json_patch::Patch = serde_json::from_value(patch).unwrap();
                json_patch::patch(&mut pod, &ops).unwrap();
                let pod: Pod = serde_json::from_value(pod).unwrap();
                let spec = pod.spec.unwrap();
                let init = spec.init_containers.unwrap();
                assert_eq!(init[0].name, INIT_NAME, "{name}: capture rules first");
                assert_eq!(init[1].name, SIDECAR_NAME, "{name}");
                // Injecting the mutated pod again changes nothing.
                let mut again = raw.clone();
                again["request"]["object"] = serde_json::to_value(&pod.metadata)
                    .map(|m| {
                        let mut object = raw["request"]["object"].clone();
                        object["metadata"] = m;
                        object
                    })
                    .unwrap();
                let again: AdmissionReview<Pod> = serde_json::from_value(again).unwrap();
                assert!(
                    mutate(again, &settings()).patch.is_none(),
                    "{name}: injected twice"
                );
            }
        }
        assert!(seen >= 4, "only {seen} fixtures in {:?}", fixtures());
    }

    #[test]
    fn an_unreadable_review_is_invalid_not_a_panic() {
        let review: AdmissionReview<Pod> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"
        }))
        .unwrap();
        let response = mutate(review, &settings());
        assert!(!response.allowed);
    }
}
