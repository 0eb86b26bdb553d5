//! The zone's DNS request path (zone/src/dns): parse a packet, answer it from the table, encode
//! the reply; what every UDP datagram and TCP message from any client goes through.
//!
//! Invariants (those of the unit test `fuzz_the_request_path`): no panic; only packets with a
//! query header get a reply; a reply parses, carries the query's id, is a response, never
//! offers recursion, and over UDP fits in the largest payload we honour.

#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use strait_zone::dns::{MAX_UDP_PAYLOAD, Transport, respond};

fuzz_target!(|data: &[u8]| {
    let table = strait_fuzz::dns_table();
    for transport in [Transport::Udp, Transport::Tcp] {
        let out = respond(table, data, transport);
        let query_header = data.len() >= 12 && data[2] & 0x80 == 0;
        match out.bytes {
            Some(reply) => {
                assert!(query_header, "only queries are answered");
                let parsed =
                    Message::from_vec(&reply).unwrap_or_else(|e| panic!("unparseable reply: {e}"));
                assert_eq!(parsed.metadata.id, u16::from_be_bytes([data[0], data[1]]));
                assert_eq!(parsed.metadata.message_type, MessageType::Response);
                assert!(!parsed.metadata.recursion_available, "never RA");
                if transport == Transport::Udp {
                    assert!(
                        reply.len() <= usize::from(MAX_UDP_PAYLOAD),
                        "{}",
                        reply.len()
                    );
                }
                assert!(out.rcode.is_some(), "a reply names its rcode");
            }
            None => assert!(!query_header, "a query header got no reply"),
        }
    }
});
