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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

// === serving ===

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading the webhook's {what} {path}: {reason}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The webhook's certificate and key files, re-read when they change (cert-manager renews
/// them in place).
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: std::sync::RwLock<(
        Option<std::time::SystemTime>,
        Arc<rustls::sign::CertifiedKey>,
    )>,
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &'static str, path: &Path, reason: String| WebhookError::Tls {
        what,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err("certificate", cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err("key", key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| err("key", key, e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    // A renewal caught between writing the certificate and writing the key would otherwise be
    // served, and every handshake would fail until the next change.
    certified.keys_match().map_err(|e| {
        err(
            "key",
            key,
            format!(
                "it does not belong to the certificate {}: {e}",
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    fn load(cert: PathBuf, key: PathBuf) -> Result<Self, WebhookError> {
        let loaded = load_certified_key(&cert, &key)?;
        let stamp = modified(&cert);
        Ok(Self {
            cert,
            key,
            current: std::sync::RwLock::new((stamp, loaded)),
        })
    }

    /// Re-reads the files if the certificate changed; keeps the old pair on a failed read
    /// (a half-written renewal).
    fn refresh(&self) {
        let stamp = modified(&self.cert);
        let unchanged = self.current.read().map(|c| c.0 == stamp).unwrap_or(false);
        if unchanged {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(loaded) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (stamp, loaded);
                }
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
            }
            Err(err) => {
                tracing::warn!(%err, "webhook certificate not reloaded; keeping the old one")
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// How often the webhook's certificate files are checked for a change.
const CERT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The TLS config of the webhook listener: the API server verifies it against the
/// `caBundle` of the webhook configuration; no client certificate is asked for. The files are
/// re-read when the certificate changes (checked every 30 s), so a renewed certificate is
/// served to new connections without a restart.
pub fn tls_config(cert: PathBuf, key: PathBuf) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    tls_config_checking_every(cert, key, CERT_CHECK_INTERVAL).map(|(config, _)| config)
}

/// [`tls_config`] checking every `interval`; also the reloading certificate itself.
fn tls_config_checking_every(
    cert: PathBuf,
    key: PathBuf,
    interval: std::time::Duration,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), WebhookError> {
    let resolver = Arc::new(ReloadingCert::load(cert, key)?);
    let refresher = Arc::downgrade(&resolver);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let Some(resolver) = refresher.upgrade() else {
                return;
            };
            resolver.refresh();
        }
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Tls {
        what: "TLS settings",
        path: PathBuf::new(),
        reason: e.to_string(),
    })?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), resolver))
}

/// Serves the injector on `listener` (HTTPS, any path: `POST` an `AdmissionReview`) until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<InjectSettings>,
    shutdown: impl Future,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(addr = ?listener.local_addr().ok(), "sidecar injector serving");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "webhook accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let settings = settings.clone();
                async move {
                    let reply = |status: StatusCode, body: Vec<u8>| {
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                    };
                    if request.method() != hyper::Method::POST {
                        return reply(StatusCode::METHOD_NOT_ALLOWED, b"{}".to_vec());
                    }
                    let body = match http_body_util::Limited::new(request.into_body(), 4 << 20)
                        .collect()
                        .await
                    {
                        Ok(body) => body.to_bytes(),
                        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, b"{}".to_vec()),
                    };
                    // The API server never sends these; whoever did gets a 400 that says why,
                    // in an AdmissionReview all the same.
                    let bad_request = |reason: String| {
                        let mut response = AdmissionResponse::invalid(reason);
                        response.result.code = StatusCode::BAD_REQUEST.as_u16();
                        (StatusCode::BAD_REQUEST, response)
                    };
                    let (status, response) =
                        match serde_json::from_slice::<AdmissionReview<Pod>>(&body) {
                            Ok(review) if review.request.is_some() => {
                                (StatusCode::OK, mutate(review, &settings))
                            }
                            Ok(_) => bad_request("an AdmissionReview without a request".into()),
                            Err(e) => bad_request(format!("not an AdmissionReview: {e}")),
                        };
                    let patched = response.patch.is_some();
                    let out = serde_json::to_vec(&response.into_review()).unwrap_or_default();
                    tracing::debug!(%status, patched, "admission review answered");
                    reply(status, out)
                }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %err, "webhook connection ended with an error");
            }
        });
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

/// The listener over real sockets: [`serve`] with [`tls_config`], as the API server calls it.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod https_tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::{Method, Request, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A CA of the test's own, as cert-manager's would be.
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    /// A serving certificate: PEM files' contents and the DER the client should see.
    struct Serving {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    impl Ca {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "strait-webhook-test-ca");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        /// The webhook's certificate, for the names the API server dials.
        fn serving(&self) -> Serving {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            let cert = params.signed_by(&key, &self.0).unwrap();
            Serving {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        /// A client that trusts this CA only (the webhook configuration's `caBundle`).
        fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.0.der().clone()).unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }
    }

    /// A running webhook on 127.0.0.1:0 with its files in a directory of its own.
    struct Webhook {
        addr: SocketAddr,
        dir: tempfile::TempDir,
        cert: Arc<ReloadingCert>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Webhook {
        async fn start(serving: &Serving, check_every: Duration) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let webhook_dir = dir.path().to_owned();
            write_pair(&webhook_dir, serving);
            let (tls, cert) = tls_config_checking_every(
                webhook_dir.join("tls.crt"),
                webhook_dir.join("tls.key"),
                check_every,
            )
            .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(serve(
                listener,
                tls,
                Arc::new(super::tests_settings()),
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                dir,
                cert,
                _stop: stop,
            }
        }
    }

    /// Writes a file the way the kubelet updates a Secret volume: a new file renamed into
    /// place, with a modification time of its own.
    fn replace_file(path: &Path, contents: &str, mtime: std::time::SystemTime) {
        let next = path.with_extension("next");
        std::fs::write(&next, contents).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&next, path).unwrap();
    }

    fn write_pair(dir: &Path, serving: &Serving) {
        let now = std::time::SystemTime::now();
        replace_file(&dir.join("tls.key"), &serving.key_pem, now);
        replace_file(&dir.join("tls.crt"), &serving.cert_pem, now);
    }

    /// What one HTTPS exchange gave.
    struct Exchange {
        status: StatusCode,
        body: Bytes,
        /// The server's certificate as the client saw it.
        served: CertificateDer<'static>,
        /// The negotiated protocol.
        h2: bool,
    }

    /// One request on a new connection, over HTTP/2 when the server agrees to `alpn`.
    async fn request(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
        method: Method,
        body: Vec<u8>,
    ) -> Result<Exchange, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let served = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let builder = Request::builder()
            .method(method)
            .header("content-type", "application/json");
        let response = if h2 {
            let request = builder
                .uri("https://localhost/inject")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let request = builder
                .uri("/inject")
                .header("host", "localhost")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(request).await
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Exchange {
            status,
            body,
            served,
            h2,
        })
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/webhook/{name}")),
        )
        .unwrap()
    }

    /// The `response` of an AdmissionReview answer.
    fn admission_response(body: &[u8]) -> AdmissionResponse {
        let review: AdmissionReview<kube::core::DynamicObject> =
            serde_json::from_slice(body).expect("an AdmissionReview");
        let raw: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(raw["apiVersion"], "admission.k8s.io/v1", "{raw}");
        assert_eq!(raw["kind"], "AdmissionReview", "{raw}");
        review.response.expect("a response")
    }

    #[tokio::test]
    async fn a_pod_review_over_https_gets_the_sidecar_patch() {
        let ca = Ca::new();
        let serving = ca.serving();
        let webhook = Webhook::start(&serving, CERT_CHECK_INTERVAL).await;
        let review = fixture("minimal.review.json");
        // As the API server calls it: HTTP/2 when offered, else HTTP/1.1.
        for alpn in [&[b"h2".as_slice(), b"http/1.1"][..], &[b"http/1.1"]] {
            let exchange = request(
                webhook.addr,
                ca.client(alpn),
                Method::POST,
                review.clone().into_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(exchange.h2, alpn[0] == b"h2");
            assert_eq!(exchange.served, serving.der);
            assert_eq!(exchange.status, StatusCode::OK);
            let response = admission_response(&exchange.body);
            let request: Value = serde_json::from_str(&review).unwrap();
            assert_eq!(response.uid, request["request"]["uid"]);
            assert!(response.allowed, "{:?}", response.result);
            let raw: Value = serde_json::from_slice(&exchange.body).unwrap();
            assert_eq!(raw["response"]["patchType"], "JSONPatch");
            let patch: Value = serde_json::from_slice(&response.patch.unwrap()).unwrap();
            let expected: Value = serde_json::from_str(&fixture("minimal.patch.json")).unwrap();
            assert_eq!(patch, expected);
        }
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_request_gets_an_error_and_the_server_keeps_serving() {
        let ca = Ca::new();
        let webhook = Webhook::start(&ca.serving(), CERT_CHECK_INTERVAL).await;
        let client = ca.client(&[b"http/1.1"]);

        let exchange = request(
            webhook.addr,
            client.clone(),
            Method::POST,
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(exchange.status, StatusCode::BAD_REQUEST);
        let response = admission_response(&exchange.body);
        assert!(!response.allowed);
        assert_eq!(response.result.code, 400, "{:?}", response.result);
        assert!(
            response.result.message.contains("not an AdmissionReview"),
            "{:?}",
            response.result
        );
        assert!(response.patch.is_none());

        // JSON, but an AdmissionReview without a request.
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        let exchange = request(webhook.addr, client.clone(), Method::POST, empty.to_vec())
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::BAD_REQUEST);
        let response = admission_response(&exchange.body);
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("without a request"),
            "{:?}",
            response.result
        );

        let exchange = request(webhook.addr, client.clone(), Method::GET, Vec::new())
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::METHOD_NOT_ALLOWED);

        let huge = vec![b' '; (4 << 20) + 1];
        let exchange = request(webhook.addr, client.clone(), Method::POST, huge)
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::PAYLOAD_TOO_LARGE);

        // Still serving.
        let exchange = request(
            webhook.addr,
            client,
            Method::POST,
            fixture("minimal.review.json").into_bytes(),
        )
        .await
        .unwrap();
        assert!(admission_response(&exchange.body).patch.is_some());
    }

    #[tokio::test]
    async fn plaintext_http_is_refused() {
        let ca = Ca::new();
        let webhook = Webhook::start(&ca.serving(), CERT_CHECK_INTERVAL).await;
        let review = fixture("minimal.review.json");
        let mut tcp = TcpStream::connect(webhook.addr).await.unwrap();
        let request = format!(
            "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{review}",
            review.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // The server hangs up (at most with a TLS alert): never an HTTP answer, never a patch.
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes a plaintext connection");
        assert!(read.is_ok() || !answer.is_empty(), "{read:?}");
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            !String::from_utf8_lossy(&answer).contains("patch"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        // And a client that does not trust the CA gets no answer either.
        let stranger = Ca::new();
        let refused =
            request_err(request_once(webhook.addr, stranger.client(&[b"http/1.1"])).await);
        assert!(refused.contains("handshake"), "{refused}");
    }

    async fn request_once(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Exchange, String> {
        request(
            addr,
            client,
            Method::POST,
            fixture("minimal.review.json").into_bytes(),
        )
        .await
    }

    fn request_err(result: Result<Exchange, String>) -> String {
        match result {
            Ok(e) => panic!("expected a failure, got {}", e.status),
            Err(e) => e,
        }
    }

    /// Polls new connections until one is served `want`.
    async fn served_eventually(webhook: &Webhook, ca: &Ca, want: &CertificateDer<'static>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
                .await
                .unwrap();
            assert_eq!(exchange.status, StatusCode::OK);
            if exchange.served == *want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate was not served within 5s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_to_new_connections() {
        let ca = Ca::new();
        let first = ca.serving();
        let webhook = Webhook::start(&first, Duration::from_millis(50)).await;
        let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
            .await
            .unwrap();
        assert_eq!(exchange.served, first.der);

        // cert-manager renews the Secret: both files change at once.
        let second = ca.serving();
        write_pair(webhook.dir.path(), &second);
        served_eventually(&webhook, &ca, &second.der).await;

        // A renewal caught half-way (a new certificate, the old key) is not taken: the current
        // pair keeps being served until the key arrives too.
        let third = ca.serving();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        replace_file(&webhook.dir.path().join("tls.crt"), &third.cert_pem, later);
        // Looked at now rather than at the next periodic check, so that the assertion below
        // follows a refusal for certain.
        webhook.cert.refresh();
        let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
            .await
            .unwrap();
        assert_eq!(exchange.served, second.der, "a mismatched pair was served");
        replace_file(&webhook.dir.path().join("tls.key"), &third.key_pem, later);
        served_eventually(&webhook, &ca, &third.der).await;
    }
}
