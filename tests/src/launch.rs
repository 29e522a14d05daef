//! Command lines that boot the test kernel + initramfs: our VMM, and QEMU's
//! microvm machine as the reference the VMM is compared with.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_sandbox::vmm_contract::{SerialOutput, VmmCommand};

/// Kernel command line both launchers use (the VMM and QEMU add their own
/// `virtio_mmio.device=` entries).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule";

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Kernel image (ELF vmlinux for PVH).
    pub kernel: PathBuf,
    /// Initramfs (newc cpio).
    pub initrd: PathBuf,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Full kernel command line.
    pub cmdline: String,
}

impl BootSpec {
    /// A spec with [`BASE_CMDLINE`] plus `bulkhead.test=<action>`.
    pub fn new(kernel: &Path, initrd: &Path, vcpus: u32, memory_mib: u32, action: &str) -> Self {
        Self {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            vcpus,
            memory_mib,
            cmdline: format!("{BASE_CMDLINE} bulkhead.test={action}"),
        }
    }
}

/// `bulkhead-vmm --kernel .. --initrd .. --cmdline .. --vcpus N --memory M --serial stdout`,
/// built by the VMM contract's [`VmmCommand`] like every other launch of the VMM.
pub fn vmm_command(vmm: &Path, spec: &BootSpec) -> Command {
    let mut vmm_args = VmmCommand::new(&spec.kernel);
    vmm_args.initrd = Some(spec.initrd.clone());
    vmm_args.cmdline = Some(spec.cmdline.clone());
    vmm_args.vcpus = u8::try_from(spec.vcpus).unwrap_or(u8::MAX);
    vmm_args.memory_mib = spec.memory_mib;
    vmm_args.serial = SerialOutput::Stdout;
    let mut cmd = Command::new(vmm);
    cmd.args(vmm_args.args());
    cmd
}

/// QEMU binary: `$BULKHEAD_QEMU` or `qemu-system-x86_64` from PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("BULKHEAD_QEMU")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// QEMU `-M microvm,rtc=on,acpi=off` with KVM, serial on stdout, no reboot
/// (a guest reboot ends QEMU), optionally a virtio-rng device. `acpi=off`
/// makes QEMU put its virtio-mmio devices on the command line, which is how
/// our ACPI-less kernel finds them; `rtc=on` avoids a 4 s RTC probe stall.
/// microvm has no i8042 of its own: `-device i8042` adds one, so the guest's
/// `reboot=k` resets the machine the same way as under bulkhead-vmm (without it the
/// kernel spins in its keyboard-controller wait).
pub fn qemu_microvm_command(spec: &BootSpec, with_rng: bool) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args([
        "-M",
        "microvm,rtc=on,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host",
    ])
    .args(["-m", &spec.memory_mib.to_string()])
    .args(["-smp", &spec.vcpus.to_string()])
    .args(["-nodefaults", "-no-user-config", "-display", "none"])
    .args(["-serial", "stdio", "-no-reboot"])
    .args(["-device", "i8042"]);
    if with_rng {
        cmd.args(["-device", "virtio-rng-device"]);
    }
    cmd.arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg(&spec.cmdline);
    cmd
}

/// Adds a virtio-fs device to a [`qemu_microvm_command`]: guest RAM from a shared memfd of
/// `memory_mib` MiB (virtiofsd maps it), a chardev on virtiofsd's vhost-user `socket`, and
/// `vhost-user-fs-device` with mount tag `tag`, one request queue of 1024 entries (the
/// queue size `bulkhead-vmm` gives its virtio-fs queues; QEMU's default is 128).
pub fn qemu_vhost_user_fs(cmd: &mut Command, memory_mib: u32, socket: &Path, tag: &str) {
    cmd.args([
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        "-machine",
        "memory-backend=mem",
        "-chardev",
        &format!("socket,id=vfs0,path={}", socket.display()),
        "-device",
        &format!("vhost-user-fs-device,chardev=vfs0,tag={tag},queue-size=1024"),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn vmm_command_uses_the_agreed_cli() {
        let spec = BootSpec::new(
            Path::new("/k/vmlinux"),
            Path::new("/i.cpio"),
            2,
            128,
            "reboot",
        );
        let a = args(&vmm_command(Path::new("/bin/vmm"), &spec));
        assert_eq!(
            a,
            [
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/i.cpio",
                "--cmdline",
                "console=ttyS0 reboot=k panic=1 pci=off nomodule bulkhead.test=reboot",
                "--vcpus",
                "2",
                "--memory",
                "128",
                "--serial",
                "stdout"
            ]
        );
    }

    #[test]
    fn qemu_command_is_microvm_with_kvm() {
        let spec = BootSpec::new(
            Path::new("/k/vmlinux"),
            Path::new("/i.cpio"),
            1,
            256,
            "panic",
        );
        let a = args(&qemu_microvm_command(&spec, true)).join(" ");
        assert!(a.contains("-M microvm,rtc=on,acpi=off -enable-kvm"), "{a}");
        assert!(a.contains("-m 256 -smp 1"), "{a}");
        assert!(a.contains("-device virtio-rng-device"), "{a}");
        assert!(a.contains("-no-reboot -device i8042"), "{a}");
        assert!(a.ends_with(
            "-append console=ttyS0 reboot=k panic=1 pci=off nomodule bulkhead.test=panic"
        ));
        let a = args(&qemu_microvm_command(&spec, false)).join(" ");
        assert!(!a.contains("virtio-rng"));
    }

    #[test]
    fn qemu_fs_args_share_memory_with_virtiofsd() {
        let spec = BootSpec::new(Path::new("/k"), Path::new("/i"), 1, 512, "x");
        let mut cmd = qemu_microvm_command(&spec, false);
        qemu_vhost_user_fs(&mut cmd, 512, Path::new("/t/vfs.sock"), "bench");
        let a = args(&cmd).join(" ");
        assert!(
            a.contains("-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem"),
            "{a}"
        );
        assert!(
            a.contains("-chardev socket,id=vfs0,path=/t/vfs.sock"),
            "{a}"
        );
        assert!(
            a.contains("-device vhost-user-fs-device,chardev=vfs0,tag=bench,queue-size=1024"),
            "{a}"
        );
    }
}
