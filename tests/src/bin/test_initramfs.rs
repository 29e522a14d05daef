//! test-initramfs: writes the standard test initramfs (static busybox + the
//! boot-marker /init) to a file, for booting it by hand.

use anyhow::{bail, Context, Result};
use bulkhead_e2e::TestInitramfs;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = &args[..] else {
        bail!("usage: test-initramfs OUTPUT.cpio");
    };
    TestInitramfs::new()
        .write_to(out.as_ref())
        .with_context(|| format!("writing {out}"))?;
    Ok(())
}
