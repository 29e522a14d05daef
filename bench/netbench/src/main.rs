//! `netbench`: the probe of `bench/net.sh`. Standard library only, so it builds as one
//! static binary that runs in any container image and in a bare test initramfs.
//!
//! - `netbench serve PORT`: accepts connections; a connection that starts with `S` is a
//!   stream (read and discard until the client shuts down its side, then answer the byte
//!   count as 8 bytes), one that starts with `R` is ping-pong (echo every byte).
//! - `netbench stream ADDR SECONDS`: sends for SECONDS, prints `stream_mbit_s <value>`.
//! - `netbench rr ADDR COUNT`: COUNT one-byte round trips, prints `rr_median_us <value>`
//!   and `rr_p99_us <value>`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CHUNK: usize = 128 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") => arg(&args, 2).and_then(|port| serve(&port)),
        Some("stream") => arg(&args, 2).and_then(|a| stream(&a, number(&args, 3)?)),
        Some("rr") => arg(&args, 2).and_then(|a| rr(&a, number(&args, 3)?)),
        _ => Err("usage: netbench serve PORT | stream ADDR SECONDS | rr ADDR COUNT".into()),
    };
    if let Err(e) = result {
        eprintln!("netbench: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize) -> Result<String, String> {
    args.get(i)
        .cloned()
        .ok_or_else(|| format!("argument {i} missing"))
}

fn number(args: &[String], i: usize) -> Result<u64, String> {
    let a = arg(args, i)?;
    a.parse().map_err(|_| format!("{a:?} is not a number"))
}

fn serve(port: &str) -> Result<(), String> {
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).map_err(|e| e.to_string())?;
    eprintln!("netbench: listening on {port}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = handle(conn);
        });
    }
    Ok(())
}

fn handle(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut kind = [0u8; 1];
    conn.read_exact(&mut kind)?;
    let mut buf = vec![0u8; CHUNK];
    match kind[0] {
        b'S' => {
            let mut total: u64 = 0;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            conn.write_all(&total.to_le_bytes())
        }
        b'R' => loop {
            let n = conn.read(&mut buf[..1])?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..1])?;
        },
        _ => Ok(()),
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(addr) {
            Ok(c) => {
                c.set_nodelay(true).map_err(|e| e.to_string())?;
                return Ok(c);
            }
            Err(e) if Instant::now() > deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn stream(addr: &str, seconds: u64) -> Result<(), String> {
    let mut conn = connect(addr)?;
    let buf = vec![0x5au8; CHUNK];
    conn.write_all(b"S").map_err(|e| e.to_string())?;
    let start = Instant::now();
    let limit = Duration::from_secs(seconds);
    while start.elapsed() < limit {
        conn.write_all(&buf).map_err(|e| e.to_string())?;
    }
    conn.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut total = [0u8; 8];
    conn.read_exact(&mut total).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed().as_secs_f64();
    let bits = u64::from_le_bytes(total) as f64 * 8.0;
    println!("stream_mbit_s {:.1}", bits / elapsed / 1e6);
    Ok(())
}

fn rr(addr: &str, count: u64) -> Result<(), String> {
    let mut conn = connect(addr)?;
    conn.write_all(b"R").map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(count as usize);
    let mut byte = [0u8; 1];
    for _ in 0..count.max(1) {
        let t = Instant::now();
        conn.write_all(b"x").map_err(|e| e.to_string())?;
        conn.read_exact(&mut byte).map_err(|e| e.to_string())?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("rr_median_us {}", at(0.5));
    println!("rr_p99_us {}", at(0.99));
    Ok(())
}
