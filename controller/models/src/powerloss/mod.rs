//! The power-loss crash model, as stages that each take plain data and
//! return plain data (ARCHITECTURE.md draws them):
//!
//! 1. [`capture`]: one workload boot with the test disk behind QEMU's
//!    `blklogwrites` driver. Every write and flush the guest issues lands in a
//!    dm-log-writes log; every ack is also an O_DIRECT sector write into a
//!    reserved area past the filesystem (see `workload/src/ack_log.rs`), so
//!    its place in the log is exact. The run may be killed at the trial's
//!    seeded crash point; the log then ends there. Out: a [`Capture`].
//! 2. [`plan`]: `blocklog` plans crash states from the log: a prefix at
//!    flush boundaries, seeded random subsets of open epochs (weighted by
//!    the writes they hold), optional torn writes, deduplicated by persisted
//!    contents (the ack area left out). Out: `Vec<CrashState>`.
//! 3. [`build`]: each state's contents as extents over the base image, built
//!    incrementally along the log (a state costs the writes of its own epoch,
//!    not of the whole prefix). Out: a [`StateView`].
//! 4. check, on worker threads ([`check`]): the state recovered by the guest
//!    kernel in a long-lived checker VM ([`kernel_check`]) and/or, for ext4,
//!    by e2fsprogs on the host ([`host_check`]). Out: a `CheckResult` per
//!    path (the data files' bytes after recovery).
//! 5. [`judge`]: the verifier, against the promises the application had been
//!    given at the state's crash position (the latest position that leaves
//!    its contents: `blocklog::crash_position`). Out: verdicts.
//! 6. [`report`]: per-state lines and the trial's record.

mod build;
mod capture;
mod check;
mod host_check;
mod judge;
mod kernel_check;
mod plan;
mod report;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

pub use build::{StateBuilder, StateView};
pub use capture::{
    ack_area_sectors, acks_in_log, check_acks_match, read_capture, AckPosition, Capture, CaptureSource, CapturedRun,
    LoggedPromises,
};
pub use check::{KernelTier, StateChecks};
pub use host_check::HostChecker;
pub use judge::{earliest_crash_position, judge_state, protocol_at, JudgedState};
pub use kernel_check::{KernelChecker, CHECKER_RESTARTS_MAX, OVERLAY_MAX_BYTES, STATE_TIMEOUT_MS};
pub use plan::{plan_options, trial_states};
pub use report::{add_counts, LogFacts, PowerLossRecord, RunRecords, StateLine, TierCounts, Timing};

use crate::workload_boot::TrialContext;

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

pub struct PowerLossContext<'a> {
    pub trial: &'a TrialContext<'a>,
    /// Pristine formatted disk, filesystem + ack area.
    pub base_disk: &'a Path,
    pub ack_area_offset_bytes: u64,
}

/// One power-loss trial: capture, then plan, build, check, judge and record
/// its states.
pub fn run_powerloss_trial(
    pctx: &PowerLossContext,
    plan: &crate::plan::TrialPlan,
    dir: &Path,
    on_state: impl FnMut(&StateLine) -> Result<()>,
) -> Result<PowerLossRecord> {
    let trial_start = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} (disk full?)", dir.display()))?;
    let captured = capture::capture_run(pctx, plan, dir)?;
    let record = check_capture(pctx, plan, &captured, dir, trial_start, on_state)?;
    // The crashed disk is not needed: states are rebuilt from the base and
    // the log. Keep the log (and the base) only as evidence of a failure.
    let _ = std::fs::remove_file(&captured.disk);
    if record.passed && !pctx.trial.config.keep_images {
        let _ = std::fs::remove_file(&captured.log_path);
    } else {
        machine::images::copy_sparse(pctx.base_disk, &dir.join("base-disk.img"))?;
    }
    Ok(record)
}

/// Stages 2 to 6 on a capture: plan the states, build, check and judge each,
/// and record the verdicts. Also what `crashlab recheck` runs on a kept
/// capture.
pub fn check_capture(
    pctx: &PowerLossContext,
    plan: &crate::plan::TrialPlan,
    captured: &capture::CapturedRun,
    dir: &Path,
    trial_start: Instant,
    mut on_state: impl FnMut(&StateLine) -> Result<()>,
) -> Result<PowerLossRecord> {
    let ctx = pctx.trial;
    let config = ctx.config;
    let capture = &captured.capture;
    let mut timing = captured.timing.clone();

    let t = Instant::now();
    let (states, coverage) = plan::trial_states(config, plan.workload_seed, capture, pctx.ack_area_offset_bytes);
    timing.plan = ms_since(t);

    let host_passes = |state: &blocklog::CrashState, host: &crate::evidence::CheckResult| {
        let position = blocklog::crash_position(&capture.log, state);
        judge::judge_at(config, &captured.params, capture, &capture.cuts.cut_at(position), host).passed
    };
    let env = check::CheckEnv {
        builder: StateBuilder::new(
            &capture.log,
            Arc::new(std::fs::File::open(pctx.base_disk)?),
            capture.log_file.clone(),
            capture.device_size_bytes,
        ),
        base_disk: pctx.base_disk,
        fsck: config.fsck_states,
        ctx,
        dir,
        sample_seed: plan.workload_seed,
        host_passes: &host_passes,
    };
    let workers_n = (config.check_workers as usize).clamp(1, states.len().max(1));
    let t = Instant::now();
    let workers = check::start_workers(&env, workers_n)?;
    timing.checker_boot = ms_since(t);
    let mut record = PowerLossRecord::new(pctx, plan, captured, &states, timing, workers_n, dir, trial_start);
    record.coverage = Some(coverage);

    let abort = AtomicBool::new(false);
    let check_start = Instant::now();
    let checked = check::check_in_order(&env, workers, &states, &abort, ctx.interrupt, |index, checks| {
        let judged = judge_state(config, &captured.params, capture, &states[index], &checks);
        let line = record.add_state(plan.trial, index as u64, &states[index], &checks, &judged, trial_start);
        on_state(&line)
    });
    abort.store(true, Ordering::SeqCst);
    record.timing_ms.check_wall = ms_since(check_start);
    checked?;
    assert_eq!(
        record.states_checked,
        states.len() as u64,
        "every planned state was judged"
    );
    Ok(record)
}

#[cfg(test)]
mod tests;
