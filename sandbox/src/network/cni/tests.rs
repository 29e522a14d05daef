//! The attachment's state round trip, and the real plugins as root: a namespace, ADD with
//! a published port, traffic through it on loopback, DEL, and nothing left. The root
//! tests use their own bridge (`bhtest0`), subnet (10.89.250.0/24) and IPAM directory.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

const TEST_BRIDGE: &str = "bhtest0";
const TEST_SUBNET: &str = "10.89.250.0/24";
const TEST_PORT: u16 = 18931;

fn bridge_net(dir: &Path) -> BridgeNetwork {
    BridgeNetwork {
        name: "bulkhead-cni-test".into(),
        bridge: TEST_BRIDGE.into(),
        subnet: TEST_SUBNET.parse().unwrap_or_else(|e| panic!("{e}")),
        ipam_dir: dir.join("ipam"),
    }
}

#[test]
fn attachment_state_round_trips() {
    let dir = Path::new("/run/x");
    let ports = vec!["127.0.0.1:8080:80".parse().unwrap()];
    let mut att = Attachment::new(
        "abc",
        &dir.join("netns/abc"),
        vec![bridge_net(dir).conflist()],
        ports,
    );
    assert_eq!(att.networks.len(), 2);
    assert_eq!(att.networks[0].ifname, "lo");
    assert_eq!(att.networks[1].ifname, "eth0");
    assert_eq!(att.network_name(), Some("bulkhead-cni-test"));
    assert_eq!(att.endpoint(), None);
    att.networks[1].result = Some(serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/x/netns/abc"}],
        "ips": [{"interface": 0, "address": "10.89.250.5/24", "gateway": "10.89.250.1"}],
        "someFutureKey": {"kept": true}
    }));
    let text = serde_json::to_string(&att).unwrap();
    let back: Attachment = serde_json::from_str(&text).unwrap();
    assert_eq!(back, att);
    // The raw result is kept whole for prevResult.
    assert_eq!(
        back.networks[1].result.as_ref().unwrap()["someFutureKey"]["kept"],
        true
    );
    let e = back.endpoint().unwrap();
    assert_eq!(
        (e.ip_address.as_str(), e.gateway.as_str()),
        ("10.89.250.5", "10.89.250.1")
    );
}

/// Why the root tests cannot run here, if they cannot.
fn not_ready() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, bridges, iptables)".into());
    }
    let plugins = ["bridge", "host-local", "portmap", "firewall", "loopback"];
    let missing = plugins
        .iter()
        .find(|p| !Path::new(DEFAULT_PLUGIN_DIRS[0]).join(p).exists())?;
    Some(format!(
        "CNI plugin {missing} not in {} (apt-get install containernetworking-plugins)",
        DEFAULT_PLUGIN_DIRS[0]
    ))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Serves one connection inside the namespace: answers "hi from the netns".
fn serve_once_in(netns: &Path) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(netns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // SAFETY: setns on a namespace fd, in this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let l = TcpListener::bind("0.0.0.0:80").unwrap();
        tx.send(()).unwrap();
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(b"hi from the netns\n");
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    t
}

#[test]
fn cni_real_plugins_add_publish_del_leave_nothing() {
    if let Some(reason) = not_ready() {
        bulkhead_test_skip::skip(&reason);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = bridge_net(dir.path());
    let id = format!("bhtest-{}", std::process::id());
    let netns = dir.path().join("netns").join(&id);
    let ports = vec![format!("127.0.0.1:{TEST_PORT}:80").parse().unwrap()];
    let mut att = Attachment::new(&id, &netns, vec![net.conflist()], ports);
    let cni = Cni::new(DEFAULT_PLUGIN_DIRS.iter().map(Into::into).collect());

    cni.attach(&mut att)
        .unwrap_or_else(|e| panic!("{}", bulkhead_log::error_chain(&e)));
    let cleanup = Cleanup {
        cni: cni.clone(),
        att: att.clone(),
    };
    assert!(netns::exists(&netns));
    let ep = att.endpoint().expect("an address on eth0");
    let ip: Ipv4Addr = ep.ip_address.parse().unwrap();
    assert_eq!(&ip.octets()[..3], &[10, 89, 250], "{ep:?}");
    assert_eq!((ep.gateway.as_str(), ep.prefix_len), ("10.89.250.1", 24));
    assert_eq!(ep.mac_address.len(), 17, "{ep:?}");
    let netns_arg = format!("--net={}", netns.display());
    let inside = sh("nsenter", &[&netns_arg, "ip", "-4", "addr", "show", "eth0"]);
    assert!(inside.contains(&format!("{ip}/24")), "{inside}");
    let lo = sh("nsenter", &[&netns_arg, "ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert!(sh("ip", &["link", "show", TEST_BRIDGE]).contains(TEST_BRIDGE));
    let store = net.ipam_dir.join(&net.name);
    assert!(store.join(ip.to_string()).exists());
    assert!(sh("iptables-save", &[]).contains(&id));
    // No CHECK: portmap 1.1.1 fails it whenever the host has no IPv6 DNAT chain
    // ("could not check ipv6 dnat: chain CNI-DN-... not found").

    // The published port answers on the host's loopback.
    let server = serve_once_in(&netns);
    let mut s = TcpStream::connect(("127.0.0.1", TEST_PORT)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi from the netns\n");
    server.join().unwrap();

    cni.detach(&att)
        .unwrap_or_else(|e| panic!("{}", bulkhead_log::error_chain(&e)));
    assert!(!netns.exists());
    assert!(!store.join(ip.to_string()).exists(), "address not released");
    assert!(
        !sh("iptables-save", &[]).contains(&id),
        "iptables rules left"
    );
    // Twice is fine, and so is DEL of an attachment whose ADD never happened.
    cni.detach(&att)
        .unwrap_or_else(|e| panic!("{}", bulkhead_log::error_chain(&e)));
    let never = Attachment::new(
        "bhtest-never",
        &dir.path().join("netns/never"),
        vec![net.conflist()],
        vec![],
    );
    cni.detach(&never)
        .unwrap_or_else(|e| panic!("{}", bulkhead_log::error_chain(&e)));
    drop(cleanup);
}

#[test]
fn cni_a_failed_add_undoes_itself() {
    if let Some(reason) = not_ready() {
        bulkhead_test_skip::skip(&reason);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = bridge_net(dir.path());
    net.bridge = "bhtest1".into();
    net.subnet = "10.89.249.0/24".parse().unwrap();
    let mut list = net.conflist();
    list.name = "bulkhead-cni-test-fail".into();
    list.plugins.push(
        serde_json::json!({"type": "no-such-plugin"})
            .as_object()
            .cloned()
            .unwrap(),
    );
    let netns = dir.path().join("netns/fail");
    let mut att = Attachment::new("bhtest-fail", &netns, vec![list.clone()], vec![]);
    let cni = Cni::new(DEFAULT_PLUGIN_DIRS.iter().map(Into::into).collect());
    let e = cni.attach(&mut att).unwrap_err().to_string();
    assert!(e.contains("\"no-such-plugin\" not found"), "{e}");
    assert!(!netns.exists());
    let store = dir.path().join("ipam").join(&list.name);
    let left: Vec<_> = std::fs::read_dir(&store)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("10."))
        .collect();
    let _ = Command::new("ip").args(["link", "del", "bhtest1"]).output();
    assert!(left.is_empty(), "addresses left: {left:?}");
}

/// Detaches and removes the test bridge even when an assertion failed.
struct Cleanup {
    cni: Cni,
    att: Attachment,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.cni.detach(&self.att);
        let _ = Command::new("ip")
            .args(["link", "del", TEST_BRIDGE])
            .output();
    }
}
