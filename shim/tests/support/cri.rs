//! A CRI client on containerd's socket, as kubelet talks to it (the `k8s-cri` crate's
//! generated gRPC client over a unix socket), and the pause image CRI pods use.

use std::path::Path;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};

use super::{image_archive, Containerd, IMAGE};

/// The pause image: busybox whose command is `sleep`.
pub const PAUSE: &str = "docker.io/bulkhead/pause:e2e";

pub type Client = RuntimeServiceClient<Channel>;

/// Connects to containerd's CRI service on `socket`.
pub async fn connect(socket: &Path) -> Client {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to containerd's CRI");
    RuntimeServiceClient::new(channel)
}

/// Imports the busybox and pause images into `k8s.io` and points `c` at that namespace,
/// where the shims of CRI pods run.
pub fn prepare(c: &mut Containerd) {
    let images = c.dir().join("images");
    let busybox = image_archive(&images.join("busybox"), IMAGE, &["/bin/sh"]);
    let pause = image_archive(&images.join("pause"), PAUSE, &["/bin/sleep", "2147483647"]);
    c.import_into("k8s.io", &busybox);
    c.import_into("k8s.io", &pause);
    c.namespace = "k8s.io".into();
}

/// kubelet's namespaces for a host-network pod without a shared pid namespace.
pub fn host_network_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A host-network pod `name` whose container logs go to `log_dir` (kubelet sends no
/// hostname for host-network pods).
pub fn host_network_pod(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-1"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: String::new(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container `name` of a host-network pod running `sh -c script`, logging to
/// `<name>.log`.
pub fn busybox_container(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `path` until it contains `needle` (CRI log lines: `TIME stdout F TEXT`), at most
/// `limit`; returns what it holds then.
pub fn wait_for_log(path: &Path, needle: &str, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
