//! `crashlab-workload`: runs inside the guest, started by /init.
//!
//! Usage: `crashlab-workload DATA_PATH CHANNEL_PATH [CMDLINE_PATH]`
//!
//! Reads its parameters from the kernel command line (`/proc/cmdline` unless
//! a path is given), creates and durably sizes `DATA_PATH`, maps it
//! MAP_SHARED and writes records, printing the protocol of
//! `record::protocol` on `CHANNEL_PATH`.
//!
//! Invariants:
//! - a record is acknowledged only after its durability call returned 0
//!   (unless a planted bug is on: they exist to measure the checks, see
//!   `record::PlantedBug`);
//! - a failed syscall is reported as `ERR op errno` and ends the run: nothing
//!   after it is acknowledged;
//! - nothing depends on the wall clock.

mod ack_log;
mod mapped_file;

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use record::layout::{self, RecordHeader};
use record::{DurabilityMode, Event, PlantedBug, WorkloadParams};

use ack_log::AckLog;
use mapped_file::{MappedFile, SyscallError};
use record::layout::ack::AckRecord;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args.len() > 4 {
        eprintln!("usage: crashlab-workload DATA_PATH CHANNEL_PATH [CMDLINE_PATH]");
        return ExitCode::from(2);
    }
    let cmdline_path = args.get(3).map(String::as_str).unwrap_or("/proc/cmdline");
    let params = match std::fs::read_to_string(cmdline_path)
        .map_err(|e| format!("cannot read {cmdline_path}: {e}"))
        .and_then(|text| WorkloadParams::from_kernel_cmdline(&text).map_err(|e| e.to_string()))
    {
        Ok(params) => params,
        Err(msg) => {
            eprintln!("crashlab-workload: {msg}");
            return ExitCode::from(2);
        }
    };
    let mut channel = match File::options().write(true).open(&args[2]) {
        Ok(f) => Channel(f),
        Err(e) => {
            eprintln!("crashlab-workload: cannot open channel {}: {e}", args[2]);
            return ExitCode::from(2);
        }
    };
    match run(&params, &args[1], &mut channel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            channel.emit(&Event::Error {
                op: err.op.to_string(),
                errno: err.errno,
            });
            eprintln!("crashlab-workload: {err}");
            ExitCode::from(1)
        }
    }
}

/// The host's view of the workload. A line is one `write` call so that lines
/// from one process never interleave.
struct Channel(File);

impl Channel {
    fn emit(&mut self, event: &Event) {
        let line = format!("{event}\n");
        // If the channel is gone the host cannot hear us anyway; keep going so
        // the disk still receives the workload's writes.
        let _ = self.0.write_all(line.as_bytes());
    }
}

fn run(params: &WorkloadParams, data_path: &str, channel: &mut Channel) -> Result<(), SyscallError> {
    let mut file = MappedFile::create_durably(data_path, params.file_size_bytes)?;
    let mut ack_log = match params.ack_area_offset_bytes {
        Some(offset) => Some(AckLog::open(record::params::ACK_DEVICE, offset)?),
        None => None,
    };
    if let Some(log) = ack_log.as_mut() {
        let marker_index = record::layout::ack::READY_MARKER_INDEX;
        log.write(&AckRecord {
            ack_index: marker_index,
            seq: 0,
            slot: params.slots(),
            seed: params.seed,
        })?;
    }
    channel.emit(&Event::Ready { slots: params.slots() });

    let record_size = params.record_size_bytes as usize;
    let batch = params.mode.batch_records() as usize;
    let mut pending: Vec<(u64, u64)> = Vec::with_capacity(batch);
    let mut acks = 0u64;
    let mut sync_calls = 0u64;
    for seq in 0..params.records {
        let slot = seq % params.slots();
        channel.emit(&Event::Begin { seq, slot });
        let header = RecordHeader {
            record_size_bytes: params.record_size_bytes,
            seq,
            slot,
            seed: params.seed,
        };
        let bytes = file.record_mut(slot, record_size);
        layout::encode(&header, bytes);
        // Paired assertion: the verifier checks the same thing after the crash.
        assert_eq!(layout::decode(bytes), Ok(header), "record {seq} did not read back");
        pending.push((seq, slot));

        let batch_full = pending.len() == batch || seq + 1 == params.records;
        if !batch_full {
            continue;
        }
        let call = match params.planted_bug {
            Some(bug) if bug.hits(sync_calls) => match bug {
                PlantedBug::AckBeforeSync => SyncCall::AfterAck,
                PlantedBug::SkipSync { .. } => SyncCall::Skipped,
                PlantedBug::SyncWrongRange => SyncCall::PageBefore,
                PlantedBug::AsyncInsteadOfSync { .. } => SyncCall::AsyncOnly,
            },
            _ => SyncCall::AsPromised,
        };
        sync_calls += 1;
        if call == SyncCall::AfterAck {
            acknowledge(&pending, &mut acks, params, &mut ack_log, channel)?;
        }
        sync_records(&mut file, params.mode, &pending, record_size, call)?;
        if call != SyncCall::AfterAck {
            acknowledge(&pending, &mut acks, params, &mut ack_log, channel)?;
        }
        pending.clear();
    }
    channel.emit(&Event::Done {
        records: params.records,
    });
    Ok(())
}

/// Acks `pending` (in the block log first, when capturing, then on the
/// channel); stops for good at the crash-point hook.
fn acknowledge(
    pending: &[(u64, u64)],
    acks: &mut u64,
    params: &WorkloadParams,
    ack_log: &mut Option<AckLog>,
    channel: &mut Channel,
) -> Result<(), SyscallError> {
    for &(seq, slot) in pending {
        if let Some(log) = ack_log {
            log.write(&AckRecord {
                ack_index: *acks,
                seq,
                slot,
                seed: params.seed,
            })?;
        }
        channel.emit(&Event::Ack { seq, slot });
        *acks += 1;
        if params.hold_after_acks == Some(*acks) {
            channel.emit(&Event::Hold { acks: *acks });
            // The host kills the VM now. Waiting here rather than exiting keeps
            // every later step of the workload from happening.
            loop {
                nix::unistd::pause();
            }
        }
    }
    Ok(())
}

/// How one durability call is made: as the mode promises, or broken by a
/// planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncCall {
    AsPromised,
    /// As promised, but after the ack (`ack-before-sync`).
    AfterAck,
    /// Not at all (`skip-sync`).
    Skipped,
    /// A bare `MS_ASYNC` over the range (`async-instead-of-sync`).
    AsyncOnly,
    /// As promised, over the page before the range (`sync-wrong-range`).
    PageBefore,
}

/// Makes the records in `pending` durable the way `mode` says (unless a
/// planted bug breaks the call).
fn sync_records(
    file: &mut MappedFile,
    mode: DurabilityMode,
    pending: &[(u64, u64)],
    record_size: usize,
    call: SyncCall,
) -> Result<(), SyscallError> {
    if call == SyncCall::Skipped {
        return Ok(());
    }
    for (first_slot, count) in contiguous_runs(pending) {
        let mut offset = first_slot as usize * record_size;
        let mut len = count * record_size;
        if call == SyncCall::PageBefore {
            let page = file.page_size_bytes();
            let record_page = offset - offset % page;
            offset = match record_page.checked_sub(page) {
                Some(before) => before,
                None => file.size_bytes().saturating_sub(page), // wraps to the last page
            };
            len = len.min(file.size_bytes() - offset);
        }
        match (mode, call) {
            (_, SyncCall::AsyncOnly) => file.msync(offset, len, false)?,
            (DurabilityMode::MsSync | DurabilityMode::Batch(_), _) => file.msync(offset, len, true)?,
            (DurabilityMode::MsAsync | DurabilityMode::MsAsyncFsync | DurabilityMode::MsAsyncFdatasync, _) => {
                file.msync(offset, len, false)?
            }
            (DurabilityMode::None, _) => {}
        }
    }
    match (mode, call) {
        (_, SyncCall::AsyncOnly) => Ok(()),
        (DurabilityMode::MsAsyncFsync, _) => file.fsync(),
        (DurabilityMode::MsAsyncFdatasync, _) => file.fdatasync(),
        _ => Ok(()),
    }
}

/// Groups slots that follow each other into (first slot, count) runs: a batch
/// that wraps around the end of the file needs two msync ranges.
fn contiguous_runs(pending: &[(u64, u64)]) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &(_, slot) in pending {
        match runs.last_mut() {
            Some((first, count)) if *first + *count as u64 == slot => *count += 1,
            _ => runs.push((slot, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::contiguous_runs;

    #[test]
    fn runs_split_at_wrap() {
        let pending = [(6, 6), (7, 7), (8, 0), (9, 1)];
        assert_eq!(contiguous_runs(&pending), vec![(6, 2), (0, 2)]);
        assert_eq!(contiguous_runs(&[(0, 0)]), vec![(0, 1)]);
    }
}
