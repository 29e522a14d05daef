//! Command-line definition and dispatch. Each command lives in its own
//! module; add new ones (run, exec, ps, ...) as variants of [`Command`].

mod gc;
mod images;
mod import;
mod pull;
mod rmi;
mod unpack;

use std::path::PathBuf;

use anyhow::Context;
use bulkhead_images::store::DEFAULT_ROOT;
use bulkhead_images::Store;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about = "VM-isolated containers")]
pub struct Cli {
    /// State directory (image store and more).
    #[arg(long, global = true, env = "BULKHEAD_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image from a registry.
    Pull(pull::Args),
    /// List stored images.
    Images(images::Args),
    /// Remove image references (blobs go at the next `image gc`).
    Rmi(rmi::Args),
    /// Image management.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Flatten an image's layers into a directory.
    Unpack(unpack::Args),
    /// Import an OCI layout directory or a `docker save` archive.
    Import(import::Args),
    /// Remove unreferenced blobs and layers.
    Gc(gc::Args),
}

/// Opens the store under `--root`.
pub fn open_store(root: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(root).with_context(|| format!("opening the store at {}", root.display()))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let store = open_store(&cli.root)?;
    match cli.command {
        Command::Pull(a) => pull::run(&store, a),
        Command::Images(a) => images::run(&store, a),
        Command::Rmi(a) => rmi::run(&store, a),
        Command::Image(ImageCommand::Unpack(a)) => unpack::run(&store, a),
        Command::Image(ImageCommand::Import(a)) => import::run(&store, a),
        Command::Image(ImageCommand::Gc(a)) => gc::run(&store, a),
    }
}

/// Human-readable byte count.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
