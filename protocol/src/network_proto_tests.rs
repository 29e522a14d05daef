//! Accept / refuse cases of the network request conversions.

use super::*;

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> IpCidr {
    s.parse().unwrap()
}

fn eth0() -> GuestInterface {
    GuestInterface {
        name: "eth0".into(),
        mac: mac("02:42:c6:12:00:05"),
        mtu: 1450,
        addresses: vec![cidr("198.18.0.5/24"), cidr("fd00:18::5/64")],
    }
}

fn routes() -> Vec<GuestRoute> {
    vec![
        GuestRoute {
            destination: Some(cidr("198.18.0.0/24")),
            gateway: None,
            device: "eth0".into(),
            source: Some("198.18.0.5".parse().unwrap()),
            scope: RouteScope::Link,
        },
        GuestRoute {
            destination: None,
            gateway: Some("198.18.0.1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: RouteScope::Universe,
        },
        GuestRoute {
            destination: None,
            gateway: Some("fd00:18::1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            scope: RouteScope::Universe,
        },
    ]
}

fn neighbours() -> Vec<GuestNeighbour> {
    vec![GuestNeighbour {
        ip: "198.18.0.1".parse().unwrap(),
        mac: mac("02:42:c6:12:00:01"),
        device: "eth0".into(),
    }]
}

fn iface_req(i: &GuestInterface) -> proto::UpdateInterfaceRequest {
    proto::UpdateInterfaceRequest::from(i)
}

fn iface_err(r: &proto::UpdateInterfaceRequest) -> InvalidField {
    GuestInterface::try_from(r).unwrap_err()
}

#[test]
fn interface_round_trips() {
    let i = eth0();
    assert_eq!(GuestInterface::try_from(&iface_req(&i)).unwrap(), i);
    let no_addresses = GuestInterface {
        addresses: vec![],
        ..eth0()
    };
    assert_eq!(
        GuestInterface::try_from(&iface_req(&no_addresses)).unwrap(),
        no_addresses
    );
}

#[test]
fn interface_names_follow_the_kernel() {
    for good in ["eth0", "a", "net1-pod.x_y", &"e".repeat(15)] {
        assert!(validate_ifname("name", good).is_ok(), "{good}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "eth 0",
        "eth0\n",
        "eth:0",
        &"e".repeat(16),
    ] {
        let err = validate_ifname("interface.name", bad).unwrap_err();
        assert_eq!(err.field, "interface.name", "{bad:?}");
    }
    let mut r = iface_req(&eth0());
    r.interface.as_mut().unwrap().name = "x/y".into();
    assert_eq!(iface_err(&r).field, "interface.name");
}

#[test]
fn interface_fields_are_checked() {
    let mut r = iface_req(&eth0());
    r.interface.clear();
    assert_eq!(iface_err(&r).field, "interface");

    for (bad, why) in [
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "zero"),
        ("02:42:c6:12:00", "short"),
        ("", "empty"),
    ] {
        let mut r = iface_req(&eth0());
        r.interface.as_mut().unwrap().mac = bad.into();
        assert_eq!(iface_err(&r).field, "interface.mac", "{why}");
    }

    for mtu in [0, 67, 65_536] {
        let mut r = iface_req(&eth0());
        r.interface.as_mut().unwrap().mtu = mtu;
        assert_eq!(iface_err(&r).field, "interface.mtu", "{mtu}");
    }
}

#[test]
fn interface_addresses_are_checked() {
    for (addr, prefix) in [
        ("198.18.0.5", 33),
        ("fd00::5", 129),
        ("198.18.0.5", 300),
        ("not-an-ip", 24),
        ("198.18.0.5/24", 24),
        ("0.0.0.0", 0),
        ("224.0.0.1", 4),
        ("ff02::1", 16),
    ] {
        let mut r = iface_req(&eth0());
        let a = &mut r.interface.as_mut().unwrap().addresses[0];
        a.address = addr.into();
        a.prefix_len = prefix;
        let err = iface_err(&r);
        assert_eq!(err.field, "interface.addresses", "{addr}/{prefix}");
        assert!(err.reason.starts_with("[0] "), "{}", err.reason);
    }
    let many = GuestInterface {
        addresses: (0..=MAX_ADDRESSES as u8)
            .map(|n| cidr(&format!("198.18.1.{n}/24")))
            .collect(),
        ..eth0()
    };
    assert_eq!(iface_err(&iface_req(&many)).field, "interface.addresses");
    assert!(validate_interface(&many).is_err());
    // A hand-built IpCidr whose prefix does not fit is refused too.
    let bad = GuestInterface {
        addresses: vec![IpCidr {
            addr: "198.18.0.5".parse().unwrap(),
            prefix_len: 40,
        }],
        ..eth0()
    };
    assert!(validate_interface(&bad).is_err());
}

#[test]
fn routes_round_trip() {
    let rs = routes();
    let req = proto::UpdateRoutesRequest::from(rs.as_slice());
    assert_eq!(Vec::<GuestRoute>::try_from(&req).unwrap(), rs);
    let empty = proto::UpdateRoutesRequest::new();
    assert!(Vec::<GuestRoute>::try_from(&empty).unwrap().is_empty());
}

fn route_err(edit: impl FnOnce(&mut proto::Route)) -> InvalidField {
    let mut req = proto::UpdateRoutesRequest::from(routes().as_slice());
    edit(&mut req.routes[1]);
    let err = Vec::<GuestRoute>::try_from(&req).unwrap_err();
    assert_eq!(err.field, "routes");
    assert!(err.reason.starts_with("[1] "), "{}", err.reason);
    err
}

#[test]
fn routes_are_checked() {
    let e = route_err(|r| r.device.clear());
    assert!(e.reason.contains("device"), "{e}");
    let e = route_err(|r| r.device = "a b".into());
    assert!(e.reason.contains("device"), "{e}");
    let e = route_err(|r| r.gateway.clear());
    assert!(e.reason.contains("gateway"), "{e}");
    let e = route_err(|r| {
        let mut d = proto::IpCidr::new();
        d.address = "10.0.0.0".into();
        d.prefix_len = 8;
        r.destination = Some(d).into();
        r.gateway = "fd00::1".into();
    });
    assert!(e.reason.contains("gateway"), "{e}");
    let e = route_err(|r| r.gateway = "nope".into());
    assert!(e.reason.contains("gateway"), "{e}");
    let e = route_err(|r| r.source = "fd00::5".into());
    assert!(e.reason.contains("source"), "{e}");
    let e = route_err(|r| {
        let mut d = proto::IpCidr::new();
        d.address = "10.0.0.0".into();
        d.prefix_len = 33;
        r.destination = Some(d).into();
    });
    assert!(e.reason.contains("destination"), "{e}");
    let e = route_err(|r| r.scope = protobuf::EnumOrUnknown::from_i32(9));
    assert!(e.reason.contains("scope"), "{e}");

    // A route on the link needs no gateway.
    let mut req = proto::UpdateRoutesRequest::from(routes().as_slice());
    req.routes.truncate(1);
    assert!(Vec::<GuestRoute>::try_from(&req).is_ok());

    let too_many = vec![routes()[0].clone(); MAX_ROUTES + 1];
    let req = proto::UpdateRoutesRequest::from(too_many.as_slice());
    assert_eq!(
        Vec::<GuestRoute>::try_from(&req).unwrap_err().field,
        "routes"
    );
    assert!(validate_routes(&too_many).is_err());
    assert!(validate_routes(&routes()).is_ok());
}

#[test]
fn neighbours_round_trip_and_are_checked() {
    let ns = neighbours();
    let req = proto::UpdateNeighboursRequest::from(ns.as_slice());
    assert_eq!(Vec::<GuestNeighbour>::try_from(&req).unwrap(), ns);

    for edit in [
        (|n: &mut proto::Neighbour| n.ip = "x".into()) as fn(&mut proto::Neighbour),
        |n| n.ip = "0.0.0.0".into(),
        |n| n.mac = "ff:ff:ff:ff:ff:ff".into(),
        |n| n.mac = "zz".into(),
        |n| n.device.clear(),
    ] {
        let mut req = proto::UpdateNeighboursRequest::from(ns.as_slice());
        edit(&mut req.neighbours[0]);
        let err = Vec::<GuestNeighbour>::try_from(&req).unwrap_err();
        assert_eq!(err.field, "neighbours");
        assert!(err.reason.starts_with("[0] "), "{}", err.reason);
    }
    let too_many = vec![ns[0].clone(); MAX_NEIGHBOURS + 1];
    let req = proto::UpdateNeighboursRequest::from(too_many.as_slice());
    assert_eq!(
        Vec::<GuestNeighbour>::try_from(&req).unwrap_err().field,
        "neighbours"
    );
}

#[test]
fn refusals_read_well() {
    let e = route_err(|r| r.device.clear());
    assert_eq!(
        e.to_string(),
        "invalid routes: [1] device: must not be empty"
    );
}
