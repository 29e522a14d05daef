//! Traffic mirroring between a NIC and its tap, Kata's `tcfilter` model: on each of the two
//! links an ingress qdisc (`ffff:`) with one match-all u32 filter (`match u8 0 0`) whose
//! action is `mirred egress redirect` to the other link. Every frame that arrives on the
//! veth leaves through the tap (to the guest), and every frame the guest sends leaves
//! through the veth. Removing the ingress qdisc removes its filters.
//!
//! Equivalent to, for each direction:
//! `tc qdisc add dev A ingress`;
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress
//! redirect dev B`.

use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;

use super::tap::is_errno;

/// What [`redirect_ingress`] was doing when netlink failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorStep {
    AddQdisc,
    AddFilter,
}

/// The ingress qdisc's handle, `ffff:0`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Adds the ingress qdisc on `from` and a filter redirecting everything it receives to
/// `to`'s egress. Fails if `from` has an ingress qdisc already (someone else's: it is not
/// ours to replace).
pub async fn redirect_ingress(
    handle: &Handle,
    from: u32,
    to: u32,
) -> Result<(), (MirrorStep, rtnetlink::Error)> {
    let from_i32 = ifindex(from).map_err(|e| (MirrorStep::AddQdisc, e))?;
    handle
        .qdisc()
        .add(from_i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| (MirrorStep::AddQdisc, e))?;
    // tcm_info's low half is the protocol in network byte order.
    let all = (libc::ETH_P_ALL as u16).to_be();
    handle
        .traffic_filter(from_i32)
        .add()
        .parent(INGRESS_HANDLE)
        .priority(1)
        .protocol(all)
        .redirect(to)
        .map_err(|e| (MirrorStep::AddFilter, e))?
        .execute()
        .await
        .map_err(|e| (MirrorStep::AddFilter, e))
}

/// Deletes the ingress qdisc of `index` and with it its filters. A link or qdisc that is
/// already gone is fine.
pub async fn remove_ingress(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let mut req = handle.qdisc().del(ifindex(index)?);
    let msg = req.message_mut();
    msg.header.parent = TcHandle::INGRESS;
    msg.header.handle = TcHandle::from(INGRESS_HANDLE);
    match req.execute().await {
        Err(e)
            if is_errno(&e, libc::ENODEV)
                || is_errno(&e, libc::ENOENT)
                || is_errno(&e, libc::EINVAL) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn ifindex(index: u32) -> Result<i32, rtnetlink::Error> {
    i32::try_from(index).map_err(|_| rtnetlink::Error::InvalidNla(format!("ifindex {index}")))
}
