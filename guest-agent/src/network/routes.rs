//! UpdateRoutes: the main table's routes become the host's list. Routes the kernel made
//! for the interface addresses stay; every other route of the main table goes, then the
//! list is added in an order the kernel accepts: routes without a gateway (the gateways'
//! subnets, on-link /32s), then routes through a gateway, default routes last.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_protocol::network::{GuestRoute, RouteScope};
use futures_util::TryStreamExt;
use log::info;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope as NlScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::network::error::NetworkError;
use crate::network::links::{DeviceIndexes, Netlink};

/// The route as `ip route` would show it, for errors and logs.
pub fn describe(r: &GuestRoute) -> String {
    let mut s = match &r.destination {
        Some(d) => d.to_string(),
        None => "default".to_owned(),
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    s.push_str(&format!(" dev {}", r.device));
    if let Some(src) = r.source {
        s.push_str(&format!(" src {src}"));
    }
    match r.scope {
        RouteScope::Universe => {}
        RouteScope::Link => s.push_str(" scope link"),
        RouteScope::Host => s.push_str(" scope host"),
    }
    s
}

/// Where a route goes in the adding order: a gateway must be reachable when its route is
/// added, so on-link routes come first and default routes last.
fn rank(r: &GuestRoute) -> u8 {
    match (r.gateway, r.destination) {
        (None, _) => 0,
        (Some(_), Some(_)) => 1,
        (Some(_), None) => 2,
    }
}

/// The routes in adding order (stable: the host's order within each rank).
pub fn ordered(routes: &[GuestRoute]) -> Vec<&GuestRoute> {
    let mut sorted: Vec<&GuestRoute> = routes.iter().collect();
    sorted.sort_by_key(|r| rank(r));
    sorted
}

/// Replaces the non-kernel routes of the main table (IPv4 and IPv6) with `routes`. Every
/// device is resolved before anything is removed, so a route naming a missing interface
/// changes nothing.
pub async fn update_routes(nl: &Netlink, routes: &[GuestRoute]) -> Result<(), NetworkError> {
    let devices = nl.indexes_by_name().await?;
    let plan = ordered(routes)
        .into_iter()
        .map(|r| Ok((r, route_message(r, &devices)?)))
        .collect::<Result<Vec<_>, NetworkError>>()?;
    remove_non_kernel_routes(nl).await?;
    for (route, message) in plan {
        nl.handle()
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(NetworkError::netlink(format!(
                "cannot add route {}",
                describe(route)
            )))?;
    }
    info!("{} routes set", routes.len());
    Ok(())
}

fn route_message(r: &GuestRoute, devices: &DeviceIndexes) -> Result<RouteMessage, NetworkError> {
    let index = devices.get(&r.device, || format!("route {}", describe(r)))?;
    let bad = |reason: String| NetworkError::BadRoute {
        route: describe(r),
        reason,
    };
    let v4 = match (r.destination, r.gateway) {
        (Some(d), _) => d.addr.is_ipv4(),
        (None, Some(gw)) => gw.is_ipv4(),
        (None, None) => return Err(bad("a default route needs a gateway".into())),
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    if let Some(d) = r.destination {
        b = b
            .destination_prefix(d.addr, d.prefix_len)
            .map_err(|e| bad(e.to_string()))?;
    }
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
    }
    if let Some(src) = r.source {
        b = b.pref_source(src).map_err(|e| bad(e.to_string()))?;
    }
    let scope = match r.scope {
        RouteScope::Universe => NlScope::Universe,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
    };
    Ok(b.output_interface(index).scope(scope).build())
}

fn address(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(v4) => v4.to_string(),
        RouteAddress::Inet6(v6) => v6.to_string(),
        other => format!("{other:?}"),
    }
}

/// A route read from the kernel, as `ip route` would show it (devices by index).
pub fn describe_message(m: &RouteMessage) -> String {
    let mut dst = "default".to_owned();
    let (mut via, mut dev, mut src) = (String::new(), String::new(), String::new());
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                dst = format!("{}/{}", address(a), m.header.destination_prefix_length)
            }
            RouteAttribute::Gateway(a) => via = format!(" via {}", address(a)),
            RouteAttribute::Oif(i) => dev = format!(" dev #{i}"),
            RouteAttribute::PrefSource(a) => src = format!(" src {}", address(a)),
            _ => {}
        }
    }
    format!("{dst}{via}{dev}{src}")
}

fn in_main_table(m: &RouteMessage) -> bool {
    let table = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    table.unwrap_or(u32::from(m.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The main table's routes (both families) that the kernel did not make itself.
pub async fn non_kernel_routes(nl: &Netlink) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut found = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family = query.header.address_family;
        let routes: Vec<RouteMessage> = nl
            .handle()
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(NetworkError::netlink(format!(
                "cannot list the {family:?} routes"
            )))?;
        found.extend(
            routes
                .into_iter()
                .filter(|m| in_main_table(m) && m.header.protocol != RouteProtocol::Kernel),
        );
    }
    Ok(found)
}

async fn remove_non_kernel_routes(nl: &Netlink) -> Result<(), NetworkError> {
    for m in non_kernel_routes(nl).await? {
        let shown = describe_message(&m);
        if let Err(e) = nl.handle().route().del(m).execute().await {
            let e = NetworkError::netlink(format!("cannot remove route {shown}"))(e);
            if let NetworkError::Netlink { source, .. } = &e {
                // Gone already (removed with another route or its link).
                if source.errno() == Some(libc::ESRCH) {
                    continue;
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: Option<&str>, gw: Option<&str>) -> GuestRoute {
        GuestRoute {
            destination: dest.map(|d| d.parse().unwrap()),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: if gw.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
        }
    }

    #[test]
    fn network_routes_are_added_on_link_first_default_last() {
        let routes = vec![
            route(None, Some("198.18.0.1")),
            route(Some("198.19.0.0/16"), Some("198.18.0.1")),
            route(Some("198.18.0.0/24"), None),
            route(None, Some("fd00:18::1")),
            route(Some("169.254.1.1/32"), None),
        ];
        let shown: Vec<String> = ordered(&routes).into_iter().map(describe).collect();
        assert_eq!(
            shown,
            [
                "198.18.0.0/24 dev eth0 scope link",
                "169.254.1.1/32 dev eth0 scope link",
                "198.19.0.0/16 via 198.18.0.1 dev eth0",
                "default via 198.18.0.1 dev eth0",
                "default via fd00:18::1 dev eth0",
            ]
        );
    }
}
