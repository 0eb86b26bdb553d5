//! The sidecar's protocol sniffer: the first bytes of an accepted connection decide HTTP/1.x,
//! HTTP/2 prior knowledge or opaque TCP (`outbound::sniff`), and on an inbound PERMISSIVE
//! listener whether it is a TLS handshake or plaintext (`inbound::transport`).
//!
//! Invariants: no panic; the verdict only ever firms up as bytes arrive (`Http` and `Tcp` stay
//! what they are for every longer input with the same prefix, `NeedMore` only for inputs
//! shorter than the longest pattern); STRICT is always mutual TLS; PERMISSIVE is mutual TLS
//! exactly when the first byte is a TLS handshake record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_sidecar::authz::TlsMode;
use strait_sidecar::inbound::{TLS_HANDSHAKE_RECORD, Transport, transport};
use strait_sidecar::outbound::{Sniff, sniff};

/// The HTTP/2 connection preface, the longest pattern the sniffer knows.
const LONGEST_PATTERN: usize = 24;

fuzz_target!(|data: &[u8]| {
    let mut settled: Option<Sniff> = None;
    // Past the longest pattern nothing can change: check every prefix up to a little beyond,
    // then the whole input.
    let ends = (0..=data.len().min(LONGEST_PATTERN + 8)).chain([data.len()]);
    for end in ends {
        let verdict = sniff(&data[..end]);
        match (settled, verdict) {
            (Some(before), now) => assert_eq!(before, now, "changed its mind at byte {end}"),
            (None, Sniff::NeedMore) => assert!(end < LONGEST_PATTERN, "NeedMore at {end} bytes"),
            (None, now) => settled = Some(now),
        }
    }
    if let Some(&first) = data.first() {
        assert_eq!(transport(TlsMode::Strict, first), Transport::MutualTls);
        let permissive = transport(TlsMode::Permissive, first);
        assert_eq!(
            permissive == Transport::MutualTls,
            first == TLS_HANDSHAKE_RECORD
        );
    }
});
