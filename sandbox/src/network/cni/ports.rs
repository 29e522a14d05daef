//! Published ports: `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]` as Docker spells
//! it, and the `runtimeConfig.portMappings` entry the portmap plugin reads.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::CniError;

/// tcp or udp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port, serialised as portmap's `portMappings` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None`: every host address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

impl fmt::Display for PortMapping {
    /// Docker's `ps` form: `127.0.0.1:18080->80/tcp`, `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Some(ip) => write!(f, "{ip}")?,
            None => f.write_str("0.0.0.0")?,
        }
        write!(
            f,
            ":{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

fn port(spec: &str, what: &str, s: &str) -> Result<u16, CniError> {
    let invalid = |reason: String| CniError::InvalidPort {
        spec: spec.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid(format!("missing {what}")));
    }
    if s.contains('-') {
        return Err(invalid(format!(
            "{what} {s:?}: port ranges are not supported"
        )));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        Ok(n) => Err(invalid(format!("{what} {n} is not within 1-65535"))),
        Err(_) => Err(invalid(format!("{what} {s:?} is not a number"))),
    }
}

impl FromStr for PortMapping {
    type Err = CniError;

    fn from_str(spec: &str) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidPort {
            spec: spec.to_owned(),
            reason,
        };
        let (addr, protocol) = match spec.rsplit_once('/') {
            Some((a, "tcp")) => (a, Protocol::Tcp),
            Some((a, "udp")) => (a, Protocol::Udp),
            Some((_, p)) => {
                return Err(invalid(format!("unknown protocol {p:?} (tcp or udp)")));
            }
            None => (spec, Protocol::Tcp),
        };
        // HOST_IP may be an IPv6 address in brackets.
        let (host_ip, rest) =
            if let Some(v6) = addr.strip_prefix('[') {
                let (ip, rest) = v6
                    .split_once("]:")
                    .ok_or_else(|| invalid("expected [IPv6]:HOST_PORT:CONTAINER_PORT".into()))?;
                (Some(ip), rest)
            } else {
                match addr.matches(':').count() {
                    0 => return Err(invalid(
                        "give a host port: HOST_PORT:CONTAINER_PORT (portmap does not pick one)"
                            .into(),
                    )),
                    1 => (None, addr),
                    2 => {
                        let (ip, rest) = addr.split_once(':').unwrap_or(("", addr));
                        (Some(ip), rest)
                    }
                    _ => {
                        return Err(invalid(
                            "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT".into(),
                        ))
                    }
                }
            };
        let host_ip = match host_ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("{ip:?} is not an IP address")))?,
            ),
        };
        let (host, container) = rest
            .split_once(':')
            .ok_or_else(|| invalid("expected HOST_PORT:CONTAINER_PORT".into()))?;
        Ok(PortMapping {
            host_port: port(spec, "host port", host)?,
            container_port: port(spec, "container port", container)?,
            protocol,
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
        })
    }
}

/// Refuses two mappings of the same host address, port and protocol.
pub fn check_conflicts(ports: &[PortMapping]) -> Result<(), CniError> {
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[..i] {
            let same_ip = a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip;
            if a.host_port == b.host_port && a.protocol == b.protocol && same_ip {
                return Err(CniError::InvalidPort {
                    spec: a.to_string(),
                    reason: format!(
                        "host port {}/{} is published twice",
                        a.host_port, a.protocol
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<PortMapping, String> {
        s.parse::<PortMapping>().map_err(|e| e.to_string())
    }

    #[test]
    fn forms() {
        let m = p("18080:80").unwrap();
        assert_eq!(
            (m.host_port, m.container_port, m.protocol, m.host_ip),
            (18080, 80, Protocol::Tcp, None)
        );
        assert_eq!(m.to_string(), "0.0.0.0:18080->80/tcp");
        let m = p("127.0.0.1:18080:80/udp").unwrap();
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(m.to_string(), "127.0.0.1:18080->80/udp");
        let m = p("[::1]:53:5353/udp").unwrap();
        assert_eq!(m.to_string(), "[::1]:53->5353/udp");
        // An empty or unspecified host IP means every address.
        assert_eq!(p(":8080:80").unwrap().host_ip, None);
        assert_eq!(p("0.0.0.0:8080:80").unwrap().host_ip, None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("80", "give a host port"),
            ("0:80", "not within 1-65535"),
            ("8080:65536", "not within 1-65535"),
            ("8080:80/sctp", "unknown protocol \"sctp\""),
            ("8080-8090:80", "ranges are not supported"),
            ("x:80", "\"x\" is not a number"),
            ("1.2.3:8080:80", "\"1.2.3\" is not an IP address"),
            ("8080:", "missing container port"),
            ("a:b:c:d", "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT"),
            ("[::1:80:80", "expected [IPv6]"),
        ];
        for (spec, want) in cases {
            let err = p(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(err.contains(spec), "{spec}: {err}");
        }
    }

    #[test]
    fn portmap_json_and_conflicts() {
        let m = p("127.0.0.1:18080:80").unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"hostPort": 18080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"})
        );
        assert_eq!(serde_json::from_value::<PortMapping>(v).unwrap(), m);
        let all = [p("8080:80").unwrap(), p("127.0.0.1:8080:81").unwrap()];
        assert!(check_conflicts(&all).is_err());
        let ok = [p("8080:80").unwrap(), p("8080:80/udp").unwrap()];
        check_conflicts(&ok).unwrap();
    }
}
