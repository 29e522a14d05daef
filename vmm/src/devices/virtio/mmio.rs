//! virtio-mmio transport (virtio 1.x, "modern" register layout).
