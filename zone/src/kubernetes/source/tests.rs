//! Tests of the pure mapping and of pod trimming; the helpers build the objects the other
//! Kubernetes tests (`kubernetes::tests`, `status`) use too.

use super::watches::trim_pod;
use super::*;
use k8s_openapi::api::core::v1::PodStatus;
use serde_json::json;

pub(crate) fn settings() -> SourceSettings {
    SourceSettings {
        zone: "eu-1".into(),
        region: "eu".into(),
        trust_domain: "strait.local".into(),
        endpoint_inbound_port: 15008,
    }
}

pub(crate) fn service(ns: &str, name: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {"ports": ports, "clusterIP": "10.0.0.10"}
    }))
    .unwrap()
}

/// `endpoints`: (pod name, address, ready, topology zone).
pub(crate) fn slice(
    ns: &str,
    service: &str,
    name: &str,
    family: &str,
    endpoints: &[(&str, &str, Option<bool>, &str)],
) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(pod, address, ready, zone)| {
            let mut e = json!({
                "addresses": [address],
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                "zone": zone,
            });
            if let Some(ready) = ready {
                e["conditions"] = json!({"ready": ready});
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
            "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

pub(crate) fn pod(ns: &str, name: &str, sa: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "labels": labels},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "echo"}]},
    }))
    .unwrap()
}

pub(crate) fn export(ns: &str, name: &str) -> ServiceExport {
    serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
    }))
    .unwrap()
}

pub(crate) fn gateway_settings() -> GatewayPods {
    GatewayPods {
        namespace: "strait-system".into(),
    }
}

/// A gateway pod of zone `zone` in `ns` with IP `ip` (none: `""`), `Ready` or not, and
/// `annotations` (the local port one unless overridden).
pub(crate) fn gateway_pod(
    ns: &str,
    name: &str,
    zone: &str,
    ip: &str,
    ready: bool,
    annotations: serde_json::Value,
) -> Pod {
    let mut all = json!({GATEWAY_LOCAL_PORT_ANNOTATION: "7601",
                         GATEWAY_QUIC_PORT_ANNOTATION: "7600",
                         "prometheus.io/scrape": "true"});
    for (k, v) in annotations.as_object().unwrap() {
        all[k] = v.clone();
    }
    all.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
        ],
    });
    if !ip.is_empty() {
        status["podIP"] = json!(ip);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
            "labels": {GATEWAY_LABEL: zone, "app.kubernetes.io/component": "gateway"},
            "annotations": all},
        "spec": {"serviceAccountName": "strait-gateway",
            "containers": [{"name": "gateway", "image": "strait"}]},
        "status": status,
    }))
    .unwrap()
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn echo_state() -> ClusterState {
    ClusterState {
        services: vec![Arc::new(service(
            "demo",
            "echo",
            json!([{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
                   {"name": "dns", "port": 53, "protocol": "UDP"},
                   {"name": "grpc-api", "port": 9090}]),
        ))],
        endpoint_slices: vec![Arc::new(slice(
            "demo",
            "echo",
            "echo-abc",
            "IPv4",
            &[
                ("echo-1", "10.1.0.1", Some(true), "eu-1a"),
                ("echo-2", "10.1.0.2", Some(false), "eu-1b"),
                ("echo-3", "10.1.0.3", None, "eu-1a"),
            ],
        ))],
        pods: vec![
            Arc::new(pod(
                "demo",
                "echo-1",
                "echo-sa",
                json!({"app": "echo", "version": "v1"}),
            )),
            Arc::new(pod(
                "demo",
                "echo-2",
                "echo-sa",
                json!({"app": "echo", "version": "v2"}),
            )),
        ],
        exports: vec![Arc::new(export("demo", "echo"))],
    }
}

#[test]
fn an_exported_service_becomes_instances_with_health_labels_and_identity() {
    let inv = inventory(&echo_state(), &settings());
    let echo = inv.service(&key("demo", "echo")).unwrap();
    assert_eq!(
        echo.keys().collect::<Vec<_>>(),
        ["echo-1", "echo-2", "echo-3"]
    );
    let one = &echo["echo-1"];
    assert!(one.healthy);
    assert_eq!(one.inbound_address, "10.1.0.1:15008");
    assert_eq!(one.identity, "spiffe://strait.local/ns/demo/sa/echo-sa");
    assert_eq!(one.labels["version"], "v1");
    assert_eq!(
        one.locality,
        pb::Locality {
            region: "eu".into(),
            zone: "eu-1".into(),
            subzone: "eu-1a".into()
        }
    );
    // UDP is left out; protocols from appProtocol and from the name's prefix.
    let ports: Vec<_> = one
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 80, pb::Protocol::Http as i32),
            ("grpc-api", 9090, pb::Protocol::Grpc as i32)
        ]
    );
    assert!(!echo["echo-2"].healthy);
    // No `ready` condition counts as ready; an unknown pod gets the default account.
    assert!(echo["echo-3"].healthy);
    assert_eq!(
        echo["echo-3"].identity,
        "spiffe://strait.local/ns/demo/sa/default"
    );
    assert!(echo["echo-3"].labels.is_empty());

    let exported = inv.exported_services(&Default::default());
    assert_eq!(exported.len(), 1);
    let counts: Vec<_> = exported[0]
        .localities
        .iter()
        .map(|l| {
            (
                l.locality.as_ref().unwrap().subzone.as_str(),
                l.healthy,
                l.total,
            )
        })
        .collect();
    assert_eq!(counts, [("eu-1a", 2, 2), ("eu-1b", 0, 1)]);
    assert_eq!(exported[0].identities.len(), 2);
}

#[test]
fn only_services_with_a_service_export_are_exported() {
    let mut state = echo_state();
    state.exports.clear();
    assert!(inventory(&state, &settings()).instances.is_empty());
    // An export in another namespace does not count.
    state.exports.push(Arc::new(export("other", "echo")));
    let inv = inventory(&state, &settings());
    assert!(inv.service(&key("demo", "echo")).is_none());
    assert!(inv.exported_services(&Default::default()).is_empty());
}

#[test]
fn slices_of_other_services_and_dual_stack_duplicates() {
    let mut state = echo_state();
    state.endpoint_slices.push(Arc::new(slice(
        "demo",
        "echo",
        "echo-v6",
        "IPv6",
        &[("echo-1", "fd00::1", Some(true), "eu-1a")],
    )));
    state.endpoint_slices.push(Arc::new(slice(
        "demo",
        "other",
        "other-x",
        "IPv4",
        &[("other-1", "10.9.0.1", Some(true), "eu-1a")],
    )));
    let inv = inventory(&state, &settings());
    let echo = inv.service(&key("demo", "echo")).unwrap();
    assert_eq!(echo.len(), 3);
    assert_eq!(echo["echo-1"].inbound_address, "10.1.0.1:15008");
    // Only IPv6: bracketed.
    state.endpoint_slices.remove(0);
    let inv = inventory(&state, &settings());
    assert_eq!(
        inv.service(&key("demo", "echo")).unwrap()["echo-1"].inbound_address,
        "[fd00::1]:15008"
    );
}

#[test]
fn invalid_exports() {
    assert_eq!(validate_export(None).unwrap_err().reason, "ServiceNotFound");
    let udp = service("demo", "dns", json!([{"port": 53, "protocol": "UDP"}]));
    assert_eq!(
        validate_export(Some(&udp)).unwrap_err().reason,
        "NoTCPPorts"
    );
    let mut external = service("demo", "ext", json!([{"port": 80}]));
    external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert_eq!(
        validate_export(Some(&external)).unwrap_err().reason,
        "ServiceTypeUnsupported"
    );
    let mut state = echo_state();
    state.services = vec![Arc::new(udp)];
    state.exports = vec![Arc::new(export("demo", "dns"))];
    assert!(inventory(&state, &settings()).instances.is_empty());
}

fn gateway_of(pod: &Pod) -> Result<Option<Instance>, String> {
    gateway_instance(pod, &settings(), &gateway_settings())
}

#[test]
fn a_ready_gateway_pod_is_a_healthy_gateway_with_both_addresses() {
    let pod = gateway_pod("strait-system", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
    let gw = gateway_of(&pod).unwrap().unwrap();
    assert_eq!(gw.instance, "gw-a");
    assert_eq!(gw.service, crate::inventory::gateway_key());
    assert!(gw.healthy);
    assert_eq!(gw.inbound_address, "10.2.0.7:7601");
    assert_eq!(gw.public_address(), "10.2.0.7:7600");
    assert_eq!(gw.identity, "spiffe://strait.local/zone/eu-1/gateway");
    assert_eq!(
        gw.locality,
        pb::Locality {
            region: "eu".into(),
            zone: "eu-1".into(),
            subzone: String::new()
        }
    );
    // What the discovery server makes of a registration says the same.
    let registered = Instance::gateway(
        "gw-a".into(),
        gw.locality.clone(),
        "10.2.0.7:7601".into(),
        "10.2.0.7:7600".into(),
        "spiffe://strait.local/zone/eu-1/gateway".into(),
    );
    assert_eq!(gw, registered);
}

#[test]
fn the_public_address_annotation_is_taken_verbatim_else_none_is_announced() {
    let lb = gateway_pod(
        "strait-system",
        "gw-a",
        "eu-1",
        "fd00::7",
        true,
        json!({PUBLIC_ADDRESS_ANNOTATION: "gw.eu-1.example.com:443"}),
    );
    let gw = gateway_of(&lb).unwrap().unwrap();
    assert_eq!(gw.public_address(), "gw.eu-1.example.com:443");
    assert_eq!(gw.inbound_address, "[fd00::7]:7601");

    // No QUIC port either: sidecars of this zone use it, other zones are not told of it.
    let local_only = gateway_pod(
        "strait-system",
        "gw-b",
        "eu-1",
        "10.2.0.8",
        true,
        json!({GATEWAY_QUIC_PORT_ANNOTATION: null}),
    );
    let gw = gateway_of(&local_only).unwrap().unwrap();
    assert_eq!(gw.public_address(), "");
    let mut inventory = LocalInventory::default();
    inventory.gateways.insert(gw.instance.clone(), gw);
    assert!(inventory.gateway_endpoints().is_empty());
    assert_eq!(inventory.local_gateway_addresses(), ["10.2.0.8:7601"]);
}

#[test]
fn not_ready_or_terminating_is_unhealthy_and_no_ip_or_finished_is_absent() {
    let gw =
        |ip: &str, ready: bool| gateway_pod("strait-system", "gw-a", "eu-1", ip, ready, json!({}));
    let not_ready = gw("10.2.0.7", false);
    assert!(!gateway_of(&not_ready).unwrap().unwrap().healthy);

    let mut terminating = gw("10.2.0.7", true);
    terminating.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_750_000_000).unwrap(),
        ));
    assert!(!gateway_of(&terminating).unwrap().unwrap().healthy);

    let pending = gw("", false);
    assert_eq!(gateway_of(&pending), Ok(None));

    let mut failed = gw("10.2.0.7", false);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    assert_eq!(gateway_of(&failed), Ok(None));
}

#[test]
fn only_this_zones_label_in_this_zones_namespace_makes_a_gateway() {
    let elsewhere = gateway_pod("demo", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
    assert_eq!(gateway_of(&elsewhere), Ok(None));
    let other_zone = gateway_pod("strait-system", "gw-a", "us-1", "10.2.0.7", true, json!({}));
    assert_eq!(gateway_of(&other_zone), Ok(None));
    let workload = pod("strait-system", "echo-1", "echo", json!({"app": "echo"}));
    assert_eq!(gateway_of(&workload), Ok(None));
}

#[test]
fn a_labelled_pod_with_bad_annotations_is_reported_not_used() {
    let cases = [
        (json!({GATEWAY_LOCAL_PORT_ANNOTATION: null}), "is missing"),
        (json!({GATEWAY_LOCAL_PORT_ANNOTATION: "0"}), "is not a port"),
        (
            json!({GATEWAY_QUIC_PORT_ANNOTATION: "quic"}),
            "is not a port",
        ),
        (
            json!({PUBLIC_ADDRESS_ANNOTATION: "no-port"}),
            "is not host:port",
        ),
    ];
    for (annotations, why) in cases {
        let pod = gateway_pod(
            "strait-system",
            "gw-a",
            "eu-1",
            "10.2.0.7",
            true,
            annotations.clone(),
        );
        let err = gateway_of(&pod).unwrap_err();
        assert!(err.contains(why), "{annotations}: {err}");
    }
    let state = ClusterState {
        pods: vec![
            Arc::new(gateway_pod(
                "strait-system",
                "gw-bad",
                "eu-1",
                "10.2.0.7",
                true,
                json!({GATEWAY_LOCAL_PORT_ANNOTATION: "x"}),
            )),
            Arc::new(gateway_pod(
                "strait-system",
                "gw-ok",
                "eu-1",
                "10.2.0.8",
                true,
                json!({}),
            )),
        ],
        ..ClusterState::default()
    };
    let (found, unusable) = gateways(&state, &settings(), &gateway_settings());
    assert_eq!(found.keys().collect::<Vec<_>>(), ["gw-ok"]);
    assert_eq!(unusable.keys().collect::<Vec<_>>(), ["gw-bad"]);
}

#[test]
fn gateway_pods_keep_what_the_gateway_mapping_reads_through_trimming() {
    let mut gw = gateway_pod("strait-system", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
    let before = gateway_of(&gw).unwrap();
    trim_pod(&mut gw);
    assert_eq!(gateway_of(&gw).unwrap(), before);
    let annotations = gw.metadata.annotations.as_ref().unwrap();
    assert!(!annotations.contains_key("prometheus.io/scrape"));
    let conditions = gw.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert_eq!(conditions.len(), 1, "only Ready is kept");
}

#[test]
fn pods_are_trimmed_to_what_the_mapping_reads() {
    let mut p = pod("demo", "echo-1", "echo-sa", json!({"app": "echo"}));
    p.status = Some(PodStatus {
        pod_ip: Some("10.1.0.1".into()),
        phase: Some("Running".into()),
        ..PodStatus::default()
    });
    // A workload's annotations (even `strait.dev/` ones) are not read: dropped.
    p.metadata.annotations = Some(BTreeMap::from([(
        "strait.dev/injected".to_owned(),
        "true".to_owned(),
    )]));
    trim_pod(&mut p);
    let spec = p.spec.as_ref().unwrap();
    assert!(spec.containers.is_empty());
    assert_eq!(spec.service_account_name.as_deref(), Some("echo-sa"));
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.1.0.1")
    );
    assert_eq!(p.labels()["app"], "echo");
    assert!(p.metadata.annotations.is_none());
}
