//! A throwaway federation PKI: a root, one intermediate per zone, leaves on demand (as the
//! gateway's in-process tests build it).

use std::collections::HashMap;

use strait_trust::ca::{
    DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY, DEFAULT_ROOT_VALIDITY,
};
use strait_trust::{CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId, TrustStore};

pub const TD: &str = "strait.local";

#[derive(Debug)]
pub struct Pki {
    zones: HashMap<String, IntermediateCa>,
    pub trust: TrustStore,
}

impl Pki {
    pub fn new(zones: &[&str]) -> anyhow::Result<Self> {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY)?;
        let mut cas = HashMap::new();
        for zone in zones {
            let key = KeyPair::generate()?;
            let csr = key.intermediate_csr(TD, zone)?;
            let cert = root.sign_intermediate(&csr, zone, DEFAULT_INTERMEDIATE_VALIDITY)?;
            cas.insert(
                (*zone).to_owned(),
                IntermediateCa::from_pem(&cert.chain_pem, &key.to_pem())?,
            );
        }
        Ok(Pki {
            zones: cas,
            trust: TrustStore::new(root.bundle()?),
        })
    }

    fn leaf(&self, zone: &str, id: &SpiffeId) -> anyhow::Result<CredentialStore> {
        let ca = self
            .zones
            .get(zone)
            .ok_or_else(|| anyhow::anyhow!("no CA for zone {zone}"))?;
        let key = KeyPair::generate()?;
        let issued = ca.sign_leaf(&key.leaf_csr(id)?, id, DEFAULT_LEAF_VALIDITY)?;
        Ok(CredentialStore::from_pem(&issued.chain_pem, &key.to_pem())?)
    }

    pub fn gateway(&self, zone: &str) -> anyhow::Result<CredentialStore> {
        self.leaf(zone, &SpiffeId::gateway(TD, zone)?)
    }

    pub fn workload(&self, zone: &str, ns: &str, sa: &str) -> anyhow::Result<CredentialStore> {
        self.leaf(zone, &SpiffeId::workload(TD, ns, sa)?)
    }
}
