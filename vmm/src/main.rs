//! bulkhead-vmm binary.
fn main() {}
