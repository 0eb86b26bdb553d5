//! [`Identity::bootstrap`]: the first certificate, from the data directory or from the zone
//! with the token (see the crate docs for what the zone is trusted by), and the
//! `SignCertificate` call and reply checks that renewals use too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rustls_pki_types::{CertificateDer, UnixTime};
use strait_proto as pb;
use strait_trust::tls::{AllowExactly, CredentialStore, PeerRole, TrustStore, verify_peer};
use strait_trust::{KeyPair, SpiffeId, TrustBundle};

use crate::error::IdentityError;
use crate::identity::{Identity, IdentityMetrics};
use crate::renewal::Backoff;
use crate::settings::IdentitySettings;
use crate::store::{self, Persisted};
use crate::verifier::{ZoneVerifier, describe};

/// How long a connection to the zone control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one SignCertificate call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the bootstrap keeps retrying a zone that does not answer (it may be starting);
/// refusals are not retried.
const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(120);

/// What the zone's certificate is checked against on a bootstrap.
enum Anchor {
    /// A bundle from `bundle_file` or persisted by an earlier run.
    Bundle(TrustBundle),
    /// Trust on first use (see the crate docs).
    FirstUse,
}

impl Identity {
    /// Gets the certificate: loads it from `data_dir` when a usable one is there, otherwise
    /// bootstraps with the token (see the crate docs). Metrics are registered with
    /// `registry`.
    ///
    /// A zone that does not answer is retried for up to two minutes (it may be starting);
    /// refusals (a bad token, a zone that is not who it should be) fail at once.
    pub async fn bootstrap(
        settings: &IdentitySettings,
        registry: &Registry,
    ) -> Result<Self, IdentityError> {
        settings.validate()?;
        let id = settings.id.clone();
        let zone_cp_id = settings.zone_cp_id()?;
        let metrics = IdentityMetrics::new(registry, settings.metrics_prefix)?;

        let mut anchor = match &settings.bundle_file {
            Some(path) => Some(Anchor::Bundle(read_bundle_file(
                path,
                &settings.trust_domain,
            )?)),
            None => None,
        };
        if let Some(dir) = &settings.data_dir {
            match store::load_persisted(dir, &id, &settings.trust_domain) {
                Persisted::Usable { creds, trust } => {
                    tracing::info!(%id, dir = %dir.display(), not_after = ?creds.cert_info().not_after, "loaded the workload certificate from the data directory");
                    metrics.set_expiry(creds.cert_info().not_after);
                    return Ok(Identity::from_parts(
                        settings, id, zone_cp_id, creds, trust, metrics,
                    ));
                }
                Persisted::BundleOnly(bundle) => {
                    if anchor.is_none() {
                        anchor = Some(Anchor::Bundle(bundle));
                    }
                }
                Persisted::Nothing => {}
            }
        }
        let anchor = anchor.unwrap_or(Anchor::FirstUse);
        if matches!(anchor, Anchor::FirstUse) {
            tracing::info!(zone_cp = %settings.zone_cp, "no trust bundle yet: trusting the zone's root on first contact");
        }

        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        let (creds, trust) = loop {
            match bootstrap_once(settings, &id, &zone_cp_id, &anchor).await {
                Ok(pair) => break pair,
                Err(err) if err.is_transient() && start.elapsed() < BOOTSTRAP_PATIENCE => {
                    let pause = backoff.next_pause();
                    tracing::warn!(%err, retry_in = ?pause, "bootstrap failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        };
        metrics.set_expiry(creds.cert_info().not_after);
        Ok(Identity::from_parts(
            settings, id, zone_cp_id, creds, trust, metrics,
        ))
    }
}

async fn bootstrap_once(
    settings: &IdentitySettings,
    id: &SpiffeId,
    zone_cp_id: &SpiffeId,
    anchor: &Anchor,
) -> Result<(CredentialStore, TrustStore), IdentityError> {
    let token = read_token(&settings.token_file)?;
    let key = KeyPair::generate()?;
    let verifier = Arc::new(match anchor {
        Anchor::Bundle(bundle) => ZoneVerifier::known(bundle.clone(), zone_cp_id),
        Anchor::FirstUse => ZoneVerifier::first_use(&settings.trust_domain, zone_cp_id),
    });
    let tls = no_client_auth_config(verifier.clone())?;
    let (reply, verifier_root) = sign_certificate(
        &settings.zone_cp,
        tls,
        Some(verifier.as_ref()),
        pb::SignCertificateRequest {
            csr_pem: key.leaf_csr(id)?,
            credential: Some(settings.token_kind.credential(token)),
            requested_spiffe_id: id.to_string(),
        },
        zone_cp_id,
    )
    .await?;
    let checked = match anchor {
        Anchor::Bundle(bundle) => check_reply(&settings.zone_cp, id, &reply, bundle, None)?,
        Anchor::FirstUse => {
            let root = verifier_root.ok_or_else(|| IdentityError::BadResponse {
                zone_cp: settings.zone_cp.clone(),
                reason: "no root was recorded from the zone's handshake".to_owned(),
            })?;
            let pinned = TrustBundle::from_der(&settings.trust_domain, [root.clone()])?;
            check_reply(&settings.zone_cp, id, &reply, &pinned, Some(&root))?
        }
    };
    let key_pem = key.to_pem();
    let creds = CredentialStore::from_pem(&checked.chain_pem, &key_pem)?;
    tracing::info!(%id, not_after = ?creds.cert_info().not_after, roots = ?checked.bundle.pins(), "workload certificate issued");
    if let Some(dir) = &settings.data_dir
        && let Err(err) = store::persist(dir, &key_pem, &checked.chain_pem, &checked.bundle)
    {
        tracing::warn!(%err, "the certificate could not be saved; a restart will bootstrap again");
    }
    Ok((creds, TrustStore::new(checked.bundle)))
}

pub(crate) fn read_token(path: &Path) -> Result<String, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(IdentityError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_owned())
}

fn read_bundle_file(path: &Path, trust_domain: &str) -> Result<TrustBundle, IdentityError> {
    let bundle_err = |source| IdentityError::BundleFile {
        path: path.to_path_buf(),
        source,
    };
    let pem = strait_trust::store::read_cert(path).map_err(bundle_err)?;
    TrustBundle::from_pem(trust_domain, &pem).map_err(bundle_err)
}

/// A client config without a certificate (there is none yet, or it expired) that checks the
/// zone with `verifier`.
pub(crate) fn no_client_auth_config(
    verifier: Arc<ZoneVerifier>,
) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    let mut config =
        rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(strait_trust::Error::from)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Calls `SignCertificate`; returns the reply and, for a first-use verifier, the root it
/// accepted. Failures name the zone, and a handshake the verifier refused says why.
pub(crate) async fn sign_certificate(
    zone_cp: &str,
    tls: Arc<rustls::ClientConfig>,
    verifier: Option<&ZoneVerifier>,
    request: pb::SignCertificateRequest,
    expected: &SpiffeId,
) -> Result<(pb::SignCertificateResponse, Option<CertificateDer<'static>>), IdentityError> {
    let channel = strait_proto::transport::channel(zone_cp, tls, CONNECT_TIMEOUT);
    let mut client = pb::identity_client::IdentityClient::new(channel);
    let mut request = tonic::Request::new(request);
    request.set_timeout(CALL_TIMEOUT);
    let result = tokio::time::timeout(
        CALL_TIMEOUT + CONNECT_TIMEOUT,
        client.sign_certificate(request),
    )
    .await;
    let refusal = verifier.and_then(ZoneVerifier::refusal);
    match result {
        Ok(Ok(reply)) => Ok((reply.into_inner(), verifier.and_then(ZoneVerifier::root))),
        _ if refusal.is_some() => Err(IdentityError::UntrustedZone {
            zone_cp: zone_cp.to_owned(),
            expected: expected.to_string(),
            reason: refusal.unwrap_or_default(),
        }),
        Ok(Err(status)) => Err(IdentityError::from_status(zone_cp, &status)),
        Err(_) => Err(IdentityError::Unreachable {
            zone_cp: zone_cp.to_owned(),
            message: format!("no answer within {:?}", CALL_TIMEOUT + CONNECT_TIMEOUT),
        }),
    }
}

/// A reply whose chain is this component's identity and verifies, with the bundle to use.
pub(crate) struct CheckedReply {
    pub(crate) chain_pem: String,
    pub(crate) bundle: TrustBundle,
}

/// Checks a `SignCertificate` reply: the leaf is `id`, the chain verifies against `anchor` (as
/// both a client and a server certificate: a sidecar is both), the returned bundle verifies
/// it too and shares a root with `anchor` (contains `pinned` when trusting on first use).
pub(crate) fn check_reply(
    zone_cp: &str,
    id: &SpiffeId,
    reply: &pb::SignCertificateResponse,
    anchor: &TrustBundle,
    pinned: Option<&CertificateDer<'static>>,
) -> Result<CheckedReply, IdentityError> {
    let bad = |reason: String| IdentityError::BadResponse {
        zone_cp: zone_cp.to_owned(),
        reason,
    };
    if let Some(error) = &reply.error {
        return Err(bad(format!(
            "the reply carries an error: {}",
            error.message
        )));
    }
    let chain = strait_trust::pem::parse_certs(&reply.cert_chain_pem, "returned chain")
        .map_err(|e| bad(e.to_string()))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(bad("the returned chain is empty".to_owned()));
    };
    let bundle = TrustBundle::from_pem(anchor.trust_domain(), &reply.trust_bundle_pem)
        .map_err(|e| bad(format!("the returned trust bundle: {e}")))?;
    let provider = strait_trust::tls::crypto_provider();
    let only_me = AllowExactly(vec![id.clone()]);
    let now = UnixTime::now();
    for (what, against) in [("the trusted roots", anchor), ("its own bundle", &bundle)] {
        for role in [PeerRole::Client, PeerRole::Server] {
            verify_peer(against, leaf, intermediates, now, role, &only_me, &provider).map_err(
                |e| {
                    bad(format!(
                        "the returned certificate does not verify against {what} ({role:?}): {}",
                        describe(&e)
                    ))
                },
            )?;
        }
    }
    match pinned {
        Some(root) if !bundle.roots().contains(root) => {
            return Err(bad(
                "the returned trust bundle does not contain the root the zone presented".to_owned(),
            ));
        }
        Some(_) => {}
        None => {
            if !bundle.roots().iter().any(|r| anchor.roots().contains(r)) {
                return Err(bad(
                    "the returned trust bundle shares no root with the trusted one".to_owned(),
                ));
            }
        }
    }
    Ok(CheckedReply {
        chain_pem: reply.cert_chain_pem.clone(),
        bundle,
    })
}
