//! Registry authentication against the real `docker-registry`: basic auth
//! from an htpasswd file, and the bearer-token flow with a token server
//! written here (ES256 JWTs carrying an `x5c` self-signed certificate that
//! the registry trusts through its `rootcertbundle`).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bulkhead_images::pull::{Auth, PullOptions};
use bulkhead_images::{pull, unpack_image, Error, Limits, Store};
use common::{Compression::*, Registry};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const USER: &str = "alice";
const PASS: &str = "s3cret-pw";
const SERVICE: &str = "bulkhead-test-registry";
const ISSUER: &str = "bulkhead-test-issuer";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts(auth: Auth) -> PullOptions {
    PullOptions {
        plain_http: true,
        auth,
        ..Default::default()
    }
}

/// A small two-layer image in an OCI layout.
fn layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let a = common::Layer::new()
        .file("etc/hostname", 0o644, b"authed\n")
        .tar();
    let b = common::Layer::new()
        .file("srv/blob", 0o600, &vec![7u8; 200_000])
        .tar();
    let desc = common::write_manifest(&layout, &[(a, Gzip), (b, Zstd)], "amd64");
    common::write_index(&layout, vec![("v1", desc)]);
    layout
}

fn skopeo_push_creds(layout: &Path, dest: &str, creds: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_unpacked(store: &Store, rec: &bulkhead_images::ImageRecord, dir: &Path) {
    let out = dir.join(format!("rootfs-{}", rec.manifest_digest.hex()));
    unpack_image(store, rec, &out, &Limits::default()).unwrap();
    assert_eq!(fs::read(out.join("etc/hostname")).unwrap(), b"authed\n");
    assert_eq!(fs::read(out.join("srv/blob")).unwrap().len(), 200_000);
}

fn is_auth_failure(e: &Error) -> bool {
    let c = bulkhead_log::error_chain(e).to_lowercase();
    c.contains("auth") || c.contains("401") || c.contains("unauthorized") || c.contains("denied")
}

#[test]
fn basic_auth_with_htpasswd() {
    require!("docker-registry", "skopeo", "htpasswd");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("htpasswd")
        .args(["-Bbn", USER, PASS])
        .output()
        .unwrap();
    assert!(out.status.success());
    let htpasswd = tmp.path().join("htpasswd");
    fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(&format!(
        "auth:\n  htpasswd:\n    realm: bulkhead-basic\n    path: {}\n",
        htpasswd.display()
    ));
    let reference = format!("{}/app:v1", reg.addr);
    skopeo_push_creds(&layout(tmp.path()), &reference, &format!("{USER}:{PASS}"));
    let store = Store::open(tmp.path().join("store")).unwrap();

    // Anonymous and wrong-password pulls are refused and store nothing.
    for auth in [Auth::Anonymous, Auth::Basic(USER.into(), "wrong".into())] {
        let err = rt()
            .block_on(pull(&store, &reference, &opts(auth)))
            .unwrap_err();
        assert!(is_auth_failure(&err), "{err:?}");
    }
    assert!(store.list_images().unwrap().is_empty());

    let rec = rt()
        .block_on(pull(
            &store,
            &reference,
            &opts(Auth::Basic(USER.into(), PASS.into())),
        ))
        .unwrap();
    check_unpacked(&store, &rec, tmp.path());
}

/// Token server: `GET /token?scope=..&service=..` with basic credentials
/// answers `{"token": JWT}` granting the requested scopes.
struct TokenServer {
    realm: String,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    scopes: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
}

impl Signer {
    /// A fresh P-256 key and self-signed certificate; returns the signer
    /// and the certificate PEM (the registry's root bundle).
    fn new() -> (Signer, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["bulkhead-token-issuer".into()]).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ck.key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        assert!(!key.public_key().as_ref().is_empty());
        let pem = ck.cert.pem();
        (
            Signer {
                key,
                cert_der: ck.cert.der().to_vec(),
            },
            pem,
        )
    }

    fn jwt(&self, sub: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<_> = scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (t, n, a) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": sub, "aud": SERVICE,
            "exp": now + 600, "nbf": now - 10, "iat": now - 10,
            "jti": format!("{now}-{}", scopes.len()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn query(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect()
}

fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

impl TokenServer {
    fn start(signer: Signer) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let (st, is, sc) = (stop.clone(), issued.clone(), scopes.clone());
        let want = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASS}")));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
                    }
                }
                if !target.starts_with("/token") {
                    respond(&mut conn, "404 Not Found", "", "{}");
                    continue;
                }
                if headers.get("authorization") != Some(&want) {
                    respond(
                        &mut conn,
                        "401 Unauthorized",
                        "WWW-Authenticate: Basic realm=\"token\"\r\n",
                        "{\"details\":\"bad credentials\"}",
                    );
                    continue;
                }
                let q = query(&target);
                if !q.iter().any(|(k, v)| k == "service" && v == SERVICE) {
                    respond(&mut conn, "400 Bad Request", "", "{}");
                    continue;
                }
                let requested: Vec<String> = q
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .flat_map(|(_, v)| v.split(' ').map(str::to_string))
                    .collect();
                sc.lock().unwrap().extend(requested.iter().cloned());
                let token = signer.jwt(USER, &requested);
                is.fetch_add(1, Ordering::SeqCst);
                respond(
                    &mut conn,
                    "200 OK",
                    "",
                    &serde_json::json!({"token": token, "access_token": token, "expires_in": 600})
                        .to_string(),
                );
            }
        });
        TokenServer {
            realm: format!("http://{addr}/token"),
            stop,
            issued,
            scopes,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.realm.strip_prefix("http://") {
            let _ = TcpStream::connect(a.trim_end_matches("/token"));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn bearer_token_flow_with_real_registry() {
    require!("docker-registry", "skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let (signer, root_pem) = Signer::new();
    let bundle = tmp.path().join("root.pem");
    fs::write(&bundle, root_pem).unwrap();
    let tokens = TokenServer::start(signer);
    let reg = Registry::start(&format!(
        "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        tokens.realm,
        bundle.display()
    ));
    let reference = format!("{}/team/app:v1", reg.addr);
    skopeo_push_creds(&layout(tmp.path()), &reference, &format!("{USER}:{PASS}"));
    let after_push = tokens.issued.load(Ordering::SeqCst);
    assert!(after_push > 0, "skopeo got no token: is the realm used?");
    let store = Store::open(tmp.path().join("store")).unwrap();

    // No credentials: the token server refuses, so does the pull.
    let err = rt()
        .block_on(pull(&store, &reference, &opts(Auth::Anonymous)))
        .unwrap_err();
    assert!(is_auth_failure(&err), "{err:?}");
    let err = rt()
        .block_on(pull(
            &store,
            &reference,
            &opts(Auth::Basic(USER.into(), "nope".into())),
        ))
        .unwrap_err();
    assert!(is_auth_failure(&err), "{err:?}");
    assert!(store.list_images().unwrap().is_empty());

    // User and password: the client runs the /v2/ challenge, gets a token
    // for exactly this repository, and the registry accepts it.
    let rec = rt()
        .block_on(pull(
            &store,
            &reference,
            &opts(Auth::Basic(USER.into(), PASS.into())),
        ))
        .unwrap();
    assert!(tokens.issued.load(Ordering::SeqCst) > after_push);
    assert!(tokens
        .scopes
        .lock()
        .unwrap()
        .iter()
        .any(|s| s == "repository:team/app:pull"));
    check_unpacked(&store, &rec, tmp.path());
}

#[test]
fn bearer_token_given_directly_and_forged_token_refused() {
    require!("docker-registry", "skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let (signer, root_pem) = Signer::new();
    let bundle = tmp.path().join("root.pem");
    fs::write(&bundle, root_pem).unwrap();
    let good = signer.jwt(USER, &["repository:app:pull".into()]);
    let other_repo = signer.jwt(USER, &["repository:other:pull".into()]);
    let tokens = TokenServer::start(signer);
    let reg = Registry::start(&format!(
        "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        tokens.realm,
        bundle.display()
    ));
    let reference = format!("{}/app:v1", reg.addr);
    skopeo_push_creds(&layout(tmp.path()), &reference, &format!("{USER}:{PASS}"));
    let store = Store::open(tmp.path().join("store")).unwrap();
    let issued = tokens.issued.load(Ordering::SeqCst);

    // A token signed by a key the registry does not trust.
    let (forger, _) = Signer::new();
    let forged = forger.jwt(USER, &["repository:app:pull".into()]);
    for bad in [forged, other_repo] {
        let err = rt()
            .block_on(pull(&store, &reference, &opts(Auth::Bearer(bad))))
            .unwrap_err();
        assert!(is_auth_failure(&err), "{err:?}");
    }
    assert!(store.list_images().unwrap().is_empty());

    let rec = rt()
        .block_on(pull(&store, &reference, &opts(Auth::Bearer(good))))
        .unwrap();
    // The token was used as given: the token server saw no new request.
    assert_eq!(tokens.issued.load(Ordering::SeqCst), issued);
    check_unpacked(&store, &rec, tmp.path());
}
