//! A pull whose connection dies mid-layer (a proxy in front of the real
//! registry cuts the blob response after some bytes), then a second pull:
//! completed blobs are not fetched again, the cut layer resumes with a
//! range request from where it stopped, and the image is complete and
//! correct.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bulkhead_images::pull::{Progress, PullOptions};
use bulkhead_images::{pull, unpack_image, Digest, Limits, Store};
use common::{Compression::Gzip, Registry};

/// TCP proxy that logs request heads and, once, cuts the response to a
/// `GET` of `victim` after `cut_after` bytes.
struct Proxy {
    addr: String,
    armed: Arc<AtomicBool>,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn pump_requests(
    mut from: TcpStream,
    mut to: TcpStream,
    victim: String,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut text = String::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = text.find("\r\n\r\n") {
            let head: String = text.drain(..end + 4).collect();
            let first = head.lines().next().unwrap_or("").to_string();
            let range = head
                .lines()
                .find(|l| l.to_lowercase().starts_with("range:"))
                .map(|l| format!(" [{}]", l.trim()))
                .unwrap_or_default();
            if first.starts_with("GET ")
                && first.contains(&victim)
                && armed.swap(false, Ordering::SeqCst)
            {
                // Set before the request goes upstream: the whole answer is counted.
                cut.store(true, Ordering::SeqCst);
            }
            heads.lock().unwrap().push(format!("{first}{range}"));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn pump_responses(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, cut_after: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            let left = cut_after.saturating_sub(sent);
            if n >= left {
                let _ = to.write_all(&buf[..left]);
                let _ = to.flush();
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            sent += n;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Proxy {
    fn start(upstream: String, victim: String, cut_after: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(true));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, h, s) = (armed.clone(), heads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let cut = Arc::new(AtomicBool::new(false));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (v, a2, h2, cut2) = (victim.clone(), a.clone(), h.clone(), cut.clone());
                std::thread::spawn(move || pump_requests(client, server, v, a2, cut2, h2));
                std::thread::spawn(move || pump_responses(s2, c2, cut, cut_after));
            }
        });
        Proxy {
            addr,
            armed,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn take_heads(&self) -> Vec<String> {
        std::mem::take(&mut *self.heads.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct Seen {
    fetched: Mutex<Vec<Digest>>,
    first_bytes: Mutex<Vec<(Digest, u64)>>,
    calls: AtomicUsize,
}

impl Progress for Seen {
    fn layer_start(&self, d: &Digest, _size: u64, cached: bool) {
        if !cached {
            self.fetched.lock().unwrap().push(d.clone());
        }
    }
    fn layer_bytes(&self, d: &Digest, fetched: u64) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut f = self.first_bytes.lock().unwrap();
        if !f.iter().any(|(x, _)| x == d) {
            f.push((d.clone(), fetched));
        }
    }
}

/// Incompressible bytes, deterministic.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn interrupted_pull_resumes_without_refetching() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let small = common::Layer::new()
        .file("etc/small", 0o644, b"small")
        .tar();
    let medium = common::Layer::new()
        .file("opt/medium", 0o644, &noise(300_000, 1))
        .tar();
    let big_data = noise(4 << 20, 2);
    let big = common::Layer::new().file("srv/big", 0o644, &big_data).tar();
    // skopeo keeps gzip layers as they are (it would compress plain ones)
    let victim = Digest::of(&common::compress(&big, Gzip));
    let desc = common::write_manifest(
        &layout,
        &[(small, Gzip), (medium, Gzip), (big, Gzip)],
        "amd64",
    );
    common::write_index(&layout, vec![("v1", desc)]);
    common::skopeo_push(&layout, "v1", &format!("{}/app:v1", reg.addr), false);

    let cut_after = 2 << 20;
    let proxy = Proxy::start(reg.addr.clone(), victim.to_string(), cut_after);
    let reference = format!("{}/app:v1", proxy.addr);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let opts = PullOptions {
        plain_http: true,
        max_concurrent: 1, // layers in manifest order: the big one last
        progress: Some(seen.clone()),
        ..Default::default()
    };

    let err = rt.block_on(pull(&store, &reference, &opts)).unwrap_err();
    assert!(
        format!("{err}").contains(&victim.to_string()),
        "error should name the cut layer: {err}"
    );
    assert!(
        !proxy.armed.load(Ordering::SeqCst),
        "the cut never happened"
    );
    assert!(store.list_images().unwrap().is_empty());
    assert!(!store.has_blob(&victim));
    let partial = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", victim.hex()));
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(
        kept > 0 && kept <= cut_after as u64,
        "partial blob has {kept} bytes"
    );
    let first = proxy.take_heads();
    let blob_gets = |heads: &[String]| -> Vec<String> {
        heads
            .iter()
            .filter(|h| h.starts_with("GET ") && h.contains("/blobs/sha256:"))
            .cloned()
            .collect()
    };
    let done_before: Vec<String> = blob_gets(&first)
        .into_iter()
        .filter(|h| !h.contains(&victim.to_string()))
        .collect();
    assert_eq!(done_before.len(), 3, "config + two layers: {first:?}");

    // Second pull: only the cut layer is fetched, from where it stopped.
    let seen2 = Arc::new(Seen::default());
    let opts2 = PullOptions {
        progress: Some(seen2.clone()),
        ..opts.clone()
    };
    let rec = rt.block_on(pull(&store, &reference, &opts2)).unwrap();
    assert_eq!(*seen2.fetched.lock().unwrap(), vec![victim.clone()]);
    let second = blob_gets(&proxy.take_heads());
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        second[0].contains(&victim.to_string())
            && second[0]
                .to_lowercase()
                .contains(&format!("range: bytes={kept}-")),
        "expected a range request from byte {kept}: {second:?}"
    );
    let resumed_at = seen2.first_bytes.lock().unwrap()[0].1;
    assert!(
        resumed_at > kept,
        "progress restarted from zero: {resumed_at}"
    );
    assert!(!partial.exists());
    assert!(store.read_blob(&victim).is_ok());

    let out = tmp.path().join("rootfs");
    unpack_image(&store, &rec, &out, &Limits::default()).unwrap();
    assert_eq!(fs::read(out.join("srv/big")).unwrap(), big_data);
    assert_eq!(fs::read(out.join("etc/small")).unwrap(), b"small");
}

#[test]
fn corrupt_partial_blob_is_refetched_whole() {
    require!("docker-registry", "skopeo");
    let reg = Registry::start("");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let data = noise(1 << 20, 3);
    let layer = common::Layer::new().file("f", 0o644, &data).tar();
    let d = Digest::of(&common::compress(&layer, Gzip));
    let desc = common::write_manifest(&layout, &[(layer, Gzip)], "amd64");
    common::write_index(&layout, vec![("v1", desc)]);
    common::skopeo_push(&layout, "v1", &format!("{}/app:v1", reg.addr), false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    // A leftover partial whose bytes are wrong: the resumed blob does not
    // verify, is thrown away, and the next pull fetches it whole.
    let partial = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", d.hex()));
    fs::write(&partial, vec![0u8; 4096]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = PullOptions {
        plain_http: true,
        ..Default::default()
    };
    let reference = format!("{}/app:v1", reg.addr);
    let err = rt.block_on(pull(&store, &reference, &opts)).unwrap_err();
    assert!(format!("{err}").contains(&d.to_string()), "{err}");
    assert!(!partial.exists());
    let rec = rt.block_on(pull(&store, &reference, &opts)).unwrap();
    let out = tmp.path().join("rootfs");
    unpack_image(&store, &rec, &out, &Limits::default()).unwrap();
    assert_eq!(fs::read(out.join("f")).unwrap(), data);
}
