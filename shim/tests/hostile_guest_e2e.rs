//! A hostile guest against a live pod (issue 12), in the KVM harness: a container with root
//! and CAP_SYS_ADMIN in the guest tries the escapes the host side must withstand, and the
//! host is unchanged afterwards.
//!
//! - the jail, read from `/proc` of the pod's VMM and virtiofsd: uid, capabilities,
//!   seccomp, no_new_privs, namespaces, root, cgroup;
//! - symlink swaps: it mounts the pod's virtio-fs share a second time and tries to plant
//!   symlinks where the shim creates, mounts and deletes (the share's root, every
//!   container's directory); then the shim creates and removes another container;
//! - the agent from inside a container: vsock connections to the host, the loopback CID
//!   and the guest's own CID (a static probe compiled here, bound into the container);
//! - floods: a container that is OOM-killed over and over (OOM events, and kernel OOM
//!   reports on the guest console), against a console capped at 64 KiB;
//! - afterwards: the host's top-level directories and `/etc` (names, sizes, modes) are as
//!   before, nothing of the pod is left.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    Capability, ContainerConfig, CreateContainerRequest, LinuxContainerResources, Mount,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use support::cri::{busybox_container, connect, host_network_pod, prepare, wait_for_log, PAUSE};
use support::scenarios::real_vm_prerequisites;
use support::*;

/// The console cap of this test's pods.
const CONSOLE_CAP: u64 = 64 << 10;

const PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
int main(void) {
    unsigned cids[] = {1, 2, 3};
    unsigned ports[] = {1024, 1025};
    for (unsigned i = 0; i < 3; i++)
        for (unsigned j = 0; j < 2; j++) {
            int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
            if (fd < 0) { printf("vsock socket: %s\n", strerror(errno)); return 0; }
            struct sockaddr_vm a = {0};
            a.svm_family = AF_VSOCK; a.svm_cid = cids[i]; a.svm_port = ports[j];
            if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
                printf("CONNECTED cid=%u port=%u\n", cids[i], ports[j]);
            else
                printf("refused cid=%u port=%u: %s\n", cids[i], ports[j], strerror(errno));
            close(fd);
        }
    fflush(stdout);
    return 0;
}
"#;

/// The attacker: mounts the share again, plants symlinks where the host walks, probes the
/// agent. Every line that would mean a success is in capitals.
const ATTACK: &str = r#"
mkdir -p /mnt/s && mount -t virtiofs bulkhead /mnt/s && echo share-mounted
grep ' /mnt/s ' /proc/self/mountinfo
ls -la /mnt/s
ln -s / /mnt/s/evil 2>/dev/null && echo PLANTED-root || echo refused-root
for d in /mnt/s/*/; do
  ln -s /etc "${d}planted" 2>/dev/null && echo "PLANTED-in-$d" || echo "refused-in-$d"
  if [ -e "${d}mounts" ]; then
    rm -rf "${d}mounts" 2>/dev/null; [ -e "${d}mounts" ] && echo refused-rm || echo "REMOVED-$d"
  fi
  mv "${d}rootfs" "${d}moved" 2>/dev/null && echo "MOVED-$d" || echo "refused-move-$d"
done
/probe
echo attack-done
exec sleep 100000
"#;

/// Gets OOM-killed over and over under a 24 MiB limit (6 times: in the nested harness VM
/// one round takes tens of seconds; 25 rounds did not finish in 10 minutes).
const OOM_FLOOD: &str = r#"
i=0
while [ $i -lt 6 ]; do sh -c 'x=$(head -c 32000000 /dev/zero | tr "\0" a)'; i=$((i+1)); done
echo oom-flood-done
exec sleep 100000
"#;

/// Names, sizes and modes of the entries of `dirs` (one level): what the host must not see
/// change.
fn host_snapshot(dirs: &[&str]) -> BTreeMap<PathBuf, (u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for dir in dirs {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                let size = if m.is_dir() { 0 } else { m.len() };
                out.insert(e.path(), (size, m.mode()));
            }
        }
    }
    out
}

fn status(pid: i32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// The jail of the pod's VMM and the confinement of its virtiofsd, from `/proc`.
fn check_jail(run_root: &str) {
    let vmms = pids_with(&["bulkhead-vmm", run_root]);
    assert_eq!(vmms.len(), 1, "one VMM for the pod: {vmms:?}");
    let vmm = vmms[0];
    let st = status(vmm);
    eprintln!(
        "VMM pid {vmm}: Uid {} Gid {} CapEff {} CapBnd {} Seccomp {} NoNewPrivs {} NSpid {}",
        st["Uid"],
        st["Gid"],
        st["CapEff"],
        st["CapBnd"],
        st["Seccomp"],
        st["NoNewPrivs"],
        st["NSpid"]
    );
    let uid: u32 = st["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uid >= 0x7000_0000,
        "the VMM runs as its own uid: {}",
        st["Uid"]
    );
    assert_eq!(st["CapEff"], "0000000000000000");
    assert_eq!(st["CapPrm"], "0000000000000000");
    assert_eq!(st["CapBnd"], "0000000000000000");
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2", "seccomp filter mode");
    assert!(st["NSpid"].ends_with(" 1"), "PID 1 of its namespace");
    for kind in ["mnt", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{kind}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(theirs, ours, "{kind} namespace");
    }
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    eprintln!("VMM root: {root:?}");
    assert_eq!(root, ["bulkhead-vmm", "dev", "initrd", "kernel"]);
    let cgroup = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    eprintln!("VMM cgroup: {}", cgroup.trim());
    assert!(cgroup.contains("/bulkhead-sandboxes/"), "{cgroup}");
    // The figures behind [jail] memory_overhead_mib: what the sandbox's cgroup holds
    // beyond the guest's own pages.
    // The memory controller's cgroup: v1 (`N:memory:/path`, hybrid hosts) or v2.
    let memory_dir = cgroup
        .lines()
        .find_map(|l| {
            l.split_once(":memory:")
                .map(|(_, p)| format!("/sys/fs/cgroup/memory{p}"))
        })
        .or_else(|| {
            cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| format!("/sys/fs/cgroup{p}")))
        })
        .unwrap();
    let read = |names: &[&str]| {
        names
            .iter()
            .find_map(|f| std::fs::read_to_string(Path::new(&memory_dir).join(f)).ok())
            .unwrap_or_default()
    };
    eprintln!(
        "sandbox memory cgroup {memory_dir}: limit {} usage {} peak {}; \
         VMM VmRSS {} (RssAnon {}, RssFile {})",
        read(&["memory.max", "memory.limit_in_bytes"]).trim(),
        read(&["memory.current", "memory.usage_in_bytes"]).trim(),
        read(&["memory.peak", "memory.max_usage_in_bytes"]).trim(),
        st["VmRSS"],
        st.get("RssAnon").map_or("?", String::as_str),
        st.get("RssFile").map_or("?", String::as_str),
    );
    let fsds = pids_with(&["virtiofsd", run_root]);
    assert!(!fsds.is_empty(), "virtiofsd runs");
    for pid in fsds {
        let st = status(pid);
        let eff = u64::from_str_radix(&st["CapEff"], 16).unwrap();
        eprintln!("virtiofsd pid {pid}: CapEff {}", st["CapEff"]);
        assert_eq!(eff & (1 << 27), 0, "virtiofsd without CAP_MKNOD");
        assert_eq!(eff & (1 << 31), 0, "virtiofsd without CAP_SETFCAP");
        eprintln!("virtiofsd pid {pid}: VmRSS {}", st["VmRSS"]);
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cg.contains("/bulkhead-sandboxes/"),
            "virtiofsd's cgroup: {cg}"
        );
    }
}

fn static_probe(dir: &Path) -> PathBuf {
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let bin = dir.join("probe");
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc builds the vsock probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn a_hostile_guest_changes_nothing_on_the_host() {
    let env = match real_vm_prerequisites() {
        Ok(env) => env,
        Err(reason) => return skip(&reason),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = host_snapshot(&["/", "/etc", "/usr/local/bin"]);
    let mut c = Containerd::start_with(
        &env,
        &format!(
            "{}console_max_bytes = {CONSOLE_CAP}\n",
            support::HARNESS_TIMEOUTS
        ),
        Some(PAUSE),
    );
    let _logs = LogCollector::start(&c.run_root);
    prepare(&mut c);
    let probe = static_probe(c.dir());
    let log_dir = c.dir().join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let events_file = c.dir().join("events.txt");
    let mut events = c
        .ctr()
        .arg("events")
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let run_root = c.run_root.to_string_lossy().into_owned();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cri = connect(c.socket()).await;
        let pod = host_network_pod("hostile", &log_dir);
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: "bulkhead".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;
        check_jail(&run_root);

        let create = |config: ContainerConfig| {
            let mut cri = cri.clone();
            let sandbox = sandbox.clone();
            let pod = pod.clone();
            async move {
                let id = cri
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox,
                        config: Some(config),
                        sandbox_config: Some(pod),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
                    .into_inner()
                    .container_id;
                cri.start_container(StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("StartContainer: {e}"));
                id
            }
        };

        let mut attacker = busybox_container("attacker", ATTACK);
        if let Some(linux) = attacker.linux.as_mut() {
            if let Some(sc) = linux.security_context.as_mut() {
                sc.capabilities = Some(Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                });
            }
        }
        attacker.mounts = vec![Mount {
            container_path: "/probe".into(),
            host_path: probe.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        }];
        let mut ids = vec![create(attacker).await];
        let log = wait_for_log(
            &log_dir.join("attacker.log"),
            "attack-done",
            Duration::from_secs(120),
        );
        eprintln!("attacker.log:\n{log}");
        assert!(
            log.contains("share-mounted"),
            "the attacker could not mount the share: {log}"
        );
        assert!(log.contains("refused cid=2 port=1024"), "{log}");
        assert!(log.contains("refused cid=1 port=1024"), "{log}");
        assert!(log.contains("refused cid=3 port=1024"), "{log}");

        // Nothing the attacker tried reached the host's side of the share.
        // (The share's root and each container's directory: inside a rootfs the guest
        // writes legitimately.)
        let mut host_side = Vec::new();
        for sandbox in std::fs::read_dir(c.run_root.join("k8s.io"))
            .unwrap()
            .flatten()
        {
            let share = sandbox.path().join("share");
            for entry in std::fs::read_dir(&share).into_iter().flatten().flatten() {
                host_side.push(entry.path());
                for inner in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    host_side.push(inner.path());
                }
            }
        }
        eprintln!("host side of the share: {host_side:#?}");
        let planted: Vec<&PathBuf> = host_side
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n == "evil" || n == "planted" || n == "moved")
            })
            .collect();
        assert!(planted.is_empty(), "planted on the host: {planted:?}");
        // What the guest saw of its own attempts is printed above, not asserted: in the
        // harness a second mount of the tag inside a container showed an empty directory
        // (not the pod's share), where planting "worked" without reaching the host. The
        // host-side listing is the check that matters; the agent must stay unreachable.
        assert!(!log.contains("CONNECTED"), "{log}");

        // The shim still creates (and later removes) a container's directory and mounts.
        ids.push(
            create(busybox_container(
                "victim",
                "echo victim-up; exec sleep 100000",
            ))
            .await,
        );
        let log = wait_for_log(
            &log_dir.join("victim.log"),
            "victim-up",
            Duration::from_secs(60),
        );
        assert!(log.contains("victim-up"), "{log}");

        let mut oomer = busybox_container("oomer", OOM_FLOOD);
        if let Some(linux) = oomer.linux.as_mut() {
            linux.resources = Some(LinuxContainerResources {
                memory_limit_in_bytes: 24 << 20,
                ..Default::default()
            });
        }
        let started = Instant::now();
        ids.push(create(oomer).await);
        let log = wait_for_log(
            &log_dir.join("oomer.log"),
            "oom-flood-done",
            Duration::from_secs(600),
        );
        let flood = started.elapsed();
        assert!(log.contains("oom-flood-done"), "{log}");

        // The console stayed within its cap (plus the VMM's one-line notice).
        let consoles: Vec<PathBuf> = walk(&c.run_root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "console.log"))
            .collect();
        assert_eq!(consoles.len(), 1, "{consoles:?}");
        let size = std::fs::metadata(&consoles[0]).unwrap().len();
        eprintln!("console.log: {size} bytes after the OOM flood (cap {CONSOLE_CAP})");
        assert!(
            size <= CONSOLE_CAP + 512,
            "console.log grew to {size} bytes"
        );

        for id in &ids {
            cri.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 5,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}"));
            cri.remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
        }
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));

        // OOM events reached containerd, rate-limited.
        let _ = events.kill();
        let _ = events.wait();
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        let ooms = text.lines().filter(|l| l.contains("/tasks/oom")).count();
        eprintln!("{ooms} /tasks/oom events published during a {flood:?} OOM flood");
        assert!(ooms >= 1, "no OOM event reached containerd:\n{text}");
        assert!(
            ooms as u64 <= 10 + flood.as_secs(),
            "{ooms} OOM events in {flood:?}: not rate-limited"
        );
    });
    c.assert_clean();
    let after = host_snapshot(&["/", "/etc", "/usr/local/bin"]);
    assert_eq!(before, after, "the host changed");
}
