//! Multi-member gzip reader that skips the CRC-32 of each member: a layer's
//! compressed bytes are checked against its sha256 digest when pulled and
//! its uncompressed bytes against the diff_id when unpacked, so the CRC
//! adds nothing but ~10% of the decompression time. Headers (with their
//! optional fields) and the ISIZE trailer are still parsed and checked.

use std::io::{self, BufRead, Read};

use flate2::bufread::DeflateDecoder;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_array<const N: usize>(r: &mut impl BufRead) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn skip_cstring(r: &mut impl BufRead) -> io::Result<()> {
    let mut sink = Vec::new();
    // Names and comments are short; cap them so a hostile header cannot
    // make us buffer the whole blob.
    let n = r.take(64 * 1024).read_until(0, &mut sink)?;
    if n == 0 || sink.last() != Some(&0) {
        return Err(bad("gzip header string not terminated"));
    }
    Ok(())
}

/// Parses one member header; the reader is left at the deflate data.
fn read_header(r: &mut impl BufRead) -> io::Result<()> {
    let h: [u8; 10] = read_array(r)?;
    if h[0] != 0x1f || h[1] != 0x8b {
        return Err(bad("not a gzip member"));
    }
    if h[2] != 8 {
        return Err(bad("gzip member is not deflate"));
    }
    let flags = h[3];
    if flags & FEXTRA != 0 {
        let len = u16::from_le_bytes(read_array(r)?);
        io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
    }
    if flags & FNAME != 0 {
        skip_cstring(r)?;
    }
    if flags & FCOMMENT != 0 {
        skip_cstring(r)?;
    }
    if flags & FHCRC != 0 {
        let _: [u8; 2] = read_array(r)?;
    }
    Ok(())
}

enum State<R> {
    /// Between members (or at the start): next bytes are a header or EOF.
    Header(R),
    Body(DeflateDecoder<R>, u32),
    Done,
}

/// Reads the concatenated members of a gzip stream.
pub struct GzipMembers<R> {
    state: State<R>,
}

impl<R: BufRead> GzipMembers<R> {
    pub fn new(r: R) -> Self {
        GzipMembers {
            state: State::Header(r),
        }
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(0),
                State::Header(mut r) => {
                    if r.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    read_header(&mut r)?;
                    self.state = State::Body(DeflateDecoder::new(r), 0);
                }
                State::Body(mut d, size) => {
                    let n = d.read(buf)?;
                    if n > 0 {
                        // ISIZE is the length modulo 2^32.
                        self.state = State::Body(d, size.wrapping_add(n as u32));
                        return Ok(n);
                    }
                    let mut r = d.into_inner();
                    let t: [u8; 8] = read_array(&mut r).map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            bad("gzip member truncated before its trailer")
                        } else {
                            e
                        }
                    })?;
                    let isize = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    if isize != size {
                        return Err(bad("gzip member length does not match its trailer"));
                    }
                    self.state = State::Header(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8], name: bool) -> Vec<u8> {
        let mut b = flate2::GzBuilder::new();
        if name {
            b = b.filename("layer.tar").comment("c").extra(vec![1, 2, 3]);
        }
        let mut e = b.write(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipMembers::new(data).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_and_optional_header_fields() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut two = gz(&a, true);
        two.extend(gz(b"second member", false));
        let mut want = a.clone();
        want.extend_from_slice(b"second member");
        assert_eq!(decode(&two).unwrap(), want);
        assert_eq!(decode(&gz(b"", false)).unwrap(), b"");
        assert_eq!(decode(b"").unwrap(), b"");
    }

    #[test]
    fn truncation_bad_trailer_and_garbage_are_errors() {
        let z = gz(b"hello world, hello world", false);
        assert!(decode(&z[..z.len() - 3]).is_err());
        assert!(decode(&z[..z.len() - 12]).is_err());
        let mut wrong = z.clone();
        let n = wrong.len();
        wrong[n - 4] ^= 1; // ISIZE
        assert!(decode(&wrong).is_err());
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decode(&trailing).is_err());
        let mut bad_method = z;
        bad_method[2] = 7;
        assert!(decode(&bad_method).is_err());
    }

    #[test]
    fn crc_is_not_what_protects_the_data() {
        // A wrong CRC alone is accepted: the diff_id check covers content.
        let mut z = gz(b"payload", false);
        let n = z.len();
        z[n - 8] ^= 0xff;
        assert_eq!(decode(&z).unwrap(), b"payload");
    }
}
