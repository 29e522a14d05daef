//! containerd shim v2 for Bulkhead: one microVM per pod.
//!
//! containerd starts `containerd-shim-bulkhead-v2` per container; containers of one CRI
//! pod are grouped onto one shim, which runs the pod's VM through `bulkhead-sandbox` and
//! serves containerd's Task API on top of it.
//!
//! - [`bootstrap`]: the `start` and `delete` actions and the serving shim;
//! - [`service`]: the Task service (ttrpc), a thin layer over [`pod_core`];
//! - [`pod_core`]: the VM, its containers and processes, and what each operation does;
//! - [`translate`]: containerd's protobuf messages to and from domain values;
//!   [`resources`]: the OCI resources of an Update;
//! - [`pod`]: grouping by sandbox id and VM configuration; [`mounts`]: container
//!   filesystems in the shared directory; [`guest_spec`]: host-only spec fields (LSM
//!   labels) removed for the guest; [`pod_network`]: the pod's network namespace on the
//!   host and the guest's shared one instead (the run root's propagation, naming and leftovers
//!   are `bulkhead_sandbox`'s); [`stdio`]: FIFO plumbing; [`process`]: process
//!   state (the pid containerd sees is the VMM's); [`events`]: task events and their sinks;
//!   [`oom`]: which of the guest's OOM events reach containerd; [`publisher`]: the sink that is
//!   containerd's event service; [`error`]: errors and their ttrpc codes;
//!   [`config`]: `/etc/bulkhead/config.toml`.

pub mod bootstrap;
pub mod config;
pub mod error;
pub mod events;
pub mod guest_spec;
pub mod mounts;
pub mod oom;
pub mod pod;
pub mod pod_core;
pub mod pod_network;
pub mod process;
pub mod publisher;
pub mod resources;
pub mod runtime_options;
pub mod service;
pub mod stdio;
pub mod translate;
pub mod vm_annotations;
