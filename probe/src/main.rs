//! `bulkhead-probe`: runs every probe and prints the report as JSON on stdout. Run by
//! `bulkhead compare` inside each container it starts; the environment carries the host's
//! hints (see `HostHints`). `--no-costs` skips the timing loops;
//! `--idle SECS` only sleeps.

fn main() {
    // `--idle SECS`: only sleep (a stand-in workload whose host memory is measured).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--idle") {
        let secs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(3600);
        std::thread::sleep(std::time::Duration::from_secs(secs));
        return;
    }
    let hints = bulkhead_probe::HostHints::from_env();
    let costs = !std::env::args().any(|a| a == "--no-costs");
    let mut results = bulkhead_probe::visibility::probe(&hints);
    results.extend(bulkhead_probe::abuses::probe(&hints));
    let report = bulkhead_probe::report::ProbeReport {
        identity: bulkhead_probe::identity::probe(),
        results,
        costs: if costs {
            bulkhead_probe::costs::probe(&hints)
        } else {
            Default::default()
        },
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("bulkhead-probe: {e}");
            std::process::exit(1);
        }
    }
}
