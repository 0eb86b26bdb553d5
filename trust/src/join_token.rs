//! Join tokens: how a new zone or global node proves it was invited, and how it authenticates
//! the federation before it trusts anything (kubeadm's bootstrap token + discovery hash, in one
//! string).
//!
//! Format: `stj1.<id>.<secret>.<pin-hex>` — `id` (16 hex) names the token in global's state,
//! `secret` (32 hex, 128 bits) is what proves possession (global stores only its SHA-256), and
//! `pin-hex` is the SHA-256 of the root CA certificate, which the joiner checks global's chain
//! against ([`crate::tls::pinned_client_config`]). What the token is for (which zone, which
//! node) and when it expires live in global's state, not in the string, so they cannot be
//! forged by editing it.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::bundle::parse_pin;

const PREFIX: &str = "stj1";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 16;

/// A parsed join token. `Debug` hides the secret so tokens never end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
    /// `sha256:<hex>`, as [`crate::bundle::pin`] produces.
    root_pin: String,
}

/// Why a string is not a join token. Deliberately never echoes the input: it holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error(
        "not a Strait join token: expected `stj1.<id>.<secret>.<root-pin>` (4 dot-separated parts)"
    )]
    Shape,
    #[error("join token has an unknown format version {0:?} (this build reads `stj1`)")]
    Version(String),
    #[error("join token {part} must be {len} lowercase hex characters")]
    Part { part: &'static str, len: usize },
    #[error("join token carries an invalid root pin")]
    Pin,
}

impl JoinToken {
    /// A fresh random token for the federation whose root has `root_pin`.
    pub fn generate(root_pin: &str) -> Result<Self, JoinTokenError> {
        let root_pin = parse_pin(root_pin).map_err(|_| JoinTokenError::Pin)?;
        let mut rng = rand::rng();
        let mut id = [0_u8; ID_BYTES];
        let mut secret = [0_u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        Ok(Self {
            id: hex::encode(id),
            secret: hex::encode(secret),
            root_pin,
        })
    }

    /// The public name of the token (safe to log and to store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret half, sent once to global when joining.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The root certificate pin (`sha256:<hex>`) the joiner must find in global's chain.
    pub fn root_pin(&self) -> &str {
        &self.root_pin
    }

    /// Lowercase hex SHA-256 of the secret: what global stores and compares.
    pub fn secret_sha256(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// Lowercase hex SHA-256 of a token secret as presented by a joiner.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn hex_part(s: &str, part: &'static str, bytes: usize) -> Result<String, JoinTokenError> {
    let ok = s.len() == bytes * 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(JoinTokenError::Part {
            part,
            len: bytes * 2,
        })
    }
}

impl FromStr for JoinToken {
    type Err = JoinTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [version, id, secret, pin] = parts.as_slice() else {
            return Err(JoinTokenError::Shape);
        };
        if *version != PREFIX {
            return Err(JoinTokenError::Version(
                (*version).chars().take(8).collect(),
            ));
        }
        let id = hex_part(id, "id", ID_BYTES)?;
        let secret = hex_part(secret, "secret", SECRET_BYTES)?;
        let root_pin = parse_pin(&format!("sha256:{pin}")).map_err(|_| JoinTokenError::Pin)?;
        Ok(Self {
            id,
            secret,
            root_pin,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pin_hex = self.root_pin.trim_start_matches("sha256:");
        write!(f, "{PREFIX}.{}.{}.{pin_hex}", self.id, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("root_pin", &self.root_pin)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn round_trips_through_its_string_form() {
        let token = JoinToken::generate(PIN).map_err(|e| e.to_string());
        let Ok(token) = token else {
            panic!("{token:?}")
        };
        let parsed: Result<JoinToken, _> = token.to_string().parse();
        assert_eq!(parsed.as_ref(), Ok(&token));
        assert_eq!(token.root_pin(), PIN);
        assert_eq!(token.secret_sha256(), hash_secret(token.secret()));
    }

    #[test]
    fn two_tokens_differ() {
        let (Ok(a), Ok(b)) = (JoinToken::generate(PIN), JoinToken::generate(PIN)) else {
            panic!("generate failed")
        };
        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret(), b.secret());
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let pin_hex = PIN.trim_start_matches("sha256:");
        let cases = [
            ("", JoinTokenError::Shape),
            ("stj1.a.b", JoinTokenError::Shape),
            (
                &*format!("stj9.0011223344556677.00112233445566778899aabbccddeeff.{pin_hex}"),
                JoinTokenError::Version("stj9".into()),
            ),
            (
                &*format!("stj1.XYZ.00112233445566778899aabbccddeeff.{pin_hex}"),
                JoinTokenError::Part {
                    part: "id",
                    len: 16,
                },
            ),
            (
                &*format!("stj1.0011223344556677.short.{pin_hex}"),
                JoinTokenError::Part {
                    part: "secret",
                    len: 32,
                },
            ),
            (
                "stj1.0011223344556677.00112233445566778899aabbccddeeff.nothex",
                JoinTokenError::Pin,
            ),
        ];
        for (input, want) in cases {
            let got = input.parse::<JoinToken>();
            assert_eq!(got.as_ref().err(), Some(&want), "{input:?}");
            if let Err(e) = got {
                assert!(
                    !e.to_string().contains("00112233445566778899aabbccddeeff"),
                    "secret echoed: {e}"
                );
            }
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let Ok(token) = JoinToken::generate(PIN) else {
            panic!("generate failed")
        };
        assert!(!format!("{token:?}").contains(token.secret()));
    }
}
