//! KVM state: guest memory, the VM, the vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
