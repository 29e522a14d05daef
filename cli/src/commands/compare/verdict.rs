//! From raw probe outcomes to verdicts: a refused attempt is `blocked`; an allowed one is
//! `host` when the probe saw the host's own marker or ran on the host's kernel (same boot
//! id), and `contained` when it ran on another kernel (the microVM's guest) and saw
//! nothing of the host's.

use bulkhead_probe::report::{Outcome, ProbeReport, ProbeResult};
use serde::{Deserialize, Serialize};

/// What one probe means for the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The kernel refused it, or showed nothing.
    Blocked,
    /// It worked against the guest kernel only; the host saw nothing of it.
    Contained,
    /// It worked against the host's kernel, or showed the host.
    Host,
    /// Could not be tried.
    Unavailable,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Blocked => "blocked",
            Verdict::Contained => "contained",
            Verdict::Host => "HOST",
            Verdict::Unavailable => "n/a",
        }
    }
}

/// `result`'s verdict, given whether the probe ran on the host's kernel.
pub fn judge(result: &ProbeResult, on_host_kernel: bool) -> Verdict {
    match result.outcome {
        Outcome::Unavailable => Verdict::Unavailable,
        Outcome::Refused if result.host_evidence => Verdict::Host,
        Outcome::Refused => Verdict::Blocked,
        Outcome::Allowed if result.host_evidence || on_host_kernel => Verdict::Host,
        Outcome::Allowed => Verdict::Contained,
    }
}

/// Whether the probe's kernel is the host's: same boot id.
pub fn on_host_kernel(report: &ProbeReport, host_boot_id: &str) -> bool {
    !host_boot_id.is_empty() && report.identity.boot_id == host_boot_id
}

/// The host's side of the evidence, added to the probe's own: a file the probe wrote
/// through the read-write volume is looked for on the host (found: the write reached the
/// host); a probe that worked on another kernel gets the host check that makes it
/// "contained" beside its detail.
pub fn add_host_checks(
    report: &mut ProbeReport,
    on_host_kernel: bool,
    host_boot_id: &str,
    rw_dir: &std::path::Path,
    nonce: &str,
) {
    let guest_boot = report.identity.boot_id.clone();
    for r in &mut report.results {
        if r.id == "volume_write" && r.outcome == Outcome::Allowed {
            let on_host =
                !nonce.is_empty() && read_guest_file(&rw_dir.join("written-by-probe")) == nonce;
            if on_host {
                r.host_evidence = true;
                r.detail
                    .push_str(&format!("; host check: found in {}", rw_dir.display()));
            }
        } else if r.outcome == Outcome::Allowed && !r.host_evidence && !on_host_kernel {
            r.detail.push_str(&format!(
                "; host check: another kernel (boot id {} is not the host's {}), no host marker seen",
                short(&guest_boot),
                short(host_boot_id)
            ));
        }
    }
}

/// At most 256 bytes of a file in a directory the workload can write, never through a
/// symlink (the directory itself is the host's own).
fn read_guest_file(path: &std::path::Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular {
            let _ = f.take(256).read_to_string(&mut text);
        }
    }
    text
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_probe::report::Group;

    fn r(outcome: Outcome, host: bool) -> ProbeResult {
        ProbeResult {
            id: "x".into(),
            group: Group::Abuse,
            title: "x".into(),
            outcome,
            detail: String::new(),
            host_evidence: host,
        }
    }

    #[test]
    fn the_host_checks_decide_volume_writes_and_explain_containment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("written-by-probe"), "n0nce").unwrap();
        let mut report = ProbeReport::default();
        report.identity.boot_id = "guest-boot-id".into();
        let mut w = r(Outcome::Allowed, false);
        w.id = "volume_write".into();
        report.results = vec![w, r(Outcome::Allowed, false), r(Outcome::Refused, false)];
        add_host_checks(&mut report, false, "host-boot-id", dir.path(), "n0nce");
        assert!(report.results[0].host_evidence);
        assert_eq!(judge(&report.results[0], false), Verdict::Host);
        assert!(report.results[1]
            .detail
            .contains("host check: another kernel"));
        assert_eq!(judge(&report.results[1], false), Verdict::Contained);
        assert!(report.results[2].detail.is_empty());
    }

    #[test]
    fn a_symlink_in_the_volume_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "n0nce").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("secret"),
            dir.path().join("written-by-probe"),
        )
        .unwrap();
        assert_eq!(read_guest_file(&dir.path().join("written-by-probe")), "");
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge(&r(Outcome::Refused, false), true), Verdict::Blocked);
        assert_eq!(judge(&r(Outcome::Allowed, false), true), Verdict::Host);
        assert_eq!(
            judge(&r(Outcome::Allowed, false), false),
            Verdict::Contained
        );
        assert_eq!(judge(&r(Outcome::Allowed, true), false), Verdict::Host);
        assert_eq!(
            judge(&r(Outcome::Unavailable, false), true),
            Verdict::Unavailable
        );
    }
}
