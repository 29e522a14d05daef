//! The netlink code against the real kernel, as root, in a fresh network namespace of a
//! test thread (`unshare(CLONE_NEWNET)`; the namespace goes with the thread). A veth pair
//! stands in for the guest's virtio-net NIC: `nic0` with the pod's MAC, its peer up so the
//! link has a carrier.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;

use bulkhead_protocol::network::{
    GuestInterface, GuestNeighbour, GuestRoute, IpCidr, MacAddr, RouteScope,
};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::routes::{describe_message, non_kernel_routes};
use super::*;

const MAC: &str = "02:42:c6:12:00:05";
const GATEWAY_MAC: &str = "02:42:c6:12:00:01";

/// Runs `test` on a thread of its own in a new network namespace, on a current-thread
/// runtime (as the agent runs). Returns false (after saying why) where that is not possible.
fn in_fresh_netns<F, Fut>(test: F) -> bool
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs root for a network namespace");
        return false;
    }
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(test());
        Ok::<(), nix::Error>(())
    });
    match thread.join() {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            bulkhead_test_skip::skip(format!("unshare(CLONE_NEWNET): {e}"));
            false
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> IpCidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn eth0() -> GuestInterface {
    GuestInterface {
        name: "eth0".into(),
        mac: mac(MAC),
        mtu: 1450,
        addresses: vec![cidr("198.18.0.5/24"), cidr("fd00:18::5/64")],
    }
}

fn route(dest: Option<&str>, gw: Option<&str>, scope: RouteScope) -> GuestRoute {
    GuestRoute {
        destination: dest.map(cidr),
        gateway: gw.map(ip),
        device: "eth0".into(),
        source: None,
        scope,
    }
}

fn pod_routes() -> Vec<GuestRoute> {
    // Given in the wrong order on purpose: the gateway's subnet comes last.
    vec![
        route(None, Some("198.18.0.1"), RouteScope::Universe),
        route(
            Some("198.19.0.0/16"),
            Some("198.18.0.1"),
            RouteScope::Universe,
        ),
        route(None, Some("fd00:18::1"), RouteScope::Universe),
        GuestRoute {
            source: Some(ip("198.18.0.5")),
            ..route(Some("198.18.0.0/24"), None, RouteScope::Link)
        },
    ]
}

/// The stand-in NIC (`nic0`, MAC [`MAC`], MTU 1500, a stale address) and its peer, up.
async fn make_nic(nl: &Netlink) {
    let h = nl.handle();
    h.link()
        .add(
            LinkVeth::new("nic0", "peer0")
                .address(mac(MAC).0.to_vec())
                .mtu(1500)
                .build(),
        )
        .execute()
        .await
        .expect("create veth nic0/peer0");
    let peer = nl.links().await.unwrap();
    let peer = peer.iter().find(|l| l.name == "peer0").unwrap().index;
    h.link()
        .set(LinkUnspec::new_with_index(peer).up().build())
        .execute()
        .await
        .unwrap();
    let nic = nl.link_by_mac(mac(MAC)).await.unwrap().index;
    h.address()
        .add(nic, ip("198.20.9.9"), 24)
        .execute()
        .await
        .unwrap();
}

async fn addresses(nl: &Netlink, index: u32) -> BTreeSet<String> {
    let messages: Vec<_> = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .unwrap();
    messages
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(a) => Some(format!("{a}/{}", m.header.prefix_len)),
                _ => None,
            })
        })
        .collect()
}

async fn routes_shown(nl: &Netlink) -> BTreeSet<String> {
    non_kernel_routes(nl)
        .await
        .unwrap()
        .iter()
        .map(describe_message)
        .collect()
}

async fn permanent_neighbours(nl: &Netlink) -> BTreeSet<(IpAddr, Vec<u8>)> {
    let messages: Vec<_> = nl
        .handle()
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .unwrap();
    messages
        .iter()
        .filter(|m| m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let mut dst = None;
            let mut lladdr = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
                    _ => {}
                }
            }
            Some((dst?, lladdr?))
        })
        .collect()
}

#[test]
fn network_loopback_comes_up_and_stays_up() {
    in_fresh_netns(|| async {
        let nl = Netlink::open().unwrap();
        let lo = |links: Vec<links::Link>| links.into_iter().find(|l| l.name == "lo").unwrap();
        assert!(
            !lo(nl.links().await.unwrap()).up,
            "a new namespace's lo is down"
        );
        bring_up_loopback(&nl).await.unwrap();
        bring_up_loopback(&nl).await.unwrap();
        assert!(lo(nl.links().await.unwrap()).up);
    });
}

#[test]
fn network_interface_routes_and_neighbours_are_applied() {
    in_fresh_netns(|| async {
        let nl = Netlink::open().unwrap();
        make_nic(&nl).await;

        // Twice: the second call must find the renamed link and change nothing.
        for _ in 0..2 {
            update_interface(&nl, &eth0()).await.unwrap();
        }
        let link = nl.link_by_mac(mac(MAC)).await.unwrap();
        assert_eq!(link.name, "eth0");
        assert_eq!(link.mtu, Some(1450));
        assert!(link.up);
        let addrs = addresses(&nl, link.index).await;
        assert!(addrs.contains("198.18.0.5/24"), "{addrs:?}");
        assert!(addrs.contains("fd00:18::5/64"), "{addrs:?}");
        assert!(!addrs.iter().any(|a| a.starts_with("198.20.")), "{addrs:?}");

        // A stale route of an earlier configuration goes.
        let stale = [route(Some("198.21.0.0/16"), None, RouteScope::Link)];
        update_routes(&nl, &stale).await.unwrap();
        let dev = format!("dev #{}", link.index);
        assert!(routes_shown(&nl)
            .await
            .contains(&format!("198.21.0.0/16 {dev}")));
        for _ in 0..2 {
            update_routes(&nl, &pod_routes()).await.unwrap();
        }
        let shown = routes_shown(&nl).await;
        let expected: BTreeSet<String> = [
            format!("198.18.0.0/24 {dev} src 198.18.0.5"),
            format!("198.19.0.0/16 via 198.18.0.1 {dev}"),
            format!("default via 198.18.0.1 {dev}"),
            format!("default via fd00:18::1 {dev}"),
        ]
        .into();
        assert_eq!(shown, expected);

        let neighbours = vec![
            GuestNeighbour {
                ip: ip("198.18.0.1"),
                mac: mac(GATEWAY_MAC),
                device: "eth0".into(),
            },
            GuestNeighbour {
                ip: ip("fd00:18::1"),
                mac: mac(GATEWAY_MAC),
                device: "eth0".into(),
            },
        ];
        for _ in 0..2 {
            update_neighbours(&nl, &neighbours).await.unwrap();
        }
        let lladdr = mac(GATEWAY_MAC).0.to_vec();
        assert_eq!(
            permanent_neighbours(&nl).await,
            [
                (ip("198.18.0.1"), lladdr.clone()),
                (ip("fd00:18::1"), lladdr)
            ]
            .into()
        );
    });
}

#[test]
fn network_errors_name_what_failed_and_change_nothing() {
    in_fresh_netns(|| async {
        let nl = Netlink::open().unwrap();
        make_nic(&nl).await;
        update_interface(&nl, &eth0()).await.unwrap();
        update_routes(&nl, &pod_routes()).await.unwrap();
        let before = routes_shown(&nl).await;

        let other = GuestInterface {
            mac: mac("02:00:00:00:00:99"),
            ..eth0()
        };
        let e = update_interface(&nl, &other).await.unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "no network interface has MAC address 02:00:00:00:00:99"
        );

        // A missing device is found before any route is removed.
        let mut routes = pod_routes();
        routes[1].device = "eth9".into();
        let e = update_routes(&nl, &routes).await.unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "no network interface eth9 (for route 198.19.0.0/16 via 198.18.0.1 dev eth9)"
        );
        assert_eq!(routes_shown(&nl).await, before);

        // The kernel's refusal comes with the route.
        let unreachable = [route(None, Some("203.0.113.1"), RouteScope::Universe)];
        let e = update_routes(&nl, &unreachable).await.unwrap_err();
        let chain = bulkhead_log::error_chain(&e);
        assert!(
            chain.starts_with("cannot add route default via 203.0.113.1 dev eth0: "),
            "{chain}"
        );
        assert!(chain.contains("os error"), "{chain}");

        let e = update_neighbours(
            &nl,
            &[GuestNeighbour {
                ip: ip("198.18.0.1"),
                mac: mac(GATEWAY_MAC),
                device: "eth9".into(),
            }],
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("neighbour 198.18.0.1"), "{e}");
    });
}

#[test]
fn network_addresses_are_replaced_not_added() {
    in_fresh_netns(|| async {
        let nl = Netlink::open().unwrap();
        make_nic(&nl).await;
        update_interface(&nl, &eth0()).await.unwrap();
        let renumbered = GuestInterface {
            addresses: vec![cidr("198.18.1.7/24")],
            ..eth0()
        };
        update_interface(&nl, &renumbered).await.unwrap();
        let link = nl.link_by_mac(mac(MAC)).await.unwrap();
        let addrs = addresses(&nl, link.index).await;
        assert!(addrs.contains("198.18.1.7/24"), "{addrs:?}");
        assert!(!addrs.contains("198.18.0.5/24"), "{addrs:?}");
        assert!(!addrs.contains("fd00:18::5/64"), "{addrs:?}");
    });
}
