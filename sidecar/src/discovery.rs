//! The sidecar's half of `strait.v1.Discovery`: one stream to the zone control plane over
//! mutual TLS, on which it registers its instance, receives its full config whenever it
//! changes, and acknowledges or rejects every version; plus the app health probe and
//! [`start_control`], which starts identity and discovery together.
//!
//! # Flow
//!
//! ```text
//! start_control ──▶ Identity::bootstrap ──▶ renewal task (strait-identity)
//!               ──▶ probe task: app TCP port every second ──▶ watch<AppHealth>
//!               ──▶ discovery task: Register ─▶ zone
//!                                   zone ─▶ SidecarConfig ─▶ validate ─▶ ACK + publish
//!                                                                    └─▶ NACK (keep previous)
//!                                   AppHealth changes ─▶ HealthReport
//! ```
//!
//! - Every config is checked before it is used ([`validate`] plus the [`Validator`]s the
//!   outbound side adds). A rejected version is NACKed with the reason and the previous config
//!   stays in force; the zone logs and counts the rejection.
//! - Accepted configs are published on a `watch` of `Arc<pb::SidecarConfig>`. Until the first
//!   one arrives the watch holds an empty config with version 0 ("none yet").
//! - A broken stream is reopened with backoff, registering again with the version the sidecar
//!   runs (`known_version`), so the zone continues the numbering; the zone keeps the instance
//!   for its registration grace, so a short break drops nobody's endpoints.
//! - The app's health: its TCP port is probed every second; a change is reported at once. A
//!   sidecar without an app is always healthy.
//!
//! Metrics: `strait_sidecar_discovery_connected`, `strait_sidecar_discovery_reconnects_total`,
//! `strait_sidecar_config_version`, `strait_sidecar_config_updates_total{result}`
//! (`accepted`/`rejected`), `strait_sidecar_app_healthy`.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strait_identity::{Backoff, Identity, IdentityError};
use strait_proto as pb;
use strait_proto::names;
use strait_proto::sidecar_message::Msg;
use strait_trust::tls::{CredentialStore, TrustStore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{OutboundMode, SettingsError, SidecarSettings, check_host_port};

/// How long connecting to the zone may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the app's port is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take before the app counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Largest regex program a config may ask for (a bound on memory and compile time).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// An extra check of a pushed config (the outbound side adds its own: listeners it can bind,
/// ...). `Err` is the reason sent back with the NACK.
pub type Validator = Arc<dyn Fn(&pb::SidecarConfig) -> Result<(), String> + Send + Sync>;

/// The app's health as the sidecar sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppHealth {
    pub healthy: bool,
    /// Why it is unhealthy; empty when healthy.
    pub reason: String,
}

impl AppHealth {
    pub fn healthy() -> Self {
        AppHealth {
            healthy: true,
            reason: String::new(),
        }
    }

    pub fn unhealthy(reason: impl Into<String>) -> Self {
        AppHealth {
            healthy: false,
            reason: reason.into(),
        }
    }
}

/// Why the control half could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("workload certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("registering the discovery metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

// === metrics ===

/// The discovery client's metrics.
#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    pub connected: IntGauge,
    pub reconnects: IntCounter,
    pub version: IntGauge,
    pub updates: IntCounterVec,
    pub app_healthy: IntGauge,
}

impl DiscoveryMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let connected = IntGauge::with_opts(Opts::new(
            "strait_sidecar_discovery_connected",
            "1 while the discovery stream to the zone control plane is open.",
        ))?;
        let reconnects = IntCounter::with_opts(Opts::new(
            "strait_sidecar_discovery_reconnects_total",
            "Discovery streams reopened after one broke or could not be opened.",
        ))?;
        let version = IntGauge::with_opts(Opts::new(
            "strait_sidecar_config_version",
            "Version of the config the sidecar runs (0: none yet).",
        ))?;
        let updates = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_config_updates_total",
                "Configs received from the zone, by whether the sidecar accepted them.",
            ),
            &["result"],
        )?;
        let app_healthy = IntGauge::with_opts(Opts::new(
            "strait_sidecar_app_healthy",
            "1 while the local app accepts connections (always 1 without an app).",
        ))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(version.clone()))?;
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(app_healthy.clone()))?;
        for result in ["accepted", "rejected"] {
            updates.with_label_values(&[result]);
        }
        Ok(Self {
            connected,
            reconnects,
            version,
            updates,
            app_healthy,
        })
    }
}

// === validation ===

/// What a config must agree with.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub trust_domain: String,
    pub zone: String,
}

/// The checks every pushed config passes before it is used: it is for this trust domain and
/// zone; addresses, VIPs and SPIFFE IDs parse; regexes compile; permission patterns are valid;
/// no two services share a VIP. Returns the first problem, with the path of the field.
pub fn validate(config: &pb::SidecarConfig, expect: &Expectations) -> Result<(), String> {
    if !config.trust_domain.is_empty() && config.trust_domain != expect.trust_domain {
        return Err(format!(
            "trust_domain: {:?}, but this sidecar is in {:?}",
            config.trust_domain, expect.trust_domain
        ));
    }
    if !config.zone.is_empty() && config.zone != expect.zone {
        return Err(format!(
            "zone: {:?}, but this sidecar runs in zone {:?}",
            config.zone, expect.zone
        ));
    }
    let mut names = HashSet::new();
    let mut vips = HashSet::new();
    for (i, service) in config.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let Some(name) = &service.service else {
            return Err(format!("{path}.service: missing"));
        };
        if name.name.is_empty() || name.namespace.is_empty() {
            return Err(format!("{path}.service: namespace and name are required"));
        }
        let key = format!("{}/{}", name.namespace, name.name);
        if !names.insert(key.clone()) {
            return Err(format!("{path}.service: {key} is listed twice"));
        }
        let path = format!("services[{i}] ({key})");
        for (j, port) in service.ports.iter().enumerate() {
            if !(1..=65_535).contains(&port.port) {
                return Err(format!("{path}.ports[{j}]: {} is not a port", port.port));
            }
        }
        if !service.vip.is_empty() {
            let vip: IpAddr = service
                .vip
                .parse()
                .map_err(|_| format!("{path}.vip: {:?} is not an IP address", service.vip))?;
            if !vips.insert(vip) {
                return Err(format!("{path}.vip: {vip} is also another service's VIP"));
            }
        }
        for (zone, vip) in &service.zone_vips {
            let vip: IpAddr = vip
                .parse()
                .map_err(|_| format!("{path}.zone_vips[{zone}]: {vip:?} is not an IP address"))?;
            if !vips.insert(vip) {
                return Err(format!(
                    "{path}.zone_vips[{zone}]: {vip} is also another service's VIP"
                ));
            }
        }
        for (j, group) in service.localities.iter().enumerate() {
            let gpath = format!("{path}.localities[{j}]");
            for (k, endpoint) in group.endpoints.iter().enumerate() {
                check_address(&endpoint.address)
                    .map_err(|e| format!("{gpath}.endpoints[{k}].address: {e}"))?;
                if !endpoint.spiffe_id.is_empty() {
                    let id: strait_trust::SpiffeId = endpoint.spiffe_id.parse().map_err(|e| {
                        format!(
                            "{gpath}.endpoints[{k}].spiffe_id: {:?}: {e}",
                            endpoint.spiffe_id
                        )
                    })?;
                    if id.trust_domain() != expect.trust_domain {
                        return Err(format!(
                            "{gpath}.endpoints[{k}].spiffe_id: {id} is outside trust domain {:?}",
                            expect.trust_domain
                        ));
                    }
                }
            }
            for (k, gateway) in group.local_gateways.iter().enumerate() {
                check_address(gateway).map_err(|e| format!("{gpath}.local_gateways[{k}]: {e}"))?;
            }
        }
        if let Some(policy) = &service.policy {
            check_route_policy(policy, &format!("{path}.policy"))?;
        }
        for (port, policy) in &service.port_policies {
            if u16::try_from(*port).map_or(true, |p| p == 0) {
                return Err(format!("{path}.port_policies: {port} is not a port"));
            }
            check_route_policy(policy, &format!("{path}.port_policies[{port}]"))?;
        }
    }
    let permissions = config
        .inbound
        .as_ref()
        .map_or(&[][..], |i| &i.permissions[..]);
    for (p, permission) in permissions.iter().enumerate() {
        for (i, rule) in permission.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                strait_policy::SpiffeIdPattern::new(from)
                    .map_err(|e| format!("inbound.permissions[{p}].rules[{i}].from[{j}]: {e}"))?;
            }
            for (j, prefix) in rule.path_prefixes.iter().enumerate() {
                if !prefix.starts_with('/') {
                    return Err(format!(
                        "inbound.permissions[{p}].rules[{i}].path_prefixes[{j}]: {prefix:?} does not start with /"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_route_policy(policy: &pb::RoutePolicy, path: &str) -> Result<(), String> {
    let matches = policy
        .routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.matches
                .iter()
                .enumerate()
                .map(move |(j, m)| (format!("{path}.routes[{i}].matches[{j}]"), m))
        })
        .chain(
            policy
                .fault
                .iter()
                .flat_map(|f| f.matches.iter().enumerate())
                .map(|(j, m)| (format!("{path}.fault.matches[{j}]"), m)),
        );
    for (mpath, m) in matches {
        if !m.path_regex.is_empty() {
            compile_regex(&m.path_regex).map_err(|e| format!("{mpath}.path_regex: {e}"))?;
        }
        for (k, header) in m.headers.iter().enumerate() {
            if let Some(pb::header_match::Match::Regex(re)) = &header.r#match {
                compile_regex(re).map_err(|e| format!("{mpath}.headers[{k}].regex: {e}"))?;
            }
        }
    }
    Ok(())
}

fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// `host:port` where host is an IP address (IPv6 in brackets) or a DNS name.
fn check_address(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    check_host_port(value)?;
    let (host, _) = value.rsplit_once(':').unwrap_or((value, ""));
    let dns_ok = host.len() <= names::MAX_DNS_NAME
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= names::MAX_DNS_LABEL
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if dns_ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not host:port with an IP address or a DNS name"
        ))
    }
}

// === discovery client ===

/// The sidecar's discovery stream. Build with [`DiscoveryClient::new`], add validators, then
/// [`DiscoveryClient::run`] it.
pub struct DiscoveryClient {
    zone_cp: String,
    tls: Arc<rustls::ClientConfig>,
    register: pb::Register,
    expect: Expectations,
    validators: Vec<Validator>,
    configs: watch::Sender<Arc<pb::SidecarConfig>>,
    metrics: DiscoveryMetrics,
}

impl fmt::Debug for DiscoveryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryClient")
            .field("zone_cp", &self.zone_cp)
            .field("register", &self.register)
            .field("validators", &self.validators.len())
            .finish_non_exhaustive()
    }
}

impl DiscoveryClient {
    /// A client for `settings` (resolved: the instance name is what is registered) that
    /// connects with `identity`'s live credentials. Returns the receiver of accepted configs.
    pub fn new(
        settings: &SidecarSettings,
        identity: &Identity,
        metrics: DiscoveryMetrics,
    ) -> Result<(Self, watch::Receiver<Arc<pb::SidecarConfig>>), IdentityError> {
        let (configs, rx) = watch::channel(Arc::new(pb::SidecarConfig::default()));
        let client = DiscoveryClient {
            zone_cp: settings.zone_cp.clone(),
            tls: identity.zone_client_config()?,
            register: register_message(settings),
            expect: Expectations {
                trust_domain: settings.trust_domain.clone(),
                zone: settings.zone.clone(),
            },
            validators: Vec::new(),
            configs,
            metrics,
        };
        Ok((client, rx))
    }

    /// Adds a check every config must pass (after the built-in [`validate`]).
    pub fn add_validator(&mut self, validator: Validator) {
        self.validators.push(validator);
    }

    /// Checks a config with the built-in rules and every validator.
    pub fn check(&self, config: &pb::SidecarConfig) -> Result<(), String> {
        validate(config, &self.expect)?;
        for validator in &self.validators {
            validator(config)?;
        }
        Ok(())
    }

    /// Follows the zone until `shutdown` completes: (re)connects with backoff, validates,
    /// ACKs/NACKs and publishes configs, reports `health` changes.
    pub async fn run(self, mut health: watch::Receiver<AppHealth>, shutdown: impl Future) {
        let mut shutdown = std::pin::pin!(shutdown);
        let channel =
            strait_proto::transport::channel(&self.zone_cp, self.tls.clone(), CONNECT_TIMEOUT);
        let mut backoff = Backoff::new();
        let mut first = true;
        loop {
            if !first {
                self.metrics.reconnects.inc();
            }
            first = false;
            let session = self.session(channel.clone(), &mut health);
            let outcome = tokio::select! {
                _ = &mut shutdown => return,
                outcome = session => outcome,
            };
            self.metrics.connected.set(0);
            let pause = match outcome {
                Ok(Ended::GotConfigs) => {
                    backoff = Backoff::new();
                    backoff.next_pause()
                }
                Ok(Ended::Quiet) => backoff.next_pause(),
                Err(status) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(zone_cp = %self.zone_cp, code = ?status.code(), message = status.message(), retry_in = ?pause, "discovery stream failed");
                    pause
                }
            };
            tracing::info!(zone_cp = %self.zone_cp, retry_in = ?pause, "discovery stream ended; reconnecting");
            tokio::select! {
                _ = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One stream, until it ends.
    async fn session(
        &self,
        channel: tonic::transport::Channel,
        health: &mut watch::Receiver<AppHealth>,
    ) -> Result<Ended, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut register = self.register.clone();
        register.known_version = self.configs.borrow().version;
        let send = |msg| pb::SidecarMessage { msg: Some(msg) };
        // The channel has room: these cannot block or fail while `rx` is alive.
        let _ = tx.try_send(send(Msg::Register(register)));
        let current = health.borrow_and_update().clone();
        if !current.healthy {
            // The zone takes a new registration as healthy.
            let _ = tx.try_send(send(Msg::Health(pb::HealthReport {
                healthy: false,
                reason: current.reason,
            })));
        }
        let mut stream = pb::discovery_client::DiscoveryClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.metrics.connected.set(1);
        tracing::info!(zone_cp = %self.zone_cp, instance = %self.register.instance, "discovery stream open");
        let mut got_configs = false;
        loop {
            tokio::select! {
                message = stream.message() => match message? {
                    Some(config) => {
                        got_configs = true;
                        let ack = self.receive(config);
                        if tx.send(send(Msg::Ack(ack))).await.is_err() {
                            return Ok(Ended::GotConfigs);
                        }
                    }
                    None => {
                        return Ok(if got_configs { Ended::GotConfigs } else { Ended::Quiet });
                    }
                },
                changed = health.changed() => {
                    if changed.is_err() {
                        // The probe is gone (shutting down); keep the stream as it is.
                        std::future::pending::<()>().await;
                    }
                    let current = health.borrow_and_update().clone();
                    tracing::info!(healthy = current.healthy, reason = %current.reason, "reporting app health");
                    let report = pb::HealthReport { healthy: current.healthy, reason: current.reason };
                    if tx.send(send(Msg::Health(report))).await.is_err() {
                        return Ok(if got_configs { Ended::GotConfigs } else { Ended::Quiet });
                    }
                }
            }
        }
    }

    /// Validates a pushed config; publishes it if accepted. Returns the ACK or NACK.
    fn receive(&self, config: pb::SidecarConfig) -> pb::ConfigAck {
        let (version, nonce) = (config.version, config.nonce.clone());
        match self.check(&config) {
            Ok(()) => {
                tracing::info!(version, services = config.services.len(), "config accepted");
                self.metrics.updates.with_label_values(&["accepted"]).inc();
                self.metrics
                    .version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                self.configs.send_replace(Arc::new(config));
                pb::ConfigAck {
                    version,
                    nonce,
                    accepted: true,
                    error: String::new(),
                }
            }
            Err(reason) => {
                let running = self.configs.borrow().version;
                tracing::warn!(version, running, %reason, "config rejected; keeping the previous one");
                self.metrics.updates.with_label_values(&["rejected"]).inc();
                pb::ConfigAck {
                    version,
                    nonce,
                    accepted: false,
                    error: reason,
                }
            }
        }
    }
}

/// How a stream ended without an error.
enum Ended {
    /// At least one config came: the zone was healthy, reconnect soon.
    GotConfigs,
    /// Closed before any config.
    Quiet,
}

/// The `Register` message for `settings`.
pub fn register_message(settings: &SidecarSettings) -> pb::Register {
    pb::Register {
        service: Some(pb::ServiceRef {
            namespace: settings.namespace.clone(),
            name: settings.service.clone(),
        }),
        instance: settings.instance_name().to_owned(),
        ports: settings
            .app
            .map(|app| {
                vec![pb::Port {
                    name: settings.app_protocol.port_name().to_owned(),
                    port: u32::from(app.port()),
                    protocol: settings.app_protocol.to_proto() as i32,
                }]
            })
            .unwrap_or_default(),
        labels: settings
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        locality: Some(pb::Locality {
            region: String::new(),
            zone: settings.zone.clone(),
            subzone: String::new(),
        }),
        inbound_address: settings.inbound.to_string(),
        outbound_vips: matches!(
            settings.outbound,
            OutboundMode::Vips | OutboundMode::Capture(_)
        ),
        known_version: 0,
    }
}

// === app health ===

/// Probes `app`'s TCP port every [`PROBE_INTERVAL`] and publishes changes on `tx`, until
/// `shutdown`. Without an app, publishes healthy once and waits.
pub async fn probe_app(
    app: Option<SocketAddr>,
    tx: watch::Sender<AppHealth>,
    metrics: Option<IntGauge>,
    shutdown: impl Future,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let Some(app) = app else {
        tx.send_replace(AppHealth::healthy());
        if let Some(m) = &metrics {
            m.set(1);
        }
        shutdown.await;
        return;
    };
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let health = probe_once(app).await;
        if let Some(m) = &metrics {
            m.set(i64::from(health.healthy));
        }
        tx.send_if_modified(|current| {
            if current.healthy == health.healthy {
                return false;
            }
            if health.healthy {
                tracing::info!(%app, "the app accepts connections again");
            } else {
                tracing::warn!(%app, reason = %health.reason, "the app stopped accepting connections");
            }
            *current = health;
            true
        });
    }
}

/// One probe: can a TCP connection to the app be opened?
pub async fn probe_once(app: SocketAddr) -> AppHealth {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(app)).await {
        Ok(Ok(_)) => AppHealth::healthy(),
        Ok(Err(err)) => AppHealth::unhealthy(format!("connect to {app}: {err}")),
        Err(_) => AppHealth::unhealthy(format!("connect to {app} timed out")),
    }
}

// === start_control ===

/// Options of [`start_control_with`].
#[derive(Default)]
pub struct ControlOptions {
    /// Where the metrics go (the admin endpoint's registry).
    pub registry: Registry,
    /// Extra config checks (see [`Validator`]).
    pub validators: Vec<Validator>,
}

impl fmt::Debug for ControlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlOptions")
            .field("validators", &self.validators.len())
            .finish_non_exhaustive()
    }
}

/// The sidecar's control half, running: its identity (renewed in the background), the
/// configs the zone pushes, the app's health. Dropping it stops the background tasks.
pub struct Control {
    /// The settings in force (resolved: the instance name is filled in).
    pub settings: SidecarSettings,
    pub identity: Identity,
    /// Accepted configs; version 0 until the first one.
    pub config: watch::Receiver<Arc<pb::SidecarConfig>>,
    pub health: watch::Receiver<AppHealth>,
    pub registry: Registry,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("identity", &self.identity)
            .field("config_version", &self.config.borrow().version)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub fn creds(&self) -> &CredentialStore {
        self.identity.creds()
    }

    pub fn trust(&self) -> &TrustStore {
        self.identity.trust()
    }

    /// The config in force now (version 0: none yet).
    pub fn current_config(&self) -> Arc<pb::SidecarConfig> {
        self.config.borrow().clone()
    }

    /// Waits until a first config was accepted.
    pub async fn first_config(&self) -> Arc<pb::SidecarConfig> {
        let mut rx = self.config.clone();
        match rx.wait_for(|c| c.version > 0).await {
            Ok(config) => config.clone(),
            // The discovery task is gone: what is there is all there will be.
            Err(_) => self.current_config(),
        }
    }

    /// Stops the background tasks (renewal, discovery, probe) and waits for them.
    pub async fn stop(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Bootstraps the identity and starts discovery: see [`start_control_with`]; metrics go to a
/// fresh registry ([`Control::registry`]).
pub async fn start_control(settings: SidecarSettings) -> Result<Control, ControlError> {
    start_control_with(settings, ControlOptions::default()).await
}

/// Validates `settings`, gets the certificate ([`Identity::bootstrap`]: from `data_dir` or
/// with the token), probes the app once, then starts the renewal, probe and discovery tasks.
/// Returns once the certificate is there; the first config follows
/// ([`Control::first_config`]).
pub async fn start_control_with(
    settings: SidecarSettings,
    options: ControlOptions,
) -> Result<Control, ControlError> {
    let settings = settings.resolve()?;
    let registry = options.registry;
    let identity = Identity::bootstrap(&settings.identity_settings()?, &registry).await?;
    let metrics = DiscoveryMetrics::new(&registry)?;

    let initial = match settings.app {
        Some(app) => probe_once(app).await,
        None => AppHealth::healthy(),
    };
    metrics.app_healthy.set(i64::from(initial.healthy));
    let (health_tx, health_rx) = watch::channel(initial);

    let (mut client, config) = DiscoveryClient::new(&settings, &identity, metrics.clone())?;
    for validator in options.validators {
        client.add_validator(validator);
    }
    let never = std::future::pending::<()>;
    let tasks = vec![
        tokio::spawn(identity.clone().run_renewal(never())),
        tokio::spawn(probe_app(
            settings.app,
            health_tx,
            Some(metrics.app_healthy.clone()),
            never(),
        )),
        tokio::spawn(client.run(health_rx.clone(), never())),
    ];
    tracing::info!(id = %identity.id(), instance = %settings.instance_name(), zone_cp = %settings.zone_cp, "sidecar control started");
    Ok(Control {
        settings,
        identity,
        config,
        health: health_rx,
        registry,
        tasks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn expect() -> Expectations {
        Expectations {
            trust_domain: "strait.local".into(),
            zone: "a".into(),
        }
    }

    fn service(name: &str, vip: &str, address: &str) -> pb::OutboundService {
        pb::OutboundService {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: name.into(),
            }),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
            }],
            vip: vip.into(),
            localities: vec![pb::LocalityGroup {
                zone: "a".into(),
                endpoints: vec![pb::Endpoint {
                    address: address.into(),
                    instance: "i".into(),
                    spiffe_id: format!("spiffe://strait.local/ns/demo/sa/{name}"),
                    healthy: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn config(services: Vec<pb::OutboundService>) -> pb::SidecarConfig {
        pb::SidecarConfig {
            version: 1,
            zone: "a".into(),
            trust_domain: "strait.local".into(),
            services,
            ..Default::default()
        }
    }

    #[test]
    fn good_configs_pass() {
        let c = config(vec![
            service("echo", "127.240.0.1", "127.0.0.1:7001"),
            service("web", "127.240.0.2", "web.demo.svc:8443"),
            service("v6", "", "[::1]:7001"),
        ]);
        validate(&c, &expect()).unwrap();
        validate(&pb::SidecarConfig::default(), &expect()).unwrap();
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |c: pb::SidecarConfig| validate(&c, &expect()).unwrap_err();
        let e = err(config(vec![service(
            "echo",
            "127.240.0.300",
            "127.0.0.1:1",
        )]));
        assert!(e.starts_with("services[0] (demo/echo).vip"), "{e}");
        let e = err(config(vec![service("echo", "", "bad..host:80")]));
        assert!(e.contains("endpoints[0].address"), "{e}");
        let e = err(config(vec![service("echo", "", "127.0.0.1")]));
        assert!(e.contains("endpoints[0].address"), "{e}");
        let e = err(config(vec![
            service("a", "127.240.0.1", "127.0.0.1:1"),
            service("b", "127.240.0.1", "127.0.0.1:2"),
        ]));
        assert!(e.contains("also another service's VIP"), "{e}");
        let mut c = config(vec![service("echo", "", "127.0.0.1:1")]);
        c.zone = "b".into();
        assert!(err(c).starts_with("zone:"));
        let mut s = service("echo", "", "127.0.0.1:1");
        s.localities[0].endpoints[0].spiffe_id = "spiffe://other.td/ns/demo/sa/echo".into();
        assert!(err(config(vec![s])).contains("outside trust domain"));
        let mut s = service("echo", "", "127.0.0.1:1");
        s.policy = Some(pb::RoutePolicy {
            routes: vec![pb::Route {
                matches: vec![pb::RouteMatch {
                    path_regex: "([a-z".into(),
                    ..Default::default()
                }],
                split: vec![],
            }],
            ..Default::default()
        });
        let e = err(config(vec![s]));
        assert!(e.contains("routes[0].matches[0].path_regex"), "{e}");
        let mut c = config(vec![]);
        c.inbound = Some(pb::InboundPolicy {
            permissions: vec![
                pb::PermissionPolicy::default(),
                pb::PermissionPolicy {
                    default_deny: true,
                    rules: vec![pb::PermissionRule {
                        allow: true,
                        from: vec!["not-spiffe".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert!(err(c).starts_with("inbound.permissions[1].rules[0].from[0]"));
    }

    #[test]
    fn register_message_mirrors_settings() {
        let mut s = SidecarSettings::new(
            "127.0.0.1:7500",
            "a",
            "/t".into(),
            "demo",
            "echo",
            "127.0.0.1:15006".parse().unwrap(),
            "127.0.0.1:15000".parse().unwrap(),
        );
        s.app = Some("127.0.0.1:8080".parse().unwrap());
        s.labels.insert("version".into(), "v1".into());
        s.outbound = OutboundMode::None;
        s.instance = Some("echo-1".into());
        let r = register_message(&s);
        assert_eq!(r.instance, "echo-1");
        assert_eq!(r.ports[0].port, 8080);
        assert_eq!(r.inbound_address, "127.0.0.1:15006");
        assert!(!r.outbound_vips);
        assert_eq!(r.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(r.locality.unwrap().zone, "a");
        s.app = None;
        assert!(register_message(&s).ports.is_empty());
    }
}
