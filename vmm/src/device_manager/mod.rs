//! Wires device models to KVM: buses, ioeventfds, irqfds, kernel command line entries.
