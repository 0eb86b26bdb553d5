//! How every `TrafficPermission` that applies to a request decides it together.
//!
//! The rule (as Istio's AuthorizationPolicy evaluates DENY before ALLOW over every policy that
//! applies, whatever its scope):
//!
//! 1. any matching **deny** rule, in any resource, denies;
//! 2. otherwise any matching **allow** rule, in any resource, allows;
//! 3. otherwise, if any resource has `defaultAction: deny`, the request is denied;
//! 4. otherwise it is allowed (also when no resource applies at all).
//!
//! So adding a resource can only ever deny more through its deny rules and its default, and
//! allow more through its allow rules against another resource's default: it can never lift
//! another resource's deny rule. Pure, shared by the proxies and the tools, so they cannot
//! disagree.

use crate::spec::{Action, PermissionRule, RequestInfo};

/// One `TrafficPermission` as the combined decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct PermissionInput<'a> {
    pub default_action: Action,
    pub rules: &'a [PermissionRule],
}

/// The combined decision and what made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combined {
    pub action: Action,
    pub reason: CombinedReason,
}

/// What decided a [`Combined`] decision (indexes are into the inputs, in the order given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CombinedReason {
    /// This rule of this resource matched (the first deny, else the first allow).
    Rule { policy: usize, rule: usize },
    /// No rule matched and this resource (the first such) has `defaultAction: deny`.
    DefaultDeny { policy: usize },
    /// No rule matched and no resource denies by default.
    NothingDenies,
    /// No resource applies.
    NoPolicy,
}

/// The decision of every resource in `policies` together (see the module docs).
pub fn decide_permissions<'a, I>(policies: I, request: &RequestInfo<'_>) -> Combined
where
    I: IntoIterator<Item = PermissionInput<'a>>,
    I::IntoIter: Clone,
{
    let policies = policies.into_iter();
    let first_rule = |action: Action| {
        policies.clone().enumerate().find_map(|(p, input)| {
            input
                .rules
                .iter()
                .position(|r| r.action == action && r.matches(request))
                .map(|rule| CombinedReason::Rule { policy: p, rule })
        })
    };
    if let Some(reason) = first_rule(Action::Deny) {
        return Combined {
            action: Action::Deny,
            reason,
        };
    }
    if let Some(reason) = first_rule(Action::Allow) {
        return Combined {
            action: Action::Allow,
            reason,
        };
    }
    let mut any = false;
    for (policy, input) in policies.enumerate() {
        any = true;
        if input.default_action == Action::Deny {
            return Combined {
                action: Action::Deny,
                reason: CombinedReason::DefaultDeny { policy },
            };
        }
    }
    Combined {
        action: Action::Allow,
        reason: if any {
            CombinedReason::NothingDenies
        } else {
            CombinedReason::NoPolicy
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpiffeIdPattern;

    const CLIENT: &str = "spiffe://strait.local/ns/demo/sa/client";

    /// A rule that matches the test request (`hit`) or not.
    fn rule(action: Action, hit: bool) -> PermissionRule {
        PermissionRule {
            action,
            from: vec![],
            methods: vec![],
            paths: vec![if hit { "/".into() } else { "/elsewhere".into() }],
        }
    }

    /// The decision table written the long way, as an independent model of the rule.
    fn model(policies: &[(Action, Vec<PermissionRule>)], request: &RequestInfo<'_>) -> Action {
        let all: Vec<&PermissionRule> = policies.iter().flat_map(|(_, r)| r).collect();
        let denied = all
            .iter()
            .filter(|r| r.action == Action::Deny)
            .any(|r| r.matches(request));
        let allowed = all
            .iter()
            .filter(|r| r.action == Action::Allow)
            .any(|r| r.matches(request));
        let default_deny = policies.iter().any(|(d, _)| *d == Action::Deny);
        match (denied, allowed, default_deny) {
            (true, _, _) => Action::Deny,
            (false, true, _) => Action::Allow,
            (false, false, true) => Action::Deny,
            (false, false, false) => Action::Allow,
        }
    }

    /// Every combination of up to three resources, each with a default of allow or deny and
    /// up to two rules from {allow, deny} × {matching, not matching}: the combined decision
    /// equals the model, and does not depend on the order of the resources.
    #[test]
    fn every_combination_of_three_resources_agrees_with_the_table() {
        let rules = [
            rule(Action::Allow, true),
            rule(Action::Allow, false),
            rule(Action::Deny, true),
            rule(Action::Deny, false),
        ];
        // Per resource: default (2) × rule lists (none, one of 4, two of 4 = 1 + 4 + 16).
        let mut resources: Vec<(Action, Vec<PermissionRule>)> = Vec::new();
        for default in [Action::Allow, Action::Deny] {
            resources.push((default, vec![]));
            for a in &rules {
                resources.push((default, vec![a.clone()]));
                for b in &rules {
                    resources.push((default, vec![a.clone(), b.clone()]));
                }
            }
        }
        let request = RequestInfo {
            caller: Some(CLIENT),
            method: "GET",
            path: "/x",
        };
        let decide = |set: &[&(Action, Vec<PermissionRule>)]| {
            decide_permissions(
                set.iter().map(|(d, r)| PermissionInput {
                    default_action: *d,
                    rules: r,
                }),
                &request,
            )
            .action
        };
        let mut checked = 0;
        for a in &resources {
            for b in &resources {
                // Three resources: the third walks a stride so the loop stays fast.
                for c in resources.iter().step_by(7) {
                    let set = [a, b, c];
                    let owned: Vec<(Action, Vec<PermissionRule>)> =
                        set.iter().map(|p| (*p).clone()).collect();
                    let want = model(&owned, &request);
                    assert_eq!(decide(&set), want, "{set:?}");
                    assert_eq!(decide(&[c, b, a]), want, "reversed {set:?}");
                    checked += 1;
                }
                let owned = vec![a.clone(), b.clone()];
                assert_eq!(decide(&[a, b]), model(&owned, &request));
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn a_second_allow_list_never_lifts_a_deny() {
        // The reported hole: a deny for the client on ledger, then an allow-list of everyone.
        let deny_client = vec![PermissionRule {
            action: Action::Deny,
            from: vec![SpiffeIdPattern::new(CLIENT).unwrap()],
            methods: vec![],
            paths: vec![],
        }];
        let allow_everyone = vec![PermissionRule {
            action: Action::Allow,
            from: vec![SpiffeIdPattern::new("spiffe://strait.local/ns/*/sa/*").unwrap()],
            methods: vec![],
            paths: vec![],
        }];
        let request = RequestInfo {
            caller: Some(CLIENT),
            method: "GET",
            path: "/",
        };
        let inputs = [
            PermissionInput {
                default_action: Action::Deny,
                rules: &allow_everyone,
            },
            PermissionInput {
                default_action: Action::Allow,
                rules: &deny_client,
            },
        ];
        assert_eq!(
            decide_permissions(inputs, &request),
            Combined {
                action: Action::Deny,
                reason: CombinedReason::Rule { policy: 1, rule: 0 }
            }
        );
    }

    #[test]
    fn reasons() {
        let request = RequestInfo {
            caller: None,
            method: "GET",
            path: "/x",
        };
        assert_eq!(
            decide_permissions([], &request).reason,
            CombinedReason::NoPolicy
        );
        let miss = vec![rule(Action::Allow, false)];
        let inputs = [
            PermissionInput {
                default_action: Action::Allow,
                rules: &miss,
            },
            PermissionInput {
                default_action: Action::Deny,
                rules: &[],
            },
        ];
        assert_eq!(
            decide_permissions(inputs, &request),
            Combined {
                action: Action::Deny,
                reason: CombinedReason::DefaultDeny { policy: 1 }
            }
        );
        assert_eq!(
            decide_permissions(inputs[..1].iter().copied(), &request),
            Combined {
                action: Action::Allow,
                reason: CombinedReason::NothingDenies
            }
        );
    }
}
