//! What a virtio-fs device is configured with (`--fs TAG=SOCKET`, [`FsSpec`] in the VMM
//! contract, plus the queue layout), and the device configuration space the guest reads
//! (virtio spec 5.11.4: `tag[36]`, `num_request_queues`).

use std::path::PathBuf;
use std::str::FromStr;

use bulkhead_vmm_contract::args::validate_tag;
pub use bulkhead_vmm_contract::{FsSpec, FsSpecError, HostSocket};

/// Length of the tag field in the configuration space; a tag uses at most this many bytes.
pub const TAG_LEN: usize = bulkhead_vmm_contract::limits::FS_TAG_MAX_LEN;
/// Default number of request queues (besides the high-priority queue).
pub const DEFAULT_REQUEST_QUEUES: u16 = 1;
/// Default size of every queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Size of the configuration space: the tag, then `num_request_queues` as u32 LE.
pub const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;

/// Errors in a virtio-fs configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsConfigError {
    #[error(transparent)]
    Spec(#[from] FsSpecError),
    #[error("virtio-fs needs at least one request queue")]
    NoRequestQueues,
    #[error("virtio-fs queue size {0} is not a power of two between 2 and 32768")]
    QueueSize(u16),
}

/// One virtio-fs device: the tag the guest mounts (`mount -t virtiofs TAG /mnt`) and the
/// vhost-user socket of the virtiofsd that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// Mount tag, 1 to [`TAG_LEN`] bytes of UTF-8 without NUL.
    pub tag: String,
    /// virtiofsd's listening vhost-user socket, or an inherited connection to it.
    pub socket: HostSocket,
    /// Number of request queues (queue 0 is the high-priority queue, these follow it).
    pub num_request_queues: u16,
    /// Size of every queue.
    pub queue_size: u16,
}

impl FsConfig {
    /// A configuration on a socket path with the default queue layout, validated.
    pub fn new(tag: &str, socket: impl Into<PathBuf>) -> Result<Self, FsConfigError> {
        let config = Self {
            tag: tag.to_string(),
            socket: HostSocket::Path(socket.into()),
            num_request_queues: DEFAULT_REQUEST_QUEUES,
            queue_size: DEFAULT_QUEUE_SIZE,
        };
        config.validate()?;
        Ok(config)
    }

    /// Check the tag, the socket path and the queue layout.
    pub fn validate(&self) -> Result<(), FsConfigError> {
        validate_tag(&self.tag)?;
        self.socket.validate().map_err(FsSpecError::Socket)?;
        if self.num_request_queues == 0 {
            return Err(FsConfigError::NoRequestQueues);
        }
        if self.queue_size < 2 || !self.queue_size.is_power_of_two() {
            return Err(FsConfigError::QueueSize(self.queue_size));
        }
        Ok(())
    }

    /// Total number of virtqueues: the high-priority queue plus the request queues.
    pub fn num_queues(&self) -> usize {
        1 + usize::from(self.num_request_queues)
    }

    /// The configuration space as the guest reads it.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        space[..n].copy_from_slice(&tag[..n]);
        space[TAG_LEN..].copy_from_slice(&u32::from(self.num_request_queues).to_le_bytes());
        space
    }
}

/// A `--fs` device with the default queue layout.
impl From<FsSpec> for FsConfig {
    fn from(spec: FsSpec) -> Self {
        FsConfig {
            tag: spec.tag,
            socket: spec.socket,
            num_request_queues: DEFAULT_REQUEST_QUEUES,
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }
}

/// Parses the command-line form `TAG=SOCKET` (the socket path may itself contain `=`).
impl FromStr for FsConfig {
    type Err = FsConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.parse::<FsSpec>()?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tag_and_socket() {
        let c: FsConfig = "rootfs=/run/bulkhead/vfs=1.sock".parse().unwrap();
        assert_eq!(c.tag, "rootfs");
        assert_eq!(
            c.socket,
            HostSocket::Path(PathBuf::from("/run/bulkhead/vfs=1.sock"))
        );
        let c: FsConfig = "data=fd=7".parse().unwrap();
        assert_eq!(c.socket, HostSocket::Fd(7));
        assert_eq!(c.num_request_queues, DEFAULT_REQUEST_QUEUES);
        assert_eq!(c.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(c.num_queues(), 2);
    }

    #[test]
    fn rejects_bad_specs() {
        // The `TAG=SOCKET` syntax and the tag rules are the contract's (tested there).
        assert!(matches!(
            "rootfs".parse::<FsConfig>(),
            Err(FsConfigError::Spec(FsSpecError::Syntax(_)))
        ));
        let long = "x".repeat(TAG_LEN + 1);
        assert!(matches!(
            FsConfig::new(&long, "/s"),
            Err(FsConfigError::Spec(FsSpecError::TagTooLong { len: 37, .. }))
        ));
        assert_eq!(
            FsConfig::new("t", ""),
            Err(FsConfigError::Spec(FsSpecError::Socket(
                bulkhead_vmm_contract::HostSocketError::Empty
            )))
        );
        let mut c = FsConfig::new("t", "/s").unwrap();
        c.num_request_queues = 0;
        assert_eq!(c.validate(), Err(FsConfigError::NoRequestQueues));
        c.num_request_queues = 2;
        c.queue_size = 1000;
        assert_eq!(c.validate(), Err(FsConfigError::QueueSize(1000)));
        c.queue_size = 1;
        assert_eq!(c.validate(), Err(FsConfigError::QueueSize(1)));
        c.queue_size = 2;
        c.tag = String::new();
        assert_eq!(
            c.validate(),
            Err(FsConfigError::Spec(FsSpecError::EmptyTag))
        );
    }

    #[test]
    fn config_space_layout() {
        let mut c = FsConfig::new("myfs", "/s").unwrap();
        c.num_request_queues = 3;
        let space = c.config_space();
        assert_eq!(&space[..4], b"myfs");
        assert!(space[4..TAG_LEN].iter().all(|&b| b == 0), "tag NUL-padded");
        assert_eq!(&space[TAG_LEN..], &[3, 0, 0, 0]);

        // A 36-byte tag fills the field with no terminator, as the spec allows.
        let full = FsConfig::new(&"t".repeat(TAG_LEN), "/s").unwrap();
        let space = full.config_space();
        assert!(space[..TAG_LEN].iter().all(|&b| b == b't'));
        assert_eq!(&space[TAG_LEN..], &[1, 0, 0, 0]);
    }
}
