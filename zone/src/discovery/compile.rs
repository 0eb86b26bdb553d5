//! The sidecar config compiler: what this zone knows (its own inventory, the federation view
//! from global, the policies) in, one sidecar's [`pb::SidecarConfig`] out.
//!
//! Pure and deterministic: no IO, no clock, no randomness, and every collection is walked in
//! a sorted order, so the same input always gives an equal config. The discovery stream relies
//! on that to push only when the compiled content changed. `version` and `nonce` are left at
//! their defaults: the stream stamps them.
//!
//! # Localities and priorities
//!
//! For each service, [`pb::OutboundService::localities`] lists one [`pb::LocalityGroup`] per
//! zone that can serve it, ordered by priority (lowest first):
//!
//! - **Priority 0: this zone**, when it has instances of the service: every registered
//!   endpoint (healthy or not, each with its `healthy` flag), `weight` = its healthy count.
//!   Sidecar to sidecar, so no gateways.
//! - **Then the other zones** that export the service (denied zones never appear), each as
//!   one group with no endpoints: `weight` = that zone's healthy count, `local_gateways` = this
//!   zone's gateways (the way there), `identities` = the SPIFFE IDs of the zone's instances
//!   (whom the sidecar's TLS through the tunnel must reach). A zone with no healthy endpoint
//!   still appears, with weight 0, so the sidecar knows it exists.
//!
//! Remote zones are grouped into priority *levels* as `docs/policies.md` (`LocalityFailover`)
//! defines them, and every group of a level carries the same `priority` (the sidecar balances
//! across a level by `weight`, as Envoy does within a priority):
//!
//! - without a `LocalityFailover`: the other zones of this zone's region, then every other
//!   zone;
//! - with one: each `order` entry is a level (`zone: Z` is that zone, `region: R` every zone
//!   of R not listed before it), then every zone listed nowhere as one last level. This zone
//!   is always first, whatever the order says.
//!
//! Levels that turn out empty take no number, so priorities are contiguous from 0. Within a
//! level, groups are sorted by zone name. `drained` comes from the federation view for every
//! group, this zone's included.
//!
//! # VIPs
//!
//! [`pb::OutboundService::vip`] is the service's locality-aware VIP: global's index for the
//! service mapped into this zone's VIP range. [`pb::OutboundService::zone_vips`] holds, for
//! every zone that serves the service (this zone, if it has instances, and every other
//! non-denied zone that exports it), the VIP pinned to that zone: global's index for the
//! (service, zone) pair, mapped into *this* zone's range. Sidecars route a pinned VIP to its
//! zone only, and DNS answers it as `SVC.NS.svc.ZONE.mesh.local`.
//!
//! # Policies
//!
//! Each service's [`pb::RoutePolicy`] is compiled from the resources that apply to the service
//! as a whole; a port that a resource names gets its own in `port_policies`, on single- and
//! multi-port services alike. The inbound policy is compiled for the port of the sidecar's app. Kinds
//! that do not apply leave their field absent (or 0), which the sidecar reads as the
//! documented default; a service with no client-side policy at all has no `policy`.
//! Durations are rounded *up* to whole milliseconds so that a sub-millisecond duration never
//! becomes 0 ("use the default").

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use strait_policy::{
    self as policy, Action, HeaderValueMatch, HttpMatch, LocalityFailoverSpec, PathMatch,
    PolicySet, RetryOn, ServicePolicies,
};
use strait_proto as pb;
use strait_proto::vip::VipCidr;

use crate::federation::FederationView;
use crate::inventory::{Instance, LocalInventory, ServiceKey};

/// Everything a config depends on that is the same for every sidecar of this zone.
#[derive(Debug, Clone, Copy)]
pub struct ZoneContext<'a> {
    pub zone: &'a str,
    pub region: &'a str,
    pub trust_domain: &'a str,
    pub vip_cidr: VipCidr,
    pub inventory: &'a LocalInventory,
    pub federation: &'a FederationView,
    /// `federation.policies()`, parsed once by the caller: parsing every policy's JSON for
    /// each of a thousand sidecars would dominate the cost of a push.
    pub policies: &'a PolicySet,
    /// This zone's east-west gateway addresses, the way to every other zone.
    pub local_gateways: &'a [String],
}

/// The input of [`compile`]: the zone's context and the sidecar being configured.
#[derive(Debug, Clone, Copy)]
pub struct CompileInput<'a> {
    pub context: ZoneContext<'a>,
    /// The sidecar's own registration (its service decides the inbound policy; its subzone is
    /// echoed in the config's locality).
    pub sidecar: &'a Instance,
}

/// One sidecar's full config, without `version` and `nonce`.
pub fn compile(input: &CompileInput<'_>) -> pb::SidecarConfig {
    let services = outbound_services(&input.context);
    sidecar_config(&input.context, input.sidecar, services)
}

/// The parts that differ per sidecar, around `services` from [`outbound_services`] (which
/// does not depend on the sidecar, so the server compiles it once per change for everyone).
///
/// The sidecar matters only through its service (the inbound policy) and its subzone (the
/// config's locality): sidecars that share both get equal configs, and the server assembles
/// one per such group.
pub fn sidecar_config(
    ctx: &ZoneContext<'_>,
    sidecar: &Instance,
    services: Vec<pb::OutboundService>,
) -> pb::SidecarConfig {
    sidecar_config_with(ctx, sidecar, services, deny_list(ctx.federation))
}

/// [`sidecar_config`] with the deny list from [`deny_list`] already computed.
pub fn sidecar_config_with(
    ctx: &ZoneContext<'_>,
    sidecar: &Instance,
    services: Vec<pb::OutboundService>,
    deny_list: Vec<String>,
) -> pb::SidecarConfig {
    pb::SidecarConfig {
        version: 0,
        nonce: String::new(),
        zone: ctx.zone.to_owned(),
        locality: Some(pb::Locality {
            region: ctx.region.to_owned(),
            zone: ctx.zone.to_owned(),
            subzone: sidecar.locality.subzone.clone(),
        }),
        trust_domain: ctx.trust_domain.to_owned(),
        services,
        inbound: Some(pb::InboundPolicy {
            app_protocol: sidecar_protocol(sidecar) as i32,
            ..inbound_policy(ctx.policies, &sidecar.service, sidecar_port(sidecar))
        }),
        deny_list,
    }
}

/// The zones removed from the federation, sorted and without duplicates, as every config
/// carries them.
pub fn deny_list(federation: &FederationView) -> Vec<String> {
    let mut deny_list: Vec<String> = federation.snapshot.deny_list.clone();
    deny_list.sort();
    deny_list.dedup();
    deny_list
}

/// Where a service can be found: this zone's instances and the other zones exporting it.
#[derive(Default)]
struct Sources<'a> {
    local: Option<&'a BTreeMap<String, Instance>>,
    /// Sorted by zone name, one entry per zone.
    remote: Vec<(&'a pb::RemoteZone, &'a pb::ExportedService)>,
}

/// Every service known in the federation (this zone's inventory and every other, non-denied
/// zone's exports), sorted by namespace then name.
pub fn outbound_services(ctx: &ZoneContext<'_>) -> Vec<pb::OutboundService> {
    let mut services: BTreeMap<ServiceKey, Sources<'_>> = BTreeMap::new();
    for (key, instances) in &ctx.inventory.instances {
        if !instances.is_empty() {
            services.entry(key.clone()).or_default().local = Some(instances);
        }
    }
    for zone in remote_zones(ctx) {
        for exported in &zone.services {
            let Some(service) = exported.service.as_ref() else {
                continue;
            };
            if service.namespace.is_empty() || service.name.is_empty() {
                continue;
            }
            let key = ServiceKey {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
            };
            let sources = services.entry(key).or_default();
            // A zone listing a service twice would otherwise count it twice.
            if !sources.remote.iter().any(|(z, _)| z.name == zone.name) {
                sources.remote.push((zone, exported));
            }
        }
    }
    // Indexed once per pass: a lookup per service in the snapshot's VIP list would make a
    // compile quadratic in the number of services (seconds at 30,000).
    let vips: HashMap<(&str, &str), u32> = ctx
        .federation
        .snapshot
        .vips
        .iter()
        .filter_map(|v| {
            v.service
                .as_ref()
                .map(|s| ((s.namespace.as_str(), s.name.as_str()), v.index))
        })
        .collect();
    let zone_vips: HashMap<(&str, &str, &str), u32> = ctx
        .federation
        .snapshot
        .zone_vips
        .iter()
        .filter_map(|v| {
            v.service.as_ref().map(|s| {
                (
                    (s.namespace.as_str(), s.name.as_str(), v.zone.as_str()),
                    v.index,
                )
            })
        })
        .collect();
    let vips = Vips {
        service: vips,
        pinned: zone_vips,
    };
    services
        .iter()
        .map(|(key, sources)| outbound_service(ctx, &vips, key, sources))
        .collect()
}

/// Global's VIP indices, indexed for lookups: by (namespace, name), and the zone-pinned ones
/// by (namespace, name, zone).
struct Vips<'a> {
    service: HashMap<(&'a str, &'a str), u32>,
    pinned: HashMap<(&'a str, &'a str, &'a str), u32>,
}

/// The other zones of the federation, by name: this zone's own entry (global's copy of what
/// this zone reported; the local inventory is fresher) and denied zones are left out.
fn remote_zones<'a>(ctx: &ZoneContext<'a>) -> Vec<&'a pb::RemoteZone> {
    let mut zones: Vec<&pb::RemoteZone> = ctx
        .federation
        .zones()
        .iter()
        .filter(|z| !z.name.is_empty() && z.name != ctx.zone && !ctx.federation.is_denied(&z.name))
        .collect();
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    zones.dedup_by(|a, b| a.name == b.name);
    zones
}

fn outbound_service(
    ctx: &ZoneContext<'_>,
    vips: &Vips<'_>,
    key: &ServiceKey,
    sources: &Sources<'_>,
) -> pb::OutboundService {
    let ports = merged_ports(sources);
    let policies = ctx.policies.for_service(&key.namespace, &key.name);
    let policy = route_policy(&policies);
    // A port gets its own policy only where a resource names it; the sidecar falls back to
    // the service's for every other port.
    let port_policies = ports
        .iter()
        .filter_map(|p| {
            let number = u16::try_from(p.port).ok()?;
            let own = route_policy(&ctx.policies.for_port(&key.namespace, &key.name, number));
            (own != policy).then(|| (p.port, own.unwrap_or_default()))
        })
        .collect();
    let failover = policies.locality_failover.as_ref().map(|a| a.spec);
    let subsets = route_subsets(ctx.policies, &key.namespace, &key.name);
    pb::OutboundService {
        service: Some(pb::ServiceRef {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }),
        ports,
        vip: vip(ctx, &vips.service, key),
        zone_vips: zone_vips(ctx, &vips.pinned, key, sources),
        localities: locality_groups(ctx, key, sources, failover, &subsets),
        policy,
        port_policies,
    }
}

/// The union of the ports every source declares, by port number (this zone's instances
/// first, then zones by name, so a conflicting name or protocol resolves the same way
/// everywhere), sorted by number.
fn merged_ports(sources: &Sources<'_>) -> Vec<pb::Port> {
    let mut ports: BTreeMap<u32, pb::Port> = BTreeMap::new();
    let local = sources
        .local
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|i| &i.ports);
    let remote = sources.remote.iter().flat_map(|(_, s)| &s.ports);
    for port in local.chain(remote) {
        if port.port != 0 {
            ports.entry(port.port).or_insert_with(|| port.clone());
        }
    }
    ports.into_values().collect()
}

/// The service's locality-aware VIP in this zone's range; empty until global allocated an
/// index (or when the index does not fit the range, which IPAM should have prevented).
fn vip(ctx: &ZoneContext<'_>, vips: &HashMap<(&str, &str), u32>, key: &ServiceKey) -> String {
    vips.get(&(key.namespace.as_str(), key.name.as_str()))
        .and_then(|index| ctx.vip_cidr.address(*index).ok())
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

/// The service's zone-pinned VIPs in this zone's range: one per zone that serves it (this zone
/// when it has instances, every other non-denied zone that exports it), each mapped from the
/// index global allocated to that (service, zone) pair. A zone without an index yet (global
/// has not seen its export) or whose index does not fit the range has none.
fn zone_vips(
    ctx: &ZoneContext<'_>,
    pinned: &HashMap<(&str, &str, &str), u32>,
    key: &ServiceKey,
    sources: &Sources<'_>,
) -> HashMap<String, String> {
    let local = sources.local.map(|_| ctx.zone);
    let remote = sources.remote.iter().map(|(zone, _)| zone.name.as_str());
    local
        .into_iter()
        .chain(remote)
        .filter_map(|zone| {
            let index = pinned.get(&(key.namespace.as_str(), key.name.as_str(), zone))?;
            let ip = ctx.vip_cidr.address(*index).ok()?;
            Some((zone.to_owned(), ip.to_string()))
        })
        .collect()
}

fn locality_groups(
    ctx: &ZoneContext<'_>,
    key: &ServiceKey,
    sources: &Sources<'_>,
    failover: Option<&LocalityFailoverSpec>,
    subsets: &[BTreeMap<String, String>],
) -> Vec<pb::LocalityGroup> {
    let mut groups = Vec::new();
    let mut priority = 0_u32;
    if let Some(instances) = sources.local {
        let endpoints: Vec<pb::Endpoint> = instances.values().map(Instance::endpoint).collect();
        let healthy = endpoints.iter().filter(|e| e.healthy).count();
        let total = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        groups.push(pb::LocalityGroup {
            zone: ctx.zone.to_owned(),
            region: ctx.region.to_owned(),
            priority,
            endpoints,
            local_gateways: Vec::new(),
            identities: Vec::new(),
            subsets: Vec::new(),
            weight: u32::try_from(healthy).unwrap_or(u32::MAX),
            total,
            drained: ctx
                .federation
                .is_drained(&key.namespace, &key.name, ctx.zone),
        });
        priority += 1;
    }
    for level in remote_levels(ctx.region, &sources.remote, failover) {
        for index in level {
            let (zone, exported) = sources.remote[index];
            let healthy = exported
                .localities
                .iter()
                .fold(0_u32, |sum, l| sum.saturating_add(l.healthy));
            let total = exported
                .localities
                .iter()
                .fold(0_u32, |sum, l| sum.saturating_add(l.total));
            groups.push(pb::LocalityGroup {
                zone: zone.name.clone(),
                region: zone.region.clone(),
                priority,
                endpoints: Vec::new(),
                local_gateways: ctx.local_gateways.to_vec(),
                identities: exported.identities.clone(),
                subsets: remote_subsets(exported, subsets),
                weight: healthy,
                total,
                drained: ctx
                    .federation
                    .is_drained(&key.namespace, &key.name, &zone.name),
            });
        }
        priority += 1;
    }
    groups
}

/// The label subsets that the routes of `namespace/name` send to, at any port (each once,
/// sorted): what zones report counts for, so that a subset's traffic only goes to zones that
/// serve it.
pub fn route_subsets(
    policies: &PolicySet,
    namespace: &str,
    name: &str,
) -> Vec<BTreeMap<String, String>> {
    let mut subsets: Vec<BTreeMap<String, String>> = policies
        .of_kind(policy::Kind::TrafficRoute, namespace)
        .filter_map(|r| match &r.spec {
            policy::Spec::TrafficRoute(route) if route.target_ref.service == name => Some(route),
            _ => None,
        })
        .flat_map(|route| &route.rules)
        .flat_map(|rule| &rule.split)
        .filter(|s| !s.labels.is_empty())
        .map(|s| s.labels.clone().into_iter().collect())
        .collect();
    subsets.sort();
    subsets.dedup();
    subsets
}

/// What a remote zone reported for the subsets this service's routes use; a subset it did not
/// report is one it does not serve, and is left out (the sidecar reads it as 0 healthy).
fn remote_subsets(
    exported: &pb::ExportedService,
    subsets: &[BTreeMap<String, String>],
) -> Vec<pb::SubsetCount> {
    exported
        .subsets
        .iter()
        .filter(|reported| {
            subsets.iter().any(|s| {
                s.len() == reported.labels.len()
                    && s.iter().all(|(k, v)| reported.labels.get(k) == Some(v))
            })
        })
        .cloned()
        .collect()
}

/// The remote zones (indexes into `remote`, which is sorted by zone name) grouped into
/// priority levels, best first; empty levels are dropped.
fn remote_levels(
    region: &str,
    remote: &[(&pb::RemoteZone, &pb::ExportedService)],
    failover: Option<&LocalityFailoverSpec>,
) -> Vec<Vec<usize>> {
    let mut levels: Vec<Vec<usize>> = Vec::new();
    let mut placed = vec![false; remote.len()];
    let mut take = |pick: &dyn Fn(&pb::RemoteZone) -> bool, levels: &mut Vec<Vec<usize>>| {
        let level: Vec<usize> = (0..remote.len())
            .filter(|&i| !placed[i] && pick(remote[i].0))
            .collect();
        for &i in &level {
            placed[i] = true;
        }
        if !level.is_empty() {
            levels.push(level);
        }
    };
    match failover {
        Some(spec) => {
            for entry in &spec.order {
                match entry {
                    policy::Locality::Zone(name) => take(&|z| &z.name == name, &mut levels),
                    policy::Locality::Region(name) => take(&|z| &z.region == name, &mut levels),
                }
            }
        }
        None => take(&|z| z.region == region, &mut levels),
    }
    // Zones listed nowhere (without a policy: every other region) come last, together.
    take(&|_| true, &mut levels);
    levels
}

// === policies ===

/// The client-side policy of a service, or `None` when no kind applies to it.
fn route_policy(p: &ServicePolicies<'_>) -> Option<pb::RoutePolicy> {
    let mut out = pb::RoutePolicy::default();
    if let Some(route) = &p.traffic_route {
        out.routes = route
            .spec
            .rules
            .iter()
            .map(|rule| pb::Route {
                matches: rule.matches.iter().map(route_match).collect(),
                split: rule
                    .split
                    .iter()
                    .map(|s| pb::WeightedSubset {
                        labels: s
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        weight: s.weight,
                    })
                    .collect(),
            })
            .collect();
    }
    if let Some(retry) = &p.retry {
        let s = retry.spec;
        let base = s.backoff.base.get();
        // The documented default cap is 10 × base; sent explicitly so the sidecar needs no
        // copy of that rule.
        let max = s.backoff.max.map_or(base.saturating_mul(10), |m| m.get());
        out.retry = Some(pb::RetryPolicy {
            attempts: s.attempts,
            per_try_timeout_ms: s.per_try_timeout.map_or(0, |d| millis(d.get())),
            retry_on: s.retry_on.iter().map(|r| retry_on(*r).to_owned()).collect(),
            retriable_status_codes: s
                .retriable_status_codes
                .iter()
                .map(|&c| u32::from(c))
                .collect(),
            backoff_base_ms: millis(base),
            backoff_max_ms: millis(max),
            budget_percent: s.budget.percent,
            min_retries_per_second: s.budget.min_retries_per_second,
        });
    }
    if let Some(timeout) = &p.timeout {
        let s = timeout.spec;
        out.timeout = Some(pb::TimeoutPolicy {
            connect_ms: s.connect.map_or(0, |d| millis(d.get())),
            request_ms: s.request.map_or(0, |d| millis(d.get())),
            idle_ms: s.idle.map_or(0, |d| millis(d.get())),
            response_headers_ms: s.response_headers.map_or(0, |d| millis(d.get())),
            stream_ms: s.stream.map_or(0, |d| millis(d.get())),
        });
    }
    if let Some(breaker) = &p.circuit_breaker {
        let s = breaker.spec;
        // Outlier detection is on by default in Strait: without `outlierDetection` the
        // documented defaults apply, sent explicitly because 0 would mean "check off".
        let od = s.outlier_detection.clone().unwrap_or_default();
        out.circuit_breaker = Some(pb::CircuitBreakerPolicy {
            max_connections: s.max_connections.unwrap_or(0),
            max_pending_requests: s.max_pending_requests.unwrap_or(0),
            max_requests: s.max_requests.unwrap_or(0),
            consecutive_5xx: od.consecutive_5xx,
            consecutive_connect_failures: od.consecutive_connect_failures,
            interval_ms: millis(od.interval.get()),
            base_ejection_ms: millis(od.base_ejection_time.get()),
            max_ejection_percent: od.max_ejection_percent,
        });
    }
    if let Some(fault) = &p.fault_injection {
        let s = fault.spec;
        out.fault = Some(pb::FaultPolicy {
            delay_percent: s.delay.as_ref().map_or(0.0, |d| d.percent),
            delay_ms: s.delay.as_ref().map_or(0, |d| millis(d.duration.get())),
            abort_percent: s.abort.as_ref().map_or(0.0, |a| a.percent),
            abort_status: s.abort.as_ref().map_or(0, |a| u32::from(a.http_status)),
            matches: s.matches.iter().map(route_match).collect(),
        });
    }
    // The destination's own proxies enforce a RateLimit (inbound); the copy here tells
    // callers what limit the service runs under and must not be enforced a second time.
    out.rate_limit = p.rate_limit.as_ref().map(|r| rate_limit(r.spec));
    if let Some(failover) = &p.locality_failover {
        let s = failover.spec;
        out.failover_order = s
            .order
            .iter()
            .map(|l| match l {
                policy::Locality::Zone(z) => format!("zone:{z}"),
                policy::Locality::Region(r) => format!("region:{r}"),
            })
            .collect();
        out.overprovisioning_percent = s.overprovisioning_factor;
    }
    (out != pb::RoutePolicy::default()).then_some(out)
}

/// The server-side policy of the sidecar's own service, on `port` (the port of the app it
/// fronts; `None` for the service as a whole). MeshTLS defaults to STRICT. Every
/// `TrafficPermission` that applies goes in, to be evaluated together.
pub fn inbound_policy(
    policies: &PolicySet,
    service: &ServiceKey,
    port: Option<u16>,
) -> pb::InboundPolicy {
    let p = match port {
        Some(port) => policies.for_port(&service.namespace, &service.name, port),
        None => policies.for_service(&service.namespace, &service.name),
    };
    let tls_mode = match p.mesh_tls.as_ref().map(|m| m.spec.mode) {
        Some(policy::MeshTlsMode::Permissive) => pb::MeshTlsMode::Permissive,
        Some(policy::MeshTlsMode::Strict) | None => pb::MeshTlsMode::Strict,
    };
    let permissions = p
        .traffic_permissions
        .iter()
        .map(|tp| pb::PermissionPolicy {
            default_deny: tp.spec.default_action == Action::Deny,
            rules: tp
                .spec
                .rules
                .iter()
                .map(|r| pb::PermissionRule {
                    allow: r.action == Action::Allow,
                    from: r.from.iter().map(|f| f.as_str().to_owned()).collect(),
                    methods: r.methods.clone(),
                    path_prefixes: r.paths.clone(),
                })
                .collect(),
            name: format!("{}/{}", tp.key.namespace, tp.key.name),
        })
        .collect();
    pb::InboundPolicy {
        tls_mode: tls_mode as i32,
        permissions,
        rate_limit: p.rate_limit.as_ref().map(|r| rate_limit(r.spec)),
        app_protocol: pb::Protocol::Unspecified as i32,
    }
}

/// The port the sidecar's app listens on: the one port it registered, if exactly one (a
/// sidecar fronts one app); otherwise the service as a whole.
pub fn sidecar_port(sidecar: &Instance) -> Option<u16> {
    match sidecar.ports.as_slice() {
        [only] => u16::try_from(only.port).ok().filter(|p| *p != 0),
        _ => None,
    }
}

/// The declared protocol of the sidecar's app port (the one it registered, as
/// [`sidecar_port`]), `UNSPECIFIED` when it has not exactly one.
pub fn sidecar_protocol(sidecar: &Instance) -> pb::Protocol {
    match sidecar.ports.as_slice() {
        [only] => only.protocol(),
        _ => pb::Protocol::Unspecified,
    }
}

fn rate_limit(s: &policy::RateLimitSpec) -> pb::RateLimitPolicy {
    pb::RateLimitPolicy {
        requests: s.requests,
        interval_ms: millis(s.interval.get()),
        burst: s.effective_burst(),
        status: u32::from(s.status),
    }
}

fn route_match(m: &HttpMatch) -> pb::RouteMatch {
    let mut out = pb::RouteMatch {
        method: m.method.clone().unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|h| pb::HeaderMatch {
                name: h.name.clone(),
                r#match: Some(match &h.value {
                    HeaderValueMatch::Exact(v) => pb::header_match::Match::Exact(v.clone()),
                    HeaderValueMatch::Prefix(v) => pb::header_match::Match::Prefix(v.clone()),
                    HeaderValueMatch::Regex(v) => pb::header_match::Match::Regex(v.clone()),
                    HeaderValueMatch::Present(v) => pb::header_match::Match::Present(*v),
                }),
            })
            .collect(),
        ..pb::RouteMatch::default()
    };
    match &m.path {
        Some(PathMatch::Exact(p)) => out.path_exact = p.clone(),
        Some(PathMatch::Prefix(p)) => out.path_prefix = p.clone(),
        Some(PathMatch::Regex(p)) => out.path_regex = p.clone(),
        None => {}
    }
    out
}

/// The spelling users write in `retryOn`, which is also what the sidecar reads.
fn retry_on(r: RetryOn) -> &'static str {
    match r {
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Status5xx => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::Reset => "reset",
        RetryOn::RetriableStatusCodes => "retriable-status-codes",
        RetryOn::GrpcUnavailable => "unavailable",
        RetryOn::GrpcCancelled => "cancelled",
        RetryOn::GrpcDeadlineExceeded => "deadline-exceeded",
        RetryOn::GrpcResourceExhausted => "resource-exhausted",
        RetryOn::GrpcInternal => "internal",
    }
}

/// Whole milliseconds, rounded up: 0 means "default" on the wire, so a positive duration must
/// never become 0.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
