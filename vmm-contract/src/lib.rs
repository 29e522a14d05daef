//! The contract between the host side (the `sandbox` library, the CLI, the shim, tests) and
//! the `bulkhead-vmm` binary. Both sides depend on this crate and nothing else defines these
//! things:
//!
//! - [`args`]: the VMM's complete command line ([`VmmArgs`], clap) and the value types of its
//!   flags ([`SerialOutput`], [`FsSpec`], [`SeccompMode`], the log level);
//! - [`command`]: [`VmmCommand`], the typed builder the host launches the VMM with; its
//!   output is parsed back by [`VmmArgs`] in this crate's tests;
//! - [`exit`]: the VMM's exit statuses and [`VmmExit`], their classification;
//! - [`limits`]: vCPU, memory and command-line limits, and the default command line;
//! - [`net`]: [`NetSpec`] (`--net`, a virtio-net device on a tap) and [`net::MacAddr`], the
//!   guest NIC address the host, the VMM and the agent share;
//! - [`socket`]: [`HostSocket`], a unix socket given as a path or an inherited `fd=N`
//!   (`--vsock`, `--fs`);
//! - [`virtiofsd`]: how virtiofsd is run for a virtio-fs device ([`VirtiofsdOptions`]).
//!
//! The crate is small on purpose (clap, thiserror, libc, log, bulkhead-log): the VMM binary
//! links it, and so does every host-side crate.

pub mod args;
pub mod command;
pub mod exit;
pub mod limits;
pub mod net;
pub mod socket;
pub mod virtiofsd;

pub use args::{
    ArgsError, FsSpec, FsSpecError, ParseValueError, SeccompMode, SerialOutput, VmmArgs,
};
pub use command::{VmmCommand, VsockSpec};
pub use exit::VmmExit;
pub use net::{MacAddr, NetSpec, NetSpecError, TapBackend};
pub use socket::{HostSocket, HostSocketError};
pub use virtiofsd::{FsCache, FsConfinement, VirtiofsdOptions};
