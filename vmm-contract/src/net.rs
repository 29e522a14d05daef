//! Network values of the VMM's command line: [`NetSpec`] (`--net`, one virtio-net device on a
//! tap, served by the VMM or by the kernel's vhost-net) and [`MacAddr`] (`--net ...,mac=`), which the host and the guest agent share (it is
//! also re-exported by `bulkhead_protocol::network`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl MacAddr {
    /// Multicast addresses (low bit of the first byte) cannot name a NIC.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

/// Longest tap interface name: IFNAMSIZ (16) less the terminating NUL.
pub const TAP_NAME_MAX_LEN: usize = 15;
/// Smallest MTU a guest may be told (IPv4's minimum, RFC 791).
pub const MIN_MTU: u16 = 68;

/// Where a `--net` device's frames go: a tap device the VMM opens by name, or an already
/// attached tap file descriptor the VMM inherits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TapBackend {
    /// `tap=NAME`: the VMM opens `/dev/net/tun` and attaches the tap NAME (creating it if it
    /// does not exist; that needs CAP_NET_ADMIN).
    Name(String),
    /// `fd=N`: an inherited fd already attached to a tap with `IFF_VNET_HDR`, so a VMM without
    /// CAP_NET_ADMIN can use it.
    Fd(i32),
}

/// `--net tap=NAME[,mac=MAC][,mtu=N][,vhost=on|off]` or `--net fd=N[,...]`: one virtio-net
/// device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetSpec {
    /// The tap behind the device.
    pub backend: TapBackend,
    /// The guest NIC's address; `None`: a random locally administered one.
    pub mac: Option<MacAddr>,
    /// The MTU announced to the guest; `None`: the guest's default (1500).
    pub mtu: Option<u16>,
    /// `vhost=on`: the kernel's vhost-net moves the frames (`/dev/vhost-net`, opened before
    /// confinement); `false` (the default, `vhost=off`): the VMM's event loop does.
    pub vhost: bool,
}

/// Errors in a `--net` value; each names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetSpecError {
    #[error("--net value is empty, expected tap=NAME or fd=N")]
    Empty,
    #[error("--net must start with tap=NAME or fd=N, got {0:?}")]
    Backend(String),
    #[error("--net tap name {name:?} is not usable: {why}")]
    TapName { name: String, why: &'static str },
    #[error("--net fd {0:?} is not a file descriptor number of 3 or more")]
    Fd(String),
    #[error("--net mac: {0}")]
    Mac(#[source] ParseMacError),
    #[error("--net mac {0} is a multicast or all-zero address, the NIC needs a unicast one")]
    MacNotUnicast(MacAddr),
    #[error("--net mtu {0:?} is not a number between {MIN_MTU} and 65535")]
    Mtu(String),
    #[error("--net vhost {0:?} is neither on nor off")]
    Vhost(String),
    #[error("--net option {0:?} is unknown (mac=MAC, mtu=N and vhost=on|off are)")]
    UnknownOption(String),
    #[error("--net option {0:?} is given twice")]
    Duplicate(&'static str),
}

/// Check a tap interface name the way the kernel would take it (`dev_valid_name`).
pub fn validate_tap_name(name: &str) -> Result<(), NetSpecError> {
    let bad = |why| {
        Err(NetSpecError::TapName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > TAP_NAME_MAX_LEN {
        return bad("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("it is . or ..");
    }
    if name.contains(['/', ':', ',', '=', '\0']) || name.contains(char::is_whitespace) {
        return bad("it contains '/', ':', ',', '=', NUL or white space");
    }
    Ok(())
}

impl NetSpec {
    /// A device on the tap named `name`, random MAC, default MTU.
    pub fn tap(name: &str) -> Result<Self, NetSpecError> {
        validate_tap_name(name)?;
        Ok(NetSpec {
            backend: TapBackend::Name(name.to_owned()),
            mac: None,
            mtu: None,
            vhost: false,
        })
    }

    /// Check the parts a caller may have set directly.
    pub fn validate(&self) -> Result<(), NetSpecError> {
        match &self.backend {
            TapBackend::Name(name) => validate_tap_name(name)?,
            TapBackend::Fd(fd) if *fd < 3 => return Err(NetSpecError::Fd(fd.to_string())),
            TapBackend::Fd(_) => {}
        }
        if let Some(mac) = self.mac {
            if !mac.is_unicast() {
                return Err(NetSpecError::MacNotUnicast(mac));
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(NetSpecError::Mtu(mtu.to_string()));
            }
        }
        Ok(())
    }
}

impl FromStr for NetSpec {
    type Err = NetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NetSpecError::Empty);
        }
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let backend = match first.split_once('=') {
            Some(("tap", name)) => {
                validate_tap_name(name)?;
                TapBackend::Name(name.to_owned())
            }
            Some(("fd", n)) => match n.parse::<i32>() {
                Ok(fd) if fd >= 3 && n.bytes().all(|b| b.is_ascii_digit()) => TapBackend::Fd(fd),
                _ => return Err(NetSpecError::Fd(n.to_owned())),
            },
            _ => return Err(NetSpecError::Backend(first.to_owned())),
        };
        let mut spec = NetSpec {
            backend,
            mac: None,
            mtu: None,
            vhost: false,
        };
        let mut vhost_seen = false;
        for part in parts {
            match part.split_once('=') {
                Some(("mac", value)) => {
                    if spec.mac.is_some() {
                        return Err(NetSpecError::Duplicate("mac"));
                    }
                    let mac: MacAddr = value.parse().map_err(NetSpecError::Mac)?;
                    if !mac.is_unicast() {
                        return Err(NetSpecError::MacNotUnicast(mac));
                    }
                    spec.mac = Some(mac);
                }
                Some(("mtu", value)) => {
                    if spec.mtu.is_some() {
                        return Err(NetSpecError::Duplicate("mtu"));
                    }
                    match value.parse::<u16>() {
                        Ok(mtu) if mtu >= MIN_MTU && !value.starts_with('+') => {
                            spec.mtu = Some(mtu)
                        }
                        _ => return Err(NetSpecError::Mtu(value.to_owned())),
                    }
                }
                Some(("vhost", value)) => {
                    if std::mem::replace(&mut vhost_seen, true) {
                        return Err(NetSpecError::Duplicate("vhost"));
                    }
                    spec.vhost = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(NetSpecError::Vhost(value.to_owned())),
                    };
                }
                _ => return Err(NetSpecError::UnknownOption(part.to_owned())),
            }
        }
        Ok(spec)
    }
}

/// The flag value, parsed back by [`NetSpec::from_str`].
impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            TapBackend::Name(name) => write!(f, "tap={name}")?,
            TapBackend::Fd(fd) => write!(f, "fd={fd}")?,
        }
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, ",mtu={mtu}")?;
        }
        if self.vhost {
            write!(f, ",vhost=on")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "02:42:0a:58:00:05".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x42, 0x0a, 0x58, 0x00, 0x05]);
        assert_eq!(mac.to_string(), "02:42:0a:58:00:05");
        assert!(mac.is_unicast());
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:05:06",
            "2:42:0a:58:00:05",
            "zz:42:0a:58:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
    }

    #[test]
    fn net_specs_parse_and_print_back() {
        let spec: NetSpec = "tap=tap0".parse().unwrap();
        assert_eq!(spec, NetSpec::tap("tap0").unwrap());
        assert_eq!(spec.to_string(), "tap=tap0");
        let spec: NetSpec = "fd=7,mac=02:42:0a:58:00:05,mtu=9000".parse().unwrap();
        assert_eq!(spec.backend, TapBackend::Fd(7));
        assert_eq!(spec.mac, Some("02:42:0a:58:00:05".parse().unwrap()));
        assert_eq!(spec.mtu, Some(9000));
        assert_eq!(spec.to_string(), "fd=7,mac=02:42:0a:58:00:05,mtu=9000");
        // Options in any order; printed in one.
        let spec: NetSpec = "tap=bh-0123456789a,mtu=1400,mac=02:00:00:00:00:01"
            .parse()
            .unwrap();
        assert_eq!(spec.to_string().parse::<NetSpec>(), Ok(spec.clone()));
        spec.validate().unwrap();
        assert!(!spec.vhost, "vhost is off unless asked for");
    }

    #[test]
    fn vhost_option_parses_prints_and_round_trips() {
        let spec: NetSpec = "tap=bhnet0,vhost=on".parse().unwrap();
        assert!(spec.vhost);
        assert_eq!(spec.to_string(), "tap=bhnet0,vhost=on");
        let spec: NetSpec = "fd=5,vhost=on,mtu=1400,mac=02:00:00:00:00:01"
            .parse()
            .unwrap();
        assert!(spec.vhost);
        assert_eq!(
            spec.to_string(),
            "fd=5,mac=02:00:00:00:00:01,mtu=1400,vhost=on"
        );
        assert_eq!(spec.to_string().parse::<NetSpec>(), Ok(spec));
        // Off is the default and is not printed.
        let spec: NetSpec = "tap=t,vhost=off".parse().unwrap();
        assert_eq!(spec, NetSpec::tap("t").unwrap());
        assert_eq!(spec.to_string(), "tap=t");
        let err = |s: &str| s.parse::<NetSpec>().unwrap_err();
        assert_eq!(err("tap=t,vhost=yes"), NetSpecError::Vhost("yes".into()));
        assert_eq!(err("tap=t,vhost="), NetSpecError::Vhost("".into()));
        assert_eq!(
            err("tap=t,vhost"),
            NetSpecError::UnknownOption("vhost".into())
        );
        assert_eq!(
            err("tap=t,vhost=off,vhost=on"),
            NetSpecError::Duplicate("vhost")
        );
    }

    #[test]
    fn net_spec_errors_name_the_bad_part() {
        let err = |s: &str| s.parse::<NetSpec>().unwrap_err();
        assert_eq!(err(""), NetSpecError::Empty);
        assert_eq!(err("tun=x"), NetSpecError::Backend("tun=x".into()));
        assert_eq!(
            err("mac=02:00:00:00:00:01,tap=x"),
            NetSpecError::Backend("mac=02:00:00:00:00:01".into())
        );
        assert!(matches!(err("tap="), NetSpecError::TapName { .. }));
        assert!(matches!(
            err("tap=0123456789abcdef"),
            NetSpecError::TapName { .. }
        ));
        assert!(matches!(err("tap=a/b"), NetSpecError::TapName { .. }));
        assert!(matches!(err("tap=.."), NetSpecError::TapName { .. }));
        for fd in ["fd=", "fd=2", "fd=-4", "fd=+5", "fd=x", "fd=99999999999"] {
            assert!(matches!(err(fd), NetSpecError::Fd(_)), "{fd}");
        }
        assert!(matches!(err("tap=t,mac=02:00"), NetSpecError::Mac(_)));
        assert!(matches!(
            err("tap=t,mac=01:00:5e:00:00:01"),
            NetSpecError::MacNotUnicast(_)
        ));
        assert_eq!(err("tap=t,mtu=67"), NetSpecError::Mtu("67".into()));
        assert_eq!(err("tap=t,mtu=65536"), NetSpecError::Mtu("65536".into()));
        assert_eq!(err("tap=t,mtu="), NetSpecError::Mtu("".into()));
        assert_eq!(
            err("tap=t,speed=10"),
            NetSpecError::UnknownOption("speed=10".into())
        );
        assert_eq!(err("tap=t,"), NetSpecError::UnknownOption("".into()));
        assert_eq!(
            err("tap=t,mtu=1500,mtu=1400"),
            NetSpecError::Duplicate("mtu")
        );
        let msg = err("tap=t,mtu=10").to_string();
        assert!(msg.contains("mtu") && msg.contains("\"10\""), "{msg}");
        assert!(NetSpec {
            backend: TapBackend::Fd(1),
            mac: None,
            mtu: None,
            vhost: false,
        }
        .validate()
        .is_err());
    }
}
