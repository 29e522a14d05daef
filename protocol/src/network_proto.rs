//! The network requests (UpdateInterface, UpdateRoutes, UpdateNeighbours): conversions
//! between the protobuf messages and the domain types of [`crate::network`], and the checks
//! the agent relies on before it touches netlink. A refusal names the field and, for lists,
//! the entry (`routes[3]: ...`).
//!
//! The host runs the same checks before it sends ([`validate_interface`],
//! [`validate_routes`], [`validate_neighbours`]), so a bad plan fails on the host with the
//! same message.

use std::net::IpAddr;

use crate::network::{GuestInterface, GuestNeighbour, GuestRoute, IpCidr, MacAddr, RouteScope};
use crate::proto;
use crate::types::InvalidField;

/// Most addresses on one interface.
pub const MAX_ADDRESSES: usize = 64;
/// Most routes in one UpdateRoutes.
pub const MAX_ROUTES: usize = 256;
/// Most entries in one UpdateNeighbours.
pub const MAX_NEIGHBOURS: usize = 256;
/// Longest interface name (the kernel's IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU accepted (the IPv4 minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted (virtio-net's limit).
pub const MAX_MTU: u32 = 65_535;

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Prefixes a list entry's index to a refusal: `routes[3]: ...`.
fn at(list: &'static str, i: usize) -> impl Fn(InvalidField) -> InvalidField {
    move |e| InvalidField {
        field: list,
        reason: format!("[{i}] {}: {}", e.field, e.reason),
    }
}

/// An interface name the kernel accepts (`dev_valid_name`): 1..=15 bytes, not `.` or
/// `..`, no `/`, `:`, NUL or whitespace.
pub fn validate_ifname(field: &'static str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            field,
            format!("{name:?} is longer than {MAX_IFNAME_LEN} bytes"),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(field, format!("{name:?} is not a name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        return Err(invalid(
            field,
            format!("{name:?}: character {c:?} not allowed"),
        ));
    }
    Ok(())
}

fn validate_mac(field: &'static str, mac: &MacAddr) -> Result<(), InvalidField> {
    if mac.is_unicast() {
        Ok(())
    } else {
        Err(invalid(field, format!("{mac} is not a unicast address")))
    }
}

/// An address a NIC can hold: not unspecified, multicast or broadcast.
fn validate_host_addr(field: &'static str, cidr: &IpCidr) -> Result<(), InvalidField> {
    let bad = match cidr.addr {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if bad {
        return Err(invalid(
            field,
            format!("{cidr} cannot be an interface address"),
        ));
    }
    Ok(())
}

/// Checks what UpdateInterface relies on: the name, a unicast MAC, the MTU range, at most
/// [`MAX_ADDRESSES`] addresses whose prefixes fit their family.
pub fn validate_interface(i: &GuestInterface) -> Result<(), InvalidField> {
    validate_ifname("interface.name", &i.name)?;
    validate_mac("interface.mac", &i.mac)?;
    if !(MIN_MTU..=MAX_MTU).contains(&i.mtu) {
        return Err(invalid(
            "interface.mtu",
            format!("{} is not in {MIN_MTU}..={MAX_MTU}", i.mtu),
        ));
    }
    if i.addresses.len() > MAX_ADDRESSES {
        return Err(invalid(
            "interface.addresses",
            format!("{} addresses, at most {MAX_ADDRESSES}", i.addresses.len()),
        ));
    }
    for (n, a) in i.addresses.iter().enumerate() {
        // `IpCidr` fields are public: check the prefix again.
        if IpCidr::new(a.addr, a.prefix_len).is_none() {
            return Err(at("interface.addresses", n)(invalid(
                "prefix_len",
                format!("{} does not fit {}", a.prefix_len, a.addr),
            )));
        }
        validate_host_addr("address", a).map_err(at("interface.addresses", n))?;
    }
    Ok(())
}

fn validate_route(r: &GuestRoute) -> Result<(), InvalidField> {
    validate_ifname("device", &r.device)?;
    let family = match (&r.destination, &r.gateway) {
        (Some(d), _) => {
            if IpCidr::new(d.addr, d.prefix_len).is_none() {
                return Err(invalid(
                    "destination",
                    format!("prefix {} does not fit {}", d.prefix_len, d.addr),
                ));
            }
            d.addr.is_ipv4()
        }
        (None, Some(gw)) => gw.is_ipv4(),
        (None, None) => {
            return Err(invalid(
                "gateway",
                "a default route needs a gateway (it gives the family)",
            ))
        }
    };
    let name = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    for (field, addr) in [("gateway", r.gateway), ("source", r.source)] {
        if let Some(a) = addr {
            if a.is_ipv4() != family {
                return Err(invalid(
                    field,
                    format!("{a} is not {} like the destination", name(family)),
                ));
            }
            if a.is_unspecified() || a.is_multicast() {
                return Err(invalid(field, format!("{a} is not a host address")));
            }
        }
    }
    Ok(())
}

/// Checks what UpdateRoutes relies on: at most [`MAX_ROUTES`] routes, each with a device
/// name, a destination whose prefix fits its family (or a gateway, for a default route),
/// and a gateway and source of the destination's family.
pub fn validate_routes(routes: &[GuestRoute]) -> Result<(), InvalidField> {
    if routes.len() > MAX_ROUTES {
        return Err(invalid(
            "routes",
            format!("{} routes, at most {MAX_ROUTES}", routes.len()),
        ));
    }
    for (n, r) in routes.iter().enumerate() {
        validate_route(r).map_err(at("routes", n))?;
    }
    Ok(())
}

/// Checks what UpdateNeighbours relies on: at most [`MAX_NEIGHBOURS`] entries, each with a
/// device name, a unicast MAC and a host address.
pub fn validate_neighbours(neighbours: &[GuestNeighbour]) -> Result<(), InvalidField> {
    if neighbours.len() > MAX_NEIGHBOURS {
        return Err(invalid(
            "neighbours",
            format!("{} entries, at most {MAX_NEIGHBOURS}", neighbours.len()),
        ));
    }
    for (n, nb) in neighbours.iter().enumerate() {
        let check = || {
            validate_ifname("device", &nb.device)?;
            validate_mac("mac", &nb.mac)?;
            if nb.ip.is_unspecified() || nb.ip.is_multicast() {
                return Err(invalid("ip", format!("{} is not a host address", nb.ip)));
            }
            Ok(())
        };
        check().map_err(at("neighbours", n))?;
    }
    Ok(())
}

// ---- parsing helpers ----

fn parse_ip(field: &'static str, s: &str) -> Result<IpAddr, InvalidField> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

fn parse_optional_ip(field: &'static str, s: &str) -> Result<Option<IpAddr>, InvalidField> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_ip(field, s).map(Some)
    }
}

fn parse_mac(field: &'static str, s: &str) -> Result<MacAddr, InvalidField> {
    s.parse().map_err(|e| invalid(field, format!("{e}")))
}

fn parse_cidr(field: &'static str, c: &proto::IpCidr) -> Result<IpCidr, InvalidField> {
    let addr = parse_ip(field, &c.address)?;
    u8::try_from(c.prefix_len)
        .ok()
        .and_then(|p| IpCidr::new(addr, p))
        .ok_or_else(|| {
            invalid(
                field,
                format!("prefix {} does not fit {addr}", c.prefix_len),
            )
        })
}

fn cidr_to_proto(c: &IpCidr) -> proto::IpCidr {
    let mut p = proto::IpCidr::new();
    p.address = c.addr.to_string();
    p.prefix_len = u32::from(c.prefix_len);
    p
}

fn ip_to_proto(ip: Option<IpAddr>) -> String {
    ip.map(|a| a.to_string()).unwrap_or_default()
}

// ---- requests: protobuf -> domain (agent side) ----

impl TryFrom<&proto::UpdateInterfaceRequest> for GuestInterface {
    type Error = InvalidField;

    fn try_from(r: &proto::UpdateInterfaceRequest) -> Result<Self, InvalidField> {
        let i = r
            .interface
            .as_ref()
            .ok_or_else(|| invalid("interface", "is missing"))?;
        if i.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                "interface.addresses",
                format!("{} addresses, at most {MAX_ADDRESSES}", i.addresses.len()),
            ));
        }
        let addresses = i
            .addresses
            .iter()
            .enumerate()
            .map(|(n, a)| parse_cidr("address", a).map_err(at("interface.addresses", n)))
            .collect::<Result<Vec<_>, _>>()?;
        let iface = GuestInterface {
            name: i.name.clone(),
            mac: parse_mac("interface.mac", &i.mac)?,
            mtu: i.mtu,
            addresses,
        };
        validate_interface(&iface)?;
        Ok(iface)
    }
}

fn route_from_proto(r: &proto::Route) -> Result<GuestRoute, InvalidField> {
    let destination = r
        .destination
        .as_ref()
        .map(|d| parse_cidr("destination", d))
        .transpose()?;
    let scope = match r.scope.enum_value() {
        Ok(proto::RouteScope::ROUTE_SCOPE_UNIVERSE) => RouteScope::Universe,
        Ok(proto::RouteScope::ROUTE_SCOPE_LINK) => RouteScope::Link,
        Ok(proto::RouteScope::ROUTE_SCOPE_HOST) => RouteScope::Host,
        Err(v) => return Err(invalid("scope", format!("unknown scope {v}"))),
    };
    let route = GuestRoute {
        destination,
        gateway: parse_optional_ip("gateway", &r.gateway)?,
        device: r.device.clone(),
        source: parse_optional_ip("source", &r.source)?,
        scope,
    };
    validate_route(&route)?;
    Ok(route)
}

impl TryFrom<&proto::UpdateRoutesRequest> for Vec<GuestRoute> {
    type Error = InvalidField;

    fn try_from(r: &proto::UpdateRoutesRequest) -> Result<Self, InvalidField> {
        if r.routes.len() > MAX_ROUTES {
            return Err(invalid(
                "routes",
                format!("{} routes, at most {MAX_ROUTES}", r.routes.len()),
            ));
        }
        r.routes
            .iter()
            .enumerate()
            .map(|(n, p)| route_from_proto(p).map_err(at("routes", n)))
            .collect()
    }
}

impl TryFrom<&proto::UpdateNeighboursRequest> for Vec<GuestNeighbour> {
    type Error = InvalidField;

    fn try_from(r: &proto::UpdateNeighboursRequest) -> Result<Self, InvalidField> {
        if r.neighbours.len() > MAX_NEIGHBOURS {
            return Err(invalid(
                "neighbours",
                format!("{} entries, at most {MAX_NEIGHBOURS}", r.neighbours.len()),
            ));
        }
        let list = r
            .neighbours
            .iter()
            .enumerate()
            .map(|(n, p)| {
                let parse = || {
                    Ok(GuestNeighbour {
                        ip: parse_ip("ip", &p.ip)?,
                        mac: parse_mac("mac", &p.mac)?,
                        device: p.device.clone(),
                    })
                };
                parse().map_err(at("neighbours", n))
            })
            .collect::<Result<Vec<_>, _>>()?;
        validate_neighbours(&list)?;
        Ok(list)
    }
}

// ---- requests: domain -> protobuf (host side) ----

impl From<&GuestInterface> for proto::UpdateInterfaceRequest {
    fn from(i: &GuestInterface) -> Self {
        let mut p = proto::Interface::new();
        p.name = i.name.clone();
        p.mac = i.mac.to_string();
        p.mtu = i.mtu;
        p.addresses = i.addresses.iter().map(cidr_to_proto).collect();
        let mut r = proto::UpdateInterfaceRequest::new();
        r.interface = Some(p).into();
        r
    }
}

impl From<&[GuestRoute]> for proto::UpdateRoutesRequest {
    fn from(routes: &[GuestRoute]) -> Self {
        let mut r = proto::UpdateRoutesRequest::new();
        r.routes = routes
            .iter()
            .map(|g| {
                let mut p = proto::Route::new();
                p.destination = g.destination.as_ref().map(cidr_to_proto).into();
                p.gateway = ip_to_proto(g.gateway);
                p.device = g.device.clone();
                p.source = ip_to_proto(g.source);
                p.scope = match g.scope {
                    RouteScope::Universe => proto::RouteScope::ROUTE_SCOPE_UNIVERSE,
                    RouteScope::Link => proto::RouteScope::ROUTE_SCOPE_LINK,
                    RouteScope::Host => proto::RouteScope::ROUTE_SCOPE_HOST,
                }
                .into();
                p
            })
            .collect();
        r
    }
}

impl From<&[GuestNeighbour]> for proto::UpdateNeighboursRequest {
    fn from(list: &[GuestNeighbour]) -> Self {
        let mut r = proto::UpdateNeighboursRequest::new();
        r.neighbours = list
            .iter()
            .map(|n| {
                let mut p = proto::Neighbour::new();
                p.ip = n.ip.to_string();
                p.mac = n.mac.to_string();
                p.device = n.device.clone();
                p
            })
            .collect();
        r
    }
}

#[cfg(test)]
#[path = "network_proto_tests.rs"]
mod tests;
