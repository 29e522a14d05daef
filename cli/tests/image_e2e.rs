//! End to end for images: a two-layer busybox image (the demo layer plus a layer with
//! `/etc/bulkhead-marker`) is pushed with skopeo to a real `docker-registry` on 127.0.0.1,
//! `bulkhead pull --plain-http` fetches it into a private store, and `bulkhead run --rm
//! --isolation vm` runs it in microVMs: the image's file is read, a container's writes do
//! not reach the next container of the image, and a 100 MiB read-only volume reads back
//! with the host's sha256. Runs only inside the KVM harness (`BULKHEAD_IN_HARNESS=1`) with
//! `docker-registry`, `skopeo` and what `bulkhead check` needs for microVMs; prints
//! `SKIPPED <test>: <reason>` otherwise:
//!
//! ```text
//! cargo test -p bulkhead-cli --test image_e2e --no-run   # prints target/debug/deps/image_e2e-HASH
//! BULKHEAD_VMM=$PWD/target/release/bulkhead-vmm \
//!     tests/harness/run-in-kvm.sh target/debug/deps/image_e2e-HASH --nocapture --test-threads 1
//! ```

mod support;

use std::fs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bulkhead_images::Digest;
use bulkhead_sandbox::mountinfo;
use support::registry::{skopeo_push, Registry};
use support::{check_says_vm_ready, skip, vm_host_ready, BIN};

const MARKER: &str = "bulkhead image e2e marker 7f3a\n";
const BIG: usize = 100 * 1024 * 1024;

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn out_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A private store and run root below /tmp (the harness's tmpfs), removed on drop; no
/// network (the host's bridge and address store stay untouched).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("bh-img")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let cfg = format!(
            "store_root = {:?}\nrun_root = {:?}\nlog_level = \"info\"\n[vm]\nboot_timeout_secs = 300\nrequest_timeout_secs = 120\n[cli]\nisolation = \"vm\"\nnetwork = \"none\"\nstop_timeout_secs = 10\n",
            dir.path().join("store"),
            dir.path().join("run"),
        );
        fs::write(dir.path().join("config.toml"), cfg).unwrap();
        Env { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        // Ended by coreutils `timeout` if it hangs (status 124), like support::Env::run.
        let out = Command::new("timeout")
            .args(["--kill-after=10", "600", BIN])
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .args(args)
            .env_remove("BULKHEAD_ROOT")
            .env_remove("BULKHEAD_RUN_ROOT")
            .env_remove("BULKHEAD_ISOLATION")
            .output()
            .expect("running bulkhead");
        eprintln!(
            "$ bulkhead {}\n-> {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            out_str(&out).chars().take(2000).collect::<String>(),
            err_str(&out)
        );
        out
    }

    fn entries(&self, sub: &str) -> Vec<String> {
        fs::read_dir(self.dir.path().join("run").join(sub))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Processes whose command line or open files mention this test's directory (VMMs,
    /// virtiofsd; a jailed VMM names no host path on its command line, but its console
    /// and log are open files there).
    fn processes_left(&self) -> Vec<String> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| {
                let cmdline = fs::read(e.path().join("cmdline")).ok()?;
                let mut text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                for fd in fs::read_dir(e.path().join("fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(target) = fs::read_link(fd.path()) {
                        text.push(' ');
                        text.push_str(&target.to_string_lossy());
                    }
                }
                Some(text)
            })
            .filter(|c| c.contains(&needle))
            .collect()
    }

    /// Mounts below the run root, except the sandboxes directory's own shared bind.
    fn mounts_left(&self) -> Vec<String> {
        let root = self.dir.path().join("run");
        let own = root.join("sandboxes");
        mountinfo::read_self()
            .unwrap()
            .into_iter()
            .filter(|e| e.mount_point.starts_with(&root) && e.mount_point != own)
            .map(|e| e.mount_point.display().to_string())
            .collect()
    }

    fn assert_clean(&self) {
        for _ in 0..100 {
            if self.entries("containers").is_empty()
                && self.entries("sandboxes").is_empty()
                && self.processes_left().is_empty()
                && self.mounts_left().is_empty()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "left behind: containers {:?}, sandboxes {:?}, processes {:?}, mounts {:?}",
            self.entries("containers"),
            self.entries("sandboxes"),
            self.processes_left(),
            self.mounts_left()
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The sandboxes directory's shared bind (and anything a failed test left) must go
        // before the directory can be removed.
        let root = self.dir.path().join("run");
        let mut mounts: Vec<PathBuf> = mountinfo::read_self()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.mount_point)
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The reason to skip, if any.
fn ready(env: &Env) -> Result<(), String> {
    vm_host_ready()?;
    for bin in ["docker-registry", "skopeo", "tar", "sha256sum"] {
        if !have(bin) {
            return Err(format!("{bin} not installed"));
        }
    }
    check_says_vm_ready(&env.run(&["check", "--json"]))
}

fn blob_path(layout: &Path, d: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(d.hex())
}

fn put_blob(layout: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    fs::write(blob_path(layout, &d), data).unwrap();
    d
}

fn read_json(layout: &Path, digest: &serde_json::Value) -> serde_json::Value {
    let d: Digest = digest.as_str().unwrap().parse().unwrap();
    serde_json::from_slice(&fs::read(blob_path(layout, &d)).unwrap()).unwrap()
}

/// An OCI layout tagged `1`: the demo image's busybox layer (gzip) and an uncompressed
/// layer adding `/etc/bulkhead-marker`.
fn build_image(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-demo-image.sh");
    let o = Command::new(script)
        .arg("--no-import")
        .arg(&layout)
        .output()
        .unwrap();
    assert!(o.status.success(), "build-demo-image.sh: {}", err_str(&o));

    let root = work.join("marker");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/bulkhead-marker"), MARKER).unwrap();
    let tar = work.join("marker.tar");
    let o = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("etc/bulkhead-marker")
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", err_str(&o));
    let layer = fs::read(&tar).unwrap();
    let layer_digest = put_blob(&layout, &layer);

    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest = read_json(&layout, &index["manifests"][0]["digest"]);
    let mut config = read_json(&layout, &manifest["config"]["digest"]);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(layer_digest.to_string().into());
    let craw = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put_blob(&layout, &craw).to_string().into();
    manifest["config"]["size"] = craw.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest.to_string(),
            "size": layer.len(),
        }));
    let mraw = serde_json::to_vec(&manifest).unwrap();
    let md = put_blob(&layout, &mraw);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(),
            "size": mraw.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout
}

/// 100 MiB from /dev/urandom and its sha256, both by the host's optimised tools (a debug
/// build hashing 100 MiB under the harness's emulation takes minutes).
fn random_file(path: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {BIG} /dev/urandom > \"$1\" && sha256sum \"$1\""
        ))
        .arg("sh")
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "random file: {}", err_str(&o));
    assert_eq!(fs::metadata(path).unwrap().len(), BIG as u64);
    let sum = out_str(&o);
    let hex = sum.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hex.len(), 64, "{sum}");
    hex
}

#[test]
fn pulled_image_runs_in_microvms() {
    let env = Env::new();
    if let Err(r) = ready(&env) {
        skip(&r);
        return;
    }
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let layout = build_image(work.path());
    let reg = Registry::start();
    let reference = format!("{}/test/img:1", reg.addr);
    skopeo_push(&layout, &reference);

    let o = env.run(&["pull", "--plain-http", &reference]);
    assert_eq!(o.status.code(), Some(0), "{}", err_str(&o));
    // Stop the registry: everything below runs from the store only.
    drop(reg);
    let images = env.run(&["images"]);
    assert!(
        out_str(&images).contains("test/img"),
        "{}",
        out_str(&images)
    );

    // (1) The image's own file, from the second layer, over virtio-fs.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--isolation",
        "vm",
        &reference,
        "cat",
        "/etc/bulkhead-marker",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err_str(&o));
    assert_eq!(out_str(&o), MARKER);

    // (2) A container's write stays in that container.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--isolation",
        "vm",
        &reference,
        "sh",
        "-c",
        "echo x > /written && cat /written && echo y > /etc/bulkhead-marker",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err_str(&o));
    assert_eq!(out_str(&o), "x\n");
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--isolation",
        "vm",
        &reference,
        "sh",
        "-c",
        "test ! -e /written && cat /etc/bulkhead-marker",
    ]);
    assert_eq!(o.status.code(), Some(0), "/written seen: {}", err_str(&o));
    assert_eq!(out_str(&o), MARKER);
    env.assert_clean();

    // (3) 100 MiB through a read-only volume, checked byte for byte by sha256.
    let data = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let want = random_file(&data.path().join("big"));
    let vol = format!("{}:/data:ro", data.path().display());
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--isolation",
        "vm",
        "-v",
        &vol,
        &reference,
        "sha256sum",
        "/data/big",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err_str(&o));
    assert_eq!(out_str(&o), format!("{want}  /data/big\n"));
    env.assert_clean();
}
