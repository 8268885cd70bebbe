//! Replaying one power-loss crash state exactly, from a campaign's kept
//! evidence: the base image and the block-write log of the trial (kept when
//! a state failed, or with --keep-images) and its serial protocol.
//!
//! A trial's states are a pure function of (log, workload seed, budget,
//! torn flag), and the workload seed of (campaign seed, trial): so state K
//! is rebuilt bit for bit, written out as a disk image one can mount or
//! fsck, and judged again.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{CampaignConfig, Checker};
use crate::plan::plan_trial;
use crate::powerloss;
use crate::trial::TrialContext;
use crate::{accel, images};
use nbd::DiskView;

pub struct ReplayRequest<'a> {
    pub campaign_dir: &'a Path,
    pub trial: u64,
    pub state: u64,
    /// Where to write the state's disk image.
    pub out: Option<PathBuf>,
    pub checker: Checker,
    /// Overrides the campaign's images directory.
    pub images_dir: Option<PathBuf>,
    pub interrupt: &'a AtomicBool,
}

#[derive(Serialize)]
pub struct ReplayOutcome {
    pub image: PathBuf,
    pub state_kind: String,
    pub prefix_entries: u64,
    pub extra_writes: Vec<u64>,
    pub torn_entry: Option<u64>,
    pub crash_position: u64,
    pub verdicts: Vec<(&'static str, verifier::Verdict)>,
}

pub fn replay_state(req: &ReplayRequest) -> Result<ReplayOutcome> {
    let meta_path = req.campaign_dir.join("campaign.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}: is this a campaign directory?", meta_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", meta_path.display()))?;
    let mut config: CampaignConfig = serde_json::from_value(meta["config"].clone())
        .with_context(|| format!("{} has no usable config", meta_path.display()))?;
    anyhow::ensure!(
        config.crash_model == crate::config::CrashModel::PowerLoss,
        "campaign {} is not a power-loss campaign: rerun a kernel-crash trial with its `rerun` command",
        req.campaign_dir.display()
    );
    anyhow::ensure!(
        req.trial < config.trials,
        "trial {} is outside the campaign's {} trials",
        req.trial,
        config.trials
    );
    if let Some(dir) = &req.images_dir {
        config.images_dir = dir.clone();
    }
    let trial_dir = req.campaign_dir.join("trials").join(req.trial.to_string());
    let (log_path, base) = (trial_dir.join("blocklog.bin"), trial_dir.join("base-disk.img"));
    anyhow::ensure!(
        log_path.is_file() && base.is_file(),
        "{} lacks blocklog.bin and base-disk.img: they are kept when a state fails, or with --keep-images",
        trial_dir.display()
    );

    let plan = plan_trial(&config, req.trial);
    let ack_area_offset_bytes = config.ack_area_offset_bytes();
    let params = config.workload_params(
        plan.workload_seed,
        crate::trial::hold_for(&plan),
        Some(ack_area_offset_bytes),
    );
    let capture = powerloss::read_capture(&powerloss::CaptureSource {
        log_path: &log_path,
        protocol_path: &trial_dir.join("workload.protocol.log"),
        base_disk: &base,
        ack_area_offset_bytes,
        seed: params.seed,
        device_bug: config.device_bug,
    })?;
    let options = powerloss::plan_options(&config, plan.workload_seed, &capture, ack_area_offset_bytes);
    let states = blocklog::plan_states(&capture.log, &options);
    let state = states.get(req.state as usize).with_context(|| {
        format!(
            "state {} does not exist: trial {} has {} states",
            req.state,
            req.trial,
            states.len()
        )
    })?;

    let image = req
        .out
        .clone()
        .unwrap_or_else(|| trial_dir.join(format!("state-{}.img", req.state)));
    images::copy_sparse(&base, &image)?;
    let mut sink = std::fs::OpenOptions::new().write(true).open(&image)?;
    blocklog::apply_state(capture.log_file.as_ref(), &capture.log, state, &mut sink)
        .context("writing the state image")?;
    drop(sink);

    let builder = powerloss::StateBuilder::new(
        &capture.log,
        Arc::new(std::fs::File::open(&base)?),
        capture.log_file.clone(),
        capture.device_size_bytes,
    );
    let view = builder.view(state);
    let mut results = Vec::new();
    if req.checker != Checker::Host {
        let images = images::locate(&config.images_dir)?;
        let work = tempfile::Builder::new().prefix("crashlab-replay-").tempdir()?;
        let (accel, _) = accel::choose(config.accel, &images, work.path(), req.interrupt)?;
        let ctx = TrialContext {
            config: &config,
            images: &images,
            accel,
            base_disk: &base,
            interrupt: req.interrupt,
            rerun_command: "",
        };
        let shown: Arc<dyn DiskView> = Arc::new(view.clone());
        let mut checker =
            powerloss::KernelChecker::start(&ctx, work.path(), "replay", shown.clone(), config.fsck_states)?;
        // One state: read it both ways, compared, unless told to copy.
        let read = match config.read_files {
            crate::config::FileRead::Copy => crate::config::FileRead::Copy,
            _ => crate::config::FileRead::Both,
        };
        let check = checker.check(shown, read, req.interrupt);
        checker.stop()?;
        results.push(("kernel", check?));
    }
    if req.checker != Checker::Kernel {
        let scratch = tempfile::Builder::new().prefix("crashlab-replay-").tempdir()?;
        let mut host = powerloss::HostChecker::new(&base, scratch.path(), config.fsck_states, config.geometry().files)?;
        results.push(("host", host.check(&capture.log_file, view.extents())?));
    }
    let judged = powerloss::judge_state(&config, &params, &capture, state, &powerloss::StateChecks::new(results));
    let position = judged.position;
    let verdicts = judged.verdicts;
    Ok(ReplayOutcome {
        image,
        state_kind: format!("{:?}", state.kind).to_lowercase(),
        prefix_entries: state.prefix_entries,
        extra_writes: state.extra_writes.clone(),
        torn_entry: state.torn.as_ref().map(|t| t.entry),
        crash_position: position,
        verdicts,
    })
}
