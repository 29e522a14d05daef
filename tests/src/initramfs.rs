//! The test initramfs: a static busybox, applet symlinks and an `/init`
//! script that prints boot markers and then does what the kernel command
//! line parameter `bulkhead.test=` asks (reboot, poweroff, panic, sleep).

use std::path::{Path, PathBuf};

use crate::cpio::{CpioBuilder, CpioError};

/// Line the init prints as soon as /proc, /sys and /dev are mounted.
pub const INIT_READY_MARKER: &str = "BULKHEAD-INIT-READY";

/// Where Debian's busybox-static puts the static binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Busybox applets the init script (and tests using `bulkhead.test=sh:`) use.
pub const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "cat", "echo", "nproc", "od", "tr", "reboot", "poweroff", "sleep",
    "grep", "head", "dd", "mkdir", "ls", "uname", "dmesg", "sed", "test", "[", "true", "false",
    "sync", "free", "ps",
];

/// The `/init` script. Actions, from `bulkhead.test=` on the kernel command
/// line: `reboot` (default), `poweroff`, `panic` (sysrq crash), `sleep`
/// (wait for the host to kill the VM), `sh:<cmd>` (run a shell command with
/// `_` standing for a space, then reboot).
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo BULKHEAD-INIT-READY
echo "nproc=$(nproc)"
hw=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
echo "hwrng=${hw:-unavailable}"
action=reboot
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        bulkhead.test=*) action="${arg#bulkhead.test=}" ;;
    esac
done
echo "bulkhead.test=$action"
case "$action" in
    reboot) reboot -f ;;
    poweroff) poweroff -f ;;
    panic) echo 1 2>/dev/null > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger ;;
    sleep) while :; do sleep 3600; done ;;
    sh:*) cmd=$(echo "${action#sh:}" | tr _ ' '); sh -c "$cmd"; echo "bulkhead.exit=$?"; reboot -f ;;
    *) echo "unknown bulkhead.test action: $action"; reboot -f ;;
esac
echo "BULKHEAD-INIT-FELL-THROUGH"
sleep 5
reboot -f
"#;

/// Errors from building the test initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The busybox binary could not be read.
    #[error("cannot read busybox at {path}")]
    Busybox {
        /// Path that was tried.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be added.
    #[error("cannot build the archive")]
    Cpio(#[from] CpioError),
    /// Writing the archive failed.
    #[error("cannot write {path}")]
    Write {
        /// Output path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Builder for the test initramfs.
#[derive(Debug, Clone)]
pub struct TestInitramfs {
    busybox: PathBuf,
    init: String,
    extra_files: Vec<(String, u32, Vec<u8>)>,
}

impl Default for TestInitramfs {
    fn default() -> Self {
        Self {
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            init: INIT_SCRIPT.to_string(),
            extra_files: Vec::new(),
        }
    }
}

impl TestInitramfs {
    /// The standard image: `/bin/busybox` from busybox-static and [`INIT_SCRIPT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes busybox from another path (must be statically linked).
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = path.into();
        self
    }

    /// Replaces the `/init` script.
    pub fn init_script(mut self, script: impl Into<String>) -> Self {
        self.init = script.into();
        self
    }

    /// Adds a file to the image.
    pub fn file(mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.extra_files.push((path.to_string(), mode, data.into()));
        self
    }

    /// Builds the newc archive in memory.
    pub fn build(&self) -> Result<Vec<u8>, InitramfsError> {
        let busybox = std::fs::read(&self.busybox).map_err(|source| InitramfsError::Busybox {
            path: self.busybox.clone(),
            source,
        })?;
        let mut b = CpioBuilder::new();
        for dir in [
            "/bin", "/sbin", "/etc", "/proc", "/sys", "/tmp", "/root", "/run", "/mnt",
        ] {
            b.dir(dir, 0o755)?;
        }
        // The kernel opens /dev/console for init's stdio before init can
        // mount devtmpfs, so the node must be in the archive.
        b.char_device("/dev/console", 0o600, 5, 1)?;
        b.char_device("/dev/null", 0o666, 1, 3)?;
        b.file("/bin/busybox", 0o755, &busybox)?;
        for applet in APPLETS {
            b.symlink(&format!("/bin/{applet}"), "busybox")?;
        }
        b.file("/init", 0o755, self.init.as_bytes())?;
        for (path, mode, data) in &self.extra_files {
            b.file(path, *mode, data)?;
        }
        Ok(b.finish())
    }

    /// Builds the archive and writes it to `path`.
    pub fn write_to(&self, path: &Path) -> Result<(), InitramfsError> {
        let data = self.build()?;
        std::fs::write(path, data).map_err(|source| InitramfsError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn missing_busybox_is_a_typed_error() {
        let err = TestInitramfs::new()
            .busybox("/nonexistent/busybox")
            .build()
            .unwrap_err();
        assert!(matches!(err, InitramfsError::Busybox { .. }));
    }

    #[test]
    fn init_script_is_valid_shell_and_prints_the_marker_first() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        let first_echo = INIT_SCRIPT.lines().find(|l| l.starts_with("echo")).unwrap();
        assert_eq!(first_echo, format!("echo {INIT_READY_MARKER}"));
        let out = Command::new("sh")
            .args(["-n", "-c", INIT_SCRIPT])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Unpacks the image with GNU cpio and runs its busybox applets.
    #[test]
    fn image_unpacks_with_working_busybox() {
        if !Path::new(DEFAULT_BUSYBOX).exists()
            || Command::new("cpio").arg("--version").output().is_err()
        {
            crate::skip(format!("needs {DEFAULT_BUSYBOX} and cpio"));
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("bulkhead-initramfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("test.cpio");
        TestInitramfs::new()
            .file("/etc/hello", 0o644, "hi\n")
            .write_to(&image)
            .unwrap();
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -i --quiet --no-absolute-filenames --nonmatching 'dev/*' < {}",
                root.display(),
                image.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hello")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("init")).unwrap(),
            INIT_SCRIPT
        );
        let out = Command::new(root.join("bin/od"))
            .args(["-An", "-tx1"])
            .arg(root.join("etc/hello"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "68 69 0a");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
