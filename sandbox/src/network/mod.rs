//! The host side of a pod's network, Kata's way. CNI (containerd's, or the CLI's) made the
//! pod's network namespace with a veth; [`PodNetwork::attach`] reads that namespace, and
//! for each NIC creates a tap beside it and redirects all traffic between the two with tc
//! (ingress qdiscs and `mirred` redirect filters, both directions). The VMM's virtio-net
//! device gets the tap's fd (`VmmConfig::pass_fds`, `--net fd=N,mac=MAC,mtu=N`), the guest
//! NIC takes the veth's MAC and MTU, and the agent gets the [`GuestNetwork`] (addresses,
//! routes, neighbours) read from the namespace. [`AttachedPodNetwork::detach`] leaves the
//! namespace as CNI made it.
//!
//! - [`netns`]: namespaces by path, work inside them on a thread of their own, named
//!   namespaces for the CLI;
//! - [`inspect`]: the namespace read over rtnetlink; [`plan`]: what to build from it (pure);
//! - [`tap`]: the taps; [`mirror`]: the tc redirection;
//! - [`cni`]: running CNI plugins (the CLI's networks).
//!
//! Everything goes through netlink and `/dev/net/tun`; no `ip` or `tc` is run.

// The CNI plugin runner (another engineer's).
pub mod cni;
pub mod inspect;
pub mod mirror;
pub mod netns;
pub mod plan;
pub mod tap;

mod attach;

pub use attach::{AttachedNic, AttachedPodNetwork, PodNetwork};
pub use bulkhead_protocol::network::GuestNetwork;
pub use inspect::NamespaceSnapshot;
pub use netns::{NetNs, NetNsError};
pub use plan::{plan, PlanError, PodNetworkPlan, TapPlan};

use std::fmt;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// The netlink step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadLinks,
    ReadAddresses,
    ReadRoutes,
    ReadNeighbours,
    ConfigureTap,
    AddIngressQdisc,
    AddRedirectFilter,
    RemoveIngressQdisc,
    DeleteTap,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReadLinks => "read the links",
            Step::ReadAddresses => "read the addresses",
            Step::ReadRoutes => "read the routes",
            Step::ReadNeighbours => "read the neighbours",
            Step::ConfigureTap => "set the MTU and bring up",
            Step::AddIngressQdisc => "add the ingress qdisc on",
            Step::AddRedirectFilter => "add the redirect filter on",
            Step::RemoveIngressQdisc => "remove the ingress qdisc of",
            Step::DeleteTap => "delete the tap",
        })
    }
}

/// Why the pod network could not be attached or detached; names the namespace, the step
/// and the link. Netlink errors are boxed: they carry whole messages, and this error travels
/// inside the sandbox's.
#[derive(Debug, Error)]
pub enum NetworkError {
    #[error(transparent)]
    Namespace(#[from] NetNsError),
    #[error("cannot open a netlink socket in {netns}")]
    Connect {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {step} in {netns}")]
    Read {
        netns: PathBuf,
        step: Step,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("cannot plan the pod network of {netns}")]
    Plan {
        netns: PathBuf,
        #[source]
        source: PlanError,
    },
    #[error("cannot create the tap {tap} in {netns}")]
    CreateTap {
        netns: PathBuf,
        tap: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {step} {link} in {netns}")]
    Link {
        netns: PathBuf,
        step: Step,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_step_the_link_and_the_namespace_and_stay_small() {
        let e = NetworkError::Link {
            netns: "/var/run/netns/cni-1".into(),
            step: Step::AddRedirectFilter,
            link: "eth0".into(),
            source: Box::new(rtnetlink::Error::RequestFailed),
        };
        assert_eq!(
            e.to_string(),
            "cannot add the redirect filter on eth0 in /var/run/netns/cni-1"
        );
        assert!(std::mem::size_of::<NetworkError>() <= 96);
    }
}
