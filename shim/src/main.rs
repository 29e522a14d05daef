//! containerd-shim-bulkhead-v2: containerd's runtime `io.containerd.bulkhead.v2`.

use bulkhead_shim::bootstrap::{shim_options, BulkheadShim, RUNTIME_ID};
use bulkhead_shim::config::ShimConfig;

#[tokio::main]
async fn main() {
    // The configuration is read again by the shim itself; here it only gives the log level.
    let config = ShimConfig::load().map_err(|e| bulkhead_shim::bootstrap::error_chain(&e));
    containerd_shim::asynchronous::run::<BulkheadShim>(RUNTIME_ID, Some(shim_options(&config)))
        .await;
}
