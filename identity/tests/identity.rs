//! The identity client (as a sidecar uses it) against the zone crate's real workload CA, in-process over
//! Strait's mutual TLS: bootstrap by trust on first use or with a bundle file, refusals with
//! their reasons, restarts from the data directory, and renewal in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ZONE, Zone, settings};
use strait_identity::{Identity, IdentityError, IdentitySettings};
use strait_test_support::files::Files;
use strait_test_support::metrics::metric;
use strait_test_support::pki::{Pki, TD};
use strait_test_support::wait::PATIENCE;
use strait_trust::ca::DEFAULT_LEAF_VALIDITY;
use strait_trust::{CredentialStore, KeyPair, SpiffeId};

#[tokio::test]
async fn bootstrap_trusts_the_zone_on_first_use_and_restarts_from_disk() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let mut s = settings(&zone, &pki, &files, "echo");
    s.data_dir = Some(files.path("data"));

    let registry = prometheus::Registry::new();
    let identity = Identity::bootstrap(&s, &registry).await.unwrap();
    assert_eq!(
        identity.creds().identity().to_string(),
        "spiffe://strait.local/ns/demo/sa/echo"
    );
    assert_eq!(
        identity.trust().current().pins(),
        vec![pki.root.pin()],
        "the bundle the zone returned, holding the root it presented"
    );
    assert_eq!(zone.issued("bootstrap"), 1);
    let expiry = metric(
        &registry,
        "strait_sidecar_cert_expiry_timestamp_seconds",
        &[],
    );
    let not_after = identity.creds().cert_info().not_after;
    let want = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((expiry - want).abs() < 1.0, "{expiry} vs {want}");

    // Key 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let data = files.path("data");
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.join("key.pem")), 0o600);
    assert_eq!(mode(data.clone()), 0o700);

    // A restart finds the certificate: no token needed, nothing asked of the zone.
    std::fs::remove_file(&s.token_file).unwrap();
    let again = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap();
    assert_eq!(zone.issued("bootstrap"), 1);
    assert_eq!(
        again.creds().certified_key().cert[0],
        identity.creds().certified_key().cert[0]
    );
}

#[tokio::test]
async fn a_bundle_file_is_required_to_match() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let mut s = settings(&zone, &pki, &files, "echo");

    // Another federation's bundle: the zone is refused, nothing is sent to it.
    let other = Pki::new(&[ZONE]);
    s.bundle_file = Some(files.write("other.pem", &other.bundle_pem()));
    let err = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedZone { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("spiffe://strait.local/zone/a/cp"),
        "names who was expected: {text}"
    );
    assert_eq!(zone.issued("bootstrap"), 0);

    // The right bundle.
    s.bundle_file = Some(files.write("bundle.pem", &pki.bundle_pem()));
    let identity = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap();
    assert_eq!(identity.trust().current().pins(), vec![pki.root.pin()]);

    // A file that is not a bundle is a clear error.
    s.bundle_file = Some(files.write("garbage.pem", "hello"));
    let err = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::BundleFile { .. }), "{err}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
}

#[tokio::test]
async fn first_use_refuses_a_zone_that_is_not_the_expected_one() {
    let pki = Pki::new(&[ZONE]);
    let files = Files::new();

    // A chain without the root: nothing self-signed to trust.
    let id = SpiffeId::zone_cp(TD, ZONE).unwrap();
    let key = KeyPair::generate().unwrap();
    let issued = pki
        .zone(ZONE)
        .ca
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DEFAULT_LEAF_VALIDITY)
        .unwrap();
    let no_root = CredentialStore::new(issued.chain[..2].to_vec(), key.private_key_der()).unwrap();
    let zone = Zone::start_with(&pki, DEFAULT_LEAF_VALIDITY, no_root).await;
    let s = settings(&zone, &pki, &files, "echo");
    let err = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedZone { .. }), "{err}");
    assert!(err.to_string().contains("self-signed"), "{err}");
    drop(zone);

    // A server that is not zone a's control plane (here: a workload's certificate).
    let impostor = pki.workload(ZONE, "demo", "echo");
    let zone = Zone::start_with(&pki, DEFAULT_LEAF_VALIDITY, impostor).await;
    let s = settings(&zone, &pki, &files, "echo");
    let err = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedZone { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("spiffe://strait.local/ns/demo/sa/echo"),
        "{err}"
    );
    assert_eq!(zone.issued("bootstrap"), 0);
}

#[tokio::test]
async fn bad_tokens_are_clear_errors() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let mut s = settings(&zone, &pki, &files, "echo");
    let bootstrap = |s: IdentitySettings| async move {
        Identity::bootstrap(&s, &prometheus::Registry::new())
            .await
            .unwrap_err()
    };

    std::fs::write(&s.token_file, "stw1.garbage.garbage\n").unwrap();
    let err = bootstrap(s.clone()).await;
    match &err {
        IdentityError::Refused { code, message, .. } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert!(message.contains("bootstrap token refused"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(
        err.to_string().contains(&zone.addr()),
        "names the zone: {err}"
    );

    // Another zone's token.
    std::fs::write(&s.token_file, pki.token("demo", "echo", "b")).unwrap();
    let err = bootstrap(s.clone()).await;
    assert!(
        err.to_string().contains("is for zone \"b\""),
        "says which zone: {err}"
    );

    // Another federation's token.
    std::fs::write(&s.token_file, Pki::new(&[ZONE]).token("demo", "echo", ZONE)).unwrap();
    let err = bootstrap(s.clone()).await;
    assert!(err.to_string().contains("signature"), "{err}");

    // A token for another service than the one configured.
    std::fs::write(&s.token_file, pki.token("demo", "web", ZONE)).unwrap();
    let err = bootstrap(s.clone()).await;
    assert!(
        matches!(
            err,
            IdentityError::Refused {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ns/demo/sa/web"), "{err}");

    std::fs::write(&s.token_file, "  \n").unwrap();
    assert!(matches!(
        bootstrap(s.clone()).await,
        IdentityError::EmptyToken { .. }
    ));

    s.token_file = files.path("missing.token");
    let err = bootstrap(s.clone()).await;
    assert!(matches!(err, IdentityError::TokenFile { .. }), "{err}");
    assert!(err.to_string().contains("missing.token"), "{err}");
    assert_eq!(zone.issued("bootstrap"), 0);
}

#[tokio::test]
async fn renewal_swaps_the_certificate_in_place() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let mut s = settings(&zone, &pki, &files, "echo");
    s.data_dir = Some(files.path("data"));
    let registry = prometheus::Registry::new();
    let identity = Identity::bootstrap(&s, &registry).await.unwrap();
    // A handle taken before the renewal: the same store, so it sees the new certificate.
    let handle = identity.creds().clone();
    let before = handle.certified_key().cert[0].clone();

    // No token is needed: the renewal authenticates with the current certificate.
    std::fs::remove_file(&s.token_file).unwrap();
    identity.renew().await.unwrap();
    let after = handle.certified_key().cert[0].clone();
    assert_ne!(before, after, "a new certificate");
    assert_eq!(handle.identity(), *identity.id());
    assert_eq!(zone.issued("renewal"), 1);
    assert_eq!(
        metric(
            &registry,
            "strait_sidecar_cert_renewals_total",
            &[("result", "success")]
        ),
        1.0
    );
    // What a restart loads is the renewed certificate.
    let restarted = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap();
    assert_eq!(restarted.creds().certified_key().cert[0], after);

    // A zone that is gone: the failure is counted and reported, nothing is swapped.
    drop(zone);
    let err = identity.renew().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(handle.certified_key().cert[0], after);
    assert_eq!(
        metric(
            &registry,
            "strait_sidecar_cert_renewals_total",
            &[("result", "failure")]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_renewal_task_renews_short_certificates_before_they_expire() {
    let pki = Pki::new(&[ZONE]);
    // The zone's shortest lifetime.
    let zone = Zone::start(&pki, Duration::from_secs(12)).await;
    let files = Files::new();
    let s = settings(&zone, &pki, &files, "echo");
    let identity = Identity::bootstrap(&s, &prometheus::Registry::new())
        .await
        .unwrap();
    let first = identity.creds().cert_info();
    let task = tokio::spawn(identity.clone().run_renewal(std::future::pending::<()>()));

    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = identity.creds().cert_info();
        if now.not_after > first.not_after {
            assert!(
                std::time::SystemTime::now() < first.not_after,
                "renewed before the old certificate expired"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no renewal within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Renewed once, at 2/3 of its life, not in a loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(zone.issued("renewal"), 1);
    task.abort();
}
