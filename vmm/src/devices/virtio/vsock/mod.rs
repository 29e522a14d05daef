//! virtio-vsock with a hybrid (unix socket) host side.
