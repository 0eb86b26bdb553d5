//! Workload bootstrap tokens (trust/src/workload_token.rs): the `stw1.<claims>.<signature>`
//! bearer credential a sidecar or gateway presents to its zone's workload CA.
//!
//! The first byte picks the mode: even, the rest is a token string verified as is (shape,
//! base64, signature checks); odd, the rest is the claims JSON, signed here with the fixture
//! root so the fuzzer reaches the claim checks behind the signature (JSON, zone, identity,
//! expiry), as a hand-made token signed by a leaked key would.
//!
//! Invariants: no panic; an accepted token's claims are for the verifying zone, in the trust
//! domain, and valid at the time of the check; an error never echoes a token-shaped input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_trust::IdentityKind;
use strait_trust::ca::CLOCK_SKEW_ALLOWANCE;
use strait_trust::workload_token::verify;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let (root, bundle) = strait_fuzz::workload_root();
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        strait_fuzz::sign_claims(root, rest)
    };
    match verify(&token, bundle, strait_fuzz::ZONE, strait_fuzz::token_now()) {
        Ok(claims) => {
            assert_eq!(claims.zone, strait_fuzz::ZONE);
            let now = strait_fuzz::token_now();
            assert!(
                claims.issued_at() <= now + CLOCK_SKEW_ALLOWANCE,
                "not yet valid"
            );
            assert!(now <= claims.expires_at() + CLOCK_SKEW_ALLOWANCE, "expired");
            assert_eq!(claims.spiffe_id.trust_domain(), strait_fuzz::TRUST_DOMAIN);
            match claims.spiffe_id.kind() {
                IdentityKind::Workload { .. } => {}
                IdentityKind::Gateway { zone } => assert_eq!(zone, strait_fuzz::ZONE),
                other => panic!("a token for {other:?} was accepted"),
            }
        }
        Err(err) => {
            // Only a token-shaped string (base64url and dots) can be a leak: fuzz input made of
            // the error's own wording ("it does not have 3 dot-separated parts") is not.
            let token = token.trim();
            let token_shaped = token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if token.len() >= 16 && token_shaped {
                assert!(!err.to_string().contains(token), "error echoes the token");
            }
        }
    }
});
