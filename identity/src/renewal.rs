//! Renewal: [`Identity::renew`] over mutual TLS with the current certificate,
//! [`Identity::run_renewal`] at 2/3 of its life (back to the token once it expired), and the
//! [`Backoff`] between failed attempts.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_proto as pb;
use strait_trust::{KeyPair, TrustBundle};

use crate::bootstrap::{
    CheckedReply, check_reply, no_client_auth_config, read_token, sign_certificate,
};
use crate::error::IdentityError;
use crate::identity::Identity;
use crate::store;
use crate::verifier::ZoneVerifier;

/// Backoff between failed attempts (bootstrap and renewal): doubling from the first to the
/// last value.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Identity {
    /// Renews the certificate now, over mutual TLS with the current one (no token), and swaps
    /// the result into the stores. Counts the outcome in `PREFIX_cert_renewals_total`.
    pub async fn renew(&self) -> Result<(), IdentityError> {
        let result = self.renew_inner().await;
        self.inner.metrics.count_renewal(result.is_ok());
        result
    }

    async fn renew_inner(&self) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let key = KeyPair::generate()?;
        let tls = self.zone_client_config()?;
        let (reply, _) = sign_certificate(
            &inner.zone_cp,
            tls,
            None,
            pb::SignCertificateRequest {
                csr_pem: key.leaf_csr(&inner.id)?,
                credential: None,
                requested_spiffe_id: inner.id.to_string(),
            },
            &inner.zone_cp_id,
        )
        .await?;
        let current = inner.trust.current();
        let checked = check_reply(&inner.zone_cp, &inner.id, &reply, &current, None)?;
        self.install(checked, &key)
    }

    /// Bootstraps again with the token, verifying the zone against the bundle this component
    /// already has: the way back once the certificate expired.
    async fn rebootstrap(&self) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let token = read_token(&inner.token_file)?;
        let key = KeyPair::generate()?;
        let bundle = TrustBundle::clone(&inner.trust.current());
        let verifier = Arc::new(ZoneVerifier::known(bundle.clone(), &inner.zone_cp_id));
        let tls = no_client_auth_config(verifier.clone())?;
        let (reply, _) = sign_certificate(
            &inner.zone_cp,
            tls,
            Some(verifier.as_ref()),
            pb::SignCertificateRequest {
                csr_pem: key.leaf_csr(&inner.id)?,
                credential: Some(inner.token_kind.credential(token)),
                requested_spiffe_id: inner.id.to_string(),
            },
            &inner.zone_cp_id,
        )
        .await?;
        let checked = check_reply(&inner.zone_cp, &inner.id, &reply, &bundle, None)?;
        self.install(checked, &key)
    }

    /// Swaps a checked reply into the stores and the data directory.
    fn install(&self, checked: CheckedReply, key: &KeyPair) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let key_pem = key.to_pem();
        // Credentials first: the new bundle verified the new chain, and the old bundle shares
        // a root with the new one, so either order leaves every handshake verifiable.
        inner.creds.replace_pem(&checked.chain_pem, &key_pem)?;
        inner.trust.replace(checked.bundle.clone())?;
        let not_after = inner.creds.cert_info().not_after;
        inner.metrics.set_expiry(not_after);
        tracing::info!(id = %inner.id, ?not_after, "workload certificate renewed");
        if let Some(dir) = &inner.data_dir
            && let Err(err) = store::persist(dir, &key_pem, &checked.chain_pem, &checked.bundle)
        {
            tracing::warn!(%err, "the renewed certificate could not be saved; a restart will bootstrap again");
        }
        Ok(())
    }

    /// Renews at 2/3 of the certificate's life until `shutdown` completes (see the crate
    /// docs for failures and expiry).
    pub async fn run_renewal(self, shutdown: impl Future) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new();
        // Set after a failure: the next attempt waits for this instead of 2/3 of life.
        let mut retry_after: Option<Duration> = None;
        loop {
            let info = self.inner.creds.cert_info();
            let now = SystemTime::now();
            let wait = retry_after.unwrap_or_else(|| {
                renew_at(&info)
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                _ = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
            let expired = SystemTime::now() >= info.not_after;
            let result = if expired {
                tracing::warn!(id = %self.inner.id, "the workload certificate expired; bootstrapping again with the token");
                let r = self.rebootstrap().await;
                self.inner.metrics.count_renewal(r.is_ok());
                r
            } else {
                self.renew().await
            };
            match result {
                Ok(()) => {
                    backoff = Backoff::new();
                    retry_after = None;
                }
                Err(err) => {
                    let pause = backoff.next_pause();
                    // Never sleep past the expiry: that moment changes what to try.
                    let until_expiry = info
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let pause = if expired || until_expiry.is_zero() {
                        pause
                    } else {
                        pause.min(until_expiry + Duration::from_millis(10))
                    };
                    tracing::warn!(%err, retry_in = ?pause, not_after = ?info.not_after, "certificate renewal failed");
                    retry_after = Some(pause);
                }
            }
        }
    }
}

/// When to renew a certificate: two thirds of the way from its issuance to its expiry (see
/// [`strait_trust::rotation::renew_at`], which accounts for the clock-skew backdating).
pub fn renew_at(info: &strait_trust::CertInfo) -> SystemTime {
    strait_trust::rotation::renew_at(info.not_before, info.not_after)
}

// === Backoff ===

/// Doubling pauses from 250 ms to 30 s, with up to 25 % jitter so that many clients of a
/// restarted zone do not come back in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        base + jitter
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let first = b.next_pause();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN.mul_f64(1.25));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_pause();
        }
        assert!(last >= BACKOFF_MAX && last <= BACKOFF_MAX.mul_f64(1.25));
    }

    #[test]
    fn renews_at_two_thirds_of_the_real_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let skew = strait_trust::ca::CLOCK_SKEW_ALLOWANCE;
        let info = |nb: SystemTime, na: SystemTime| strait_trust::CertInfo {
            spiffe_id: None,
            not_before: nb,
            not_after: na,
            is_ca: false,
        };
        // A 12 s certificate issued at t0 (back-dated): renewed 8 s after issuance.
        let short = info(t0 - skew, t0 + Duration::from_secs(12));
        assert_eq!(renew_at(&short), t0 + Duration::from_secs(8));
        // 24 h: 16 h after issuance.
        let day = info(t0 - skew, t0 + Duration::from_secs(24 * 3600));
        assert_eq!(renew_at(&day), t0 + Duration::from_secs(16 * 3600));
        // Not back-dated and shorter than the allowance: plain 2/3 of its life.
        let odd = info(t0, t0 + Duration::from_secs(30));
        assert_eq!(renew_at(&odd), t0 + Duration::from_secs(20));
    }
}
