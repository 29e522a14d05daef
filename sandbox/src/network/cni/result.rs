//! A plugin's ADD result (CNI 1.0 and 0.4): interfaces, addresses with gateways, routes
//! and DNS, typed. Unknown keys are ignored; the raw result is kept elsewhere for
//! `prevResult` so nothing a later plugin needs is lost.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The namespace path for an interface inside the container; empty on the host.
    pub sandbox: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpConfig {
    /// `10.89.0.2/24`.
    pub address: String,
    pub gateway: Option<String>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    pub dst: String,
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The container's side of one network, for `inspect` and `/etc/hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Without the prefix length.
    pub ip_address: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

impl CniResult {
    /// The first address on the interface `ifname` inside the container.
    pub fn endpoint(&self, ifname: &str) -> Option<Endpoint> {
        let in_container = |i: usize| {
            self.interfaces
                .get(i)
                .is_some_and(|n| n.name == ifname && !n.sandbox.is_empty())
        };
        let ip = self
            .ips
            .iter()
            .find(|ip| ip.interface.is_some_and(in_container))
            .or_else(|| self.ips.first())?;
        let (addr, len) = ip.address.split_once('/')?;
        let mac = ip
            .interface
            .and_then(|i| self.interfaces.get(i))
            .map(|i| i.mac.clone())
            .unwrap_or_default();
        Some(Endpoint {
            ip_address: addr.to_owned(),
            prefix_len: len.parse().ok()?,
            gateway: ip.gateway.clone().unwrap_or_default(),
            mac_address: mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What bridge 1.1.1 (with host-local) prints for ADD, and what portmap and firewall
    /// pass on unchanged.
    const BRIDGE_1_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "bulkhead0", "mac": "5e:7a:10:3d:c1:01"},
            {"name": "veth8c1d2e3f", "mac": "9a:21:6c:55:0e:02"},
            {"name": "eth0", "mac": "b2:4f:90:aa:17:03", "sandbox": "/run/bulkhead/netns/abc"}
        ],
        "ips": [{"interface": 2, "address": "10.89.0.2/24", "gateway": "10.89.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    /// The same from a 0.4.0 conflist (`version` on each address).
    const BRIDGE_0_4: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "5e:7a:10:3d:c1:01"},
            {"name": "eth0", "mac": "b2:4f:90:aa:17:03", "sandbox": "/var/run/netns/x"}
        ],
        "ips": [{"version": "4", "interface": 1, "address": "10.88.0.7/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.88.0.1"], "search": ["example.test"]}
    }"#;

    /// loopback alone.
    const LOOPBACK: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/bulkhead/netns/abc"}],
        "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}],
        "dns": {}
    }"#;

    #[test]
    fn bridge_results() {
        let r: CniResult = serde_json::from_str(BRIDGE_1_0).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.routes[0].dst, "0.0.0.0/0");
        assert_eq!(
            r.endpoint("eth0").unwrap(),
            Endpoint {
                ip_address: "10.89.0.2".into(),
                prefix_len: 24,
                gateway: "10.89.0.1".into(),
                mac_address: "b2:4f:90:aa:17:03".into(),
            }
        );
        let r: CniResult = serde_json::from_str(BRIDGE_0_4).unwrap();
        let e = r.endpoint("eth0").unwrap();
        assert_eq!((e.ip_address.as_str(), e.prefix_len), ("10.88.0.7", 16));
        assert_eq!(r.routes[0].gw.as_deref(), Some("10.88.0.1"));
        assert_eq!(r.dns.search, ["example.test"]);
        let r: CniResult = serde_json::from_str(LOOPBACK).unwrap();
        assert_eq!(r.endpoint("lo").unwrap().ip_address, "127.0.0.1");
        assert_eq!(r.endpoint("lo").unwrap().gateway, "");
    }

    #[test]
    fn odd_results_do_not_panic() {
        for text in [
            "{}",
            r#"{"ips":[{"address":"nonsense"}]}"#,
            r#"{"ips":[{"address":"1.2.3.4/x","interface":9}]}"#,
        ] {
            let r: CniResult = serde_json::from_str(text).unwrap();
            assert_eq!(r.endpoint("eth0"), None, "{text}");
        }
    }
}
