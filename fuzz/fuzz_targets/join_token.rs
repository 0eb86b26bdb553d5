//! Join tokens (trust/src/join_token.rs): the `stj1.<id>.<secret>.<pin>` string an operator
//! pastes into `strait zone run`, and global reads back on `Join`; also the root pin parser
//! it relies on.
//!
//! Invariants: no panic; a parsed token prints to a string that parses to the same token; an
//! error never echoes the secret part of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_trust::join_token::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<JoinToken>() {
        Ok(token) => {
            let printed = token.to_string();
            let again = printed
                .parse::<JoinToken>()
                .unwrap_or_else(|e| panic!("a printed token does not parse: {e}"));
            assert!(again == token, "round trip changed the token");
            // The secret may also occur inside the id or the pin (hex is hex); what is left
            // once those are taken out must not show it.
            let shown = format!("{token:?}")
                .replace(token.root_pin(), "")
                .replace(token.id(), "");
            assert!(!shown.contains(token.secret()), "Debug shows the secret");
        }
        Err(err) => {
            // The third part is where a secret would be; hex and long enough to be one, it
            // must not appear in the message.
            if let Some(secret) = text.trim().split('.').nth(2) {
                if secret.len() >= 16 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
                    assert!(!err.to_string().contains(secret), "error echoes the secret");
                }
            }
        }
    }
    let _ = strait_trust::bundle::parse_pin(text);
});
