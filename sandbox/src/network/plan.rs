//! What to build for a pod's network, decided from a [`NamespaceSnapshot`] alone (pure, no
//! kernel): one tap per NIC that CNI configured, and the [`GuestNetwork`] the agent applies.
//!
//! A NIC is every link that is neither loopback nor a tap and has an address other than an
//! IPv6 link-local one (the guest makes its own). The guest interface keeps the link's name,
//! MAC and MTU. Routes are those through the NICs, without the kernel's prefix routes (the
//! agent's address add recreates them), link routes first so that gateways are reachable
//! when the routes through them are added. Permanent neighbours on the NICs go along.

use std::collections::HashSet;
use std::net::IpAddr;

use thiserror::Error;

use bulkhead_protocol::network::{
    GuestInterface, GuestNeighbour, GuestNetwork, GuestRoute, IpCidr, MacAddr,
};

use super::inspect::{LinkKind, NamespaceSnapshot, RouteOrigin};

/// Linux's `IFNAMSIZ` less the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// One tap to create, mirrored with the NIC `link_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    pub link_name: String,
    pub link_index: u32,
    /// `tap<N>_bh`, unique in the namespace.
    pub tap_name: String,
    /// The NIC's MAC: the guest NIC takes it (the tap keeps its own).
    pub mac: MacAddr,
    pub mtu: u32,
}

/// Everything [`plan`] decided; empty for a namespace with only a loopback.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetworkPlan {
    pub taps: Vec<TapPlan>,
    pub guest: GuestNetwork,
}

impl PodNetworkPlan {
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("link {link} has no unicast Ethernet address for the guest NIC")]
    NoMac { link: String },
    #[error("link {link} has no MTU")]
    NoMtu { link: String },
    #[error("no free tap name for link {link}")]
    NoTapName { link: String },
}

/// Plans the taps and the guest's network for `snapshot`.
pub fn plan(snapshot: &NamespaceSnapshot) -> Result<PodNetworkPlan, PlanError> {
    let taken: HashSet<&str> = snapshot.links.iter().map(|l| l.name.as_str()).collect();
    let mut out = PodNetworkPlan::default();
    // Link index -> guest interface name.
    let mut nics: Vec<(u32, String)> = Vec::new();
    let mut next_tap = 0usize;
    for link in &snapshot.links {
        if matches!(link.kind, LinkKind::Loopback | LinkKind::Tap) {
            continue;
        }
        let addresses: Vec<IpCidr> = snapshot
            .addresses
            .iter()
            .filter(|a| a.link_index == link.index && !is_ipv6_link_local(&a.cidr.addr))
            .map(|a| a.cidr)
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let mac = link
            .mac
            .filter(MacAddr::is_unicast)
            .ok_or_else(|| PlanError::NoMac {
                link: link.name.clone(),
            })?;
        if link.mtu == 0 {
            return Err(PlanError::NoMtu {
                link: link.name.clone(),
            });
        }
        let tap_name = loop {
            let name = format!("tap{next_tap}_bh");
            next_tap += 1;
            if name.len() > MAX_IFNAME_LEN {
                return Err(PlanError::NoTapName {
                    link: link.name.clone(),
                });
            }
            if !taken.contains(name.as_str()) {
                break name;
            }
        };
        out.taps.push(TapPlan {
            link_name: link.name.clone(),
            link_index: link.index,
            tap_name,
            mac,
            mtu: link.mtu,
        });
        out.guest.interfaces.push(GuestInterface {
            name: link.name.clone(),
            mac,
            mtu: link.mtu,
            addresses,
        });
        nics.push((link.index, link.name.clone()));
    }
    let guest_name = |index: Option<u32>| {
        nics.iter()
            .find(|(i, _)| Some(*i) == index)
            .map(|(_, n)| n.clone())
    };
    let guest_addresses: HashSet<IpAddr> = out
        .guest
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.addr))
        .collect();
    for route in &snapshot.routes {
        let Some(device) = guest_name(route.oif) else {
            continue;
        };
        if route.origin == RouteOrigin::Kernel && route.gateway.is_none() {
            continue;
        }
        out.guest.routes.push(GuestRoute {
            destination: route.destination,
            gateway: route.gateway,
            device,
            // A source the guest does not have would make the agent's route add fail.
            source: route.prefsrc.filter(|s| guest_addresses.contains(s)),
            scope: route.scope,
        });
    }
    // Stable: link routes keep their order, then the routes through gateways.
    out.guest.routes.sort_by_key(|r| r.gateway.is_some());
    for n in &snapshot.neighbours {
        if let Some(device) = guest_name(Some(n.link_index)) {
            out.guest.neighbours.push(GuestNeighbour {
                ip: n.ip,
                mac: n.mac,
                device,
            });
        }
    }
    Ok(out)
}

fn is_ipv6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
