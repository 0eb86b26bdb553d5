//! The east-west tunnel preamble (proto/src/tunnel.rs): the length-prefixed `TunnelHeader` a
//! remote gateway sends first on every QUIC stream, and the `TunnelResponse` it answers with.
//!
//! Invariants: no panic; `decode_frame` and the streaming `read_frame` agree on every input
//! that is one whole frame; `read_frame` never reads past the frame it announces; a decoded
//! message that re-encodes within the limit decodes back to itself.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strait_proto::tunnel::{FrameError, decode_frame, encode_frame, read_frame};
use strait_proto::{TunnelHeader, TunnelResponse};

/// Polls a future once: reading from a byte slice never waits.
fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from a slice returned Pending"),
    }
}

fn check<M: Message + Default + PartialEq>(data: &[u8]) {
    let decoded = decode_frame::<M>(data);
    let mut reader = data;
    let streamed = ready(read_frame::<M, _>(&mut reader));
    let consumed = data.len() - reader.len();
    if let [a, b, ..] = data {
        let announced = usize::from(u16::from_be_bytes([*a, *b]));
        assert!(consumed <= 2 + announced, "read past the frame");
    }
    match (&decoded, &streamed) {
        (Ok(d), Ok(s)) => assert!(d == s, "decode_frame and read_frame disagree"),
        (Ok(_), Err(e)) => panic!("read_frame refused a whole frame: {e}"),
        // Trailing bytes are an error only for decode_frame (the stream carries TLS after).
        (Err(FrameError::Trailing { .. }), _) | (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("read_frame accepted what decode_frame refused: {e}"),
    }
    if let Ok(message) = decoded {
        if let Ok(frame) = encode_frame(&message) {
            let again = decode_frame::<M>(&frame);
            match again {
                Ok(again) => assert!(again == message, "re-encoding changed the message"),
                // A message whose fields are all defaults encodes to nothing, which the reader
                // refuses as empty; that is the documented rule, not a bug.
                Err(FrameError::Empty) => assert_eq!(message.encoded_len(), 0),
                Err(e) => panic!("a frame we encoded does not decode: {e}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<TunnelHeader>(data);
    check::<TunnelResponse>(data);
});
