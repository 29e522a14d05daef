//! containerd-shim-bulkhead-v2: containerd's runtime `io.containerd.bulkhead.v2`.

use bulkhead_shim::bootstrap::{shim_options, BulkheadShim, RUNTIME_ID};
use bulkhead_shim::config::ShimConfig;

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
            env!("CARGO_PKG_VERSION"),
            bulkhead_protocol::PROTOCOL_VERSION
        );
        return;
    }
    // The configuration is read again by the shim itself; here it only gives the log level.
    let config = ShimConfig::load().map_err(|e| bulkhead_shim::bootstrap::error_chain(&e));
    containerd_shim::asynchronous::run::<BulkheadShim>(RUNTIME_ID, Some(shim_options(&config)))
        .await;
}
