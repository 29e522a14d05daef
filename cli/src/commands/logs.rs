//! `bulkhead logs [-f]`: what a container printed (stdout and stderr as they arrived).

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::Context;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep printing new output until the container ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub container: String,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let containers = ctx.containers();
    let state = containers.find(&args.container)?;
    let dir = containers.dir(&state.id);
    let path = dir.log_file();
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut copied = false;
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.seek(SeekFrom::Start(pos))?;
            loop {
                let n = f.read(&mut buf).context("reading the log")?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                pos += n as u64;
                copied = true;
            }
            out.flush()?;
        }
        if !args.follow {
            return Ok(());
        }
        // After the container ended, one more read catches the last bytes.
        let running = dir.read().map(|s| s.is_running()).unwrap_or(false);
        if !running && !copied {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
