//! `bulkhead exec`: run an extra process in a running container, through its
//! supervisor's control socket; exits with the process's status.

use std::os::fd::AsFd;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use super::Ctx;
use crate::control::{self, Request, Stream};
use crate::term;

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start the process and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this shell's value (left out
    /// when it is not set here).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User: name or uid, optionally :group or :gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    pub container: String,
    /// Command and arguments.
    #[arg(required = true)]
    pub command: Vec<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<i32> {
    let containers = ctx.containers();
    let s = containers.find(&args.container)?;
    if !s.is_running() {
        bail!("container {} is not running", args.container);
    }
    let mut env = Vec::new();
    for e in &args.env {
        env.extend(super::run::env_entry(e)?);
    }
    let sock = containers.dir(&s.id).control_socket();
    let exec_id = format!("e{}", &crate::state::new_id()?[..8]);
    let rt = super::runtime()?;
    let code = rt.block_on(async {
        control::call_ok(
            &sock,
            &Request::Exec {
                exec_id: exec_id.clone(),
                args: args.command.clone(),
                env: env.clone(),
                cwd: args.workdir.clone(),
                user: args.user.clone(),
                tty: args.tty,
                stdin: args.interactive,
            },
        )
        .await?;
        if args.detach {
            println!("{exec_id}");
            return anyhow::Ok(0);
        }
        attach_and_wait(&sock, &exec_id, args.tty, args.interactive).await
    });
    rt.shutdown_background();
    code
}

/// An attached stream: its read side (with bytes that arrived with the answer first) and
/// its write side.
type Attached = (
    tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
);

async fn open(sock: &std::path::Path, exec_id: &str, stream: Stream) -> anyhow::Result<Attached> {
    let (resp, conn) = control::call(
        sock,
        &Request::Attach {
            exec_id: exec_id.to_owned(),
            stream,
        },
    )
    .await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    let early = conn.buffer().to_vec();
    let (r, w) = conn.into_inner().into_split();
    Ok((std::io::Cursor::new(early).chain(r), w))
}

async fn attach_and_wait(
    sock: &std::path::Path,
    exec_id: &str,
    tty: bool,
    interactive: bool,
) -> anyhow::Result<i32> {
    let mut outputs = Vec::new();
    let _raw = if tty && interactive {
        term::RawMode::enter()
    } else {
        None
    };
    if tty {
        let (r, w) = open(sock, exec_id, Stream::Tty).await?;
        if let Some((rows, cols)) = term::local_window_size() {
            let _ = control::call_ok(
                sock,
                &Request::Resize {
                    exec_id: exec_id.to_owned(),
                    rows,
                    cols,
                },
            )
            .await;
        }
        outputs.push(tokio::spawn(term::pump_out(
            r,
            Some(tokio::io::stdout()),
            None,
        )));
        if interactive {
            tokio::spawn(term::pump_in(w));
        } else {
            std::mem::forget(w);
        }
        let sock = sock.to_path_buf();
        let id = exec_id.to_owned();
        tokio::spawn(async move {
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = term::window_size(std::io::stdin().as_fd()) {
                    let req = Request::Resize {
                        exec_id: id.clone(),
                        rows,
                        cols,
                    };
                    let _ = control::call_ok(&sock, &req).await;
                }
            }
        });
    } else {
        let (r, _w) = open(sock, exec_id, Stream::Stdout).await?;
        outputs.push(tokio::spawn(term::pump_out(
            r,
            Some(tokio::io::stdout()),
            None,
        )));
        let (r, _w) = open(sock, exec_id, Stream::Stderr).await?;
        outputs.push(tokio::spawn(term::pump_out(
            r,
            Some(tokio::io::stderr()),
            None,
        )));
        if interactive {
            let (_r, w) = open(sock, exec_id, Stream::Stdin).await?;
            let sock = sock.to_path_buf();
            let id = exec_id.to_owned();
            tokio::spawn(async move {
                term::pump_in(w).await;
                let _ = control::call_ok(&sock, &Request::CloseStdin { exec_id: id }).await;
            });
        }
        // Ctrl-C and SIGTERM go to the process.
        for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
            let sock = sock.to_path_buf();
            let id = exec_id.to_owned();
            let mut s = signal(kind)?;
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let req = Request::Kill {
                        exec_id: id.clone(),
                        signal: kind.as_raw_value(),
                    };
                    let _ = control::call_ok(&sock, &req).await;
                }
            });
        }
    }
    let resp = control::call_ok(
        sock,
        &Request::Wait {
            exec_id: exec_id.to_owned(),
        },
    )
    .await?;
    for o in outputs {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), o).await;
    }
    let _ = tokio::io::stdout().flush().await;
    Ok(resp.exit_code.unwrap_or(255))
}
