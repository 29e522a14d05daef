//! Layer decompression: gzip, zstd or plain tar, detected by magic bytes,
//! run on its own thread so that decompression and file writing overlap.
//! The reader side hashes the uncompressed stream (the layer's diff_id),
//! which balances the work between the two threads.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::digest::{Digest, Hasher};

const CHUNK: usize = 1 << 20;

/// Wraps `r` in the decompressor its first bytes call for.
pub fn decompressor<'a, R: Read + Send + 'a>(r: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(super::gzip::GzipMembers::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

/// Chunk buffers shared by the decompressors of one unpack, so that a
/// layer reuses the pages its predecessor touched.
#[derive(Clone, Default)]
pub struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == CHUNK {
            if let Ok(mut v) = self.0.lock() {
                v.push(buf);
            }
        }
    }
}

enum Msg {
    Data(Vec<u8>),
    Done,
    Err(io::Error),
}

/// Reader side of a decompression thread.
pub struct Decompressed {
    rx: Receiver<Msg>,
    /// Consumed chunks go back to the pool for reuse (no new pages).
    pool: Pool,
    cur: Vec<u8>,
    pos: usize,
    hasher: Hasher,
    digest: Option<Digest>,
    _thread: Option<JoinHandle<()>>,
}

/// Fills `buf` from `r` as far as it goes; returns the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Decompressed {
    /// Starts decompressing the blob file at `path` on a new thread, which
    /// may run up to `ahead` MiB in front of the reader.
    pub fn spawn(path: &Path, ahead: usize, pool: Pool) -> io::Result<Decompressed> {
        let file = File::open(path)?;
        let (tx, rx) = sync_channel::<Msg>(ahead.max(1));
        let thread_pool = pool.clone();
        let thread = std::thread::Builder::new()
            .name("decompress".into())
            .spawn(move || {
                let mut r = match decompressor(file) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Msg::Err(e));
                        return;
                    }
                };
                loop {
                    let mut buf = thread_pool.take();
                    buf.resize(CHUNK, 0);
                    let filled = match fill(&mut r, &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = tx.send(Msg::Err(e));
                            return;
                        }
                    };
                    if filled == 0 {
                        let _ = tx.send(Msg::Done);
                        return;
                    }
                    buf.truncate(filled);
                    if tx.send(Msg::Data(buf)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Decompressed {
            rx,
            pool,
            cur: Vec::new(),
            pos: 0,
            hasher: Hasher::new(),
            digest: None,
            _thread: Some(thread),
        })
    }

    /// Drains the stream and returns the digest of the whole uncompressed
    /// content.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        self.digest
            .take()
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "decompressor stopped"))
    }
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            if self.digest.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    let old = std::mem::replace(&mut self.cur, d);
                    self.pool.give(old);
                    self.pos = 0;
                }
                Ok(Msg::Done) => {
                    self.digest = Some(std::mem::take(&mut self.hasher).finish());
                    return Ok(0);
                }
                Ok(Msg::Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "decompressor thread ended",
                    ))
                }
            }
        }
        let avail = &self.cur[self.pos..];
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.hasher.update(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(compressed: Vec<u8>, plain: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, compressed).unwrap();
        let mut d = Decompressed::spawn(&p, 4, Pool::default()).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
        assert_eq!(d.finish().unwrap(), Digest::of(plain));
    }

    #[test]
    fn gzip_zstd_and_plain_are_detected() {
        let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        roundtrip(gz.finish().unwrap(), &plain);
        roundtrip(zstd::encode_all(&plain[..], 3).unwrap(), &plain);
        roundtrip(plain.clone(), &plain);
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        let mut d = Decompressed::spawn(&p, 4, Pool::default()).unwrap();
        assert!(d.read_to_end(&mut Vec::new()).is_err());
    }
}
