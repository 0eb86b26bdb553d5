//! Tests of the whole path a user's file takes: YAML text to validated resources or errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::*;

fn parse(text: &str) -> Result<Vec<Resource>, PolicyError> {
    parse_documents(text, "test.yaml")
}

fn one(text: &str) -> Resource {
    match parse(text) {
        Ok(mut v) => {
            assert_eq!(v.len(), 1);
            v.remove(0)
        }
        Err(e) => panic!("expected valid, got:\n{e}"),
    }
}

/// The problems of an invalid file, rendered one per line.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(v) => panic!("expected an error, got {v:#?}"),
        Err(e) => {
            assert!(!e.problems().is_empty(), "{e}");
            e.problems().iter().map(ToString::to_string).collect()
        }
    }
}

/// Assert some problem mentions every one of `needles`.
fn assert_problem(text: &str, needles: &[&str]) {
    let ps = problems(text);
    assert!(
        ps.iter().any(|p| needles.iter().all(|n| p.contains(n))),
        "no problem contains all of {needles:?}:\n{}",
        ps.join("\n")
    );
}

fn doc(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: p\n  namespace: demo\nspec:\n{}",
        indent(spec)
    )
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

const TIMEOUT: &str = "apiVersion: strait.dev/v1alpha1
kind: Timeout
metadata:
  name: echo-timeouts
  namespace: demo
spec:
  targetRef: {service: echo}
  request: 2s
";

// === envelope ===

#[test]
fn timeout_example_from_the_brief() {
    let r = one(TIMEOUT);
    assert_eq!(r.kind, Kind::Timeout);
    assert_eq!(r.api_version, API_VERSION);
    assert_eq!(
        r.key(),
        ResourceKey {
            kind: Kind::Timeout,
            namespace: "demo".into(),
            name: "echo-timeouts".into()
        }
    );
    let Spec::Timeout(t) = &r.spec else {
        panic!("{r:?}")
    };
    assert_eq!(t.target_ref, Some(TargetRef::service("echo")));
    assert_eq!(t.request, Some(HumanDuration::from_secs(2)));
    assert_eq!(t.connect, None);
}

#[test]
fn namespace_defaults_and_labels() {
    let r = one(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata:\n  name: t\n  labels: {team: payments}\nspec:\n  targetRef: {service: echo}\n  idle: 1m\n",
    );
    assert_eq!(r.metadata.namespace, "default");
    assert_eq!(
        r.metadata.labels.get("team").map(String::as_str),
        Some("payments")
    );
}

#[test]
fn banana_duration_names_the_field() {
    let text = TIMEOUT.replace("request: 2s", "request: banana");
    let err = parse(&text).unwrap_err();
    let ps = err.problems();
    assert_eq!(ps.len(), 1, "{err}");
    let ProblemKind::Field(f) = &ps[0].detail else {
        panic!("{err}")
    };
    assert_eq!(f.path, "spec.request");
    assert_eq!(
        f.to_string(),
        "spec.request: invalid duration \"banana\": expected a number followed by a unit like 2s or 250ms"
    );
    assert_eq!(ps[0].document, 1);
    assert_eq!(ps[0].kind.as_deref(), Some("Timeout"));
    assert_eq!(ps[0].namespace.as_deref(), Some("demo"));
    assert_eq!(ps[0].name.as_deref(), Some("echo-timeouts"));
    let shown = err.to_string();
    assert!(shown.starts_with("test.yaml: 1 problem"), "{shown}");
    assert!(
        shown.contains("document 1 (line 1, Timeout demo/echo-timeouts): spec.request: invalid duration \"banana\""),
        "{shown}"
    );
}

#[test]
fn bare_number_is_not_a_duration() {
    assert_problem(
        &TIMEOUT.replace("2s", "2"),
        &["spec.request", "duration string"],
    );
}

#[test]
fn unknown_field_names_its_path() {
    assert_problem(
        &TIMEOUT.replace("request: 2s", "request: 2s\n  retries: 3"),
        &["spec.retries", "unknown field `retries`"],
    );
    assert_problem(
        &TIMEOUT.replace("{service: echo}", "{service: echo, namespace: x}"),
        &["spec.targetRef.namespace", "unknown field"],
    );
    assert_problem(
        &TIMEOUT.replace("namespace: demo", "namespace: demo\n  annotations: {}"),
        &["metadata.annotations", "unknown field"],
    );
    assert_problem(
        &format!("{TIMEOUT}status: {{}}\n"),
        &["status", "unknown field `status`"],
    );
}

#[test]
fn wrong_shapes_say_what_was_expected() {
    assert_problem(
        &TIMEOUT.replace("{service: echo}", "echo"),
        &["spec.targetRef", "expected a mapping like {service: echo}"],
    );
    assert_problem(
        &doc(
            "TrafficRoute",
            "targetRef: {service: r}\nrules: [{matches: [{path: /api}], split: [{weight: 1}]}]",
        ),
        &[
            "spec.rules[0].matches[0].path",
            "expected a mapping like {prefix: /api}",
        ],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: r}\norder: [zone-b]",
        ),
        &["spec.order[0]", "expected a mapping like {zone: zone-b}"],
    );
    assert_problem(
        &TIMEOUT.replace("2s", "[2s]"),
        &["spec.request", "expected a duration string"],
    );
}

#[test]
fn unknown_kind_lists_the_valid_ones() {
    let ps = problems(&TIMEOUT.replace("kind: Timeout", "kind: Tiemout"));
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(ps[0].contains("unknown kind \"Tiemout\""), "{}", ps[0]);
    for k in Kind::ALL {
        assert!(ps[0].contains(k.as_str()), "{}", ps[0]);
    }
    // Case is significant in files; the error suggests the right spelling.
    assert_problem(
        &TIMEOUT.replace("kind: Timeout", "kind: timeout"),
        &["did you mean Timeout?"],
    );
}

#[test]
fn envelope_problems_are_all_reported() {
    let text = "apiVersion: strait.dev/v2\nkind: Nope\nmetadata:\n  name: Bad_Name\nspec: {}\n";
    let ps = problems(text);
    assert!(
        ps.iter()
            .any(|p| p.contains("apiVersion") && p.contains("strait.dev/v1alpha1")),
        "{ps:?}"
    );
    assert!(
        ps.iter().any(|p| p.contains("unknown kind \"Nope\"")),
        "{ps:?}"
    );
    // The metadata parsed, so its problems show even though the kind is unknown... but
    // semantic checks only run on a complete resource; structure problems are what we get.
    assert_problem(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nspec: {targetRef: {service: a}, request: 1s}\n",
        &["metadata", "missing field `metadata`"],
    );
    assert_problem(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: a}\n",
        &["spec", "missing field `spec`"],
    );
    assert_problem(
        "kind: Timeout\nmetadata: {name: a}\nspec: {targetRef: {service: a}, request: 1s}\n",
        &["apiVersion", "missing"],
    );
    assert_problem("- a\n- b\n", &["must be a mapping", "a list"]);
    assert_problem(
        &doc("Timeout", "targetRef: {service: echo}\nrequest: 1s")
            .replace("name: p", "name: Bad_Name"),
        &["metadata.name", "not a valid name"],
    );
    assert_problem(
        &doc("Timeout", "targetRef: {port: 80}\nrequest: 1s"),
        &["spec.targetRef", "missing field `service`"],
    );
}

#[test]
fn invalid_yaml_reports_line_and_column_in_the_file() {
    let text = format!(
        "{TIMEOUT}---\napiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {{name: [oops}}\n"
    );
    let err = parse(&text).unwrap_err();
    let ps = err.problems();
    assert_eq!(ps.len(), 1, "{err}");
    assert_eq!(ps[0].document, 2);
    let ProblemKind::Yaml { line, column, .. } = &ps[0].detail else {
        panic!("{err}")
    };
    assert_eq!(*line, 12, "{err}");
    assert!(*column > 1, "{err}");
    assert!(err.to_string().contains("invalid YAML at line 12"), "{err}");
}

#[test]
fn all_or_nothing_across_documents() {
    let bad = TIMEOUT
        .replace("echo-timeouts", "second")
        .replace("2s", "-1s");
    let text = format!(
        "{TIMEOUT}---\n{bad}---\n{}",
        TIMEOUT.replace("echo-timeouts", "third")
    );
    let err = parse(&text).unwrap_err();
    let ps = err.problems();
    assert_eq!(ps.len(), 1, "{err}");
    assert_eq!(ps[0].document, 2);
    assert_eq!(ps[0].name.as_deref(), Some("second"));
}

#[test]
fn every_problem_of_every_document_is_listed() {
    let a = TIMEOUT.replace("2s", "banana");
    let b = doc(
        "Retry",
        "targetRef: {service: echo}\nattempts: 11\nbudget: {percent: 120}",
    );
    let c = "kind: Whatever\n";
    let text = format!("{a}---\n{b}---\n{c}---\nfoo: [\n");
    let err = parse(&text).unwrap_err();
    let docs: Vec<usize> = err.problems().iter().map(|p| p.document).collect();
    assert!(
        docs.contains(&1) && docs.contains(&2) && docs.contains(&3) && docs.contains(&4),
        "{err}"
    );
    let shown = err.to_string();
    assert!(shown.contains("spec.attempts"), "{shown}");
    assert!(shown.contains("spec.budget.percent"), "{shown}");
    assert!(shown.contains("invalid YAML"), "{shown}");
}

#[test]
fn empty_documents_are_skipped_and_empty_files_refused() {
    let text = format!("---\n# nothing here\n---\n{TIMEOUT}---\n\n...\n");
    assert_eq!(parse(&text).unwrap().len(), 1);
    for empty in ["", "\n\n", "# just a comment\n", "---\n---\n", "...\n"] {
        assert!(
            matches!(parse(empty), Err(PolicyError::NoResources { .. })),
            "{empty:?}: {:?}",
            parse(empty)
        );
    }
}

#[test]
fn document_markers_with_content_and_directives() {
    let text = "%YAML 1.2\n--- {apiVersion: strait.dev/v1alpha1, kind: MeshTLS, metadata: {name: m}, spec: {mode: STRICT}}\n";
    assert_eq!(one(text).kind, Kind::MeshTls);
    // CRLF line endings, as files edited on Windows have.
    let crlf = format!("---\r\n{}", TIMEOUT.replace('\n', "\r\n"));
    assert_eq!(one(&crlf).kind, Kind::Timeout);
}

#[test]
fn duplicates_in_one_file_are_refused() {
    let text = format!("{TIMEOUT}---\n{TIMEOUT}");
    let err = parse(&text).unwrap_err();
    let ps = err.problems();
    assert_eq!(ps.len(), 1, "{err}");
    assert_eq!(ps[0].detail, ProblemKind::Duplicate { first_document: 1 });
    assert_eq!(ps[0].document, 2);
    // Same name in another namespace or of another kind is a different resource.
    let other_ns = TIMEOUT.replace("namespace: demo", "namespace: prod");
    let other_kind = doc("Retry", "targetRef: {service: echo}\nattempts: 2")
        .replace("name: p", "name: echo-timeouts");
    assert_eq!(
        parse(&format!("{TIMEOUT}---\n{other_ns}---\n{other_kind}"))
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn too_large_is_refused_before_parsing() {
    let big = "#".repeat(MAX_FILE_BYTES + 1);
    assert!(matches!(parse(&big), Err(PolicyError::TooLarge { .. })));
}

// === kinds ===

#[test]
fn traffic_route_valid() {
    let r = one(&doc(
        "TrafficRoute",
        r#"targetRef: {service: reviews, port: 9080}
rules:
  - matches:
      - path: {prefix: /api}
        method: GET
        headers:
          - {name: x-canary, exact: "true"}
          - {name: x-debug, present: true}
      - path: {regex: "/v[0-9]+/.*"}
    split:
      - labels: {version: v2}
        weight: 100
  - split:
      - {labels: {version: v1}, weight: 90}
      - {labels: {version: v2}, weight: 10}
      - {labels: {version: v3}, weight: 0}"#,
    ));
    let Spec::TrafficRoute(s) = &r.spec else {
        panic!()
    };
    assert_eq!(s.target_ref.port, Some(9080));
    assert_eq!(s.rules.len(), 2);
    assert_eq!(
        s.rules[0].matches[0].path,
        Some(PathMatch::Prefix("/api".into()))
    );
    assert_eq!(
        s.rules[0].matches[0].headers[1].value,
        HeaderValueMatch::Present(true)
    );
    assert_eq!(s.rules[1].split[1].weight, 10);
}

#[test]
fn traffic_route_invalid() {
    let base = |rules: &str| {
        doc(
            "TrafficRoute",
            &format!("targetRef: {{service: reviews}}\nrules:\n{}", indent(rules)),
        )
    };
    assert_problem(
        &base("- split:\n    - {labels: {v: a}, weight: 0}\n    - {labels: {v: b}, weight: 0}"),
        &["spec.rules[0].split", "must not all be 0"],
    );
    assert_problem(
        &base("- split:\n    - {labels: {v: a}, weight: 1}\n    - {labels: {v: b}, weight: x}"),
        &["spec.rules[0].split[1].weight", "expected u32"],
    );
    assert_problem(
        &base("- split:\n    - {labels: {v: a}, weight: -1}"),
        &["spec.rules[0].split[0].weight"],
    );
    assert_problem(
        &base("- matches: [{path: {exact: /a, prefix: /b}}]\n  split: [{weight: 1}]"),
        &[
            "spec.rules[0].matches[0].path",
            "exactly one of exact, prefix or regex",
        ],
    );
    assert_problem(
        &base("- matches: [{path: {prefix: api}}]\n  split: [{weight: 1}]"),
        &["spec.rules[0].matches[0].path.prefix", "must start with /"],
    );
    assert_problem(
        &base("- matches: [{path: {regex: \"(\"}}]\n  split: [{weight: 1}]"),
        &[
            "spec.rules[0].matches[0].path.regex",
            "invalid regular expression",
        ],
    );
    assert_problem(
        &base("- matches: [{method: get}]\n  split: [{weight: 1}]"),
        &["spec.rules[0].matches[0].method", "did you mean \"GET\""],
    );
    assert_problem(
        &base("- matches: [{headers: [{name: x}]}]\n  split: [{weight: 1}]"),
        &[
            "spec.rules[0].matches[0].headers[0]",
            "exactly one of exact, prefix, regex or present",
        ],
    );
    assert_problem(
        &base(
            "- matches: [{headers: [{name: \"bad name\", present: true}]}]\n  split: [{weight: 1}]",
        ),
        &["spec.rules[0].matches[0].headers[0].name"],
    );
    assert_problem(
        &base("- matches: [{}]\n  split: [{weight: 1}]"),
        &["spec.rules[0].matches[0]", "empty match"],
    );
    assert_problem(
        &base("- split: []"),
        &["spec.rules[0].split", "at least one subset"],
    );
    assert_problem(
        &base("- split: [{weight: 1}]\n- matches: [{method: GET}]\n  split: [{weight: 1}]"),
        &["spec.rules[1]", "can never match"],
    );
    assert_problem(
        &base("- split: [{labels: {v: a}, weight: 1}, {labels: {v: a}, weight: 2}]"),
        &["spec.rules[0].split[1].labels", "same subset"],
    );
    assert_problem(
        &base("- split: [{labels: {\"bad key\": a}, weight: 1}]"),
        &["spec.rules[0].split[0].labels.bad key", "label key"],
    );
    assert_problem(
        &doc("TrafficRoute", "targetRef: {service: reviews}\nrules: []"),
        &["spec.rules", "at least one rule"],
    );
    assert_problem(
        &doc(
            "TrafficRoute",
            "targetRef: {service: reviews, port: 0}\nrules: [{split: [{weight: 1}]}]",
        ),
        &["spec.targetRef.port"],
    );
}

#[test]
fn retry_valid_with_defaults() {
    let r = one(&doc("Retry", "targetRef: {service: echo}\nattempts: 3"));
    let Spec::Retry(s) = &r.spec else { panic!() };
    assert_eq!(
        s.retry_on,
        vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError
        ]
    );
    assert_eq!(s.backoff.base, HumanDuration::from_millis(25));
    assert_eq!(s.backoff.effective_max(), HumanDuration::from_millis(250));
    assert_eq!(s.budget.percent, 20.0);
    assert_eq!(s.budget.min_retries_per_second, 10);

    let r = one(&doc(
        "Retry",
        "targetRef: {service: echo}\nattempts: 2\nperTryTimeout: 500ms\nretryOn: [5xx, connect-failure, retriable-status-codes]\nretriableStatusCodes: [409]\nbackoff: {base: 50ms, max: 1s}\nbudget: {percent: 12.5, minRetriesPerSecond: 5}",
    ));
    let Spec::Retry(s) = &r.spec else { panic!() };
    assert_eq!(s.retry_on[0], RetryOn::Status5xx);
    assert_eq!(s.per_try_timeout, Some(HumanDuration::from_millis(500)));
    assert_eq!(s.budget.percent, 12.5);

    let r = one(&doc(
        "Retry",
        "targetRef: {service: greeter}\nattempts: 2\nretryOn: [unavailable, cancelled, deadline-exceeded, resource-exhausted, internal, connect-failure]",
    ));
    let Spec::Retry(s) = &r.spec else { panic!() };
    assert_eq!(
        s.retry_on[..5],
        [
            RetryOn::GrpcUnavailable,
            RetryOn::GrpcCancelled,
            RetryOn::GrpcDeadlineExceeded,
            RetryOn::GrpcResourceExhausted,
            RetryOn::GrpcInternal
        ]
    );
}

#[test]
fn retry_invalid() {
    let base = |extra: &str| doc("Retry", &format!("targetRef: {{service: echo}}\n{extra}"));
    assert_problem(&base("attempts: 0"), &["spec.attempts", "between 1 and 10"]);
    assert_problem(
        &base("attempts: 11"),
        &["spec.attempts", "between 1 and 10"],
    );
    assert_problem(
        &base("retryOn: [5xx]"),
        &["spec", "missing field `attempts`"],
    );
    assert_problem(
        &base("attempts: 1\nretryOn: [teapot]"),
        &[
            "spec.retryOn[0]",
            "unknown variant `teapot`",
            "connect-failure",
        ],
    );
    assert_problem(
        &base("attempts: 1\nretryOn: []"),
        &["spec.retryOn", "at least one"],
    );
    assert_problem(
        &base("attempts: 1\nretryOn: [retriable-status-codes]"),
        &["spec.retriableStatusCodes", "must not be empty"],
    );
    assert_problem(
        &base("attempts: 1\nretriableStatusCodes: [503]"),
        &["spec.retriableStatusCodes", "no effect"],
    );
    assert_problem(
        &base("attempts: 1\nretryOn: [retriable-status-codes]\nretriableStatusCodes: [700]"),
        &["spec.retriableStatusCodes[0]", "700"],
    );
    assert_problem(
        &base("attempts: 1\nbackoff: {base: 1s, max: 100ms}"),
        &["spec.backoff.max", "shorter"],
    );
    assert_problem(
        &base("attempts: 1\nbudget: {percent: 101}"),
        &["spec.budget.percent", "between 0 and 100"],
    );
    assert_problem(
        &base("attempts: 1\nperTryTimeout: 0s"),
        &["spec.perTryTimeout", "greater than 0"],
    );
    assert_problem(
        &base("attempts: 1\nperTryTimeout: 1000d"),
        &["spec.perTryTimeout", "maximum"],
    );
}

#[test]
fn timeout_invalid() {
    assert_problem(
        &doc("Timeout", "targetRef: {service: echo}"),
        &["spec: set at least one of connect, request, responseHeaders, stream or idle"],
    );
    assert_problem(
        &doc("Timeout", "targetRef: {service: echo}\nconnect: 0ms"),
        &["spec.connect", "greater than 0"],
    );
    assert_problem(
        &doc("Timeout", "targetRef: {service: Echo}\nidle: 5m"),
        &["spec.targetRef.service", "not a valid name"],
    );
    let r = one(&doc(
        "Timeout",
        "targetRef: {service: echo}\nconnect: 250ms\nrequest: 1m 30s\nidle: 1h",
    ));
    let Spec::Timeout(t) = &r.spec else { panic!() };
    assert_eq!(t.request, Some(HumanDuration::from_secs(90)));
}

#[test]
fn circuit_breaker_valid_and_invalid() {
    let r = one(&doc(
        "CircuitBreaker",
        "targetRef: {service: echo}\nmaxConnections: 100\noutlierDetection: {}",
    ));
    let Spec::CircuitBreaker(s) = &r.spec else {
        panic!()
    };
    assert_eq!(s.outlier_detection, Some(OutlierDetection::default()));
    let r = one(&doc(
        "CircuitBreaker",
        "targetRef: {service: echo}\noutlierDetection:\n  consecutive5xx: 3\n  consecutiveConnectFailures: 0\n  interval: 5s\n  baseEjectionTime: 15s\n  maxEjectionPercent: 33.3",
    ));
    let Spec::CircuitBreaker(s) = &r.spec else {
        panic!()
    };
    assert_eq!(
        s.outlier_detection.as_ref().map(|o| o.consecutive_5xx),
        Some(3)
    );

    assert_problem(
        &doc("CircuitBreaker", "targetRef: {service: echo}"),
        &["spec: set at least one of"],
    );
    assert_problem(
        &doc(
            "CircuitBreaker",
            "targetRef: {service: echo}\nmaxRequests: 0",
        ),
        &["spec.maxRequests", "at least 1"],
    );
    assert_problem(
        &doc(
            "CircuitBreaker",
            "targetRef: {service: echo}\noutlierDetection: {consecutive5xx: 0, consecutiveConnectFailures: 0}",
        ),
        &["spec.outlierDetection", "nothing is ever ejected"],
    );
    assert_problem(
        &doc(
            "CircuitBreaker",
            "targetRef: {service: echo}\noutlierDetection: {maxEjectionPercent: 200}",
        ),
        &["spec.outlierDetection.maxEjectionPercent"],
    );
    assert_problem(
        &doc(
            "CircuitBreaker",
            "targetRef: {service: echo}\noutlierDetection: {consecutive5XX: 3}",
        ),
        &["spec.outlierDetection.consecutive5XX", "unknown field"],
    );
}

#[test]
fn fault_injection_valid_and_invalid() {
    let r = one(&doc(
        "FaultInjection",
        "targetRef: {service: echo}\nmatches: [{headers: [{name: x-chaos, exact: \"on\"}]}]\ndelay: {percent: 10, duration: 2s}\nabort: {percent: 5.5, httpStatus: 503}",
    ));
    let Spec::FaultInjection(s) = &r.spec else {
        panic!()
    };
    assert_eq!(s.abort.as_ref().map(|a| a.http_status), Some(503));
    assert_problem(
        &doc("FaultInjection", "targetRef: {service: echo}"),
        &["spec: set at least one of delay or abort"],
    );
    assert_problem(
        &doc(
            "FaultInjection",
            "targetRef: {service: echo}\nabort: {percent: 5, httpStatus: 99}",
        ),
        &["spec.abort.httpStatus", "between 200 and 599"],
    );
    assert_problem(
        &doc(
            "FaultInjection",
            "targetRef: {service: echo}\ndelay: {percent: -1, duration: 1s}",
        ),
        &["spec.delay.percent"],
    );
    assert_problem(
        &doc(
            "FaultInjection",
            "targetRef: {service: echo}\ndelay: {percent: 1}",
        ),
        &["spec.delay", "missing field `duration`"],
    );
    assert_problem(
        &doc(
            "FaultInjection",
            "targetRef: {service: echo}\nmatches: [{method: GET, path: {prefix: x}}]\nabort: {percent: 1, httpStatus: 500}",
        ),
        &["spec.matches[0].path.prefix"],
    );
}

#[test]
fn rate_limit_valid_and_invalid() {
    let r = one(&doc(
        "RateLimit",
        "targetRef: {service: echo}\nrequests: 100\ninterval: 1s",
    ));
    let Spec::RateLimit(s) = &r.spec else {
        panic!()
    };
    assert_eq!(s.status, 429);
    assert_eq!(s.effective_burst(), 100);
    assert_problem(
        &doc(
            "RateLimit",
            "targetRef: {service: echo}\nrequests: 0\ninterval: 1s",
        ),
        &["spec.requests", "at least 1"],
    );
    assert_problem(
        &doc(
            "RateLimit",
            "targetRef: {service: echo}\nrequests: 5\ninterval: 1s\nstatus: 200",
        ),
        &["spec.status", "between 400 and 599"],
    );
    assert_problem(
        &doc(
            "RateLimit",
            "targetRef: {service: echo}\nrequests: 5\ninterval: soon",
        ),
        &["spec.interval", "invalid duration \"soon\""],
    );
    assert_problem(
        &doc(
            "RateLimit",
            "targetRef: {service: echo}\nrequests: 5\ninterval: 1s\nburst: 0",
        ),
        &["spec.burst"],
    );
}

#[test]
fn traffic_permission_valid_invalid_and_evaluation() {
    let r = one(&doc(
        "TrafficPermission",
        "targetRef: {service: echo}\ndefaultAction: deny\nrules:\n  - action: allow\n    from: [\"spiffe://strait.local/ns/demo/sa/*\"]\n    methods: [GET]\n    paths: [/api]\n  - action: deny\n    from: [spiffe://strait.local/ns/demo/sa/intruder]",
    ));
    let Spec::TrafficPermission(s) = &r.spec else {
        panic!()
    };
    let req =
        |caller: Option<&'static str>, method: &'static str, path: &'static str| RequestInfo {
            caller,
            method,
            path,
        };
    assert_eq!(
        s.evaluate(&req(
            Some("spiffe://strait.local/ns/demo/sa/client"),
            "GET",
            "/api/x"
        )),
        Action::Allow
    );
    // Deny wins over a matching allow.
    assert_eq!(
        s.evaluate(&req(
            Some("spiffe://strait.local/ns/demo/sa/intruder"),
            "GET",
            "/api/x"
        )),
        Action::Deny
    );
    assert_eq!(
        s.evaluate(&req(
            Some("spiffe://strait.local/ns/demo/sa/client"),
            "POST",
            "/api/x"
        )),
        Action::Deny
    );
    assert_eq!(
        s.evaluate(&req(
            Some("spiffe://strait.local/ns/prod/sa/client"),
            "GET",
            "/api"
        )),
        Action::Deny
    );
    assert_eq!(
        s.evaluate(&req(
            Some("spiffe://strait.local/ns/demo/sa/client/extra"),
            "GET",
            "/api"
        )),
        Action::Deny
    );
    assert_eq!(s.evaluate(&req(None, "GET", "/api")), Action::Deny);

    // Only allows, with the default allow: accepted, since its allows lift another
    // resource's default deny when permissions combine (`strait apply` warns when none
    // applies, see describe.rs).
    let allow_only = one(&doc(
        "TrafficPermission",
        "targetRef: {service: echo}\nrules: [{action: allow, from: [\"spiffe://strait.local/ns/demo/sa/a\"]}]",
    ));
    assert_eq!(allow_only.kind, Kind::TrafficPermission);
    assert_problem(
        &doc(
            "TrafficPermission",
            "targetRef: {service: echo}\ndefaultAction: deny\nrules: [{action: allow, from: [\"http://x/y\"]}]",
        ),
        &["spec.rules[0].from[0]", "must start with spiffe://"],
    );
    assert_problem(
        &doc(
            "TrafficPermission",
            "targetRef: {service: echo}\ndefaultAction: deny\nrules: [{action: allow, from: [\"spiffe://td/ns/d*/sa/a\"]}]",
        ),
        &["spec.rules[0].from[0]", "path segment \"d*\""],
    );
    assert_problem(
        &doc(
            "TrafficPermission",
            "targetRef: {service: echo}\ndefaultAction: block",
        ),
        &["spec.defaultAction", "unknown variant `block`"],
    );
    assert_problem(
        &doc(
            "TrafficPermission",
            "targetRef: {service: echo}\nrules: [{action: deny, paths: [admin], methods: [delete]}]",
        ),
        &["spec.rules[0].paths[0]"],
    );
    assert_problem(
        &doc(
            "TrafficPermission",
            "targetRef: {service: echo}\nrules: [{action: deny, paths: [admin], methods: [delete]}]",
        ),
        &["spec.rules[0].methods[0]"],
    );
    // A deny-list with default allow is fine, as is an explicit allow-all.
    one(&doc(
        "TrafficPermission",
        "targetRef: {service: echo}\nrules: [{action: deny, paths: [/admin]}]",
    ));
    one(&doc("TrafficPermission", "targetRef: {service: echo}"));
}

#[test]
fn spiffe_patterns() {
    let p = SpiffeIdPattern::new("spiffe://strait.local/ns/*/sa/web").unwrap();
    assert!(p.matches("spiffe://strait.local/ns/demo/sa/web"));
    assert!(!p.matches("spiffe://strait.local/ns//sa/web"));
    assert!(!p.matches("spiffe://other.local/ns/demo/sa/web"));
    assert!(!p.matches("spiffe://strait.local/ns/demo/sa/web2"));
    for bad in [
        "spiffe://",
        "spiffe://strait.local",
        "spiffe://Strait/ns/a",
        "spiffe://td/ns//a",
        "spiffe://td/ns/../a",
        "spiffe://*/ns/a",
    ] {
        assert!(SpiffeIdPattern::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn locality_failover_valid_and_invalid() {
    let r = one(&doc(
        "LocalityFailover",
        "targetRef: {service: echo}\norder:\n  - zone: zone-b\n  - region: eu-west\n  - zone: zone-c",
    ));
    let Spec::LocalityFailover(s) = &r.spec else {
        panic!()
    };
    assert_eq!(s.order[1], Locality::Region("eu-west".into()));
    assert_eq!(s.overprovisioning_factor, 140);
    assert_problem(
        &doc("LocalityFailover", "targetRef: {service: echo}\norder: []"),
        &["spec.order", "at least one"],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: a, region: b}]",
        ),
        &["spec.order[0]", "exactly one of zone or region"],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: a}, {zone: a}]",
        ),
        &["spec.order[1]", "already listed"],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: A}]",
        ),
        &["spec.order[0].zone"],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: a}]\noverprovisioningFactor: 50",
        ),
        &["spec.overprovisioningFactor", "between 100 and 1000"],
    );
}

#[test]
fn mesh_tls_valid_and_invalid() {
    let r = one(&doc("MeshTLS", "mode: STRICT"));
    assert_eq!(
        r.spec,
        Spec::MeshTls(MeshTlsSpec {
            target_ref: None,
            mode: MeshTlsMode::Strict
        })
    );
    one(&doc(
        "MeshTLS",
        "targetRef: {service: legacy}\nmode: PERMISSIVE",
    ));
    assert_problem(
        &doc("MeshTLS", "mode: strict"),
        &["spec.mode", "unknown variant `strict`", "STRICT"],
    );
    assert_problem(
        &doc("MeshTLS", "targetRef: {service: legacy}"),
        &["spec", "missing field `mode`"],
    );
}

// === round trips ===

fn every_kind() -> Vec<Resource> {
    parse(&[
        TIMEOUT.to_owned(),
        doc("TrafficRoute", "targetRef: {service: reviews}\nrules:\n  - matches: [{path: {regex: \"^/v[12]/\"}, headers: [{name: x-user, prefix: \"qa-\"}, {name: x-old, present: false}]}]\n    split: [{labels: {version: v2, \"app.kubernetes.io/part-of\": shop}, weight: 1}]\n  - split: [{weight: 1}]"),
        doc("Retry", "targetRef: {service: echo}\nattempts: 3\nperTryTimeout: 1m 30s\nretryOn: [5xx, retriable-status-codes]\nretriableStatusCodes: [409]\nbudget: {percent: 12.5}"),
        doc("CircuitBreaker", "targetRef: {service: echo}\nmaxConnections: 10\noutlierDetection: {maxEjectionPercent: 33.3}"),
        doc("Timeout", "request: 3s\nresponseHeaders: 1s\nstream: 1h").replace("name: p", "name: ns-wide"),
        doc("FaultInjection", "targetRef: {service: echo}\nmatches: [{method: GET}]\ndelay: {percent: 0.1, duration: 1500ms}\nabort: {percent: 100, httpStatus: 503}"),
        doc("RateLimit", "targetRef: {service: echo}\nrequests: 10\ninterval: 1m\nburst: 20"),
        doc("TrafficPermission", "targetRef: {service: echo}\ndefaultAction: deny\nrules: [{action: allow, from: [\"spiffe://strait.local/ns/demo/sa/*\"], methods: [GET], paths: [/]}]"),
        doc("LocalityFailover", "targetRef: {service: echo}\norder: [{zone: b}, {region: eu}]\noverprovisioningFactor: 200"),
        doc("MeshTLS", "mode: PERMISSIVE").replace("name: p", "name: p\n  labels: {yes: \"010\", on: \"true\", n: \"null\"}"),
    ]
    .join("---\n"))
    .unwrap()
}

#[test]
fn json_round_trip_is_identical() {
    let all = every_kind();
    // One of each kind, and a namespace-wide Timeout with every timeout field.
    assert_eq!(all.len(), Kind::ALL.len() + 1);
    for r in &all {
        let json = r.to_json().unwrap();
        let back = Resource::from_json(&json).unwrap();
        assert_eq!(&back, r, "{json}");
        assert_eq!(back.to_json().unwrap(), json);
    }
}

#[test]
fn yaml_round_trip_is_identical() {
    let all = every_kind();
    let yaml = to_yaml_documents(&all).unwrap();
    let back = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, all, "{yaml}");
    for r in &all {
        let single = r.to_yaml().unwrap();
        assert_eq!(&one(&single), r, "{single}");
    }
}

#[test]
fn stored_json_is_checked_on_load() {
    let err = Resource::from_json(r#"{"apiVersion":"strait.dev/v1alpha1","kind":"Timeout","metadata":{"name":"a"},"spec":{"targetRef":{"service":"a"},"request":"x"}}"#).unwrap_err();
    assert!(err.to_string().contains("spec.request"), "{err}");
}

#[test]
fn validate_catches_code_built_resources() {
    let mut r = Resource::new(
        Metadata::new("demo", "t"),
        Spec::Timeout(TimeoutSpec {
            target_ref: Some(TargetRef::service("echo")),
            response_headers: None,
            stream: None,
            connect: None,
            request: None,
            idle: None,
        }),
    );
    let errs = validate(&r).unwrap_err();
    assert_eq!(
        errs,
        vec![FieldError::new(
            "spec",
            "set at least one of connect, request, responseHeaders, stream or idle"
        )]
    );
    r.kind = Kind::Retry;
    r.spec = Spec::MeshTls(MeshTlsSpec {
        target_ref: None,
        mode: MeshTlsMode::Strict,
    });
    let errs = validate(&r).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "kind");
}

// === kind names on the command line ===

#[test]
fn kind_lookup_is_case_insensitive_for_the_cli() {
    for (input, want) in [
        ("timeout", Kind::Timeout),
        ("Timeout", Kind::Timeout),
        ("TIMEOUTS", Kind::Timeout),
        ("retries", Kind::Retry),
        ("retry", Kind::Retry),
        ("traffic-route", Kind::TrafficRoute),
        ("trafficroutes", Kind::TrafficRoute),
        ("meshtls", Kind::MeshTls),
        ("MeshTLS", Kind::MeshTls),
        ("meshtlses", Kind::MeshTls),
        ("locality_failover", Kind::LocalityFailover),
    ] {
        assert_eq!(Kind::from_str_case_insensitive(input), Ok(want), "{input}");
    }
    let err = Kind::from_str_case_insensitive("gateway").unwrap_err();
    assert!(err.to_string().contains("TrafficRoute"), "{err}");
    // Exact parsing, used for files, is case-sensitive.
    assert!("timeout".parse::<Kind>().is_err());
    assert_eq!("MeshTLS".parse::<Kind>(), Ok(Kind::MeshTls));
    for k in Kind::ALL {
        assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        assert_eq!(Kind::from_str_case_insensitive(k.plural()), Ok(k));
    }
}

// === effective policies ===

fn named(kind: &str, name: &str, spec: &str) -> Resource {
    one(&doc(kind, spec).replace("name: p", &format!("name: {name}")))
}

#[test]
fn for_service_picks_one_per_kind_deterministically() {
    let set: PolicySet = [
        named("Timeout", "zz", "targetRef: {service: echo}\nrequest: 9s"),
        named("Timeout", "aa", "targetRef: {service: echo}\nrequest: 1s"),
        named(
            "Timeout",
            "port",
            "targetRef: {service: echo, port: 8080}\nrequest: 5s",
        ),
        named(
            "Timeout",
            "other",
            "targetRef: {service: other}\nrequest: 7s",
        ),
        named("Retry", "r", "targetRef: {service: echo}\nattempts: 2"),
        named("MeshTLS", "ns-wide", "mode: STRICT"),
        named(
            "MeshTLS",
            "legacy",
            "targetRef: {service: legacy}\nmode: PERMISSIVE",
        ),
    ]
    .into_iter()
    .collect();

    let p = set.for_service("demo", "echo");
    let t = p.timeout.unwrap();
    assert_eq!(t.key.name, "aa");
    assert_eq!(t.spec.request, Some(HumanDuration::from_secs(1)));
    assert_eq!(p.retry.map(|r| r.spec.attempts), Some(2));
    assert_eq!(p.mesh_tls.map(|m| m.spec.mode), Some(MeshTlsMode::Strict));
    assert!(p.traffic_route.is_none());
    let shadowed: Vec<&str> = p.shadowed.iter().map(|k| k.key.name.as_str()).collect();
    assert_eq!(shadowed, vec!["zz"]);

    let p = set.for_port("demo", "echo", 8080);
    assert_eq!(p.timeout.map(|t| t.key.name.as_str()), Some("port"));
    let mut shadowed: Vec<&str> = p.shadowed.iter().map(|k| k.key.name.as_str()).collect();
    shadowed.sort();
    assert_eq!(shadowed, vec!["aa", "zz"]);
    assert_eq!(
        set.for_port("demo", "echo", 9090)
            .timeout
            .map(|t| t.key.name.as_str()),
        Some("aa")
    );

    // A service-specific MeshTLS beats the namespace-wide one.
    let p = set.for_service("demo", "legacy");
    assert_eq!(
        p.mesh_tls.map(|m| m.spec.mode),
        Some(MeshTlsMode::Permissive)
    );
    assert_eq!(
        p.shadowed
            .iter()
            .map(|k| k.key.name.as_str())
            .collect::<Vec<_>>(),
        vec!["ns-wide"]
    );

    // Other namespaces see nothing of demo's.
    assert_eq!(set.for_service("prod", "echo"), ServicePolicies::default());

    // The answer does not depend on insertion order.
    let mut reversed: Vec<Resource> = set.iter().cloned().collect();
    reversed.reverse();
    let again: PolicySet = reversed.into_iter().collect();
    assert_eq!(
        again.for_service("demo", "echo"),
        set.for_service("demo", "echo")
    );
}

#[test]
fn policy_set_insert_and_remove() {
    let mut set = PolicySet::new();
    let a = named("Timeout", "a", "targetRef: {service: echo}\nrequest: 1s");
    let a2 = named("Timeout", "a", "targetRef: {service: echo}\nrequest: 2s");
    assert!(set.insert(a.clone()).is_none());
    assert_eq!(set.insert(a2.clone()), Some(a));
    assert_eq!(set.len(), 1);
    assert_eq!(set.of_kind(Kind::Timeout, "demo").count(), 1);
    assert_eq!(set.remove(&a2.key()), Some(a2));
    assert!(set.is_empty());
}

// === robustness ===

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn never_panics_on_garbage() {
    let seed_text = to_yaml_documents(&every_kind()).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    // Truncations of a valid file (every third byte keeps the test fast in debug builds while
    // still cutting every token somewhere).
    for end in (0..=seed_text.len())
        .step_by(3)
        .filter(|i| seed_text.is_char_boundary(*i))
    {
        let _ = parse(&seed_text[..end]);
    }
    // Random bytes, biased toward YAML's syntax characters.
    const ALPHABET: &[u8] = b" \n\t-:{}[],'\"&*!|>#%@`?~.0123456789abcdefsxyzSTRICT/\\\x00\xff";
    for _ in 0..2_000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }
    // Mutations of a valid file: replace, insert or delete characters.
    let chars: Vec<char> = seed_text.chars().collect();
    for _ in 0..1_000 {
        let mut c = chars.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(c.len());
            let with = ALPHABET[rng.below(ALPHABET.len() - 2)] as char;
            match rng.below(3) {
                0 => c[at] = with,
                1 => c.insert(at, with),
                _ => {
                    c.remove(at);
                }
            }
        }
        let text: String = c.into_iter().collect();
        let _ = parse(&text);
    }
    // Deep nesting and alias expansion stay bounded.
    let _ = parse(&"[".repeat(10_000));
    let _ = parse(&format!(
        "a: &a [{}]\nb: [*a, *a, *a, *a, *a, *a, *a, *a]\n",
        "x, ".repeat(1000)
    ));
}

// === scopes, combined permissions, describe and warnings ===

/// A resource of `kind` named `name` in `namespace`.
fn in_ns(kind: &str, namespace: &str, name: &str, spec: &str) -> Resource {
    one(&doc(kind, spec)
        .replace("name: p", &format!("name: {name}"))
        .replace("namespace: demo", &format!("namespace: {namespace}")))
}

#[test]
fn mesh_namespace_service_and_port_scopes_rank_in_that_order() {
    let set: PolicySet = [
        in_ns("Timeout", MESH_NAMESPACE, "mesh", "request: 9s"),
        in_ns("Timeout", "demo", "ns", "request: 5s"),
        in_ns(
            "Timeout",
            "demo",
            "svc",
            "targetRef: {service: echo}\nrequest: 2s",
        ),
        in_ns(
            "Timeout",
            "demo",
            "port",
            "targetRef: {service: echo, port: 9090}\nrequest: 1s",
        ),
    ]
    .into_iter()
    .collect();
    let winner = |ns: &str, svc: &str, port: Option<u16>| {
        let p = match port {
            Some(port) => set.for_port(ns, svc, port),
            None => set.for_service(ns, svc),
        };
        let t = p.timeout.unwrap();
        (t.key.name.clone(), t.scope)
    };
    assert_eq!(winner("prod", "api", None), ("mesh".into(), Scope::Mesh));
    assert_eq!(
        winner("demo", "ledger", None),
        ("ns".into(), Scope::Namespace)
    );
    assert_eq!(winner("demo", "echo", None), ("svc".into(), Scope::Service));
    assert_eq!(
        winner("demo", "echo", Some(8080)),
        ("svc".into(), Scope::Service)
    );
    assert_eq!(
        winner("demo", "echo", Some(9090)),
        ("port".into(), Scope::Port)
    );
    // Every loser is named with the winner.
    let p = set.for_port("demo", "echo", 9090);
    let lost: Vec<(&str, &str)> = p
        .shadowed
        .iter()
        .map(|s| (s.key.name.as_str(), s.by.name.as_str()))
        .collect();
    // In key order: demo's resources, then the mesh namespace's.
    assert_eq!(
        lost,
        vec![("ns", "port"), ("svc", "port"), ("mesh", "port")]
    );
    assert!(
        p.shadowed[2]
            .reason()
            .contains("port scope beats mesh scope")
    );
    // TrafficRoute keeps its required targetRef.
    assert_problem(
        &doc("TrafficRoute", "rules: [{split: [{weight: 1}]}]"),
        &["spec", "targetRef"],
    );
}

#[test]
fn every_applicable_permission_is_listed_and_decides_together() {
    let deny_client = "targetRef: {service: ledger}\nrules: [{action: deny, from: [spiffe://strait.local/ns/demo/sa/client]}]";
    let allow_all = "targetRef: {service: ledger}\ndefaultAction: deny\nrules: [{action: allow, from: [\"spiffe://strait.local/ns/*/sa/*\"]}]";
    let set: PolicySet = [
        in_ns("TrafficPermission", "demo", "z-deny-client", deny_client),
        in_ns("TrafficPermission", "demo", "a-allow-everyone", allow_all),
        in_ns(
            "TrafficPermission",
            "demo",
            "ns-default",
            "defaultAction: deny",
        ),
        in_ns(
            "TrafficPermission",
            "demo",
            "port-deny",
            "targetRef: {service: ledger, port: 9090}\nrules: [{action: deny}]",
        ),
        in_ns(
            "TrafficPermission",
            MESH_NAMESPACE,
            "mesh-deny-batch",
            "rules: [{action: deny, from: [spiffe://strait.local/ns/demo/sa/batch]}]",
        ),
    ]
    .into_iter()
    .collect();
    let names = |p: &ServicePolicies<'_>| -> Vec<String> {
        p.traffic_permissions
            .iter()
            .map(|a| a.key.name.clone())
            .collect()
    };
    let ledger = set.for_service("demo", "ledger");
    assert_eq!(
        names(&ledger),
        vec![
            "mesh-deny-batch",
            "ns-default",
            "a-allow-everyone",
            "z-deny-client"
        ]
    );
    assert!(ledger.shadowed.is_empty());
    let decide = |p: &ServicePolicies<'_>, caller: &str| {
        decide_permissions(
            p.traffic_permissions.iter().map(|a| PermissionInput {
                default_action: a.spec.default_action,
                rules: &a.spec.rules,
            }),
            &RequestInfo {
                caller: Some(caller),
                method: "GET",
                path: "/",
            },
        )
        .action
    };
    assert_eq!(
        decide(&ledger, "spiffe://strait.local/ns/demo/sa/client"),
        Action::Deny
    );
    assert_eq!(
        decide(&ledger, "spiffe://strait.local/ns/demo/sa/web"),
        Action::Allow
    );
    assert_eq!(
        decide(&ledger, "spiffe://strait.local/ns/demo/sa/batch"),
        Action::Deny
    );
    // The port-scoped deny applies on its port only.
    let port = set.for_port("demo", "ledger", 9090);
    assert_eq!(names(&port).len(), 5);
    assert_eq!(
        decide(&port, "spiffe://strait.local/ns/demo/sa/web"),
        Action::Deny
    );
    // Another service of demo: the namespace default denies, the mesh deny applies.
    let echo = set.for_service("demo", "echo");
    assert_eq!(names(&echo), vec!["mesh-deny-batch", "ns-default"]);
    assert_eq!(
        decide(&echo, "spiffe://strait.local/ns/demo/sa/web"),
        Action::Deny
    );
}

#[test]
fn describe_lists_what_applies_and_what_is_overridden() {
    let set: PolicySet = [
        in_ns("Timeout", "demo", "ns-timeout", "request: 5s"),
        in_ns(
            "Timeout",
            "demo",
            "echo-timeout",
            "targetRef: {service: echo}\nrequest: 2s",
        ),
        in_ns(
            "TrafficPermission",
            "demo",
            "ns-default",
            "defaultAction: deny",
        ),
    ]
    .into_iter()
    .collect();
    let d = describe(&set, "demo", "echo", Some(8080));
    let rows: Vec<(String, Scope, describe::Status)> = d
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.scope, r.status))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "echo-timeout".into(),
                Scope::Service,
                describe::Status::Applies
            ),
            (
                "ns-default".into(),
                Scope::Namespace,
                describe::Status::Combined
            ),
            (
                "ns-timeout".into(),
                Scope::Namespace,
                describe::Status::Overridden
            ),
        ]
    );
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["port"], 8080);
    assert_eq!(json["resources"][2]["status"], "overridden");
    assert_eq!(
        json["resources"][2]["overridden_by"],
        "Timeout demo/echo-timeout"
    );
    assert!(
        json["resources"][2]["reason"]
            .as_str()
            .unwrap()
            .contains("service scope beats namespace scope")
    );
}

#[test]
fn apply_warns_about_overrides_missing_targets_and_permissions_that_change_nothing() {
    let mut catalog = ServiceCatalog::new();
    catalog.add("demo", "echo", [8080]);
    catalog.add("demo", "ledger", [8080, 9090]);
    let resources = [
        in_ns(
            "Retry",
            "demo",
            "a-retry",
            "targetRef: {service: echo}\nattempts: 1",
        ),
        in_ns(
            "Retry",
            "demo",
            "b-retry",
            "targetRef: {service: echo}\nattempts: 2",
        ),
        in_ns(
            "Timeout",
            "demo",
            "ghost",
            "targetRef: {service: ghost}\nrequest: 1s",
        ),
        in_ns(
            "Timeout",
            "demo",
            "no-such-port",
            "targetRef: {service: ledger, port: 7000}\nrequest: 1s",
        ),
        in_ns(
            "TrafficPermission",
            "demo",
            "allow-only",
            "targetRef: {service: echo}\nrules: [{action: allow, from: [spiffe://strait.local/ns/demo/sa/client]}]",
        ),
        in_ns("Timeout", "empty", "nothing-here", "request: 1s"),
    ];
    let set: PolicySet = resources.iter().cloned().collect();
    let keys: Vec<ResourceKey> = resources.iter().map(Resource::key).collect();
    let warnings = apply_warnings(&set, &keys, &catalog);
    let expect = [
        "Retry demo/a-retry overrides Retry demo/b-retry on demo/echo:8080",
        "Retry demo/b-retry is overridden on demo/echo:8080 by Retry demo/a-retry: Retry demo/a-retry has the same (service) scope and its name sorts first",
        "Timeout demo/ghost: no zone exports service demo/ghost yet",
        "Timeout demo/no-such-port: service demo/ledger has no port 7000 (its ports: 8080, 9090)",
        "TrafficPermission demo/allow-only changes nothing on demo/echo:8080",
        "Timeout empty/nothing-here: no zone exports a service in namespace empty yet",
    ];
    for want in expect {
        assert!(
            warnings.iter().any(|w| w.starts_with(want)),
            "no warning starts with {want:?}:\n{}",
            warnings.join("\n")
        );
    }
    assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
    // With a namespace default deny, the allow-only permission means something.
    let mut set = set;
    set.insert(in_ns(
        "TrafficPermission",
        "demo",
        "ns-default",
        "defaultAction: deny",
    ));
    let warnings = apply_warnings(&set, &keys[4..5], &catalog);
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn per_service_kinds_refuse_a_port() {
    assert_problem(
        &doc(
            "CircuitBreaker",
            "targetRef: {service: echo, port: 8080}\nmaxRequests: 5",
        ),
        &["spec.targetRef.port", "whole service"],
    );
    assert_problem(
        &doc(
            "LocalityFailover",
            "targetRef: {service: echo, port: 8080}\norder: [{zone: b}]",
        ),
        &["spec.targetRef.port", "whole service"],
    );
    // Namespace-wide, both are fine.
    one(&doc("CircuitBreaker", "maxRequests: 5"));
    one(&doc("LocalityFailover", "order: [{zone: b}]"));
}
