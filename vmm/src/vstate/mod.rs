//! KVM state: guest memory, the VM, the vCPUs.
