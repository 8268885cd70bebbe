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

use crate::qemu::{Drive, VmSpec};
use crate::trial::{CheckReport, CheckResult, ExportDisk, TrialContext};
use crate::vm::{self, Limits, RunFiles, Step, VmSession};

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
