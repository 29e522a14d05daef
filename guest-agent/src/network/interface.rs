//! UpdateInterface: the NIC whose MAC the host names becomes the pod's interface (name,
//! MTU, addresses, up), and `lo` comes up in every sandbox.

use std::net::IpAddr;

use bulkhead_protocol::network::{GuestInterface, IpCidr};
use futures_util::TryStreamExt;
use log::info;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::LinkUnspec;

use crate::network::error::NetworkError;
use crate::network::links::Netlink;

/// errnos of deleting an address that is already gone (an IPv4 secondary goes with its
/// primary).
const GONE: [i32; 2] = [libc::EADDRNOTAVAIL, libc::ESRCH];

/// Finds the link whose MAC is `iface.mac`, sets it down, renames it to `iface.name` if
/// needed, sets the MTU, replaces its addresses with `iface.addresses` and sets it up.
/// Repeating the call changes nothing more.
///
/// IPv6 addresses skip duplicate address detection (the pod's namespace did it already,
/// and a tentative address would refuse the container's first `bind`).
pub async fn update_interface(nl: &Netlink, iface: &GuestInterface) -> Result<(), NetworkError> {
    let link = nl.link_by_mac(iface.mac).await?;
    let index = link.index;
    let name = &iface.name;
    let links = nl.handle().link();
    links
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(NetworkError::netlink(format!(
            "cannot set {} ({}) down",
            link.name, iface.mac
        )))?;
    if link.name != *name {
        links
            .set(LinkUnspec::new_with_index(index).name(name.clone()).build())
            .execute()
            .await
            .map_err(NetworkError::netlink(format!(
                "cannot rename {} ({}) to {name}",
                link.name, iface.mac
            )))?;
    }
    links
        .set(LinkUnspec::new_with_index(index).mtu(iface.mtu).build())
        .execute()
        .await
        .map_err(NetworkError::netlink(format!(
            "cannot set the MTU of {name} to {}",
            iface.mtu
        )))?;
    flush_addresses(nl, index, name).await?;
    for cidr in &iface.addresses {
        add_address(nl, index, name, cidr).await?;
    }
    links
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(NetworkError::netlink(format!("cannot set {name} up")))?;
    info!(
        "interface {name} ({}): mtu {}, addresses [{}], up",
        iface.mac,
        iface.mtu,
        iface
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn message_address(m: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point
    // links and the same otherwise.
    let mut address = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

/// Removes every address of link `index` (IPv6 link-local ones come back when it goes up).
async fn flush_addresses(nl: &Netlink, index: u32, name: &str) -> Result<(), NetworkError> {
    let addresses: Vec<AddressMessage> = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::netlink(format!(
            "cannot list the addresses of {name}"
        )))?;
    for m in addresses {
        let shown = match message_address(&m) {
            Some(a) => format!("{a}/{}", m.header.prefix_len),
            None => "an address".to_owned(),
        };
        if let Err(e) = nl.handle().address().del(m).execute().await {
            let e = NetworkError::netlink(format!("cannot remove {shown} from {name}"))(e);
            if let NetworkError::Netlink { source, .. } = &e {
                if source.errno().is_some_and(|n| GONE.contains(&n)) {
                    continue;
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

async fn add_address(
    nl: &Netlink,
    index: u32,
    name: &str,
    cidr: &IpCidr,
) -> Result<(), NetworkError> {
    let mut req = nl
        .handle()
        .address()
        .add(index, cidr.addr, cidr.prefix_len)
        .replace();
    if cidr.addr.is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    req.execute().await.map_err(NetworkError::netlink(format!(
        "cannot add {cidr} to {name}"
    )))
}

/// Sets `lo` up: containers expect 127.0.0.1 and ::1 whether or not the pod has a NIC.
/// Setting an up link up again changes nothing.
pub async fn bring_up_loopback(nl: &Netlink) -> Result<(), NetworkError> {
    nl.handle()
        .link()
        .set(LinkUnspec::new_with_name("lo").up().build())
        .execute()
        .await
        .map_err(NetworkError::netlink("cannot set lo up".into()))
}
