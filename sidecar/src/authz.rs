//! Inbound authorization: `MeshTLS` (may a caller come in plaintext?) and `TrafficPermission`
//! (may this caller make this request?), enforced by the service's own proxy after mutual TLS
//! has verified the caller.
//!
//! `MeshTLS`: `STRICT` (the default, and what an unknown mode value means) admits only mutual
//! TLS; `PERMISSIVE` admits plaintext too, while workloads move into the mesh. A plaintext
//! caller has no identity.
//!
//! `TrafficPermission`, as `docs/policies.md` defines it: every resource that applies to this
//! sidecar's service and port (mesh, namespace, service and port scope; the zone sends exactly
//! those) is evaluated together by [`strait_policy::decide_permissions`]:
//!
//! - if any **deny** rule of any of them matches, the request is denied; otherwise if any
//!   **allow** rule matches, it is allowed; otherwise it is denied if any of them has
//!   `defaultAction: deny`, and allowed if none does. Rule and resource order do not matter;
//!   the decision names the resource and rule that decided, for logs.
//! - a rule matches when each of its non-empty lists has a matching entry: `from` (SPIFFE ID
//!   patterns, `*` standing for exactly one path segment, the trust domain always literal),
//!   `methods` (exact), `paths` (prefixes).
//! - an empty `from` matches any caller, plaintext ones included; a non-empty `from` only
//!   matches callers with a verified identity.
//! - no `TrafficPermission` at all allows everything.
//!
//! Rule matching and combining are the policy crate's own functions, so the proxy and the
//! tools cannot disagree. Patterns are parsed once, when the config is loaded; a bad one is a
//! load error (the zone validated them, so this only guards against a zone of another
//! version).

use strait_policy::{
    Action, CombinedReason, PermissionInput, PermissionRule, RequestInfo, SpiffeIdPattern,
    decide_permissions,
};
use strait_proto as pb;

/// A permission policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("permissions[{policy}].rules[{rule}].from[{index}]: {reason}")]
    Pattern {
        policy: usize,
        rule: usize,
        index: usize,
        reason: String,
    },
}

/// Whether inbound plaintext is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Mutual TLS only.
    #[default]
    Strict,
    /// Mutual TLS and plaintext.
    Permissive,
}

impl TlsMode {
    /// The mode of an `InboundPolicy`; unknown values fail closed to `Strict`.
    pub fn from_policy(policy: Option<&pb::InboundPolicy>) -> Self {
        match policy.map(|p| pb::MeshTlsMode::try_from(p.tls_mode)) {
            Some(Ok(pb::MeshTlsMode::Permissive)) => TlsMode::Permissive,
            _ => TlsMode::Strict,
        }
    }

    /// Whether a plaintext connection may be accepted.
    pub fn allows_plaintext(self) -> bool {
        self == TlsMode::Permissive
    }
}

/// Allow or deny, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

/// What decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This rule of this resource (indexes into the config's `permissions` and its rules)
    /// matched.
    Rule { policy: usize, rule: usize },
    /// No rule matched; this resource's `defaultAction: deny` decided.
    DefaultDeny { policy: usize },
    /// No rule matched and no resource denies by default.
    NothingDenies,
    /// No `TrafficPermission` applies to the service.
    NoPolicy,
    /// A plaintext caller under `STRICT`.
    PlaintextRefused,
}

/// The compiled `TrafficPermission`s of this sidecar's service and port.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// Empty: no policy, allow everything.
    policies: Vec<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    default_action: Action,
    rules: Vec<PermissionRule>,
    /// `NAMESPACE/NAME` of the resource, for logs.
    name: String,
}

impl Authorizer {
    /// Compiles the permission policies that apply (none: allow everything).
    pub fn new(policies: &[pb::PermissionPolicy]) -> Result<Self, AuthzError> {
        let policies = policies
            .iter()
            .enumerate()
            .map(|(p, policy)| compile(p, policy))
            .collect::<Result<_, _>>()?;
        Ok(Self { policies })
    }

    /// The decision for a request from `caller` (its verified SPIFFE ID, `None` in plaintext).
    pub fn decide(&self, caller: Option<&str>, method: &str, path: &str) -> Decision {
        let request = RequestInfo {
            caller,
            method,
            path,
        };
        let combined = decide_permissions(
            self.policies.iter().map(|p| PermissionInput {
                default_action: p.default_action,
                rules: &p.rules,
            }),
            &request,
        );
        Decision {
            allowed: combined.action == Action::Allow,
            reason: match combined.reason {
                CombinedReason::Rule { policy, rule } => Reason::Rule { policy, rule },
                CombinedReason::DefaultDeny { policy } => Reason::DefaultDeny { policy },
                CombinedReason::NothingDenies => Reason::NothingDenies,
                CombinedReason::NoPolicy => Reason::NoPolicy,
            },
        }
    }

    /// The name (`NAMESPACE/NAME`) of the resource at `index`, for logs.
    pub fn name(&self, index: usize) -> &str {
        self.policies.get(index).map_or("?", |p| p.name.as_str())
    }
}

fn compile(index: usize, p: &pb::PermissionPolicy) -> Result<Compiled, AuthzError> {
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let from = r
                .from
                .iter()
                .enumerate()
                .map(|(j, f)| {
                    SpiffeIdPattern::new(f).map_err(|reason| AuthzError::Pattern {
                        policy: index,
                        rule: i,
                        index: j,
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PermissionRule {
                action: if r.allow { Action::Allow } else { Action::Deny },
                from,
                methods: r.methods.clone(),
                paths: r.path_prefixes.clone(),
            })
        })
        .collect::<Result<_, AuthzError>>()?;
    Ok(Compiled {
        default_action: if p.default_deny {
            Action::Deny
        } else {
            Action::Allow
        },
        rules,
        name: p.name.clone(),
    })
}

/// Both inbound checks of this sidecar's service.
#[derive(Debug, Clone, Default)]
pub struct InboundAuthz {
    pub tls_mode: TlsMode,
    pub permission: Authorizer,
}

impl InboundAuthz {
    /// Compiles an `InboundPolicy` (`None`: STRICT, no permission policy).
    pub fn new(policy: Option<&pb::InboundPolicy>) -> Result<Self, AuthzError> {
        Ok(Self {
            tls_mode: TlsMode::from_policy(policy),
            permission: Authorizer::new(policy.map_or(&[], |p| p.permissions.as_slice()))?,
        })
    }

    /// The decision for a request: plaintext (`caller` `None`) is refused under STRICT before
    /// any rule is looked at; otherwise the permission policy decides.
    pub fn decide(&self, caller: Option<&str>, method: &str, path: &str) -> Decision {
        if caller.is_none() && !self.tls_mode.allows_plaintext() {
            return Decision {
                allowed: false,
                reason: Reason::PlaintextRefused,
            };
        }
        self.permission.decide(caller, method, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://strait.local/ns/frontend/sa/web";
    const DEMO_API: &str = "spiffe://strait.local/ns/demo/sa/api";
    const BATCH: &str = "spiffe://strait.local/ns/demo/sa/batch";

    fn rule(allow: bool, from: &[&str], methods: &[&str], paths: &[&str]) -> pb::PermissionRule {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        pb::PermissionRule {
            allow,
            from: own(from),
            methods: own(methods),
            path_prefixes: own(paths),
        }
    }

    /// The allow-list example of docs/policies.md.
    fn echo_access() -> Authorizer {
        Authorizer::new(&[pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(
                    true,
                    &["spiffe://strait.local/ns/demo/sa/*", WEB],
                    &["GET", "HEAD"],
                    &["/api/"],
                ),
                rule(false, &[BATCH], &[], &[]),
            ],
            ..Default::default()
        }])
        .unwrap()
    }

    #[test]
    fn allow_list_with_a_deny_that_wins() {
        let a = echo_access();
        assert_eq!(
            a.decide(Some(DEMO_API), "GET", "/api/items"),
            Decision {
                allowed: true,
                reason: Reason::Rule { policy: 0, rule: 0 }
            }
        );
        assert!(a.decide(Some(WEB), "HEAD", "/api/").allowed);
        // batch matches the allow rule's pattern too, but deny wins.
        assert_eq!(
            a.decide(Some(BATCH), "GET", "/api/items"),
            Decision {
                allowed: false,
                reason: Reason::Rule { policy: 0, rule: 1 }
            }
        );
        // Unmatched method, path or caller: the default (deny).
        for (caller, method, path) in [
            (DEMO_API, "POST", "/api/items"),
            (DEMO_API, "GET", "/admin"),
            ("spiffe://strait.local/ns/other/sa/web", "GET", "/api/x"),
            ("spiffe://other.local/ns/demo/sa/api", "GET", "/api/x"),
        ] {
            assert_eq!(
                a.decide(Some(caller), method, path),
                Decision {
                    allowed: false,
                    reason: Reason::DefaultDeny { policy: 0 }
                },
                "{caller} {method} {path}"
            );
        }
    }

    #[test]
    fn star_is_exactly_one_segment() {
        let a = echo_access();
        assert!(
            !a.decide(Some("spiffe://strait.local/ns/demo/sa/x/y"), "GET", "/api/")
                .allowed
        );
        assert!(
            !a.decide(Some("spiffe://strait.local/ns/demo/sa/"), "GET", "/api/")
                .allowed
        );
        assert!(
            !a.decide(Some("spiffe://strait.local/ns/demo/sa"), "GET", "/api/")
                .allowed
        );
    }

    #[test]
    fn deny_list_with_default_allow() {
        let a = Authorizer::new(&[pb::PermissionPolicy {
            default_deny: false,
            rules: vec![rule(false, &[], &[], &["/admin"])],
            ..Default::default()
        }])
        .unwrap();
        assert!(!a.decide(Some(WEB), "GET", "/admin/users").allowed);
        assert!(!a.decide(None, "GET", "/admin").allowed);
        assert_eq!(
            a.decide(Some(WEB), "GET", "/"),
            Decision {
                allowed: true,
                reason: Reason::NothingDenies
            }
        );
    }

    #[test]
    fn plaintext_callers_match_only_rules_without_from() {
        let a = Authorizer::new(&[pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(true, &[WEB], &[], &["/private"]),
                rule(true, &[], &["GET"], &["/public"]),
            ],
            ..Default::default()
        }])
        .unwrap();
        assert!(a.decide(None, "GET", "/public/x").allowed);
        assert!(!a.decide(None, "GET", "/private").allowed);
        assert!(a.decide(Some(WEB), "GET", "/private").allowed);
    }

    #[test]
    fn every_policy_decides_together() {
        let client = "spiffe://strait.local/ns/demo/sa/client";
        // The reported hole: a deny on ledger, then an allow-list of everyone named so that it
        // sorts first. The deny still holds; others are allowed by the allow-list.
        let a = Authorizer::new(&[
            pb::PermissionPolicy {
                default_deny: true,
                rules: vec![rule(true, &["spiffe://strait.local/ns/*/sa/*"], &[], &[])],
                name: "demo/a-allow-everyone".into(),
            },
            pb::PermissionPolicy {
                default_deny: false,
                rules: vec![rule(false, &[client], &[], &[])],
                name: "demo/deny-client".into(),
            },
        ])
        .unwrap();
        let d = a.decide(Some(client), "GET", "/");
        assert_eq!(
            d,
            Decision {
                allowed: false,
                reason: Reason::Rule { policy: 1, rule: 0 }
            }
        );
        assert_eq!(a.name(1), "demo/deny-client");
        assert!(a.decide(Some(WEB), "GET", "/").allowed);
        // A namespace default deny with an allow on the service: the allow lifts the default.
        let b = Authorizer::new(&[
            pb::PermissionPolicy {
                default_deny: true,
                ..Default::default()
            },
            pb::PermissionPolicy {
                rules: vec![rule(true, &[client], &[], &[])],
                ..Default::default()
            },
        ])
        .unwrap();
        assert!(b.decide(Some(client), "GET", "/").allowed);
        assert_eq!(
            b.decide(Some(WEB), "GET", "/").reason,
            Reason::DefaultDeny { policy: 0 }
        );
    }

    #[test]
    fn no_policy_allows_everything() {
        let a = Authorizer::new(&[]).unwrap();
        assert_eq!(
            a.decide(None, "DELETE", "/"),
            Decision {
                allowed: true,
                reason: Reason::NoPolicy
            }
        );
    }

    #[test]
    fn mesh_tls_mode_gates_plaintext() {
        let strict = InboundAuthz::new(None).unwrap();
        assert_eq!(strict.tls_mode, TlsMode::Strict);
        assert_eq!(
            strict.decide(None, "GET", "/"),
            Decision {
                allowed: false,
                reason: Reason::PlaintextRefused
            }
        );
        assert!(strict.decide(Some(WEB), "GET", "/").allowed);

        let permissive = InboundAuthz::new(Some(&pb::InboundPolicy {
            tls_mode: pb::MeshTlsMode::Permissive as i32,
            ..Default::default()
        }))
        .unwrap();
        assert!(permissive.tls_mode.allows_plaintext());
        assert!(permissive.decide(None, "GET", "/").allowed);

        // An unknown mode from a newer zone fails closed.
        let unknown = pb::InboundPolicy {
            tls_mode: 7,
            ..Default::default()
        };
        assert_eq!(TlsMode::from_policy(Some(&unknown)), TlsMode::Strict);
    }

    #[test]
    fn a_bad_pattern_is_a_load_error() {
        let err = Authorizer::new(&[pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(true, &[WEB], &[], &[]),
                rule(true, &[WEB, "web"], &[], &[]),
            ],
            ..Default::default()
        }])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("permissions[0].rules[1].from[1]: "),
            "{err}"
        );
    }
}
