//! [`PodNetwork::attach`]: inspect → plan → one tap per NIC with mirroring, in the pod's
//! namespace, undone step by step on failure; [`AttachedPodNetwork::detach`] (or its drop)
//! removes the qdiscs and the taps.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use bulkhead_protocol::network::{GuestNetwork, MacAddr};
use rtnetlink::Handle;

use super::inspect::{inspect, InspectStep};
use super::mirror::{redirect_ingress, remove_ingress, MirrorStep};
use super::netns::{NetNs, NetNsError};
use super::plan::{plan, TapPlan};
use super::tap;
use super::{NetworkError, Step};

/// Attaching a pod's network namespace to a VM.
pub struct PodNetwork;

/// One NIC of the pod and its tap.
#[derive(Debug)]
pub struct AttachedNic {
    /// The NIC in the namespace (usually `eth0`); also the guest's interface name.
    pub link_name: String,
    pub link_index: u32,
    pub tap_name: String,
    pub tap_index: u32,
    /// The MAC the guest NIC takes (`--net ...,mac=`).
    pub mac: MacAddr,
    /// The MTU of the NIC, its tap and the guest NIC (`--net ...,mtu=`).
    pub mtu: u32,
    tap: OwnedFd,
}

impl AttachedNic {
    /// The tap's fd (close-on-exec); give the VMM a duplicate through `pass_fds`.
    pub fn tap_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }
}

/// A pod network with its taps and mirroring in place.
#[derive(Debug)]
pub struct AttachedPodNetwork {
    netns: NetNs,
    nics: Vec<AttachedNic>,
    guest: GuestNetwork,
    detached: bool,
}

impl PodNetwork {
    /// Attaches the network namespace at `netns` (blocking: a thread of its own does the
    /// work inside the namespace). A namespace with only a loopback gives no NICs and an
    /// empty [`GuestNetwork`].
    pub fn attach(netns: impl AsRef<Path>) -> Result<AttachedPodNetwork, NetworkError> {
        let netns = NetNs::open(netns)?;
        let path = netns.path().to_path_buf();
        let (nics, guest) = netns.run_async(move || attach_inside(path))??;
        Ok(AttachedPodNetwork {
            netns,
            nics,
            guest,
            detached: false,
        })
    }

    /// [`PodNetwork::attach`] on tokio's blocking pool.
    pub async fn attach_async(netns: PathBuf) -> Result<AttachedPodNetwork, NetworkError> {
        let path = netns.clone();
        tokio::task::spawn_blocking(move || PodNetwork::attach(netns))
            .await
            .map_err(|_| NetNsError::Panicked { path })?
    }
}

impl AttachedPodNetwork {
    /// The NICs in namespace order; the VMM's `--net` options go in this order.
    pub fn nics(&self) -> &[AttachedNic] {
        &self.nics
    }

    /// What the agent configures in the guest.
    pub fn guest_network(&self) -> &GuestNetwork {
        &self.guest
    }

    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }

    /// Duplicates of the taps' fds, in NIC order, for `VmmConfig::pass_fds`: as the first
    /// passed fds, NIC `i` is fd `3 + i` in the VMM.
    pub fn vmm_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.nics.iter().map(|n| n.tap.try_clone()).collect()
    }

    /// Removes the mirroring and the taps (blocking). The VMM's copies of the tap fds no
    /// longer carry traffic once this returns.
    pub fn detach(mut self) -> Result<(), NetworkError> {
        self.teardown()
    }

    /// [`AttachedPodNetwork::detach`] on tokio's blocking pool.
    pub async fn detach_async(self) -> Result<(), NetworkError> {
        let path = self.netns.path().to_path_buf();
        tokio::task::spawn_blocking(move || self.detach())
            .await
            .map_err(|_| NetNsError::Panicked { path })?
    }

    fn teardown(&mut self) -> Result<(), NetworkError> {
        self.detached = true;
        let links: Vec<(u32, u32, String)> = self
            .nics
            .iter()
            .map(|n| (n.link_index, n.tap_index, n.link_name.clone()))
            .collect();
        if links.is_empty() {
            return Ok(());
        }
        let path = self.netns.path().to_path_buf();
        let result = self.netns.run_async(move || detach_inside(path, links));
        // The taps are deleted (or cannot be): close our fds either way.
        self.nics.clear();
        result?
    }
}

/// Best effort: a network that was not detached is detached now, errors logged.
impl Drop for AttachedPodNetwork {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.teardown() {
            log::warn!(
                "cannot detach the pod network of {}: {}",
                self.netns.path().display(),
                bulkhead_log::error_chain(&e)
            );
        }
    }
}

type Attached = (Vec<AttachedNic>, GuestNetwork);

/// The attach, on the namespace's thread.
async fn attach_inside(netns: PathBuf) -> Result<Attached, NetworkError> {
    let handle = connect(&netns)?;
    let snapshot = inspect(&handle)
        .await
        .map_err(|(step, source)| NetworkError::Read {
            netns: netns.clone(),
            step: match step {
                InspectStep::Links => Step::ReadLinks,
                InspectStep::Addresses => Step::ReadAddresses,
                InspectStep::Routes => Step::ReadRoutes,
                InspectStep::Neighbours => Step::ReadNeighbours,
            },
            source: Box::new(source),
        })?;
    let plan = plan(&snapshot).map_err(|source| NetworkError::Plan {
        netns: netns.clone(),
        source,
    })?;
    let mut nics = Vec::with_capacity(plan.taps.len());
    for t in &plan.taps {
        match attach_nic(&handle, &netns, t).await {
            Ok(nic) => nics.push(nic),
            Err(e) => {
                for nic in nics {
                    undo(&handle, nic.link_index, nic.tap_index).await;
                }
                return Err(e);
            }
        }
    }
    Ok((nics, plan.guest))
}

/// One tap, configured and mirrored with its NIC; on failure nothing of it stays.
async fn attach_nic(
    handle: &Handle,
    netns: &Path,
    t: &TapPlan,
) -> Result<AttachedNic, NetworkError> {
    let link_err = |step, link: &str| {
        let netns = netns.to_path_buf();
        let link = link.to_owned();
        move |source| NetworkError::Link {
            netns,
            step,
            link,
            source: Box::new(source),
        }
    };
    // Dropping the fd on an error below removes the tap and its qdisc with it.
    let fd = tap::open_tap(&t.tap_name).map_err(|source| NetworkError::CreateTap {
        netns: netns.to_path_buf(),
        tap: t.tap_name.clone(),
        source,
    })?;
    let tap_index = tap::configure(handle, &t.tap_name, t.mtu)
        .await
        .map_err(link_err(Step::ConfigureTap, &t.tap_name))?;
    if let Err((step, e)) = redirect_ingress(handle, t.link_index, tap_index).await {
        if step == MirrorStep::AddFilter {
            let _ = remove_ingress(handle, t.link_index).await;
        }
        return Err(link_err(mirror_step(step), &t.link_name)(e));
    }
    if let Err((step, e)) = redirect_ingress(handle, tap_index, t.link_index).await {
        undo(handle, t.link_index, tap_index).await;
        return Err(link_err(mirror_step(step), &t.tap_name)(e));
    }
    log::info!(
        "pod network {}: {} <-> {} (mac {}, mtu {})",
        netns.display(),
        t.link_name,
        t.tap_name,
        t.mac,
        t.mtu
    );
    Ok(AttachedNic {
        link_name: t.link_name.clone(),
        link_index: t.link_index,
        tap_name: t.tap_name.clone(),
        tap_index,
        mac: t.mac,
        mtu: t.mtu,
        tap: fd,
    })
}

fn mirror_step(step: MirrorStep) -> Step {
    match step {
        MirrorStep::AddQdisc => Step::AddIngressQdisc,
        MirrorStep::AddFilter => Step::AddRedirectFilter,
    }
}

/// Rollback during attach: errors are logged, the first error is what the caller sees.
async fn undo(handle: &Handle, link_index: u32, tap_index: u32) {
    if let Err(e) = remove_ingress(handle, link_index).await {
        log::warn!("rollback: cannot remove the ingress qdisc of link {link_index}: {e}");
    }
    if let Err(e) = tap::delete(handle, tap_index).await {
        log::warn!("rollback: cannot delete tap {tap_index}: {e}");
    }
}

/// The detach, on the namespace's thread: every step is tried, the first error returned.
async fn detach_inside(netns: PathBuf, links: Vec<(u32, u32, String)>) -> Result<(), NetworkError> {
    let handle = connect(&netns)?;
    let mut first = None;
    for (link_index, tap_index, link_name) in links {
        let steps = [
            (
                Step::RemoveIngressQdisc,
                remove_ingress(&handle, link_index).await,
            ),
            (
                Step::RemoveIngressQdisc,
                remove_ingress(&handle, tap_index).await,
            ),
            (Step::DeleteTap, tap::delete(&handle, tap_index).await),
        ];
        for (step, result) in steps {
            if let Err(source) = result {
                first.get_or_insert(NetworkError::Link {
                    netns: netns.clone(),
                    step,
                    link: link_name.clone(),
                    source: Box::new(source),
                });
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// An rtnetlink connection in this thread's namespace, driven by its runtime.
fn connect(netns: &Path) -> Result<Handle, NetworkError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkError::Connect {
            netns: netns.to_path_buf(),
            source,
        })?;
    tokio::spawn(conn);
    Ok(handle)
}
