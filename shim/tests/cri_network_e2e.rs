//! Pods on the pod network, as Kubernetes runs them by default: containerd's CRI plugin with
//! a CNI bridge conflist (bridge + host-local + portmap, on a bridge and subnet of this
//! test's own), two pods on RuntimeClass `bulkhead` and one on runc. Each pod gets its IP
//! from CNI; HTTP works both ways between the two Bulkhead pods, between a Bulkhead pod and
//! the runc pod, from the host to a pod IP and through a `hostPort`; the guest container's
//! `/etc/resolv.conf` and hostname are CRI's. Removing the pods leaves no network
//! namespace, address allocation or VM behind.
//!
//! Traffic goes only between the host and addresses on the bridge this test creates.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use support::cri::{connect, prepare, Client, PAUSE};
use support::scenarios::real_vm_prerequisites;
use support::*;

const BRIDGE: &str = "bhcri0";
const GATEWAY: &str = "10.89.248.1";
const HOST_PORT: u16 = 18081;
const DNS_SERVER: &str = "10.89.248.53";

const CONFLIST: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "bulkhead-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "bhcri0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "{DIR}/cni-ipam",
              "ranges": [[{"subnet": "10.89.248.0/24"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

/// The pod network: network namespace per pod (CNI's), pid per container.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, log_dir: &Path, ports: Vec<PortMapping>) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        dns_config: Some(DnsConfig {
            servers: vec![DNS_SERVER.into()],
            searches: vec!["bulkhead.test".into()],
            options: vec!["ndots:2".into()],
        }),
        port_mappings: ports,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A web server answering `name` on port 80 (busybox `httpd`).
fn web_container(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("mkdir -p /www && echo {name} >/www/index.html && exec httpd -f -p 80 -h /www"),
        ],
        log_path: "web.log".into(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Pod {
    name: &'static str,
    log: std::path::PathBuf,
    sandbox: String,
    container: String,
    ip: String,
}

async fn start_pod(
    cri: &mut Client,
    c: &Containerd,
    name: &'static str,
    handler: &str,
    ports: Vec<PortMapping>,
) -> Pod {
    let log_dir = c.dir().join(format!("logs-{name}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let config = pod_config(name, &log_dir, ports);
    let started = Instant::now();
    let sandbox = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\ncontainerd log:\n{}", c.log()))
        .into_inner()
        .pod_sandbox_id;
    eprintln!("pod {name} ({handler}) ready in {:?}", started.elapsed());
    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(web_container(name)),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}\n{}", c.log()))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}\n{}", c.log()));
    let status = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {name}: {e}"))
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(
        ip.starts_with("10.89.248."),
        "pod {name} has no IP from CNI: {ip:?}"
    );
    eprintln!("pod {name}: {ip}");
    Pod {
        name,
        log: c.dir().join(format!("logs-{name}")).join("web.log"),
        sandbox,
        container,
        ip,
    }
}

async fn exec(cri: &mut Client, pod: &Pod, script: &str) -> (i32, String, String) {
    let out = cri
        .exec_sync(ExecSyncRequest {
            container_id: pod.container.clone(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&pod.log).unwrap_or_default();
            panic!("ExecSync in {}: {e}\ncontainer log:\n{log}", pod.name)
        })
        .into_inner();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `from` reads `to`'s answer over the pod network (retrying while its server starts);
/// on failure the message shows both ends' addresses, routes and counters.
async fn fetch(cri: &mut Client, from: &Pod, to: &Pod) {
    let script = format!(
        "for i in $(seq 1 6); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 80 && exit 0; \
         sleep 0.5; done; exit 1",
        to.ip
    );
    let (code, out, err) = exec(cri, from, &script).await;
    // The HTTP answer's last line is the page. (busybox-static's wget cannot be the client:
    // it crashes resolving even an address, in static glibc's NSS.)
    if (code, out.trim_end().lines().last().unwrap_or_default()) != (0, to.name) {
        let diag = "ip addr; ip route; ip neigh; cat /proc/net/dev";
        let (_, here, _) = exec(cri, from, diag).await;
        let (_, there, _) = exec(cri, to, diag).await;
        panic!(
            "{} -> {} ({}): status {code}, {out:?}, {err}\n{}:\n{here}\n{}:\n{there}\n\
             host side:\n{}",
            from.name,
            to.name,
            to.ip,
            from.name,
            to.name,
            host_side()
        );
    }
}

/// The body of `GET /` from the host (retrying while the server starts).
fn host_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
        })();
        match attempt {
            Ok(text) if !text.trim().is_empty() => return text.trim().to_owned(),
            Ok(_) if Instant::now() > deadline => panic!("{addr} answered nothing"),
            Err(e) if Instant::now() > deadline => panic!("connect to {addr} from the host: {e}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Links, qdiscs and ingress filters of every network namespace, as `ip` and `tc` show
/// them (for failure messages only).
fn host_side() -> String {
    let mut text = String::new();
    for ns in netns_names() {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c"])
            .arg("ip -s link; ip addr; tc -s qdisc show; for l in $(ls /sys/class/net); do tc -s filter show dev $l ingress; done")
            .output();
        if let Ok(o) = out {
            text.push_str(&format!(
                "== {ns}\n{}{}\n",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    text
}

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Addresses host-local still holds (one file per address in its data directory).
fn ipam_allocations(c: &Containerd) -> Vec<String> {
    let dir = c.dir().join("cni-ipam/bulkhead-e2e");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the test's bridge (CNI DEL leaves the bridge itself, as it does for every
/// network) when the test ends, however it ends.
struct BridgeGuard;

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

#[test]
fn pods_on_the_pod_network() {
    let env = match real_vm_prerequisites() {
        Ok(env) => env,
        Err(reason) => return skip(&reason),
    };
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        return skip("the CNI plugins are missing (apt-get install containernetworking-plugins)");
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let netns_before = netns_names();
    let _bridge = BridgeGuard;
    let mut c = Containerd::start_with_cni(&env, support::HARNESS_TIMEOUTS, PAUSE, CONFLIST);
    let _logs = LogCollector::start(&c.run_root);
    prepare(&mut c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cri = connect(c.socket()).await;
        let published = vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: 80,
            host_port: i32::from(HOST_PORT),
            host_ip: String::new(),
        }];
        let a = start_pod(&mut cri, &c, "vm-a", "bulkhead", published).await;
        let b = start_pod(&mut cri, &c, "vm-b", "bulkhead", Vec::new()).await;
        let r = start_pod(&mut cri, &c, "runc-r", "runc", Vec::new()).await;

        // The host to a pod IP, and through the hostPort on the bridge's address.
        assert_eq!(host_get(format!("{}:80", b.ip).parse().unwrap()), "vm-b");
        assert_eq!(
            host_get(format!("{GATEWAY}:{HOST_PORT}").parse().unwrap()),
            "vm-a"
        );
        // Pod to pod, both ways, VM to VM and VM to runc.
        fetch(&mut cri, &a, &b).await;
        fetch(&mut cri, &b, &a).await;
        fetch(&mut cri, &a, &r).await;
        fetch(&mut cri, &r, &a).await;
        // CRI's resolv.conf and hostname inside the guest's container.
        let (code, resolv, err) = exec(&mut cri, &a, "cat /etc/resolv.conf; hostname").await;
        assert_eq!(code, 0, "{err}");
        assert!(
            resolv.contains(&format!("nameserver {DNS_SERVER}")),
            "{resolv}"
        );
        assert!(resolv.contains("search bulkhead.test"), "{resolv}");
        assert!(resolv.trim_end().ends_with("vm-a"), "{resolv}");
        // The guest NIC has the pod's address.
        let (_, addrs, _) = exec(&mut cri, &a, "ip -4 addr show").await;
        assert!(addrs.contains(&format!("inet {}/24", a.ip)), "{addrs}");

        for pod in [&a, &b, &r] {
            cri.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}\n{}", pod.name, c.log()));
            cri.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}\n{}", pod.name, c.log()));
        }
    });
    assert_eq!(
        netns_names(),
        netns_before,
        "network namespaces left behind"
    );
    assert!(
        ipam_allocations(&c).is_empty(),
        "addresses still allocated: {:?}",
        ipam_allocations(&c)
    );
    c.assert_clean();
}
