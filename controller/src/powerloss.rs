//! The power-loss crash model.
//!
//! 1. **Capture**: one workload boot with the test disk behind QEMU's
//!    `blklogwrites` driver. Every write and flush the guest issues lands in a
//!    dm-log-writes log; every ack is also an O_DIRECT sector write into a
//!    reserved area past the filesystem (see `workload/src/ack_log.rs`), so
//!    its place in the log is exact. The run may be killed at the trial's
//!    seeded crash point; the log then ends there.
//! 2. **States**: `blocklog` plans crash states from the log: a prefix at
//!    flush boundaries, seeded random subsets of open epochs (weighted by
//!    the writes they hold), optional torn writes, deduplicated by persisted
//!    contents (the ack area left out), each judged at its latest crash
//!    point.
//! 3. **Verification**: each state is shown, copy-on-write, to a long-lived
//!    checker VM through the controller's NBD server (the guest kernel's own
//!    recovery, no reboot per state), or, for ext4, checked on the host
//!    (e2fsck replays the journal, debugfs dumps the file).
//! 4. **Evidence per state**: the serial protocol log with only the acks
//!    whose log entry comes before the state's crash position (the latest
//!    position that leaves its contents: `blocklog::crash_position`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blocklog::{CrashState, Extent, ParsedLog};
use record::layout::ack::{self, ACK_SIZE_BYTES};
use record::{Event, ProtocolLog};

use nbd::{DiskView, NbdHandle, NbdLimits, NbdServer};
use crate::qemu::{Drive, VmSpec};
use crate::trial::{CheckReport, CheckResult, ExportDisk, FsckResult, RecoveredFile, TrialContext};
use crate::vm::{self, Limits, RunFiles, Step, VmSession};

/// Where an ack sits in the block-write log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckPosition {
    pub entry_index: u64,
    pub seq: u64,
}

/// The application's promises as placed in the block-write log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggedPromises {
    /// Log entry of the ready marker (written just before `READY`).
    pub ready_entry: Option<u64>,
    pub acks: Vec<AckPosition>,
}

/// Finds the ready marker and every ack record written into
/// `[area_start, area_end)`, in log order. The ack of record `seq` sits in
/// the area's sector `seq + 1` (writer processes never share one); each
/// must be of this run, in its own sector, and written once.
pub fn acks_in_log(
    log: &ParsedLog,
    log_file: &File,
    area_start_bytes: u64,
    area_end_bytes: u64,
    seed: u64,
) -> Result<LoggedPromises> {
    let mut acks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut ready_entry = None;
    let mut buf = Vec::new();
    for entry in log.entries.iter().filter(|e| e.is_data_write()) {
        let start = entry.device_offset_bytes();
        let end = start + entry.nr_sectors * 512;
        if end <= area_start_bytes || start >= area_end_bytes {
            continue;
        }
        if start < area_start_bytes || end > area_end_bytes {
            bail!(
                "log entry {} straddles the ack area: the filesystem wrote past its end",
                entry.index
            );
        }
        blocklog::read_entry_data(log_file, entry, &mut buf).context("reading an ack from the log")?;
        for (i, sector) in buf.chunks(ACK_SIZE_BYTES).enumerate() {
            let area_sector = (start - area_start_bytes) / ACK_SIZE_BYTES as u64 + i as u64;
            let Some(record) = ack::decode(sector) else {
                bail!("log entry {} in the ack area holds no valid ack record", entry.index);
            };
            let placed = ack::sector_offset_bytes(record.ack_index) == area_sector * ACK_SIZE_BYTES as u64;
            if record.seed != seed || !placed {
                bail!(
                    "ack record {record:?} in log entry {} (area sector {area_sector}) is not one of this run's",
                    entry.index
                );
            }
            if record.ack_index == ack::READY_MARKER_INDEX {
                if ready_entry.replace(entry.index).is_some() {
                    bail!("log entry {} writes the ready marker a second time", entry.index);
                }
                continue;
            }
            if ready_entry.is_none() || record.ack_index != record.seq || !seen.insert(record.seq) {
                bail!(
                    "ack record {record:?} in log entry {} is out of place: before the ready marker, \
                     not at its record's sector, or a second time",
                    entry.index
                );
            }
            acks.push(AckPosition {
                entry_index: entry.index,
                seq: record.seq,
            });
        }
    }
    Ok(LoggedPromises { ready_entry, acks })
}

/// The earliest log position that leaves a state's contents: just past
/// the last entry it includes. Judging there instead of at
/// `blocklog::crash_position` (the latest) gives fewer acks; kept only to
/// report how much the latest point adds (`states_failed_at_earliest_point`).
pub fn earliest_crash_position(state: &CrashState) -> u64 {
    let last_extra = state.extra_writes.iter().max().map(|&i| i + 1).unwrap_or(0);
    let torn = state.torn.as_ref().map(|t| t.entry + 1).unwrap_or(0);
    state.prefix_entries.max(last_extra).max(torn)
}

/// The protocol as the application knew it at a crash at log `position`:
/// nothing after a `READY` whose ready marker is not logged before
/// `position`, and for each writer process, nothing after its first `ACK`
/// whose ack sector is not logged before `position`.
///
/// Why a cut and not a filter: each writer is one sequential program, and
/// each of those lines is printed only after its marker's O_DIRECT write
/// completed, i.e. was logged. A marker logged at or after `position`
/// completed after the crash, so every line that writer printed after it
/// (its next records' `BEGIN`s among them) came after the crash too. The
/// records begun before the cut and not acked include every one in flight
/// (and perhaps one begun just after the crash, whose bytes cannot be in
/// the state: allowing it loosens nothing that matters).
/// Lines of no one writer (`MSYNC`, `GROW`, ...) stay while any writer is
/// uncut; `DONE` goes once any is cut.
pub fn protocol_at(serial: &ProtocolLog, promises: &LoggedPromises, position: u64, writers: u32) -> ProtocolLog {
    let ready_given = promises.ready_entry.is_some_and(|r| r < position);
    let given: std::collections::HashSet<u64> = promises
        .acks
        .iter()
        .filter(|a| a.entry_index < position)
        .map(|a| a.seq)
        .collect();
    let writer_of = |seq: u64| (seq % u64::from(writers.max(1))) as usize;
    let mut cut = vec![false; writers.max(1) as usize];
    let mut events = Vec::new();
    for event in &serial.events {
        let keep = match event {
            Event::Ready { .. } if !ready_given => break,
            Event::Begin { seq, .. } => !cut[writer_of(*seq)],
            Event::Ack { seq, .. } => {
                let w = writer_of(*seq);
                if !cut[w] && !given.contains(seq) {
                    cut[w] = true;
                }
                !cut[w]
            }
            Event::Done { .. } => !cut.iter().any(|&c| c),
            _ => !cut.iter().all(|&c| c),
        };
        if keep {
            events.push(event.clone());
        }
    }
    ProtocolLog {
        events,
        truncated_tail: None,
    }
}

/// Every ACK the host saw on the channel must be in the log: the workload
/// wrote it there (O_DIRECT, completed) before printing the line. The one
/// exception is a log whose usable part ends early, at a hole or a cut-off
/// entry left by the kill: acks logged past that end are counted and left
/// unjudged (states are built only from what precedes it). Returns how many
/// there were.
pub fn check_acks_match(serial: &ProtocolLog, promises: &LoggedPromises, log_ends_early: bool) -> Result<u64> {
    let logged: std::collections::HashSet<u64> = promises.acks.iter().map(|a| a.seq).collect();
    let ready_said = serial.events.iter().any(|e| matches!(e, Event::Ready { .. }));
    if ready_said && promises.ready_entry.is_none() && !log_ends_early {
        bail!("READY reached the channel but its marker is not in the block log: the capture is incomplete");
    }
    let mut past_end = 0;
    for e in &serial.events {
        if let Event::Ack { seq, .. } = e {
            if !logged.contains(seq) {
                if !log_ends_early {
                    bail!("ACK {seq} reached the channel but not the block log: the capture is incomplete");
                }
                past_end += 1;
            }
        }
    }
    Ok(past_end)
}

/// A crash state as a read-only disk: the pristine base image with the
/// state's winning log extents (or zeros, for discards) on top. Nothing is
/// copied: reads go to the base or the log file.
pub struct StateView {
    base: Arc<File>,
    log: Arc<File>,
    size_bytes: u64,
    /// Sorted by device offset, non-overlapping.
    extents: Vec<Extent>,
}

impl StateView {
    pub fn new(base: Arc<File>, log: Arc<File>, size_bytes: u64, mut extents: Vec<Extent>) -> StateView {
        extents.sort_by_key(|e| e.device_offset_bytes);
        debug_assert!(extents
            .windows(2)
            .all(|w| w[0].device_offset_bytes + w[0].len_bytes <= w[1].device_offset_bytes));
        StateView {
            base,
            log,
            size_bytes,
            extents,
        }
    }
}

impl DiskView for StateView {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.base.read_exact_at(buf, offset_bytes)?;
        let end = offset_bytes + buf.len() as u64;
        // First extent that ends after the read starts.
        let first = self
            .extents
            .partition_point(|e| e.device_offset_bytes + e.len_bytes <= offset_bytes);
        for e in self.extents[first..].iter().take_while(|e| e.device_offset_bytes < end) {
            let from = e.device_offset_bytes.max(offset_bytes);
            let to = (e.device_offset_bytes + e.len_bytes).min(end);
            let dst = &mut buf[(from - offset_bytes) as usize..(to - offset_bytes) as usize];
            match e.log_offset_bytes() {
                Some(log_offset) => self
                    .log
                    .read_exact_at(dst, log_offset + (from - e.device_offset_bytes))?,
                None => dst.fill(0), // a discarded range
            }
        }
        Ok(())
    }
}

/// The long-lived checker VM: boots once, then checks one state per
/// round trip ("CHECK nonce" → MOUNT, FILE/NOFILE, COPY, UMOUNT, FSCK,
/// CHECKED nonce). A guest that panics, hangs or cannot unmount while
/// recovering a state makes that state's verdict and is retired
/// ([`KernelChecker::is_usable`]); the worker boots a new one.
pub struct KernelChecker {
    session: Option<VmSession>,
    server: Option<NbdServer>,
    handle: NbdHandle,
    export: ExportDisk,
    files: RunFiles,
    state_timeout_ms: u64,
    /// Nonce of the last check asked for; the guest echoes it.
    nonce: u64,
    usable: bool,
    _socket_dir: tempfile::TempDir,
}

pub const STATE_TIMEOUT_MS: u64 = 60_000;
/// Guest writes held per state (journal recovery, superblock updates).
pub const OVERLAY_MAX_BYTES: u64 = 256 << 20;
/// Checker VMs a worker may boot again in one trial after one died
/// recovering a state; past that the trial stops with an error.
pub const CHECKER_RESTARTS_MAX: u32 = 16;

impl KernelChecker {
    pub fn start(
        ctx: &TrialContext,
        dir: &Path,
        name: &str,
        initial: Arc<dyn DiskView>,
        fsck: bool,
    ) -> Result<KernelChecker> {
        let config = ctx.config;
        let socket_dir = tempfile::Builder::new().prefix("crashlab-nbd-").tempdir()?;
        let socket = socket_dir.path().join("nbd");
        let limits = NbdLimits {
            overlay_max_bytes: OVERLAY_MAX_BYTES,
            request_max_bytes: 32 << 20,
        };
        let (server, handle) = NbdServer::start(&socket, "state", initial, limits)?;
        let export = ExportDisk::create(
            dir.join(format!("{name}-export.img")),
            config.file_size_bytes,
            config.geometry().files,
        )?;
        let files = RunFiles::in_dir(dir, name);
        let spec = VmSpec {
            images: ctx.images.clone(),
            accel: ctx.accel,
            memory_mib: config.guest_memory_mib,
            kernel_args: [
                "crashlab.role=checker".into(),
                format!("crashlab.fs={}", config.fs.name()),
                format!("crashlab.mount_opts={}", config.mount_opts),
                format!("crashlab.fsck={}", u8::from(fsck)),
            ]
            .into_iter()
            .chain(export.kernel_args())
            .collect(),
            drives: vec![
                Drive::Nbd {
                    socket: socket.clone(),
                    export: "state".into(),
                },
                Drive::Raw(export.path.clone()),
            ],
            console_log: files.console_log.clone(),
            channel_socket: PathBuf::new(),
            trace_log: None,
        };
        let limits = Limits {
            boot_timeout_ms: config.boot_timeout_ms,
            stall_timeout_ms: config.stall_timeout_ms,
            total_timeout_ms: u64::MAX,
        };
        let mut session = match VmSession::start(spec, &files, limits, ctx.interrupt)? {
            Ok(s) => s,
            Err(outcome) => return Err(vm::boot_failure("checker VM did not start", outcome, &files)),
        };
        // Wait for BOOTED: the guest holds its channel open from then on.
        let start = Instant::now();
        loop {
            anyhow::ensure!(
                !ctx.interrupt.load(std::sync::atomic::Ordering::SeqCst),
                vm::Interrupted
            );
            if start.elapsed() > Duration::from_millis(config.boot_timeout_ms) {
                return Err(vm::boot_failure(
                    "checker VM did not boot",
                    vm::VmOutcome::BootTimeout,
                    &files,
                ));
            }
            match session.next(Duration::from_millis(20))? {
                Step::Event(Event::Booted { .. }) => break,
                Step::Exited(code) => {
                    return Err(vm::boot_failure(
                        "checker VM exited",
                        vm::VmOutcome::Exited {
                            code: code.unwrap_or(-1),
                        },
                        &files,
                    ))
                }
                _ => {}
            }
        }
        Ok(KernelChecker {
            session: Some(session),
            server: Some(server),
            handle,
            export,
            files,
            state_timeout_ms: STATE_TIMEOUT_MS.min(config.stall_timeout_ms.max(1)),
            nonce: 0,
            usable: true,
            _socket_dir: socket_dir,
        })
    }

    pub fn nbd(&self) -> &NbdHandle {
        &self.handle
    }

    /// False once a check left the guest dead, hung or with a state still
    /// mounted: it must not check another state.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Shows `view` to the guest and waits for its report. A guest that
    /// dies or falls silent while recovering the state gives that state's
    /// result (a recovery failure) and retires this checker. `stop`
    /// (Ctrl-C, or another worker's failure) ends the wait.
    pub fn check(&mut self, view: Arc<dyn DiskView>, stop: &AtomicBool) -> Result<CheckResult> {
        assert!(self.usable, "a retired checker is not asked again");
        self.handle.set_view(view);
        self.nonce += 1;
        let nonce = self.nonce;
        let session = self.session.as_mut().expect("checker is running");
        session.send_line(&format!("CHECK {nonce}"))?;
        let start = Instant::now();
        let mut report = CheckReport::default();
        while report.checked.is_none() {
            anyhow::ensure!(!stop.load(Ordering::SeqCst), vm::Interrupted);
            if start.elapsed() > Duration::from_millis(self.state_timeout_ms) {
                self.usable = false;
                return Ok(CheckResult::recovery_failed(
                    format!(
                        "the checker VM did not finish recovering the state within {} ms: a hung mount or \
                         read? console {}:\n{}",
                        self.state_timeout_ms,
                        self.files.console_log.display(),
                        vm::tail_of(&self.files.console_log, 8)
                    ),
                    self.export.files as usize,
                ));
            }
            match session.next(Duration::from_millis(2))? {
                Step::Event(event) => report.observe(&event),
                Step::Exited(code) => {
                    self.usable = false;
                    return Ok(CheckResult::recovery_failed(
                        format!(
                            "the checker VM exited (status {code:?}) while recovering the state: a guest \
                             kernel panic? console {}:\n{}",
                            self.files.console_log.display(),
                            vm::tail_of(&self.files.console_log, 8)
                        ),
                        self.export.files as usize,
                    ));
                }
                Step::Tick => {}
            }
        }
        if report.left_mounted() {
            self.usable = false;
        }
        report
            .finish(&self.export, nonce)?
            .context("the checker reported CHECKED without MOUNT")
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(mut session) = self.session.take() {
            if self.usable {
                let _ = session.send_line("QUIT");
            }
            session.finish()?;
        }
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        let _ = std::fs::remove_file(&self.export.path);
        Ok(())
    }
}

impl Drop for KernelChecker {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.finish();
        }
    }
}

/// Host-only check for ext4, no VM and no root: materialise the state into
/// a scratch image, let e2fsck replay the journal (what the kernel's mount
/// would do), check it read-only, and dump each data file with debugfs.
pub fn host_check_ext4(
    base: &Path,
    log_file: &File,
    log: &ParsedLog,
    state: &CrashState,
    scratch_dir: &Path,
    fsck: bool,
    data_files: u32,
) -> Result<CheckResult> {
    let image = scratch_dir.join("host-state.img");
    crate::images::copy_sparse(base, &image)?;
    {
        let mut sink = std::fs::OpenOptions::new().write(true).open(&image)?;
        blocklog::apply_state(log_file, log, state, &mut sink).context("building the state image")?;
    }
    let replay = Command::new("e2fsck")
        .args(["-y", "-E", "journal_only"])
        .arg(&image)
        .output()
        .context("cannot run e2fsck: `cargo xtask deps` installs it")?;
    // 0: nothing to do, 1: journal replayed. Anything else: the recovery failed.
    let replay_rc = replay.status.code().unwrap_or(-1);
    if replay_rc > 1 {
        return Ok(CheckResult {
            recovery_failure: None,
            mount_rc: replay_rc,
            files: (0..data_files).map(|_| RecoveredFile::Missing).collect(),
            fsck: None,
        });
    }
    // Like the kernel path: the read-only fsck only when asked for.
    let fsck = match fsck {
        true => Some(Command::new("e2fsck").args(["-f", "-n"]).arg(&image).output()?),
        false => None,
    };
    let files = (0..data_files as usize)
        .map(|i| debugfs_dump(&image, record::pattern::DATA_FILE_NAMES[i], scratch_dir))
        .collect::<Result<Vec<_>>>()?;
    Ok(CheckResult {
        recovery_failure: None,
        mount_rc: 0,
        files,
        fsck: fsck.map(|f| FsckResult {
            tool: "e2fsck".into(),
            rc: f.status.code().unwrap_or(-1),
        }),
    })
}

/// One file out of an ext4 image, with `debugfs -c` (catastrophic mode:
/// bitmaps are not read; dumping a file needs only its inode and extents,
/// and a torn bitmap write, allowed in the open epoch, would otherwise make
/// debugfs refuse the whole filesystem).
fn debugfs_dump(image: &Path, name: &str, scratch_dir: &Path) -> Result<RecoveredFile> {
    let out = scratch_dir.join("host-state.dat");
    let _ = std::fs::remove_file(&out);
    let dump = Command::new("debugfs")
        .arg("-c")
        .arg("-R")
        .arg(format!("dump /{name} {}", out.display()))
        .arg(image)
        .output()
        .context("cannot run debugfs")?;
    let stderr = String::from_utf8_lossy(&dump.stderr);
    let file = if stderr.contains("not found") {
        RecoveredFile::Missing
    } else if out.exists() {
        RecoveredFile::Read(std::fs::read(&out)?)
    } else {
        RecoveredFile::Unreadable {
            size_bytes: None,
            reason: format!("debugfs could not dump it: {}", stderr.trim()),
        }
    };
    let _ = std::fs::remove_file(&out);
    Ok(file)
}

/// A captured run, read back: the parsed log (as the planted device bug,
/// if any, would have made it durable), the serial protocol, and the
/// promises placed in the log.
pub struct Capture {
    pub log: ParsedLog,
    pub log_file: Arc<File>,
    pub serial: ProtocolLog,
    pub promises: LoggedPromises,
    pub device_size_bytes: u64,
    /// ACKs seen on the channel whose log entry lies past a hole or a
    /// cut-off entry at the log's end: not judged.
    pub acks_past_log_end: u64,
    pub device_bug_effect: Option<blocklog::DeviceBugEffect>,
}

/// Where the capture's files are and how to read them.
pub struct CaptureSource<'a> {
    pub log_path: &'a Path,
    pub protocol_path: &'a Path,
    pub base_disk: &'a Path,
    pub ack_area_offset_bytes: u64,
    pub seed: u64,
    pub device_bug: Option<blocklog::DeviceBug>,
}

pub fn read_capture(source: &CaptureSource) -> Result<Capture> {
    let protocol_path = source.protocol_path;
    let serial = record::protocol::parse_log(
        &std::fs::read_to_string(protocol_path).with_context(|| format!("cannot read {}", protocol_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", protocol_path.display()))?;
    let device_size_bytes = std::fs::metadata(source.base_disk)
        .with_context(|| format!("cannot read {}", source.base_disk.display()))?
        .len();
    let log = blocklog::read_log_file(source.log_path, device_size_bytes)
        .with_context(|| format!("block-write log {} is unusable", source.log_path.display()))?;
    let log_ends_early = log.truncated.is_some() || log.stray_data_offset_bytes.is_some();
    let (log, device_bug_effect) = match source.device_bug {
        Some(bug) => {
            let ignored = ack_area_sectors(source.ack_area_offset_bytes, device_size_bytes);
            let (log, effect) = blocklog::apply_device_bug(&log, bug, &ignored, source.seed);
            (log, Some(effect))
        }
        None => (log, None),
    };
    let log_file = Arc::new(File::open(source.log_path)?);
    let promises = acks_in_log(
        &log,
        &log_file,
        source.ack_area_offset_bytes,
        device_size_bytes,
        source.seed,
    )?;
    let acks_past_log_end = check_acks_match(&serial, &promises, log_ends_early)?;
    Ok(Capture {
        log,
        log_file,
        serial,
        promises,
        device_size_bytes,
        acks_past_log_end,
        device_bug_effect,
    })
}

/// The ack area in 512-byte sectors: no check reads it, so it is no part
/// of a state's identity.
pub fn ack_area_sectors(ack_area_offset_bytes: u64, device_size_bytes: u64) -> std::ops::Range<u64> {
    ack_area_offset_bytes / 512..device_size_bytes / 512
}

/// How a trial's states are planned from its capture.
pub fn plan_options(
    config: &crate::config::CampaignConfig,
    workload_seed: u64,
    capture: &Capture,
    ack_area_offset_bytes: u64,
) -> blocklog::PlanOptions {
    blocklog::PlanOptions {
        seed: workload_seed,
        budget: config.state_budget_per_trial(),
        torn: config.torn_writes,
        ignored_sectors: ack_area_sectors(ack_area_offset_bytes, capture.device_size_bytes),
    }
}

/// One power-loss trial: what it captured, the states it checked, and
/// their verdicts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PowerLossRecord {
    #[serde(flatten)]
    pub run: crate::trial::WorkloadRun,
    pub log: LogFacts,
    /// The planted device bug and what it changed in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_bug: Option<DeviceBugFacts>,
    /// Records as the host saw them on the channel by the end of the
    /// capture (the same for every state).
    pub records: RunRecords,
    pub states_planned: u64,
    pub states_checked: u64,
    pub states_passed: u64,
    pub states_failed: u64,
    /// What the workload reported live during the capture (an incoherent
    /// mapping, a consumer that read a torn record): judged once, over the
    /// whole run, not per state.
    pub live_violations: Vec<verifier::Finding>,
    /// The guest kernel's msync trace of the capture, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msync_trace: Option<crate::trace::TraceSummary>,
    /// States that would fail if judged at their earliest crash position
    /// (just past their last included entry) instead of the latest: the
    /// weaker check the latest point replaced, kept for comparison.
    pub states_failed_at_earliest_point: u64,
    /// With `--checker both`: states the kernel and host paths judged
    /// differently (one passed, the other failed).
    pub checker_disagreements: u64,
    /// With `--checker both`: failing states where the two paths agree on
    /// the failure but not on its details (violations, lost or torn counts).
    pub checker_detail_differences: u64,
    /// Checker VMs booted again after one died, hung or could not unmount
    /// while recovering a state (that state's verdict says so).
    pub checker_restarts: u64,
    pub passed: bool,
    /// Per-state counts summed over the trial's states: a record judged in
    /// 100 states counts 100 times (see results/README.md).
    pub state_counts: verifier::Counts,
    pub violation_count: u64,
    /// The first violations, each with its state.
    pub violations: Vec<StateFinding>,
    pub observation_count: u64,
    /// From the trial's start to the first failing state's verdict.
    pub first_failure_after_ms: Option<u64>,
    pub timing_ms: Timing,
    pub overlay_peak_bytes: u64,
    pub check_workers: u64,
    pub rerun: String,
    pub evidence_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RunRecords {
    pub begun: u64,
    pub acked: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceBugFacts {
    pub bug: String,
    pub flushes_dropped: u64,
    pub writes_delayed: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogFacts {
    pub entries: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub acks: u64,
    pub log_bytes: u64,
    /// The log ended mid-entry (QEMU killed while logging).
    pub truncated: bool,
    /// The log ended at a hole (an entry left unwritten by the kill) with
    /// entries after it: only what precedes the hole was used.
    pub hole: bool,
    /// ACKs on the channel whose log entry lay past the usable log's end:
    /// not judged.
    pub acks_past_log_end: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StateFinding {
    pub state: u64,
    /// The command that rebuilds exactly this state and judges it again.
    pub replay: String,
    pub kind: String,
    pub prefix_entries: u64,
    pub crash_position: u64,
    #[serde(flatten)]
    pub finding: verifier::Finding,
}

/// Where the time goes. Stages before and after the checks run once; the
/// per-state parts (`build`, `kernel_check`, `host_check`, `verify`) are
/// summed over the check workers, which run in parallel, so they can exceed
/// `check_wall`, the wall time of the whole checking stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    pub capture: u64,
    pub parse: u64,
    pub plan: u64,
    pub checker_boot: u64,
    pub check_wall: u64,
    /// Worker time: building views (extents) or host images.
    pub build: u64,
    /// Worker time, kernel path: NBD transfer + mount + copy out, one round
    /// trip a state.
    pub kernel_check: u64,
    /// Worker time, host path: e2fsck + debugfs.
    pub host_check: u64,
    pub verify: u64,
}

/// One line of `states.jsonl`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StateLine {
    pub trial: u64,
    pub state: u64,
    pub kind: String,
    pub prefix_entries: u64,
    pub extra_writes: usize,
    pub torn: bool,
    /// The latest log position that leaves this state's contents: acks
    /// logged before it are judged as given.
    pub crash_position: u64,
    pub acked: u64,
    pub checker: &'static str,
    pub passed: bool,
    /// The verdict had the state been judged at its earliest position.
    pub passed_at_earliest_point: bool,
    pub violation_count: u64,
    pub lost: u64,
    pub torn_records: u64,
    pub first_violation: Option<verifier::Finding>,
    /// With `--checker both`: how the two paths' verdicts differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

pub struct PowerLossContext<'a> {
    pub trial: &'a TrialContext<'a>,
    /// Pristine formatted disk, filesystem + ack area.
    pub base_disk: &'a Path,
    pub ack_area_offset_bytes: u64,
}

pub fn run_powerloss_trial(
    pctx: &PowerLossContext,
    plan: &crate::plan::TrialPlan,
    dir: &Path,
    mut on_state: impl FnMut(&StateLine) -> Result<()>,
) -> Result<PowerLossRecord> {
    let ctx = pctx.trial;
    let config = ctx.config;
    let trial_start = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} (disk full?)", dir.display()))?;
    let mut timing = Timing::default();

    // 1. Capture.
    let t = Instant::now();
    let params = config.workload_params(
        plan.workload_seed,
        crate::trial::hold_for(plan),
        Some(pctx.ack_area_offset_bytes),
    );
    let disk = dir.join("disk.img");
    let log_path = dir.join("blocklog.bin");
    crate::images::copy_sparse(pctx.base_disk, &disk)?;
    // A fresh, empty log: QEMU does not truncate an existing one.
    File::create(&log_path)?;
    let files = RunFiles::in_dir(dir, "workload");
    let run = crate::trial::run_workload(
        ctx,
        plan,
        &params,
        Drive::Logged {
            disk: disk.clone(),
            log: log_path.clone(),
        },
        &files,
    )?;
    timing.capture = ms_since(t);

    // 2. Parse the log and find the promises in it.
    let t = Instant::now();
    let capture = read_capture(&CaptureSource {
        log_path: &log_path,
        protocol_path: &files.protocol_log,
        base_disk: pctx.base_disk,
        ack_area_offset_bytes: pctx.ack_area_offset_bytes,
        seed: params.seed,
        device_bug: config.device_bug,
    })?;
    timing.parse = ms_since(t);
    let log = &capture.log;
    let log_facts = LogFacts {
        entries: log.entries.len() as u64,
        writes: log.entries.iter().filter(|e| e.is_data_write()).count() as u64,
        flushes: log.entries.iter().filter(|e| e.flags.is_flush()).count() as u64,
        discards: log.entries.iter().filter(|e| e.flags.is_discard()).count() as u64,
        acks: capture.promises.acks.len() as u64,
        log_bytes: std::fs::metadata(&log_path)?.len(),
        truncated: log.truncated.is_some(),
        hole: log.stray_data_offset_bytes.is_some(),
        acks_past_log_end: capture.acks_past_log_end,
    };
    let run_records = RunRecords {
        begun: capture
            .serial
            .events
            .iter()
            .filter(|e| matches!(e, Event::Begin { .. }))
            .count() as u64,
        acked: capture
            .serial
            .events
            .iter()
            .filter(|e| matches!(e, Event::Ack { .. }))
            .count() as u64,
    };

    // 3. Plan the states.
    let t = Instant::now();
    let options = plan_options(config, plan.workload_seed, &capture, pctx.ack_area_offset_bytes);
    let states = blocklog::plan_states(log, &options);
    timing.plan = ms_since(t);

    // 4. Check them: `check_workers` workers in parallel (under TCG a checker
    // VM keeps one core busy), results taken back and judged in state order.
    let env = CheckEnv {
        base_file: Arc::new(File::open(pctx.base_disk)?),
        log_file: capture.log_file.clone(),
        device_size_bytes: capture.device_size_bytes,
        log,
        base_disk: pctx.base_disk,
        fsck: config.fsck_states,
        ctx,
        dir,
    };
    let want_kernel = config.checker != crate::config::Checker::Host;
    let want_host = config.checker != crate::config::Checker::Kernel;
    let workers_n = (config.check_workers as usize).clamp(1, states.len().max(1));
    let t = Instant::now();
    let mut workers = start_workers(&env, workers_n, want_kernel, want_host)?;
    timing.checker_boot = ms_since(t);
    let mut record = PowerLossRecord {
        run,
        log: log_facts,
        device_bug: config.device_bug.map(|bug| {
            let effect = capture.device_bug_effect.unwrap_or_default();
            DeviceBugFacts {
                bug: bug.to_string(),
                flushes_dropped: effect.flushes_dropped,
                writes_delayed: effect.writes_delayed,
            }
        }),
        records: run_records,
        live_violations: verifier::live_findings(&capture.serial),
        msync_trace: crate::trace::read_summary(&files.trace_log),
        states_planned: states.len() as u64,
        states_checked: 0,
        states_passed: 0,
        states_failed: 0,
        states_failed_at_earliest_point: 0,
        checker_disagreements: 0,
        checker_detail_differences: 0,
        checker_restarts: 0,
        passed: true,
        state_counts: verifier::Counts::default(),
        violation_count: 0,
        violations: Vec::new(),
        observation_count: 0,
        first_failure_after_ms: None,
        timing_ms: timing,
        overlay_peak_bytes: 0,
        check_workers: workers_n as u64,
        rerun: format!("{} --only-trial={}", ctx.rerun_command, plan.trial),
        evidence_dir: dir.to_path_buf(),
    };
    if !record.live_violations.is_empty() {
        record.passed = false;
        record.violation_count += record.live_violations.len() as u64;
        record.first_failure_after_ms = Some(ms_since(trial_start));
    }
    let abort = AtomicBool::new(false);
    let next_state = AtomicUsize::new(0);
    let check_start = Instant::now();
    let checked = std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::channel::<(usize, Result<StateChecks>)>();
        for worker in workers.iter_mut() {
            let (tx, env, states, abort, next_state) = (tx.clone(), &env, &states, &abort, &next_state);
            scope.spawn(move || loop {
                let i = next_state.fetch_add(1, Ordering::SeqCst);
                if i >= states.len() || abort.load(Ordering::SeqCst) {
                    break;
                }
                let result = worker.check(env, &states[i], abort);
                let failed = result.is_err();
                if tx.send((i, result)).is_err() || failed {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut next_out = 0usize;
        let outcome = loop {
            if ctx.interrupt.load(Ordering::SeqCst) {
                break Err(anyhow::Error::new(vm::Interrupted));
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, Ok(checks))) => {
                    pending.insert(i, checks);
                }
                Ok((_, Err(e))) => break Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            }
            while let Some(checks) = pending.remove(&next_out) {
                let state = &states[next_out];
                let judged = judge_state(config, &params, &capture, state, &checks);
                record.timing_ms.verify += judged.verify_ms;
                record.timing_ms.build += checks.build_ms;
                record.timing_ms.kernel_check += checks.kernel_ms;
                record.timing_ms.host_check += checks.host_ms;
                record.checker_restarts += checks.checker_restarts;
                record.overlay_peak_bytes = record.overlay_peak_bytes.max(checks.overlay_bytes);
                if let Some(difference) = &judged.disagreement {
                    // Pass/fail must agree. On a filesystem the crash left
                    // broken, the kernel and e2fsprogs may read different
                    // wreckage (a rejected inode vs an empty file): counted
                    // apart, with both readings in states.jsonl.
                    match difference {
                        Disagreement::Verdict(_) => record.checker_disagreements += 1,
                        Disagreement::Details(_) => record.checker_detail_differences += 1,
                    }
                }
                let (checker_name, verdict) = &judged.verdicts[0];
                if !verdict.passed && record.first_failure_after_ms.is_none() {
                    record.first_failure_after_ms = Some(ms_since(trial_start));
                }
                record.add_state(
                    next_out as u64,
                    state,
                    judged.position,
                    verdict,
                    judged.passed_at_earliest,
                );
                let line = StateLine {
                    trial: plan.trial,
                    state: next_out as u64,
                    kind: format!("{:?}", state.kind).to_lowercase(),
                    prefix_entries: state.prefix_entries,
                    extra_writes: state.extra_writes.len(),
                    torn: state.torn.is_some(),
                    crash_position: judged.position,
                    acked: verdict.counts.acked,
                    checker: checker_name,
                    passed: judged.verdicts.iter().all(|(_, v)| v.passed),
                    passed_at_earliest_point: judged.passed_at_earliest,
                    violation_count: verdict.violation_count,
                    lost: verdict.counts.lost,
                    torn_records: verdict.counts.torn,
                    first_violation: verdict.violations.first().cloned(),
                    disagreement: judged.disagreement.map(Disagreement::into_text),
                };
                if let Err(e) = on_state(&line) {
                    abort.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                next_out += 1;
            }
        };
        // Stops the other workers at their next state; their VMs go below.
        abort.store(true, Ordering::SeqCst);
        outcome
    });
    record.timing_ms.check_wall = ms_since(check_start);
    let stopped: Result<Vec<()>> = workers.into_iter().map(CheckWorker::stop).collect();
    checked?;
    stopped?;
    assert_eq!(
        record.states_checked,
        states.len() as u64,
        "every planned state was judged"
    );
    // The crashed disk is not needed: states are rebuilt from the base and
    // the log. Keep the log (and the base) only as evidence of a failure.
    let _ = std::fs::remove_file(&disk);
    if record.passed && !config.keep_images {
        let _ = std::fs::remove_file(&log_path);
    } else {
        let _ = std::fs::copy(pctx.base_disk, dir.join("base-disk.img"));
    }
    Ok(record)
}

/// How the kernel and host paths' verdicts on one state differed.
enum Disagreement {
    /// One passed, the other failed.
    Verdict(String),
    /// Both failed, with different details.
    Details(String),
}

impl Disagreement {
    fn into_text(self) -> String {
        match self {
            Disagreement::Verdict(text) | Disagreement::Details(text) => text,
        }
    }
}

/// One state's verdicts, judged at its latest crash position (and, for
/// comparison, at its earliest).
pub struct JudgedState {
    pub position: u64,
    pub verdicts: Vec<(&'static str, verifier::Verdict)>,
    /// The first path's verdict had the state been judged at its earliest
    /// position (fewer acks).
    pub passed_at_earliest: bool,
    disagreement: Option<Disagreement>,
    verify_ms: u64,
}

/// Judges one checked state against the promises the application had been
/// given at its crash position.
pub fn judge_state(
    config: &crate::config::CampaignConfig,
    params: &record::WorkloadParams,
    capture: &Capture,
    state: &CrashState,
    checks: &StateChecks,
) -> JudgedState {
    let t = Instant::now();
    let position = blocklog::crash_position(&capture.log, state);
    let writers = config.geometry().writers;
    let protocol = protocol_at(&capture.serial, &capture.promises, position, writers);
    let verdicts: Vec<(&'static str, verifier::Verdict)> = checks
        .results
        .iter()
        .map(|(name, check)| (*name, crate::trial::judge(config, params, &protocol, check)))
        .collect();
    let earliest = protocol_at(
        &capture.serial,
        &capture.promises,
        earliest_crash_position(state),
        writers,
    );
    let passed_at_earliest = crate::trial::judge(config, params, &earliest, &checks.results[0].1).passed;
    let summary = |v: &verifier::Verdict| (v.passed, v.violation_count, v.counts.lost, v.counts.torn);
    let disagreement = (verdicts.len() == 2 && summary(&verdicts[0].1) != summary(&verdicts[1].1)).then(|| {
        let text = verdicts
            .iter()
            .map(|(name, v)| {
                let (passed, violations, lost, torn) = summary(v);
                let first = v.violations.first().map(|f| f.reason.as_str()).unwrap_or("-");
                format!("{name}: passed={passed} violations={violations} lost={lost} torn={torn} first={first}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        match verdicts[0].1.passed != verdicts[1].1.passed {
            true => Disagreement::Verdict(text),
            false => Disagreement::Details(text),
        }
    });
    JudgedState {
        position,
        verdicts,
        passed_at_earliest,
        disagreement,
        verify_ms: ms_since(t),
    }
}

/// What a worker needs to build and check any state; shared, read-only.
struct CheckEnv<'a> {
    base_file: Arc<File>,
    log_file: Arc<File>,
    device_size_bytes: u64,
    log: &'a ParsedLog,
    base_disk: &'a Path,
    fsck: bool,
    ctx: &'a TrialContext<'a>,
    dir: &'a Path,
}

impl CheckEnv<'_> {
    fn empty_view(&self) -> Arc<dyn DiskView> {
        Arc::new(StateView::new(
            self.base_file.clone(),
            self.log_file.clone(),
            self.device_size_bytes,
            vec![],
        ))
    }
}

/// One state's check results, from each path asked for.
pub struct StateChecks {
    pub results: Vec<(&'static str, CheckResult)>,
    build_ms: u64,
    kernel_ms: u64,
    host_ms: u64,
    overlay_bytes: u64,
    /// Checker VMs booted again before this state (the last one retired).
    checker_restarts: u64,
}

impl StateChecks {
    pub fn new(results: Vec<(&'static str, CheckResult)>) -> StateChecks {
        StateChecks {
            results,
            build_ms: 0,
            kernel_ms: 0,
            host_ms: 0,
            overlay_bytes: 0,
            checker_restarts: 0,
        }
    }
}

/// A check worker: a checker VM (kernel path) and/or a scratch directory
/// (host path). Each runs on its own thread.
struct CheckWorker {
    index: usize,
    kernel: Option<KernelChecker>,
    /// Checker VMs this worker booted after the first.
    restarts: u32,
    host_scratch: Option<PathBuf>,
}

fn start_workers(env: &CheckEnv, count: usize, want_kernel: bool, want_host: bool) -> Result<Vec<CheckWorker>> {
    // Checker VMs boot in parallel: a boot is seconds of one core.
    let booted: Vec<Result<CheckWorker>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || -> Result<CheckWorker> {
                    let kernel = match want_kernel {
                        true => Some(KernelChecker::start(
                            env.ctx,
                            env.dir,
                            &format!("checker{i}"),
                            env.empty_view(),
                            env.fsck,
                        )?),
                        false => None,
                    };
                    let host_scratch = match want_host {
                        true => {
                            let scratch = env.dir.join(format!("host{i}"));
                            std::fs::create_dir_all(&scratch)?;
                            Some(scratch)
                        }
                        false => None,
                    };
                    Ok(CheckWorker {
                        index: i,
                        kernel,
                        restarts: 0,
                        host_scratch,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a checker thread panicked")))
            })
            .collect()
    });
    booted.into_iter().collect()
}

impl CheckWorker {
    fn check(&mut self, env: &CheckEnv, state: &CrashState, abort: &AtomicBool) -> Result<StateChecks> {
        let mut checks = StateChecks::new(Vec::new());
        if self.kernel.as_ref().is_some_and(|k| !k.is_usable()) {
            checks.checker_restarts = self.restart_kernel(env)?;
        }
        if let Some(checker) = self.kernel.as_mut() {
            let t = Instant::now();
            let extents = blocklog::overlay_extents(env.log, state);
            let view: Arc<dyn DiskView> = Arc::new(StateView::new(
                env.base_file.clone(),
                env.log_file.clone(),
                env.device_size_bytes,
                extents,
            ));
            checks.build_ms = ms_since(t);
            let t = Instant::now();
            checks.results.push(("kernel", checker.check(view, abort)?));
            checks.kernel_ms = ms_since(t);
            checks.overlay_bytes = checker.nbd().overlay_bytes();
        }
        if let Some(scratch) = &self.host_scratch {
            let t = Instant::now();
            checks.results.push((
                "host",
                host_check_ext4(
                    env.base_disk,
                    &env.log_file,
                    env.log,
                    state,
                    scratch,
                    env.fsck,
                    env.ctx.config.geometry().files,
                )?,
            ));
            checks.host_ms = ms_since(t);
        }
        Ok(checks)
    }

    /// Replaces a retired checker VM (its logs stay, under a new name for
    /// the next one). Bounded: a guest that dies on every state is a setup
    /// problem, not a finding per state.
    fn restart_kernel(&mut self, env: &CheckEnv) -> Result<u64> {
        self.restarts += 1;
        if let Some(old) = self.kernel.take() {
            old.stop()?;
        }
        anyhow::ensure!(
            self.restarts <= CHECKER_RESTARTS_MAX,
            "checker VM {} died, hung or could not unmount while recovering {} states in one trial: \
             see the checker console logs in {}",
            self.index,
            self.restarts,
            env.dir.display()
        );
        let name = format!("checker{}-restart{}", self.index, self.restarts);
        self.kernel = Some(KernelChecker::start(
            env.ctx,
            env.dir,
            &name,
            env.empty_view(),
            env.fsck,
        )?);
        Ok(1)
    }

    fn stop(self) -> Result<()> {
        if let Some(scratch) = &self.host_scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
        match self.kernel {
            Some(checker) => checker.stop(),
            None => Ok(()),
        }
    }
}

impl PowerLossRecord {
    fn add_state(
        &mut self,
        index: u64,
        state: &CrashState,
        position: u64,
        verdict: &verifier::Verdict,
        passed_at_earliest: bool,
    ) {
        self.states_checked += 1;
        if verdict.passed {
            self.states_passed += 1;
        } else {
            self.states_failed += 1;
            self.passed = false;
        }
        if !passed_at_earliest {
            self.states_failed_at_earliest_point += 1;
        }
        self.violation_count += verdict.violation_count;
        self.observation_count += verdict.observation_count;
        add_counts(&mut self.state_counts, &verdict.counts);
        for f in &verdict.violations {
            if self.violations.len() >= verifier::FINDINGS_MAX {
                break;
            }
            let campaign_dir = self
                .evidence_dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            self.violations.push(StateFinding {
                state: index,
                replay: format!(
                    "crashlab replay-state --campaign {} --trial {} --state {index}",
                    campaign_dir.display(),
                    self.run.trial
                ),
                kind: format!("{:?}", state.kind).to_lowercase(),
                prefix_entries: state.prefix_entries,
                crash_position: position,
                finding: f.clone(),
            });
        }
    }
}

/// Adds one state's counts to a sum over states.
pub fn add_counts(sum: &mut verifier::Counts, c: &verifier::Counts) {
    sum.begun += c.begun;
    sum.acked += c.acked;
    sum.in_flight += c.in_flight;
    sum.lost += c.lost;
    sum.torn += c.torn;
    sum.intact += c.intact;
    sum.in_flight_new += c.in_flight_new;
    sum.in_flight_old += c.in_flight_old;
}

#[cfg(test)]
mod tests {
    //! The judging point, ack placement and the protocol at a crash, on
    //! hand-built logs: the argument of ARCHITECTURE.md, one step a test.

    use super::*;
    use blocklog::testing::LogWriter;
    use record::layout::ack::{encode, AckRecord, READY_MARKER_INDEX};

    const SEED: u64 = 0x5eed;
    /// 64 data sectors, then the ack area.
    const AREA_SECTOR: u64 = 64;
    const DEVICE_BYTES: u64 = 128 * 512;

    fn ack_sector(ack_index: u64, seq: u64) -> Vec<u8> {
        encode(&AckRecord {
            ack_index,
            seq,
            slot: seq,
            seed: SEED,
        })
        .to_vec()
    }

    fn write_ready(w: &mut LogWriter) {
        w.write(AREA_SECTOR, &ack_sector(READY_MARKER_INDEX, 0));
    }

    fn write_ack(w: &mut LogWriter, ack_index: u64, seq: u64) {
        w.write(AREA_SECTOR + 1 + ack_index, &ack_sector(ack_index, seq));
    }

    /// What one MS_SYNC of record `seq` logs on ext4: data, flush, ack.
    fn record(w: &mut LogWriter, seq: u64) {
        w.write_fill(seq, 1, 1 + seq as u8).flush();
        write_ack(w, seq, seq);
    }

    fn serial(lines: &str) -> ProtocolLog {
        record::protocol::parse_log(lines).unwrap()
    }

    fn promises_of(w: &LogWriter) -> (ParsedLog, LoggedPromises) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, w.bytes()).unwrap();
        let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
        let promises = acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED).unwrap();
        (log, promises)
    }

    /// READY, then records 0..3 each synced and acked.
    fn three_records() -> LogWriter {
        let mut w = LogWriter::new(512);
        w.write_fill(40, 2, 9).flush(); // file creation, fsynced
        write_ready(&mut w);
        for seq in 0..3 {
            record(&mut w, seq);
        }
        w
    }

    const THREE_SERIAL: &str =
        "BOOTED workload\nREADY 8\nBEGIN 0 0\nACK 0 0\nBEGIN 1 1\nACK 1 1\nBEGIN 2 2\nACK 2 2\nDONE 3\n";

    #[test]
    fn acks_are_found_in_log_order() {
        let (log, promises) = promises_of(&three_records());
        // Entries: W F READY | W0 F ACK0 | W1 F ACK1 | W2 F ACK2.
        assert_eq!(log.entries.len(), 12);
        assert_eq!(promises.ready_entry, Some(2));
        let found: Vec<(u64, u64)> = promises.acks.iter().map(|a| (a.entry_index, a.seq)).collect();
        assert_eq!(found, vec![(5, 0), (8, 1), (11, 2)]);
    }

    #[test]
    fn ack_area_rejects_foreign_or_out_of_order_records() {
        let read = |w: &LogWriter| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            std::fs::write(&path, w.bytes()).unwrap();
            let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
            acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED)
        };
        // Acks of several writers arrive in any order of seq.
        let mut w = LogWriter::new(512);
        write_ready(&mut w);
        write_ack(&mut w, 1, 1);
        write_ack(&mut w, 0, 0);
        let promises = read(&w).unwrap();
        assert_eq!(promises.acks.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 0]);
        // An ack in another record's sector.
        let mut w = LogWriter::new(512);
        write_ready(&mut w);
        w.write(AREA_SECTOR + 1, &ack_sector(1, 1));
        let err = read(&w).unwrap_err();
        assert!(err.to_string().contains("is not one of this run's"), "{err}");
        // The same ack twice, or an ack before the ready marker.
        let mut w = LogWriter::new(512);
        write_ready(&mut w);
        write_ack(&mut w, 0, 0);
        write_ack(&mut w, 0, 0);
        assert!(read(&w).unwrap_err().to_string().contains("a second time"));
        let mut w = LogWriter::new(512);
        write_ack(&mut w, 0, 0);
        assert!(read(&w).unwrap_err().to_string().contains("before the ready marker"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // A write straddling the area's start: the filesystem wrote past its end.
        let mut w = LogWriter::new(512);
        w.write_fill(AREA_SECTOR - 1, 2, 1);
        std::fs::write(&path, w.bytes()).unwrap();
        let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
        let err = acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED).unwrap_err();
        assert!(err.to_string().contains("straddles"), "{err}");
    }

    #[test]
    fn the_protocol_at_a_crash_ends_before_the_first_act_not_yet_logged() {
        let (_, promises) = promises_of(&three_records());
        let serial = serial(THREE_SERIAL);
        let lines = |position| {
            protocol_at(&serial, &promises, position, 1)
                .events
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        // Before the ready marker: nothing was promised, nothing begun.
        assert_eq!(lines(2), "BOOTED workload");
        // Marker logged, no ack yet: record 0 is in flight.
        assert_eq!(lines(5), "BOOTED workload,READY 8,BEGIN 0 0");
        // Ack 0 logged: record 1 may have begun, not more.
        assert_eq!(lines(6), "BOOTED workload,READY 8,BEGIN 0 0,ACK 0 0,BEGIN 1 1");
        // Everything logged: the whole run, DONE included.
        assert_eq!(lines(12), THREE_SERIAL.trim_end().replace('\n', ","));
    }

    #[test]
    fn prefix_states_are_judged_with_the_acks_of_their_epoch() {
        let w = three_records();
        let (log, promises) = promises_of(&w);
        // The prefix up to record 1's flush (entries 0..8) is judged just
        // before the next flush (entry 10) completes: ack 1 (entry 8) had
        // been given, and the data it vouches for (entry 6) is in the prefix.
        let state = CrashState::prefix(8);
        assert_eq!(blocklog::crash_position(&log, &state), 10);
        assert_eq!(earliest_crash_position(&state), 8);
        let given = |position| {
            protocol_at(&serial(THREE_SERIAL), &promises, position, 1)
                .events
                .iter()
                .filter(|e| matches!(e, Event::Ack { .. }))
                .count()
        };
        assert_eq!(given(10), 2, "judged at the latest point: acks 0 and 1");
        assert_eq!(given(8), 1, "the earliest point misses ack 1");
    }

    #[test]
    fn a_hole_left_by_the_kill_ends_the_usable_log_without_failing_the_capture() {
        let mut bytes = three_records().bytes().to_vec();
        // A request whose entry was never written (zeros), then one that was.
        bytes.extend_from_slice(&[0u8; 1024]);
        let mut tail = LogWriter::new(512);
        write_ack(&mut tail, 3, 3);
        bytes.extend_from_slice(&tail.bytes()[512..]);
        let dir = tempfile::tempdir().unwrap();
        let (log_path, protocol_path, base) = (
            dir.path().join("log"),
            dir.path().join("proto"),
            dir.path().join("base"),
        );
        std::fs::write(&log_path, &bytes).unwrap();
        std::fs::write(
            &protocol_path,
            format!("{THREE_SERIAL}BEGIN 3 3\nACK 3 3\n").replace("DONE 3\n", ""),
        )
        .unwrap();
        File::create(&base).unwrap().set_len(DEVICE_BYTES).unwrap();
        let source = CaptureSource {
            log_path: &log_path,
            protocol_path: &protocol_path,
            base_disk: &base,
            ack_area_offset_bytes: AREA_SECTOR * 512,
            seed: SEED,
            device_bug: None,
        };
        let capture = read_capture(&source).unwrap();
        assert!(capture.log.stray_data_offset_bytes.is_some());
        assert_eq!(capture.promises.acks.len(), 3);
        assert_eq!(
            capture.acks_past_log_end, 1,
            "ACK 3 lies past the hole: counted, not judged"
        );

        // Without the hole, a missing ack is an incomplete capture.
        std::fs::write(&log_path, three_records().bytes()).unwrap();
        let err = read_capture(&source).err().unwrap();
        assert!(
            err.to_string()
                .contains("ACK 3 reached the channel but not the block log"),
            "{err}"
        );
    }

    #[test]
    fn a_ready_line_without_its_marker_is_an_incomplete_capture() {
        let mut w = LogWriter::new(512);
        w.write_fill(40, 2, 9).flush(); // no ready marker
        let (_, promises) = promises_of(&w);
        let err = check_acks_match(&serial("BOOTED workload\nREADY 8\n"), &promises, false).unwrap_err();
        assert!(err.to_string().contains("READY reached the channel"), "{err}");
        // A log that ends early may have lost it: judged up to its end.
        assert_eq!(check_acks_match(&serial("READY 8\n"), &promises, true).unwrap(), 0);
    }

    #[test]
    fn a_dropped_flush_is_judged_with_the_acks_it_let_through() {
        // With every flush of the log dropped (a device that ignores them),
        // the prefix before record 0 is judged at the log's end: all three
        // acks given, none of the records' data in it.
        let (log, _) = promises_of(&three_records());
        let (bad, effect) = blocklog::apply_device_bug(&log, "drop-flush:1".parse().unwrap(), &(AREA_SECTOR..128), 1);
        assert_eq!(effect.flushes_dropped, 4);
        let state = CrashState::prefix(0);
        assert_eq!(blocklog::crash_position(&bad, &state), bad.entries.len() as u64);
    }

    // ---------------------------------------------------------------
    // The sensitivity catalogue on hand-built logs: a "filesystem" that
    // keeps the data file in sectors 0.. of the disk, so a state's first
    // bytes are the file. Each planted bug's log pattern, planned, judged
    // at each state's crash point, must fail some state; the correct
    // pattern must fail none.

    const RECORD_BYTES: usize = 512;
    const RECORDS: u64 = 12;

    fn record_bytes(seq: u64) -> Vec<u8> {
        record::layout::encode_vec(&record::RecordHeader {
            record_size_bytes: RECORD_BYTES as u32,
            seq,
            slot: seq,
            seed: SEED,
        })
    }

    /// How a planted workload bug changes one record's log pattern.
    #[derive(Clone, Copy, PartialEq)]
    enum Pattern {
        Correct,
        AckBeforeSync,
        /// No data write and no flush for odd records (skip-sync,
        /// async-instead-of-sync: MS_ASYNC writes nothing back).
        SkipOdd,
        /// The sync writes the record before's sector, not this one.
        WrongRange,
    }

    fn workload_log(pattern: Pattern) -> (LogWriter, String) {
        let mut w = LogWriter::new(512);
        w.flush();
        write_ready(&mut w);
        let mut serial = format!("BOOTED workload\nREADY {RECORDS}\n");
        for seq in 0..RECORDS {
            serial += &format!("BEGIN {seq} {seq}\n");
            match pattern {
                Pattern::Correct => {
                    w.write(seq, &record_bytes(seq)).flush();
                    write_ack(&mut w, seq, seq);
                }
                Pattern::AckBeforeSync => {
                    write_ack(&mut w, seq, seq);
                    w.write(seq, &record_bytes(seq)).flush();
                }
                Pattern::SkipOdd if seq % 2 == 1 => write_ack(&mut w, seq, seq),
                Pattern::SkipOdd => {
                    w.write(seq, &record_bytes(seq)).flush();
                    write_ack(&mut w, seq, seq);
                }
                Pattern::WrongRange => {
                    if seq > 0 {
                        w.write(seq - 1, &record_bytes(seq - 1));
                    }
                    w.flush();
                    write_ack(&mut w, seq, seq);
                }
            }
            serial += &format!("ACK {seq} {seq}\n");
        }
        (w, serial + &format!("DONE {RECORDS}\n"))
    }

    /// Plans every state of the log (after the device bug, if any), judges
    /// each on its file bytes at its crash point; returns (failed, total).
    fn judge_all(w: &LogWriter, serial_text: &str, device_bug: Option<&str>) -> (usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let (log_path, protocol_path, base) = (
            dir.path().join("log"),
            dir.path().join("proto"),
            dir.path().join("base"),
        );
        std::fs::write(&log_path, w.bytes()).unwrap();
        std::fs::write(&protocol_path, serial_text).unwrap();
        File::create(&base).unwrap().set_len(DEVICE_BYTES).unwrap();
        let capture = read_capture(&CaptureSource {
            log_path: &log_path,
            protocol_path: &protocol_path,
            base_disk: &base,
            ack_area_offset_bytes: AREA_SECTOR * 512,
            seed: SEED,
            device_bug: device_bug.map(|b| b.parse().unwrap()),
        })
        .unwrap();
        let options = blocklog::PlanOptions {
            seed: 3,
            budget: 400,
            torn: false,
            ignored_sectors: ack_area_sectors(AREA_SECTOR * 512, DEVICE_BYTES),
        };
        let states = blocklog::plan_states(&capture.log, &options);
        let params = record::WorkloadParams {
            mode: record::DurabilityMode::MsSync,
            record_size_bytes: RECORD_BYTES as u32,
            file_size_bytes: RECORD_BYTES as u64 * RECORDS,
            records: RECORDS,
            seed: SEED,
            planted_bug: None,
            hold_after_acks: None,
            ack_area_offset_bytes: Some(AREA_SECTOR * 512),
            pattern: record::Pattern::Records,
            io_errors: false,
        };
        let failed = states
            .iter()
            .filter(|state| {
                let mut image = vec![0u8; DEVICE_BYTES as usize];
                blocklog::apply_state(w.bytes(), &capture.log, state, &mut image).unwrap();
                let position = blocklog::crash_position(&capture.log, state);
                let protocol = protocol_at(&capture.serial, &capture.promises, position, 1);
                let file = &image[..params.file_size_bytes as usize];
                let evidence = verifier::Evidence {
                    params: &params,
                    protocol: &protocol,
                    recovered: verifier::Recovered {
                        recovery_failure: None,
                        mount_rc: 0,
                        files: vec![verifier::FileFound::Read(file)],
                        fsck: None,
                    },
                };
                let verdict = verifier::verify(&evidence, verifier::Profile::Linux);
                if !verdict.passed {
                    assert_eq!(verdict.violations[0].rule, verifier::Rule::AckedRecordLost, "{state:?}");
                }
                !verdict.passed
            })
            .count();
        (failed, states.len())
    }

    #[test]
    fn the_correct_pattern_fails_no_state() {
        let (w, serial) = workload_log(Pattern::Correct);
        let (failed, total) = judge_all(&w, &serial, None);
        assert!(total > RECORDS as usize, "{total}");
        assert_eq!(failed, 0);
    }

    #[test]
    fn each_planted_workload_bug_fails_some_state() {
        for pattern in [Pattern::AckBeforeSync, Pattern::SkipOdd, Pattern::WrongRange] {
            let (w, serial) = workload_log(pattern);
            let (failed, total) = judge_all(&w, &serial, None);
            assert!(failed > 0, "caught in {failed} of {total} states");
        }
    }

    #[test]
    fn each_planted_device_bug_fails_some_state() {
        let (w, serial) = workload_log(Pattern::Correct);
        for bug in ["drop-flush:2", "reorder-across-flush:2"] {
            let (failed, total) = judge_all(&w, &serial, Some(bug));
            assert!(failed > 0, "{bug}: caught in {failed} of {total} states");
        }
    }

    #[test]
    fn a_device_without_flushes_loses_acked_records_in_most_states() {
        // barrier=0 as the log shows it: no flush at all.
        let (w, serial) = workload_log(Pattern::Correct);
        let (failed, total) = judge_all(&w, &serial, Some("drop-flush:1"));
        assert!(failed * 2 > total, "caught in {failed} of {total} states");
    }
}
