//! The data directory: the key (mode 0600), certificate chain and trust bundle an earlier run
//! left, so that a restart needs neither the token nor the zone.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::UnixTime;
use strait_trust::tls::{AllowExactly, CredentialStore, PeerRole, TrustStore, verify_peer};
use strait_trust::{SpiffeId, TrustBundle};

use crate::error::IdentityError;
use crate::renewal::renew_at;

/// File names under `data_dir`.
const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const BUNDLE_FILE: &str = "bundle.pem";

pub(crate) enum Persisted {
    /// A certificate for this identity, valid now, with its key and bundle.
    Usable {
        creds: CredentialStore,
        trust: TrustStore,
    },
    /// No usable certificate, but a bundle to verify the zone with.
    BundleOnly(TrustBundle),
    Nothing,
}

/// What an earlier run left in `dir`. Anything unreadable or not matching is logged and
/// ignored: the component bootstraps again.
pub(crate) fn load_persisted(dir: &Path, id: &SpiffeId, trust_domain: &str) -> Persisted {
    let bundle_path = dir.join(BUNDLE_FILE);
    if !bundle_path.exists() {
        return Persisted::Nothing;
    }
    let bundle = match strait_trust::store::read_cert(&bundle_path)
        .and_then(|pem| TrustBundle::from_pem(trust_domain, &pem))
    {
        Ok(bundle) => bundle,
        Err(err) => {
            tracing::warn!(%err, "ignoring the persisted trust bundle");
            return Persisted::Nothing;
        }
    };
    let loaded = (|| -> Result<Option<CredentialStore>, strait_trust::Error> {
        let key = strait_trust::store::read_key(&dir.join(KEY_FILE))?;
        let chain = strait_trust::store::read_cert(&dir.join(CERT_FILE))?;
        let creds = CredentialStore::from_pem(&chain, &key)?;
        let info = creds.cert_info();
        let usable = creds.identity() == *id
            && info.is_valid_at(SystemTime::now())
            && SystemTime::now() < renew_at(&info);
        Ok(usable.then_some(creds))
    })();
    match loaded {
        Ok(Some(creds)) => {
            // The chain must still verify against the bundle (a root may have been removed).
            let certified = creds.certified_key();
            let verifies = certified.cert.split_first().is_some_and(|(leaf, rest)| {
                verify_peer(
                    &bundle,
                    leaf,
                    rest,
                    UnixTime::now(),
                    PeerRole::Client,
                    &AllowExactly(vec![id.clone()]),
                    &strait_trust::tls::crypto_provider(),
                )
                .is_ok()
            });
            if verifies {
                Persisted::Usable {
                    creds,
                    trust: TrustStore::new(bundle),
                }
            } else {
                tracing::info!("the persisted certificate no longer verifies; bootstrapping again");
                Persisted::BundleOnly(bundle)
            }
        }
        Ok(None) => {
            tracing::info!(
                "the persisted certificate is expired, due for renewal or for another identity; bootstrapping again"
            );
            Persisted::BundleOnly(bundle)
        }
        Err(err) => {
            tracing::info!(%err, "no usable persisted certificate; bootstrapping again");
            Persisted::BundleOnly(bundle)
        }
    }
}

pub(crate) fn persist(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
    bundle: &TrustBundle,
) -> Result<(), IdentityError> {
    create_private_dir(dir)?;
    // Key first: a crash between the two leaves a pair that does not match, which the next
    // start detects (and bootstraps), never a key some other certificate is paired with.
    strait_trust::store::write_key(&dir.join(KEY_FILE), key_pem)?;
    strait_trust::store::write_cert(&dir.join(CERT_FILE), chain_pem)?;
    strait_trust::store::write_cert(&dir.join(BUNDLE_FILE), &bundle.to_pem())?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    strait_trust::store::create_private_dir(dir).map_err(|source| IdentityError::DataDir {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })
}
