//! Workload bootstrap tokens: how a sidecar or gateway proves, once, which identity it may ask
//! its zone's workload CA for — verified by the zone **offline**, so sidecars can bootstrap
//! while global is down.
//!
//! Global signs the token with the federation's root key; a zone verifies it with the roots of
//! its trust bundle (every root is tried, so tokens keep working during a root rotation). No
//! state is kept anywhere: a token is valid for its identity, in its zone, until it expires
//! (default [`DEFAULT_TOKEN_TTL`], at most [`MAX_TOKEN_TTL`]). Whoever holds one can get
//! certificates for that identity in that zone until then, so treat it like a password.
//!
//! Format: `stw1.<base64url(claims JSON)>.<base64url(signature)>` (unpadded base64url), where
//! the signature is ECDSA P-256 with SHA-256 in the fixed 64-byte `r || s` form, over the ASCII
//! bytes of `stw1.<base64url(claims JSON)>` — what JWS (ES256) signs, with our own header. The
//! claims ([`Claims`]):
//!
//! ```json
//! {"id":"3f9c0a1b2c3d4e5f","spiffe_id":"spiffe://strait.local/ns/shop/sa/cart",
//!  "zone":"eu-1","issued_at_ms":1767225600000,"expires_at_ms":1767312000000}
//! ```
//!
//! - `spiffe_id` is the exact identity the bearer may have: a workload
//!   (`spiffe://TD/ns/NS/sa/SA`) or the gateway of the token's zone
//!   (`spiffe://TD/zone/Z/gateway`); nothing else is ever honoured;
//! - `zone` is the only zone that accepts the token;
//! - expiry is checked with the same [`CLOCK_SKEW_ALLOWANCE`] certificates get.
//!
//! Errors never echo the token (it is a bearer credential); they name the claims only once the
//! signature has verified.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use crate::bundle::TrustBundle;
use crate::ca::{CLOCK_SKEW_ALLOWANCE, RootCa};
use crate::cert_info::parse_x509;
use crate::spiffe::{IdentityKind, SpiffeId};

/// The format version, the token's first dot-separated part.
pub const PREFIX: &str = "stw1";
/// Lifetime of a workload token when the operator does not ask for one (DESIGN: bootstrap
/// credentials live 24 h, like join tokens and leaf certificates).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a workload token may be issued with: 30 days. A token can not be
/// revoked before it expires (zones verify it offline), so this bounds the damage of a leak.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longer input is refused before any decoding: real tokens are about 350 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

const ID_BYTES: usize = 8;
const SIGNATURE_LEN: usize = 64;

/// What a workload token says. Covered by the signature, so nothing here can be edited.
///
/// `Debug` is fine to log: the claims are not the credential, the signed token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Random 16 hex characters: names the token in logs and audit trails.
    pub id: String,
    /// The exact identity the bearer may get certificates for.
    #[serde(with = "spiffe_id_string")]
    pub spiffe_id: SpiffeId,
    /// The only zone that honours the token.
    pub zone: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

impl Claims {
    /// Claims for `spiffe_id` in `zone`, issued at `now` and valid for `ttl`, with a fresh
    /// random id.
    pub fn new(spiffe_id: SpiffeId, zone: &str, now: SystemTime, ttl: Duration) -> Self {
        let mut id = [0_u8; ID_BYTES];
        rand::rng().fill_bytes(&mut id);
        let issued_at_ms = unix_ms(now);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Claims {
            id: hex::encode(id),
            spiffe_id,
            zone: zone.to_owned(),
            issued_at_ms,
            expires_at_ms: issued_at_ms.saturating_add(ttl_ms),
        }
    }

    pub fn issued_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.issued_at_ms)
    }

    pub fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.expires_at_ms)
    }
}

/// Why a workload token can not be issued or is not honoured. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadTokenError {
    #[error("not a Strait workload token: {reason} (expected `stw1.<claims>.<signature>`)")]
    Malformed { reason: &'static str },
    #[error("workload token has an unknown format version {0:?} (this build reads `stw1`)")]
    Version(String),
    #[error(
        "the workload token's signature does not verify against any root of the trust bundle: \
         it was not signed by this federation, or it was altered"
    )]
    BadSignature,
    #[error("the workload token's claims can not be read: {reason}")]
    BadClaims { reason: String },
    #[error("workload token {id} expired at {}", rfc3339(*expired_at_ms))]
    Expired { id: String, expired_at_ms: u64 },
    #[error("workload token {id} is not valid before {}", rfc3339(*issued_at_ms))]
    NotYetValid { id: String, issued_at_ms: u64 },
    #[error("workload token {id} is for zone {token_zone:?}, not {zone:?}")]
    WrongZone {
        id: String,
        token_zone: String,
        zone: String,
    },
    #[error("workload token {id} names {spiffe_id}, outside trust domain {expected:?}")]
    ForeignTrustDomain {
        id: String,
        spiffe_id: String,
        expected: String,
    },
    #[error("identity {spiffe_id} is not allowed in a workload token for zone {zone:?}: {reason}")]
    IdentityNotAllowed {
        spiffe_id: String,
        zone: String,
        reason: &'static str,
    },
    #[error("workload token claims are invalid: {reason}")]
    InvalidClaims { reason: String },
    #[error("the root key can not sign workload tokens: {reason}")]
    RootKey { reason: String },
    #[error("signing the workload token failed")]
    Signing,
}

/// Issues and verifies workload tokens (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadToken;

impl WorkloadToken {
    /// Signs `claims` with the root key. The claims are checked first as a zone would check
    /// them (identity kind, zone, trust domain of `root`, expiry after issue), so global never
    /// hands out a token no zone would honour. The root key must be ECDSA P-256 (the kind
    /// Strait generates).
    pub fn issue(root: &RootCa, claims: &Claims) -> Result<String, WorkloadTokenError> {
        check_identity(
            &claims.spiffe_id,
            &claims.zone,
            root.trust_domain(),
            &claims.id,
        )?;
        if claims.expires_at_ms <= claims.issued_at_ms {
            return Err(WorkloadTokenError::InvalidClaims {
                reason: "it expires before it is issued".to_owned(),
            });
        }
        let key_pem = root.key_pem();
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            WorkloadTokenError::RootKey {
                reason: format!("not a PKCS#8 PEM: {e}"),
            }
        })?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| WorkloadTokenError::RootKey {
            reason: format!("{e} (workload tokens need an ECDSA P-256 root key)"),
        })?;
        let json = serde_json::to_vec(claims).map_err(|e| WorkloadTokenError::InvalidClaims {
            reason: e.to_string(),
        })?;
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let signature = key
            .sign(&rng, signed.as_bytes())
            .map_err(|_| WorkloadTokenError::Signing)?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Verifies `token` for use in `zone` at `now`, offline, against every root of `bundle`.
    ///
    /// Checked in this order: shape and version; the signature (by any root of the bundle);
    /// the claims; the zone; the identity (trust domain of the bundle; a workload, or the
    /// gateway of `zone`); then validity at `now`, allowing [`CLOCK_SKEW_ALLOWANCE`] on both
    /// ends. Returns the claims: `spiffe_id` is the identity the bearer is authorized for.
    pub fn verify(
        token: &str,
        bundle: &TrustBundle,
        zone: &str,
        now: SystemTime,
    ) -> Result<Claims, WorkloadTokenError> {
        let token = token.trim();
        let Parts {
            signed,
            claims_json,
            signature,
        } = split(token)?;
        let verified = bundle.roots().iter().any(|root| {
            root_public_key(root).is_some_and(|key| {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(signed.as_bytes(), &signature)
                    .is_ok()
            })
        });
        if !verified {
            return Err(WorkloadTokenError::BadSignature);
        }

        let claims: Claims =
            serde_json::from_slice(&claims_json).map_err(|e| WorkloadTokenError::BadClaims {
                reason: e.to_string(),
            })?;
        if claims.zone != zone {
            return Err(WorkloadTokenError::WrongZone {
                id: claims.id,
                token_zone: claims.zone,
                zone: zone.to_owned(),
            });
        }
        check_identity(&claims.spiffe_id, zone, bundle.trust_domain(), &claims.id)?;
        let now_ms = unix_ms(now);
        let skew_ms = u64::try_from(CLOCK_SKEW_ALLOWANCE.as_millis()).unwrap_or(u64::MAX);
        if now_ms > claims.expires_at_ms.saturating_add(skew_ms) {
            return Err(WorkloadTokenError::Expired {
                id: claims.id,
                expired_at_ms: claims.expires_at_ms,
            });
        }
        if claims.issued_at_ms > now_ms.saturating_add(skew_ms) {
            return Err(WorkloadTokenError::NotYetValid {
                id: claims.id,
                issued_at_ms: claims.issued_at_ms,
            });
        }
        Ok(claims)
    }
}

/// A token's pieces, before any of them is trusted.
struct Parts<'a> {
    /// `stw1.<claims>`: what the signature covers.
    signed: &'a str,
    claims_json: Vec<u8>,
    signature: Vec<u8>,
}

/// Shape and version: three parts, `stw1`, unpadded base64url, a 64-byte signature.
fn split(token: &str) -> Result<Parts<'_>, WorkloadTokenError> {
    let malformed = |reason| WorkloadTokenError::Malformed { reason };
    if token.is_empty() {
        return Err(malformed("it is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed("it is too long"));
    }
    let mut parts = token.split('.');
    let (Some(version), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("it does not have 3 dot-separated parts"));
    };
    if version != PREFIX {
        return Err(WorkloadTokenError::Version(
            version.chars().take(8).collect(),
        ));
    }
    let claims_json = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| malformed("the claims are not unpadded base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| malformed("the signature is not unpadded base64url"))?;
    if signature.len() != SIGNATURE_LEN {
        return Err(malformed(
            "the signature is not a 64-byte ECDSA P-256 signature",
        ));
    }
    Ok(Parts {
        signed: &token[..version.len() + 1 + claims_b64.len()],
        claims_json,
        signature,
    })
}

/// Checks that `token` has the shape of a workload token and readable claims, without
/// verifying it (no trust bundle needed): what a sidecar or gateway checks of its token file
/// before it binds a port. The zone still verifies everything when the token is used.
pub fn check_format(token: &str) -> Result<(), WorkloadTokenError> {
    let parts = split(token.trim())?;
    serde_json::from_slice::<Claims>(&parts.claims_json).map_err(|e| {
        WorkloadTokenError::BadClaims {
            reason: e.to_string(),
        }
    })?;
    Ok(())
}

/// [`WorkloadToken::verify`].
pub fn verify(
    token: &str,
    bundle: &TrustBundle,
    zone: &str,
    now: SystemTime,
) -> Result<Claims, WorkloadTokenError> {
    WorkloadToken::verify(token, bundle, zone, now)
}

/// The identity rules shared by issuing and verifying.
fn check_identity(
    id: &SpiffeId,
    zone: &str,
    trust_domain: &str,
    token_id: &str,
) -> Result<(), WorkloadTokenError> {
    // The zone must be a valid SPIFFE path segment, or it could never match a gateway
    // identity; `SpiffeId::gateway` validates it.
    SpiffeId::gateway(trust_domain, zone).map_err(|_| WorkloadTokenError::InvalidClaims {
        reason: format!("zone {zone:?} is not a valid zone name"),
    })?;
    if id.trust_domain() != trust_domain {
        return Err(WorkloadTokenError::ForeignTrustDomain {
            id: token_id.to_owned(),
            spiffe_id: id.to_string(),
            expected: trust_domain.to_owned(),
        });
    }
    let refuse = |reason| {
        Err(WorkloadTokenError::IdentityNotAllowed {
            spiffe_id: id.to_string(),
            zone: zone.to_owned(),
            reason,
        })
    };
    match id.kind() {
        IdentityKind::Workload { .. } => Ok(()),
        IdentityKind::Gateway { zone: gw_zone } if gw_zone == zone => Ok(()),
        IdentityKind::Gateway { .. } => refuse("it is the gateway of another zone"),
        _ => refuse("only workload and gateway identities can bootstrap with a token"),
    }
}

/// The raw EC point of a root certificate's P-256 key; `None` for any other key (such a root
/// simply can not have signed a token).
fn root_public_key(root: &[u8]) -> Option<Vec<u8>> {
    let cert = parse_x509(root, "root CA").ok()?;
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    (spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == OID_EC_P256)
        .then(|| spki.subject_public_key.data.to_vec())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(ms: u64) -> impl fmt::Display {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

/// Claims carry the SPIFFE ID as its string form, validated when read.
mod spiffe_id_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::spiffe::SpiffeId;

    pub fn serialize<S: Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| D::Error::custom(format!("spiffe_id {s:?}: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ca::DEFAULT_ROOT_VALIDITY;

    const TD: &str = "strait.local";
    const HOUR: Duration = Duration::from_secs(3600);

    fn root() -> RootCa {
        RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap()
    }

    fn workload() -> SpiffeId {
        SpiffeId::workload(TD, "shop", "cart").unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn issue(root: &RootCa, id: SpiffeId, zone: &str) -> (Claims, String) {
        let claims = Claims::new(id, zone, now(), HOUR);
        let token = WorkloadToken::issue(root, &claims).unwrap();
        (claims, token)
    }

    #[test]
    fn round_trip() {
        let root = root();
        let (claims, token) = issue(&root, workload(), "eu-1");
        assert!(token.starts_with("stw1."));
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(claims.id.len(), 16);
        let got = verify(&token, &root.bundle().unwrap(), "eu-1", now()).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.spiffe_id, workload());

        let gw = SpiffeId::gateway(TD, "eu-1").unwrap();
        let (_, token) = issue(&root, gw.clone(), "eu-1");
        let got = verify(&token, &root.bundle().unwrap(), "eu-1", now()).unwrap();
        assert_eq!(got.spiffe_id, gw);
    }

    #[test]
    fn tampered_claims_are_refused() {
        let root = root();
        let (claims, token) = issue(&root, workload(), "eu-1");
        let sig = token.rsplit('.').next().unwrap();
        let mut forged = claims.clone();
        forged.spiffe_id = SpiffeId::workload(TD, "kube-system", "admin").unwrap();
        let forged_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("stw1.{forged_b64}.{sig}");
        assert_eq!(
            verify(&tampered, &root.bundle().unwrap(), "eu-1", now()),
            Err(WorkloadTokenError::BadSignature)
        );
        // A flipped signature byte too.
        let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig_bytes[10] ^= 1;
        let (head, _) = token.rsplit_once('.').unwrap();
        let bad_sig = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig_bytes));
        assert_eq!(
            verify(&bad_sig, &root.bundle().unwrap(), "eu-1", now()),
            Err(WorkloadTokenError::BadSignature)
        );
    }

    #[test]
    fn another_root_is_refused() {
        let (ours, theirs) = (root(), root());
        let (_, token) = issue(&theirs, workload(), "eu-1");
        let err = verify(&token, &ours.bundle().unwrap(), "eu-1", now()).unwrap_err();
        assert_eq!(err, WorkloadTokenError::BadSignature);
        assert!(
            err.to_string().contains("not signed by this federation"),
            "{err}"
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let root = root();
        let bundle = root.bundle().unwrap();
        let issued = now() - 3 * HOUR;
        let claims = Claims::new(workload(), "eu-1", issued, HOUR);
        let token = WorkloadToken::issue(&root, &claims).unwrap();
        let err = verify(&token, &bundle, "eu-1", now()).unwrap_err();
        assert!(
            matches!(&err, WorkloadTokenError::Expired { id, expired_at_ms }
                if *id == claims.id && *expired_at_ms == claims.expires_at_ms),
            "{err:?}"
        );
        assert!(err.to_string().contains("expired at 20"), "{err}");
        // Within the skew allowance it is still accepted.
        let just_after = claims.expires_at() + Duration::from_secs(30);
        assert!(verify(&token, &bundle, "eu-1", just_after).is_ok());
        // Issued in the future (beyond the skew allowance): refused.
        let before = claims.issued_at() - Duration::from_secs(120);
        assert!(matches!(
            verify(&token, &bundle, "eu-1", before),
            Err(WorkloadTokenError::NotYetValid { .. })
        ));
    }

    #[test]
    fn another_zone_is_refused() {
        let root = root();
        let (_, token) = issue(&root, workload(), "eu-1");
        let err = verify(&token, &root.bundle().unwrap(), "us-1", now()).unwrap_err();
        assert!(
            matches!(&err, WorkloadTokenError::WrongZone { token_zone, zone, .. }
                if token_zone == "eu-1" && zone == "us-1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"eu-1\", not \"us-1\""), "{err}");
    }

    #[test]
    fn gateway_of_another_zone_is_refused() {
        let root = root();
        let other_gw = SpiffeId::gateway(TD, "us-1").unwrap();
        // Global refuses to issue it...
        let claims = Claims::new(other_gw.clone(), "eu-1", now(), HOUR);
        assert!(matches!(
            WorkloadToken::issue(&root, &claims),
            Err(WorkloadTokenError::IdentityNotAllowed { .. })
        ));
        // ...and a zone refuses it even if it was signed (a hand-made token).
        let token = sign_raw(&root, &serde_json::to_vec(&claims).unwrap());
        let err = verify(&token, &root.bundle().unwrap(), "eu-1", now()).unwrap_err();
        assert!(
            matches!(&err, WorkloadTokenError::IdentityNotAllowed { reason, .. }
                if reason.contains("another zone")),
            "{err:?}"
        );
        // Control planes, global nodes, admins and zone CAs never bootstrap with a token.
        for id in [
            SpiffeId::zone_cp(TD, "eu-1").unwrap(),
            SpiffeId::zone_ca(TD, "eu-1").unwrap(),
            SpiffeId::global_node(TD, "1").unwrap(),
            SpiffeId::admin(TD, "ops").unwrap(),
            SpiffeId::from_segments(TD, &["other"]).unwrap(),
        ] {
            let claims = Claims::new(id.clone(), "eu-1", now(), HOUR);
            assert!(WorkloadToken::issue(&root, &claims).is_err(), "{id}");
            let token = sign_raw(&root, &serde_json::to_vec(&claims).unwrap());
            assert!(
                matches!(
                    verify(&token, &root.bundle().unwrap(), "eu-1", now()),
                    Err(WorkloadTokenError::IdentityNotAllowed { .. })
                ),
                "{id}"
            );
        }
        // Another trust domain.
        let foreign = SpiffeId::workload("other.td", "shop", "cart").unwrap();
        let claims = Claims::new(foreign, "eu-1", now(), HOUR);
        assert!(WorkloadToken::issue(&root, &claims).is_err());
        let token = sign_raw(&root, &serde_json::to_vec(&claims).unwrap());
        assert!(matches!(
            verify(&token, &root.bundle().unwrap(), "eu-1", now()),
            Err(WorkloadTokenError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn signed_garbage_claims_are_refused() {
        let root = root();
        let bundle = root.bundle().unwrap();
        for json in [
            &b"not json"[..],
            b"{}",
            br#"{"id":"x","spiffe_id":"nope","zone":"eu-1","issued_at_ms":0,"expires_at_ms":1}"#,
            br#"{"id":"x","spiffe_id":"spiffe://strait.local/ns/a/sa/b","zone":"eu-1","issued_at_ms":0,"expires_at_ms":1,"extra":true}"#,
        ] {
            let token = sign_raw(&root, json);
            assert!(
                matches!(
                    verify(&token, &bundle, "eu-1", now()),
                    Err(WorkloadTokenError::BadClaims { .. })
                ),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn garbage_never_panics_and_is_never_echoed() {
        let root = root();
        let bundle = root.bundle().unwrap();
        let (_, good) = issue(&root, workload(), "eu-1");
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let mut inputs: Vec<String> = [
            "",
            " ",
            ".",
            "..",
            "...",
            "stw1",
            "stw1..",
            "stw1.a.b",
            "stw1.!!!.???",
            "stw1.e30.AAAA",
            "stw2.e30.AAAA",
            "stj1.0011223344556677.00112233445566778899aabbccddeeff.00",
            "stw1.e30=.AAAA",
            "\u{0}\u{ff}ẞ.ü.€",
            &long,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Truncations and single-byte edits of a real token.
        for cut in (0..good.len()).step_by(7) {
            inputs.push(good[..cut].to_owned());
            let mut bytes = good.clone().into_bytes();
            bytes[cut] = if bytes[cut] == b'A' { b'B' } else { b'A' };
            inputs.push(String::from_utf8(bytes).unwrap());
        }
        inputs.push(format!("{good}.extra"));
        for input in &inputs {
            if input == &good {
                continue;
            }
            let err = verify(input, &bundle, "eu-1", now());
            let Err(err) = err else {
                panic!("accepted a mangled token")
            };
            let msg = err.to_string();
            if input.len() > 12 {
                assert!(!msg.contains(input.as_str()), "echoed: {msg}");
            }
            // The signature part of the real token never shows up either.
            assert!(!msg.contains(good.rsplit('.').next().unwrap()), "{msg}");
        }
    }

    #[test]
    fn rotation_two_root_bundle() {
        let (old, new) = (root(), root());
        let mut bundle = old.bundle().unwrap();
        bundle.add(new.cert_der().clone()).unwrap();
        let (_, old_token) = issue(&old, workload(), "eu-1");
        let (_, new_token) = issue(&new, workload(), "eu-1");
        assert!(verify(&old_token, &bundle, "eu-1", now()).is_ok());
        assert!(verify(&new_token, &bundle, "eu-1", now()).is_ok());
        // After the old root is removed, its tokens stop working.
        bundle.remove(old.cert_der()).unwrap();
        assert_eq!(
            verify(&old_token, &bundle, "eu-1", now()),
            Err(WorkloadTokenError::BadSignature)
        );
        assert!(verify(&new_token, &bundle, "eu-1", now()).is_ok());
    }

    #[test]
    fn issue_refuses_bad_claims() {
        let root = root();
        let mut claims = Claims::new(workload(), "eu-1", now(), HOUR);
        claims.expires_at_ms = claims.issued_at_ms;
        assert!(matches!(
            WorkloadToken::issue(&root, &claims),
            Err(WorkloadTokenError::InvalidClaims { .. })
        ));
        let claims = Claims::new(workload(), "eu/1", now(), HOUR);
        assert!(matches!(
            WorkloadToken::issue(&root, &claims),
            Err(WorkloadTokenError::InvalidClaims { .. })
        ));
    }

    #[test]
    fn claims_json_shape() {
        let claims = Claims::new(workload(), "eu-1", SystemTime::UNIX_EPOCH, HOUR);
        let json: serde_json::Value = serde_json::to_value(&claims).unwrap();
        assert_eq!(json["spiffe_id"], "spiffe://strait.local/ns/shop/sa/cart");
        assert_eq!(json["zone"], "eu-1");
        assert_eq!(json["issued_at_ms"], 0);
        assert_eq!(json["expires_at_ms"], 3_600_000);
    }

    /// Signs arbitrary claim bytes with the root, bypassing `issue`'s checks: what a forger
    /// holding the root key (or a buggy issuer) could produce.
    fn sign_raw(root: &RootCa, json: &[u8]) -> String {
        let key_pem = root.key_pem();
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let sig = key.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
