//! Inbound authorization: `MeshTLS` (may a caller come in plaintext?) and `TrafficPermission`
//! (may this caller make this request?), enforced by the service's own proxy after mutual TLS
//! has verified the caller.
//!
//! `MeshTLS`: `STRICT` (the default, and what an unknown mode value means) admits only mutual
//! TLS; `PERMISSIVE` admits plaintext too, while workloads move into the mesh. A plaintext
//! caller has no identity.
//!
//! `TrafficPermission`, as `docs/policies.md` defines it:
//!
//! - if any **deny** rule matches, the request is denied; otherwise if any **allow** rule
//!   matches, it is allowed; otherwise `defaultAction` decides (allow unless `default_deny`).
//!   Rule order does not matter; the decision names the first matching rule of the winning
//!   kind, for logs.
//! - a rule matches when each of its non-empty lists has a matching entry: `from` (SPIFFE ID
//!   patterns, `*` standing for exactly one path segment, the trust domain always literal),
//!   `methods` (exact), `paths` (prefixes).
//! - an empty `from` matches any caller, plaintext ones included; a non-empty `from` only
//!   matches callers with a verified identity.
//! - no `TrafficPermission` at all allows everything.
//!
//! Rule matching is [`strait_policy::PermissionRule::matches`] itself, so the proxy and the
//! policy crate cannot disagree. Patterns are parsed once, when the config is loaded; a bad
//! one is a load error (the zone validated them, so this only guards against a zone of
//! another version).

use strait_policy::{Action, PermissionRule, RequestInfo, SpiffeIdPattern};
use strait_proto as pb;

/// A permission policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("permission.rules[{rule}].from[{index}]: {reason}")]
    Pattern {
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
    /// This rule (index into the policy's rules) matched.
    Rule(usize),
    /// No rule matched; `defaultAction` decided.
    Default,
    /// The service has no `TrafficPermission`.
    NoPolicy,
    /// A plaintext caller under `STRICT`.
    PlaintextRefused,
}

/// The compiled `TrafficPermission` of this sidecar's service.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// `None`: no policy, allow everything.
    policy: Option<Compiled>,
}

#[derive(Debug, Clone)]
struct Compiled {
    default_deny: bool,
    rules: Vec<PermissionRule>,
}

impl Authorizer {
    /// Compiles a permission policy (`None`: no policy).
    pub fn new(policy: Option<&pb::PermissionPolicy>) -> Result<Self, AuthzError> {
        let Some(p) = policy else {
            return Ok(Self::default());
        };
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
        Ok(Self {
            policy: Some(Compiled {
                default_deny: p.default_deny,
                rules,
            }),
        })
    }

    /// The decision for a request from `caller` (its verified SPIFFE ID, `None` in plaintext).
    pub fn decide(&self, caller: Option<&str>, method: &str, path: &str) -> Decision {
        let Some(policy) = &self.policy else {
            return Decision {
                allowed: true,
                reason: Reason::NoPolicy,
            };
        };
        let request = RequestInfo {
            caller,
            method,
            path,
        };
        let first = |action: Action| {
            policy
                .rules
                .iter()
                .position(|r| r.action == action && r.matches(&request))
        };
        if let Some(i) = first(Action::Deny) {
            return Decision {
                allowed: false,
                reason: Reason::Rule(i),
            };
        }
        if let Some(i) = first(Action::Allow) {
            return Decision {
                allowed: true,
                reason: Reason::Rule(i),
            };
        }
        Decision {
            allowed: !policy.default_deny,
            reason: Reason::Default,
        }
    }
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
            permission: Authorizer::new(policy.and_then(|p| p.permission.as_ref()))?,
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
        Authorizer::new(Some(&pb::PermissionPolicy {
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
        }))
        .unwrap()
    }

    #[test]
    fn allow_list_with_a_deny_that_wins() {
        let a = echo_access();
        assert_eq!(
            a.decide(Some(DEMO_API), "GET", "/api/items"),
            Decision {
                allowed: true,
                reason: Reason::Rule(0)
            }
        );
        assert!(a.decide(Some(WEB), "HEAD", "/api/").allowed);
        // batch matches the allow rule's pattern too, but deny wins.
        assert_eq!(
            a.decide(Some(BATCH), "GET", "/api/items"),
            Decision {
                allowed: false,
                reason: Reason::Rule(1)
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
                    reason: Reason::Default
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
        let a = Authorizer::new(Some(&pb::PermissionPolicy {
            default_deny: false,
            rules: vec![rule(false, &[], &[], &["/admin"])],
        }))
        .unwrap();
        assert!(!a.decide(Some(WEB), "GET", "/admin/users").allowed);
        assert!(!a.decide(None, "GET", "/admin").allowed);
        assert_eq!(
            a.decide(Some(WEB), "GET", "/"),
            Decision {
                allowed: true,
                reason: Reason::Default
            }
        );
    }

    #[test]
    fn plaintext_callers_match_only_rules_without_from() {
        let a = Authorizer::new(Some(&pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(true, &[WEB], &[], &["/private"]),
                rule(true, &[], &["GET"], &["/public"]),
            ],
        }))
        .unwrap();
        assert!(a.decide(None, "GET", "/public/x").allowed);
        assert!(!a.decide(None, "GET", "/private").allowed);
        assert!(a.decide(Some(WEB), "GET", "/private").allowed);
    }

    #[test]
    fn no_policy_allows_everything() {
        let a = Authorizer::new(None).unwrap();
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
        let err = Authorizer::new(Some(&pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(true, &[WEB], &[], &[]),
                rule(true, &[WEB, "web"], &[], &[]),
            ],
        }))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("permission.rules[1].from[1]: "),
            "{err}"
        );
    }
}
