//! The stdio stream header the agent decodes from whatever the host side (or anything else
//! reaching its port) sends. Checks: decoding never panics; a header that decodes encodes back
//! to the same bytes; anything encoded decodes to itself (also when fed byte by byte).
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_protocol::stdio::{AttachStatus, Decoded, StdioHeader, StreamKind};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Bytes(&'a [u8]),
    Header(String, String, u8),
    Status(u8),
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes(b) => match StdioHeader::decode(b) {
            Ok(Decoded::Complete(h, used)) => {
                assert!(used <= b.len());
                let again = h.encode().expect("a decoded header encodes");
                assert_eq!(&again[..], &b[..used], "decode/encode differs");
            }
            Ok(Decoded::NeedMore(n)) => assert!(n > b.len(), "asks for {n} bytes, has {}", b.len()),
            Err(_) => {}
        },
        Input::Header(c, e, k) => {
            let kind = [
                StreamKind::Stdin,
                StreamKind::Stdout,
                StreamKind::Stderr,
                StreamKind::Tty,
            ][usize::from(k) % 4];
            let h = StdioHeader::new(&c, &e, kind);
            let Ok(bytes) = h.encode() else {
                return;
            };
            for n in 0..bytes.len() {
                match StdioHeader::decode(&bytes[..n]) {
                    Ok(Decoded::NeedMore(k)) => {
                        assert!(k > n && k <= bytes.len(), "prefix {n}: needs {k}")
                    }
                    other => panic!("a prefix of {n} bytes decodes as {other:?}"),
                }
            }
            match StdioHeader::decode(&bytes) {
                Ok(Decoded::Complete(d, used)) => {
                    assert_eq!(used, bytes.len());
                    assert_eq!(d, h);
                }
                other => panic!("encoded header does not decode: {other:?}"),
            }
        }
        Input::Status(b) => {
            let s = AttachStatus::from_byte(b);
            assert_eq!(AttachStatus::from_byte(s.to_byte()), s);
        }
    }
});
