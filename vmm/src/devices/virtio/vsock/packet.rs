//! The virtio-vsock packet header, and moving packets out of guest tx chains and into guest rx
//! chains. All guest memory access goes through virtio-queue's checked `Reader`/`Writer`.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest payload we accept from the guest or put in one rx buffer.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The only socket type we support.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset (refused or aborted).
pub const OP_RST: u16 = 3;
/// One or both directions shut down (flags below).
pub const OP_SHUTDOWN: u16 = 4;
/// Stream data.
pub const OP_RW: u16 = 5;
/// Unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Ask the peer for its credit information.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decode the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Header {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encode to the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a descriptor chain could not be used as a vsock packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A descriptor points outside guest memory or the chain is malformed.
    #[error("descriptor chain is not valid in guest memory")]
    Memory(#[source] virtio_queue::Error),
    /// The readable part of the chain is shorter than a header.
    #[error("tx chain has {0} readable bytes, a header needs {HDR_SIZE}")]
    ShortHeader(usize),
    /// The header announces a payload larger than we accept.
    #[error("payload length {0} exceeds the {MAX_PAYLOAD} byte limit")]
    PayloadTooLarge(u32),
    /// The header announces more payload than the chain holds.
    #[error("payload length {len} exceeds the {avail} bytes left in the chain")]
    PayloadPastChain { len: u32, avail: usize },
    /// The writable part of an rx chain cannot hold a header.
    #[error("rx chain has {0} writable bytes, a header needs {HDR_SIZE}")]
    ShortRxBuffer(usize),
    /// Copying to or from guest memory failed.
    #[error("guest memory access failed")]
    Io(#[source] std::io::Error),
}

/// A packet the guest sent, copied out of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// A tx chain that could not be read. `hdr` is set when the header itself was readable, so the
/// caller can answer with a reset.
#[derive(Debug)]
pub struct TxError {
    pub error: PacketError,
    pub hdr: Option<Header>,
}

/// Copy a guest tx packet (header and payload) out of a descriptor chain.
pub fn read_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxPacket, TxError> {
    let fail = |error, hdr| TxError { error, hdr };
    let mut reader: Reader<'_> =
        Reader::new(mem, chain).map_err(|e| fail(PacketError::Memory(e), None))?;
    let avail = reader.available_bytes();
    if avail < HDR_SIZE {
        return Err(fail(PacketError::ShortHeader(avail), None));
    }
    let mut raw = [0u8; HDR_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|e| fail(PacketError::Io(e), None))?;
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(fail(PacketError::PayloadTooLarge(hdr.len), Some(hdr)));
    }
    let left = reader.available_bytes();
    if len > left {
        return Err(fail(
            PacketError::PayloadPastChain {
                len: hdr.len,
                avail: left,
            },
            Some(hdr),
        ));
    }
    let mut data = vec![0u8; len];
    reader
        .read_exact(&mut data)
        .map_err(|e| fail(PacketError::Io(e), Some(hdr)))?;
    Ok(TxPacket { hdr, data })
}

/// The writable part of a guest rx chain, ready to take one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Check that the chain is in guest memory and can hold at least a header.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let writer = Writer::new(mem, chain).map_err(PacketError::Memory)?;
        let avail = writer.available_bytes();
        if avail < HDR_SIZE {
            return Err(PacketError::ShortRxBuffer(avail));
        }
        Ok(RxBuffer { writer })
    }

    /// How many payload bytes fit after the header (capped at [`MAX_PAYLOAD`]).
    pub fn payload_capacity(&self) -> usize {
        self.writer
            .available_bytes()
            .saturating_sub(HDR_SIZE)
            .min(MAX_PAYLOAD)
    }

    /// Write the header and payload; `hdr.len` is set to the payload length. Returns the number
    /// of bytes written (the used length).
    pub fn write_packet(&mut self, hdr: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        if payload.len() > self.payload_capacity() {
            return Err(PacketError::PayloadTooLarge(
                u32::try_from(payload.len()).unwrap_or(u32::MAX),
            ));
        }
        let mut hdr = *hdr;
        // Bounded by MAX_PAYLOAD above.
        hdr.len = payload.len() as u32;
        self.writer
            .write_all(&hdr.to_bytes())
            .map_err(PacketError::Io)?;
        self.writer.write_all(payload).map_err(PacketError::Io)?;
        Ok((HDR_SIZE + payload.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_wire_format() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 17,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x10000,
            fwd_cnt: 0xdead_beef,
        };
        let b = hdr.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &1024u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), hdr);
    }
}
