//! Network configuration lists (`.conflist`): loaded from a file, or generated for the
//! default bridge network (bridge + host-local IPAM, portmap, firewall) and for the
//! loopback interface.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::error::CniError;

/// The CNI version we speak, which the Debian 12 plugins (1.1.1) support too.
pub const CNI_VERSION: &str = "1.0.0";

/// A network configuration list: a name, a version and the chain of plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "disableCheck", default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    /// Each plugin's configuration; `type` names the binary.
    pub plugins: Vec<Map<String, Value>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ConfList {
    /// Parses and checks a conflist (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<ConfList, CniError> {
        let invalid = |reason: String| CniError::Conflist {
            origin: origin.to_owned(),
            reason,
        };
        let list: ConfList = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if list.name.is_empty() {
            return Err(invalid("\"name\" is empty".into()));
        }
        if list.plugins.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        for (i, p) in list.plugins.iter().enumerate() {
            let ok = p
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty() && !t.contains('/') && t != "..");
            if !ok {
                return Err(invalid(format!(
                    "plugin {i} has no valid \"type\" (a binary name)"
                )));
            }
        }
        Ok(list)
    }

    /// Reads a conflist file.
    pub fn load(path: &Path) -> Result<ConfList, CniError> {
        let text = std::fs::read_to_string(path).map_err(|source| CniError::ReadConflist {
            path: path.to_path_buf(),
            source,
        })?;
        ConfList::parse(&text, &path.display().to_string())
    }

    /// The plugin types in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    /// The conflist with `loopback` alone (run with ifname `lo`).
    pub fn loopback() -> ConfList {
        ConfList {
            cni_version: CNI_VERSION.into(),
            name: "loopback".into(),
            disable_check: false,
            plugins: vec![plugin(json!({"type": "loopback"}))],
        }
    }
}

fn plugin(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// An IPv4 subnet `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a subnet like 10.89.0.0/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix length {p:?} must be within 8..=30"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s} has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Ipv4Net { addr, prefix })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The Docker-like bridge network: a host bridge that is the containers' gateway, NAT to
/// the outside, published ports, and firewall rules that let the traffic through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The network's name (it names iptables chains and the IPAM store directory).
    pub name: String,
    /// The host bridge device.
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// host-local's store of allocated addresses.
    pub ipam_dir: PathBuf,
}

impl BridgeNetwork {
    /// bridge (isGateway, ipMasq, hairpin) with host-local IPAM, portmap (snat, so that
    /// 127.0.0.1:PORT works) and firewall (iptables).
    pub fn conflist(&self) -> ConfList {
        ConfList {
            cni_version: CNI_VERSION.into(),
            name: self.name.clone(),
            disable_check: false,
            plugins: vec![
                plugin(json!({
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    },
                })),
                plugin(json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "snat": true,
                })),
                plugin(json!({"type": "firewall", "backend": "iptables"})),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> BridgeNetwork {
        BridgeNetwork {
            name: "bulkhead".into(),
            bridge: "bulkhead0".into(),
            subnet: "10.89.0.0/24".parse().unwrap(),
            ipam_dir: "/run/bulkhead/ipam".into(),
        }
    }

    #[test]
    fn the_bridge_conflist() {
        let list = net().conflist();
        assert_eq!(list.plugin_types(), ["bridge", "portmap", "firewall"]);
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "bulkhead");
        assert!(v.get("disableCheck").is_none());
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["bridge"], "bulkhead0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/24");
        assert_eq!(bridge["ipam"]["dataDir"], "/run/bulkhead/ipam");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(v["plugins"][1]["snat"], true);
        // What we write, we read back.
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(ConfList::parse(&text, "x").unwrap(), list);
        assert_eq!(ConfList::loopback().plugin_types(), ["loopback"]);
    }

    #[test]
    fn a_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n.conflist");
        std::fs::write(
            &f,
            r#"{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"ptp","ipMasq":true}]}"#,
        )
        .unwrap();
        let list = ConfList::load(&f).unwrap();
        assert_eq!(
            (list.cni_version.as_str(), list.plugin_types()),
            ("0.4.0", vec!["ptp"])
        );
        let bad = [
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"","plugins":[{"type":"x"}]}"#,
                "\"name\" is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "no valid \"type\"",
            ),
            (r#"{"name":"n"}"#, "cniVersion"),
        ];
        for (text, want) in bad {
            let e = ConfList::parse(text, "f.conflist").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("f.conflist"), "{e}");
        }
        let e = ConfList::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn subnets() {
        let n: Ipv4Net = "10.89.0.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.89.0.0/24");
        assert!("10.89.0.1/24"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.89.0.0/31".parse::<Ipv4Net>().is_err());
        assert!("10.89.0.0".parse::<Ipv4Net>().is_err());
        assert!("fd00::/64".parse::<Ipv4Net>().is_err());
    }
}
