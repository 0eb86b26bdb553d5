use std::collections::BTreeMap;

use super::*;

const TD: &str = "strait.local";

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn port(n: u32) -> pb::Port {
    pb::Port {
        name: "http".into(),
        port: n,
        protocol: pb::Protocol::Http as i32,
    }
}

fn instance(service: &str, name: &str, healthy: bool) -> Instance {
    Instance {
        service: key("demo", service),
        instance: name.into(),
        ports: vec![port(8080)],
        labels: BTreeMap::from([("version".to_owned(), "v1".to_owned())]),
        locality: pb::Locality {
            region: "eu".into(),
            zone: "a".into(),
            subzone: "rack-1".into(),
        },
        inbound_address: format!("10.0.0.{}:15006", name.len()),
        identity: format!("spiffe://{TD}/ns/demo/sa/{service}"),
        healthy,
    }
}

fn inventory(instances: &[Instance]) -> LocalInventory {
    let mut inv = LocalInventory::default();
    for i in instances {
        inv.instances
            .entry(i.service.clone())
            .or_default()
            .insert(i.instance.clone(), i.clone());
    }
    inv
}

/// A zone exporting `services` as (name, healthy, total).
fn zone(name: &str, region: &str, services: &[(&str, u32, u32)]) -> pb::RemoteZone {
    pb::RemoteZone {
        name: name.into(),
        region: region.into(),
        connected: true,
        services: services
            .iter()
            .map(|&(svc, healthy, total)| pb::ExportedService {
                service: Some(pb::ServiceRef {
                    namespace: "demo".into(),
                    name: svc.into(),
                }),
                ports: vec![port(8080)],
                localities: vec![pb::LocalityEndpoints {
                    locality: Some(pb::Locality {
                        region: region.into(),
                        zone: name.into(),
                        subzone: String::new(),
                    }),
                    healthy,
                    total,
                }],
                identities: vec![format!("spiffe://strait.local/ns/demo/sa/{svc}")],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn policies_yaml(yaml: &str) -> Vec<pb::PolicyResource> {
    strait_policy::parse_documents(yaml, "test.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| pb::PolicyResource {
            kind: r.kind.to_string(),
            namespace: r.metadata.namespace.clone(),
            name: r.metadata.name.clone(),
            json: r.to_json().unwrap(),
            revision: 1,
        })
        .collect()
}

/// The federation seen from zone `a` (region `eu`): `b` in eu, `c` and `d` in us.
fn view() -> FederationView {
    FederationView::new(pb::FederationSnapshot {
        version: 7,
        trust_domain: TD.into(),
        zones: vec![
            // Global's copy of this zone's own report: ignored in favour of the inventory.
            zone("a", "eu", &[("echo", 9, 9)]),
            zone("d", "us", &[("echo", 1, 1)]),
            zone("c", "us", &[("echo", 3, 4), ("web", 2, 2)]),
            zone("b", "eu", &[("echo", 0, 2)]),
        ],
        vips: vec![pb::ServiceVip {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            index: 300,
        }],
        ..Default::default()
    })
}

struct Fixture {
    inventory: LocalInventory,
    view: FederationView,
    gateways: Vec<String>,
    sidecar: Instance,
}

impl Fixture {
    fn new() -> Self {
        Self {
            inventory: inventory(&[
                instance("echo", "e1", true),
                instance("echo", "e2", false),
                instance("echo", "e3", true),
            ]),
            view: view(),
            gateways: vec!["127.0.0.1:15443".into()],
            sidecar: instance("client", "c1", true),
        }
    }

    fn with_policies(mut self, yaml: &str) -> Self {
        self.view.snapshot.policies = policies_yaml(yaml);
        self
    }

    fn compile(&self) -> pb::SidecarConfig {
        let policies = self.view.policies();
        compile(&CompileInput {
            context: ZoneContext {
                zone: "a",
                region: "eu",
                trust_domain: TD,
                vip_cidr: "127.240.0.0/16".parse().unwrap(),
                inventory: &self.inventory,
                federation: &self.view,
                policies: &policies,
                local_gateways: &self.gateways,
            },
            sidecar: &self.sidecar,
        })
    }
}

fn service<'a>(config: &'a pb::SidecarConfig, name: &str) -> &'a pb::OutboundService {
    config
        .services
        .iter()
        .find(|s| s.service.as_ref().is_some_and(|r| r.name == name))
        .unwrap_or_else(|| panic!("{name} missing from {:?}", config.services))
}

/// (zone, priority, weight) of every group, in order.
fn groups(s: &pb::OutboundService) -> Vec<(&str, u32, u32)> {
    s.localities
        .iter()
        .map(|g| (g.zone.as_str(), g.priority, g.weight))
        .collect()
}

fn policy(config: &pb::SidecarConfig, name: &str) -> pb::RoutePolicy {
    service(config, name)
        .policy
        .clone()
        .unwrap_or_else(|| panic!("{name} has no policy"))
}

#[test]
fn services_are_the_union_of_local_and_remote_sorted() {
    let mut f = Fixture::new();
    f.inventory = inventory(&[instance("echo", "e1", true), instance("api", "a1", true)]);
    let config = f.compile();
    let names: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.service.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["api", "echo", "web"]);
    assert_eq!(config.zone, "a");
    assert_eq!(config.trust_domain, TD);
    assert_eq!(
        config.locality,
        Some(pb::Locality {
            region: "eu".into(),
            zone: "a".into(),
            subzone: "rack-1".into()
        })
    );
    assert_eq!(
        (config.version, config.nonce.as_str()),
        (0, ""),
        "stamped by the stream"
    );
}

#[test]
fn local_zone_comes_first_with_every_endpoint_then_same_region_then_others() {
    let config = Fixture::new().compile();
    let echo = service(&config, "echo");
    // Local: 2 of 3 healthy. Then b (same region, 0 healthy but listed), then c and d
    // (region us) sharing one level, by name.
    assert_eq!(
        groups(echo),
        [("a", 0, 2), ("b", 1, 0), ("c", 2, 3), ("d", 2, 1)]
    );
    let local = &echo.localities[0];
    assert_eq!(local.region, "eu");
    assert!(
        local.local_gateways.is_empty(),
        "same zone: sidecar to sidecar"
    );
    let endpoints: Vec<(&str, bool)> = local
        .endpoints
        .iter()
        .map(|e| (e.instance.as_str(), e.healthy))
        .collect();
    assert_eq!(endpoints, [("e1", true), ("e2", false), ("e3", true)]);
    let e1 = &local.endpoints[0];
    assert_eq!(e1.address, "10.0.0.2:15006");
    assert_eq!(e1.spiffe_id, "spiffe://strait.local/ns/demo/sa/echo");
    assert_eq!(e1.labels.get("version").map(String::as_str), Some("v1"));
    for remote in &echo.localities[1..] {
        assert!(remote.endpoints.is_empty());
        assert_eq!(remote.local_gateways, ["127.0.0.1:15443"]);
    }
    assert_eq!(echo.localities[2].region, "us");
}

#[test]
fn a_service_without_local_instances_starts_at_priority_zero() {
    let config = Fixture::new().compile();
    assert_eq!(groups(service(&config, "web")), [("c", 0, 2)]);
}

#[test]
fn without_same_region_zones_other_regions_take_the_next_level() {
    let mut f = Fixture::new();
    f.view.snapshot.zones.retain(|z| z.name != "b");
    assert_eq!(
        groups(service(&f.compile(), "echo")),
        [("a", 0, 2), ("c", 1, 3), ("d", 1, 1)]
    );
}

#[test]
fn locality_failover_orders_zones_and_regions() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: LocalityFailover
metadata: {name: echo-failover, namespace: demo}
spec:
  targetRef: {service: echo}
  order:
    - zone: d
    - region: us
    - zone: a
  overprovisioningFactor: 200
",
    );
    let config = f.compile();
    let echo = service(&config, "echo");
    // Own zone first whatever the order says; d; the rest of us (c); b listed nowhere: last.
    assert_eq!(
        groups(echo),
        [("a", 0, 2), ("d", 1, 1), ("c", 2, 3), ("b", 3, 0)]
    );
    let p = policy(&config, "echo");
    assert_eq!(p.failover_order, ["zone:d", "region:us", "zone:a"]);
    assert_eq!(p.overprovisioning_percent, 200);
    // Other services keep the default order and get no policy.
    assert_eq!(service(&config, "web").policy, None);
}

#[test]
fn a_region_entry_groups_its_zones_into_one_level() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: LocalityFailover
metadata: {name: echo-failover, namespace: demo}
spec:
  targetRef: {service: echo}
  order: [{region: us}, {zone: nowhere}]
",
    );
    let config = f.compile();
    assert_eq!(
        groups(service(&config, "echo")),
        [("a", 0, 2), ("c", 1, 3), ("d", 1, 1), ("b", 2, 0)]
    );
    assert_eq!(
        policy(&config, "echo").overprovisioning_percent,
        140,
        "default filled in"
    );
}

#[test]
fn denied_zones_are_skipped_everywhere() {
    let mut f = Fixture::new();
    f.view.snapshot.deny_list = vec!["c".into(), "c".into()];
    let config = f.compile();
    assert_eq!(
        groups(service(&config, "echo")),
        [("a", 0, 2), ("b", 1, 0), ("d", 2, 1)]
    );
    assert!(
        config
            .services
            .iter()
            .all(|s| s.service.as_ref().unwrap().name != "web"),
        "web only runs in the denied zone"
    );
    assert_eq!(config.deny_list, ["c"]);
}

#[test]
fn drained_flags_come_from_the_view() {
    let mut f = Fixture::new();
    let echo = Some(pb::ServiceRef {
        namespace: "demo".into(),
        name: "echo".into(),
    });
    f.view.snapshot.drains = vec![
        pb::Drain {
            service: echo.clone(),
            zone: "a".into(),
        },
        pb::Drain {
            service: echo,
            zone: "c".into(),
        },
    ];
    let config = f.compile();
    let drained: Vec<(&str, bool)> = service(&config, "echo")
        .localities
        .iter()
        .map(|g| (g.zone.as_str(), g.drained))
        .collect();
    assert_eq!(
        drained,
        [("a", true), ("b", false), ("c", true), ("d", false)]
    );
    assert!(
        !service(&config, "web").localities[0].drained,
        "drains are per service"
    );
}

#[test]
fn vips_map_the_index_into_the_zone_range() {
    let config = Fixture::new().compile();
    assert_eq!(service(&config, "echo").vip, "127.240.1.44");
    assert_eq!(service(&config, "web").vip, "", "no index allocated yet");
    assert!(
        service(&config, "echo").zone_vips.is_empty(),
        "no pinned index allocated yet"
    );
}

fn zone_vip(service: &str, zone: &str, index: u32) -> pb::ZoneVip {
    pb::ZoneVip {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: service.into(),
        }),
        zone: zone.into(),
        index,
    }
}

/// The view with a pinned index for every (service, zone) pair global knows of, plus `extra`.
fn with_pinned(f: &mut Fixture, extra: &[pb::ZoneVip]) {
    f.view.snapshot.zone_vips = vec![
        zone_vip("echo", "a", 301),
        zone_vip("echo", "b", 302),
        zone_vip("echo", "c", 303),
        zone_vip("echo", "d", 304),
        zone_vip("web", "c", 305),
    ];
    f.view.snapshot.zone_vips.extend_from_slice(extra);
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    pairs
}

#[test]
fn zone_vips_pin_every_serving_zone_into_this_zones_range() {
    let mut f = Fixture::new();
    with_pinned(&mut f, &[]);
    let config = f.compile();
    // This zone (it has instances) and every other zone that exports echo, each mapped into
    // zone a's range (127.240.0.0/16).
    assert_eq!(
        sorted(&service(&config, "echo").zone_vips),
        [
            ("a", "127.240.1.45"),
            ("b", "127.240.1.46"),
            ("c", "127.240.1.47"),
            ("d", "127.240.1.48"),
        ]
    );
    // web has no service index yet but its pair with c has one: pinned and locality-aware
    // VIPs are independent.
    assert_eq!(
        sorted(&service(&config, "web").zone_vips),
        [("c", "127.240.1.49")]
    );
    assert_eq!(service(&config, "web").vip, "");

    // Every pinned VIP differs from every other VIP of the config.
    let mut all: Vec<&str> = config
        .services
        .iter()
        .flat_map(|s| {
            std::iter::once(s.vip.as_str()).chain(s.zone_vips.values().map(String::as_str))
        })
        .filter(|v| !v.is_empty())
        .collect();
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count);
}

#[test]
fn zone_vips_only_for_zones_that_serve_the_service_now() {
    let mut f = Fixture::new();
    // Stale or foreign entries: a pair for a zone that does not export web, an unknown zone,
    // a pair whose index does not fit the range.
    with_pinned(
        &mut f,
        &[
            zone_vip("web", "b", 306),
            zone_vip("echo", "zz", 307),
            zone_vip("api", "a", 308),
        ],
    );
    f.view.snapshot.zone_vips[3].index = 70_000; // (echo, d)
    // This zone has no echo instance any more: no pinned VIP for a, even though global still
    // has the pair (its copy of a's report lags).
    f.inventory = inventory(&[]);
    let config = f.compile();
    assert_eq!(
        sorted(&service(&config, "echo").zone_vips),
        [("b", "127.240.1.46"), ("c", "127.240.1.47")]
    );
    assert_eq!(
        sorted(&service(&config, "web").zone_vips),
        [("c", "127.240.1.49")]
    );
    assert!(
        config
            .services
            .iter()
            .all(|s| s.service.as_ref().unwrap().name != "api")
    );
}

#[test]
fn denied_zones_get_no_pinned_vip() {
    let mut f = Fixture::new();
    with_pinned(&mut f, &[]);
    f.view.snapshot.deny_list = vec!["c".into()];
    let config = f.compile();
    assert_eq!(
        sorted(&service(&config, "echo").zone_vips),
        [
            ("a", "127.240.1.45"),
            ("b", "127.240.1.46"),
            ("d", "127.240.1.48"),
        ]
    );
}

#[test]
fn an_index_outside_the_range_gives_no_vip_rather_than_a_wrong_one() {
    let mut f = Fixture::new();
    f.view.snapshot.vips[0].index = 70_000;
    assert_eq!(service(&f.compile(), "echo").vip, "");
}

#[test]
fn ports_are_merged_by_number() {
    let mut f = Fixture::new();
    let mut extra = zone("e", "eu", &[("echo", 1, 1)]);
    extra.services[0].ports = vec![port(9090), port(8080)];
    f.view.snapshot.zones.push(extra);
    let ports: Vec<u32> = service(&f.compile(), "echo")
        .ports
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9090]);
}

#[test]
fn traffic_route_compiles_matches_and_splits() {
    let f = Fixture::new().with_policies(
        r#"apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: canary, namespace: demo}
spec:
  targetRef: {service: echo}
  rules:
    - matches:
        - headers:
            - {name: x-canary, exact: "true"}
            - {name: x-debug, present: false}
        - path: {prefix: /api/v2/}
          method: GET
        - path: {regex: "/items/[0-9]+"}
      split:
        - labels: {version: v2}
          weight: 1
    - split:
        - labels: {version: v1}
          weight: 90
        - labels: {version: v2}
          weight: 10
"#,
    );
    let p = policy(&f.compile(), "echo");
    assert_eq!(p.routes.len(), 2);
    let first = &p.routes[0];
    assert_eq!(first.matches.len(), 3);
    assert_eq!(
        first.matches[0].headers,
        [
            pb::HeaderMatch {
                name: "x-canary".into(),
                r#match: Some(pb::header_match::Match::Exact("true".into())),
            },
            pb::HeaderMatch {
                name: "x-debug".into(),
                r#match: Some(pb::header_match::Match::Present(false)),
            },
        ]
    );
    assert_eq!(first.matches[1].path_prefix, "/api/v2/");
    assert_eq!(first.matches[1].method, "GET");
    assert_eq!(first.matches[2].path_regex, "/items/[0-9]+");
    assert_eq!(first.split[0].weight, 1);
    assert_eq!(
        first.split[0].labels.get("version").map(String::as_str),
        Some("v2")
    );
    let second = &p.routes[1];
    assert!(second.matches.is_empty(), "catch-all");
    let weights: Vec<u32> = second.split.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [90, 10]);
}

#[test]
fn retry_compiles_with_defaults_made_explicit() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Retry
metadata: {name: echo-retries, namespace: demo}
spec:
  targetRef: {service: echo}
  attempts: 3
  perTryTimeout: 500ms
  retryOn: [connect-failure, 5xx, retriable-status-codes]
  retriableStatusCodes: [409]
  backoff: {base: 20ms}
",
    );
    let r = policy(&f.compile(), "echo").retry.unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.per_try_timeout_ms, 500);
    assert_eq!(
        r.retry_on,
        ["connect-failure", "5xx", "retriable-status-codes"]
    );
    assert_eq!(r.retriable_status_codes, [409]);
    assert_eq!(
        (r.backoff_base_ms, r.backoff_max_ms),
        (20, 200),
        "max = 10 × base"
    );
    assert_eq!((r.budget_percent, r.min_retries_per_second), (20.0, 10));
}

#[test]
fn timeout_compiles_to_milliseconds_and_absent_fields_stay_zero() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: t, namespace: demo}
spec:
  targetRef: {service: echo}
  request: 2s
  idle: 5m
",
    );
    let p = policy(&f.compile(), "echo");
    assert_eq!(
        p.timeout,
        Some(pb::TimeoutPolicy {
            connect_ms: 0,
            request_ms: 2_000,
            idle_ms: 300_000,
            response_headers_ms: 0,
            stream_ms: 0,
        })
    );
    assert_eq!(p.retry, None, "absent kinds stay absent");
    assert_eq!(p.circuit_breaker, None);
    assert_eq!(p.fault, None);
}

#[test]
fn sub_millisecond_durations_round_up_not_to_zero() {
    assert_eq!(millis(Duration::from_micros(300)), 1);
    assert_eq!(millis(Duration::from_millis(250)), 250);
    assert_eq!(millis(Duration::from_nanos(2_000_001)), 3);
    assert_eq!(millis(Duration::MAX), u64::MAX);
}

#[test]
fn circuit_breaker_compiles_limits_and_outlier_detection() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: CircuitBreaker
metadata: {name: b, namespace: demo}
spec:
  targetRef: {service: echo}
  maxConnections: 100
  maxRequests: 200
  outlierDetection:
    consecutive5xx: 0
    consecutiveConnectFailures: 3
    interval: 5s
    baseEjectionTime: 15s
    maxEjectionPercent: 33.5
",
    );
    assert_eq!(
        policy(&f.compile(), "echo").circuit_breaker,
        Some(pb::CircuitBreakerPolicy {
            max_connections: 100,
            max_pending_requests: 0,
            max_requests: 200,
            consecutive_5xx: 0,
            consecutive_connect_failures: 3,
            interval_ms: 5_000,
            base_ejection_ms: 15_000,
            max_ejection_percent: 33.5,
        })
    );
}

#[test]
fn a_breaker_without_outlier_detection_keeps_detection_on_with_defaults() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: CircuitBreaker
metadata: {name: b, namespace: demo}
spec:
  targetRef: {service: echo}
  maxPendingRequests: 50
",
    );
    let cb = policy(&f.compile(), "echo").circuit_breaker.unwrap();
    assert_eq!(cb.max_pending_requests, 50);
    assert_eq!(
        (cb.consecutive_5xx, cb.consecutive_connect_failures),
        (5, 5)
    );
    assert_eq!((cb.interval_ms, cb.base_ejection_ms), (10_000, 30_000));
    assert_eq!(cb.max_ejection_percent, 50.0);
}

#[test]
fn fault_injection_compiles() {
    let f = Fixture::new().with_policies(
        r#"apiVersion: strait.dev/v1alpha1
kind: FaultInjection
metadata: {name: chaos, namespace: demo}
spec:
  targetRef: {service: echo}
  matches:
    - headers:
        - {name: x-chaos, exact: "on"}
  delay: {percent: 10, duration: 2s}
  abort: {percent: 5.5, httpStatus: 503}
"#,
    );
    let fault = policy(&f.compile(), "echo").fault.unwrap();
    assert_eq!((fault.delay_percent, fault.delay_ms), (10.0, 2_000));
    assert_eq!((fault.abort_percent, fault.abort_status), (5.5, 503));
    assert_eq!(fault.matches.len(), 1);
    assert_eq!(fault.matches[0].headers[0].name, "x-chaos");
}

#[test]
fn rate_limit_compiles_for_the_destination_and_for_callers() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: RateLimit
metadata: {name: limit, namespace: demo}
spec:
  targetRef: {service: echo}
  requests: 100
  interval: 1s
",
    );
    let expected = pb::RateLimitPolicy {
        requests: 100,
        interval_ms: 1_000,
        burst: 100,
        status: 429,
    };
    let mut f = f;
    assert_eq!(policy(&f.compile(), "echo").rate_limit, Some(expected));
    f.sidecar = instance("echo", "e1", true);
    assert_eq!(f.compile().inbound.unwrap().rate_limit, Some(expected));
}

#[test]
fn inbound_defaults_to_strict_with_no_permission_policy() {
    let inbound = Fixture::new().compile().inbound.unwrap();
    assert_eq!(inbound.tls_mode, pb::MeshTlsMode::Strict as i32);
    assert!(inbound.permissions.is_empty());
    assert_eq!(inbound.rate_limit, None);
}

#[test]
fn inbound_compiles_the_sidecars_own_permission_and_mesh_tls() {
    let mut f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: TrafficPermission
metadata: {name: echo-access, namespace: demo}
spec:
  targetRef: {service: echo}
  defaultAction: deny
  rules:
    - action: allow
      from:
        - spiffe://strait.local/ns/demo/sa/*
        - spiffe://strait.local/ns/frontend/sa/web
      methods: [GET, HEAD]
      paths: [/api/]
    - action: deny
      from: [spiffe://strait.local/ns/demo/sa/batch]
---
apiVersion: strait.dev/v1alpha1
kind: MeshTLS
metadata: {name: demo-permissive, namespace: demo}
spec:
  mode: PERMISSIVE
",
    );
    // The client's own service has no TrafficPermission, but the namespace-wide MeshTLS.
    let client = f.compile().inbound.unwrap();
    assert_eq!(client.tls_mode, pb::MeshTlsMode::Permissive as i32);
    assert!(client.permissions.is_empty());

    f.sidecar = instance("echo", "e1", true);
    let inbound = f.compile().inbound.unwrap();
    assert_eq!(
        inbound.permissions,
        vec![pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                pb::PermissionRule {
                    allow: true,
                    from: vec![
                        "spiffe://strait.local/ns/demo/sa/*".into(),
                        "spiffe://strait.local/ns/frontend/sa/web".into(),
                    ],
                    methods: vec!["GET".into(), "HEAD".into()],
                    path_prefixes: vec!["/api/".into()],
                },
                pb::PermissionRule {
                    allow: false,
                    from: vec!["spiffe://strait.local/ns/demo/sa/batch".into()],
                    methods: vec![],
                    path_prefixes: vec![],
                },
            ],
            name: "demo/echo-access".into(),
        }]
    );
}

#[test]
fn a_service_specific_mesh_tls_wins_over_the_namespace() {
    let mut f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: MeshTLS
metadata: {name: ns-wide, namespace: demo}
spec: {mode: PERMISSIVE}
---
apiVersion: strait.dev/v1alpha1
kind: MeshTLS
metadata: {name: echo-strict, namespace: demo}
spec: {targetRef: {service: echo}, mode: STRICT}
",
    );
    f.sidecar = instance("echo", "e1", true);
    assert_eq!(
        f.compile().inbound.unwrap().tls_mode,
        pb::MeshTlsMode::Strict as i32
    );
}

#[test]
fn port_scoped_policies_apply_to_single_port_services() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: a-port, namespace: demo}
spec:
  targetRef: {service: echo, port: 8080}
  request: 3s
---
apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: b-service, namespace: demo}
spec:
  targetRef: {service: echo}
  request: 9s
",
    );
    let timeout = policy(&f.compile(), "echo").timeout.unwrap();
    assert_eq!(
        timeout.request_ms, 3_000,
        "the port-scoped resource is more specific"
    );
}

#[test]
fn policies_of_other_namespaces_do_not_apply() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: t, namespace: other}
spec:
  targetRef: {service: echo}
  request: 2s
",
    );
    assert_eq!(service(&f.compile(), "echo").policy, None);
}

#[test]
fn compiling_is_deterministic() {
    let f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Retry
metadata: {name: r, namespace: demo}
spec: {targetRef: {service: echo}, attempts: 2}
",
    );
    let first = f.compile();
    for _ in 0..5 {
        assert_eq!(f.compile(), first);
    }
    // The order global lists zones in does not matter either.
    let mut shuffled = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Retry
metadata: {name: r, namespace: demo}
spec: {targetRef: {service: echo}, attempts: 2}
",
    );
    shuffled.view.snapshot.zones.reverse();
    assert_eq!(shuffled.compile(), first);
}

#[test]
fn a_health_change_changes_the_config_and_nothing_else_does() {
    let f = Fixture::new();
    let before = f.compile();
    let mut g = Fixture::new();
    g.inventory
        .instances
        .get_mut(&key("demo", "echo"))
        .unwrap()
        .get_mut("e2")
        .unwrap()
        .healthy = true;
    let after = g.compile();
    assert_ne!(before, after);
    assert_eq!(service(&after, "echo").localities[0].weight, 3);
    // A new federation version with the same content compiles to the same config.
    let mut h = Fixture::new();
    h.view.snapshot.version = 8;
    assert_eq!(h.compile(), before);
}

#[test]
fn a_zone_with_garbage_entries_does_not_break_the_compile() {
    let mut f = Fixture::new();
    f.view.snapshot.zones.push(pb::RemoteZone {
        name: "x".into(),
        region: "eu".into(),
        services: vec![
            pb::ExportedService::default(),
            pb::ExportedService {
                service: Some(pb::ServiceRef {
                    namespace: String::new(),
                    name: "nameless-ns".into(),
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    f.view.snapshot.zones.push(pb::RemoteZone::default());
    let config = f.compile();
    assert_eq!(config.services.len(), 2);
}

#[test]
fn port_scoped_policies_apply_per_port_on_a_multi_port_service() {
    let mut f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: echo, namespace: demo}
spec: {targetRef: {service: echo}, request: 2s}
---
apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata: {name: echo-admin, namespace: demo}
spec: {targetRef: {service: echo, port: 9090}, request: 9s}
",
    );
    let mut admin = instance("echo", "e9", true);
    admin.ports = vec![port(9090)];
    f.inventory = inventory(&[instance("echo", "e1", true), admin]);
    let config = f.compile();
    let echo = service(&config, "echo");
    assert_eq!(echo.ports.len(), 2);
    let request_ms = |p: &pb::RoutePolicy| p.timeout.as_ref().unwrap().request_ms;
    assert_eq!(request_ms(echo.policy.as_ref().unwrap()), 2_000);
    // Only the port a resource names gets its own policy.
    assert_eq!(echo.port_policies.len(), 1, "{:?}", echo.port_policies);
    assert_eq!(request_ms(&echo.port_policies[&9090]), 9_000);
}

#[test]
fn inbound_combines_every_permission_of_the_sidecars_port() {
    let mut f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: TrafficPermission
metadata: {name: ns-default, namespace: demo}
spec: {defaultAction: deny}
---
apiVersion: strait.dev/v1alpha1
kind: TrafficPermission
metadata: {name: echo-allow, namespace: demo}
spec:
  targetRef: {service: echo}
  rules: [{action: allow, from: [spiffe://strait.local/ns/demo/sa/client]}]
---
apiVersion: strait.dev/v1alpha1
kind: TrafficPermission
metadata: {name: echo-9090-deny, namespace: demo}
spec:
  targetRef: {service: echo, port: 9090}
  rules: [{action: deny}]
---
apiVersion: strait.dev/v1alpha1
kind: TrafficPermission
metadata: {name: mesh-deny, namespace: strait-system}
spec:
  rules: [{action: deny, from: [spiffe://strait.local/ns/demo/sa/batch]}]
",
    );
    let names = |c: &pb::SidecarConfig| -> Vec<String> {
        c.inbound
            .as_ref()
            .unwrap()
            .permissions
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    f.sidecar = instance("echo", "e1", true);
    assert_eq!(
        names(&f.compile()),
        [
            "strait-system/mesh-deny",
            "demo/ns-default",
            "demo/echo-allow"
        ]
    );
    f.sidecar.ports = vec![port(9090)];
    assert_eq!(
        names(&f.compile()),
        [
            "strait-system/mesh-deny",
            "demo/ns-default",
            "demo/echo-allow",
            "demo/echo-9090-deny"
        ]
    );
}

#[test]
fn remote_zones_carry_the_counts_of_the_subsets_routes_use() {
    let mut f = Fixture::new().with_policies(
        "apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: echo-v2, namespace: demo}
spec:
  targetRef: {service: echo}
  rules: [{split: [{labels: {version: v2}, weight: 1}]}]
",
    );
    let subset = |version: &str, healthy: u32, total: u32| pb::SubsetCount {
        labels: [("version".to_owned(), version.to_owned())].into(),
        healthy,
        total,
    };
    // Zone c serves v2 (and reports a subset no route uses any more); d reports nothing.
    for z in &mut f.view.snapshot.zones {
        if z.name == "c" {
            z.services[0].subsets = vec![subset("v2", 2, 3), subset("v7", 1, 1)];
        }
    }
    let config = f.compile();
    let echo = service(&config, "echo");
    let reported: Vec<(&str, Vec<pb::SubsetCount>)> = echo
        .localities
        .iter()
        .map(|g| (g.zone.as_str(), g.subsets.clone()))
        .collect();
    assert_eq!(
        reported,
        vec![
            ("a", vec![]),
            ("b", vec![]),
            ("c", vec![subset("v2", 2, 3)]),
            ("d", vec![]),
        ]
    );

    // And this zone reports its own instances per subset.
    let mut v2 = instance("echo", "e2", true);
    v2.labels.insert("version".into(), "v2".into());
    f.inventory = inventory(&[instance("echo", "e1", true), v2]);
    let exported = f.inventory.exported_services(&f.view.policies());
    assert_eq!(exported[0].subsets, vec![subset("v2", 1, 1)]);
}
