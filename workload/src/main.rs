//! `crashlab-workload`: runs inside the guest, started by /init.
//!
//! Usage: `crashlab-workload records DATA_DIR [CMDLINE_PATH]`, the record
//! workload, run by `/init` under the relay like any program under test
//! (it speaks the workload protocol on stdout), or
//! `crashlab-workload conformance DATA_DIR CHANNEL_PATH` for the msync
//! conformance suite (`conformance.rs`), or `crashlab-workload extents I
//! PATH CHANNEL_PATH` for the checker's map of a recovered file
//! (`extents.rs`), or `crashlab-workload prefetch DEVICE RUNS` to warm the
//! checker's page cache before a mount (`prefetch.rs`), or `crashlab-workload
//! relay DATA_DIR CHANNEL_PATH PROGRAM [ARGS...]` to run a program crashlab
//! did not write under the workload protocol (`relay.rs`).
//!
//! The record workload reads its parameters from the kernel command line
//! (`/proc/cmdline` unless a path is given), creates and durably sizes its
//! data files in `DATA_DIR` (`record::pattern::DATA_FILE_NAMES`), maps them
//! MAP_SHARED and writes records the way its pattern says (`patterns.rs`).
//! It prints the workload protocol (`record::items`, docs/workload-protocol.md)
//! on stdout: a record is an item (id: its seq, key: its slot, digest: its
//! crc32c), and what only it knows (msync calls, growth, a consumer's view)
//! goes as `EVENT` lines in `record::protocol`'s vocabulary. The relay
//! places its acks in the block log and holds it at the crash point; it
//! waits for the relay's reply after `READY`, each `BEGIN` and each `ACK`,
//! so that the host hears of a record before its bytes are written and
//! both happen exactly there.
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
use std::io::{Read, Write};
use std::process::ExitCode;

use record::items::{Digest, ProgramLine};
use record::layout::{self, RecordHeader};
use record::{Event, WorkloadParams};

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
    if args.get(1).map(String::as_str) != Some("records") || args.len() < 3 || args.len() > 4 {
        eprintln!(
            "usage: crashlab-workload records DATA_DIR [CMDLINE_PATH] (under `crashlab-workload relay \
             --record-events`), or conformance, extents, prefetch, relay"
        );
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
    let out = match ProtocolOut::from_environment() {
        Ok(out) => out,
        Err(msg) => {
            eprintln!("crashlab-workload: {msg}");
            return ExitCode::from(2);
        }
    };
    if mapped_file::page_size_bytes() as u64 != record::pattern::PAGE_SIZE_BYTES {
        eprintln!("crashlab-workload: the patterns assume 4096-byte pages");
        return ExitCode::from(2);
    }
    let mut ctx = Ctx { params, out, writer: 0 };
    match patterns::run(&mut ctx, &args[2]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            ctx.out.line(&ProgramLine::Err {
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

/// The record workload's side of the workload protocol: its lines on
/// stdout, one `write` each, so that lines from its processes never
/// interleave (a pipe takes a write of at most 4096 bytes whole), and the
/// relay's reply.
pub struct ProtocolOut {
    out: File,
    /// `CRASHLAB_REPLY_FD`; `None` outside the relay (unit tests).
    reply: Option<File>,
}

impl ProtocolOut {
    fn from_environment() -> Result<ProtocolOut, String> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let reply = match std::env::var("CRASHLAB_REPLY_FD") {
            Err(_) => None,
            Ok(text) => {
                let fd: i32 = text
                    .parse()
                    .map_err(|_| format!("CRASHLAB_REPLY_FD={text:?} is not a descriptor"))?;
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
                    .map_err(|e| format!("CRASHLAB_REPLY_FD={fd} is not open: {e}"))?;
                // SAFETY: open (checked above), opened by the relay for this
                // program alone; nothing else in this process uses it.
                Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
            }
        };
        // SAFETY: descriptor 1 is this process's stdout, used only here.
        let out = unsafe { File::from_raw_fd(1) };
        Ok(ProtocolOut { out, reply })
    }

    #[cfg(test)]
    pub fn to_file(out: File) -> ProtocolOut {
        ProtocolOut { out, reply: None }
    }

    pub fn line(&mut self, line: &ProgramLine) {
        // If the relay is gone the host cannot hear us anyway; keep going so
        // the disk still receives the workload's writes.
        let _ = self.out.write_all(format!("{line}\n").as_bytes());
    }

    /// What only the record workload knows, in the host's vocabulary.
    pub fn emit(&mut self, event: &Event) {
        match event {
            Event::Done { .. } => self.line(&ProgramLine::Done),
            _ => self.line(&ProgramLine::Event(event.to_string())),
        }
    }

    /// Waits for the relay's reply to `READY`, a `BEGIN` or an `ACK`: the
    /// line is on the channel, its marker in the block log, and the crash
    /// point, if it was this ack, has stopped us.
    fn wait_reply(&mut self) -> Result<(), SyscallError> {
        let Some(reply) = self.reply.as_mut() else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        loop {
            match reply.read(&mut byte) {
                Ok(1) => return Ok(()),
                Ok(_) => {
                    return Err(SyscallError {
                        op: "relay-reply",
                        errno: nix::errno::Errno::EPIPE as i32,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(SyscallError {
                        op: "relay-reply",
                        errno: e.raw_os_error().unwrap_or(5),
                    })
                }
            }
        }
    }
}

/// What every pattern shares: the parameters, the protocol's output, and
/// this process's place among the writers.
pub struct Ctx {
    pub params: WorkloadParams,
    pub out: ProtocolOut,
    /// This process's writer number (0 for the first or only one).
    pub writer: u32,
}

impl Ctx {
    /// Says READY and waits for the relay's reply (the ready marker is then
    /// in the block log, before any record's write). Called once, after the
    /// data files are durable.
    pub fn ready(&mut self) -> Result<(), SyscallError> {
        self.out.line(&ProgramLine::Ready);
        self.out.wait_reply()
    }

    /// `BEGIN seq crc slot` (record `seq` is an item keyed by its slot),
    /// then waits for the relay's reply: the record's `BEGIN` is on the
    /// channel before any of its bytes can reach the disk, so a kernel
    /// crash at any moment never finds a record the host was not told of.
    pub fn begin(&mut self, seq: u64, slot: u64) -> Result<(), SyscallError> {
        let crc = layout::stored_crc(&RecordHeader {
            record_size_bytes: self.params.record_size_bytes,
            seq,
            slot,
            seed: self.params.seed,
        });
        let digest = Digest::parse(&format!("{crc:08x}")).expect("eight hex digits are a digest");
        self.out.line(&ProgramLine::Begin {
            id: seq,
            digest,
            key: Some(slot),
        });
        self.out.wait_reply()
    }

    /// Acks a record and waits for the relay's reply (the ack is then in
    /// the block log; at the crash point the reply never comes).
    pub fn ack(&mut self, seq: u64) -> Result<(), SyscallError> {
        self.out.line(&ProgramLine::Ack { id: seq });
        self.out.wait_reply()
    }

    /// Reports an msync call; a failed one ends the run (`ERR`).
    pub fn msync_done(
        &mut self,
        file: u32,
        call: MsyncCall,
        result: Result<(), SyscallError>,
    ) -> Result<(), SyscallError> {
        self.out.emit(&Event::Msync {
            file,
            offset_bytes: call.offset_bytes as u64,
            len_bytes: call.len_bytes as u64,
            flags: call.flag_names().into(),
            errno: result.as_ref().err().map_or(0, |e| e.errno),
        });
        result
    }
}
