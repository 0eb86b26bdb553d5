//! Unit tests of the state machine, one group per command, without Raft.

use std::collections::BTreeMap;

use super::*;

const HOUR: u64 = 3_600_000;
/// 2026-11-21T10:00:00Z, an arbitrary "now".
const T0: u64 = 1_795_255_200_000;

/// Feeds commands at consecutive log indices, as Raft would.
#[derive(Default)]
struct Harness {
    state: FederationState,
    index: u64,
}

impl Harness {
    fn apply(&mut self, command: Command) -> CommandResult {
        self.index += 1;
        self.state.apply(self.index, &command)
    }

    fn ok(&mut self, command: Command) -> Detail {
        match self.apply(command.clone()) {
            CommandResult::Ok { detail, .. } => detail,
            CommandResult::Rejected(r) => panic!("{} rejected: {r}", command.name()),
        }
    }

    /// Applies a command that must be rejected and checks it changed nothing.
    fn rejected(&mut self, command: Command) -> Rejection {
        let before = self.state.clone();
        match self.apply(command.clone()) {
            CommandResult::Rejected(r) => {
                assert_eq!(
                    self.state,
                    before,
                    "rejected {} changed the state",
                    command.name()
                );
                r
            }
            ok => panic!("{} accepted: {ok:?}", command.name()),
        }
    }
}

fn sha(byte: u8) -> String {
    hex::encode([byte; 32])
}

fn init() -> Command {
    Command::InitFederation {
        trust_domain: "strait.local".into(),
        root_cert_pem: "ROOT CERT".into(),
        root_key_pem: PrivateKeyPem("ROOT KEY".into()),
        bundle_pem: String::new(),
        now_ms: T0,
    }
}

fn create_zone(name: &str) -> Command {
    Command::CreateZone {
        name: name.into(),
        region: "eu".into(),
        labels: BTreeMap::from([("tier".to_owned(), "prod".to_owned())]),
        now_ms: T0,
    }
}

fn remove_zone(name: &str, now_ms: u64) -> Command {
    Command::RemoveZone {
        name: name.into(),
        now_ms,
    }
}

fn zone_token(id: &str, zone: &str, secret: u8) -> Command {
    Command::CreateJoinToken {
        token_id: id.into(),
        secret_sha256: sha(secret),
        purpose: TokenPurpose::Zone { zone: zone.into() },
        expires_at_ms: T0 + 24 * HOUR,
        now_ms: T0,
    }
}

fn consume(id: &str, secret: u8, purpose: TokenPurpose, now_ms: u64) -> Command {
    Command::ConsumeJoinToken {
        token_id: id.into(),
        secret_sha256: sha(secret),
        purpose,
        now_ms,
    }
}

fn zone_purpose(zone: &str) -> TokenPurpose {
    TokenPurpose::Zone { zone: zone.into() }
}

fn svc(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn exported(healthy: u32, total: u32) -> ExportedService {
    ExportedService {
        identities: Vec::new(),
        ports: vec![Port {
            name: "http".into(),
            port: 8080,
            protocol: "http".into(),
        }],
        localities: vec![LocalityCount {
            locality: "eu/eu-1a".into(),
            healthy,
            total,
        }],
        subsets: Default::default(),
    }
}

fn report(zone: &str, version: u64, services: &[&str], now_ms: u64) -> Command {
    Command::ReportInventory {
        zone: zone.into(),
        version,
        services: services.iter().map(|s| (svc(s), exported(2, 3))).collect(),
        gateways: vec![format!("{zone}-gw:15443")],
        now_ms,
    }
}

fn policy(kind: &str, name: &str, json: &str) -> (PolicyKey, String) {
    (
        PolicyKey {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
        },
        json.into(),
    )
}

fn drain(service: &str, zone: &str, drained: bool) -> Command {
    Command::SetDrain {
        namespace: "default".into(),
        service: service.into(),
        zone: zone.into(),
        drained,
    }
}

/// A federation with zones a and b.
fn two_zones() -> Harness {
    let mut h = Harness::default();
    h.ok(init());
    h.ok(create_zone("a"));
    h.ok(create_zone("b"));
    h
}

// === Trust ===

#[test]
fn init_federation_once() {
    let mut h = Harness::default();
    assert!(!h.state.is_initialized());
    assert_eq!(h.ok(init()), Detail::Done);
    let ca = h.state.ca.as_ref().unwrap_or_else(|| panic!("no CA"));
    assert_eq!(ca.trust_domain, "strait.local");
    // An empty bundle means just the root.
    assert_eq!(ca.bundle_pem, "ROOT CERT");
    assert_eq!(h.state.revision, 1);

    let r = h.rejected(init());
    assert_eq!(
        r.to_string(),
        "the federation is already initialized (trust domain \"strait.local\")"
    );
}

#[test]
fn init_federation_validates_input() {
    let mut h = Harness::default();
    let r = h.rejected(Command::InitFederation {
        trust_domain: "Strait/Local".into(),
        root_cert_pem: "C".into(),
        root_key_pem: PrivateKeyPem("K".into()),
        bundle_pem: String::new(),
        now_ms: T0,
    });
    assert!(matches!(r, Rejection::InvalidArgument { .. }), "{r}");
    let r = h.rejected(Command::InitFederation {
        trust_domain: "strait.local".into(),
        root_cert_pem: "C".into(),
        root_key_pem: PrivateKeyPem(String::new()),
        bundle_pem: String::new(),
        now_ms: T0,
    });
    assert_eq!(r.to_string(), "invalid root key: must not be empty");
}

#[test]
fn root_key_is_redacted_in_debug_output() {
    let mut h = Harness::default();
    h.ok(init());
    let debug = format!("{:?} {:?}", h.state, init());
    assert!(!debug.contains("ROOT KEY"), "{debug}");
    // But it is replicated, so any leader can sign.
    let json = serde_json::to_string(&h.state).unwrap_or_default();
    assert!(json.contains("ROOT KEY"));
}

#[test]
fn set_trust_bundle() {
    let mut h = Harness::default();
    assert_eq!(
        h.rejected(Command::SetTrustBundle {
            bundle_pem: "X".into()
        }),
        Rejection::NotInitialized
    );
    h.ok(init());
    let bundle = Command::SetTrustBundle {
        bundle_pem: "ROOT CERT\nNEW ROOT".into(),
    };
    assert_eq!(h.ok(bundle.clone()), Detail::Done);
    assert_eq!(h.state.revision, 3);
    assert_eq!(h.ok(bundle), Detail::Unchanged);
    assert_eq!(h.state.revision, 3, "a no-op does not bump the revision");
    assert!(matches!(
        h.rejected(Command::SetTrustBundle {
            bundle_pem: " ".into()
        }),
        Rejection::InvalidArgument { .. }
    ));
}

// === Zones ===

#[test]
fn create_zone_and_duplicates() {
    let mut h = two_zones();
    let zone = h.state.zone("a").unwrap_or_else(|| panic!("no zone a"));
    assert_eq!(zone.status, ZoneStatus::Active);
    assert_eq!(zone.region, "eu");
    assert_eq!(zone.created_at_ms, T0);
    assert_eq!(zone.connection, None);

    let r = h.rejected(create_zone("b"));
    assert_eq!(r.to_string(), "zone \"b\" already exists");

    h.ok(remove_zone("b", T0 + HOUR));
    let r = h.rejected(create_zone("b"));
    assert_eq!(
        r.to_string(),
        "zone \"b\" was removed at 2026-11-21T11:00:00Z; the name of a removed zone cannot be reused"
    );
}

#[test]
fn create_zone_validates_name() {
    let mut h = Harness::default();
    let r = h.rejected(create_zone("Zone_A"));
    assert_eq!(
        r.to_string(),
        "invalid zone name \"Zone_A\": may only contain lowercase letters, digits and '-'"
    );
}

#[test]
fn remove_zone_side_effects() {
    let mut h = two_zones();
    h.ok(zone_token("unused", "b", 1));
    h.ok(zone_token("used", "b", 2));
    h.ok(zone_token("other", "a", 3));
    h.ok(consume("used", 2, zone_purpose("b"), T0 + 1));
    h.ok(report("a", 1, &["shared"], T0));
    h.ok(report("b", 1, &["shared", "only-b"], T0));
    h.ok(drain("shared", "b", true));
    h.ok(drain("shared", "a", true));
    h.ok(Command::SetZoneConnection {
        zone: "b".into(),
        connected: true,
        node_id: 1,
        session: 0,
        now_ms: T0,
    });
    let vip_shared = h.state.vip(&svc("shared"));
    let vip_only_b = h.state.vip(&svc("only-b"));
    assert!(vip_shared.is_some() && vip_only_b.is_some());

    let detail = h.ok(remove_zone("b", T0 + HOUR));
    assert_eq!(
        detail,
        Detail::ZoneRemoved {
            tokens_revoked: 1,
            // shared 1, (shared, a) 2; only-b 3, (only-b, b) 4, (shared, b) 5.
            vips_released: vec![(svc("only-b"), 3)],
            zone_vips_released: vec![
                (svc("only-b"), "b".to_owned(), 4),
                (svc("shared"), "b".to_owned(), 5),
            ],
        }
    );
    let zone = h
        .state
        .zone("b")
        .unwrap_or_else(|| panic!("zone b forgotten"));
    assert_eq!(zone.status, ZoneStatus::Removed);
    assert_eq!(zone.removed_at_ms, Some(T0 + HOUR));
    assert!(!zone.is_connected());
    // Deny list.
    assert!(h.state.is_denied("b"));
    assert!(!h.state.is_denied("a"));
    assert!(!h.state.is_denied("never-existed"));
    assert_eq!(h.state.deny_list(), vec!["b"]);
    // Tokens: the unused one is void, the used one and the other zone's are untouched.
    assert_eq!(h.state.tokens["unused"].revoked_at_ms, Some(T0 + HOUR));
    assert_eq!(h.state.tokens["used"].revoked_at_ms, None);
    assert_eq!(h.state.tokens["other"].revoked_at_ms, None);
    // Inventory and drains gone; the service another zone still exports keeps its VIP.
    assert!(!h.state.inventories.contains_key("b"));
    assert!(!h.state.is_drained(&svc("shared"), "b"));
    assert!(h.state.is_drained(&svc("shared"), "a"));
    assert_eq!(h.state.vip(&svc("shared")), vip_shared);
    assert_eq!(h.state.vip(&svc("only-b")), None);
    // The removed zone's pinned VIPs are released and held; a's stays.
    assert_eq!(h.state.zone_vip(&svc("shared"), "b"), None);
    assert_eq!(h.state.zone_vip(&svc("shared"), "a"), Some(2));
    assert_eq!(h.state.held_vips[&5].zone.as_deref(), Some("b"));

    // Removing again, or an unknown zone.
    assert_eq!(
        h.rejected(remove_zone("b", T0 + 2 * HOUR)).to_string(),
        "zone \"b\" was removed at 2026-11-21T11:00:00Z"
    );
    assert_eq!(
        h.rejected(remove_zone("c", T0)),
        Rejection::ZoneNotFound { zone: "c".into() }
    );
}

#[test]
fn removed_zone_cannot_report_connect_or_drain() {
    let mut h = two_zones();
    h.ok(remove_zone("b", T0));
    assert!(matches!(
        h.rejected(report("b", 1, &["x"], T0)),
        Rejection::ZoneRemoved { .. }
    ));
    assert!(matches!(
        h.rejected(Command::SetZoneConnection {
            zone: "b".into(),
            connected: true,
            node_id: 1,
            session: 0,
            now_ms: T0,
        }),
        Rejection::ZoneRemoved { .. }
    ));
    assert!(matches!(
        h.rejected(drain("x", "b", true)),
        Rejection::ZoneRemoved { .. }
    ));
    assert!(matches!(
        h.rejected(zone_token("t", "b", 1)),
        Rejection::ZoneRemoved { .. }
    ));
}

#[test]
fn zone_connection_tracking() {
    let mut h = two_zones();
    let connect = |connected, node_id, now_ms| Command::SetZoneConnection {
        zone: "a".into(),
        connected,
        node_id,
        session: 0,
        now_ms,
    };
    h.ok(report("a", 1, &["web"], T0));
    h.ok(connect(true, 1, T0 + 1));
    let zone = h
        .state
        .zone("a")
        .cloned()
        .unwrap_or_else(|| panic!("no zone"));
    assert_eq!(
        zone.connection,
        Some(Connection {
            connected: true,
            node_id: 1,
            session: 0,
            last_seen_ms: T0 + 1
        })
    );

    // Disconnect keeps the inventory (static stability), marked stale.
    h.ok(connect(false, 1, T0 + 2));
    assert!(h.state.inventories.contains_key("a"));
    let services = h.state.services();
    assert_eq!(services.len(), 1);
    assert!(!services[0].zones[0].connected);
    assert_eq!(services[0].vip, Some(1));

    // The zone moves to node 2, then node 1's stream ends late: still connected.
    h.ok(connect(true, 2, T0 + 3));
    let revision = h.state.revision;
    assert_eq!(h.ok(connect(false, 1, T0 + 4)), Detail::Unchanged);
    assert_eq!(h.state.revision, revision);
    assert!(h.state.zone("a").is_some_and(Zone::is_connected));
    // Its own node's disconnect counts.
    h.ok(connect(false, 2, T0 + 5));
    assert!(!h.state.zone("a").is_some_and(Zone::is_connected));

    // The zone's primary moves to another of its replicas on the same node: the old stream's
    // late end does not count, the current stream's does.
    let stream = |connected, session, now_ms| Command::SetZoneConnection {
        zone: "a".into(),
        connected,
        node_id: 2,
        session,
        now_ms,
    };
    h.ok(stream(true, 7, T0 + 6));
    h.ok(stream(true, 8, T0 + 7));
    assert_eq!(h.ok(stream(false, 7, T0 + 8)), Detail::Unchanged);
    assert!(h.state.zone("a").is_some_and(Zone::is_connected));
    h.ok(stream(false, 8, T0 + 9));
    assert!(!h.state.zone("a").is_some_and(Zone::is_connected));

    assert_eq!(
        h.rejected(Command::SetZoneConnection {
            zone: "zz".into(),
            connected: true,
            node_id: 1,
            session: 0,
            now_ms: T0
        }),
        Rejection::ZoneNotFound { zone: "zz".into() }
    );
}

// === Join tokens ===

#[test]
fn join_token_happy_path_is_single_use() {
    let mut h = two_zones();
    h.ok(zone_token("t1", "a", 7));
    assert_eq!(
        h.ok(consume("t1", 7, zone_purpose("a"), T0 + HOUR)),
        Detail::TokenConsumed {
            token_id: "t1".into(),
            purpose: zone_purpose("a"),
        }
    );
    assert_eq!(h.state.tokens["t1"].used_at_ms, Some(T0 + HOUR));
    let r = h.rejected(consume("t1", 7, zone_purpose("a"), T0 + 2 * HOUR));
    assert_eq!(
        r,
        Rejection::Token(TokenRejection::AlreadyUsed {
            used_at_ms: T0 + HOUR
        })
    );
    assert_eq!(
        r.to_string(),
        "join token was already used at 2026-11-21T11:00:00Z"
    );
}

#[test]
fn join_token_misuse() {
    let mut h = two_zones();
    h.ok(zone_token("t1", "a", 7));
    h.ok(Command::CreateJoinToken {
        token_id: "n1".into(),
        secret_sha256: sha(8),
        purpose: TokenPurpose::Node { node_id: 2 },
        expires_at_ms: T0 + HOUR,
        now_ms: T0,
    });

    let cases = [
        (
            consume("nope", 7, zone_purpose("a"), T0),
            TokenRejection::Unknown,
            "unknown join token",
        ),
        (
            consume("t1", 9, zone_purpose("a"), T0),
            TokenRejection::SecretMismatch,
            "join token secret does not match",
        ),
        (
            // Wrong secret and wrong zone: the secret is checked first and nothing else leaks.
            consume("t1", 9, zone_purpose("b"), T0),
            TokenRejection::SecretMismatch,
            "join token secret does not match",
        ),
        (
            consume("t1", 7, zone_purpose("b"), T0),
            TokenRejection::WrongZone {
                token_zone: "a".into(),
                requested_zone: "b".into(),
            },
            "join token is for zone \"a\", not zone \"b\"",
        ),
        (
            consume("t1", 7, TokenPurpose::Node { node_id: 2 }, T0),
            TokenRejection::WrongPurpose {
                token_purpose: "zone".into(),
                requested_purpose: "global node".into(),
            },
            "join token is for joining a zone, not a global node",
        ),
        (
            consume("n1", 8, TokenPurpose::Node { node_id: 3 }, T0),
            TokenRejection::WrongNode {
                token_node: 2,
                requested_node: 3,
            },
            "join token is for global node 2, not global node 3",
        ),
        (
            consume("t1", 7, zone_purpose("a"), T0 + 24 * HOUR),
            TokenRejection::Expired {
                expired_at_ms: T0 + 24 * HOUR,
            },
            "join token expired at 2026-11-22T10:00:00Z",
        ),
    ];
    for (command, expected, message) in cases {
        let r = h.rejected(command);
        assert_eq!(r, Rejection::Token(expected));
        assert_eq!(r.to_string(), message);
    }

    // Malformed hashes never match, and do not panic.
    let r = h.rejected(Command::ConsumeJoinToken {
        token_id: "t1".into(),
        secret_sha256: "not hex".into(),
        purpose: zone_purpose("a"),
        now_ms: T0,
    });
    assert_eq!(r, Rejection::Token(TokenRejection::SecretMismatch));

    // Upper-case hex of the right digest is the same digest.
    h.ok(Command::ConsumeJoinToken {
        token_id: "t1".into(),
        secret_sha256: sha(7).to_uppercase(),
        purpose: zone_purpose("a"),
        now_ms: T0,
    });
    h.ok(consume("n1", 8, TokenPurpose::Node { node_id: 2 }, T0));
}

#[test]
fn join_token_of_removed_zone_is_void() {
    let mut h = two_zones();
    h.ok(zone_token("t1", "b", 7));
    h.ok(remove_zone("b", T0));
    let r = h.rejected(consume("t1", 7, zone_purpose("b"), T0 + 1));
    assert_eq!(
        r,
        Rejection::Token(TokenRejection::ZoneRemoved { zone: "b".into() })
    );
    assert_eq!(r.to_string(), "join token is void: zone \"b\" was removed");
    // Still nothing for a wrong secret.
    let r = h.rejected(consume("t1", 1, zone_purpose("b"), T0 + 1));
    assert_eq!(r, Rejection::Token(TokenRejection::SecretMismatch));
}

#[test]
fn create_join_token_checks() {
    let mut h = two_zones();
    assert_eq!(
        h.rejected(zone_token("t1", "nope", 1)),
        Rejection::ZoneNotFound {
            zone: "nope".into()
        }
    );
    h.ok(zone_token("t1", "a", 1));
    assert_eq!(
        h.rejected(zone_token("t1", "a", 2)).to_string(),
        "join token \"t1\" already exists"
    );
    let r = h.rejected(Command::CreateJoinToken {
        token_id: "t2".into(),
        secret_sha256: "abc".into(),
        purpose: zone_purpose("a"),
        expires_at_ms: T0 + 1,
        now_ms: T0,
    });
    assert!(matches!(r, Rejection::InvalidArgument { .. }), "{r}");
    let r = h.rejected(Command::CreateJoinToken {
        token_id: "t2".into(),
        secret_sha256: sha(1),
        purpose: zone_purpose("a"),
        expires_at_ms: T0,
        now_ms: T0,
    });
    assert_eq!(
        r.to_string(),
        "invalid join token expiry: 2026-11-21T10:00:00Z is not in the future"
    );
    // Stored hashes are normalized to lowercase.
    h.ok(Command::CreateJoinToken {
        token_id: "t3".into(),
        secret_sha256: hex::encode_upper([5u8; 32]),
        purpose: zone_purpose("a"),
        expires_at_ms: T0 + 1,
        now_ms: T0,
    });
    assert_eq!(h.state.tokens["t3"].secret_sha256, sha(5));
}

#[test]
fn purge_expired_tokens() {
    let mut h = two_zones();
    h.ok(zone_token("long", "a", 1));
    h.ok(Command::CreateJoinToken {
        token_id: "short".into(),
        secret_sha256: sha(2),
        purpose: zone_purpose("a"),
        expires_at_ms: T0 + HOUR,
        now_ms: T0,
    });
    let revision = h.state.revision;
    assert_eq!(
        h.ok(Command::PurgeExpiredTokens {
            now_ms: T0 + HOUR - 1
        }),
        Detail::TokensPurged { count: 0 }
    );
    assert_eq!(h.state.revision, revision);
    assert_eq!(
        h.ok(Command::PurgeExpiredTokens { now_ms: T0 + HOUR }),
        Detail::TokensPurged { count: 1 }
    );
    assert!(h.state.tokens.contains_key("long"));
    assert!(!h.state.tokens.contains_key("short"));
    assert_eq!(
        h.rejected(consume("short", 2, zone_purpose("a"), T0)),
        Rejection::Token(TokenRejection::Unknown)
    );
}

// === Policies ===

#[test]
fn apply_policies_counts_and_is_atomic() {
    let mut h = two_zones();
    let detail = h.ok(Command::ApplyPolicies {
        policies: vec![
            policy("Retry", "r1", "{\"attempts\":3}"),
            policy("Timeout", "t1", "{}"),
        ],
    });
    assert_eq!(
        detail,
        Detail::PoliciesApplied {
            created: 2,
            updated: 0,
            unchanged: 0
        }
    );
    let created_at = h.state.revision;

    let detail = h.ok(Command::ApplyPolicies {
        policies: vec![
            policy("Retry", "r1", "{\"attempts\":5}"),
            policy("Timeout", "t1", "{}"),
            policy("Retry", "r2", "{}"),
        ],
    });
    assert_eq!(
        detail,
        Detail::PoliciesApplied {
            created: 1,
            updated: 1,
            unchanged: 1
        }
    );
    let key = |kind: &str, name: &str| policy(kind, name, "").0;
    assert_eq!(
        h.state.policies[&key("Retry", "r1")].json,
        "{\"attempts\":5}"
    );
    assert_eq!(
        h.state.policies[&key("Retry", "r1")].revision,
        h.state.revision
    );
    assert_eq!(h.state.policies[&key("Timeout", "t1")].revision, created_at);

    // All unchanged: no new revision.
    let revision = h.state.revision;
    h.ok(Command::ApplyPolicies {
        policies: vec![policy("Timeout", "t1", "{}")],
    });
    assert_eq!(h.state.revision, revision);

    // One bad entry refuses the whole batch.
    let r = h.rejected(Command::ApplyPolicies {
        policies: vec![
            policy("Retry", "r3", "{}"),
            policy("Retry", "r4", "{not json"),
        ],
    });
    assert!(
        r.to_string()
            .starts_with("invalid policy Retry default/r4: body is not JSON"),
        "{r}"
    );
    let r = h.rejected(Command::ApplyPolicies {
        policies: vec![policy("Retry", "r3", "{}"), policy("Retry", "r3", "{}")],
    });
    assert_eq!(
        r.to_string(),
        "policy Retry default/r3 appears more than once in one apply"
    );
    assert!(!h.state.policies.contains_key(&key("Retry", "r3")));
}

#[test]
fn delete_policy() {
    let mut h = two_zones();
    h.ok(Command::ApplyPolicies {
        policies: vec![policy("Retry", "r1", "{}")],
    });
    let key = policy("Retry", "r1", "").0;
    h.ok(Command::DeletePolicy { key: key.clone() });
    assert!(h.state.policies.is_empty());
    let r = h.rejected(Command::DeletePolicy { key });
    assert_eq!(r.to_string(), "policy Retry default/r1 does not exist");
}

// === Inventories and VIPs ===

#[test]
fn report_inventory_replaces_wholesale_and_ignores_stale() {
    let mut h = two_zones();
    h.ok(report("a", 2, &["web", "api"], T0));
    let inventory = &h.state.inventories["a"];
    assert_eq!(inventory.version, 2);
    assert_eq!(inventory.gateways, vec!["a-gw:15443".to_owned()]);
    assert_eq!(inventory.services.len(), 2);

    h.ok(report("a", 3, &["web"], T0 + 1));
    assert_eq!(
        h.state.inventories["a"].services.keys().collect::<Vec<_>>(),
        vec![&svc("web")]
    );

    let r = h.rejected(report("a", 2, &["web", "api"], T0 + 2));
    assert_eq!(
        r.to_string(),
        "inventory version 2 from zone \"a\" is older than the stored version 3; ignored"
    );
    // The same version again (a resend after reconnect) is accepted.
    h.ok(report("a", 3, &["web"], T0 + 3));
    assert_eq!(
        h.rejected(report("nope", 1, &[], T0)),
        Rejection::ZoneNotFound {
            zone: "nope".into()
        }
    );
    let r = h.rejected(Command::ReportInventory {
        zone: "a".into(),
        version: 4,
        services: BTreeMap::from([(ServiceKey::new("", "web"), exported(1, 1))]),
        gateways: vec![],
        now_ms: T0,
    });
    assert!(matches!(r, Rejection::InvalidArgument { .. }), "{r}");
}

#[test]
fn vip_allocation_lowest_free_and_stable() {
    let mut h = two_zones();
    let d = h.ok(report("a", 1, &["web", "api"], T0));
    assert_eq!(
        d,
        Detail::InventoryAccepted {
            // Sorted by service key, so allocation order is deterministic; services first,
            // then their pairs with the exporting zone (zone-pinned VIPs).
            vips_allocated: vec![(svc("api"), 1), (svc("web"), 2)],
            vips_released: vec![],
            zone_vips_allocated: vec![
                (svc("api"), "a".to_owned(), 3),
                (svc("web"), "a".to_owned(), 4),
            ],
            zone_vips_released: vec![],
        }
    );
    // b exports web too: same service index, a new pinned one for (web, b).
    let d = h.ok(report("b", 1, &["web", "db"], T0));
    assert_eq!(
        d,
        Detail::InventoryAccepted {
            vips_allocated: vec![(svc("db"), 5)],
            vips_released: vec![],
            zone_vips_allocated: vec![
                (svc("db"), "b".to_owned(), 6),
                (svc("web"), "b".to_owned(), 7),
            ],
            zone_vips_released: vec![],
        }
    );
    // A report that changes nothing exported allocates nothing.
    let d = h.ok(report("b", 2, &["web", "db"], T0));
    assert_eq!(
        d,
        Detail::InventoryAccepted {
            vips_allocated: vec![],
            vips_released: vec![],
            zone_vips_allocated: vec![],
            zone_vips_released: vec![],
        }
    );
    // a stops exporting web; b still does, so web keeps index 2 and (web, b) keeps 7, while
    // (web, a) is released.
    let d = h.ok(report("a", 2, &["api"], T0));
    assert_eq!(
        d,
        Detail::InventoryAccepted {
            vips_allocated: vec![],
            vips_released: vec![],
            zone_vips_allocated: vec![],
            zone_vips_released: vec![(svc("web"), "a".to_owned(), 4)],
        }
    );
    assert_eq!(h.state.vip(&svc("web")), Some(2));
    assert_eq!(h.state.zone_vip(&svc("web"), "b"), Some(7));
    assert_eq!(h.state.zone_vip(&svc("web"), "a"), None);

    // Every allocated index is distinct, services' and pinned ones together.
    let mut indices: Vec<u32> = h
        .state
        .vips
        .values()
        .chain(h.state.zone_vips.values())
        .copied()
        .collect();
    let count = indices.len();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), count);
}

#[test]
fn vip_released_only_when_no_zone_exports_and_held_before_reuse() {
    let mut h = two_zones();
    h.ok(report("a", 1, &["web", "api"], T0));
    h.ok(report("b", 1, &["web"], T0));
    assert_eq!(h.state.vip(&svc("api")), Some(1));
    assert_eq!(h.state.vip(&svc("web")), Some(2));

    // Last exporter of api stops: released and held.
    let d = h.ok(report("a", 2, &["web"], T0 + 1000));
    assert_eq!(
        d,
        Detail::InventoryAccepted {
            vips_allocated: vec![],
            vips_released: vec![(svc("api"), 1)],
            zone_vips_allocated: vec![],
            zone_vips_released: vec![(svc("api"), "a".to_owned(), 3)],
        }
    );
    assert_eq!(h.state.vip(&svc("api")), None);
    assert!(h.state.held_vips.contains_key(&1));
    assert!(h.state.held_vips.contains_key(&3));

    // A new service during the hold gets neither index 1 nor 3 (web 2, (web, a) 4,
    // (web, b) 5)...
    h.ok(report("a", 3, &["web", "new"], T0 + 2000));
    assert_eq!(h.state.vip(&svc("new")), Some(6));
    assert_eq!(h.state.zone_vip(&svc("new"), "a"), Some(7));
    // ...but api coming back does get its own; (api, b) is another pair, which does not
    // take (api, a)'s held index.
    h.ok(report("b", 2, &["web", "api"], T0 + 3000));
    assert_eq!(h.state.vip(&svc("api")), Some(1));
    assert_eq!(h.state.zone_vip(&svc("api"), "b"), Some(8));
    assert_eq!(h.state.held_vips.keys().copied().collect::<Vec<_>>(), [3]);
    // And (api, a) gets 3 back when a exports api again within the hold.
    h.ok(report("a", 4, &["web", "new", "api"], T0 + 3500));
    assert_eq!(h.state.zone_vip(&svc("api"), "a"), Some(3));
    h.ok(report("a", 5, &["web", "new"], T0 + 3600));

    // Release api again; after the hold, another service may take index 1.
    h.ok(report("b", 3, &["web"], T0 + 4000));
    h.ok(report(
        "a",
        6,
        &["web", "new", "late"],
        T0 + 4000 + VIP_HOLD_MS,
    ));
    assert_eq!(h.state.vip(&svc("late")), Some(1));
    assert_eq!(h.state.zone_vip(&svc("late"), "a"), Some(3));
    assert!(h.state.held_vips.is_empty());
}

#[test]
fn vip_survives_disconnect() {
    let mut h = two_zones();
    h.ok(report("a", 1, &["web"], T0));
    h.ok(Command::SetZoneConnection {
        zone: "a".into(),
        connected: false,
        node_id: 1,
        session: 0,
        now_ms: T0 + 1,
    });
    assert_eq!(h.state.vip(&svc("web")), Some(1));
    assert_eq!(h.state.zone_vip(&svc("web"), "a"), Some(2));
}

#[test]
fn state_without_zone_vips_still_loads() {
    // A snapshot written before zone-pinned VIPs existed: no `zone_vips`, holds without a
    // zone.
    let mut h = two_zones();
    h.ok(report("a", 1, &["web", "api"], T0));
    h.ok(report("a", 2, &["web"], T0 + 1000));
    let mut json: serde_json::Value = serde_json::to_value(&h.state).unwrap_or_default();
    let object = json
        .as_object_mut()
        .unwrap_or_else(|| panic!("not an object"));
    assert!(object.remove("zone_vips").is_some());
    for hold in object["held_vips"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("no holds"))
        .values_mut()
    {
        assert!(
            hold.as_object_mut()
                .and_then(|h| h.remove("zone"))
                .is_some()
        );
    }
    let old: FederationState = match serde_json::from_value(json) {
        Ok(s) => s,
        Err(e) => panic!("an old state does not load: {e}"),
    };
    assert!(old.zone_vips.is_empty());
    assert_eq!(old.vips, h.state.vips);
    assert!(old.held_vips.values().all(|hold| hold.zone.is_none()));

    // The pairs get indices at the zone's next report, clear of every index in use or held.
    let mut h = Harness {
        state: old,
        index: h.index,
    };
    h.ok(report("a", 3, &["web"], T0 + 2000));
    let web = h.state.vip(&svc("web"));
    let pinned = h.state.zone_vip(&svc("web"), "a");
    assert!(pinned.is_some() && pinned != web, "{pinned:?} {web:?}");
    assert!(!h.state.held_vips.contains_key(&pinned.unwrap_or_default()));
}

#[test]
fn vip_exhaustion_rejects_the_report() {
    let mut h = two_zones();
    let state_before = {
        let r = h
            .state
            // a1, a2 and their pairs with zone a: 4 indices.
            .apply_with_vip_limit(100, &report("a", 1, &["a1", "a2"], T0), 4);
        assert!(r.is_ok(), "{r:?}");
        h.state.clone()
    };
    let r = h
        .state
        .apply_with_vip_limit(101, &report("b", 1, &["b1"], T0), 4);
    assert_eq!(
        r,
        CommandResult::Rejected(Rejection::VipSpaceExhausted {
            service: "default/b1".into()
        })
    );
    assert_eq!(h.state, state_before, "nothing half-applied");
}

// === Drains ===

#[test]
fn set_drain() {
    let mut h = two_zones();
    h.ok(report("a", 1, &["web"], T0));
    assert_eq!(h.ok(drain("web", "a", true)), Detail::Done);
    assert!(h.state.is_drained(&svc("web"), "a"));
    assert!(!h.state.is_drained(&svc("web"), "b"));
    assert!(!h.state.is_drained(&svc("we"), "a"));
    assert!(h.state.services()[0].zones[0].drained);
    assert_eq!(h.ok(drain("web", "a", true)), Detail::Unchanged);
    assert_eq!(h.ok(drain("web", "a", false)), Detail::Done);
    assert!(h.state.drains.is_empty());
    assert_eq!(
        h.rejected(drain("web", "zz", true)),
        Rejection::ZoneNotFound { zone: "zz".into() }
    );
}

// === Queries ===

#[test]
fn services_view_joins_zones() {
    let mut h = two_zones();
    h.ok(report("a", 1, &["web"], T0));
    h.ok(Command::ReportInventory {
        zone: "b".into(),
        version: 1,
        services: BTreeMap::from([(svc("web"), exported(0, 4))]),
        gateways: vec![],
        now_ms: T0,
    });
    h.ok(Command::SetZoneConnection {
        zone: "b".into(),
        connected: true,
        node_id: 3,
        session: 0,
        now_ms: T0,
    });
    let views = h.state.services();
    assert_eq!(views.len(), 1);
    let web = &views[0];
    assert_eq!(web.service, svc("web"));
    assert_eq!(web.vip, Some(1));
    let zones: Vec<(&str, u64, u64, bool)> = web
        .zones
        .iter()
        .map(|z| (z.zone.as_str(), z.healthy, z.total, z.connected))
        .collect();
    assert_eq!(zones, vec![("a", 2, 3, false), ("b", 0, 4, true)]);
    assert_eq!(web.zones[0].ports[0].port, 8080);
    let pinned: Vec<Option<u32>> = web.zones.iter().map(|z| z.pinned_vip).collect();
    assert_eq!(pinned, vec![Some(2), Some(3)]);
}

// === Determinism and serialization ===

fn scenario() -> Vec<Command> {
    vec![
        init(),
        create_zone("a"),
        create_zone("b"),
        create_zone("c"),
        zone_token("t1", "a", 1),
        zone_token("t2", "c", 2),
        consume("t1", 1, zone_purpose("a"), T0 + 5),
        consume("t1", 1, zone_purpose("a"), T0 + 6),
        Command::ApplyPolicies {
            policies: vec![
                policy("Retry", "r", "{\"n\":1}"),
                policy("MeshTLS", "m", "{}"),
            ],
        },
        report("a", 1, &["web", "api"], T0),
        report("b", 1, &["web", "db"], T0),
        report("c", 1, &["cache"], T0),
        drain("web", "b", true),
        Command::SetZoneConnection {
            zone: "a".into(),
            connected: true,
            node_id: 2,
            session: 0,
            now_ms: T0,
        },
        remove_zone("c", T0 + HOUR),
        report("a", 2, &["web"], T0 + HOUR),
        Command::PurgeExpiredTokens {
            now_ms: T0 + 48 * HOUR,
        },
        Command::DeletePolicy {
            key: policy("MeshTLS", "m", "").0,
        },
    ]
}

#[test]
fn same_commands_give_identical_states() {
    let mut first = Harness::default();
    let mut second = Harness::default();
    let mut results = Vec::new();
    for command in scenario() {
        let a = first.apply(command.clone());
        let b = second.apply(command);
        assert_eq!(a, b);
        results.push(a);
    }
    let json_a = serde_json::to_string(&first.state).unwrap_or_default();
    let json_b = serde_json::to_string(&second.state).unwrap_or_default();
    assert!(!json_a.is_empty());
    assert_eq!(json_a, json_b);
    // The scenario exercised both outcomes.
    assert!(results.iter().any(CommandResult::is_ok));
    assert!(results.iter().any(|r| !r.is_ok()));
}

#[test]
fn state_and_commands_round_trip_through_json() {
    let mut h = Harness::default();
    for command in scenario() {
        let json = serde_json::to_string(&command).unwrap_or_default();
        let back: Command = match serde_json::from_str(&json) {
            Ok(c) => c,
            Err(e) => panic!("{} does not round-trip: {e}", command.name()),
        };
        assert_eq!(back, command);
        let result = h.apply(command);
        let json = serde_json::to_string(&result).unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<CommandResult>(&json).ok(),
            Some(result)
        );
    }
    let json = serde_json::to_string(&h.state).unwrap_or_default();
    let back: FederationState = match serde_json::from_str(&json) {
        Ok(s) => s,
        Err(e) => panic!("state does not round-trip: {e}"),
    };
    assert_eq!(back, h.state);
    assert_eq!(serde_json::to_string(&back).unwrap_or_default(), json);
}

#[test]
fn revision_is_index_of_last_change() {
    let mut h = two_zones();
    assert_eq!(h.state.revision, 3);
    let r = h.apply(create_zone("a"));
    assert!(!r.is_ok());
    assert_eq!(h.state.revision, 3, "a rejection is not a change");
    match h.apply(create_zone("c")) {
        CommandResult::Ok { revision, .. } => assert_eq!(revision, 5),
        r => panic!("{r:?}"),
    }
}

// === Batches ===

/// Applies every command at the same log index, each as its own entry would be.
fn apply_each_at(
    state: &mut FederationState,
    index: u64,
    commands: &[Command],
) -> Vec<CommandResult> {
    commands.iter().map(|c| state.apply(index, c)).collect()
}

#[test]
fn a_batch_applies_in_order_with_a_verdict_per_command() {
    let mut h = two_zones();
    let before = h.state.clone();
    let commands = vec![
        create_zone("a"), // exists: rejected
        create_zone("d"),
        create_zone("d"), // sees the one before it: rejected
        Command::ApplyPolicies {
            // all or nothing on its own: the duplicate rejects both policies
            policies: vec![policy("Retry", "r", "{}"), policy("Retry", "r", "{}")],
        },
        Command::ApplyPolicies {
            policies: vec![policy("Retry", "r2", "{\"n\":2}")],
        },
    ];
    let result = h.apply(Command::Batch(commands.clone()));
    let index = h.index;
    let CommandResult::Ok {
        revision,
        detail: Detail::Batch(results),
    } = &result
    else {
        panic!("a batch answers with one result per command: {result:?}");
    };
    assert_eq!(*revision, index);
    assert_eq!(results.len(), commands.len());
    let verdicts: Vec<bool> = results.iter().map(CommandResult::is_ok).collect();
    assert_eq!(verdicts, [false, true, false, false, true]);
    assert!(matches!(
        results[0].rejection(),
        Some(Rejection::ZoneExists { zone }) if zone == "a"
    ));
    assert!(matches!(
        results[3].rejection(),
        Some(Rejection::DuplicatePolicy { .. })
    ));
    assert!(!result.is_ok(), "one refusal makes the batch not all ok");
    assert_eq!(result.rejection(), results[0].rejection());
    assert!(!h.state.policies.contains_key(&policy("Retry", "r", "").0));
    assert_eq!(
        h.state
            .policies
            .get(&policy("Retry", "r2", "").0)
            .map(|p| p.revision),
        Some(index)
    );

    // Exactly what the same commands do one by one at that index.
    let mut separately = before;
    let expected = apply_each_at(&mut separately, index, &commands);
    assert_eq!(*results, expected);
    assert_eq!(h.state, separately);
}

#[test]
fn a_batch_of_refusals_changes_nothing() {
    let mut h = two_zones();
    let before = h.state.clone();
    let result = h.apply(Command::Batch(vec![create_zone("a"), create_zone("b")]));
    match result {
        CommandResult::Ok {
            revision,
            detail: Detail::Batch(results),
        } => {
            assert_eq!(revision, before.revision, "no change, no new revision");
            assert!(results.iter().all(|r| !r.is_ok()));
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(h.state, before);
    assert!(h.apply(Command::Batch(Vec::new())).is_ok());
    assert_eq!(h.state, before);
}

#[test]
fn the_whole_scenario_as_one_batch_matches_one_entry_per_command_at_that_index() {
    let mut batched = Harness::default();
    let result = batched.apply(Command::Batch(scenario()));
    let mut separately = FederationState::default();
    let expected = apply_each_at(&mut separately, batched.index, &scenario());
    assert_eq!(
        result,
        CommandResult::Ok {
            revision: separately.revision,
            detail: Detail::Batch(expected),
        }
    );
    assert_eq!(batched.state, separately);
}

#[test]
fn batches_leave_the_existing_log_format_alone() {
    // An entry written before batches existed still decodes, and encodes the same way.
    let old = r#"{"create_zone":{"name":"a","region":"eu","labels":{},"now_ms":1}}"#;
    let command: Command = match serde_json::from_str(old) {
        Ok(c) => c,
        Err(e) => panic!("pre-batch entry does not decode: {e}"),
    };
    assert_eq!(serde_json::to_string(&command).unwrap_or_default(), old);

    let batch = Command::Batch(vec![command, Command::PurgeExpiredTokens { now_ms: 2 }]);
    let json = serde_json::to_string(&batch).unwrap_or_default();
    assert_eq!(
        json,
        format!(r#"{{"batch":[{old},{{"purge_expired_tokens":{{"now_ms":2}}}}]}}"#)
    );
    assert_eq!(serde_json::from_str::<Command>(&json).ok(), Some(batch));
}
