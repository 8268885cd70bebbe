//! The power-loss crash model.
//!
//! 1. **Capture**: one workload boot with the test disk behind QEMU's
//!    `blklogwrites` driver. Every write and flush the guest issues lands in a
//!    dm-log-writes log; every ack is also an O_DIRECT sector write into a
//!    reserved area past the filesystem (see `workload/src/ack_log.rs`), so
//!    its place in the log is exact. The run may be killed at the trial's
//!    seeded crash point; the log then ends there.
//! 2. **States**: `blocklog` plans crash states from the log: a prefix at
//!    flush boundaries, seeded random subsets of the open epoch, optional
//!    torn writes, deduplicated by persisted contents.
//! 3. **Verification**: each state is shown, copy-on-write, to a long-lived
//!    checker VM through the controller's NBD server (the guest kernel's own
//!    recovery, no reboot per state), or, for ext4, checked on the host
//!    (e2fsck replays the journal, debugfs dumps the file).
//! 4. **Evidence per state**: the serial protocol log with only the acks
//!    whose log entry comes before the state's crash position.

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

use crate::nbd::{DiskView, NbdHandle, NbdLimits, NbdServer};
use crate::qemu::{Drive, VmSpec};
use crate::trial::{CheckReport, CheckResult, ExportDisk, FsckResult, TrialContext};
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
/// `[area_start, area_end)`, in log order, checking that the acks are
/// consecutive and of this run.
pub fn acks_in_log(
    log: &ParsedLog,
    log_file: &File,
    area_start_bytes: u64,
    area_end_bytes: u64,
    seed: u64,
) -> Result<LoggedPromises> {
    let mut acks = Vec::new();
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
        for sector in buf.chunks(ACK_SIZE_BYTES) {
            let Some(record) = ack::decode(sector) else {
                bail!("log entry {} in the ack area holds no valid ack record", entry.index);
            };
            if record.ack_index == ack::READY_MARKER_INDEX && record.seed == seed && ready_entry.is_none() {
                ready_entry = Some(entry.index);
                continue;
            }
            if ready_entry.is_none() || record.seed != seed || record.ack_index != acks.len() as u64 {
                bail!(
                    "ack record {:?} in log entry {} is not the run's ack number {}",
                    record,
                    entry.index,
                    acks.len()
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

/// The log position a state's crash happened at, at the earliest: just past
/// the last entry it includes. Acks logged before it had been given.
pub fn crash_position(state: &CrashState) -> u64 {
    let last_extra = state.extra_writes.iter().max().map(|&i| i + 1).unwrap_or(0);
    let torn = state.torn.as_ref().map(|t| t.entry + 1).unwrap_or(0);
    state.prefix_entries.max(last_extra).max(torn)
}

/// The protocol as the application knew it at the crash: before the ready
/// marker, nothing was promised (no READY, no record begun); after it,
/// every line of the serial log but only the acks whose log entry precedes
/// `position`. Keeping every BEGIN is safe: a record begun after the crash
/// has no data in the state, and a begun record only widens what a slot
/// may hold.
pub fn protocol_at(serial: &ProtocolLog, promises: &LoggedPromises, position: u64) -> ProtocolLog {
    if promises.ready_entry.is_none_or(|r| r >= position) {
        let events = serial
            .events
            .iter()
            .filter(|e| matches!(e, Event::Booted { .. }))
            .cloned()
            .collect();
        return ProtocolLog {
            events,
            truncated_tail: None,
        };
    }
    let given: std::collections::HashSet<u64> = promises
        .acks
        .iter()
        .filter(|a| a.entry_index < position)
        .map(|a| a.seq)
        .collect();
    let events = serial
        .events
        .iter()
        .filter(|e| match e {
            Event::Ack { seq, .. } => given.contains(seq),
            _ => true,
        })
        .cloned()
        .collect();
    ProtocolLog {
        events,
        truncated_tail: None,
    }
}

/// Every ACK the host saw on the channel must be in the log: the workload
/// wrote it there (O_DIRECT, completed) before printing the line.
pub fn check_acks_match(serial: &ProtocolLog, acks: &[AckPosition]) -> Result<()> {
    let logged: std::collections::HashSet<u64> = acks.iter().map(|a| a.seq).collect();
    for e in &serial.events {
        if let Event::Ack { seq, .. } = e {
            if !logged.contains(seq) {
                bail!("ACK {seq} reached the channel but not the block log: the capture is incomplete");
            }
        }
    }
    Ok(())
}

/// A crash state as a read-only disk: the pristine base image with the
/// state's winning log extents on top. Nothing is copied: reads go to the
/// base or the log file.
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
            self.log
                .read_exact_at(dst, e.log_offset_bytes + (from - e.device_offset_bytes))?;
        }
        Ok(())
    }
}

/// The long-lived checker VM: boots once, then checks one state per
/// round trip ("CHECK" → MOUNT, FILE/NOFILE, FSCK, CHECKED).
pub struct KernelChecker {
    session: Option<VmSession>,
    server: Option<NbdServer>,
    handle: NbdHandle,
    export: ExportDisk,
    state_timeout_ms: u64,
    _socket_dir: tempfile::TempDir,
}

pub const STATE_TIMEOUT_MS: u64 = 60_000;
/// Guest writes held per state (journal recovery, superblock updates).
pub const OVERLAY_MAX_BYTES: u64 = 256 << 20;

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
        let export = ExportDisk::create(dir.join(format!("{name}-export.img")), config.file_size_bytes)?;
        let files = RunFiles::in_dir(dir, name);
        let spec = VmSpec {
            images: ctx.images.clone(),
            accel: ctx.accel,
            memory_mib: config.guest_memory_mib,
            kernel_args: vec![
                "crashlab.role=checker".into(),
                format!("crashlab.fs={}", config.fs.name()),
                format!("crashlab.mount_opts={}", config.mount_opts),
                format!("crashlab.fsck={}", u8::from(fsck)),
            ],
            drives: vec![
                Drive::Nbd {
                    socket: socket.clone(),
                    export: "state".into(),
                },
                Drive::Raw(export.path.clone()),
            ],
            console_log: files.console_log.clone(),
            channel_socket: PathBuf::new(),
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
            state_timeout_ms: STATE_TIMEOUT_MS.min(config.stall_timeout_ms.max(1)),
            _socket_dir: socket_dir,
        })
    }

    pub fn nbd(&self) -> &NbdHandle {
        &self.handle
    }

    /// Shows `view` to the guest and waits for its report. `stop` (Ctrl-C, or
    /// another worker's failure) ends the wait.
    pub fn check(&mut self, view: Arc<dyn DiskView>, stop: &AtomicBool) -> Result<CheckResult> {
        self.handle.set_view(view);
        let session = self.session.as_mut().expect("checker is running");
        session.send_line("CHECK")?;
        let start = Instant::now();
        let mut report = CheckReport::default();
        while !report.checked {
            anyhow::ensure!(!stop.load(Ordering::SeqCst), vm::Interrupted);
            if start.elapsed() > Duration::from_millis(self.state_timeout_ms) {
                bail!(
                    "the checker VM did not answer within {} ms: a hung guest",
                    self.state_timeout_ms
                );
            }
            match session.next(Duration::from_millis(2))? {
                Step::Event(event) => report.observe(&event),
                Step::Exited(code) => bail!("the checker VM exited (status {code:?}) mid-check: a guest panic?"),
                Step::Tick => {}
            }
        }
        report
            .finish(&self.export)?
            .context("the checker reported CHECKED without MOUNT")
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(mut session) = self.session.take() {
            let _ = session.send_line("QUIT");
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
/// would do), check it read-only, and dump the file with debugfs.
pub fn host_check_ext4(
    base: &Path,
    log_file: &File,
    log: &ParsedLog,
    state: &CrashState,
    scratch_dir: &Path,
    fsck: bool,
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
            mount_rc: replay_rc,
            file: None,
            fsck: None,
        });
    }
    // Like the kernel path: the read-only fsck only when asked for.
    let fsck = match fsck {
        true => Some(Command::new("e2fsck").args(["-f", "-n"]).arg(&image).output()?),
        false => None,
    };
    let out = scratch_dir.join("host-state.dat");
    let _ = std::fs::remove_file(&out);
    let dump = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {} {}", crate::trial::DATA_FILE_PATH, out.display()))
        .arg(&image)
        .output()
        .context("cannot run debugfs")?;
    let file = if out.exists() && !String::from_utf8_lossy(&dump.stderr).contains("not found") {
        Some(std::fs::read(&out)?)
    } else {
        None
    };
    let _ = std::fs::remove_file(&out);
    Ok(CheckResult {
        mount_rc: 0,
        file,
        fsck: fsck.map(|f| FsckResult {
            tool: "e2fsck".into(),
            rc: f.status.code().unwrap_or(-1),
        }),
    })
}

/// A captured run, read back: the parsed log, the serial protocol, and the
/// promises placed in the log.
pub struct Capture {
    pub log: ParsedLog,
    pub log_file: Arc<File>,
    pub serial: ProtocolLog,
    pub promises: LoggedPromises,
    pub device_size_bytes: u64,
}

pub fn read_capture(
    log_path: &Path,
    protocol_path: &Path,
    base_disk: &Path,
    ack_area_offset_bytes: u64,
    seed: u64,
) -> Result<Capture> {
    let serial = record::protocol::parse_log(
        &std::fs::read_to_string(protocol_path).with_context(|| format!("cannot read {}", protocol_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", protocol_path.display()))?;
    let device_size_bytes = std::fs::metadata(base_disk)
        .with_context(|| format!("cannot read {}", base_disk.display()))?
        .len();
    let log = blocklog::read_log_file(log_path, device_size_bytes)
        .with_context(|| format!("block-write log {} is unusable", log_path.display()))?;
    let log_file = Arc::new(File::open(log_path)?);
    let promises = acks_in_log(&log, &log_file, ack_area_offset_bytes, device_size_bytes, seed)?;
    check_acks_match(&serial, &promises.acks)?;
    Ok(Capture {
        log,
        log_file,
        serial,
        promises,
        device_size_bytes,
    })
}

/// One power-loss trial: what it captured, the states it checked, and
/// their verdicts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PowerLossRecord {
    #[serde(flatten)]
    pub run: crate::trial::WorkloadRun,
    pub log: LogFacts,
    pub states_planned: u64,
    pub states_checked: u64,
    pub states_passed: u64,
    pub states_failed: u64,
    /// With `--checker both`: states the kernel and host paths judged
    /// differently (one passed, the other failed).
    pub checker_disagreements: u64,
    /// With `--checker both`: failing states where the two paths agree on
    /// the failure but not on its details (violations, lost or torn counts).
    pub checker_detail_differences: u64,
    pub passed: bool,
    pub counts: verifier::Counts,
    pub violation_count: u64,
    /// The first violations, each with its state.
    pub violations: Vec<StateFinding>,
    pub observation_count: u64,
    /// Summed over the check workers, which run in parallel.
    pub timing_ms: Timing,
    pub overlay_peak_bytes: u64,
    pub check_workers: u64,
    pub rerun: String,
    pub evidence_dir: PathBuf,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogFacts {
    pub entries: u64,
    pub writes: u64,
    pub flushes: u64,
    pub acks: u64,
    pub log_bytes: u64,
    /// The log ended mid-entry (QEMU killed while logging).
    pub truncated: bool,
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

/// Where the time goes, summed over the trial's states.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timing {
    pub capture: u64,
    pub parse: u64,
    pub plan: u64,
    /// Building views (extents) or host images.
    pub build: u64,
    /// Kernel path: NBD transfer + mount + copy out, one round trip a state.
    pub kernel_check: u64,
    /// Host path: e2fsck + debugfs.
    pub host_check: u64,
    pub verify: u64,
    pub checker_boot: u64,
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
    pub crash_position: u64,
    pub acked: u64,
    pub checker: &'static str,
    pub passed: bool,
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

/// Plans the trial's states: every flush-boundary prefix (evenly thinned if
/// they alone would exceed half the budget), then seeded random subsets of
/// open epochs up to the budget, skipping states with the same persisted
/// contents.
pub fn plan_states(log: &ParsedLog, seed: u64, budget: usize, torn: bool) -> Vec<CrashState> {
    let mut prefixes = blocklog::prefix_states(log);
    let prefix_cap = (budget / 2).max(1);
    if prefixes.len() > prefix_cap {
        let step = prefixes.len() as f64 / prefix_cap as f64;
        prefixes = (0..prefix_cap)
            .map(|i| prefixes[(i as f64 * step) as usize].clone())
            .collect();
    }
    let mut seen = std::collections::HashSet::new();
    let mut states = Vec::with_capacity(budget);
    for s in prefixes {
        if seen.insert(blocklog::state_key(log, &s)) {
            states.push(s);
        }
    }
    let random_budget = budget.saturating_sub(states.len());
    for s in blocklog::random_states(log, seed, random_budget + random_budget / 4, torn) {
        if states.len() >= budget {
            break;
        }
        if seen.insert(blocklog::state_key(log, &s)) {
            states.push(s);
        }
    }
    states
}

pub struct PowerLossContext<'a> {
    pub trial: &'a TrialContext<'a>,
    /// Pristine formatted disk, filesystem + ack area.
    pub base_disk: &'a Path,
    pub ack_area_offset_bytes: u64,
    pub state_budget: usize,
}

pub fn run_powerloss_trial(
    pctx: &PowerLossContext,
    plan: &crate::plan::TrialPlan,
    dir: &Path,
    mut on_state: impl FnMut(&StateLine) -> Result<()>,
) -> Result<PowerLossRecord> {
    let ctx = pctx.trial;
    let config = ctx.config;
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
    let capture = read_capture(
        &log_path,
        &files.protocol_log,
        pctx.base_disk,
        pctx.ack_area_offset_bytes,
        params.seed,
    )?;
    timing.parse = ms_since(t);
    let Capture {
        log,
        log_file,
        serial,
        promises: acks,
        device_size_bytes,
    } = capture;
    let log_facts = LogFacts {
        entries: log.entries.len() as u64,
        writes: log.entries.iter().filter(|e| e.is_data_write()).count() as u64,
        flushes: log.entries.iter().filter(|e| e.flags.is_flush()).count() as u64,
        acks: acks.acks.len() as u64,
        log_bytes: std::fs::metadata(&log_path)?.len(),
        truncated: log.truncated.is_some(),
    };

    // 3. Plan the states.
    let t = Instant::now();
    let states = plan_states(&log, plan.workload_seed, pctx.state_budget, config.torn_writes);
    timing.plan = ms_since(t);

    // 4. Check them: `check_workers` workers in parallel (under TCG a checker
    // VM keeps one core busy), results taken back and judged in state order.
    let env = CheckEnv {
        base_file: Arc::new(File::open(pctx.base_disk)?),
        log_file: log_file.clone(),
        device_size_bytes,
        log: &log,
        base_disk: pctx.base_disk,
        fsck: config.fsck_states,
    };
    let want_kernel = config.checker != crate::config::Checker::Host;
    let want_host = config.checker != crate::config::Checker::Kernel;
    let workers_n = (config.check_workers as usize).clamp(1, states.len().max(1));
    let t = Instant::now();
    let mut workers = start_workers(ctx, dir, &env, workers_n, want_kernel, want_host)?;
    timing.checker_boot = ms_since(t);
    let mut record = PowerLossRecord {
        run,
        log: log_facts,
        states_planned: states.len() as u64,
        states_checked: 0,
        states_passed: 0,
        states_failed: 0,
        checker_disagreements: 0,
        checker_detail_differences: 0,
        passed: true,
        counts: verifier::Counts::default(),
        violation_count: 0,
        violations: Vec::new(),
        observation_count: 0,
        timing_ms: timing,
        overlay_peak_bytes: 0,
        check_workers: workers_n as u64,
        rerun: format!("{} --only-trial={}", ctx.rerun_command, plan.trial),
        evidence_dir: dir.to_path_buf(),
    };
    let abort = AtomicBool::new(false);
    let next_state = AtomicUsize::new(0);
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
                let position = crash_position(state);
                let protocol = protocol_at(&serial, &acks, position);
                let t = Instant::now();
                let verdicts: Vec<(&'static str, verifier::Verdict)> = checks
                    .results
                    .iter()
                    .map(|(name, check)| (*name, crate::trial::judge(config, &params, &protocol, check)))
                    .collect();
                record.timing_ms.verify += ms_since(t);
                record.timing_ms.build += checks.build_ms;
                record.timing_ms.kernel_check += checks.kernel_ms;
                record.timing_ms.host_check += checks.host_ms;
                record.overlay_peak_bytes = record.overlay_peak_bytes.max(checks.overlay_bytes);
                let judged = |v: &verifier::Verdict| (v.passed, v.violation_count, v.counts.lost, v.counts.torn);
                let disagreement = (verdicts.len() == 2 && judged(&verdicts[0].1) != judged(&verdicts[1].1)).then(|| {
                    verdicts
                        .iter()
                        .map(|(name, v)| {
                            let (passed, violations, lost, torn) = judged(v);
                            let first = v.violations.first().map(|f| f.reason.as_str()).unwrap_or("-");
                            format!("{name}: passed={passed} violations={violations} lost={lost} torn={torn} first={first}")
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                if disagreement.is_some() {
                    // Pass/fail must agree. On a filesystem the crash left
                    // broken, the kernel and e2fsprogs may read different
                    // wreckage (a rejected inode vs an empty file): counted
                    // apart, with both readings in states.jsonl.
                    if verdicts[0].1.passed != verdicts[1].1.passed {
                        record.checker_disagreements += 1;
                    } else {
                        record.checker_detail_differences += 1;
                    }
                }
                let (checker_name, verdict) = &verdicts[0];
                record.add_state(next_out as u64, state, position, verdict);
                let line = StateLine {
                    trial: plan.trial,
                    state: next_out as u64,
                    kind: format!("{:?}", state.kind).to_lowercase(),
                    prefix_entries: state.prefix_entries,
                    extra_writes: state.extra_writes.len(),
                    torn: state.torn.is_some(),
                    crash_position: position,
                    acked: verdict.counts.acked,
                    checker: checker_name,
                    passed: verdicts.iter().all(|(_, v)| v.passed),
                    violation_count: verdict.violation_count,
                    lost: verdict.counts.lost,
                    torn_records: verdict.counts.torn,
                    first_violation: verdict.violations.first().cloned(),
                    disagreement,
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

/// What a worker needs to build and check any state; shared, read-only.
struct CheckEnv<'a> {
    base_file: Arc<File>,
    log_file: Arc<File>,
    device_size_bytes: u64,
    log: &'a ParsedLog,
    base_disk: &'a Path,
    fsck: bool,
}

/// One state's check results, from each path asked for.
struct StateChecks {
    results: Vec<(&'static str, CheckResult)>,
    build_ms: u64,
    kernel_ms: u64,
    host_ms: u64,
    overlay_bytes: u64,
}

/// A check worker: a checker VM (kernel path) and/or a scratch directory
/// (host path). Each runs on its own thread.
struct CheckWorker {
    kernel: Option<KernelChecker>,
    host_scratch: Option<PathBuf>,
}

fn start_workers(
    ctx: &TrialContext,
    dir: &Path,
    env: &CheckEnv,
    count: usize,
    want_kernel: bool,
    want_host: bool,
) -> Result<Vec<CheckWorker>> {
    // Checker VMs boot in parallel: a boot is seconds of one core.
    let booted: Vec<Result<CheckWorker>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || -> Result<CheckWorker> {
                    let kernel = match want_kernel {
                        true => {
                            let initial: Arc<dyn DiskView> = Arc::new(StateView::new(
                                env.base_file.clone(),
                                env.log_file.clone(),
                                env.device_size_bytes,
                                vec![],
                            ));
                            Some(KernelChecker::start(
                                ctx,
                                dir,
                                &format!("checker{i}"),
                                initial,
                                env.fsck,
                            )?)
                        }
                        false => None,
                    };
                    let host_scratch = match want_host {
                        true => {
                            let scratch = dir.join(format!("host{i}"));
                            std::fs::create_dir_all(&scratch)?;
                            Some(scratch)
                        }
                        false => None,
                    };
                    Ok(CheckWorker { kernel, host_scratch })
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
        let mut checks = StateChecks {
            results: Vec::new(),
            build_ms: 0,
            kernel_ms: 0,
            host_ms: 0,
            overlay_bytes: 0,
        };
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
                host_check_ext4(env.base_disk, &env.log_file, env.log, state, scratch, env.fsck)?,
            ));
            checks.host_ms = ms_since(t);
        }
        Ok(checks)
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
    fn add_state(&mut self, index: u64, state: &CrashState, position: u64, verdict: &verifier::Verdict) {
        self.states_checked += 1;
        if verdict.passed {
            self.states_passed += 1;
        } else {
            self.states_failed += 1;
            self.passed = false;
        }
        self.violation_count += verdict.violation_count;
        self.observation_count += verdict.observation_count;
        let c = &verdict.counts;
        self.counts.acked = self.counts.acked.max(c.acked);
        self.counts.begun = self.counts.begun.max(c.begun);
        self.counts.in_flight = self.counts.in_flight.max(c.in_flight);
        self.counts.lost += c.lost;
        self.counts.torn += c.torn;
        self.counts.intact += c.intact;
        self.counts.in_flight_new += c.in_flight_new;
        self.counts.in_flight_old += c.in_flight_old;
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
