//! Replaying one power-loss crash state exactly, from a campaign's kept
//! evidence: the base image and the block-write log of the trial (kept when
//! a state failed, or with --keep-images) and its serial protocol.
//!
//! A trial's states are a pure function of (log, workload seed, budget,
//! torn flag), and the workload seed of (campaign seed, trial): so state K
//! is rebuilt bit for bit, written out as a disk image one can mount or
//! fsck, and judged again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use campaign::kept::{KeptStateAt, KeptTrial};
use config::Checker;
use machine::images;
use models::evidence::CheckResult;
use models::powerloss::{self, Capture};
use models::workload_boot::TrialContext;
use nbd::DiskView;

pub struct ReplayRequest<'a> {
    pub at: KeptStateAt<'a>,
    /// A state written by `crashlab minimise` (JSON), instead of the
    /// trial's planned state `at.state`.
    pub state_file: Option<PathBuf>,
    /// Where to write the state's disk image.
    pub out: Option<PathBuf>,
    pub checker: Checker,
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
    let kept = req.at.load_trial()?;
    let KeptTrial {
        config,
        trial_dir,
        base,
        params,
        capture,
        ..
    } = &kept;
    let states = kept.states();
    let from_file = match &req.state_file {
        Some(path) => Some(read_state_file(path, capture, req.at.trial)?),
        None => None,
    };
    let state = match &from_file {
        Some(state) => state,
        None => states.get(req.at.state as usize).with_context(|| {
            format!(
                "state {} does not exist: trial {} has {} states",
                req.at.state,
                req.at.trial,
                states.len()
            )
        })?,
    };

    if from_file.is_none() {
        kept.check_identities(req.at.campaign_dir, &[(req.at.state, state)])?;
    }
    let image = req.out.clone().unwrap_or_else(|| match &req.state_file {
        Some(file) => file.with_extension("img"),
        None => trial_dir.join(format!("state-{}.img", req.at.state)),
    });
    write_state_image(base, capture, state, &image)?;

    let results = check_state(req, &kept, state)?;
    let judged = powerloss::judge_state(config, params, capture, state, &powerloss::StateChecks::new(results));
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

/// Reads a state written by `crashlab minimise` and checks it against the
/// trial's log: a state from another trial would rebuild garbage.
fn read_state_file(path: &Path, capture: &Capture, trial: u64) -> Result<blocklog::CrashState> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let state: blocklog::CrashState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a state file (crashlab minimise writes them)", path.display()))?;
    state
        .validate(&capture.log)
        .map_err(|e| anyhow::anyhow!("{} does not fit trial {}'s log: {e}", path.display(), trial))?;
    Ok(state)
}

/// Writes the state as a disk image at `image` (the base image, sparse,
/// with the state's writes applied), for the user to mount or fsck.
fn write_state_image(base: &Path, capture: &Capture, state: &blocklog::CrashState, image: &Path) -> Result<()> {
    images::copy_sparse(base, image)?;
    let mut sink = std::fs::OpenOptions::new().write(true).open(image)?;
    blocklog::apply_state(capture.log_file.as_ref(), &capture.log, state, &mut sink)
        .context("writing the state image")?;
    Ok(())
}

/// Checks the state with the checkers `req` asks for (kernel, host or
/// both), each result named after its checker, as `judge_state` takes them.
fn check_state(
    req: &ReplayRequest,
    kept: &KeptTrial,
    state: &blocklog::CrashState,
) -> Result<Vec<(&'static str, CheckResult)>> {
    let KeptTrial {
        config, base, capture, ..
    } = kept;
    let builder = powerloss::StateBuilder::new(
        &capture.log,
        Arc::new(std::fs::File::open(base)?),
        capture.log_file.clone(),
        capture.device_size_bytes,
    );
    let view = builder.view(state);
    let mut results = Vec::new();
    // One state: read it both ways, compared, unless told to copy.
    let read = match config.read_files {
        config::FileRead::Copy => config::FileRead::Copy,
        _ => config::FileRead::Both,
    };
    if req.checker != Checker::Host {
        let work = machine::lifetime::temp_dir("crashlab-replay-", None)?;
        let (images, accel) = kept.guest(req.at.campaign_dir, work.path(), req.at.interrupt)?;
        let ctx = TrialContext {
            config,
            images: &images,
            accel,
            base_disk: base,
            interrupt: req.at.interrupt,
            rerun_command: "",
        };
        let shown: Arc<dyn DiskView> = Arc::new(view.clone());
        let mut checker =
            powerloss::KernelChecker::start(&ctx, work.path(), "replay", shown.clone(), config.fsck_states)?;
        let check = checker.check(shown, read, req.at.interrupt);
        checker.stop()?;
        results.push(("kernel", check?));
    }
    if req.checker != Checker::Kernel {
        let scratch = machine::lifetime::temp_dir("crashlab-replay-", None)?;
        let mut host = powerloss::HostChecker::new(base, scratch.path(), config.fsck_states, config.data_files())?;
        results.push(("host", host.check(&view, read)?));
    }
    Ok(results)
}
