//! The netlink connection and the link lookups the network modules share: the list of
//! links with their names and MACs, a link by MAC, a device name to its index.

use std::collections::HashMap;

use bulkhead_protocol::network::MacAddr;
use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::Handle;

use crate::network::error::NetworkError;

/// One rtnetlink connection, in the network namespace of the thread that opened it. The
/// connection's task ends when the last clone of this is dropped.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What the network modules need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub up: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => {
                    link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr)
                }
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task. Call inside a tokio runtime.
    pub fn open() -> Result<Self, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetworkError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(NetworkError::netlink(
                "cannot list network interfaces".into(),
            ))?;
        Ok(messages.iter().map(Link::from_message).collect())
    }

    /// The one link whose MAC is `mac`.
    pub async fn link_by_mac(&self, mac: MacAddr) -> Result<Link, NetworkError> {
        let mut found: Vec<Link> = self
            .links()
            .await?
            .into_iter()
            .filter(|l| l.mac == Some(mac))
            .collect();
        match found.len() {
            0 => Err(NetworkError::NoLinkWithMac(mac)),
            1 => Ok(found.remove(0)),
            count => Err(NetworkError::AmbiguousMac { mac, count }),
        }
    }

    /// Link indexes by name, to resolve the devices of routes and neighbours once.
    pub async fn indexes_by_name(&self) -> Result<DeviceIndexes, NetworkError> {
        Ok(DeviceIndexes(
            self.links()
                .await?
                .into_iter()
                .map(|l| (l.name, l.index))
                .collect(),
        ))
    }
}

/// Device names to link indexes.
#[derive(Debug, Clone, Default)]
pub struct DeviceIndexes(HashMap<String, u32>);

impl DeviceIndexes {
    /// The index of `device`; `what` says who needs it, for the error.
    pub fn get(&self, device: &str, what: impl FnOnce() -> String) -> Result<u32, NetworkError> {
        self.0
            .get(device)
            .copied()
            .ok_or_else(|| NetworkError::NoSuchDevice {
                device: device.to_owned(),
                what: what(),
            })
    }
}
