//! The reader between a layer's decompressor and the tar reader: it counts every
//! decompressed byte against the layer's budget (headers, PAX records, GNU long names,
//! padding, file data and whatever follows the end-of-archive marker all count), and it
//! follows the tar headers to refuse, before the tar reader buffers it, a PAX extended
//! header or GNU long name/link record above [`MAX_TAR_METADATA_BYTES`].
//!
//! The header walk mirrors `tar::Archive::entries` (same `tar::Header` parsing, same PAX
//! `size` override, same end at the first all-zero block); where it could lose step (a
//! GNU sparse entry, an unparsable size) it stops walking, which only ends the metadata
//! check: the byte budget holds for every byte whatever happens.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

use crate::limits::MAX_TAR_METADATA_BYTES;

const BLOCK: u64 = 512;

/// Which bound a layer stream broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// More than this many decompressed bytes in the layer.
    LayerBytes(u64),
    /// The image's total went above this many decompressed bytes.
    ImageBytes(u64),
    /// A PAX header or GNU long name/link record of `size` bytes.
    Metadata { kind: u8, size: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LayerBytes(n) => write!(f, "more than {n} decompressed bytes"),
            Violation::ImageBytes(n) => write!(f, "image total above {n} decompressed bytes"),
            Violation::Metadata { kind, size } => write!(
                f,
                "tar {} record of {size} bytes (the limit is {MAX_TAR_METADATA_BYTES})",
                match kind {
                    b'x' => "PAX extended header",
                    b'L' => "GNU long name",
                    _ => "GNU long link",
                }
            ),
        }
    }
}

/// Shared between the reader (inside the tar reader) and the code that maps the tar
/// reader's I/O error back to the bound that caused it.
#[derive(Clone, Default)]
pub(crate) struct Watch(Rc<Cell<Option<Violation>>>);

impl Watch {
    pub(crate) fn violation(&self) -> Option<Violation> {
        self.0.get()
    }
}

/// Where the header walk is.
struct Walk {
    /// Offset of the next header block.
    next: u64,
    header: Vec<u8>,
    /// A recognised PAX `x` record being read: (its data's end offset, bytes so far).
    pax_data: Option<(u64, Vec<u8>)>,
    /// The last complete PAX record, waiting for the entry it describes.
    pending_pax: Option<Vec<u8>>,
}

/// Counting, header-following reader; see the module doc.
pub(crate) struct Guarded<R> {
    inner: R,
    read: u64,
    limit: u64,
    /// What to report when `limit` is hit.
    over: Violation,
    walk: Option<Walk>,
    watch: Watch,
}

fn refuse(watch: &Watch, v: Violation) -> io::Error {
    watch.0.set(Some(v));
    io::Error::new(io::ErrorKind::InvalidData, v.to_string())
}

impl<R: Read> Guarded<R> {
    /// Reads at most `limit` bytes of `inner`; one more is a [`Violation`] `over`.
    pub(crate) fn new(inner: R, limit: u64, over: Violation) -> (Self, Watch) {
        let watch = Watch::default();
        let g = Guarded {
            inner,
            read: 0,
            limit,
            over,
            walk: Some(Walk {
                next: 0,
                header: Vec::with_capacity(BLOCK as usize),
                pax_data: None,
                pending_pax: None,
            }),
            watch: watch.clone(),
        };
        (g, watch)
    }

    /// Bytes read so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.read
    }

    /// Reads (and counts) whatever follows the point where the tar reader stopped.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Feeds `data` (read at offset `at`) to the header walk.
    fn follow(&mut self, mut at: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some(w) = self.walk.as_mut() else {
                return Ok(());
            };
            if let Some((end, buf)) = w.pax_data.as_mut() {
                if at < *end {
                    let n = ((*end - at) as usize).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    at += n as u64;
                    data = &data[n..];
                    if at == *end {
                        w.pending_pax = w.pax_data.take().map(|(_, b)| b);
                    }
                    continue;
                }
            }
            if at < w.next {
                let n = ((w.next - at).min(data.len() as u64)) as usize;
                at += n as u64;
                data = &data[n..];
                continue;
            }
            let n = (BLOCK as usize - w.header.len()).min(data.len());
            w.header.extend_from_slice(&data[..n]);
            at += n as u64;
            data = &data[n..];
            if w.header.len() == BLOCK as usize {
                self.header_done()?;
            }
        }
        Ok(())
    }

    /// A whole header block at `walk.next` was read.
    fn header_done(&mut self) -> io::Result<()> {
        let Some(w) = self.walk.as_mut() else {
            return Ok(());
        };
        let block = std::mem::take(&mut w.header);
        if block.iter().all(|b| *b == 0) {
            // The tar reader ends here; the rest is only counted.
            self.walk = None;
            return Ok(());
        }
        let hdr = tar::Header::from_byte_slice(&block);
        let kind = hdr.entry_type();
        let recognised = hdr.as_ustar().is_some() || hdr.as_gnu().is_some();
        let is_ext = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let Ok(mut size) = hdr.entry_size() else {
            self.walk = None;
            return Ok(());
        };
        let buffered = recognised
            && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        if buffered && size > MAX_TAR_METADATA_BYTES {
            return Err(refuse(
                &self.watch,
                Violation::Metadata {
                    kind: kind.as_byte(),
                    size,
                },
            ));
        }
        if !buffered {
            // This is the entry the pending PAX record describes (tar reads its `size`).
            if let Some(pax) = w.pending_pax.take() {
                if !is_ext {
                    if let Some(s) = tar_pax_value(&pax, "size") {
                        size = s;
                    }
                }
            }
        }
        if kind.is_gnu_sparse() {
            // Extension blocks follow; the unpacker refuses sparse files anyway.
            self.walk = None;
            return Ok(());
        }
        let data_at = w.next + BLOCK;
        let Some(next) = size
            .checked_add(BLOCK - 1)
            .map(|s| s & !(BLOCK - 1))
            .and_then(|s| data_at.checked_add(s))
        else {
            self.walk = None;
            return Ok(());
        };
        if recognised && kind.is_pax_local_extensions() {
            w.pending_pax = None;
            if size == 0 {
                w.pending_pax = Some(Vec::new());
            } else {
                w.pax_data = Some((data_at + size, Vec::with_capacity(size as usize)));
            }
        }
        w.next = next;
        Ok(())
    }
}

/// The first `key` record of a PAX header, as `tar` reads it (`None` when that record
/// is not a number).
fn tar_pax_value(pax: &[u8], key: &str) -> Option<u64> {
    for ext in tar::PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key() != Ok(key) {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(v) = self.watch.violation() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, v.to_string()));
        }
        // One byte past the budget is enough to know it is broken.
        let room = self.limit.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let at = self.read;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(refuse(&self.watch, self.over));
        }
        self.follow(at, &buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// Runs the tar reader over `data` through the guard; returns the paths read and
    /// the violation, if any.
    fn run(data: &[u8], limit: u64) -> (Vec<String>, Option<Violation>, u64) {
        let (g, watch) = Guarded::new(data, limit, Violation::LayerBytes(limit));
        let mut ar = tar::Archive::new(g);
        let mut paths = Vec::new();
        let mut ok = true;
        match ar.entries() {
            Ok(entries) => {
                for e in entries {
                    match e {
                        Ok(mut e) => {
                            paths.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
                            if io::copy(&mut e, &mut io::sink()).is_err() {
                                ok = false;
                                break;
                            }
                        }
                        Err(e) => {
                            eprintln!("tar error: {e}");
                            ok = false;
                            break;
                        }
                    }
                }
            }
            Err(_) => ok = false,
        }
        let mut g = ar.into_inner();
        if ok {
            let _ = g.drain();
        }
        (paths, watch.violation(), g.consumed())
    }

    #[test]
    fn every_byte_counts_and_trailing_data_too() {
        let t = tar_with(|b| file(b, "a", b"hello"));
        let (p, v, n) = run(&t, 1 << 20);
        assert_eq!((p, v, n), (vec!["a".to_string()], None, t.len() as u64));
        // Garbage after the end-of-archive marker counts against the same budget.
        let mut trailing = t.clone();
        trailing.extend(std::iter::repeat_n(0xAB, 3 << 20));
        let (p, v, n) = run(&trailing, 1 << 20);
        assert_eq!(p, ["a"]);
        assert_eq!(v, Some(Violation::LayerBytes(1 << 20)));
        assert!(n <= (1 << 20) + 1, "{n}");
    }

    #[test]
    fn a_huge_pax_header_is_refused_before_it_is_buffered() {
        let mut b = tar::Builder::new(Vec::new());
        let big = vec![b'x'; (MAX_TAR_METADATA_BYTES + 100) as usize];
        b.append_pax_extensions([("comment", &big[..])]).unwrap();
        file(&mut b, "f", b"data");
        let t = b.into_inner().unwrap();
        let (p, v, n) = run(&t, 64 << 20);
        assert!(p.is_empty(), "{p:?}");
        assert!(
            matches!(v, Some(Violation::Metadata { kind: b'x', size }) if size > MAX_TAR_METADATA_BYTES),
            "{v:?}"
        );
        assert!(n < 64 << 10, "refused at its header, read {n}");
        // Below the metadata cap, PAX bytes count against the layer budget like any other.
        let mut b = tar::Builder::new(Vec::new());
        let big = vec![b'x'; 600 << 10];
        b.append_pax_extensions([("comment", &big[..])]).unwrap();
        file(&mut b, "f", b"data");
        let t = b.into_inner().unwrap();
        assert_eq!(run(&t, 1 << 20).1, None);
        let (_, v, _) = run(&t, 512 << 10);
        assert_eq!(v, Some(Violation::LayerBytes(512 << 10)));
    }

    #[test]
    fn a_pax_size_override_keeps_the_walk_in_step() {
        // A PAX `size` larger than the ustar field: the walk must skip the real size,
        // or the next header (a huge long name) would go unnoticed.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"1024"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("f").unwrap();
        h.set_cksum();
        let mut t = b.into_inner().unwrap();
        t.truncate(t.len() - 1024); // the end-of-archive blocks
        t.extend_from_slice(h.as_bytes());
        t.extend(std::iter::repeat_n(7, 1024));
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(MAX_TAR_METADATA_BYTES * 2);
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_cksum();
        t.extend_from_slice(long.as_bytes());
        t.extend(std::iter::repeat_n(
            b'a',
            (MAX_TAR_METADATA_BYTES * 2) as usize,
        ));
        let (p, v, _) = run(&t, 64 << 20);
        assert_eq!(p, ["f"]);
        assert!(
            matches!(v, Some(Violation::Metadata { kind: b'L', .. })),
            "{v:?}"
        );
    }

    #[test]
    fn gnu_long_names_are_counted_and_capped() {
        // A chain of long-named entries: each long name record counts.
        let name = "d/".repeat(1000) + "f";
        let t = tar_with(|b| {
            for i in 0..50 {
                file(b, &format!("{name}{i}"), b"");
            }
        });
        let (p, v, n) = run(&t, 1 << 20);
        assert_eq!((p.len(), v, n), (50, None, t.len() as u64));
        assert!(n > 50 * 2000, "long names were read: {n}");
        let (_, v, _) = run(&t, 40 * 1024);
        assert_eq!(v, Some(Violation::LayerBytes(40 * 1024)));
    }
}
