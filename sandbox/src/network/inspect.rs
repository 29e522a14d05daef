//! Reading a network namespace over rtnetlink into a plain [`NamespaceSnapshot`]: its links,
//! addresses, the unicast routes of the main table and the permanent neighbours. The
//! conversions from netlink messages are pure functions; what they cannot represent
//! (multipath routes, non-IP neighbours) is left out and logged.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol as NlProtocol,
    RouteScope as NlScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use bulkhead_protocol::network::{IpCidr, MacAddr, RouteScope};

/// What kind of link it is, as far as pod networking cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    Veth,
    /// A tun/tap device (ours, or a VMM's).
    Tap,
    /// Anything else, by its `rtnl_link_ops` kind (`macvlan`, `ipvlan`, ...; empty if none).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSnapshot {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// `None` for links without an Ethernet address (loopback has all zeros).
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressSnapshot {
    pub link_index: u32,
    pub cidr: IpCidr,
}

/// Who installed a route (`proto` in `ip route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// The kernel, for an address's prefix (the agent's address add recreates it).
    Kernel,
    /// IPv6 router advertisement.
    Ra,
    /// Anything else: `boot` (the `ip route add` default), `static`, `dhcp`, daemons.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSnapshot {
    /// `None` for a default route.
    pub destination: Option<IpCidr>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub scope: RouteScope,
    pub origin: RouteOrigin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourSnapshot {
    pub link_index: u32,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A namespace's network as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceSnapshot {
    pub links: Vec<LinkSnapshot>,
    pub addresses: Vec<AddressSnapshot>,
    /// Unicast routes of the main table, IPv4 then IPv6.
    pub routes: Vec<RouteSnapshot>,
    /// Permanent neighbour entries with a link-layer address.
    pub neighbours: Vec<NeighbourSnapshot>,
}

/// What [`inspect`] was reading when netlink failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectStep {
    Links,
    Addresses,
    Routes,
    Neighbours,
}

/// Reads the namespace `handle`'s socket was opened in.
pub async fn inspect(
    handle: &Handle,
) -> Result<NamespaceSnapshot, (InspectStep, rtnetlink::Error)> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| (InspectStep::Links, e))?;
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| (InspectStep::Addresses, e))?;
    let mut routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| (InspectStep::Routes, e))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| (InspectStep::Routes, e))?;
    routes.extend(v6);
    let neighbours: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| (InspectStep::Neighbours, e))?;
    Ok(NamespaceSnapshot {
        links: links.iter().filter_map(link_of).collect(),
        addresses: addresses.iter().filter_map(address_of).collect(),
        routes: routes.iter().filter_map(route_of).collect(),
        neighbours: neighbours.iter().filter_map(neighbour_of).collect(),
    })
}

/// A link message as a [`LinkSnapshot`]; `None` without a name.
pub fn link_of(msg: &LinkMessage) -> Option<LinkSnapshot> {
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    let mut info_kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = mac_of(a),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                info_kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.clone()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let kind = if msg.header.link_layer_type == LinkLayerType::Loopback {
        LinkKind::Loopback
    } else {
        match info_kind {
            Some(InfoKind::Veth) => LinkKind::Veth,
            Some(InfoKind::Tun) => LinkKind::Tap,
            Some(other) => LinkKind::Other(other.to_string()),
            None => LinkKind::Other(String::new()),
        }
    };
    Some(LinkSnapshot {
        index: msg.header.index,
        name: name?,
        kind,
        mac: mac.filter(|m: &MacAddr| m.0 != [0; 6]),
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
    })
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

/// An address message as an [`AddressSnapshot`] (the local address: on point-to-point
/// links `IFA_ADDRESS` is the peer's).
pub fn address_of(msg: &AddressMessage) -> Option<AddressSnapshot> {
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    let cidr = IpCidr::new(local.or(address)?, msg.header.prefix_len)?;
    Some(AddressSnapshot {
        link_index: msg.header.index,
        cidr,
    })
}

/// A route message as a [`RouteSnapshot`] if it is a unicast route of the main table.
pub fn route_of(msg: &RouteMessage) -> Option<RouteSnapshot> {
    let h = &msg.header;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut prefsrc = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => destination = ip_of(a),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(a) => prefsrc = ip_of(a),
            RouteAttribute::MultiPath(_) => {
                log::warn!("multipath route left out: {msg:?}");
                return None;
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let destination = match destination {
        Some(addr) => Some(IpCidr::new(addr, h.destination_prefix_length)?),
        None if h.destination_prefix_length == 0 => None,
        None => return None,
    };
    let scope = match h.scope {
        NlScope::Universe | NlScope::Site => RouteScope::Universe,
        NlScope::Link => RouteScope::Link,
        NlScope::Host => RouteScope::Host,
        _ => return None,
    };
    let origin = match h.protocol {
        NlProtocol::Kernel => RouteOrigin::Kernel,
        NlProtocol::Ra => RouteOrigin::Ra,
        other => RouteOrigin::Other(u8::from(other)),
    };
    Some(RouteSnapshot {
        destination,
        gateway,
        oif,
        prefsrc,
        scope,
        origin,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A neighbour message as a [`NeighbourSnapshot`] if it is permanent, for an IP address,
/// with an Ethernet address.
pub fn neighbour_of(msg: &NeighbourMessage) -> Option<NeighbourSnapshot> {
    if msg.header.state != NeighbourState::Permanent {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(a) => mac = mac_of(a),
            _ => {}
        }
    }
    Some(NeighbourSnapshot {
        link_index: msg.header.ifindex,
        ip: ip?,
        mac: mac?,
    })
}
