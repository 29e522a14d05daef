//! Device models. Nothing in here holds a KVM handle: devices see guest memory, eventfds and
//! the small traits below, and the device manager wires them to KVM.

pub mod bus;
pub mod legacy;
pub mod unix_fd;
pub mod virtio;
