//! The workload boot, shared by both crash models: the program (or
//! crashlab's workload) runs on a disk until the plan's crash point, and the
//! host reads its protocol lines as they come.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Result};
use record::Event;
use serde::{Deserialize, Serialize};

use config::CampaignConfig;
use machine::images::GuestImages;
use machine::qemu::{AccelUsed, Drive, VmSpec};
use machine::vm::{self, Action, Limits, RunFiles, VmOutcome};

use crate::evidence::{kernel_config_option, kernel_said};
use crate::plan::{CrashPoint, TrialPlan};

pub struct TrialContext<'a> {
    pub config: &'a CampaignConfig,
    pub images: &'a GuestImages,
    pub accel: AccelUsed,
    /// Freshly formatted disk, copied for every trial.
    pub base_disk: &'a Path,
    pub interrupt: &'a AtomicBool,
    /// The command that reruns the campaign, to which `--only-trial N` is added.
    pub rerun_command: &'a str,
}

/// How the workload boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunEnd {
    /// Killed at the crash point.
    Crashed,
    /// The workload finished before the crash point; the disk was unmounted
    /// cleanly.
    WorkloadDone,
    /// A syscall failed in the workload (`ERR op errno`).
    WorkloadError,
}

/// How fast the workload acked, as the host saw it: acks between READY and
/// the last ACK line (the log's cost shows up here).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct WorkloadRate {
    pub acks: u64,
    pub ready_to_last_ack_ms: u64,
}

/// kinds of trial record (flattened into their JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadRun {
    pub trial: u64,
    pub workload_seed: u64,
    pub crash_point: CrashPoint,
    pub run_end: RunEnd,
    pub workload_error: Option<String>,
    pub workload_rate: WorkloadRate,
}

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The workload's hold point for an ack-count crash point.
pub fn hold_for(plan: &TrialPlan) -> Option<u64> {
    match plan.crash_point {
        CrashPoint::AfterAcks { acks } => Some(acks),
        CrashPoint::AfterDelay { .. } | CrashPoint::AtEnd | CrashPoint::AtNamedPoint => None,
    }
}

pub(crate) fn base_kernel_args(config: &CampaignConfig, role: &str) -> Vec<String> {
    let mut args = vec![
        format!("crashlab.role={role}"),
        format!("crashlab.fs={}", config.fs.name()),
        format!("crashlab.mount_opts={}", config.mount_opts),
    ];
    if config.program.is_some() {
        // /init runs the program through the relay, and its checker after
        // each recovery (docs/workload-protocol.md).
        args.push("crashlab.program=1".into());
    }
    args
}

pub(crate) fn limits(config: &CampaignConfig) -> Limits {
    Limits {
        boot_timeout_ms: config.boot_timeout_ms,
        stall_timeout_ms: config.stall_timeout_ms,
        total_timeout_ms: config.trial_timeout_ms,
    }
}

/// Boots the workload on `drive` and kills it at the plan's crash point.
pub(crate) fn run_workload(
    ctx: &TrialContext,
    plan: &TrialPlan,
    params: &record::WorkloadParams,
    drive: Drive,
    files: &RunFiles,
) -> Result<WorkloadRun> {
    let spec = workload_spec(ctx, params, drive, files);
    let mut ready_at = None::<Instant>;
    let mut done = false;
    let mut error = None::<String>;
    let mut mount_rc = None::<i32>;
    let mut rate = WorkloadRate::default();
    let run = vm::run_vm(spec, files, limits(ctx.config), ctx.interrupt, |event, now| {
        match (event, plan.crash_point) {
            (Some(Event::Ready { .. }), _) => ready_at = Some(now),
            (Some(Event::Ack { .. }), _) => {
                rate.acks += 1;
                rate.ready_to_last_ack_ms = ready_at.map(|t| (now - t).as_millis() as u64).unwrap_or(0);
            }
            (Some(Event::Hold { .. }), CrashPoint::AfterAcks { .. } | CrashPoint::AtNamedPoint) => return Action::Kill,
            (Some(Event::Done { .. }), _) => done = true,
            (Some(Event::Mount { rc }), _) => mount_rc = Some(*rc),
            (Some(Event::Error { op, errno }), _) => {
                error = Some(format!("{op}: {}", std::io::Error::from_raw_os_error(*errno)))
            }
            (None, CrashPoint::AfterDelay { delay_ms })
                if !done && error.is_none() && ready_at.is_some_and(|t| (now - t).as_millis() as u64 >= delay_ms) =>
            {
                return Action::Kill;
            }
            _ => {}
        }
        Action::Continue
    })?;
    vm::bail_if_interrupted(run.outcome)?;
    refuse_a_guest_that_cannot_run_it(ctx, files, error.as_deref(), mount_rc)?;
    let end = run_end(ctx, run.outcome, error.is_some(), done, ready_at.is_some(), files)?;
    Ok(WorkloadRun {
        trial: plan.trial,
        workload_seed: plan.workload_seed,
        crash_point: plan.crash_point,
        run_end: end,
        workload_error: error,
        workload_rate: rate,
    })
}

/// The workload boot's VM: the workload (or the program, under the relay)
/// on `drive`, its parameters on the kernel command line, traced.
fn workload_spec(ctx: &TrialContext, params: &record::WorkloadParams, drive: Drive, files: &RunFiles) -> VmSpec {
    let mut kernel_args = base_kernel_args(ctx.config, "workload");
    kernel_args.extend(params.to_kernel_args());
    kernel_args.push(format!("crashlab.trace={}", u8::from(ctx.config.trace_msync)));
    VmSpec {
        images: ctx.images.clone(),
        accel: ctx.accel,
        memory_mib: ctx.config.guest_memory_mib,
        kernel_args,
        drives: vec![drive],
        console_log: files.console_log.clone(),
        channel_socket: PathBuf::new(),
        qmp_socket: PathBuf::new(),
        trace_log: Some(files.trace_log.clone()),
    }
}

/// How the workload boot ended, from how its VM ended and what the
/// workload said; a program that fell silent is a fault of the program (an
/// error naming it), a guest that never ran is a boot failure.
fn run_end(
    ctx: &TrialContext,
    outcome: VmOutcome,
    errored: bool,
    done: bool,
    ready: bool,
    files: &RunFiles,
) -> Result<RunEnd> {
    Ok(match outcome {
        VmOutcome::Killed => RunEnd::Crashed,
        VmOutcome::Exited { .. } if errored => RunEnd::WorkloadError,
        VmOutcome::Exited { .. } if done => RunEnd::WorkloadDone,
        VmOutcome::Stalled if ctx.config.program.is_some() => bail!(
            "the program under test ({}) printed nothing for {} ms {}: it hangs by itself (a fault of the \
             program, not a verdict on the filesystem); its stderr is in {}. Fix the program, or raise \
             --stall-timeout-ms if it is merely slow",
            ctx.config
                .program
                .as_ref()
                .map_or(String::new(), |p| p.workload.display().to_string()),
            ctx.config.stall_timeout_ms,
            match ready {
                true => "after READY",
                false => "and never said READY",
            },
            files.console_log.display()
        ),
        other => return Err(vm::boot_failure("workload boot failed", other, files)),
    })
}

/// The errors of a guest that could not run the workload at all (not a
/// verdict): a kernel without something the workload needs, a fresh
/// filesystem it would not mount.
fn refuse_a_guest_that_cannot_run_it(
    ctx: &TrialContext,
    files: &RunFiles,
    error: Option<&str>,
    mount_rc: Option<i32>,
) -> Result<()> {
    if let Some(what) = error.and_then(|e| e.strip_prefix("kernel-lacks-")) {
        let what = what.split(':').next().unwrap_or(what);
        bail!(
            "the guest kernel ({}) lacks {what}: build it with {} (=y, or =m and in its module tree)",
            ctx.images.identity.release,
            kernel_config_option(what)
        );
    }
    if let Some(rc) = mount_rc {
        let said = kernel_said(&files.console_log, ctx.config.fs);
        bail!(
            "the guest could not mount the fresh {} filesystem with -o {} (mount exit status {rc}); \
             the guest kernel said: {}. Check --mount-opts and --mkfs-opts ({:?}: a feature this \
             kernel, {}, does not know refuses the mount); console: {}",
            ctx.config.fs.name(),
            ctx.config.mount_opts,
            match said.is_empty() {
                true => "nothing".to_string(),
                false => said.join(" | "),
            },
            ctx.config.mkfs_opts,
            ctx.images.identity.release,
            files.console_log.display()
        );
    }
    Ok(())
}
