//! `crashlab recheck`: stages 2 to 6 of the power-loss model (plan, build,
//! check, judge, report) again on a trial's kept capture, with another
//! checker, state budget or number of workers. No workload boot: the same
//! log, so two rechecks compare pipelines side by side (what `cargo xtask
//! bench` does), and a campaign's capture can be judged again after a
//! crashlab or kernel change.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};

use campaign::kept::KeptTrial;
use config::{Checker, FileRead};
use machine::images::GuestImages;
use machine::qemu::AccelUsed;
use machine::vm::RunFiles;
use models::powerloss::{
    self, CapturedRun, LogFacts, PowerLossContext, PowerLossRecord, RunRecords, StateLine, Timing,
};
use models::workload_boot::{TrialContext, WorkloadRun};

pub struct RecheckRequest<'a> {
    pub campaign_dir: &'a Path,
    pub trial: u64,
    /// States of this trial (default: as many as the campaign planned).
    pub state_budget: Option<u64>,
    pub checker: Option<Checker>,
    pub check_workers: Option<u32>,
    pub read_files: Option<FileRead>,
    /// Overrides the campaign's guest images directory.
    pub images_dir: Option<PathBuf>,
    pub interrupt: &'a AtomicBool,
}

pub fn recheck(req: &RecheckRequest, on_state: impl FnMut(&StateLine) -> Result<()>) -> Result<PowerLossRecord> {
    let t = Instant::now();
    let kept = KeptTrial::load(req.campaign_dir, req.trial, req.images_dir.as_deref())?;
    let parse_ms = t.elapsed().as_millis() as u64;
    let mut config = kept.config.clone();
    if let Some(budget) = req.state_budget {
        config.state_budget = budget.saturating_mul(config.trials);
    }
    config.checker = req.checker.unwrap_or(config.checker);
    config.check_workers = req.check_workers.unwrap_or(config.check_workers);
    config.read_files = req.read_files.unwrap_or(config.read_files);
    config.validate().map_err(anyhow::Error::msg)?;
    let run = kept_run(req.campaign_dir, req.trial)?;
    if req.state_budget.is_none() {
        // The campaign's own plan: every state must be the one it judged.
        let states = kept.states();
        let indexed: Vec<(u64, &blocklog::CrashState)> =
            states.iter().enumerate().map(|(i, s)| (i as u64, s)).collect();
        kept.check_identities(req.campaign_dir, &indexed)?;
    }

    let work = machine::lifetime::temp_dir("crashlab-recheck-", None)?;
    // The host path starts no VM: no guest images needed.
    let (images, accel) = match config.checker {
        Checker::Host => (
            GuestImages {
                kernel: PathBuf::new(),
                initramfs: PathBuf::new(),
                identity: Default::default(),
                modules_missing: Vec::new(),
            },
            AccelUsed::Tcg,
        ),
        _ => kept.guest(req.campaign_dir, work.path(), req.interrupt)?,
    };
    let ctx = TrialContext {
        config: &config,
        images: &images,
        accel,
        base_disk: &kept.base,
        interrupt: req.interrupt,
        rerun_command: "crashlab recheck",
    };
    let pctx = PowerLossContext {
        trial: &ctx,
        base_disk: &kept.base,
        ack_area_offset_bytes: kept.ack_area_offset_bytes,
    };
    let log_bytes = std::fs::metadata(&kept.log_path)?.len();
    let captured = CapturedRun {
        run,
        params: kept.params.clone(),
        log_facts: LogFacts::of(&kept.capture, log_bytes),
        records: RunRecords::of(&kept.capture.serial),
        capture: kept.capture,
        files: RunFiles::in_dir(&kept.trial_dir, "workload"),
        disk: PathBuf::new(),
        log_path: kept.log_path.clone(),
        timing: Timing {
            parse: parse_ms,
            ..Timing::default()
        },
    };
    powerloss::check_capture(&pctx, &kept.plan, &captured, work.path(), t, on_state)
}

/// How the trial's workload run went, from the campaign's `trials.jsonl`.
fn kept_run(campaign_dir: &Path, trial: u64) -> Result<WorkloadRun> {
    let path = campaign_dir.join("trials.jsonl");
    // A torn last line (the campaign was killed while writing it) is no
    // trial's: its trial reads as not finished.
    let (lines, _torn) = campaign::read_jsonl(&path)?;
    for value in lines {
        if value["trial"].as_u64() == Some(trial) {
            return serde_json::from_value(value)
                .with_context(|| format!("{}: trial {trial} is unreadable", path.display()));
        }
    }
    anyhow::bail!(
        "{} has no line for trial {trial}: did the campaign finish it?",
        path.display()
    )
}
