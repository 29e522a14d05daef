//! The header that opens a stdio stream connection to the agent's stdio port.
//!
//! Wire format (all integers big endian):
//!
//! ```text
//! offset size  field
//! 0      4     magic "BHIO"
//! 4      1     header version (1)
//! 5      1     stream: 0 stdin, 1 stdout, 2 stderr, 3 tty (both directions)
//! 6      2     container id length C (1..=MAX_ID_LEN)
//! 8      2     exec id length E (0..=MAX_ID_LEN; 0 names the init process)
//! 10     C     container id, UTF-8
//! 10+C   E     exec id, UTF-8
//! ```
//!
//! The agent answers with one status byte ([`AttachStatus`]); after `Ok` the
//! connection carries the raw stream: host-to-guest for stdin, guest-to-host
//! for stdout and stderr, both ways for tty. On any other status the agent
//! closes the connection.

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"BHIO";
pub const HEADER_VERSION: u8 = 1;
/// Length of the fixed part before the two ids.
pub const FIXED_LEN: usize = 10;
/// Longest container or exec id accepted in a header.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The terminal of a tty process: input and output on one connection.
    Tty,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
            StreamKind::Tty => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(StreamKind::Stdin),
            1 => Some(StreamKind::Stdout),
            2 => Some(StreamKind::Stderr),
            3 => Some(StreamKind::Tty),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioHeader {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub stream: StreamKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("bad stdio header magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported stdio header version {0}")]
    BadVersion(u8),
    #[error("unknown stdio stream kind {0}")]
    BadStream(u8),
    #[error("{field} length {len} out of range (max {max})", max = MAX_ID_LEN)]
    BadLength { field: &'static str, len: usize },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// Result of decoding a possibly incomplete buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The header and how many bytes of the buffer it used.
    Complete(StdioHeader, usize),
    /// The buffer must grow to at least this many bytes.
    NeedMore(usize),
}

impl StdioHeader {
    pub fn new(container_id: &str, exec_id: &str, stream: StreamKind) -> Self {
        StdioHeader {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            stream,
        }
    }

    /// Serializes the header; fails on ids the agent would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let cid = self.container_id.as_bytes();
        let eid = self.exec_id.as_bytes();
        check_len("container id", cid.len(), 1)?;
        check_len("exec id", eid.len(), 0)?;
        let mut out = Vec::with_capacity(FIXED_LEN + cid.len() + eid.len());
        out.extend_from_slice(&MAGIC);
        out.push(HEADER_VERSION);
        out.push(self.stream.to_byte());
        // Lengths fit: check_len bounds them by MAX_ID_LEN.
        out.extend_from_slice(&(cid.len() as u16).to_be_bytes());
        out.extend_from_slice(&(eid.len() as u16).to_be_bytes());
        out.extend_from_slice(cid);
        out.extend_from_slice(eid);
        Ok(out)
    }

    /// Decodes a header from the start of `buf`. Validates the fixed part as
    /// soon as it is present, so garbage is refused without waiting for more.
    pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
        let Some(fixed) = buf.get(..FIXED_LEN) else {
            return Ok(Decoded::NeedMore(FIXED_LEN));
        };
        let magic = [fixed[0], fixed[1], fixed[2], fixed[3]];
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        if fixed[4] != HEADER_VERSION {
            return Err(HeaderError::BadVersion(fixed[4]));
        }
        let stream = StreamKind::from_byte(fixed[5]).ok_or(HeaderError::BadStream(fixed[5]))?;
        let cid_len = usize::from(u16::from_be_bytes([fixed[6], fixed[7]]));
        let eid_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        check_len("container id", cid_len, 1)?;
        check_len("exec id", eid_len, 0)?;
        let total = FIXED_LEN + cid_len + eid_len;
        let Some(ids) = buf.get(FIXED_LEN..total) else {
            return Ok(Decoded::NeedMore(total));
        };
        let (cid, eid) = ids.split_at(cid_len);
        let container_id = std::str::from_utf8(cid)
            .map_err(|_| HeaderError::NotUtf8("container id"))?
            .to_owned();
        let exec_id = std::str::from_utf8(eid)
            .map_err(|_| HeaderError::NotUtf8("exec id"))?
            .to_owned();
        Ok(Decoded::Complete(
            StdioHeader {
                container_id,
                exec_id,
                stream,
            },
            total,
        ))
    }
}

fn check_len(field: &'static str, len: usize, min: usize) -> Result<(), HeaderError> {
    if len < min || len > MAX_ID_LEN {
        Err(HeaderError::BadLength { field, len })
    } else {
        Ok(())
    }
}

/// The agent's one-byte answer to a stdio header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStatus {
    Ok,
    /// No such container or process.
    NotFound,
    /// The process has no such stream (stdin not requested, tty vs pipes),
    /// or it is already attached.
    Unavailable,
    /// The header could not be decoded.
    BadHeader,
}

impl AttachStatus {
    pub fn to_byte(self) -> u8 {
        match self {
            AttachStatus::Ok => 0,
            AttachStatus::NotFound => 1,
            AttachStatus::Unavailable => 2,
            AttachStatus::BadHeader => 3,
        }
    }

    /// Unknown bytes map to `BadHeader`: the peer speaks something else.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => AttachStatus::Ok,
            1 => AttachStatus::NotFound,
            2 => AttachStatus::Unavailable,
            _ => AttachStatus::BadHeader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_stream_kind() {
        for stream in [
            StreamKind::Stdin,
            StreamKind::Stdout,
            StreamKind::Stderr,
            StreamKind::Tty,
        ] {
            let h = StdioHeader::new("ctr-1", "exec-é", stream);
            let mut bytes = h.encode().unwrap();
            let len = bytes.len();
            bytes.extend_from_slice(b"trailing stream data");
            assert_eq!(
                StdioHeader::decode(&bytes).unwrap(),
                Decoded::Complete(h, len)
            );
        }
    }

    #[test]
    fn exact_layout() {
        let bytes = StdioHeader::new("ab", "", StreamKind::Stderr)
            .encode()
            .unwrap();
        assert_eq!(bytes, b"BHIO\x01\x02\x00\x02\x00\x00ab");
    }

    #[test]
    fn partial_buffers_ask_for_more() {
        let bytes = StdioHeader::new("container", "exec", StreamKind::Stdout)
            .encode()
            .unwrap();
        assert_eq!(
            StdioHeader::decode(&bytes[..3]).unwrap(),
            Decoded::NeedMore(FIXED_LEN)
        );
        assert_eq!(
            StdioHeader::decode(&bytes[..FIXED_LEN + 2]).unwrap(),
            Decoded::NeedMore(bytes.len())
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            StdioHeader::decode(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::BadMagic(_))
        ));
        assert_eq!(
            StdioHeader::decode(b"BHIO\x02\x00\x00\x01\x00\x00a"),
            Err(HeaderError::BadVersion(2))
        );
        assert_eq!(
            StdioHeader::decode(b"BHIO\x01\x09\x00\x01\x00\x00a"),
            Err(HeaderError::BadStream(9))
        );
        // Empty container id, and an oversized exec id.
        assert!(matches!(
            StdioHeader::decode(b"BHIO\x01\x00\x00\x00\x00\x00"),
            Err(HeaderError::BadLength { .. })
        ));
        assert!(matches!(
            StdioHeader::decode(b"BHIO\x01\x00\x00\x01\xff\xff"),
            Err(HeaderError::BadLength { .. })
        ));
        assert_eq!(
            StdioHeader::decode(b"BHIO\x01\x00\x00\x01\x00\x00\xff"),
            Err(HeaderError::NotUtf8("container id"))
        );
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        assert!(StdioHeader::new("", "x", StreamKind::Stdin)
            .encode()
            .is_err());
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(StdioHeader::new("c", &long, StreamKind::Stdin)
            .encode()
            .is_err());
    }

    #[test]
    fn attach_status_bytes() {
        for s in [
            AttachStatus::Ok,
            AttachStatus::NotFound,
            AttachStatus::Unavailable,
            AttachStatus::BadHeader,
        ] {
            assert_eq!(AttachStatus::from_byte(s.to_byte()), s);
        }
        assert_eq!(AttachStatus::from_byte(200), AttachStatus::BadHeader);
    }
}
