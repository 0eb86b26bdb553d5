//! CA unit tests: what gets signed, and every CSR the CAs must refuse.

use super::*;
use crate::cert_info::CertInfo;

const TD: &str = "strait.local";
const DAY: Duration = Duration::from_secs(86400);

fn zone_ca(root: &RootCa, zone: &str) -> IntermediateCa {
    let key = KeyPair::generate().unwrap();
    let issued = root
        .sign_intermediate(&key.intermediate_csr(TD, zone).unwrap(), zone, 7 * DAY)
        .unwrap();
    IntermediateCa::from_pem(&issued.chain_pem, &key.to_pem()).unwrap()
}

/// A CSR built by hand, for the shapes `KeyPair` never produces.
fn custom_csr(key: &KeyPair, sans: Vec<SanType>, is_ca: IsCa) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.is_ca = is_ca;
    params
        .serialize_request(key.rcgen())
        .unwrap()
        .pem()
        .unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn root_intermediate_leaf_have_the_right_shape() {
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let root_info = CertInfo::from_der(root.cert_der()).unwrap();
    assert!(root_info.is_ca);

    let key = KeyPair::generate().unwrap();
    let inter = root
        .sign_intermediate(&key.intermediate_csr(TD, "eu").unwrap(), "eu", 7 * DAY)
        .unwrap();
    assert_eq!(inter.chain.len(), 2);
    assert_eq!(&inter.chain[1], root.cert_der());
    let x = parse_x509(&inter.cert_der, "t").unwrap();
    let bc = x.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        uri_sans(&x, "t").unwrap(),
        vec!["spiffe://strait.local/zone/eu/ca".to_owned()]
    );

    let ica = IntermediateCa::from_pem(&inter.chain_pem, &key.to_pem()).unwrap();
    assert_eq!(ica.zone(), "eu");
    assert_eq!(ica.trust_domain(), TD);

    let leaf_key = KeyPair::generate().unwrap();
    let id = SpiffeId::workload(TD, "shop", "cart").unwrap();
    let now = SystemTime::now();
    let leaf = ica
        .sign_leaf_at(
            &leaf_key.leaf_csr(&id).unwrap(),
            &id,
            DEFAULT_LEAF_VALIDITY,
            now,
        )
        .unwrap();
    assert_eq!(leaf.chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(&leaf.chain[2], root.cert_der());
    let info = CertInfo::from_der(&leaf.cert_der).unwrap();
    assert_eq!(info.spiffe_id.as_ref(), Some(&id));
    assert!(!info.is_ca);
    assert_eq!(info.not_before, leaf.not_before);
    assert_eq!(info.not_after, leaf.not_after);
    // Backdated by the skew allowance, 24 h long (to the second).
    let nb_lag = now.duration_since(info.not_before).unwrap();
    assert!(
        nb_lag >= CLOCK_SKEW_ALLOWANCE && nb_lag < CLOCK_SKEW_ALLOWANCE + Duration::from_secs(1)
    );
    let life = info.not_after.duration_since(info.not_before).unwrap();
    assert!(life > DAY && life <= DAY + CLOCK_SKEW_ALLOWANCE);

    let x = parse_x509(&leaf.cert_der, "t").unwrap();
    assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let san = x.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1, "the URI SAN only");
    assert_eq!(x.raw_serial().len(), 16);

    // Two leaves for the same key and identity get different serials.
    let again = ica
        .sign_leaf(&leaf_key.leaf_csr(&id).unwrap(), &id, DEFAULT_LEAF_VALIDITY)
        .unwrap();
    let y = parse_x509(&again.cert_der, "t").unwrap();
    assert_ne!(x.raw_serial(), y.raw_serial());
}

#[test]
fn leaf_never_outlives_its_issuer() {
    let root = RootCa::generate(TD, 2 * DAY).unwrap();
    let key = KeyPair::generate().unwrap();
    // Asks for 7 days from a 2-day root: capped at the root's not_after.
    let inter = root
        .sign_intermediate(&key.intermediate_csr(TD, "a").unwrap(), "a", 7 * DAY)
        .unwrap();
    assert_eq!(inter.not_after, root.not_after());
    let ica = IntermediateCa::from_pem(&inter.chain_pem, &key.to_pem()).unwrap();
    let id = SpiffeId::gateway(TD, "a").unwrap();
    let leaf = ica
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, 30 * DAY)
        .unwrap();
    assert_eq!(leaf.not_after, ica.not_after());

    // An issuer past its not_after signs nothing.
    let later = SystemTime::now() + 3 * DAY;
    let err = ica
        .sign_leaf_at(&key.leaf_csr(&id).unwrap(), &id, DAY, later)
        .unwrap_err();
    assert!(matches!(err, Error::IssuerNotValid { .. }), "{err}");
}

#[test]
fn csr_refusals() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let ica = zone_ca(&root, "a");
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::workload(TD, "ns", "web").unwrap();
    let other = SpiffeId::workload(TD, "ns", "admin-tool").unwrap();

    // Wrong identity.
    let err = ica
        .sign_leaf(&key.leaf_csr(&other).unwrap(), &id, DAY)
        .unwrap_err();
    assert!(
        matches!(&err, Error::CsrIdentityMismatch { requested, authorized }
            if requested.ends_with("admin-tool") && authorized.ends_with("/sa/web")),
        "{err}"
    );

    // Two URI SANs.
    let two = custom_csr(
        &key,
        vec![uri(&id.to_string()), uri(&other.to_string())],
        IsCa::NoCa,
    );
    let err = ica.sign_leaf(&two, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrUriSanCount { count: 2 }), "{err}");

    // No SAN at all.
    let none = custom_csr(&key, vec![], IsCa::NoCa);
    let err = ica.sign_leaf(&none, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrUriSanCount { count: 0 }), "{err}");

    // A DNS SAN next to the URI SAN.
    let dns = custom_csr(
        &key,
        vec![
            uri(&id.to_string()),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ],
        IsCa::NoCa,
    );
    let err = ica.sign_leaf(&dns, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrUnexpectedSan { .. }), "{err}");

    // Asks to be a CA.
    let ca = custom_csr(
        &key,
        vec![uri(&id.to_string())],
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let err = ica.sign_leaf(&ca, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrRequestsCa), "{err}");

    // Identity in another trust domain, both as authorized and as requested.
    let foreign = SpiffeId::workload("evil.example", "ns", "web").unwrap();
    let err = ica
        .sign_leaf(&key.leaf_csr(&foreign).unwrap(), &foreign, DAY)
        .unwrap_err();
    assert!(
        matches!(&err, Error::ForeignTrustDomain { found, .. } if found == "evil.example"),
        "{err}"
    );
    let err = ica
        .sign_leaf(&key.leaf_csr(&foreign).unwrap(), &id, DAY)
        .unwrap_err();
    assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");

    // Not a SPIFFE ID.
    let junk_uri = custom_csr(&key, vec![uri("https://example.com/x")], IsCa::NoCa);
    let err = ica.sign_leaf(&junk_uri, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::InvalidSpiffeId { .. }), "{err}");

    // Garbage in, error out (never a panic).
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        &root.cert_pem(),
    ] {
        let err = ica.sign_leaf(garbage, &id, DAY).unwrap_err();
        assert!(
            matches!(err, Error::CsrUnparsable { .. }),
            "{garbage:?}: {err}"
        );
    }
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::global_node(TD, "g0").unwrap();
    let pem = key.leaf_csr(&id).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // The last byte is inside the ECDSA signature's S integer: DER stays valid.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = crate::pem::encode_cert(&der).replace("CERTIFICATE", "CERTIFICATE REQUEST");
    let err = root.sign_leaf(&tampered, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrBadSignature), "{err}");
}

#[test]
fn zone_ca_stays_in_its_scope() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let ica = zone_ca(&root, "a");
    let key = KeyPair::generate().unwrap();
    for id in [
        SpiffeId::gateway(TD, "b").unwrap(),
        SpiffeId::zone_cp(TD, "b").unwrap(),
        SpiffeId::zone_ca(TD, "a").unwrap(),
        SpiffeId::global_node(TD, "g0").unwrap(),
        SpiffeId::admin(TD, "ops").unwrap(),
    ] {
        let err = ica
            .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DAY)
            .unwrap_err();
        assert!(
            matches!(err, Error::OutsideIssuerScope { .. }),
            "{id}: {err}"
        );
    }
    for id in [
        SpiffeId::gateway(TD, "a").unwrap(),
        SpiffeId::zone_cp(TD, "a").unwrap(),
        SpiffeId::workload(TD, "ns", "sa").unwrap(),
    ] {
        ica.sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DAY)
            .unwrap();
    }
    // The root may sign any zone's control plane directly (before the zone has a CA).
    let cp_b = SpiffeId::zone_cp(TD, "b").unwrap();
    root.sign_leaf(&key.leaf_csr(&cp_b).unwrap(), &cp_b, DAY)
        .unwrap();
}

#[test]
fn intermediate_csr_must_name_the_zone() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let key = KeyPair::generate().unwrap();
    let err = root
        .sign_intermediate(&key.intermediate_csr(TD, "a").unwrap(), "b", DAY)
        .unwrap_err();
    assert!(matches!(err, Error::CsrIdentityMismatch { .. }), "{err}");
    let leafy = key
        .leaf_csr(&SpiffeId::workload(TD, "ns", "sa").unwrap())
        .unwrap();
    assert!(root.sign_intermediate(&leafy, "a", DAY).is_err());
}

#[test]
fn root_from_pem_roundtrip_and_refusals() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let loaded = RootCa::from_pem(TD, &root.cert_pem(), &root.key_pem()).unwrap();
    assert_eq!(loaded.pin(), root.pin());
    // The loaded root signs certificates that chain to the original.
    let key = KeyPair::generate().unwrap();
    let inter = loaded
        .sign_intermediate(&key.intermediate_csr(TD, "a").unwrap(), "a", DAY)
        .unwrap();
    assert_eq!(&inter.chain[1], root.cert_der());

    // Mismatched key.
    let other = RootCa::generate(TD, DAY).unwrap();
    let err = RootCa::from_pem(TD, &root.cert_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");

    // Not a CA: a leaf certificate with its own key.
    let id = SpiffeId::global_node(TD, "g0").unwrap();
    let leaf = root
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DAY)
        .unwrap();
    let err = RootCa::from_pem(TD, &leaf.cert_pem, &key.to_pem()).unwrap_err();
    assert!(matches!(err, Error::NotACa { .. }), "{err}");

    // pathLen 0 root can not sign intermediates.
    let err = RootCa::from_pem(TD, &inter.cert_pem, &key.to_pem()).unwrap_err();
    assert!(matches!(err, Error::RootPathLenZero { .. }), "{err}");

    // Garbage.
    assert!(matches!(
        RootCa::from_pem(TD, "junk", &root.key_pem()),
        Err(Error::NoCertificate { .. })
    ));
    assert!(matches!(
        RootCa::from_pem(TD, &root.cert_pem(), "junk"),
        Err(Error::InvalidPrivateKey(_))
    ));
    assert!(RootCa::from_pem("Bad TD", &root.cert_pem(), &root.key_pem()).is_err());
}

#[test]
fn intermediate_from_pem_refusals() {
    let root = RootCa::generate(TD, DAY).unwrap();
    // The root itself has no zone CA SAN.
    let err = IntermediateCa::from_pem(&root.cert_pem(), &root.key_pem()).unwrap_err();
    assert!(matches!(err, Error::NotAZoneCa { .. }), "{err}");
    let key = KeyPair::generate().unwrap();
    let inter = root
        .sign_intermediate(&key.intermediate_csr(TD, "a").unwrap(), "a", DAY)
        .unwrap();
    let wrong_key = KeyPair::generate().unwrap();
    let err = IntermediateCa::from_pem(&inter.chain_pem, &wrong_key.to_pem()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
}

#[test]
fn csr_for_another_key_type_is_refused() {
    let root = RootCa::generate(TD, DAY).unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let id = SpiffeId::global_node(TD, "g0").unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(&id.to_string())];
    let csr = params.serialize_request(&p384).unwrap().pem().unwrap();
    let err = root.sign_leaf(&csr, &id, DAY).unwrap_err();
    assert!(matches!(err, Error::CsrUnsupportedKey { .. }), "{err}");
}

#[test]
fn absurd_validity_is_an_error_or_capped_never_a_panic() {
    let err = RootCa::generate(TD, Duration::from_secs(20_000 * 365 * 86400)).unwrap_err();
    assert!(matches!(err, Error::InvalidValidity { .. }), "{err}");
    let err = RootCa::generate(TD, Duration::MAX).unwrap_err();
    assert!(matches!(err, Error::InvalidValidity { .. }), "{err}");

    let root = RootCa::generate(TD, DAY).unwrap();
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::global_node(TD, "g0").unwrap();
    let leaf = root
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, Duration::MAX)
        .unwrap();
    assert_eq!(leaf.not_after, root.not_after());
}
