//! The guest's network, made to look like the pod's network namespace: the host reads the
//! CNI veth's addresses, routes and neighbours and sends them (UpdateInterface,
//! UpdateRoutes, UpdateNeighbours); the VMM gave the guest a virtio-net NIC with the veth's
//! MAC and MTU. Everything goes through rtnetlink, on one netlink socket per request
//! ([`Netlink`]), opened in the calling thread's network namespace.
//!
//! - [`interface`]: find the NIC by MAC, rename it, MTU, addresses, up; `lo` up.
//! - [`routes`]: replace the main table's non-kernel routes, in an order the kernel accepts.
//! - [`neighbours`]: permanent ARP / NDP entries.
//! - [`links`]: the netlink connection and link lookups the others share.
//! - [`error`]: [`NetworkError`], naming the interface, address or route and the netlink
//!   error.
//!
//! Only the agent as PID 1 of a guest applies these; the agent run on the host (container
//! mode) shares the host's network namespace and refuses (see `Sandbox::manages_system`).

pub mod error;
pub mod interface;
pub mod links;
pub mod neighbours;
pub mod routes;

#[cfg(test)]
mod tests;

pub use error::NetworkError;
pub use interface::{bring_up_loopback, update_interface};
pub use links::Netlink;
pub use neighbours::update_neighbours;
pub use routes::update_routes;
