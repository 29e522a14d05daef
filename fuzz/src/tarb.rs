//! Tar streams from fuzz input: entries with any name bytes (`..`, absolute, very long via
//! GNU long names or PAX), any type, mode, owner and link target, with valid checksums so the
//! fuzzer gets past the header check and into the code that decides what to do with them.

use arbitrary::Arbitrary;

/// One entry as a hostile image may contain it.
#[derive(Arbitrary, Debug, Clone)]
pub struct Entry {
    pub name: Name,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u16,
    pub gid: u16,
    pub mtime: u32,
    /// Extra PAX records (key, value) before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// Names the fuzzer is likely to need, or any bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Name {
    Bytes(Vec<u8>),
    /// `../sentinel/<x>`, `/sentinel/<x>`, `a/../../sentinel`...
    Escape(u8, String),
    /// A GNU long name (type `L`) of the given bytes.
    Long(Vec<u8>, u16),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Kind {
    File(Vec<u8>),
    /// A file whose header claims `size` but whose data is cut short.
    Truncated(u32),
    Dir,
    Symlink(Name),
    Hardlink(Name),
    Char(u16, u16),
    Block(u16, u16),
    Fifo,
    /// Any type byte.
    Other(u8, Vec<u8>),
}

fn escape(sel: u8, tail: &str) -> Vec<u8> {
    let pre = [
        "../sentinel/",
        "/sentinel/",
        "a/../../sentinel/",
        "./../sentinel/",
        "link/",
        "link/sub/",
        "../",
        "/",
        "./",
        "a/b/../../../",
    ][usize::from(sel) % 10];
    format!("{pre}{tail}").into_bytes()
}

impl Name {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Name::Bytes(b) => b.clone(),
            Name::Escape(sel, tail) => escape(*sel, tail),
            Name::Long(b, rep) => b.repeat(usize::from(*rep % 64) + 1),
        }
    }
}

fn header(name: &[u8], kind: u8, size: u64, e: &Entry) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    {
        let raw = h.as_old_mut();
        let n = name.len().min(100);
        raw.name[..n].copy_from_slice(&name[..n]);
    }
    h.set_mode(e.mode & 0o7777);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(u64::from(e.mtime));
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    *h.as_bytes()
}

fn pad(out: &mut Vec<u8>) {
    let r = out.len() % 512;
    if r != 0 {
        out.resize(out.len() + 512 - r, 0);
    }
}

fn data_entry(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8], e: &Entry) {
    out.extend_from_slice(&header(name, kind, data.len() as u64, e));
    out.extend_from_slice(data);
    pad(out);
}

fn set_link(h: &mut [u8; 512], link: &[u8]) {
    let n = link.len().min(100);
    h[157..157 + n].copy_from_slice(&link[..n]);
    // Recompute the checksum over the changed header.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// Append `e` to `out`.
pub fn append(out: &mut Vec<u8>, e: &Entry) {
    let name = e.name.bytes();
    if !e.pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in e.pax.iter().take(4) {
            let rec_len = k.len() + v.len() + 3;
            let mut len = rec_len + rec_len.to_string().len();
            if len.to_string().len() != rec_len.to_string().len() {
                len += 1;
            }
            body.extend(format!("{len} {k}=").bytes());
            body.extend(v);
            body.push(b'\n');
        }
        data_entry(out, b"././@PaxHeader", b'x', &body, e);
    }
    if name.len() > 100 || matches!(e.name, Name::Long(..)) {
        let mut n = name.clone();
        n.push(0);
        data_entry(out, b"././@LongLink", b'L', &n, e);
    }
    let link_name = |l: &Name, out: &mut Vec<u8>| {
        let b = l.bytes();
        if b.len() > 100 {
            let mut n = b.clone();
            n.push(0);
            data_entry(out, b"././@LongLink", b'K', &n, e);
        }
        b
    };
    match &e.kind {
        Kind::File(d) => data_entry(out, &name, b'0', d, e),
        Kind::Truncated(size) => {
            out.extend_from_slice(&header(&name, b'0', u64::from(*size), e));
            out.extend_from_slice(&[0x41; 100]);
        }
        Kind::Dir => data_entry(out, &name, b'5', &[], e),
        Kind::Symlink(l) | Kind::Hardlink(l) => {
            let t = link_name(l, out);
            let kind = if matches!(e.kind, Kind::Symlink(_)) {
                b'2'
            } else {
                b'1'
            };
            let mut h = header(&name, kind, 0, e);
            set_link(&mut h, &t);
            out.extend_from_slice(&h);
        }
        Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
            let kind = if matches!(e.kind, Kind::Char(..)) {
                b'3'
            } else {
                b'4'
            };
            let mut h = tar::Header::from_byte_slice(&header(&name, kind, 0, e)).clone();
            let _ = h.set_device_major(u32::from(*ma));
            let _ = h.set_device_minor(u32::from(*mi));
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
        }
        Kind::Fifo => data_entry(out, &name, b'6', &[], e),
        Kind::Other(t, d) => data_entry(out, &name, *t, d, e),
    }
}

/// A whole archive (with the two zero blocks at the end unless `unterminated`).
pub fn build(entries: &[Entry], unterminated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().take(64) {
        append(&mut out, e);
    }
    if !unterminated {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}
