//! Stage 4, kernel path: the long-lived checker VM. The guest kernel
//! recovers each state (mount, the filesystem's own log replay), reports
//! what it found, and unmounts; the state comes over NBD, copy-on-write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nbd::{DiskView, NbdHandle, NbdLimits, NbdServer};
use record::Event;

use crate::evidence::{CheckReport, CheckResult, ExportDisk};
use crate::workload_boot::TrialContext;
use config::FileRead;
use machine::qemu::{Drive, VmSpec};
use machine::vm::{self, Limits, RunFiles, Step, VmSession};

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
    /// What the next check prefetches: the runs the last one read.
    prefetch: Vec<(u64, u64)>,
    /// The filesystem's block size, where a prefetch helps (ext4).
    prefetch_block_bytes: Option<u32>,
    usable: bool,
    _socket_dir: tempfile::TempDir,
}

/// Prefetch runs a check asks for at most (one serial line carries them).
pub const PREFETCH_RUNS_MAX: usize = 32;
/// Gaps up to this size between two ranges the last recovery read are read
/// too: under TCG a request costs more than 256 KiB of bytes.
pub const PREFETCH_GAP_MAX_BYTES: u64 = 256 << 10;
/// Bytes a check asks the guest to prefetch at most.
pub const PREFETCH_BYTES_MAX: u64 = 32 << 20;

pub const STATE_TIMEOUT_MS: u64 = 60_000;
/// Guest writes held per state (journal recovery, superblock updates).
pub const OVERLAY_MAX_BYTES: u64 = 256 << 20;
/// Checker VMs a worker may boot again in one trial after one died
/// recovering a state; past that the trial stops with an error.
pub const CHECKER_RESTARTS_MAX: u32 = 16;

impl KernelChecker {
    /// Serves `initial` over NBD and boots a checker VM on it, in `dir`
    /// (its files named after `name`); returns once the guest has booted.
    pub fn start(
        ctx: &TrialContext,
        dir: &Path,
        name: &str,
        initial: Arc<dyn DiskView>,
        fsck: bool,
    ) -> Result<KernelChecker> {
        let config = ctx.config;
        let socket_dir = machine::lifetime::temp_dir("crashlab-nbd-", None)?;
        let socket = socket_dir.path().join("nbd");
        let limits = NbdLimits {
            overlay_max_bytes: OVERLAY_MAX_BYTES,
            request_max_bytes: 32 << 20,
        };
        let (server, handle) = NbdServer::start(&socket, "state", initial, limits)?;
        let export = ExportDisk::create(
            dir.join(format!("{name}-export.img")),
            config.file_size_bytes,
            config.data_files(),
        )?;
        let files = RunFiles::in_dir(dir, name);
        let spec = checker_spec(ctx, fsck, &socket, &export, &files);
        let limits = Limits {
            boot_timeout_ms: config.boot_timeout_ms,
            stall_timeout_ms: config.stall_timeout_ms,
            total_timeout_ms: u64::MAX,
        };
        let mut session = match VmSession::start(spec, &files, limits, ctx.interrupt)? {
            Ok(s) => s,
            Err(outcome) => return Err(vm::boot_failure("checker VM did not start", outcome, &files)),
        };
        wait_booted(&mut session, ctx, &files)?;
        Ok(KernelChecker {
            session: Some(session),
            server: Some(server),
            handle,
            export,
            files,
            state_timeout_ms: STATE_TIMEOUT_MS.min(config.stall_timeout_ms.max(1)),
            nonce: 0,
            prefetch: Vec::new(),
            prefetch_block_bytes: match config.fs {
                config::Filesystem::Ext4 => ext4_block_bytes(ctx.base_disk),
                _ => None,
            },
            usable: true,
            _socket_dir: socket_dir,
        })
    }

    /// States this checker was asked to check so far.
    pub fn checks_done(&self) -> u64 {
        self.nonce
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
    /// How long one state may take; a retry of a state that timed out is
    /// given longer (`check::TIMEOUT_RETRY_FACTOR`).
    pub fn state_timeout_ms(&self) -> u64 {
        self.state_timeout_ms
    }

    pub fn set_state_timeout_ms(&mut self, timeout_ms: u64) {
        self.state_timeout_ms = timeout_ms;
    }

    pub fn check(&mut self, view: Arc<dyn DiskView>, read: FileRead, stop: &AtomicBool) -> Result<CheckResult> {
        assert!(self.usable, "a retired checker is not asked again");
        self.handle.set_view(view);
        self.nonce += 1;
        let nonce = self.nonce;
        let session = self.session.as_mut().expect("checker is running");
        let how = match read {
            FileRead::Extents => "extents",
            FileRead::Copy => "copy",
            FileRead::Both => "both",
        };
        let prefetch = match (self.prefetch_block_bytes, self.prefetch.is_empty()) {
            (Some(block_bytes), false) => {
                let runs: Vec<String> = self.prefetch.iter().map(|(o, l)| format!("{o}+{l}")).collect();
                format!(" {block_bytes} {}", runs.join(","))
            }
            _ => String::new(),
        };
        session.send_line(&format!("CHECK {nonce} {how}{prefetch}"))?;
        let start = Instant::now();
        let mut report = CheckReport::default();
        while report.checked.is_none() {
            anyhow::ensure!(!stop.load(Ordering::SeqCst), vm::Interrupted);
            if start.elapsed() > Duration::from_millis(self.state_timeout_ms) {
                self.usable = false;
                return Ok(CheckResult {
                    timed_out: true,
                    ..CheckResult::recovery_failed(
                        format!(
                            "the checker VM did not finish recovering the state within {} ms: a hung mount or \
                             read? console {}:\n{}",
                            self.state_timeout_ms,
                            self.files.console_log.display(),
                            vm::tail_of(&self.files.console_log, 8)
                        ),
                        self.export.files as usize,
                    )
                });
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
        if self.prefetch_block_bytes.is_some() {
            self.prefetch = prefetch_runs(&self.handle.take_reads());
        }
        // The guest is idle now (it said CHECKED): the export holds exactly
        // what its recovery left.
        let handle = &self.handle;
        let disk = |offset_bytes: u64, buf: &mut [u8]| handle.read_at(offset_bytes, buf);
        report
            .finish(&self.export, nonce, Some(&disk))?
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

/// The checker VM: the state over NBD at `socket` as its first disk, the
/// export disk it copies the data files out to as its second, and the
/// kernel arguments that make the guest a checker.
fn checker_spec(ctx: &TrialContext, fsck: bool, socket: &Path, export: &ExportDisk, files: &RunFiles) -> VmSpec {
    let config = ctx.config;
    VmSpec {
        images: ctx.images.clone(),
        accel: ctx.accel,
        memory_mib: config.guest_memory_mib,
        kernel_args: crate::workload_boot::base_kernel_args(config, "checker")
            .into_iter()
            .chain([format!("crashlab.fsck={}", u8::from(fsck))])
            .chain(export.kernel_args())
            .collect(),
        drives: vec![
            Drive::Nbd {
                socket: socket.to_path_buf(),
                export: "state".into(),
            },
            Drive::Raw(export.path.clone()),
        ],
        console_log: files.console_log.clone(),
        channel_socket: PathBuf::new(),
        qmp_socket: PathBuf::new(),
        trace_log: None,
    }
}

/// Waits for the checker guest's BOOTED: from then on it holds its channel
/// open and answers checks. Ctrl-C, the boot timeout and the guest exiting
/// end the wait with an error.
fn wait_booted(session: &mut VmSession, ctx: &TrialContext, files: &RunFiles) -> Result<()> {
    let start = Instant::now();
    loop {
        anyhow::ensure!(
            !ctx.interrupt.load(std::sync::atomic::Ordering::SeqCst),
            vm::Interrupted
        );
        if start.elapsed() > Duration::from_millis(ctx.config.boot_timeout_ms) {
            return Err(vm::boot_failure(
                "checker VM did not boot",
                vm::VmOutcome::BootTimeout,
                files,
            ));
        }
        match session.next(Duration::from_millis(20))? {
            Step::Event(Event::Booted { .. }) => return Ok(()),
            Step::Exited(code) => {
                return Err(vm::boot_failure(
                    "checker VM exited",
                    vm::VmOutcome::Exited {
                        code: code.unwrap_or(-1),
                    },
                    files,
                ))
            }
            _ => {}
        }
    }
}

/// The block size of the ext4 filesystem in `image` (its superblock), if it
/// is one.
fn ext4_block_bytes(image: &Path) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 1024];
    std::fs::File::open(image).ok()?.read_exact_at(&mut sb, 1024).ok()?;
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    let log = u32::from_le_bytes(sb[0x18..0x1c].try_into().ok()?);
    (magic == 0xef53 && log <= 6).then(|| 1024 << log)
}

/// The ranges to prefetch, from the ranges a recovery read: sorted, merged
/// across gaps up to [`PREFETCH_GAP_MAX_BYTES`], then across the smallest
/// gaps until at most [`PREFETCH_RUNS_MAX`] runs are left, cut at
/// [`PREFETCH_BYTES_MAX`] bytes in all (the lowest offsets kept: superblocks
/// and group descriptors sit there).
pub fn prefetch_runs(reads: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = reads.iter().copied().filter(|&(_, len)| len > 0).collect();
    sorted.sort_unstable();
    // (start, end) runs.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (offset, len) in sorted {
        match runs.last_mut() {
            Some(last) if offset <= last.1 + PREFETCH_GAP_MAX_BYTES => last.1 = last.1.max(offset + len),
            _ => runs.push((offset, offset + len)),
        }
    }
    while runs.len() > PREFETCH_RUNS_MAX {
        let i = (0..runs.len() - 1)
            .min_by_key(|&i| runs[i + 1].0 - runs[i].1)
            .expect("more than one run");
        runs[i].1 = runs[i + 1].1;
        runs.remove(i + 1);
    }
    let mut budget = PREFETCH_BYTES_MAX;
    let mut out = Vec::with_capacity(runs.len());
    for (start, end) in runs {
        let len = (end - start).min(budget);
        if len == 0 {
            break;
        }
        out.push((start, len));
        budget -= len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_runs_merge_near_reads_and_stay_bounded() {
        let reads = [
            (8192, 1024),
            (0, 1024),
            (4096, 1024),
            (10 << 20, 4096),
            (10 << 20, 1024),
        ];
        assert_eq!(prefetch_runs(&reads), vec![(0, 9216), (10 << 20, 4096)]);
        assert!(prefetch_runs(&[]).is_empty());
        // Far apart reads: merged across the smallest gaps down to the cap.
        let scattered: Vec<(u64, u64)> = (0..100u64).map(|i| (i * (300 << 10), 512)).collect();
        let runs = prefetch_runs(&scattered);
        assert_eq!(runs.len(), PREFETCH_RUNS_MAX);
        assert_eq!(runs[0].0, 0, "the lowest offsets are kept");
        let total: u64 = runs.iter().map(|r| r.1).sum();
        assert!(total <= PREFETCH_BYTES_MAX);
        for &(offset, len) in &scattered {
            assert!(
                runs.iter().any(|&(s, l)| s <= offset && offset + len <= s + l),
                "{offset}"
            );
        }
        // The byte cap keeps the lowest offsets.
        let wide = [(0, 512), (PREFETCH_BYTES_MAX, 512), (2 * PREFETCH_BYTES_MAX, 1 << 20)];
        let runs = prefetch_runs(&wide);
        assert_eq!(runs[0], (0, 512));
        assert!(runs.iter().map(|r| r.1).sum::<u64>() <= PREFETCH_BYTES_MAX);
    }
}
