//! A federation's PKI as the suites need it: one root, an intermediate CA per zone (as global
//! signs them at join), and leaves signed by a zone's intermediate (workloads, gateways, the
//! zone control plane), bootstrap tokens signed by the root, and the trust bundle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_trust::ca::{
    DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY, DEFAULT_ROOT_VALIDITY,
};
use strait_trust::workload_token::{Claims, WorkloadToken};
use strait_trust::{CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId, TrustStore};

/// The trust domain of every test federation.
pub const TD: &str = "strait.local";

/// Installs ring as the process-wide rustls provider (once per test binary; later calls do
/// nothing).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A root and one intermediate per zone.
#[derive(Debug)]
pub struct Pki {
    pub root: RootCa,
    /// The root's bundle: what every component of the federation trusts.
    pub trust: TrustStore,
    zones: BTreeMap<String, ZoneCa>,
}

/// A zone's intermediate CA, with its PEM to make fresh copies from.
#[derive(Debug)]
pub struct ZoneCa {
    pub ca: Arc<IntermediateCa>,
    /// The intermediate's chain (intermediate, root).
    pub chain_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// A fresh root and an intermediate for each of `zones`. Installs the crypto provider.
    pub fn new(zones: &[&str]) -> Self {
        install_provider();
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
        let zones = zones
            .iter()
            .map(|zone| {
                let key = KeyPair::generate().unwrap();
                let csr = key.intermediate_csr(TD, zone).unwrap();
                let cert = root
                    .sign_intermediate(&csr, zone, DEFAULT_INTERMEDIATE_VALIDITY)
                    .unwrap();
                let ca = IntermediateCa::from_pem(&cert.chain_pem, &key.to_pem()).unwrap();
                let zone_ca = ZoneCa {
                    ca: Arc::new(ca),
                    chain_pem: cert.chain_pem,
                    key_pem: key.to_pem(),
                };
                ((*zone).to_owned(), zone_ca)
            })
            .collect();
        let trust = TrustStore::new(root.bundle().unwrap());
        Pki { root, trust, zones }
    }

    /// `zone`'s intermediate; panics for a zone the PKI was not made with.
    pub fn zone(&self, zone: &str) -> &ZoneCa {
        self.zones
            .get(zone)
            .unwrap_or_else(|| panic!("no intermediate for zone {zone}"))
    }

    /// A fresh copy of `zone`'s intermediate (for a component that owns its CA).
    pub fn intermediate(&self, zone: &str) -> IntermediateCa {
        let z = self.zone(zone);
        IntermediateCa::from_pem(&z.chain_pem, &z.key_pem).unwrap()
    }

    /// A leaf for `id` signed by `zone`'s intermediate.
    pub fn leaf(&self, zone: &str, id: &SpiffeId) -> CredentialStore {
        let key = KeyPair::generate().unwrap();
        let issued = self
            .zone(zone)
            .ca
            .sign_leaf(&key.leaf_csr(id).unwrap(), id, DEFAULT_LEAF_VALIDITY)
            .unwrap();
        CredentialStore::from_pem(&issued.chain_pem, &key.to_pem()).unwrap()
    }

    /// The workload `ns/sa`'s certificate from `zone`.
    pub fn workload(&self, zone: &str, ns: &str, sa: &str) -> CredentialStore {
        self.leaf(zone, &SpiffeId::workload(TD, ns, sa).unwrap())
    }

    /// `zone`'s east-west gateway's certificate.
    pub fn gateway(&self, zone: &str) -> CredentialStore {
        self.leaf(zone, &SpiffeId::gateway(TD, zone).unwrap())
    }

    /// `zone`'s control plane's certificate (`zone/Z/cp`).
    pub fn zone_cp(&self, zone: &str) -> CredentialStore {
        self.leaf(zone, &SpiffeId::zone_cp(TD, zone).unwrap())
    }

    /// A bootstrap token for `ns/sa` in zone `zone`, signed by the root, valid for an hour.
    pub fn token(&self, ns: &str, sa: &str, zone: &str) -> String {
        let id = SpiffeId::workload(TD, ns, sa).unwrap();
        let claims = Claims::new(id, zone, SystemTime::now(), Duration::from_secs(3600));
        WorkloadToken::issue(&self.root, &claims).unwrap()
    }

    /// The root's trust bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        self.root.bundle().unwrap().to_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_root() {
        let pki = Pki::new(&["a", "b"]);
        let creds = pki.workload("b", "demo", "echo");
        assert_eq!(
            creds.identity(),
            SpiffeId::workload(TD, "demo", "echo").unwrap()
        );
        assert!(pki.bundle_pem().contains("BEGIN CERTIFICATE"));
    }
}
