//! Real TLS handshakes over loopback (tokio-rustls on 127.0.0.1:0) for every rule the trust
//! core enforces: each case asserts who was accepted, which identity each side saw, or the
//! specific reason for a refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use strait_trust::ca::{DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY};
use strait_trust::tls::{authorize_fn, server_config_optional_client_auth};
use strait_trust::{
    AllowAny, AllowExactly, Authorize, CredentialStore, IntermediateCa, IssuedCert, KeyPair,
    PeerIdentity, RootCa, SpiffeId, TrustBundle, TrustStore, client_config, peer_identity,
    pinned_client_config, server_config,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "strait.local";
const YEAR: Duration = Duration::from_secs(365 * 86400);
const HOUR: Duration = Duration::from_secs(3600);

// === fixtures ===

/// A zone CA together with its key, so tests can also sign with it behind the library's back.
struct Zone {
    ca: IntermediateCa,
    cert_pem: String,
    key_pem: String,
}

fn zone(root: &RootCa, name: &str) -> Zone {
    let key = KeyPair::generate().unwrap();
    let issued = root
        .sign_intermediate(
            &key.intermediate_csr(TD, name).unwrap(),
            name,
            DEFAULT_INTERMEDIATE_VALIDITY,
        )
        .unwrap();
    Zone {
        ca: IntermediateCa::from_pem(&issued.chain_pem, &key.to_pem()).unwrap(),
        cert_pem: issued.cert_pem,
        key_pem: key.to_pem(),
    }
}

/// A leaf for `id` from `zone`, valid from `now`, as credentials.
fn creds_at(zone: &Zone, id: &SpiffeId, now: SystemTime) -> (CredentialStore, IssuedCert) {
    let key = KeyPair::generate().unwrap();
    let issued = zone
        .ca
        .sign_leaf_at(&key.leaf_csr(id).unwrap(), id, DEFAULT_LEAF_VALIDITY, now)
        .unwrap();
    let creds = CredentialStore::new(issued.chain.clone(), key.private_key_der()).unwrap();
    (creds, issued)
}

fn creds(zone: &Zone, id: &SpiffeId) -> CredentialStore {
    creds_at(zone, id, SystemTime::now()).0
}

fn root_creds(root: &RootCa, id: &SpiffeId) -> CredentialStore {
    let key = KeyPair::generate().unwrap();
    let issued = root
        .sign_leaf(&key.leaf_csr(id).unwrap(), id, DEFAULT_LEAF_VALIDITY)
        .unwrap();
    CredentialStore::new(issued.chain, key.private_key_der()).unwrap()
}

fn trust(roots: &[&RootCa]) -> TrustStore {
    TrustStore::new(TrustBundle::from_der(TD, roots.iter().map(|r| r.cert_der().clone())).unwrap())
}

fn gateway(z: &str) -> SpiffeId {
    SpiffeId::gateway(TD, z).unwrap()
}

fn workload(sa: &str) -> SpiffeId {
    SpiffeId::workload(TD, "shop", sa).unwrap()
}

fn alpn() -> Vec<Vec<u8>> {
    vec![b"strait-test".to_vec()]
}

fn server(
    creds: &CredentialStore,
    trust: &TrustStore,
    authz: impl Authorize + 'static,
) -> Arc<ServerConfig> {
    Arc::new(server_config(creds, trust, Arc::new(authz), alpn()).unwrap())
}

fn client(
    creds: &CredentialStore,
    trust: &TrustStore,
    authz: impl Authorize + 'static,
) -> Arc<ClientConfig> {
    Arc::new(client_config(creds, trust, Arc::new(authz), alpn()).unwrap())
}

/// A certificate made with rcgen directly, signed by `issuer_cert_pem`/`issuer_key_pem`:
/// what a compromised or misbehaving CA could produce.
fn forge(
    issuer_cert_pem: &str,
    issuer_key_pem: &str,
    uri: Option<&str>,
    is_ca: IsCa,
) -> (CertificateDer<'static>, rcgen::KeyPair) {
    let issuer_key = rcgen::KeyPair::from_pem(issuer_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(issuer_cert_pem, issuer_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    if matches!(is_ca, IsCa::Ca(_)) {
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    params.is_ca = is_ca;
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.der().clone(), key)
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    strait_trust::pem::encode_cert(der)
}

fn forged_creds(chain: Vec<CertificateDer<'static>>, key: &rcgen::KeyPair) -> CredentialStore {
    let key = KeyPair::from_pem(&key.serialize_pem()).unwrap();
    CredentialStore::new(chain, key.private_key_der()).unwrap()
}

/// Records the `PeerIdentity` the verifier handed to the hook, and allows everyone.
#[derive(Debug, Default, Clone)]
struct Recorder(Arc<Mutex<Vec<PeerIdentity>>>);

impl Authorize for Recorder {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        self.0.lock().unwrap().push(peer.clone());
        Ok(())
    }
}

// === the harness ===

/// What one side saw of the other.
#[derive(Debug)]
struct Seen {
    id: SpiffeId,
    leaf: CertificateDer<'static>,
}

#[derive(Debug)]
struct Outcome {
    /// `None` inside: the client sent no certificate (only possible with the join config).
    server: io::Result<Option<Seen>>,
    client: io::Result<Seen>,
}

fn seen(certs: Option<&[CertificateDer<'static>]>) -> io::Result<Seen> {
    let certs = certs.unwrap_or_default();
    let id = peer_identity(certs).map_err(io::Error::other)?;
    Ok(Seen {
        id,
        leaf: certs[0].clone(),
    })
}

/// One handshake: a server on 127.0.0.1:0 accepts one connection, reports the client's
/// identity and sends "hello"; the client reads it and reports the server's identity.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let seen = match tls.get_ref().1.peer_certificates() {
            Some(certs) => Some(seen(Some(certs))?),
            None => None,
        };
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(seen)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("strait").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let seen = seen(tls.get_ref().1.peer_certificates())?;
        // In TLS 1.3 the client finishes before the server has checked the client's
        // certificate; reading makes the server's verdict reach the client.
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        Ok::<_, io::Error>(seen)
    };
    let deadline = Duration::from_secs(20);
    let client = tokio::time::timeout(deadline, client_side)
        .await
        .expect("client side hung");
    let server = tokio::time::timeout(deadline, server_task)
        .await
        .expect("server side hung")
        .expect("server task panicked");
    Outcome { server, client }
}

fn tls_error<T: std::fmt::Debug>(r: &io::Result<T>) -> &rustls::Error {
    let e = r.as_ref().expect_err("expected a refusal");
    e.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
}

/// The refusal as a user would log it: Strait's own error's text when it is one of ours,
/// otherwise the rustls error's.
fn error_text<T: std::fmt::Debug>(r: &io::Result<T>) -> String {
    let e = tls_error(r);
    match strait_trust::tls::refusal(e) {
        Some(ours) => ours.to_string(),
        None => e.to_string(),
    }
}

/// The identity the server saw of its client.
fn client_identity_seen_by_server(out: &Outcome) -> SpiffeId {
    let seen = out.server.as_ref().expect("server refused");
    seen.as_ref().expect("client sent a certificate").id.clone()
}

fn install_nothing() {
    // The library passes ring explicitly; no process-wide default provider is installed,
    // which is what these tests prove by never installing one.
}

// === the cases ===

#[tokio::test]
async fn good_chain_is_accepted_both_ways() {
    install_nothing();
    let root = RootCa::generate(TD, YEAR).unwrap();
    let (a, b) = (zone(&root, "a"), zone(&root, "b"));
    let trust = trust(&[&root]);
    let server_creds = creds(&a, &gateway("a"));
    let client_creds = creds(&b, &workload("cart"));
    let server_hook = Recorder::default();
    let client_hook = Recorder::default();

    let out = handshake(
        server(&server_creds, &trust, server_hook.clone()),
        client(&client_creds, &trust, client_hook.clone()),
    )
    .await;

    assert_eq!(client_identity_seen_by_server(&out), workload("cart"));
    assert_eq!(out.client.unwrap().id, gateway("a"));
    // The hook got the issuing zone too: a workload from zone b, a gateway from zone a.
    assert_eq!(
        server_hook.0.lock().unwrap().as_slice(),
        [PeerIdentity {
            id: workload("cart"),
            issuer_zone: Some("b".to_owned())
        }]
    );
    assert_eq!(
        client_hook.0.lock().unwrap().as_slice(),
        [PeerIdentity {
            id: gateway("a"),
            issuer_zone: Some("a".to_owned())
        }]
    );
}

#[tokio::test]
async fn root_signed_leaf_is_accepted_with_no_issuer_zone() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    let global = SpiffeId::global_node(TD, "g0").unwrap();
    let server_hook = Recorder::default();
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, server_hook.clone()),
        client(&root_creds(&root, &global), &trust, AllowAny),
    )
    .await;
    assert_eq!(client_identity_seen_by_server(&out), global);
    assert_eq!(server_hook.0.lock().unwrap()[0].issuer_zone, None);
}

#[tokio::test]
async fn certificate_from_another_root_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let other_root = RootCa::generate(TD, YEAR).unwrap();
    let (a, stranger) = (zone(&root, "a"), zone(&other_root, "a"));
    let trust = trust(&[&root]);

    // A client from the other root: the server refuses it.
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(&creds(&stranger, &workload("cart")), &trust, AllowAny),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.server
    );
    assert!(out.client.is_err(), "the client gets the server's alert");

    // A server from the other root: the client refuses it.
    let out = handshake(
        server(&creds(&stranger, &gateway("a")), &trust, AllowAny),
        client(&creds(&a, &workload("cart")), &trust, AllowAny),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.client),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.client
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn expired_leaf_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    // Issued two days ago for 24 hours.
    let (old, issued) = creds_at(&a, &workload("cart"), SystemTime::now() - 48 * HOUR);
    assert!(issued.not_after < SystemTime::now());
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(&old, &trust, AllowAny),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{:?}",
        out.server
    );
}

#[tokio::test]
async fn not_yet_valid_leaf_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    // Issued "in two hours": well past the one-minute skew allowance.
    let (future, _) = creds_at(&a, &workload("cart"), SystemTime::now() + 2 * HOUR);
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(&future, &trust, AllowAny),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
        ),
        "{:?}",
        out.server
    );
}

#[tokio::test]
async fn leaf_used_as_a_ca_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    // A genuine leaf (CA:false) whose key signs another leaf.
    let leaf_key = KeyPair::generate().unwrap();
    let id = workload("cart");
    let leaf =
        a.ca.sign_leaf(&leaf_key.leaf_csr(&id).unwrap(), &id, DEFAULT_LEAF_VALIDITY)
            .unwrap();
    let (forged, forged_key) = forge(
        &leaf.cert_pem,
        &leaf_key.to_pem(),
        Some("spiffe://strait.local/ns/shop/sa/admin"),
        IsCa::ExplicitNoCa,
    );
    let mut chain = vec![forged];
    chain.extend(leaf.chain.iter().cloned());
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(&forged_creds(chain, &forged_key), &trust, AllowAny),
    )
    .await;
    let text = error_text(&out.server);
    assert!(text.contains("EndEntityUsedAsCa"), "{text}");
}

#[tokio::test]
async fn ca_beyond_its_path_length_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    // Zone a's intermediate (pathLen 0) signs a sub-CA, which signs the leaf.
    let (sub_ca, sub_key) = forge(
        &a.cert_pem,
        &a.key_pem,
        None,
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let (leaf, leaf_key) = forge(
        &pem_of(&sub_ca),
        &sub_key.serialize_pem(),
        Some("spiffe://strait.local/ns/shop/sa/cart"),
        IsCa::ExplicitNoCa,
    );
    let chain = vec![
        leaf,
        sub_ca,
        a.ca.issuer().cert_der().clone(),
        root.cert_der().clone(),
    ];
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(&forged_creds(chain, &leaf_key), &trust, AllowAny),
    )
    .await;
    let text = error_text(&out.server);
    assert!(text.contains("PathLenConstraintViolated"), "{text}");
}

#[tokio::test]
async fn wrong_identity_is_refused_with_the_authorizers_reason() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);

    // Server side: only `checkout` may connect; `cart` tries.
    let out = handshake(
        server(
            &creds(&a, &gateway("a")),
            &trust,
            AllowExactly(vec![workload("checkout")]),
        ),
        client(&creds(&a, &workload("cart")), &trust, AllowAny),
    )
    .await;
    let text = error_text(&out.server);
    assert!(
        text.contains("peer spiffe://strait.local/ns/shop/sa/cart is not authorized")
            && text.contains("not one of the allowed identities"),
        "{text}"
    );

    // Client side: dials zone b's gateway, gets zone a's.
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        client(
            &creds(&a, &workload("cart")),
            &trust,
            authorize_fn(|p: &PeerIdentity| {
                if p.id == gateway("b") {
                    Ok(())
                } else {
                    Err(format!("dialed zone b's gateway, got {}", p.id))
                }
            }),
        ),
    )
    .await;
    let text = error_text(&out.client);
    assert!(
        text.contains("dialed zone b's gateway, got spiffe://strait.local/zone/a/gateway"),
        "{text}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    // The pinned config sends no client certificate.
    let anonymous = pinned_client_config(TD, &root.pin(), Arc::new(AllowAny), alpn()).unwrap();
    let out = handshake(
        server(&creds(&a, &gateway("a")), &trust, AllowAny),
        Arc::new(anonymous),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::NoCertificatesPresented
        ),
        "{:?}",
        out.server
    );
}

#[tokio::test]
async fn tampered_certificate_is_refused() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    let key = KeyPair::generate().unwrap();
    let id = workload("cart");
    let leaf =
        a.ca.sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DEFAULT_LEAF_VALIDITY)
            .unwrap();

    // Offsets: the last byte lies in the signature; byte 16 in the TBS serial number
    // (30 82 LL LL | 30 82 LL LL | A0 03 02 01 02 | 02 10 <serial>). Both keep the DER valid.
    let serial_tag = leaf.cert_der[13..15].to_vec();
    assert_eq!(
        serial_tag,
        [0x02, 0x10],
        "serial where this test expects it"
    );
    for offset in [leaf.cert_der.len() - 1, 16] {
        let mut der = leaf.cert_der.to_vec();
        der[offset] ^= 0x01;
        let mut chain = leaf.chain.clone();
        chain[0] = CertificateDer::from(der);
        let tampered = CredentialStore::new(chain, key.private_key_der()).unwrap();
        let out = handshake(
            server(&creds(&a, &gateway("a")), &trust, AllowAny),
            client(&tampered, &trust, AllowAny),
        )
        .await;
        assert!(
            matches!(
                tls_error(&out.server),
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "offset {offset}: {:?}",
            out.server
        );
    }
}

#[tokio::test]
async fn root_rotation_at_runtime() {
    let old_root = RootCa::generate(TD, YEAR).unwrap();
    let new_root = RootCa::generate(TD, YEAR).unwrap();
    let (old_a, new_a) = (zone(&old_root, "a"), zone(&new_root, "a"));
    // Both sides trust both roots during the rotation.
    let server_trust = trust(&[&old_root, &new_root]);
    let client_trust = trust(&[&old_root, &new_root]);
    let server_creds = creds(&new_a, &gateway("a"));
    let server_cfg = server(&server_creds, &server_trust, AllowAny);
    let old_client = client(&creds(&old_a, &workload("old")), &client_trust, AllowAny);
    let new_client = client(&creds(&new_a, &workload("new")), &client_trust, AllowAny);

    let out = handshake(server_cfg.clone(), old_client.clone()).await;
    assert_eq!(client_identity_seen_by_server(&out), workload("old"));
    let out = handshake(server_cfg.clone(), new_client.clone()).await;
    assert_eq!(client_identity_seen_by_server(&out), workload("new"));

    // The old root leaves the server's bundle; the configs are not rebuilt.
    let removed = server_trust
        .update(|b| b.remove(old_root.cert_der()))
        .unwrap();
    assert!(removed);
    assert!(!server_trust.current().contains_pin(&old_root.pin()));

    let out = handshake(server_cfg.clone(), old_client).await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.server
    );
    let out = handshake(server_cfg, new_client).await;
    assert_eq!(client_identity_seen_by_server(&out), workload("new"));
}

#[tokio::test]
async fn zone_ca_can_not_mint_other_zones_or_global_identities() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let (a, b) = (zone(&root, "a"), zone(&root, "b"));
    let trust = trust(&[&root]);
    let server_creds = creds(&b, &gateway("b"));

    // Zone a's CA, compromised, mints zone b's gateway, zone b's control plane and a
    // global node.
    for (uri, want) in [
        (
            "spiffe://strait.local/zone/b/gateway",
            "a zone identity must be issued by that zone's own CA or by the root",
        ),
        (
            "spiffe://strait.local/zone/b/cp",
            "a zone identity must be issued by that zone's own CA or by the root",
        ),
        (
            "spiffe://strait.local/global/g0",
            "global node and admin identities must be issued by the root CA",
        ),
    ] {
        let (leaf, key) = forge(&a.cert_pem, &a.key_pem, Some(uri), IsCa::ExplicitNoCa);
        let chain = vec![
            leaf,
            a.ca.issuer().cert_der().clone(),
            root.cert_der().clone(),
        ];
        let out = handshake(
            server(&server_creds, &trust, AllowAny),
            client(&forged_creds(chain, &key), &trust, AllowAny),
        )
        .await;
        let text = error_text(&out.server);
        assert!(
            text.contains(want) && text.contains("the CA of zone \"a\""),
            "{uri}: {text}"
        );
    }

    // Zone b's own CA issuing zone b's gateway is fine (control).
    let out = handshake(
        server(&server_creds, &trust, AllowAny),
        client(&creds(&b, &gateway("b")), &trust, AllowAny),
    )
    .await;
    assert_eq!(client_identity_seen_by_server(&out), gateway("b"));
}

#[tokio::test]
async fn pinned_client_config_checks_the_pin() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let global = SpiffeId::global_node(TD, "g0").unwrap();
    let global_creds = root_creds(&root, &global);
    let join_server = Arc::new(
        server_config_optional_client_auth(
            &global_creds,
            &trust(&[&root]),
            Arc::new(AllowAny),
            alpn(),
        )
        .unwrap(),
    );
    let expect_global: Arc<dyn Authorize> = Arc::new(AllowExactly(vec![global.clone()]));

    // Right pin: accepted, and the client saw global's identity.
    let joining = pinned_client_config(TD, &root.pin(), expect_global.clone(), alpn()).unwrap();
    let out = handshake(join_server.clone(), Arc::new(joining)).await;
    assert_eq!(out.client.unwrap().id, global);
    assert!(
        out.server.unwrap().is_none(),
        "the joiner sent no certificate"
    );

    // Wrong pin (another root's): refused, and the error names the pin.
    let other = RootCa::generate(TD, YEAR).unwrap();
    let joining = pinned_client_config(TD, &other.pin(), expect_global.clone(), alpn()).unwrap();
    let out = handshake(join_server.clone(), Arc::new(joining)).await;
    let text = error_text(&out.client);
    assert!(
        text.contains("no certificate in the server's chain matches pin")
            && text.contains(&other.pin()),
        "{text}"
    );

    // Right pin but the server is not who the join expects.
    let joining = pinned_client_config(
        TD,
        &root.pin(),
        Arc::new(AllowExactly(vec![SpiffeId::global_node(TD, "g1").unwrap()])),
        alpn(),
    )
    .unwrap();
    let out = handshake(join_server, Arc::new(joining)).await;
    assert!(error_text(&out.client).contains("is not authorized"));

    // A malformed pin is refused when building the config.
    assert!(pinned_client_config(TD, "sha256:nothex", expect_global, alpn()).is_err());
}

#[tokio::test]
async fn credential_swap_takes_effect_on_the_next_handshake() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let trust = trust(&[&root]);
    let (server_creds, first) = creds_at(&a, &gateway("a"), SystemTime::now());
    let server_cfg = server(&server_creds, &trust, AllowAny);
    let client_cfg = client(&creds(&a, &workload("cart")), &trust, AllowAny);

    let out = handshake(server_cfg.clone(), client_cfg.clone()).await;
    assert_eq!(out.client.unwrap().leaf, first.cert_der);

    // Renewal: a new key and certificate, swapped in without rebuilding the config.
    let key = KeyPair::generate().unwrap();
    let renewed =
        a.ca.sign_leaf(
            &key.leaf_csr(&gateway("a")).unwrap(),
            &gateway("a"),
            DEFAULT_LEAF_VALIDITY,
        )
        .unwrap();
    server_creds
        .replace_pem(&renewed.chain_pem, &key.to_pem())
        .unwrap();

    let out = handshake(server_cfg, client_cfg).await;
    let seen = out.client.unwrap();
    assert_eq!(seen.leaf, renewed.cert_der);
    assert_ne!(seen.leaf, first.cert_der);
    assert_eq!(seen.id, gateway("a"));
}

#[test]
fn credential_store_refuses_mismatched_key_and_non_spiffe_leaf() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let a = zone(&root, "a");
    let key = KeyPair::generate().unwrap();
    let other_key = KeyPair::generate().unwrap();
    let issued =
        a.ca.sign_leaf(&key.leaf_csr(&workload("x")).unwrap(), &workload("x"), HOUR)
            .unwrap();
    let err = CredentialStore::new(issued.chain.clone(), other_key.private_key_der()).unwrap_err();
    assert!(
        matches!(err, strait_trust::Error::KeyMismatch { .. }),
        "{err}"
    );

    let store = CredentialStore::new(issued.chain, key.private_key_der()).unwrap();
    assert_eq!(store.identity(), workload("x"));
    assert!(!store.needs_renewal(SystemTime::now()));
    assert!(store.needs_renewal(SystemTime::now() + HOUR));

    // A leaf with no URI SAN can not be a Strait credential.
    let (bare, bare_key) = forge(&a.cert_pem, &a.key_pem, None, IsCa::ExplicitNoCa);
    let key = KeyPair::from_pem(&bare_key.serialize_pem()).unwrap();
    let err = CredentialStore::new(vec![bare], key.private_key_der()).unwrap_err();
    assert!(
        matches!(err, strait_trust::Error::PeerUriSanCount { count: 0 }),
        "{err}"
    );
    assert!(peer_identity(&[]).is_err());
}

#[tokio::test]
async fn optional_client_auth_still_verifies_presented_certificates() {
    let root = RootCa::generate(TD, YEAR).unwrap();
    let other_root = RootCa::generate(TD, YEAR).unwrap();
    let (a, stranger) = (zone(&root, "a"), zone(&other_root, "a"));
    let trust = trust(&[&root]);
    let global = SpiffeId::global_node(TD, "g0").unwrap();
    let server_cfg = Arc::new(
        server_config_optional_client_auth(
            &root_creds(&root, &global),
            &trust,
            Arc::new(AllowAny),
            alpn(),
        )
        .unwrap(),
    );
    // A valid certificate: verified and visible.
    let out = handshake(
        server_cfg.clone(),
        client(&creds(&a, &workload("cart")), &trust, AllowAny),
    )
    .await;
    assert_eq!(client_identity_seen_by_server(&out), workload("cart"));
    // An invalid certificate is refused, not treated as "no certificate".
    let out = handshake(
        server_cfg,
        client(&creds(&stranger, &workload("cart")), &trust, AllowAny),
    )
    .await;
    assert!(
        matches!(
            tls_error(&out.server),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.server
    );
}
