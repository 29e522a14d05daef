//! The VMM's jail seen from outside, as root: a static stand-in for the VMM (a C program
//! that sleeps) started through `VmmProcess` with a sandbox's jail, then its uid,
//! capabilities, no_new_privs, namespaces, root and cgroup read back from `/proc`; and
//! nothing left behind after it ends.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_sandbox::jail::{JailContents, JailSettings, SandboxJail};
use bulkhead_sandbox::vmm_process::{VmmCommand, VmmConfig, VmmProcess};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A static binary that sleeps until killed (the jail holds no libraries).
fn static_sleeper(dir: &Path) -> PathBuf {
    let src = dir.join("sleeper.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.join("sleeper");
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("a C compiler (cc) to build the static stand-in");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[tokio::test]
async fn a_jailed_process_seen_from_proc() {
    assert!(is_root(), "the jail test must run as root");
    let tmp = tempfile::tempdir().unwrap();
    let sleeper = static_sleeper(tmp.path());
    let kernel = tmp.path().join("vmlinux");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let parent = PathBuf::from(format!("bulkhead-jail-test-{}", std::process::id()));
    let settings = JailSettings {
        id_base: 0x7400_0000,
        id_count: 16,
        ids_dir: tmp.path().join("ids"),
        cgroup_parent: Some(parent.clone()),
        memory_overhead_mib: 32,
    };
    let mut jail = SandboxJail::prepare(&settings, "pod-jail", 1, 64).unwrap();
    let uid = jail.uid();
    let plan = jail
        .plan(&JailContents {
            root: &root,
            vmm: &sleeper,
            kernel: &kernel,
            initrd: None,
            vhost_net: false,
            netns: None,
        })
        .unwrap();
    let vmm = VmmProcess::spawn(VmmConfig {
        binary: sleeper.clone(),
        command: VmmCommand::new("/kernel"),
        console_log: tmp.path().join("console.log"),
        vmm_log: tmp.path().join("vmm.log"),
        pass_fds: Vec::new(),
        jail: Some(plan),
    })
    .unwrap();
    let pid = vmm.pid();
    // The child is in the jail once it has exec'd the stand-in.
    let exe = format!("/proc/{pid}/exe");
    for _ in 0..200 {
        if std::fs::read_link(&exe).is_ok_and(|p| p.ends_with("bulkhead-vmm")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Gid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // PID 1 of its own PID namespace.
    assert_eq!(status_field(pid, "NSpid"), format!("{pid} 1"));
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{kind} namespace"
        );
    }
    // Its root holds only the jail's files; the host sees the mount point empty.
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut names: Vec<String> = std::fs::read_dir(&proc_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bulkhead-vmm", "dev", "kernel"]);
    let devs: Vec<_> = std::fs::read_dir(proc_root.join("dev")).unwrap().collect();
    assert_eq!(devs.len(), 1, "only /dev/kvm");
    assert!(
        std::fs::write(proc_root.join("planted"), "x").is_err(),
        "read-only root"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    // Its cgroup is the sandbox's, with the VM's limits.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let dirs = jail.cgroup().unwrap().dirs().to_vec();
    let cg = dirs[0].clone();
    let name = format!("/{}/pod-jail-{uid}", parent.display());
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&name)),
        "{cgroup}"
    );
    // The memory limit, in the v2 cgroup or (hybrid host) the v1 memory hierarchy.
    let memory = dirs
        .iter()
        .flat_map(|d| [d.join("memory.max"), d.join("memory.limit_in_bytes")])
        .find(|p| p.exists())
        .expect("a memory limit");
    let max = std::fs::read_to_string(&memory).unwrap();
    assert_eq!(
        max.trim(),
        (96u64 << 20).to_string(),
        "{}",
        memory.display()
    );

    vmm.kill_and_wait().await;
    drop(vmm);
    jail.release().unwrap();
    assert!(!cg.exists());
    drop(jail);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("ids")).unwrap().count(),
        0
    );
    for dir in dirs {
        assert!(!dir.exists());
        std::fs::remove_dir(dir.parent().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn a_dynamic_vmm_is_refused_with_advice() {
    assert!(is_root(), "the jail test must run as root");
    let tmp = tempfile::tempdir().unwrap();
    let settings = JailSettings {
        id_base: 0x7400_1000,
        id_count: 4,
        ids_dir: tmp.path().join("ids"),
        cgroup_parent: None,
        memory_overhead_mib: 0,
    };
    let jail = SandboxJail::prepare(&settings, "pod-dyn", 1, 64).unwrap();
    let err = jail
        .plan(&JailContents {
            root: tmp.path(),
            vmm: Path::new("/bin/sh"),
            kernel: Path::new("/etc/hostname"),
            initrd: None,
            vhost_net: false,
            netns: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("static"), "{err}");
}
