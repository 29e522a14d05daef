//! UpdateNeighbours: permanent ARP / NDP entries, so the guest reaches the gateway and the
//! pod's peers without asking, as the pod's namespace did.

use bulkhead_protocol::network::GuestNeighbour;
use log::info;
use netlink_packet_route::neighbour::NeighbourState;

use crate::network::error::NetworkError;
use crate::network::links::Netlink;

/// The entry as `ip neigh` would show it, for errors and logs.
pub fn describe(n: &GuestNeighbour) -> String {
    format!("{} lladdr {} dev {}", n.ip, n.mac, n.device)
}

/// Adds each entry as permanent, replacing an entry for the same address. Every device is
/// resolved before anything is added.
pub async fn update_neighbours(
    nl: &Netlink,
    neighbours: &[GuestNeighbour],
) -> Result<(), NetworkError> {
    let devices = nl.indexes_by_name().await?;
    let plan = neighbours
        .iter()
        .map(|n| {
            Ok((
                n,
                devices.get(&n.device, || format!("neighbour {}", describe(n)))?,
            ))
        })
        .collect::<Result<Vec<_>, NetworkError>>()?;
    for (n, index) in plan {
        nl.handle()
            .neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(NetworkError::netlink(format!(
                "cannot add neighbour {}",
                describe(n)
            )))?;
    }
    info!("{} neighbours set", neighbours.len());
    Ok(())
}
