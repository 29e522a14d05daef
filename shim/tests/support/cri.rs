//! A CRI client on containerd's socket, as kubelet talks to it (the `k8s-cri` crate's
//! generated gRPC client over a unix socket), and the pause image CRI pods use.

use std::path::Path;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

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
