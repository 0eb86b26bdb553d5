//! `TrafficRoute`: request matching and weighted splits across subsets of a service's
//! endpoints. The request matchers are shared with `FaultInjection`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::meta::TargetRef;

/// `spec` of a `TrafficRoute`.
///
/// Rules are evaluated in order; the first rule whose `matches` match the request decides the
/// split. A request no rule matches is balanced across all endpoints, as without a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficRouteSpec {
    pub target_ref: TargetRef,
    pub rules: Vec<RouteRule>,
}

/// One rule of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// Any of these matches selects the rule; empty or absent selects every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Where selected requests go: each subset gets `weight / sum(weights)` of them.
    pub split: Vec<WeightedSubset>,
}

/// A subset of the service's endpoints, chosen by endpoint labels, with its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedSubset {
    /// Endpoints carrying all these labels; empty means every endpoint.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Relative weight; 0 sends nothing (useful to drain a subset without deleting the entry).
    pub weight: u32,
}

/// Conditions on a request; all present conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Exact, upper-case method (`GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// How a request path is matched; written `{exact: /a}`, `{prefix: /api}` or `{regex: ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PathMatchRepr", into = "PathMatchRepr")]
pub enum PathMatch {
    Exact(String),
    /// A plain string prefix, not aware of segments: `/api` matches `/api`, `/api/x` and `/apix`.
    Prefix(String),
    /// A Rust `regex` that must match the whole path (the proxy anchors it).
    Regex(String),
}

#[derive(Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like {prefix: /api}, {exact: /health} or {regex: ...}"
)]
struct PathMatchRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<PathMatchRepr> for PathMatch {
    type Error = String;
    fn try_from(r: PathMatchRepr) -> Result<Self, String> {
        match (r.exact, r.prefix, r.regex) {
            (Some(v), None, None) => Ok(PathMatch::Exact(v)),
            (None, Some(v), None) => Ok(PathMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(PathMatch::Regex(v)),
            _ => Err("set exactly one of exact, prefix or regex".to_owned()),
        }
    }
}

impl From<PathMatch> for PathMatchRepr {
    fn from(m: PathMatch) -> Self {
        let mut r = PathMatchRepr {
            exact: None,
            prefix: None,
            regex: None,
        };
        match m {
            PathMatch::Exact(v) => r.exact = Some(v),
            PathMatch::Prefix(v) => r.prefix = Some(v),
            PathMatch::Regex(v) => r.regex = Some(v),
        }
        r
    }
}

/// A condition on one request header; the name is matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeaderMatchRepr", into = "HeaderMatchRepr")]
pub struct HeaderMatch {
    pub name: String,
    pub value: HeaderValueMatch,
}

/// What the header's value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    Exact(String),
    Prefix(String),
    /// A Rust `regex` that must match the whole value.
    Regex(String),
    /// `true`: the header is present with any value; `false`: the header is absent.
    Present(bool),
}

#[derive(Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like {name: x-user, exact: alice}"
)]
struct HeaderMatchRepr {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

impl TryFrom<HeaderMatchRepr> for HeaderMatch {
    type Error = String;
    fn try_from(r: HeaderMatchRepr) -> Result<Self, String> {
        let value = match (r.exact, r.prefix, r.regex, r.present) {
            (Some(v), None, None, None) => HeaderValueMatch::Exact(v),
            (None, Some(v), None, None) => HeaderValueMatch::Prefix(v),
            (None, None, Some(v), None) => HeaderValueMatch::Regex(v),
            (None, None, None, Some(v)) => HeaderValueMatch::Present(v),
            _ => {
                return Err(format!(
                    "header {:?}: set exactly one of exact, prefix, regex or present",
                    r.name
                ));
            }
        };
        Ok(HeaderMatch {
            name: r.name,
            value,
        })
    }
}

impl From<HeaderMatch> for HeaderMatchRepr {
    fn from(m: HeaderMatch) -> Self {
        let mut r = HeaderMatchRepr {
            name: m.name,
            exact: None,
            prefix: None,
            regex: None,
            present: None,
        };
        match m.value {
            HeaderValueMatch::Exact(v) => r.exact = Some(v),
            HeaderValueMatch::Prefix(v) => r.prefix = Some(v),
            HeaderValueMatch::Regex(v) => r.regex = Some(v),
            HeaderValueMatch::Present(v) => r.present = Some(v),
        }
        r
    }
}

// === impl checks ===

impl TrafficRouteSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        self.target_ref.check("spec.targetRef", c);
        if self.rules.is_empty() {
            c.err("spec.rules", "must have at least one rule");
        }
        let mut catch_all: Option<usize> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            if let Some(first) = catch_all {
                // Silently dead rules are a classic routing bug: refuse them.
                c.err(
                    &path,
                    format!(
                        "can never match: spec.rules[{first}] has no matches and takes every request"
                    ),
                );
            }
            rule.check(&path, c);
            if rule.matches.is_empty() && catch_all.is_none() {
                catch_all = Some(i);
            }
        }
    }
}

impl RouteRule {
    fn check(&self, path: &str, c: &mut Checker) {
        check_matches(&format!("{path}.matches"), &self.matches, c);
        if self.split.is_empty() {
            c.err(format!("{path}.split"), "must have at least one subset");
            return;
        }
        for (j, subset) in self.split.iter().enumerate() {
            let sp = format!("{path}.split[{j}]");
            c.labels(&format!("{sp}.labels"), &subset.labels);
            if let Some(k) = self.split[..j]
                .iter()
                .position(|s| s.labels == subset.labels)
            {
                c.err(
                    format!("{sp}.labels"),
                    format!("same subset as {path}.split[{k}]: merge the two entries"),
                );
            }
        }
        if self.split.iter().all(|s| s.weight == 0) {
            c.err(
                format!("{path}.split"),
                "weights must not all be 0: at least one subset must receive traffic",
            );
        }
    }
}

pub(crate) fn check_matches(path: &str, matches: &[HttpMatch], c: &mut Checker) {
    for (i, m) in matches.iter().enumerate() {
        m.check(&format!("{path}[{i}]"), c);
    }
}

impl HttpMatch {
    fn check(&self, path: &str, c: &mut Checker) {
        if self.path.is_none() && self.method.is_none() && self.headers.is_empty() {
            c.err(
                path,
                "an empty match matches every request: set path, method or headers, or leave out matches",
            );
        }
        match &self.path {
            Some(PathMatch::Exact(p)) => c.http_path(&format!("{path}.path.exact"), p),
            Some(PathMatch::Prefix(p)) => c.http_path(&format!("{path}.path.prefix"), p),
            Some(PathMatch::Regex(r)) => c.regex(&format!("{path}.path.regex"), r),
            None => {}
        }
        if let Some(m) = &self.method {
            c.method(&format!("{path}.method"), m);
        }
        for (i, h) in self.headers.iter().enumerate() {
            let hp = format!("{path}.headers[{i}]");
            c.header_name(&format!("{hp}.name"), &h.name);
            if let HeaderValueMatch::Regex(r) = &h.value {
                c.regex(&format!("{hp}.regex"), r);
            }
        }
    }
}
