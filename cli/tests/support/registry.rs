//! A real `docker-registry` on 127.0.0.1 for the tests, images pushed to it with skopeo,
//! and the smallest image there is: one layer with one file, no shell, no libc.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real `docker-registry` on a free 127.0.0.1 port, killed on drop.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: String,
}

impl Registry {
    pub fn start() -> Registry {
        // The harness VM has no network; its loopback may be down.
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            child,
            _dir: dir,
            addr,
        };
        let log = reg._dir.path().join("log");
        // Slow to start under the harness's nested emulation.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(180) {
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!(
                    "docker-registry exited ({st}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(mut s) = TcpStream::connect(&reg.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut b = [0u8; 12];
                if s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.") {
                    return reg;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry did not come up: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes tag `1` of the OCI layout `layout` to `dest` (a plain-HTTP registry).
pub fn skopeo_push(layout: &Path, dest: &str) {
    let o = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo");
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An OCI layout tagged `1` with a single uncompressed layer holding `etc/tiny-marker`:
/// any workload run in it must bring its own program (a static binary on a volume).
pub fn tiny_image(work: &Path) -> PathBuf {
    let layout = work.join("tiny-layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> String {
        let out = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(data)?;
                c.wait_with_output()
            })
            .unwrap();
        let hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        fs::write(blobs.join(&hex), data).unwrap();
        format!("sha256:{hex}")
    };
    let root = work.join("tiny-root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/tiny-marker"), "tiny\n").unwrap();
    let tar = work.join("tiny.tar");
    let o = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("etc")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let layer = fs::read(&tar).unwrap();
    let layer_digest = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}
