//! Network values of the VMM's command line that the host and the guest agent share:
//! [`MacAddr`] (`--net ...,mac=`), also re-exported by `bulkhead_protocol::network`.

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
}
