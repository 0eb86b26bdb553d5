//! `strait-trust`: Strait's security core. It owns the federation's identities and the
//! machinery that proves them:
//!
//! - [`spiffe`]: SPIFFE IDs and Strait's identity scheme;
//! - [`keys`]: key pairs (ECDSA P-256) and CSRs — private keys never leave their owner;
//! - [`ca`]: the root CA and zone intermediate CAs, signing from CSRs with strict checks;
//! - [`bundle`]: trust bundles (several roots, for rotation) and certificate pins;
//! - [`cert_info`]: reading a certificate's identity and validity;
//! - [`join_token`]: join tokens (`stj1.<id>.<secret>.<root-pin>`), which carry the root pin;
//! - [`workload_token`]: workload bootstrap tokens (`stw1.<claims>.<signature>`), signed by the
//!   root and verified by a zone offline;
//! - [`rotation`]: when to renew (pure functions);
//! - [`store`]: keys and certificates on disk (0600 keys, atomic writes);
//! - [`tls`]: rustls server and client configs with SPIFFE peer checks and live rotation.
//!
//! # Identities
//!
//! One trust domain per federation (default [`DEFAULT_TRUST_DOMAIN`]):
//!
//! | who | SPIFFE ID | issued by |
//! |---|---|---|
//! | workload | `spiffe://TD/ns/NS/sa/SA` | any zone's intermediate (same identity in every zone) |
//! | zone control plane | `spiffe://TD/zone/Z/cp` | zone Z's intermediate, or the root |
//! | east-west gateway | `spiffe://TD/zone/Z/gateway` | zone Z's intermediate, or the root |
//! | zone intermediate CA | `spiffe://TD/zone/Z/ca` (URI SAN of the CA certificate) | the root |
//! | global node | `spiffe://TD/global/N` | the root only |
//! | operator | `spiffe://TD/admin/NAME` | the root only |
//!
//! The "issued by" column is enforced by every peer on every handshake (see [`tls`]), so a
//! compromised zone can mint workload identities but not another zone's, global's or an
//! admin's.
//!
//! # Hierarchy and lifetimes
//!
//! `root (pathLen 1) → zone intermediate (pathLen 0) → leaf`. Leaves are CA:false,
//! digitalSignature, EKU serverAuth + clientAuth, one URI SAN, random serial, `not_before`
//! set back by [`ca::CLOCK_SKEW_ALLOWANCE`], and never outlive their issuer. Defaults: root
//! [`ca::DEFAULT_ROOT_VALIDITY`] (10 years), intermediate
//! [`ca::DEFAULT_INTERMEDIATE_VALIDITY`] (7 days), leaf [`ca::DEFAULT_LEAF_VALIDITY`]
//! (24 hours); each is renewed at 2/3 of its life ([`rotation::renew_at`]).
//!
//! # Chains and the pin convention
//!
//! Every chain a Strait party presents is *leaf, intermediates, root* — the root included.
//! That costs a few hundred bytes per handshake and lets a joining zone, which knows only the
//! root's pin (`sha256:<hex of SHA-256 over the root's DER>`, carried by the join token, like
//! kubeadm's discovery hash), find and check the root in global's own handshake
//! ([`tls::pinned_client_config`]).
//!
//! # Rotation
//!
//! [`tls::TrustStore`] and [`tls::CredentialStore`] are shared handles whose contents can be
//! replaced at runtime; configs built from them use the new roots or certificate on the next
//! handshake. Root rotation: add the new root to every bundle, reissue, remove the old root.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use strait_trust::ca::{DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY, DEFAULT_ROOT_VALIDITY};
//! use strait_trust::{
//!     AllowAny, AllowExactly, CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId,
//!     TrustStore, client_config, server_config,
//! };
//!
//! let td = "strait.local";
//! // Global: the root. A zone sends a CSR for its intermediate; its key stays home.
//! let root = RootCa::generate(td, DEFAULT_ROOT_VALIDITY)?;
//! let zone_key = KeyPair::generate()?;
//! let zone_csr = zone_key.intermediate_csr(td, "eu-1")?;
//! let zone_cert = root.sign_intermediate(&zone_csr, "eu-1", DEFAULT_INTERMEDIATE_VALIDITY)?;
//! let zone_ca = IntermediateCa::from_pem(&zone_cert.chain_pem, &zone_key.to_pem())?;
//!
//! // Zone: signs a gateway's CSR for the identity it has authorized.
//! let gw = SpiffeId::gateway(td, "eu-1")?;
//! let gw_key = KeyPair::generate()?;
//! let issued = zone_ca.sign_leaf(&gw_key.leaf_csr(&gw)?, &gw, DEFAULT_LEAF_VALIDITY)?;
//!
//! // Gateway: mTLS configs whose trust and certificate can be swapped at runtime.
//! let creds = CredentialStore::from_pem(&issued.chain_pem, &gw_key.to_pem())?;
//! let trust = TrustStore::new(root.bundle()?);
//! let alpn = vec![b"strait-tunnel".to_vec()];
//! let server = server_config(&creds, &trust, Arc::new(AllowAny), alpn.clone())?;
//! let peer = SpiffeId::gateway(td, "us-1")?;
//! let client = client_config(&creds, &trust, Arc::new(AllowExactly(vec![peer])), alpn)?;
//! # let _ = (server, client);
//! // After a handshake: strait_trust::peer_identity(conn.peer_certificates().unwrap_or_default())
//! # Ok::<(), strait_trust::Error>(())
//! ```
//!
//! # Crypto provider
//!
//! ring only, passed explicitly to every rustls config ([`tls::crypto_provider`]); nothing
//! here relies on a process-wide default provider.

pub mod bundle;
pub mod ca;
pub mod cert_info;
pub mod error;
pub mod join_token;
pub mod keys;
pub mod pem;
pub mod preflight;
pub mod rotation;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod workload_token;

pub use bundle::{TrustBundle, pin};
pub use ca::{IntermediateCa, IssuedCert, Issuer, RootCa};
pub use cert_info::CertInfo;
pub use error::{Error, Result, SpiffeIdError};
pub use keys::KeyPair;
pub use spiffe::{IdentityKind, SpiffeId};
pub use tls::{
    AllowAny, AllowExactly, Authorize, CredentialStore, PeerIdentity, TrustStore, client_config,
    peer_identity, pinned_client_config, server_config, server_config_optional_client_auth,
};

/// The trust domain of a federation unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "strait.local";
