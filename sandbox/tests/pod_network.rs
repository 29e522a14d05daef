//! The pod network against the kernel (root, `/dev/net/tun`): a named namespace with a
//! veth like CNI's, attach, the taps and tc objects read back, real frames both ways, and
//! detach and removal leaving nothing behind.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_sandbox::network::{NetNs, PodNetwork};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::tc::{TcAttribute, TcMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A frame type of the IEEE's local experimental range: nothing else sends it.
const ETHERTYPE: u16 = 0x88b5;
/// The tap's default virtio-net header (`struct virtio_net_hdr`) before each frame.
const VNET_HDR_LEN: usize = 10;

fn root_with_tun() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bulkhead_test_skip::skip("needs root");
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        bulkhead_test_skip::skip("no /dev/net/tun");
        return false;
    }
    true
}

async fn connect() -> Handle {
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    handle
}

async fn links(h: &Handle) -> Vec<LinkMessage> {
    h.link().get().execute().try_collect().await.unwrap()
}

fn name_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn index_of(h: &Handle, name: &str) -> u32 {
    let l = links(h).await;
    l.iter().find(|l| name_of(l) == name).unwrap().header.index
}

fn kind_of(m: &TcMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// (ifindex, kind) of every qdisc.
async fn qdiscs(h: &Handle) -> Vec<(i32, String)> {
    let all: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.unwrap();
    let mut out: Vec<_> = all.iter().map(|m| (m.header.index, kind_of(m))).collect();
    out.sort();
    out
}

/// CNI's shape: `eth0` (MTU 1400, 10.77.0.2/24, default via 10.77.0.1) whose peer
/// `peer0` stays in the namespace without an address, standing for the host's bridge.
async fn cni_like(h: &Handle) {
    h.link()
        .add(LinkVeth::new("eth0", "peer0").build())
        .execute()
        .await
        .unwrap();
    let eth0 = index_of(h, "eth0").await;
    let peer0 = index_of(h, "peer0").await;
    for (index, mtu) in [(eth0, 1400), (peer0, 1400)] {
        h.link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .unwrap();
    }
    h.address()
        .add(eth0, Ipv4Addr::new(10, 77, 0, 2).into(), 24)
        .execute()
        .await
        .unwrap();
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(Ipv4Addr::new(10, 77, 0, 1))
        .output_interface(eth0)
        .build();
    h.route().add(default).execute().await.unwrap();
}

/// A packet socket for our frame type on `ifindex`, with a receive timeout.
fn packet_socket(ifindex: u32) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the kernel returned fd, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    fd
}

fn frame(src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(marker);
    f.resize(60, 0);
    f
}

/// Reads from `fd` (poll + read) until a buffer contains `marker`, for up to 5 s.
fn read_until(fd: &OwnedFd, marker: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd of this frame.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        // SAFETY: read into a buffer we own, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let got = &buf[..n as usize];
            if got.windows(marker.len()).any(|w| w == marker) {
                return got.to_vec();
            }
        }
    }
    panic!("no frame with {marker:?} within 5 s");
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: write from a buffer we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn pod_network_attach_mirrors_frames_and_detach_leaves_nothing() {
    if !root_with_tun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("bh-nettest-{}", std::process::id());
    let path = NetNs::create_named(dir.path(), &name).unwrap();
    let ns = NetNs::open(&path).unwrap();
    let (before_links, before_qdiscs) = ns
        .run_async(|| async {
            let h = connect().await;
            cni_like(&h).await;
            let mut names: Vec<String> = links(&h).await.iter().map(name_of).collect();
            names.sort();
            (names, qdiscs(&h).await)
        })
        .unwrap();
    assert_eq!(before_links, ["eth0", "lo", "peer0"]);

    let net = PodNetwork::attach(&path).unwrap();
    assert_eq!(net.nics().len(), 1);
    let nic = &net.nics()[0];
    assert_eq!(
        (nic.link_name.as_str(), nic.tap_name.as_str()),
        ("eth0", "tap0_bh")
    );
    assert_eq!(nic.mtu, 1400);
    let guest = net.guest_network();
    assert_eq!(guest.interfaces.len(), 1);
    assert_eq!(guest.interfaces[0].name, "eth0");
    assert_eq!(guest.interfaces[0].mac, nic.mac);
    let addrs: Vec<String> = guest.interfaces[0]
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addrs, ["10.77.0.2/24"]);
    assert_eq!(guest.routes.len(), 1, "{:?}", guest.routes);
    assert_eq!(guest.routes[0].destination, None);
    assert_eq!(
        guest.routes[0].gateway,
        Some(Ipv4Addr::new(10, 77, 0, 1).into())
    );
    assert_eq!(guest.routes[0].device, "eth0");

    // The tap, its MTU, both ingress qdiscs and both redirect filters, read back.
    let (tap_index, eth0_index) = (nic.tap_index, nic.link_index);
    let (tap_mtu, tc) = ns
        .run_async(move || async move {
            let h = connect().await;
            let tap = links(&h)
                .await
                .into_iter()
                .find(|l| l.header.index == tap_index);
            let mtu = tap.and_then(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
            });
            let mut tc = Vec::new();
            for index in [eth0_index, tap_index] {
                let has_ingress = qdiscs(&h)
                    .await
                    .contains(&(index as i32, "ingress".to_owned()));
                let filters: Vec<TcMessage> = h
                    .traffic_filter(index as i32)
                    .get()
                    .ingress()
                    .execute()
                    .try_collect()
                    .await
                    .unwrap();
                let u32_filters = filters.iter().filter(|f| kind_of(f) == "u32").count();
                tc.push((has_ingress, u32_filters > 0));
            }
            (mtu, tc)
        })
        .unwrap();
    assert_eq!(tap_mtu, Some(1400));
    assert_eq!(tc, [(true, true), (true, true)]);

    // Guest -> network: a frame written to the tap leaves through eth0 and reaches peer0.
    let peer = ns
        .run_async(|| async {
            let h = connect().await;
            packet_socket(index_of(&h, "peer0").await)
        })
        .unwrap();
    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend(frame(nic.mac.0, b"from-the-guest"));
    let tap = net.vmm_fds().unwrap().remove(0);
    write_all(&tap, &out);
    let got = read_until(&peer, b"from-the-guest");
    assert_eq!(&got[6..12], &nic.mac.0);

    // Network -> guest: a frame sent on peer0 arrives at eth0 and is read from the tap.
    write_all(&peer, &frame([0x02, 0, 0, 0, 0, 0x99], b"to-the-guest"));
    let got = read_until(&tap, b"to-the-guest");
    assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(
        &got[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12],
        &[0x02, 0, 0, 0, 0, 0x99]
    );
    drop(tap);
    drop(peer);

    net.detach().unwrap();
    let (after_links, after_qdiscs) = ns
        .run_async(|| async {
            let h = connect().await;
            let mut names: Vec<String> = links(&h).await.iter().map(name_of).collect();
            names.sort();
            (names, qdiscs(&h).await)
        })
        .unwrap();
    assert_eq!(after_links, before_links);
    assert_eq!(after_qdiscs, before_qdiscs);

    drop(ns);
    NetNs::remove_named(dir.path(), &name).unwrap();
    assert!(!path.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "{mounts}");
    // Idempotent.
    NetNs::remove_named(dir.path(), &name).unwrap();
}

/// A namespace with only a loopback (`--network none`, hostNetwork-like) attaches to
/// nothing, and a dropped attachment is detached.
#[test]
fn pod_network_of_an_empty_namespace_is_empty() {
    if !root_with_tun() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("bh-nettest-empty-{}", std::process::id());
    let path = NetNs::create_named(dir.path(), &name).unwrap();
    let net = PodNetwork::attach(&path).unwrap();
    assert!(net.nics().is_empty());
    assert_eq!(net.guest_network(), &Default::default());
    assert!(net.vmm_fds().unwrap().is_empty());
    drop(net);
    assert!(
        NetNs::create_named(dir.path(), &name).is_err(),
        "exists already"
    );
    NetNs::remove_named(dir.path(), &name).unwrap();
    assert!(!path.exists());
}
