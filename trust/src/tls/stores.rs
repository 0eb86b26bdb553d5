//! Runtime-replaceable trust and credentials. Configs built once hold these handles; replacing
//! what is inside takes effect on the next handshake, so a root rotation or a renewed leaf
//! never needs a config rebuilt or a listener restarted. Established connections keep the
//! credentials they were made with.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::bundle::TrustBundle;
use crate::cert_info::{CertInfo, leaf_spiffe_id};
use crate::error::{Error, Result};
use crate::spiffe::SpiffeId;

// === impl TrustStore ===

/// A shared, replaceable [`TrustBundle`]. Cloning is cheap and every clone sees replacements.
#[derive(Clone)]
pub struct TrustStore {
    inner: Arc<RwLock<Arc<TrustBundle>>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.current();
        f.debug_struct("TrustStore")
            .field("trust_domain", &b.trust_domain())
            .field("roots", &b.pins())
            .finish()
    }
}

impl TrustStore {
    pub fn new(bundle: TrustBundle) -> Self {
        TrustStore {
            inner: Arc::new(RwLock::new(Arc::new(bundle))),
        }
    }

    /// The bundle in force now. Handshakes take a snapshot, so a replacement never changes
    /// the rules half-way through one.
    pub fn current(&self) -> Arc<TrustBundle> {
        // A poisoned lock only means a writer panicked; the value is a whole `Arc` swapped in
        // one assignment, so it is never half-written.
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn trust_domain(&self) -> String {
        self.current().trust_domain().to_owned()
    }

    /// Replaces the bundle. The trust domain can not change: every identity check hangs on it.
    pub fn replace(&self, bundle: TrustBundle) -> Result<()> {
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if guard.trust_domain() != bundle.trust_domain() {
            return Err(Error::ForeignTrustDomain {
                id: format!("trust bundle of {}", bundle.trust_domain()),
                found: bundle.trust_domain().to_owned(),
                expected: guard.trust_domain().to_owned(),
            });
        }
        *guard = Arc::new(bundle);
        Ok(())
    }

    /// Changes the bundle in place (for example adds or removes one root), atomically with
    /// respect to other updates. Nothing changes if `f` fails.
    pub fn update<R>(&self, f: impl FnOnce(&mut TrustBundle) -> Result<R>) -> Result<R> {
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = TrustBundle::clone(&guard);
        let r = f(&mut next)?;
        if next.trust_domain() != guard.trust_domain() {
            return Err(Error::ForeignTrustDomain {
                id: "updated trust bundle".to_owned(),
                found: next.trust_domain().to_owned(),
                expected: guard.trust_domain().to_owned(),
            });
        }
        *guard = Arc::new(next);
        Ok(r)
    }
}

// === impl CredentialStore ===

struct Credentials {
    certified: Arc<CertifiedKey>,
    id: SpiffeId,
    info: CertInfo,
}

/// A shared, replaceable leaf certificate chain and private key, used as the certificate of
/// both TLS servers and clients. Cloning is cheap and every clone sees replacements.
#[derive(Clone)]
pub struct CredentialStore {
    inner: Arc<RwLock<Arc<Credentials>>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.current();
        f.debug_struct("CredentialStore")
            .field("id", &c.id.to_string())
            .field("not_after", &c.info.not_after)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// `chain` is the leaf first, then its issuers (see [`crate::ca::IssuedCert::chain`]).
    /// The leaf must carry one SPIFFE ID and match `key`.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self> {
        let provider = super::crypto_provider();
        let creds = build(chain, key, &provider)?;
        Ok(CredentialStore {
            inner: Arc::new(RwLock::new(Arc::new(creds))),
            provider,
        })
    }

    /// From the PEM chain and the PKCS#8 PEM key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let (chain, key) = parse_pem(chain_pem, key_pem)?;
        Self::new(chain, key)
    }

    /// Swaps in a renewed certificate and key; the next handshake uses them.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<()> {
        let creds = build(chain, key, &self.provider)?;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(creds);
        Ok(())
    }

    /// [`CredentialStore::replace`] from PEM.
    pub fn replace_pem(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        let (chain, key) = parse_pem(chain_pem, key_pem)?;
        self.replace(chain, key)
    }

    /// The certificate and key in use now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().certified.clone()
    }

    /// The identity of the current certificate.
    pub fn identity(&self) -> SpiffeId {
        self.current().id.clone()
    }

    /// Validity of the current certificate, for [`crate::rotation::needs_renewal`].
    pub fn cert_info(&self) -> CertInfo {
        self.current().info.clone()
    }

    /// Whether the current certificate is due for renewal at `now`.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        crate::rotation::needs_renewal(&self.current().info, now)
    }

    fn current(&self) -> Arc<Credentials> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn parse_pem(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = crate::pem::parse_certs(chain_pem, "certificate chain")?;
    let key = crate::keys::KeyPair::from_pem(key_pem)?.private_key_der();
    Ok((chain, key))
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<Credentials> {
    let leaf = chain.first().ok_or_else(|| Error::NoCertificate {
        what: "certificate chain".to_owned(),
    })?;
    let id = leaf_spiffe_id(leaf)?;
    let info = CertInfo::from_der(leaf)?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
            what: format!("the certificate of {id}"),
        },
        other => Error::Tls(other),
    })?;
    Ok(Credentials {
        certified: Arc::new(certified),
        id,
        info,
    })
}

impl ResolvesServerCert for CredentialStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Root hints are ignored: the server verifier sends none (the bundle can change at
        // any time) and there is only one credential to offer anyway.
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
