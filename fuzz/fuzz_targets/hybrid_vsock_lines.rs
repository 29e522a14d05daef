//! The hybrid vsock handshake lines: the host client's parser of the VMM's `OK <port>` reply,
//! and the VMM's parser of a client's `CONNECT <port>` line (driven through the muxer's public
//! host side over a real unix socket in a temp directory). Checks: no panic; `OK` accepts
//! exactly "OK " + decimal digits fitting a u32 (+ optional `\r`); the muxer answers a valid
//! `CONNECT` with a request to the guest and anything else with nothing.
#![no_main]

use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use arbitrary::Arbitrary;
use bulkhead_sandbox::hybrid_vsock::parse_ok_line;
use bulkhead_vmm::devices::virtio::vsock::muxer::{Muxer, Poller};
use bulkhead_vmm::devices::virtio::vsock::unix::HostListener;
use bulkhead_vmm::devices::virtio::vsock::VsockMetrics;
use event_manager::EventSet;
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Recorder(Vec<RawFd>);

impl Poller for Recorder {
    fn add(&mut self, fd: RawFd, _: EventSet) {
        self.0.push(fd);
    }
    fn modify(&mut self, _: RawFd, _: EventSet) {}
    fn remove(&mut self, fd: RawFd) {
        self.0.retain(|f| *f != fd);
    }
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Ok(&'a [u8]),
    Connect(&'a [u8], bool),
}

fn expected_ok(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"OK ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits.iter().try_fold(0u64, |v, d| {
        let v = v * 10 + u64::from(d - b'0');
        (v <= u64::from(u32::MAX)).then_some(v)
    })?;
    u32::try_from(v).ok()
}

fn valid_connect(line: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(line) else {
        return false;
    };
    let s = s.strip_suffix('\r').unwrap_or(s);
    s.strip_prefix("CONNECT ")
        .is_some_and(|p| p.trim().parse::<u32>().is_ok())
}

fuzz_target!(|input: Input| {
    match input {
        Input::Ok(line) => assert_eq!(parse_ok_line(line), expected_ok(line), "{line:?}"),
        Input::Connect(bytes, close) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("v.sock");
            let mut mux = Muxer::new(
                3,
                HostListener::bind(&path).expect("listener"),
                false,
                Arc::new(VsockMetrics::default()),
            )
            .expect("muxer");
            let mut poller = Recorder::default();
            let mut client = UnixStream::connect(&path).expect("connect");
            client.set_nonblocking(true).expect("nonblocking");
            let _ = client.write(bytes);
            if close {
                drop(client);
            }
            mux.accept_clients(&mut poller);
            assert_eq!(poller.0.len(), 1, "one client accepted");
            let fd = poller.0[0];
            let ev = if close {
                EventSet::IN | EventSet::HANG_UP
            } else {
                EventSet::IN
            };
            assert!(mux.handle_host_event(fd, ev, &mut poller));
            let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
            let complete = bytes.contains(&b'\n') && line.len() <= 32;
            if complete && valid_connect(line) {
                assert!(mux.has_pending_rx(), "valid {line:?} queued no request");
            } else {
                assert!(!mux.has_pending_rx(), "invalid {bytes:?} queued a packet");
            }
        }
    }
});
