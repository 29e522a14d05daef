//! containerd-shim-bulkhead-v2: containerd's runtime `io.containerd.bulkhead.v2`.

use bulkhead_shim::bootstrap::{shim_options, BulkheadShim, RUNTIME_ID};

#[tokio::main]
async fn main() {
    // containerd-shim's own `-v` needs the variables containerd sets (TTRPC_ADDRESS...) and
    // fails without them; a person asking for the version gets it here.
    if std::env::args()
        .nth(1)
        .as_deref()
        .is_some_and(|a| a == "-v" || a == "--version")
    {
        println!(
            "containerd-shim-bulkhead-v2 {} (runtime {RUNTIME_ID}, agent protocol {})",
            bulkhead_version::LONG,
            bulkhead_protocol::PROTOCOL_VERSION
        );
        return;
    }
    // The shim reads the configuration (and sets up its logger) in `BulkheadShim::new`.
    containerd_shim::asynchronous::run::<BulkheadShim>(RUNTIME_ID, Some(shim_options())).await;
}
