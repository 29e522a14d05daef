//! A CNI runner: networks for containers made by the standard CNI plugins (bridge,
//! host-local, portmap, firewall, loopback; Debian's `containernetworking-plugins`).
//!
//! - [`conflist`]: configuration lists, from a file or generated ([`BridgeNetwork`]);
//! - [`exec`]: running a list's plugins (ADD, DEL in reverse, CHECK) per CNI 1.0/0.4;
//! - [`result`]: the typed ADD result ([`CniResult`], [`Endpoint`]);
//! - [`ports`]: `-p` port mappings for portmap;
//! - [`netns`]: the named network namespace the container joins.
//!
//! An [`Attachment`] is everything DEL needs (container id, namespace path, interface
//! names, the conflists used, port mappings, ADD results). Front ends store it before
//! [`Cni::attach`] and keep it until [`Cni::detach`] succeeded, so no address, port rule
//! or namespace outlives its container, even after a crash.

pub mod conflist;
mod error;
pub mod exec;
pub mod netns;
pub mod ports;
pub mod result;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use conflist::{BridgeNetwork, ConfList, Ipv4Net, CNI_VERSION};
pub use error::{CniError, PluginError};
pub use exec::{Plugins, RuntimeArgs};
pub use ports::{PortMapping, Protocol};
pub use result::{CniResult, Endpoint};

/// The container's interface on a network.
pub const DEFAULT_IFNAME: &str = "eth0";
/// The standard plugin directories: Debian's package, then the upstream tarball's.
pub const DEFAULT_PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// One network of an attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub ifname: String,
    pub conflist: ConfList,
    /// The ADD result as the last plugin printed it (`prevResult` of DEL); `None` until
    /// ADD succeeded.
    #[serde(default)]
    pub result: Option<Value>,
}

/// What a container's networking is made of, and all that DEL needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The network namespace (a bind mount this attachment owns).
    pub netns: PathBuf,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// In ADD order: loopback first, then the container's networks.
    pub networks: Vec<NetworkAttachment>,
}

impl Attachment {
    /// A namespace at `netns` with `lo` up (the loopback plugin), then `networks` on
    /// [`DEFAULT_IFNAME`] (at most one for now), publishing `ports`.
    pub fn new(
        container_id: &str,
        netns: &Path,
        networks: Vec<ConfList>,
        ports: Vec<PortMapping>,
    ) -> Attachment {
        let mut all = vec![NetworkAttachment {
            ifname: "lo".into(),
            conflist: ConfList::loopback(),
            result: None,
        }];
        all.extend(networks.into_iter().map(|conflist| NetworkAttachment {
            ifname: DEFAULT_IFNAME.into(),
            conflist,
            result: None,
        }));
        Attachment {
            container_id: container_id.to_owned(),
            netns: netns.to_path_buf(),
            port_mappings: ports,
            networks: all,
        }
    }

    /// The container's address on its first network (not loopback), once attached.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.networks
            .iter()
            .filter(|n| n.ifname != "lo")
            .find_map(|n| {
                let r: CniResult = serde_json::from_value(n.result.clone()?).ok()?;
                r.endpoint(&n.ifname)
            })
    }

    /// The name of the first network (not loopback).
    pub fn network_name(&self) -> Option<&str> {
        self.networks
            .iter()
            .find(|n| n.ifname != "lo")
            .map(|n| n.conflist.name.as_str())
    }

    fn args<'a>(&'a self, n: &'a NetworkAttachment) -> RuntimeArgs<'a> {
        RuntimeArgs {
            container_id: &self.container_id,
            netns: &self.netns,
            ifname: &n.ifname,
            port_mappings: &self.port_mappings,
        }
    }
}

/// The CNI runner.
#[derive(Debug, Clone)]
pub struct Cni {
    plugins: Plugins,
}

impl Cni {
    pub fn new(plugin_dirs: Vec<PathBuf>) -> Cni {
        Cni {
            plugins: Plugins::new(plugin_dirs),
        }
    }

    /// Creates the namespace and ADDs each network in order, recording each result. On
    /// failure what was done is undone (DEL, namespace removed) and the error returned.
    pub fn attach(&self, att: &mut Attachment) -> Result<(), CniError> {
        netns::create(&att.netns)?;
        for i in 0..att.networks.len() {
            let added = self
                .plugins
                .add(&att.networks[i].conflist, &att.args(&att.networks[i]));
            match added {
                Ok(result) => att.networks[i].result = Some(result),
                Err(e) => {
                    if let Err(undo) = self.detach(att) {
                        log::warn!(
                            "undoing a failed network set-up: {}",
                            bulkhead_log::error_chain(&undo)
                        );
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// DELs every network in reverse order (also those whose ADD never finished: the
    /// plugins release what they may have made) and removes the namespace. Every step
    /// runs; the first failure is returned. Detaching twice is fine.
    pub fn detach(&self, att: &Attachment) -> Result<(), CniError> {
        let mut first = None;
        for n in att.networks.iter().rev() {
            if let Err(e) = self
                .plugins
                .del(&n.conflist, &att.args(n), n.result.as_ref())
            {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = netns::remove(&att.netns) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECKs every attached network. Note: Debian's portmap 1.1.1 fails CHECK on hosts
    /// without an IPv6 DNAT chain for the container.
    pub fn check(&self, att: &Attachment) -> Result<(), CniError> {
        for n in &att.networks {
            if let Some(r) = &n.result {
                self.plugins.check(&n.conflist, &att.args(n), r)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
