//! Acks placed in the block-write log: each ack is also one O_DIRECT sector
//! write into a reserved area of the test disk. `pwrite` with O_DIRECT
//! returns only after the device completed the write, so the ack's entry in
//! the host's log comes after every write the durability call waited for.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use record::layout::ack::{self, AckRecord, ACK_SIZE_BYTES};

use crate::mapped_file::SyscallError;

/// O_DIRECT needs a buffer aligned to the logical block size; a page is
/// always enough.
const ALIGN_BYTES: usize = 4096;

pub struct AckLog {
    device: File,
    area_offset_bytes: u64,
    buffer: Box<AlignedSector>,
}

#[repr(C, align(4096))]
struct AlignedSector([u8; ALIGN_BYTES]);

impl AckLog {
    pub fn open(device_path: &str, area_offset_bytes: u64) -> Result<AckLog, SyscallError> {
        let device = File::options()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(device_path)
            .map_err(|e| SyscallError {
                op: "open-ack-device",
                errno: e.raw_os_error().unwrap_or(5),
            })?;
        Ok(AckLog {
            device,
            area_offset_bytes,
            buffer: Box::new(AlignedSector([0; ALIGN_BYTES])),
        })
    }

    pub fn write(&mut self, record: &AckRecord) -> Result<(), SyscallError> {
        let bytes = ack::encode(record);
        self.buffer.0[..ACK_SIZE_BYTES].copy_from_slice(&bytes);
        let offset = self.area_offset_bytes + ack::sector_offset_bytes(record.ack_index);
        self.device
            .write_all_at(&self.buffer.0[..ACK_SIZE_BYTES], offset)
            .map_err(|e| SyscallError {
                op: "ack-write",
                errno: e.raw_os_error().unwrap_or(5),
            })
    }
}
