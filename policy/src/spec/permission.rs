//! `TrafficPermission`: which callers may reach a service, by SPIFFE identity, method and path.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::meta::TargetRef;

/// `spec` of a `TrafficPermission`, enforced by the service's inbound proxies.
///
/// Every resource that applies to a request is evaluated together ([`crate::decide_permissions`]):
/// any matching `deny` rule denies; otherwise any matching `allow` rule allows; otherwise the
/// request is denied if any of them has `defaultAction: deny`. Rule order does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPermissionSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// For requests no rule matches. Default `allow`; `deny` makes an allow-list.
    #[serde(default)]
    pub default_action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PermissionRule>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// A rule: it matches a request when every non-empty list has an entry matching it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PermissionRule {
    pub action: Action,
    /// Caller identities. Empty matches any caller, including plaintext ones (possible under
    /// `MeshTLS` PERMISSIVE); a non-empty list only matches callers with a verified identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<SpiffeIdPattern>,
    /// Exact, upper-case methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// A request as the authorization check sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The caller's verified SPIFFE ID; `None` for a plaintext caller.
    pub caller: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
}

impl TrafficPermissionSpec {
    /// The decision of this resource alone (see the type's docs for the order); several that
    /// apply together are decided by [`crate::decide_permissions`].
    pub fn evaluate(&self, request: &RequestInfo<'_>) -> Action {
        crate::decide_permissions(
            [crate::PermissionInput {
                default_action: self.default_action,
                rules: &self.rules,
            }],
            request,
        )
        .action
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            for (j, m) in rule.methods.iter().enumerate() {
                c.method(&format!("{path}.methods[{j}]"), m);
            }
            for (j, p) in rule.paths.iter().enumerate() {
                c.http_path(&format!("{path}.paths[{j}]"), p);
            }
        }
    }
}

impl PermissionRule {
    /// Whether this rule applies to `request`.
    pub fn matches(&self, request: &RequestInfo<'_>) -> bool {
        let from_ok = self.from.is_empty()
            || request
                .caller
                .is_some_and(|id| self.from.iter().any(|p| p.matches(id)));
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == request.method);
        let path_ok = self.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|p| request.path.starts_with(p.as_str()));
        from_ok && method_ok && path_ok
    }
}

/// A SPIFFE ID, where any path segment may be `*` to match exactly one segment:
/// `spiffe://strait.local/ns/demo/sa/*` matches every service account of namespace `demo`.
///
/// The trust domain is always literal: trusting callers of another federation is a trust
/// decision for the trust bundle, not for a traffic rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeIdPattern {
    pattern: String,
}

impl SpiffeIdPattern {
    /// Parse a pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix("spiffe://") else {
            return Err(format!(
                "{pattern:?} is not a SPIFFE ID: it must start with spiffe://"
            ));
        };
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(strait_proto::names::is_trust_domain_byte);
        if !domain_ok {
            return Err(format!(
                "{pattern:?}: the trust domain must be lower-case letters, digits, '.', '-' or '_'"
            ));
        }
        if path.is_empty() {
            return Err(format!(
                "{pattern:?} has no path: workload IDs look like spiffe://{domain}/ns/NAMESPACE/sa/ACCOUNT"
            ));
        }
        for segment in path.split('/') {
            let ok = segment == "*"
                || (!segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
            if !ok {
                return Err(format!(
                    "{pattern:?}: path segment {segment:?} is invalid: use letters, digits, '.', '-', '_', or * alone for any one segment"
                ));
            }
        }
        Ok(Self {
            pattern: pattern.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the SPIFFE ID `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        let mut want = self.pattern.split('/');
        let mut got = id.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some("*"), Some(g)) if !g.is_empty() => {}
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    }
}

impl TryFrom<String> for SpiffeIdPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SpiffeIdPattern::new(&s)
    }
}

impl From<SpiffeIdPattern> for String {
    fn from(p: SpiffeIdPattern) -> String {
        p.pattern
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}
