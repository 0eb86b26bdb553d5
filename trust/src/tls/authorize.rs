//! The authorization hook: after a peer's chain and identity have been verified, the caller
//! decides whether *this* identity may talk to it. Verified-but-unauthorized peers are
//! refused during the handshake, with the hook's reason in the error.

use std::fmt;
use std::sync::Arc;

use crate::spiffe::SpiffeId;

/// A peer whose certificate chain verified against the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID in the peer's certificate (already checked to be in the trust domain).
    pub id: SpiffeId,
    /// The zone whose intermediate CA issued the peer's certificate; `None` when the root
    /// signed it directly (or, for workloads, an intermediate without a zone identity).
    pub issuer_zone: Option<String>,
}

/// Decides whether a verified peer may connect. `Err` carries the reason, which ends up in
/// the handshake error and the logs.
pub trait Authorize: Send + Sync + fmt::Debug {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String>;
}

impl<T: Authorize + ?Sized> Authorize for Arc<T> {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        (**self).authorize(peer)
    }
}

/// Any identity of the trust domain (the trust-domain check itself is built into the
/// verifier).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAny;

impl Authorize for AllowAny {
    fn authorize(&self, _peer: &PeerIdentity) -> Result<(), String> {
        Ok(())
    }
}

/// Exactly these identities.
#[derive(Debug, Clone, Default)]
pub struct AllowExactly(pub Vec<SpiffeId>);

impl Authorize for AllowExactly {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        if self.0.contains(&peer.id) {
            return Ok(());
        }
        let allowed: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        Err(format!(
            "{} is not one of the allowed identities [{}]",
            peer.id,
            allowed.join(", ")
        ))
    }
}

/// A closure as an [`Authorize`]; see [`authorize_fn`].
pub struct AuthorizeFn<F>(F);

/// Wraps `f` as an [`Authorize`].
pub fn authorize_fn<F>(f: F) -> AuthorizeFn<F>
where
    F: Fn(&PeerIdentity) -> Result<(), String> + Send + Sync,
{
    AuthorizeFn(f)
}

impl<F> fmt::Debug for AuthorizeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizeFn(..)")
    }
}

impl<F> Authorize for AuthorizeFn<F>
where
    F: Fn(&PeerIdentity) -> Result<(), String> + Send + Sync,
{
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        (self.0)(peer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn peer(id: &SpiffeId) -> PeerIdentity {
        PeerIdentity {
            id: id.clone(),
            issuer_zone: None,
        }
    }

    #[test]
    fn ready_made_authorizers() {
        let a = SpiffeId::gateway("td", "a").unwrap();
        let b = SpiffeId::gateway("td", "b").unwrap();
        assert!(AllowAny.authorize(&peer(&a)).is_ok());
        let exact = AllowExactly(vec![a.clone()]);
        assert!(exact.authorize(&peer(&a)).is_ok());
        let reason = exact.authorize(&peer(&b)).unwrap_err();
        assert!(reason.contains("spiffe://td/zone/b/gateway"), "{reason}");
        assert!(reason.contains("spiffe://td/zone/a/gateway"), "{reason}");

        let only_zone_a = authorize_fn(|p: &PeerIdentity| match p.id.zone() {
            Some("a") => Ok(()),
            _ => Err("zone a only".to_owned()),
        });
        assert!(only_zone_a.authorize(&peer(&a)).is_ok());
        assert_eq!(only_zone_a.authorize(&peer(&b)).unwrap_err(), "zone a only");
        let shared: Arc<dyn Authorize> = Arc::new(only_zone_a);
        assert!(shared.authorize(&peer(&a)).is_ok());
    }
}
