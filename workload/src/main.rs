//! `crashlab-workload`: runs inside the guest, started by /init.
//!
//! Usage: `crashlab-workload DATA_DIR CHANNEL_PATH [CMDLINE_PATH]`, or
//! `crashlab-workload conformance DATA_DIR CHANNEL_PATH` for the msync
//! conformance suite (`conformance.rs`), or `crashlab-workload extents I
//! PATH CHANNEL_PATH` for the checker's map of a recovered file
//! (`extents.rs`), or `crashlab-workload prefetch DEVICE RUNS` to warm the
//! checker's page cache before a mount (`prefetch.rs`), or `crashlab-workload
//! relay DATA_DIR CHANNEL_PATH PROGRAM [ARGS...]` to run a program crashlab
//! did not write under the workload protocol (`relay.rs`).
//!
//! Reads its parameters from the kernel command line (`/proc/cmdline` unless
//! a path is given), creates and durably sizes its data files in `DATA_DIR`
//! (`record::pattern::DATA_FILE_NAMES`), maps them MAP_SHARED and writes
//! records the way its pattern says (`patterns.rs`), printing the protocol
//! of `record::protocol` on `CHANNEL_PATH`.
//!
//! Invariants:
//! - a record is acknowledged only after its durability call returned 0
//!   (unless a planted bug is on: they exist to measure the checks, see
//!   `record::PlantedBug`);
//! - a failed syscall is reported as `ERR op errno` and ends the run:
//!   nothing after it is acknowledged;
//! - every msync call is reported (`MSYNC`), with its result;
//! - nothing depends on the wall clock.

mod ack_log;
mod conformance;
mod extents;
mod mapped_file;
mod patterns;
mod prefetch;
mod relay;
mod rng;

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use record::layout::ack::AckRecord;
use record::{Event, WorkloadParams};

use ack_log::AckLog;
use mapped_file::{MsyncCall, SyscallError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("extents") => return ExitCode::from(extents::run(&args[2..])),
        Some("prefetch") => return ExitCode::from(prefetch::run(&args[2..])),
        Some("relay") => return ExitCode::from(relay::run(&args[2..])),
        _ => {}
    }
    if args.get(1).map(String::as_str) == Some("conformance") && args.len() == 4 {
        let mut channel = match File::options().write(true).open(&args[3]) {
            Ok(f) => Channel(f),
            Err(e) => {
                eprintln!("crashlab-workload: cannot open channel {}: {e}", args[3]);
                return ExitCode::from(2);
            }
        };
        let result = conformance::run(&args[2], &mut channel);
        if let Err(err) = &result {
            channel.emit(&Event::Error {
                op: err.op.to_string(),
                errno: err.errno,
            });
        }
        channel.emit(&Event::Done { records: 0 });
        return ExitCode::from(u8::from(result.is_err()));
    }
    if args.len() < 3 || args.len() > 4 {
        eprintln!("usage: crashlab-workload DATA_DIR CHANNEL_PATH [CMDLINE_PATH]");
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
    let channel = match File::options().write(true).open(&args[2]) {
        Ok(f) => Channel(f),
        Err(e) => {
            eprintln!("crashlab-workload: cannot open channel {}: {e}", args[2]);
            return ExitCode::from(2);
        }
    };
    if mapped_file::page_size_bytes() as u64 != record::pattern::PAGE_SIZE_BYTES {
        eprintln!("crashlab-workload: the patterns assume 4096-byte pages");
        return ExitCode::from(2);
    }
    let mut ctx = Ctx {
        params,
        channel,
        ack_log: None,
        acks: 0,
        writer: 0,
    };
    match patterns::run(&mut ctx, &args[1]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            ctx.channel.emit(&Event::Error {
                op: err.op.to_string(),
                errno: err.errno,
            });
            eprintln!("crashlab-workload: {err}");
            ExitCode::from(1)
        }
    }
}

/// The host's view of the workload. A line is one `write` call so that lines
/// from the workload's processes never interleave.
pub struct Channel(File);

impl Channel {
    pub fn emit(&mut self, event: &Event) {
        let line = format!("{event}\n");
        // If the channel is gone the host cannot hear us anyway; keep going so
        // the disk still receives the workload's writes.
        let _ = self.0.write_all(line.as_bytes());
    }

    pub fn try_clone(&self) -> Channel {
        Channel(self.0.try_clone().expect("the channel descriptor can be duplicated"))
    }
}

/// What every pattern shares: the parameters, the channel, the ack log, and
/// this process's place among the writers.
pub struct Ctx {
    pub params: WorkloadParams,
    pub channel: Channel,
    pub ack_log: Option<AckLog>,
    /// Acks this writer gave.
    pub acks: u64,
    /// This process's writer number (0 for the first or only one).
    pub writer: u32,
}

impl Ctx {
    /// Opens the ack log (power-loss capture) and places the ready marker,
    /// then says READY. Called once, after the data files are durable.
    pub fn ready(&mut self) -> Result<(), SyscallError> {
        if let Some(offset) = self.params.ack_area_offset_bytes {
            let mut log = AckLog::open(record::params::ACK_DEVICE, offset)?;
            log.write(&AckRecord {
                ack_index: record::layout::ack::READY_MARKER_INDEX,
                seq: 0,
                slot: self.params.geometry().total_slots(),
                seed: self.params.seed,
            })?;
            self.ack_log = Some(log);
        }
        self.channel.emit(&Event::Ready {
            slots: self.params.geometry().total_slots(),
        });
        Ok(())
    }

    pub fn begin(&mut self, seq: u64, slot: u64) {
        self.channel.emit(&Event::Begin { seq, slot });
    }

    /// Acks a record (in the block log first, when capturing, then on the
    /// channel); stops for good at the crash-point hook.
    pub fn ack(&mut self, seq: u64, slot: u64) -> Result<(), SyscallError> {
        if let Some(log) = self.ack_log.as_mut() {
            log.write(&AckRecord {
                ack_index: seq,
                seq,
                slot,
                seed: self.params.seed,
            })?;
        }
        self.channel.emit(&Event::Ack { seq, slot });
        self.acks += 1;
        // The first writer holds: with several writers the others run on
        // until the kill, which comes at once.
        if self.writer == 0 && self.params.hold_after_acks == Some(self.acks) {
            self.hold();
        }
        Ok(())
    }

    /// The crash-point hook: says `HOLD` and waits for the kill. Waiting
    /// rather than exiting keeps every later step from happening.
    fn hold(&mut self) -> ! {
        self.channel.emit(&Event::Hold { acks: self.acks });
        loop {
            nix::unistd::pause();
        }
    }

    /// A run that acked fewer records than the crash point's count (a
    /// pattern that leaves records unacked) holds at its end instead of
    /// ending cleanly: the planned crash still happens.
    pub fn hold_if_unreached(&mut self) {
        if self.writer == 0 && self.params.hold_after_acks.is_some_and(|n| self.acks < n) {
            self.hold();
        }
    }

    /// Reports an msync call; a failed one ends the run (`ERR`).
    pub fn msync_done(
        &mut self,
        file: u32,
        call: MsyncCall,
        result: Result<(), SyscallError>,
    ) -> Result<(), SyscallError> {
        self.channel.emit(&Event::Msync {
            file,
            offset_bytes: call.offset_bytes as u64,
            len_bytes: call.len_bytes as u64,
            flags: call.flag_names().into(),
            errno: result.as_ref().err().map_or(0, |e| e.errno),
        });
        result
    }
}
