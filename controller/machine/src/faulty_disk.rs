//! A disk that fails one write: the workload's disk served by crashlab's
//! NBD server, which fails the one write request that carries a seeded
//! record (once, with EIO or ENOSPC), whatever sector the filesystem put it
//! in (see models::io_errors for why and what is judged).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use record::layout::{HEADER_SIZE_BYTES, MAGIC, SECTOR_SIZE_BYTES};

use config::WriteError;
use nbd::{FileView, NbdHandle, NbdLimits, NbdServer, WriteFault};

/// Fails the first write whose data holds record `seq` of this run.
pub struct RecordWriteFault {
    pub seq: u64,
    pub seed: u64,
    pub errno: u32,
    pub fired: bool,
}

impl WriteFault for RecordWriteFault {
    fn check(&mut self, _offset_bytes: u64, data: &[u8]) -> Option<u32> {
        if self.fired {
            return None;
        }
        // Records start on sector boundaries of the file, and file blocks on
        // sector boundaries of the disk.
        let carries = data.chunks(SECTOR_SIZE_BYTES).any(|sector| {
            sector.len() >= HEADER_SIZE_BYTES
                && sector[..8] == MAGIC
                && sector[16..24] == self.seq.to_le_bytes()
                && sector[32..40] == self.seed.to_le_bytes()
        });
        self.fired = carries;
        carries.then_some(self.errno)
    }
}

/// The workload's disk behind the NBD server, with the fault planted.
pub struct FaultyDisk {
    server: Option<NbdServer>,
    handle: NbdHandle,
    pub socket: PathBuf,
    image: PathBuf,
    _socket_dir: tempfile::TempDir,
}

impl FaultyDisk {
    pub fn serve(image: &Path, error: WriteError, seq: u64, seed: u64) -> Result<FaultyDisk> {
        let socket_dir = crate::lifetime::temp_dir("crashlab-nbd-", None)?;
        let socket = socket_dir.path().join("nbd");
        let view = Arc::new(FileView::open(image)?);
        let limits = NbdLimits {
            overlay_max_bytes: 1 << 30,
            request_max_bytes: 32 << 20,
        };
        let (server, handle) = NbdServer::start(&socket, "disk", view, limits)?;
        handle.set_write_fault(Box::new(RecordWriteFault {
            seq,
            seed,
            errno: error.nbd_errno(),
            fired: false,
        }));
        Ok(FaultyDisk {
            server: Some(server),
            handle,
            socket,
            image: image.to_path_buf(),
            _socket_dir: socket_dir,
        })
    }

    /// Stops serving and leaves the disk as the guest left it in the image
    /// (for the check boot). Returns how many writes were failed.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        let file = File::options().write(true).open(&self.image)?;
        self.handle.write_overlay_into(&file)?;
        file.sync_all()?;
        Ok(self.handle.stats().injected_errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::layout::{encode_vec, RecordHeader};

    #[test]
    fn the_write_carrying_the_record_fails_once() {
        let record = |seq| {
            encode_vec(&RecordHeader {
                record_size_bytes: 1024,
                seq,
                slot: seq,
                seed: 9,
            })
        };
        let mut fault = RecordWriteFault {
            seq: 3,
            seed: 9,
            errno: 5,
            fired: false,
        };
        let mut block = vec![0u8; 4096];
        block[..1024].copy_from_slice(&record(2));
        assert_eq!(fault.check(0, &block), None);
        block[2048..3072].copy_from_slice(&record(3));
        assert_eq!(fault.check(0, &block), Some(5), "record 3 in the block's third KiB");
        assert_eq!(fault.check(0, &block), None, "once");
        let mut other_seed = RecordWriteFault {
            seq: 3,
            seed: 8,
            errno: 5,
            fired: false,
        };
        assert_eq!(other_seed.check(0, &block), None);
    }
}
