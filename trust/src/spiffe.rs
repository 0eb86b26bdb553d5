//! SPIFFE IDs: parsing and validation per the SPIFFE ID specification, the constructors for
//! every kind of Strait identity, and a typed view ([`IdentityKind`]) of what an ID names.
//!
//! The scheme (trust domain `TD`):
//!
//! | who | SPIFFE ID |
//! |---|---|
//! | workload | `spiffe://TD/ns/NS/sa/SA` (the same in every zone) |
//! | zone control plane | `spiffe://TD/zone/ZONE/cp` |
//! | east-west gateway | `spiffe://TD/zone/ZONE/gateway` |
//! | zone intermediate CA | `spiffe://TD/zone/ZONE/ca` |
//! | global control plane node | `spiffe://TD/global/NODE` |
//! | operator | `spiffe://TD/admin/NAME` |

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, SpiffeIdError};

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name allowed, in bytes (a DNS name's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID: `spiffe://TRUST_DOMAIN/PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty (the ID of the trust domain itself) or `/seg/seg...`.
    path: String,
}

/// What a SPIFFE ID names, in Strait's scheme. Borrowed from the [`SpiffeId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKind<'a> {
    Workload {
        namespace: &'a str,
        service_account: &'a str,
    },
    ZoneControlPlane {
        zone: &'a str,
    },
    Gateway {
        zone: &'a str,
    },
    ZoneCa {
        zone: &'a str,
    },
    GlobalNode {
        node: &'a str,
    },
    Admin {
        name: &'a str,
    },
    /// A valid SPIFFE ID that is not part of Strait's scheme.
    Other,
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Builds `spiffe://TD/seg1/seg2/...`, validating every part.
    /// Each part must be one segment: a `/` inside a part (say, a zone named `a/gateway`)
    /// is refused rather than read as two segments.
    pub fn from_segments(trust_domain: &str, segments: &[&str]) -> Result<Self, Error> {
        let mut s = String::with_capacity(SCHEME.len() + trust_domain.len() + 32);
        s.push_str(SCHEME);
        s.push_str(trust_domain);
        for seg in segments {
            s.push('/');
            s.push_str(seg);
        }
        if segments.iter().any(|seg| seg.contains('/')) {
            return Err(Error::InvalidSpiffeId {
                input: s,
                source: SpiffeIdError::BadPathChar { found: '/' },
            });
        }
        s.parse()
            .map_err(|source| Error::InvalidSpiffeId { input: s, source })
    }

    /// `spiffe://TD/ns/NS/sa/SA`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["ns", namespace, "sa", service_account])
    }

    /// `spiffe://TD/zone/ZONE/cp`.
    pub fn zone_cp(trust_domain: &str, zone: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["zone", zone, "cp"])
    }

    /// `spiffe://TD/zone/ZONE/gateway`.
    pub fn gateway(trust_domain: &str, zone: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["zone", zone, "gateway"])
    }

    /// `spiffe://TD/zone/ZONE/ca`: the URI SAN of zone ZONE's intermediate CA.
    pub fn zone_ca(trust_domain: &str, zone: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["zone", zone, "ca"])
    }

    /// `spiffe://TD/global/NODE`.
    pub fn global_node(trust_domain: &str, node: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["global", node])
    }

    /// `spiffe://TD/admin/NAME`.
    pub fn admin(trust_domain: &str, name: &str) -> Result<Self, Error> {
        Self::from_segments(trust_domain, &["admin", name])
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path's segments (none for a trust domain ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        // The path is validated: it is empty or `/a/b`, so skipping the first (empty) piece
        // yields exactly the segments.
        self.path.split('/').skip(1)
    }

    /// What this ID names in Strait's scheme.
    pub fn kind(&self) -> IdentityKind<'_> {
        let segs: Vec<&str> = self.segments().collect();
        match segs.as_slice() {
            ["ns", namespace, "sa", service_account] => IdentityKind::Workload {
                namespace,
                service_account,
            },
            ["zone", zone, "cp"] => IdentityKind::ZoneControlPlane { zone },
            ["zone", zone, "gateway"] => IdentityKind::Gateway { zone },
            ["zone", zone, "ca"] => IdentityKind::ZoneCa { zone },
            ["global", node] => IdentityKind::GlobalNode { node },
            ["admin", name] => IdentityKind::Admin { name },
            _ => IdentityKind::Other,
        }
    }

    /// The zone a zone-scoped identity (control plane, gateway, zone CA) belongs to.
    /// Workloads are not zone-scoped: they keep their identity in every zone.
    pub fn zone(&self) -> Option<&str> {
        match self.kind() {
            IdentityKind::ZoneControlPlane { zone }
            | IdentityKind::Gateway { zone }
            | IdentityKind::ZoneCa { zone } => Some(zone),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        // The spec fixes the scheme in lowercase; accepting `SPIFFE://` would give one
        // identity two spellings.
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment are checked first so that `spiffe://td?x` reports the query,
        // not a bad trust-domain character.
        if rest.contains('?') {
            return Err(SpiffeIdError::HasQuery);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::HasFragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Checks a trust domain name: non-empty, at most 255 bytes, `[a-z0-9._-]` only.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    if td.contains('@') {
        return Err(SpiffeIdError::HasUserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::HasPort);
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(found) => Err(SpiffeIdError::BadTrustDomainChar { found }),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/' (it was split at the first one), so the first piece is empty.
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(found) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar { found });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        s.parse()
    }

    #[test]
    fn parses_good_ids() {
        let id = parse("spiffe://strait.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "strait.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://strait.local/ns/default/sa/web");
        assert_eq!(
            id.kind(),
            IdentityKind::Workload {
                namespace: "default",
                service_account: "web"
            }
        );
        assert_eq!(id.zone(), None);

        let td = parse("spiffe://my_td-1.example").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td.kind(), IdentityKind::Other);
        assert_eq!(td.segments().count(), 0);

        let mixed = parse("spiffe://td/Foo.Bar/x-y_z/..a").unwrap();
        assert_eq!(
            mixed.segments().collect::<Vec<_>>(),
            ["Foo.Bar", "x-y_z", "..a"]
        );
    }

    #[test]
    fn refuses_bad_ids() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://td/a", WrongScheme),
            ("SPIFFE://td/a", WrongScheme),
            ("spiffe:td/a", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///a", MissingTrustDomain),
            ("spiffe://TD/a", BadTrustDomainChar { found: 'T' }),
            ("spiffe://td:8080/a", HasPort),
            ("spiffe://user@td/a", HasUserInfo),
            ("spiffe://td/a?x=1", HasQuery),
            ("spiffe://td/a#frag", HasFragment),
            ("spiffe://td/", EmptySegment),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/a/./b", DotSegment),
            ("spiffe://td/a/..", DotSegment),
            ("spiffe://td/a%20b", BadPathChar { found: '%' }),
            ("spiffe://td/a b", BadPathChar { found: ' ' }),
            ("spiffe://td/é", BadPathChar { found: 'é' }),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Err(want), "input {input:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(parse(&long), Err(TooLong { .. })));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert!(matches!(
            parse(&long_td),
            Err(TrustDomainTooLong { len: 256 })
        ));
    }

    #[test]
    fn constructors_and_kinds() {
        let td = "strait.local";
        let cp = SpiffeId::zone_cp(td, "eu-1").unwrap();
        assert_eq!(cp.to_string(), "spiffe://strait.local/zone/eu-1/cp");
        assert_eq!(cp.kind(), IdentityKind::ZoneControlPlane { zone: "eu-1" });
        assert_eq!(cp.zone(), Some("eu-1"));

        let gw = SpiffeId::gateway(td, "us").unwrap();
        assert_eq!(gw.to_string(), "spiffe://strait.local/zone/us/gateway");
        assert_eq!(gw.kind(), IdentityKind::Gateway { zone: "us" });
        assert_eq!(gw.zone(), Some("us"));

        let ca = SpiffeId::zone_ca(td, "us").unwrap();
        assert_eq!(ca.to_string(), "spiffe://strait.local/zone/us/ca");
        assert_eq!(ca.kind(), IdentityKind::ZoneCa { zone: "us" });
        assert_eq!(ca.zone(), Some("us"));

        let node = SpiffeId::global_node(td, "g0").unwrap();
        assert_eq!(node.to_string(), "spiffe://strait.local/global/g0");
        assert_eq!(node.kind(), IdentityKind::GlobalNode { node: "g0" });
        assert_eq!(node.zone(), None);

        let admin = SpiffeId::admin(td, "ops").unwrap();
        assert_eq!(admin.to_string(), "spiffe://strait.local/admin/ops");
        assert_eq!(admin.kind(), IdentityKind::Admin { name: "ops" });

        let w = SpiffeId::workload(td, "shop", "cart").unwrap();
        assert_eq!(w.to_string(), "spiffe://strait.local/ns/shop/sa/cart");

        assert_eq!(
            parse("spiffe://td/zone/a/cp/extra").unwrap().kind(),
            IdentityKind::Other
        );
    }

    #[test]
    fn constructors_refuse_bad_parts() {
        // A zone name with a slash would otherwise smuggle in another identity.
        let err = SpiffeId::zone_cp("strait.local", "a/gateway").unwrap_err();
        assert!(matches!(err, Error::InvalidSpiffeId { .. }), "{err}");
        assert!(SpiffeId::workload("strait.local", "", "sa").is_err());
        assert!(SpiffeId::workload("Strait.Local", "ns", "sa").is_err());
        assert!(SpiffeId::gateway("strait.local", "..").is_err());
    }
}
