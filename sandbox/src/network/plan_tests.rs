//! Unit tests of [`plan`](super::plan) on hand-made snapshots (no kernel).

use super::*;
use crate::network::inspect::{
    AddressSnapshot, LinkSnapshot, NeighbourSnapshot, RouteOrigin, RouteSnapshot,
};
use bulkhead_protocol::network::RouteScope;

fn lo() -> LinkSnapshot {
    LinkSnapshot {
        index: 1,
        name: "lo".into(),
        kind: LinkKind::Loopback,
        mac: None,
        mtu: 65536,
        up: true,
    }
}

fn veth(index: u32, name: &str, mac: &str, mtu: u32) -> LinkSnapshot {
    LinkSnapshot {
        index,
        name: name.into(),
        kind: LinkKind::Veth,
        mac: Some(mac.parse().unwrap()),
        mtu,
        up: true,
    }
}

fn addr(link_index: u32, cidr: &str) -> AddressSnapshot {
    AddressSnapshot {
        link_index,
        cidr: cidr.parse().unwrap(),
    }
}

fn route(dest: Option<&str>, gw: Option<&str>, oif: u32, origin: RouteOrigin) -> RouteSnapshot {
    RouteSnapshot {
        destination: dest.map(|d| d.parse().unwrap()),
        gateway: gw.map(|g| g.parse().unwrap()),
        oif: Some(oif),
        prefsrc: None,
        scope: if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        },
        origin,
    }
}

const BOOT: RouteOrigin = RouteOrigin::Other(3);

/// A CNI bridge pod: eth0 with IPv4 and IPv6 addresses, the kernel's prefix routes, a
/// default route via the gateway in each family.
fn cni_pod() -> NamespaceSnapshot {
    NamespaceSnapshot {
        links: vec![lo(), veth(2, "eth0", "0a:58:0a:58:00:05", 1450)],
        addresses: vec![
            addr(1, "127.0.0.1/8"),
            addr(1, "::1/128"),
            addr(2, "10.88.0.5/16"),
            addr(2, "fd00:88::5/64"),
            addr(2, "fe80::858:aff:fe58:5/64"),
        ],
        routes: vec![
            route(None, Some("10.88.0.1"), 2, BOOT),
            route(Some("10.88.0.0/16"), None, 2, RouteOrigin::Kernel),
            route(Some("fd00:88::/64"), None, 2, RouteOrigin::Kernel),
            route(Some("fe80::/64"), None, 2, RouteOrigin::Kernel),
            route(None, Some("fd00:88::1"), 2, BOOT),
        ],
        neighbours: vec![],
    }
}

#[test]
fn a_cni_veth_gets_a_tap_and_the_guest_its_identity() {
    let p = plan(&cni_pod()).unwrap();
    assert_eq!(
        p.taps,
        vec![TapPlan {
            link_name: "eth0".into(),
            link_index: 2,
            tap_name: "tap0_bh".into(),
            mac: "0a:58:0a:58:00:05".parse().unwrap(),
            mtu: 1450,
        }]
    );
    let iface = &p.guest.interfaces[0];
    assert_eq!(p.guest.interfaces.len(), 1);
    assert_eq!(iface.name, "eth0");
    assert_eq!(iface.mtu, 1450);
    assert_eq!(iface.mac, p.taps[0].mac);
    // Several addresses, both families; no link-local.
    let addrs: Vec<String> = iface.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["10.88.0.5/16", "fd00:88::5/64"]);
}

#[test]
fn default_routes_stay_and_kernel_prefix_routes_go() {
    let p = plan(&cni_pod()).unwrap();
    let routes: Vec<(Option<String>, Option<String>, &str)> = p
        .guest
        .routes
        .iter()
        .map(|r| {
            (
                r.destination.map(|d| d.to_string()),
                r.gateway.map(|g| g.to_string()),
                r.device.as_str(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (None, Some("10.88.0.1".into()), "eth0"),
            (None, Some("fd00:88::1".into()), "eth0"),
        ]
    );
    assert!(p
        .guest
        .routes
        .iter()
        .all(|r| r.scope == RouteScope::Universe));
}

/// The ptp plugin's shape: a /32, a link route to the gateway (not the kernel's), then the
/// default via it; the link route must come first.
#[test]
fn link_routes_come_before_routes_through_gateways() {
    let mut snap = NamespaceSnapshot {
        links: vec![lo(), veth(3, "eth0", "02:00:00:00:00:01", 1500)],
        addresses: vec![addr(3, "10.1.1.2/32")],
        routes: vec![
            route(None, Some("10.1.1.1"), 3, BOOT),
            route(Some("10.1.1.1/32"), None, 3, BOOT),
        ],
        neighbours: vec![NeighbourSnapshot {
            link_index: 3,
            ip: "10.1.1.1".parse().unwrap(),
            mac: "02:00:00:00:00:fe".parse().unwrap(),
        }],
    };
    snap.routes[1].prefsrc = Some("10.1.1.2".parse().unwrap());
    let p = plan(&snap).unwrap();
    assert_eq!(p.guest.routes.len(), 2);
    assert_eq!(p.guest.routes[0].gateway, None);
    assert_eq!(p.guest.routes[0].scope, RouteScope::Link);
    assert_eq!(p.guest.routes[0].source, Some("10.1.1.2".parse().unwrap()));
    assert_eq!(p.guest.routes[1].gateway, Some("10.1.1.1".parse().unwrap()));
    assert_eq!(
        p.guest.neighbours,
        vec![GuestNeighbour {
            ip: "10.1.1.1".parse().unwrap(),
            mac: "02:00:00:00:00:fe".parse().unwrap(),
            device: "eth0".into(),
        }]
    );
}

#[test]
fn two_nics_get_two_taps_and_routes_keep_their_device() {
    let snap = NamespaceSnapshot {
        links: vec![
            lo(),
            veth(2, "eth0", "02:00:00:00:00:01", 1500),
            veth(5, "net1", "02:00:00:00:00:02", 9000),
        ],
        addresses: vec![addr(2, "10.88.0.5/16"), addr(5, "192.168.7.3/24")],
        routes: vec![
            route(None, Some("10.88.0.1"), 2, BOOT),
            route(Some("172.20.0.0/16"), Some("192.168.7.1"), 5, BOOT),
        ],
        neighbours: vec![],
    };
    let p = plan(&snap).unwrap();
    let taps: Vec<(&str, &str, u32)> = p
        .taps
        .iter()
        .map(|t| (t.link_name.as_str(), t.tap_name.as_str(), t.mtu))
        .collect();
    assert_eq!(taps, [("eth0", "tap0_bh", 1500), ("net1", "tap1_bh", 9000)]);
    let devices: Vec<&str> = p.guest.routes.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(devices, ["eth0", "net1"]);
}

#[test]
fn only_loopback_is_an_empty_plan() {
    let snap = NamespaceSnapshot {
        links: vec![lo()],
        addresses: vec![addr(1, "127.0.0.1/8")],
        ..Default::default()
    };
    let p = plan(&snap).unwrap();
    assert!(p.is_empty());
    assert_eq!(p.guest, GuestNetwork::default());
    assert!(plan(&NamespaceSnapshot::default()).unwrap().is_empty());
}

/// A link with no address, or only an IPv6 link-local one, is not a NIC; neither is a tap
/// (ours from an earlier attach) even with an address.
#[test]
fn links_without_addresses_and_taps_are_left_alone() {
    let mut tap = veth(7, "tap0_bh", "02:00:00:00:00:07", 1500);
    tap.kind = LinkKind::Tap;
    let snap = NamespaceSnapshot {
        links: vec![
            lo(),
            veth(2, "eth0", "02:00:00:00:00:01", 1500),
            veth(3, "spare", "02:00:00:00:00:03", 1500),
            veth(4, "ll-only", "02:00:00:00:00:04", 1500),
            tap,
        ],
        addresses: vec![
            addr(2, "10.88.0.5/16"),
            addr(4, "fe80::4/64"),
            addr(7, "10.9.9.9/24"),
        ],
        routes: vec![route(Some("10.9.9.0/24"), Some("10.9.9.1"), 7, BOOT)],
        neighbours: vec![],
    };
    let p = plan(&snap).unwrap();
    assert_eq!(p.taps.len(), 1);
    assert_eq!(p.taps[0].link_name, "eth0");
    // tap0_bh exists already: the next free name.
    assert_eq!(p.taps[0].tap_name, "tap1_bh");
    assert!(p.guest.routes.is_empty());
}

#[test]
fn a_nic_without_a_usable_mac_is_an_error() {
    let mut snap = cni_pod();
    snap.links[1].mac = None;
    assert_eq!(
        plan(&snap),
        Err(PlanError::NoMac {
            link: "eth0".into()
        })
    );
    snap.links[1].mac = Some("01:00:5e:00:00:01".parse().unwrap());
    assert!(matches!(plan(&snap), Err(PlanError::NoMac { .. })));
}

#[test]
fn tap_names_fit_ifnamsiz() {
    assert!("tap9999999_bh".len() <= MAX_IFNAME_LEN);
    assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
    assert!(is_ipv6_link_local(&"febf::1".parse().unwrap()));
    assert!(!is_ipv6_link_local(&"fec0::1".parse().unwrap()));
    assert!(!is_ipv6_link_local(&"10.0.0.1".parse().unwrap()));
}
