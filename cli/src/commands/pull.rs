//! `bulkhead pull`: fetch an image with per-layer progress.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bulkhead_images::pull::{Auth, Progress, PullOptions};
use bulkhead_images::{Digest, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use plain HTTP (insecure registries only).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user name (basic auth, or for a token server).
    #[arg(long, env = "BULKHEAD_REGISTRY_USER")]
    pub username: Option<String>,
    /// Registry password.
    #[arg(long, env = "BULKHEAD_REGISTRY_PASSWORD", requires = "username")]
    pub password: Option<String>,
    /// Bearer token for the registry.
    #[arg(long, env = "BULKHEAD_REGISTRY_TOKEN", conflicts_with = "username")]
    pub token: Option<String>,
    /// Layers fetched at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    pub reference: String,
}

/// Bars on a terminal, one line per layer otherwise.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    tty: bool,
}

fn short(d: &Digest) -> &str {
    d.hex().get(..12).unwrap_or(d.hex())
}

impl Progress for Bars {
    fn layer_start(&self, d: &Digest, size: u64, cached: bool) {
        if cached {
            let _ = self.multi.println(format!("{}: already present", short(d)));
            return;
        }
        if !self.tty {
            println!("{}: fetching {}", short(d), super::human(size));
            return;
        }
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short(d).to_string());
        if let Ok(mut m) = self.bars.lock() {
            m.insert(d.clone(), bar);
        }
    }

    fn layer_bytes(&self, d: &Digest, fetched: u64) {
        if let Ok(m) = self.bars.lock() {
            if let Some(b) = m.get(d) {
                b.set_position(fetched);
            }
        }
    }

    fn layer_done(&self, d: &Digest) {
        if let Ok(mut m) = self.bars.lock() {
            if let Some(b) = m.remove(d) {
                b.finish();
            } else if !self.tty {
                println!("{}: done", short(d));
            }
        }
    }
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let auth = match (args.username, args.password, args.token) {
        (_, _, Some(t)) => Auth::Bearer(t),
        (Some(u), p, None) => Auth::Basic(u, p.unwrap_or_default()),
        _ => Auth::Anonymous,
    };
    let tty = std::io::stderr().is_terminal();
    let progress = Arc::new(Bars {
        multi: MultiProgress::new(),
        bars: Mutex::new(HashMap::new()),
        tty,
    });
    let opts = PullOptions {
        plain_http: args.plain_http,
        auth,
        max_concurrent: args.jobs,
        progress: Some(progress),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let rec = rt
        .block_on(bulkhead_images::pull(store, &args.reference, &opts))
        .with_context(|| format!("pulling {}", args.reference))?;
    println!("{}: {}", rec.name, rec.manifest_digest);
    Ok(())
}
