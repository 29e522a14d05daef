//! Agent benchmark: starts `--vms` sandboxes one after the other (real guests, virtio-fs,
//! hybrid vsock) and in each runs `--containers` busybox `/bin/true` containers. Prints the
//! median, minimum and maximum of
//!
//! - launch to agent answering Check: from `Sandbox::start` (virtiofsd, VMM, kernel boot,
//!   agent, version handshake, CreateSandbox) to the first Check reply;
//! - Create+Start+Wait of `/bin/true` (RemoveContainer timed separately);
//! - DestroySandbox to VMM exit.
//!
//! Needs what tests/tests/agent_e2e.rs needs; run it through the harness (bench/README.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_e2e::guest::{
    busybox_rootfs, leftovers, median, spec_json, GuestArtifacts, SpecOptions,
};
use bulkhead_sandbox::{ContainerConfig, ProcessRef, Sandbox, StdioConfig, VmExit};

struct Args {
    vms: usize,
    containers: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        vms: 5,
        containers: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--vms" => args.vms = value()?,
            "--containers" => args.containers = value()?,
            "-h" | "--help" => {
                println!("agent-bench [--vms N (5)] [--containers M (10)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.vms == 0 || args.containers == 0 {
        bail!("--vms and --containers must be at least 1");
    }
    Ok(args)
}

#[derive(Default)]
struct Figures {
    boot_to_check: Vec<Duration>,
    create_start_wait: Vec<Duration>,
    remove: Vec<Duration>,
    destroy: Vec<Duration>,
}

async fn one_vm(
    artifacts: &GuestArtifacts,
    run_root: &std::path::Path,
    n: usize,
    containers: usize,
    figures: &mut Figures,
) -> Result<()> {
    let launched = Instant::now();
    let sandbox = Sandbox::start(artifacts.sandbox_config(&format!("bench{n}"), run_root))
        .await
        .context("sandbox start")?;
    if !sandbox.agent().check().await.context("Check")? {
        bail!("the agent says it is not serving");
    }
    let boot = launched.elapsed();
    figures.boot_to_check.push(boot);
    let rootfs_host = sandbox.shared_dir().join("busybox");
    busybox_rootfs(&rootfs_host).context("busybox rootfs")?;
    let rootfs = sandbox
        .guest_path(&rootfs_host)
        .context("rootfs outside the shared dir")?;
    let mut csw = Vec::new();
    for i in 0..containers {
        let id = format!("true{i}");
        let config = ContainerConfig {
            id: id.clone(),
            exec_id: String::new(),
            spec_json: spec_json(
                &["/bin/true"],
                SpecOptions {
                    pid_namespace: true,
                    ..Default::default()
                },
            ),
            rootfs: rootfs.clone(),
            stdio: StdioConfig::default(),
        };
        let process = ProcessRef::new(&id, "")?;
        let t = Instant::now();
        sandbox.create_container(&config).await.context("create")?;
        sandbox.start_container(&id).await.context("start")?;
        let exit = sandbox.wait(&process).await.context("wait")?;
        let elapsed = t.elapsed();
        if exit.exit_status != 0 {
            bail!("/bin/true exited with {}", exit.exit_status);
        }
        csw.push(elapsed);
        let t = Instant::now();
        sandbox.remove_container(&id).await.context("remove")?;
        figures.remove.push(t.elapsed());
    }
    let vmm_pid = sandbox.vmm_pid();
    let t = Instant::now();
    let exit = sandbox.destroy().await.context("destroy")?;
    figures.destroy.push(t.elapsed());
    if exit != VmExit::Shutdown {
        bail!("the VM ended with {exit:?}");
    }
    let left = leftovers(run_root, vmm_pid);
    if !left.is_empty() {
        bail!("left behind after destroy: {left:#?}");
    }
    let mut sorted = csw.clone();
    eprintln!(
        "vm {n}: launch to Check {boot:?}, Create+Start+Wait median {:?}",
        median(&mut sorted).unwrap_or_default()
    );
    figures.create_start_wait.extend(csw);
    Ok(())
}

fn report(name: &str, values: &mut [Duration]) {
    let n = values.len();
    let med = median(values).unwrap_or_default();
    let min = values.first().copied().unwrap_or_default();
    let max = values.last().copied().unwrap_or_default();
    println!(
        "{name:<34} n={n:<3} median {:>9.1} ms  min {:>9.1} ms  max {:>9.1} ms",
        med.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if !bulkhead_e2e::linux_kvm_available() {
        bail!("no KVM that boots Linux here: run through tests/harness/run-in-kvm.sh");
    }
    let artifacts = GuestArtifacts::locate().map_err(anyhow::Error::msg)?;
    let run_root = PathBuf::from(format!("/tmp/bulkhead-agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_root)?;
    let mut figures = Figures::default();
    for n in 0..args.vms {
        one_vm(&artifacts, &run_root, n, args.containers, &mut figures)
            .await
            .with_context(|| format!("vm {n}"))?;
    }
    std::fs::remove_dir(&run_root).ok();
    println!(
        "agent-bench: {} VMs x {} containers, kernel {}, initrd {}",
        args.vms,
        args.containers,
        artifacts.kernel.display(),
        artifacts.initrd.display()
    );
    report(
        "launch to agent answering Check",
        &mut figures.boot_to_check,
    );
    report(
        "Create+Start+Wait /bin/true",
        &mut figures.create_start_wait,
    );
    report("RemoveContainer", &mut figures.remove);
    report("DestroySandbox to VMM exit", &mut figures.destroy);
    Ok(())
}
