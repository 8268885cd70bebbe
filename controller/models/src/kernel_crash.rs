//! One trial of the kernel-crash model: run the workload on a fresh disk,
//! SIGKILL QEMU at the planned crash point, boot again on the crashed disk so
//! the guest kernel recovers it, bring the data file's bytes out, and judge.
//!
//! Data flow: `TrialPlan` -> workload boot (evidence: protocol log, disk) ->
//! check boot (evidence: mount/fsck status, file bytes) -> `Verdict` ->
//! `TrialRecord`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use record::Event;
use serde::Serialize;

use machine::faulty_disk::FaultyDisk;
use machine::images;
use machine::qemu::{Drive, VmSpec};
use machine::vm::{self, Action, RunFiles};

use crate::evidence::{judge, CheckReport, CheckResult, ExportDisk, FsckResult, RecoveredFile};
use crate::plan::TrialPlan;
use crate::workload_boot::{base_kernel_args, hold_for, limits, run_workload, unix_ms_now, TrialContext, WorkloadRun};

#[derive(Clone, Debug, Serialize)]
pub struct TrialRecord {
    #[serde(flatten)]
    pub run: WorkloadRun,
    pub mount_rc: i32,
    pub fsck: Option<FsckResult>,
    pub file_size_bytes: Option<u64>,
    /// Why the check boot did not complete (a guest panic or hang while
    /// recovering), when it did not.
    pub recovery_failure: Option<String>,
    /// The guest kernel's msync trace of the workload boot (its last calls
    /// before the crash), when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msync_trace: Option<crate::trace::TraceSummary>,
    /// With `--inject-write-error`: the failed write and what the
    /// application was told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_error: Option<crate::io_errors::IoErrorFacts>,
    #[serde(flatten)]
    pub verdict: verifier::Verdict,
    pub workload_ms: u64,
    pub check_ms: u64,
    pub verify_ms: u64,
    pub rerun: String,
    pub evidence_dir: PathBuf,
    /// When the verdict was reached (ms since the Unix epoch): the report's
    /// states-per-second plot.
    pub finished_at_unix_ms: u64,
}

pub fn run_trial(ctx: &TrialContext, plan: &TrialPlan, dir: &Path) -> Result<TrialRecord> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} (disk full?)", dir.display()))?;
    let config = ctx.config;
    let hold_after_acks = hold_for(plan);
    let params = config.workload_params(plan.workload_seed, hold_after_acks, None);
    let disk = dir.join("disk.img");
    images::copy_sparse(ctx.base_disk, &disk)?;

    let workload_files = RunFiles::in_dir(dir, "workload");
    let workload_start = Instant::now();
    // With an injected write error the disk is served by the NBD server,
    // which fails the write carrying the planned record.
    let faulty = match (config.inject_write_error, plan.failing_record) {
        (Some(error), Some(seq)) => Some((error, seq, FaultyDisk::serve(&disk, error, seq, params.seed)?)),
        _ => None,
    };
    let drive = match &faulty {
        Some((_, _, served)) => Drive::Nbd {
            socket: served.socket.clone(),
            export: "disk".into(),
        },
        None => Drive::Raw(disk.clone()),
    };
    let run = run_workload(ctx, plan, &params, drive, &workload_files)?;
    let io_error = match faulty {
        Some((error, seq, served)) => Some((error, seq, served.finish()?)),
        None => None,
    };
    let workload_ms = workload_start.elapsed().as_millis() as u64;
    let protocol_text = std::fs::read_to_string(&workload_files.protocol_log)?;
    let protocol = record::protocol::parse_log(&protocol_text)
        .with_context(|| format!("{} is corrupt", workload_files.protocol_log.display()))?;
    let io_error = io_error.map(|(error, seq, injected)| crate::io_errors::facts(error, seq, injected, &protocol));

    let check_files = RunFiles::in_dir(dir, "check");
    let check_start = Instant::now();
    let check = run_check(ctx, &disk, dir, &check_files)?;
    let check_ms = check_start.elapsed().as_millis() as u64;

    let verify_start = Instant::now();
    let mut verdict = judge(config, &params, &protocol, verifier::Seen::All, &check);
    let io_finding = io_error.as_ref().and_then(crate::io_errors::error_reported);
    for finding in verifier::live_findings(&protocol).into_iter().chain(io_finding) {
        verdict.add_violation(finding);
    }
    let verify_ms = verify_start.elapsed().as_millis() as u64;

    // A crashed disk is evidence only when something is wrong with it.
    if verdict.passed && !config.keep_images {
        let _ = std::fs::remove_file(&disk);
    }
    let _ = std::fs::remove_file(dir.join("export.img"));
    Ok(TrialRecord {
        run,
        mount_rc: check.mount_rc,
        fsck: check.fsck.clone(),
        file_size_bytes: check.files.first().and_then(RecoveredFile::size_bytes),
        recovery_failure: check.recovery_failure.clone(),
        msync_trace: crate::trace::read_summary(&workload_files.trace_log),
        io_error,
        verdict,
        workload_ms,
        check_ms,
        verify_ms,
        rerun: format!("{} --only-trial={}", ctx.rerun_command, plan.trial),
        evidence_dir: dir.to_path_buf(),
        finished_at_unix_ms: unix_ms_now(),
    })
}

/// The one-shot check boot of a kernel-crash trial. A guest that booted and
/// then died or fell silent before `CHECKED` did so while recovering the
/// crashed disk: a finding of this trial, with the console's last lines.
/// A guest that never booted is a setup error.
fn run_check(ctx: &TrialContext, disk: &Path, dir: &Path, files: &RunFiles) -> Result<CheckResult> {
    const NONCE: u64 = 1;
    let data_files = ctx.config.data_files();
    let export = ExportDisk::create(dir.join("export.img"), ctx.config.file_size_bytes, data_files)?;
    let mut kernel_args = base_kernel_args(ctx.config, "check");
    kernel_args.push(format!("crashlab.nonce={NONCE}"));
    kernel_args.extend(export.kernel_args());
    let spec = VmSpec {
        images: ctx.images.clone(),
        accel: ctx.accel,
        memory_mib: ctx.config.guest_memory_mib,
        kernel_args,
        drives: vec![Drive::Raw(disk.to_path_buf()), Drive::Raw(export.path.clone())],
        console_log: files.console_log.clone(),
        channel_socket: PathBuf::new(),
        qmp_socket: PathBuf::new(),
        trace_log: None,
    };
    let mut report = CheckReport::default();
    let mut booted = false;
    let run = vm::run_vm(spec, files, limits(ctx.config), ctx.interrupt, |event, _| {
        match event {
            Some(Event::Booted { .. }) => booted = true,
            Some(event) => report.observe(event),
            None => {}
        }
        Action::Continue
    })?;
    vm::bail_if_interrupted(run.outcome)?;
    let outcome = run.outcome;
    match report.finish(&export, NONCE, None)? {
        Some(result) => Ok(result),
        None if booted => Ok(CheckResult::recovery_failed(
            format!(
                "the check boot ended before finishing ({outcome:?}) while recovering the crashed disk: \
                 a guest kernel panic or hang? console {}:\n{}",
                files.console_log.display(),
                vm::tail_of(&files.console_log, 8)
            ),
            export.files as usize,
        )),
        None => Err(vm::boot_failure("check boot did not start", outcome, files)),
    }
}
