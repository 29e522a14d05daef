//! bulkhead-agent: PID 1 of the guest. Filled in by the agent issue.

fn main() {
    eprintln!("bulkhead-agent: not implemented yet");
    std::process::exit(1);
}
