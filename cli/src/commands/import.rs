//! `bulkhead image import`: offline import from an OCI layout or a
//! `docker save` archive.

use std::path::PathBuf;

use anyhow::Context;
use bulkhead_images::Store;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["oci_layout", "docker_archive"])))]
pub struct Args {
    /// OCI image layout directory.
    #[arg(long)]
    pub oci_layout: Option<PathBuf>,
    /// Tarball written by `docker save`.
    #[arg(long)]
    pub docker_archive: Option<PathBuf>,
    /// Replace an image already stored under the same name (default: refuse).
    #[arg(long)]
    pub replace: bool,
    /// Name to store the image under (default: the name recorded in the source).
    pub reference: Option<String>,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let recs = if let Some(dir) = &args.oci_layout {
        bulkhead_images::import::oci_layout(store, dir, args.reference.as_deref(), args.replace)
            .with_context(|| format!("importing OCI layout {}", dir.display()))?
    } else if let Some(file) = &args.docker_archive {
        bulkhead_images::import::docker_archive(
            store,
            file,
            args.reference.as_deref(),
            args.replace,
        )
        .with_context(|| format!("importing docker archive {}", file.display()))?
    } else {
        anyhow::bail!("give --oci-layout or --docker-archive");
    };
    for rec in recs {
        println!("{}: {}", rec.name, rec.manifest_digest);
    }
    Ok(())
}
