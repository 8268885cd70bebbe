//! Injected write errors (fsyncgate for mappings). The workload's disk is
//! served by crashlab's NBD server, which fails the one write request that
//! carries a seeded record (once, with EIO or ENOSPC), whatever sector the
//! filesystem put it in: copy-on-write and log-structured filesystems move
//! data, so a fault planted at fixed sectors before boot (QEMU's
//! blkdebug) would miss them. The workload goes on after a failed sync
//! (`io_errors`), reporting what follows; the rules are the verifier's
//! (`no-ack-after-failed-sync`) and [`error_reported`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use record::layout::{HEADER_SIZE_BYTES, MAGIC, SECTOR_SIZE_BYTES};
use record::{Event, ProtocolLog};
use serde::Serialize;

use crate::config::WriteError;
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

/// What a trial with an injected write error showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IoErrorFacts {
    pub error: String,
    pub failing_record: u64,
    /// Writes the disk failed (0: the record was never written before the
    /// crash or the end).
    pub injected: u64,
    /// Every call that reported an error to the application, in order:
    /// "msync EIO", "fsync EIO".
    pub reported_by: Vec<String>,
    /// What the mapping showed for the failed batch's records afterwards.
    pub readback: Vec<String>,
    /// Records acked after the first failed call.
    pub acked_after_error: u64,
}

pub fn facts(error: WriteError, failing_record: u64, injected: u64, protocol: &ProtocolLog) -> IoErrorFacts {
    let mut facts = IoErrorFacts {
        error: crate::conformance::errno_name(error.nbd_errno() as i32),
        failing_record,
        injected,
        ..IoErrorFacts::default()
    };
    for event in &protocol.events {
        match event {
            Event::Msync { errno, .. } if *errno != 0 => facts
                .reported_by
                .push(format!("msync {}", crate::conformance::errno_name(*errno))),
            Event::Fsync { errno } if *errno != 0 => facts
                .reported_by
                .push(format!("fsync {}", crate::conformance::errno_name(*errno))),
            Event::Readback { seq, what } => facts.readback.push(format!("record {seq}: {what}")),
            Event::Ack { .. } if !facts.reported_by.is_empty() => facts.acked_after_error += 1,
            _ => {}
        }
    }
    facts
}

/// The rule that needs the host's knowledge: a write the disk failed must
/// reach the application, through msync or the fsync after it, at least
/// once.
pub fn error_reported(facts: &IoErrorFacts) -> Option<verifier::Finding> {
    (facts.injected > 0 && facts.reported_by.is_empty()).then(|| verifier::Finding {
        rule: verifier::Rule::WriteErrorReported,
        slot: None,
        expected_seq: Some(facts.failing_record),
        found_seq: None,
        reason: format!(
            "the disk failed the write of record {} with {}, and no msync or fsync reported an error",
            facts.failing_record, facts.error
        ),
        hex_excerpt: None,
        expected_hex: None,
        covered_by: None,
    })
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

    #[test]
    fn errors_reported_and_acks_after_them_are_counted() {
        let protocol = record::protocol::parse_log(
            "READY 4\nBEGIN 0 0\nMSYNC 0 0 4096 MS_SYNC 5\nFSYNC 0\nREADBACK 0 new\nBEGIN 1 1\nMSYNC 0 4096 4096 MS_SYNC 0\nACK 1 1\n",
        )
        .unwrap();
        let f = facts(WriteError::Eio, 0, 1, &protocol);
        assert_eq!(f.reported_by, vec!["msync EIO"]);
        assert_eq!(f.readback, vec!["record 0: new"]);
        assert_eq!(f.acked_after_error, 1);
        assert!(error_reported(&f).is_none());
        let silent = facts(
            WriteError::Eio,
            0,
            1,
            &record::protocol::parse_log("READY 4\n").unwrap(),
        );
        assert_eq!(
            error_reported(&silent).unwrap().rule,
            verifier::Rule::WriteErrorReported
        );
    }
}
