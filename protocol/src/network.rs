//! The guest's network as the host describes it: interfaces (found by MAC), their
//! addresses, routes and neighbours. The host reads these from the pod's network namespace
//! (`bulkhead_sandbox::network`) and the agent applies them (UpdateInterface,
//! UpdateRoutes, UpdateNeighbours). Plain domain types; the protobuf conversions and their
//! checks live in `network_proto`.

pub use bulkhead_vmm_contract::net::{MacAddr, ParseMacError};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// An address with its prefix length (`10.88.0.5/16`, `fd00::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A string that is not `ADDRESS/PREFIX` with a prefix that fits the address family.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not ADDRESS/PREFIX")]
pub struct ParseCidrError(pub String);

impl IpCidr {
    /// Checks that the prefix fits the family (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<IpCidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then_some(IpCidr { addr, prefix_len })
    }
}

impl FromStr for IpCidr {
    type Err = ParseCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        IpCidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One guest NIC: the agent finds it by `mac`, renames it to `name`, sets the MTU and the
/// addresses, and brings it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// Name inside the guest (the pod veth's name, usually `eth0`).
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    pub addresses: Vec<IpCidr>,
}

/// The scope of a route, as `ip route` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteScope {
    /// Through a gateway or anywhere (`scope global`).
    #[default]
    Universe,
    /// Directly reachable on the link (`scope link`).
    Link,
    /// This host (`scope host`).
    Host,
}

/// One route of the guest's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    /// `None` is the default route of the gateway's family.
    pub destination: Option<IpCidr>,
    pub gateway: Option<IpAddr>,
    /// Interface name in the guest (a [`GuestInterface::name`]).
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    pub scope: RouteScope,
}

/// A permanent neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNeighbour {
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// Interface name in the guest.
    pub device: String,
}

/// Everything the agent configures for a pod network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<GuestInterface>,
    pub routes: Vec<GuestRoute>,
    pub neighbours: Vec<GuestNeighbour>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_checks_the_prefix_against_the_family() {
        let v4: IpCidr = "10.88.0.5/16".parse().unwrap();
        assert_eq!(v4.to_string(), "10.88.0.5/16");
        assert!("fd00::5/64".parse::<IpCidr>().is_ok());
        assert!("10.0.0.1/33".parse::<IpCidr>().is_err());
        assert!("fd00::1/129".parse::<IpCidr>().is_err());
        assert!("10.0.0.1".parse::<IpCidr>().is_err());
    }
}
