//! A campaign: N trials of one configuration, with a progress bar, results
//! written as each trial finishes, and a summary. The loop emits events to
//! sinks ([`events`]); beside it, the results schema and its readers
//! ([`results`]), kept captures ([`kept`]) and matrices of campaigns
//! ([`matrix`]). It knows the crash models below it and nothing of the
//! tools over saved results or the CLI above it.
//!
//! Results layout (see results/README.md):
//! `results/<campaign-id>/campaign.json`, `trials.jsonl`, `summary.txt`,
//! `trials/<n>/` (protocol and console logs, and the crashed disk when it
//! broke a rule).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

pub mod events;
pub mod kept;
pub mod matrix;
pub mod results;

use events::{emit, Event, Progress, ResultsLog, Sink, SummarySink};

use config::{CampaignConfig, CrashModel};
use machine::qemu::AccelUsed;
use machine::{accel, images, qemu, vm};
use models::kernel_crash::{run_trial, TrialRecord};
use models::plan::plan_trial;
use models::powerloss::TierCounts;
use models::powerloss::{run_powerloss_trial, PowerLossContext, PowerLossRecord};
use models::workload_boot::{RunEnd, TrialContext};

#[derive(Serialize)]
struct CampaignMeta<'a> {
    /// MAJOR.MINOR of the results' format (results/README.md).
    results_schema: String,
    campaign_id: &'a str,
    config: &'a CampaignConfig,
    crashlab_version: &'static str,
    qemu_version: String,
    kernel_release: &'a str,
    /// The kernel's identity: its image's digest and, for a kernel built
    /// from source, the source, patches and config it was built from.
    kernel: &'a images::KernelIdentity,
    accel: AccelUsed,
    accel_reason: &'a str,
    /// How the filesystem under test was made, and its parameters.
    filesystem: &'a images::MadeFilesystem,
    only_trial: Option<u64>,
    rerun: &'a str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub campaign_id: String,
    pub results_dir: PathBuf,
    /// The mkfs command line and the filesystem's parameters, in one line.
    pub filesystem: String,
    /// The guest kernel: release and, for a kernel built from source, what
    /// it was built from, in one line.
    pub kernel: String,
    pub trials_run: u64,
    pub trials_passed: u64,
    pub trials_failed: u64,
    /// Crash states verified: one per trial under kernel-crash, many per
    /// trial under power-loss.
    pub states_checked: u64,
    pub states_failed: u64,
    pub crashed: u64,
    pub workload_done: u64,
    pub workload_errors: u64,
    pub violations: u64,
    pub observations: u64,
    /// Per-state counts summed over every crash state judged (one state per
    /// trial under kernel-crash): a record acked before 100 states' crash
    /// points counts 100 times in `acked`.
    pub acked: u64,
    pub in_flight: u64,
    pub lost: u64,
    pub torn: u64,
    /// From the campaign's start to the first failing state's verdict.
    pub first_failure_after_s: Option<f64>,
    pub elapsed_s: f64,
    pub seconds_per_trial: f64,
    pub states_per_minute: f64,
    pub interrupted: bool,
    /// Peak resident memory of the controller, from getrusage.
    pub peak_rss_kib: u64,
    /// Peak resident memory of the largest child process waited for (in
    /// practice a QEMU; also mkfs, e2fsck, debugfs), from getrusage.
    pub peak_rss_largest_child_kib: u64,
    /// What the workload promises: "records" (crashlab's own workload) or
    /// "items" (a program's), the word the summary counts in.
    pub unit: String,
    /// Power loss: the campaign's state budget (0 under kernel crash).
    pub state_budget: u64,
    /// Power loss: checker VMs started again (one hung or died), and checks
    /// timed out once and retried with more time, summed over trials.
    pub checker_restarts: u64,
    pub checker_timeouts_retried: u64,
    /// Power loss: what the checked states cover of the model, summed over
    /// trials (`--explore`).
    pub coverage: CoverageTotals,
    /// Power loss, two checkers (`--checker both|tiered`): states they
    /// judged differently (pass/fail), and failing states where they
    /// differ only in the details.
    pub checker_disagreements: u64,
    pub checker_detail_differences: u64,
    /// `--checker tiered`: which states the kernel checked too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiered: Option<TierCounts>,
}

/// Coverage of the power-loss model, summed over trials.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CoverageTotals {
    /// Distinct states checked.
    pub states_checked: u64,
    /// States in the model: exact (distinct) when every trial's every epoch
    /// was enumerated, else an upper bound (counted before equal contents
    /// are removed).
    pub states_in_model: u64,
    pub exact: bool,
    pub epochs: u64,
    pub epochs_enumerated: u64,
    pub epochs_sampled: u64,
    /// Generated states equal in content to an earlier one (removed).
    pub duplicates: u64,
    /// The most optional writes of one epoch, over the trials.
    pub largest_epoch_writes: u64,
    /// Trials whose coverage was recorded (results before 1.4 have none).
    pub trials: u64,
}

impl CoverageTotals {
    fn add(&mut self, c: &blocklog::Coverage) {
        let first = self.trials == 0;
        self.trials += 1;
        let model = match c.model_exact {
            true => c.states,
            false => c.states_in_model,
        };
        self.states_checked = self.states_checked.saturating_add(c.states);
        self.states_in_model = self.states_in_model.saturating_add(model);
        self.exact = (first || self.exact) && c.model_exact;
        self.epochs = self.epochs.saturating_add(c.epochs);
        self.epochs_enumerated = self.epochs_enumerated.saturating_add(c.epochs_enumerated);
        self.epochs_sampled = self.epochs_sampled.saturating_add(c.epochs_sampled);
        self.duplicates = self.duplicates.saturating_add(c.duplicates);
        self.largest_epoch_writes = self.largest_epoch_writes.max(c.largest_epoch.map_or(0, |(_, w)| w));
    }

    /// The summary's line, or nothing without a recorded coverage.
    fn render(&self) -> String {
        if self.trials == 0 {
            return String::new();
        }
        let share = |part: u64, whole: u64| match whole {
            0 => 100.0,
            w => 100.0 * part as f64 / w as f64,
        };
        let model = match (self.states_in_model, self.exact) {
            (u64::MAX, _) => "more than 10^19".to_string(),
            (n, true) => format!("exactly {n}"),
            (n, false) => format!("at most {n}"),
        };
        // A sample enumerates no epoch: its line says what it checked of the model.
        let epochs = match self.epochs_enumerated + self.epochs_sampled {
            0 => format!("{} epochs, sampled", self.epochs),
            _ => format!(
                "{} of {} epochs enumerated, {} sampled; {} duplicates removed",
                self.epochs_enumerated, self.epochs, self.epochs_sampled, self.duplicates
            ),
        };
        format!(
            "coverage: {} distinct states checked of {model} in the model ({:.1}%); {epochs}; largest epoch {} \
             writes\n",
            self.states_checked,
            share(self.states_checked, self.states_in_model),
            self.largest_epoch_writes
        )
    }
}

/// What the summary needs from one trial of either crash model.
pub struct TrialTotals {
    passed: bool,
    run_end: RunEnd,
    states: u64,
    states_failed: u64,
    violations: u64,
    observations: u64,
    counts: verifier::Counts,
    checker_restarts: u64,
    checker_timeouts_retried: u64,
    coverage: Option<blocklog::Coverage>,
    checker_disagreements: u64,
    checker_detail_differences: u64,
    tiered: Option<TierCounts>,
}

impl From<&TrialRecord> for TrialTotals {
    fn from(t: &TrialRecord) -> Self {
        TrialTotals {
            passed: t.verdict.passed,
            run_end: t.run.run_end,
            states: 1,
            states_failed: u64::from(!t.verdict.passed),
            violations: t.verdict.violation_count,
            observations: t.verdict.observation_count,
            counts: t.verdict.counts.clone(),
            checker_restarts: 0,
            checker_timeouts_retried: 0,
            coverage: None,
            checker_disagreements: 0,
            checker_detail_differences: 0,
            tiered: None,
        }
    }
}

impl From<&PowerLossRecord> for TrialTotals {
    fn from(t: &PowerLossRecord) -> Self {
        TrialTotals {
            passed: t.passed,
            run_end: t.run.run_end,
            states: t.states_checked,
            states_failed: t.states_failed,
            violations: t.violation_count,
            observations: t.observation_count,
            counts: t.state_counts.clone(),
            checker_restarts: t.checker_restarts,
            checker_timeouts_retried: t.checker_timeouts_retried,
            coverage: t.coverage.clone(),
            checker_disagreements: t.checker_disagreements,
            checker_detail_differences: t.checker_detail_differences,
            tiered: t.tiered,
        }
    }
}

impl TrialTotals {
    /// A finished trial's totals from its `trials.jsonl` line (`--resume`).
    pub(crate) fn from_line(v: &serde_json::Value, model: CrashModel) -> Result<TrialTotals> {
        let number = |key: &str| v[key].as_u64().with_context(|| format!("no {key}"));
        let passed = v["passed"].as_bool().context("no passed")?;
        let (states, states_failed, counts_key) = match model {
            CrashModel::PowerLoss => (number("states_checked")?, number("states_failed")?, "state_counts"),
            CrashModel::KernelCrash => (1, u64::from(!passed), "counts"),
        };
        anyhow::ensure!(
            states_failed <= states,
            "states_failed {states_failed} is more than states_checked {states}"
        );
        Ok(TrialTotals {
            passed,
            run_end: serde_json::from_value(v["run_end"].clone()).context("run_end")?,
            states,
            states_failed,
            violations: number("violation_count")?,
            observations: number("observation_count")?,
            counts: serde_json::from_value(v[counts_key].clone()).context(counts_key)?,
            // Lines from before these were counted read as 0.
            checker_restarts: v["checker_restarts"].as_u64().unwrap_or(0),
            checker_timeouts_retried: v["checker_timeouts_retried"].as_u64().unwrap_or(0),
            coverage: serde_json::from_value(v["coverage"].clone()).ok(),
            checker_disagreements: v["checker_disagreements"].as_u64().unwrap_or(0),
            checker_detail_differences: v["checker_detail_differences"].as_u64().unwrap_or(0),
            tiered: serde_json::from_value(v["tiered"].clone()).ok(),
        })
    }
}

impl Summary {
    /// Why fewer states than the budget were checked, when they were: a
    /// trial plans at most its share of the budget, and no more states than
    /// its log holds distinct ones.
    fn short_of_budget(&self) -> String {
        match self.state_budget > self.states_checked && !self.interrupted && self.trials_run > 0 {
            true => format!(
                " (budget {}: the logs held no more distinct crash states; more trials or records give more)",
                self.state_budget
            ),
            false => String::new(),
        }
    }

    pub fn add(&mut self, t: &TrialTotals) {
        self.trials_run += 1;
        if t.passed {
            self.trials_passed += 1
        } else {
            self.trials_failed += 1
        }
        match t.run_end {
            RunEnd::Crashed => self.crashed += 1,
            RunEnd::WorkloadDone => self.workload_done += 1,
            RunEnd::WorkloadError => self.workload_errors += 1,
        }
        // Saturating: totals read back from a (possibly edited) results
        // file by --resume are not trusted to be small.
        self.states_checked = self.states_checked.saturating_add(t.states);
        self.states_failed = self.states_failed.saturating_add(t.states_failed);
        self.violations = self.violations.saturating_add(t.violations);
        self.observations = self.observations.saturating_add(t.observations);
        self.acked = self.acked.saturating_add(t.counts.acked);
        self.in_flight = self.in_flight.saturating_add(t.counts.in_flight);
        self.lost = self.lost.saturating_add(t.counts.lost);
        self.torn = self.torn.saturating_add(t.counts.torn);
        self.checker_restarts = self.checker_restarts.saturating_add(t.checker_restarts);
        self.checker_timeouts_retried = self.checker_timeouts_retried.saturating_add(t.checker_timeouts_retried);
        if let Some(coverage) = &t.coverage {
            self.coverage.add(coverage);
        }
        self.checker_disagreements = self.checker_disagreements.saturating_add(t.checker_disagreements);
        self.checker_detail_differences = self
            .checker_detail_differences
            .saturating_add(t.checker_detail_differences);
        if let Some(tiered) = &t.tiered {
            self.tiered.get_or_insert_with(TierCounts::default).add(tiered);
        }
    }

    /// The checkers' line: how a tiered campaign split its states, and
    /// where two checkers differed (never resolved silently).
    fn render_checkers(&self) -> String {
        let differed = format!(
            "{} states judged differently (pass/fail), {} failing states that differ in the details; \
             states.jsonl has both readings of each",
            self.checker_disagreements, self.checker_detail_differences
        );
        match (
            &self.tiered,
            self.checker_disagreements + self.checker_detail_differences,
        ) {
            (Some(t), _) => format!(
                "checkers: tiered: the host checked all {} states, the kernel {} of them too ({} sampled, {} the \
                 host failed, {} the host's reader declined); {differed}\n",
                t.host_only + t.kernel_checked(),
                t.kernel_checked(),
                t.kernel_sampled,
                t.kernel_host_failed,
                t.kernel_host_declined
            ),
            (None, 0) => String::new(),
            (None, _) => format!("checkers: {differed}\n"),
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s += &format!("campaign {}\n", self.campaign_id);
        if !self.filesystem.is_empty() {
            s += &format!("filesystem: {}\n", self.filesystem);
        }
        if !self.kernel.is_empty() {
            s += &format!("kernel: {}\n", self.kernel);
        }
        s += &format!(
            "trials: {} run, {} passed, {} failed{}\n",
            self.trials_run,
            self.trials_passed,
            self.trials_failed,
            if self.interrupted { " (interrupted)" } else { "" }
        );
        s += &format!(
            "ends: {} crashed at their point, {} finished first, {} workload errors\n",
            self.crashed, self.workload_done, self.workload_errors
        );
        let unit = if self.unit.is_empty() { "records" } else { &self.unit };
        s += &format!(
            "{unit}, summed over crash states: {} acked, {} in flight, {} lost, {} torn\n",
            self.acked, self.in_flight, self.lost, self.torn
        );
        s += &format!(
            "crash states: {} verified, {} failed{}\n",
            self.states_checked,
            self.states_failed,
            self.short_of_budget()
        );
        s += &self.coverage.render();
        s += &self.render_checkers();
        if self.checker_restarts + self.checker_timeouts_retried > 0 {
            s += &format!(
                "checker: {} restarts (a checker VM hung or died and was started again), {} checks retried \
                 with more time after a timeout\n",
                self.checker_restarts, self.checker_timeouts_retried
            );
        }
        s += &format!(
            "violations: {}   observations: {}{}\n",
            self.violations,
            self.observations,
            match self.first_failure_after_s {
                Some(t) => format!("   first failing state after {t:.1} s"),
                None => String::new(),
            }
        );
        s += &format!(
            "time: {:.1} s, {:.1} s per trial, {:.2} crash states verified per minute\n",
            self.elapsed_s, self.seconds_per_trial, self.states_per_minute,
        );
        s += &format!(
            "peak RSS: controller {} MiB, largest child (QEMU) {} MiB\n",
            self.peak_rss_kib / 1024,
            self.peak_rss_largest_child_kib / 1024
        );
        s += &format!("results: {}\n", self.results_dir.display());
        s
    }
}

pub struct CampaignRequest<'a> {
    pub config: &'a CampaignConfig,
    pub results_root: &'a Path,
    pub campaign_id: String,
    pub only_trial: Option<u64>,
    /// Continue the campaign already in the directory: its finished trials
    /// are kept (a torn last line dropped), the others run.
    pub resume: bool,
    pub show_progress: bool,
    pub interrupt: &'a AtomicBool,
}

pub fn run_campaign(req: &CampaignRequest) -> Result<Summary> {
    // The campaign's clock includes its setup (accelerator choice, mkfs):
    // `elapsed_s` and `first_failure_after_s` are wall time a user waits.
    let start = Instant::now();
    let setup = set_up(req).inspect_err(|_| {
        // A refused mkfs or accelerator leaves no disk image behind.
        let _ = std::fs::remove_file(req.results_root.join(&req.campaign_id).join(BASE_DISK));
    })?;
    let finished = match req.resume {
        true => resume_results(&setup)?,
        false => start_results(req, &setup)?,
    };
    let (config, dir) = (&setup.config, &setup.dir);
    let trial_ids = trials_to_run(req, config, &finished, dir)?;
    let mut summary = Summary {
        campaign_id: req.campaign_id.clone(),
        results_dir: dir.clone(),
        filesystem: setup.made.summary_line(),
        kernel: setup.images.identity.summary_line(),
        unit: match setup.config.program {
            Some(_) => "items".into(),
            None => "records".into(),
        },
        // An exhaustive exploration has no budget: every state it could
        // build was checked.
        state_budget: match (setup.config.crash_model, setup.config.explore) {
            (CrashModel::PowerLoss, config::Explore::Sample) => setup.config.state_budget,
            _ => 0,
        },
        ..Default::default()
    };
    for (_, totals) in &finished {
        summary.add(totals);
    }
    // Rates are of this run's own trials: a resumed run's clock started now.
    let before = (summary.trials_run, summary.states_checked);
    let mut results = ResultsLog::open(dir, config.crash_model)?;
    let mut progress = Progress::new(trial_ids.len() as u64, req.show_progress, start);
    let ran = {
        let mut totals = SummarySink {
            summary: &mut summary,
            start,
        };
        run_trials(req, &setup, &trial_ids, &mut [&mut results, &mut totals, &mut progress])
    };
    progress.finish();
    let _ = std::fs::remove_file(&setup.base_disk);
    finish(req, dir, summary, ran.err(), start, before)
}

/// The filesystem every trial starts from, made once per campaign run and
/// removed at its end.
const BASE_DISK: &str = "base-disk.img";

/// Everything a campaign's trials stand on, made before the first.
struct SetUp {
    /// The request's configuration, pinned to the kernel build found.
    config: CampaignConfig,
    images: images::GuestImages,
    dir: PathBuf,
    base_disk: PathBuf,
    made: images::MadeFilesystem,
    accel: AccelUsed,
    accel_reason: String,
    rerun: String,
}

/// Checks the request, finds the images, makes the results directory, the
/// base disk and the accelerator choice.
fn set_up(req: &CampaignRequest) -> Result<SetUp> {
    let config = req.config;
    config.validate().map_err(anyhow::Error::msg)?;
    if let Some(t) = req.only_trial {
        anyhow::ensure!(
            t < config.trials,
            "--only-trial {t} is outside the campaign's {} trials",
            config.trials
        );
    }
    // Before any image is looked for: a binary that cannot run is the
    // first thing to say. What it needs is packed below, found once.
    let runtime = match &config.program {
        Some(program) => machine::program::check_binaries(program)?,
        None => Vec::new(),
    };
    let images = images::locate_build(&config.images_dir, config.kernel_build.as_deref())?;
    images.check_supports(config.fs)?;
    // A kernel built from source is named in the results and the rerun.
    let config = CampaignConfig {
        kernel_build: images.identity.build_key_short(),
        ..config.clone()
    };
    let dir = results_dir(req)?;
    // A resumed campaign runs the program it started with.
    let fresh = !(req.resume && dir.join(machine::program::CAMPAIGN_INITRD).is_file());
    let images = machine::program::campaign_images(images, &config, &dir, fresh.then_some(&runtime[..]))?;

    // Before the accelerator's sanity boot: mkfs options it refuses fail fast.
    let base_disk = dir.join(BASE_DISK);
    let made = make_base_disk(&config, &base_disk)?;
    let (accel, accel_reason) = accel::choose(config.accel, &images, &dir, req.interrupt)?;
    if config.crash_model == CrashModel::PowerLoss {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&base_disk)?
            .set_len(config.ack_area_offset_bytes() + config.ack_area_size_bytes())
            .context("cannot grow the base disk for the ack area (disk full?)")?;
    }
    let rerun = format!("crashlab {}", config::shell_join(&config.to_cli_args()));
    Ok(SetUp {
        config,
        images,
        dir,
        base_disk,
        made,
        accel,
        accel_reason,
        rerun,
    })
}

/// The campaign's results directory, made with its `trials/` (a resumed
/// campaign's must already hold its campaign.json).
fn results_dir(req: &CampaignRequest) -> Result<PathBuf> {
    let dir = req.results_root.join(&req.campaign_id);
    if req.resume {
        anyhow::ensure!(
            dir.join("campaign.json").is_file(),
            "{} is not a campaign directory (no campaign.json): nothing to resume",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("trials")).with_context(|| {
        format!(
            "cannot create results directory {} (disk full? read-only?)",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Makes the filesystem every trial starts from at `base_disk`, refusing a
/// checker that could not judge its crash states.
fn make_base_disk(config: &CampaignConfig, base_disk: &Path) -> Result<images::MadeFilesystem> {
    let made = images::make_and_describe(config.fs, &config.mkfs_words(), base_disk, config.disk_size_bytes)?;
    if config.checker == config::Checker::Host && made.has_feature("fast_commit") {
        // docs/findings/ext4-fast-commit: e2fsck 1.47.0 to 1.47.4 cannot
        // recover most fast-commit crash states; every one would fail.
        anyhow::bail!(
            "--checker host cannot judge an ext4 made with fast_commit: e2fsprogs (1.47.0 to 1.47.4) fails to \
             recover most of its crash states (docs/findings/ext4-fast-commit), so every state would be \
             e2fsprogs' failure, not the filesystem's. Use --checker kernel (the kernel's own recovery), or \
             --checker both to see e2fsprogs' answer beside the kernel's"
        );
    }
    Ok(made)
}

/// A new campaign's record of itself: campaign.json (what a resume reads
/// back: written whole or not at all, and durable before any trial runs),
/// campaign.toml, empty logs and the seal of its start.
fn start_results(req: &CampaignRequest, setup: &SetUp) -> Result<Vec<(u64, TrialTotals)>> {
    let (config, dir) = (&setup.config, &setup.dir);
    let meta = CampaignMeta {
        results_schema: format!(
            "{}.{}",
            crate::results::RESULTS_SCHEMA.0,
            crate::results::RESULTS_SCHEMA.1
        ),
        campaign_id: &req.campaign_id,
        config,
        crashlab_version: env!("CARGO_PKG_VERSION"),
        qemu_version: qemu::qemu_version(),
        kernel_release: &setup.images.identity.release,
        kernel: &setup.images.identity,
        accel: setup.accel,
        accel_reason: &setup.accel_reason,
        filesystem: &setup.made,
        only_trial: req.only_trial,
        rerun: &setup.rerun,
    };
    machine::durable::write_atomically(
        &dir.join("campaign.json"),
        (serde_json::to_string_pretty(&meta)? + "\n").as_bytes(),
    )?;
    machine::durable::write_atomically(&dir.join("campaign.toml"), config.to_toml(&req.campaign_id).as_bytes())?;
    machine::durable::write_atomically(&dir.join("trials.jsonl"), b"")?;
    if config.crash_model == CrashModel::PowerLoss {
        machine::durable::write_atomically(&dir.join("states.jsonl"), b"")?;
    }
    let program: Vec<PathBuf> = config
        .program
        .iter()
        .flat_map(|p| [p.workload.clone(), p.checker.clone()])
        .collect();
    machine::seal::write_campaign_seal(
        dir,
        &machine::seal::CampaignSeal::at_start(dir, &setup.images, &program)?,
    )?;
    Ok(Vec::new())
}

/// A resumed campaign: its record of itself stays as it was written; its
/// seal verified, its finished trials kept (the results files cut back to
/// them are sealed again at the end).
fn resume_results(setup: &SetUp) -> Result<Vec<(u64, TrialTotals)>> {
    let seal = verify_for_resume(&setup.dir, &setup.images)?;
    let finished = keep_finished(&setup.dir, setup.config.crash_model, setup.config.trials)?;
    if let Some(seal) = seal {
        machine::seal::write_campaign_seal(&setup.dir, &seal)?;
    }
    Ok(finished)
}

/// The trials this run runs (this shard's, or the one asked for, less the
/// finished), each one's leftover directory from a killed run cleared:
/// what a killed run left of an unfinished trial is not evidence.
fn trials_to_run(
    req: &CampaignRequest,
    config: &CampaignConfig,
    finished: &[(u64, TrialTotals)],
    dir: &Path,
) -> Result<Vec<u64>> {
    let mine: Vec<u64> = match config.shard {
        Some(shard) => config::shard_trials(config.seed, config.trials, shard),
        None => (0..config.trials).collect(),
    };
    let trial_ids: Vec<u64> = match req.only_trial {
        Some(t) => vec![t],
        None => mine
            .into_iter()
            .filter(|t| !finished.iter().any(|(done, _)| done == t))
            .collect(),
    };
    for &trial in &trial_ids {
        assert!(trial < config.trials, "trial {trial} is one of the campaign's");
        let trial_dir = dir.join("trials").join(trial.to_string());
        if trial_dir.exists() {
            std::fs::remove_dir_all(&trial_dir).with_context(|| format!("cannot clear {}", trial_dir.display()))?;
        }
    }
    Ok(trial_ids)
}

/// The loop: each trial run, its states and its end emitted to the sinks.
/// The first error (a trial's, a sink's, too little disk) ends it.
fn run_trials(req: &CampaignRequest, setup: &SetUp, trial_ids: &[u64], sinks: &mut [&mut dyn Sink]) -> Result<()> {
    let config = &setup.config;
    let ctx = TrialContext {
        config,
        images: &setup.images,
        accel: setup.accel,
        base_disk: &setup.base_disk,
        interrupt: req.interrupt,
        rerun_command: &setup.rerun,
    };
    let pctx = PowerLossContext {
        trial: &ctx,
        base_disk: &setup.base_disk,
        ack_area_offset_bytes: config.ack_area_offset_bytes(),
    };
    for &trial in trial_ids {
        ensure_space_for_a_trial(&setup.dir, config)?;
        let plan = plan_trial(config, trial);
        let trial_dir = setup.dir.join("trials").join(trial.to_string());
        let (totals, json) = match config.crash_model {
            CrashModel::KernelCrash => {
                let record = run_trial(&ctx, &plan, &trial_dir)?;
                (TrialTotals::from(&record), serde_json::to_string(&record)?)
            }
            CrashModel::PowerLoss => {
                let record =
                    run_powerloss_trial(&pctx, &plan, &trial_dir, |line| emit(sinks, &Event::StateJudged(line)))?;
                (TrialTotals::from(&record), serde_json::to_string(&record)?)
            }
        };
        // The trial's evidence sealed, the line naming its seal.
        let line = sealed_line(&trial_dir, trial, &json)?;
        let event = Event::TrialFinished {
            trial,
            trial_dir: &trial_dir,
            line: &line,
            totals: &totals,
        };
        emit(sinks, &event)?;
    }
    Ok(())
}

/// The campaign's end: its rates, the summary written and the results
/// sealed; an error that stopped it (not an interruption) returned with
/// where its results are and how to continue.
fn finish(
    req: &CampaignRequest,
    dir: &Path,
    mut summary: Summary,
    failure: Option<anyhow::Error>,
    start: Instant,
    (trials_before, states_before): (u64, u64),
) -> Result<Summary> {
    summary.elapsed_s = start.elapsed().as_secs_f64();
    let (trials_now, states_now) = (
        summary.trials_run - trials_before,
        summary.states_checked - states_before,
    );
    if trials_now > 0 {
        summary.seconds_per_trial = summary.elapsed_s / trials_now as f64;
        summary.states_per_minute = states_now as f64 * 60.0 / summary.elapsed_s.max(1e-9);
    }
    summary.peak_rss_kib = peak_rss_kib(nix::sys::resource::UsageWho::RUSAGE_SELF);
    summary.peak_rss_largest_child_kib = peak_rss_kib(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    if let Some(e) = &failure {
        summary.interrupted = e.downcast_ref::<vm::Interrupted>().is_some();
    }
    let summary_written = std::fs::write(dir.join("summary.txt"), summary.render())
        .with_context(|| cannot_write(dir, "summary.txt"))
        .and_then(|()| {
            std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")
                .with_context(|| cannot_write(dir, "summary.json"))
        });
    // What a later command reads, sealed as the campaign leaves it.
    let summary_written = summary_written.and_then(|()| seal_results(dir));
    match failure {
        Some(e) if !summary.interrupted => {
            let resume = match req.only_trial {
                None => format!(
                    "; once fixed, continue it with `crashlab run --resume {}`",
                    dir.display()
                ),
                Some(_) => String::new(),
            };
            let mut e = e.context(format!(
                "campaign stopped; finished trials are in {}{resume}",
                dir.display()
            ));
            if let Err(w) = summary_written {
                e = e.context(format!("and its summary could not be written: {w:#}"));
            }
            Err(e)
        }
        _ => summary_written.map(|()| summary),
    }
}

/// A trial's line with the digest of its evidence's seal (`seal`).
fn sealed_line(trial_dir: &Path, trial: u64, json: &str) -> Result<String> {
    let mut line: serde_json::Value = serde_json::from_str(json)?;
    std::fs::create_dir_all(trial_dir).with_context(|| format!("cannot create {}", trial_dir.display()))?;
    let log_entries = line["log"]["entries"].as_u64();
    let digest = machine::seal::seal_trial(trial_dir, trial, log_entries)?;
    line["seal"] = serde_json::Value::String(digest);
    Ok(serde_json::to_string(&line)?)
}

/// The results files added to the campaign's seal.
fn seal_results(dir: &Path) -> Result<()> {
    let Some(seal) = machine::seal::read_campaign_seal(dir)? else {
        return Ok(());
    };
    machine::seal::write_campaign_seal(dir, &seal.with_results(dir)?)
}

/// `--resume` reads campaign.json, the results files and the program's
/// layer, and runs the guest images: each as sealed, or a refusal. The
/// seal without the results files comes back, to be sealed anew.
fn verify_for_resume(dir: &Path, images: &images::GuestImages) -> Result<Option<machine::seal::CampaignSeal>> {
    let Some(seal) = machine::seal::read_campaign_seal(dir)? else {
        return Ok(None); // results from before sealing
    };
    let mut found = seal.check(dir, None);
    found.extend(seal.check_images(images));
    if !found.is_empty() {
        return Err(machine::seal::refusal(
            &format!("cannot resume {}", dir.display()),
            &found,
        ));
    }
    let mut seal = seal;
    seal.files
        .retain(|f| !machine::seal::RESULTS_FILES.contains(&f.name.as_str()));
    Ok(Some(seal))
}

/// The context of a failed write to a campaign's results file.
fn cannot_write(dir: &Path, name: &str) -> String {
    format!(
        "cannot write {} ({}; a full or read-only disk?)",
        dir.join(name).display(),
        vm::free_space_report(&[dir.join(name)])
    )
}

/// Space a trial may take under the results directory: its copy of the
/// disk, under power loss the block log (every write the guest issued,
/// bounded here by twice the disk), and 16 MiB of logs. A floor checked
/// before each trial, so that a nearly full disk stops the campaign with
/// a clear message; a disk that fills during a trial pauses QEMU, which
/// the VM loop reports (`VmSession::host_failure`).
pub fn trial_space_floor_bytes(config: &CampaignConfig) -> u64 {
    let disk = config.disk_size_bytes + config.ack_area_size_bytes();
    let log = match config.crash_model {
        CrashModel::PowerLoss => 2 * config.disk_size_bytes,
        CrashModel::KernelCrash => 0,
    };
    disk + log + (16 << 20)
}

fn ensure_space_for_a_trial(dir: &Path, config: &CampaignConfig) -> Result<()> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("cannot stat the filesystem of {}", dir.display()))?;
    let free_bytes = st.blocks_available() as u64 * st.fragment_size() as u64;
    let floor_bytes = trial_space_floor_bytes(config);
    anyhow::ensure!(
        free_bytes >= floor_bytes,
        "{} MiB free under {}, less than the {} MiB a trial may need (its disk image and logs): \
         free space there or give --results-dir on a larger disk",
        free_bytes >> 20,
        dir.display(),
        floor_bytes >> 20
    );
    Ok(())
}

/// `--resume`: the finished trials (by their `trials.jsonl` lines) and
/// their totals; both results files rewritten to hold only those (a torn
/// last line, and an unfinished trial's state lines, dropped).
fn keep_finished(dir: &Path, model: CrashModel, trials: u64) -> Result<Vec<(u64, TrialTotals)>> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        match path.exists() {
            true => std::fs::read(&path).with_context(|| format!("cannot read {}", path.display())),
            false => Ok(Vec::new()),
        }
    };
    let trials_path = dir.join("trials.jsonl");
    let states = match model {
        CrashModel::PowerLoss => Some(read("states.jsonl")?),
        CrashModel::KernelCrash => None,
    };
    let point = resume_point(&read("trials.jsonl")?, states.as_deref(), model, trials)
        .with_context(|| format!("cannot resume from {}", dir.display()))?;
    machine::durable::write_atomically(&trials_path, point.trials_jsonl.as_bytes())?;
    if let Some(kept) = &point.states_jsonl {
        machine::durable::write_atomically(&dir.join("states.jsonl"), kept.as_bytes())?;
    }
    Ok(point.finished)
}

/// Where an interrupted campaign continues: its finished trials and the
/// results files cut back to them.
pub struct ResumePoint {
    pub finished: Vec<(u64, TrialTotals)>,
    /// `trials.jsonl` holding only the finished trials' lines.
    pub trials_jsonl: String,
    /// `states.jsonl` (power loss) holding only the finished trials' states.
    pub states_jsonl: Option<String>,
}

/// The pure part of `--resume`: the results files' bytes as a killed run
/// (or a hand edit) left them, read back. A torn last line is dropped; a
/// corrupt complete line, a trial outside the campaign or finished twice,
/// or a trial line without its totals is an error naming it.
pub fn resume_point(trials: &[u8], states: Option<&[u8]>, model: CrashModel, trials_count: u64) -> Result<ResumePoint> {
    let (lines, _torn) = parse_jsonl_lines(trials, "trials.jsonl")?;
    let mut finished: Vec<(u64, TrialTotals)> = Vec::new();
    let mut trials_jsonl = String::new();
    for (line, text) in &lines {
        let trial = line["trial"]
            .as_u64()
            .context("a trials.jsonl line without its trial")?;
        anyhow::ensure!(
            trial < trials_count,
            "trials.jsonl holds trial {trial}, outside the campaign's {trials_count} trials: was it edited?"
        );
        let totals = TrialTotals::from_line(line, model)
            .with_context(|| format!("trials.jsonl: trial {trial} is unreadable"))?;
        anyhow::ensure!(
            !finished.iter().any(|(t, _)| *t == trial),
            "trials.jsonl holds trial {trial} twice"
        );
        finished.push((trial, totals));
        trials_jsonl += text;
        trials_jsonl.push('\n');
    }
    let states_jsonl = match states {
        None => None,
        Some(bytes) => {
            let (states, _torn) = parse_jsonl_lines(bytes, "states.jsonl")?;
            Some(
                states
                    .iter()
                    .filter(|(s, _)| {
                        s["trial"]
                            .as_u64()
                            .is_some_and(|t| finished.iter().any(|(f, _)| *f == t))
                    })
                    .map(|(_, text)| format!("{text}\n"))
                    .collect(),
            )
        }
    };
    Ok(ResumePoint {
        finished,
        trials_jsonl,
        states_jsonl,
    })
}

/// ru_maxrss: for RUSAGE_CHILDREN, that of the largest child waited for.
pub fn peak_rss_kib(who: nix::sys::resource::UsageWho) -> u64 {
    nix::sys::resource::getrusage(who)
        .map(|u| u.max_rss() as u64)
        .unwrap_or(0)
}

/// `YYYYmmddTHHMMSSZ`, from the system clock (the controller may read the
/// clock; the workload and the verifier never do).
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A campaign's `campaign.json` read back (by `replay-state`, `recheck`,
/// `run --resume`): the whole record, and its configuration put through
/// the CLI's checks, so that a hand-edited or corrupt file never reaches
/// code that trusts a validated configuration.
pub fn read_campaign_json(campaign_dir: &Path) -> Result<(serde_json::Value, CampaignConfig)> {
    let meta_path = campaign_dir.join("campaign.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}: is this a campaign directory?", meta_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", meta_path.display()))?;
    let config: CampaignConfig = serde_json::from_value(meta["config"].clone())
        .with_context(|| format!("{} has no usable config", meta_path.display()))?;
    config.validate().map_err(|e| {
        anyhow::anyhow!(
            "{} holds a configuration crashlab would refuse ({e}): was it edited? Rerun the campaign",
            meta_path.display()
        )
    })?;
    Ok((meta, config))
}

/// A results file of JSON lines (`trials.jsonl`, `states.jsonl`) read back.
/// Lines are written whole and synced, but a controller killed mid-write
/// can leave the last one cut short: a final fragment without its newline
/// is dropped and reported (`Ok((lines, Some(fragment_len)))`). A complete
/// line that does not parse is corruption, an error naming the line.
pub fn read_jsonl(path: &std::path::Path) -> anyhow::Result<(Vec<serde_json::Value>, Option<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_jsonl(&bytes, &path.display().to_string())
}

/// `read_jsonl` on bytes; `name` names the file in errors. The cut is made
/// on bytes, before any UTF-8 check: a line torn inside a character is
/// still just a torn line.
pub fn parse_jsonl(bytes: &[u8], name: &str) -> anyhow::Result<(Vec<serde_json::Value>, Option<usize>)> {
    let (lines, torn) = parse_jsonl_lines(bytes, name)?;
    Ok((lines.into_iter().map(|(value, _)| value).collect(), torn))
}

/// A results line parsed, with its text as written.
pub type JsonLine = (serde_json::Value, String);

/// `parse_jsonl`, each value with its line as written (without the
/// newline): what resume keeps is the bytes, not a re-serialisation (which
/// would reorder keys, and move a float that serde_json reads inexactly).
pub fn parse_jsonl_lines(bytes: &[u8], name: &str) -> anyhow::Result<(Vec<JsonLine>, Option<usize>)> {
    let (complete, torn) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) if end + 1 == bytes.len() => (bytes, None),
        Some(end) => (&bytes[..end + 1], Some(bytes.len() - end - 1)),
        None if bytes.is_empty() => (bytes, None),
        None => (&bytes[..0], Some(bytes.len())),
    };
    // `complete` is empty or ends in a newline: the piece after the last
    // newline is empty and not a line.
    let line_count = complete.iter().filter(|&&b| b == b'\n').count();
    complete
        .split(|&b| b == b'\n')
        .take(line_count)
        .enumerate()
        .map(|(i, line)| {
            let corrupt = || format!("{name} line {} is corrupt", i + 1);
            let text = std::str::from_utf8(line).with_context(corrupt)?;
            let value = serde_json::from_str(text).with_context(corrupt)?;
            Ok((value, text.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(|lines| (lines, torn))
}

#[cfg(test)]
mod read_jsonl_tests {
    use super::{read_jsonl, resume_point};
    use config::CrashModel;

    const TRIAL_0: &str = r#"{"trial":0,"passed":true,"run_end":"crashed","violation_count":0,"observation_count":0,"counts":{"begun":6,"acked":5,"in_flight":1,"lost":0,"torn":0,"in_flight_new":1,"in_flight_old":0,"intact":5}}"#;

    #[test]
    fn a_line_torn_inside_a_character_is_a_torn_line() {
        // "×" is two bytes in UTF-8; the kill came between them.
        let mut bytes = format!("{TRIAL_0}\n").into_bytes();
        bytes.extend_from_slice(&"{\"trial\":1,\"note\":\"EIO ×".as_bytes()[..24]);
        assert!(std::str::from_utf8(&bytes).is_err());
        let point = resume_point(&bytes, None, CrashModel::KernelCrash, 2).unwrap();
        assert_eq!(point.finished.len(), 1);
        assert_eq!(point.trials_jsonl.lines().count(), 1);
    }

    #[test]
    fn resume_refuses_trials_outside_the_campaign_twice_or_inconsistent() {
        let twice = format!("{TRIAL_0}\n{TRIAL_0}\n");
        let err = format!(
            "{:#}",
            resume_point(twice.as_bytes(), None, CrashModel::KernelCrash, 2)
                .err()
                .unwrap()
        );
        assert!(err.contains("trial 0 twice"), "{err}");
        let line = format!("{TRIAL_0}\n");
        let err = format!(
            "{:#}",
            resume_point(line.as_bytes(), None, CrashModel::KernelCrash, 0)
                .err()
                .unwrap()
        );
        assert!(err.contains("outside the campaign's 0 trials"), "{err}");
        let power = TRIAL_0.replace(
            "\"counts\"",
            "\"states_checked\":2,\"states_failed\":3,\"state_counts\"",
        ) + "\n";
        let err = format!(
            "{:#}",
            resume_point(power.as_bytes(), Some(b""), CrashModel::PowerLoss, 1)
                .err()
                .unwrap()
        );
        assert!(err.contains("more than states_checked"), "{err}");
    }

    #[test]
    fn resume_keeps_only_the_finished_trials_state_lines() {
        let power = TRIAL_0.replace(
            "\"counts\"",
            "\"states_checked\":2,\"states_failed\":0,\"state_counts\"",
        ) + "\n";
        let states =
            "{\"trial\":0,\"state\":0}\n{\"trial\":0,\"state\":1}\n{\"trial\":1,\"state\":0}\n{\"trial\":1,\"sta";
        let point = resume_point(power.as_bytes(), Some(states.as_bytes()), CrashModel::PowerLoss, 2).unwrap();
        assert_eq!(point.finished.iter().map(|f| f.0).collect::<Vec<_>>(), [0]);
        // The kept lines' bytes, as written (key order included).
        assert_eq!(
            point.states_jsonl.as_deref(),
            Some("{\"trial\":0,\"state\":0}\n{\"trial\":0,\"state\":1}\n")
        );
    }

    #[test]
    fn a_torn_last_line_is_dropped_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trials.jsonl");
        std::fs::write(&path, "{\"trial\":0}\n{\"trial\":1}\n{\"tri").unwrap();
        let (lines, torn) = read_jsonl(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["trial"], 1);
        assert_eq!(torn, Some(5));
        std::fs::write(&path, "{\"trial\":0}\n").unwrap();
        assert_eq!(
            read_jsonl(&path).unwrap(),
            (vec![serde_json::json!({"trial": 0})], None)
        );
        std::fs::write(&path, "{\"trial\":0}\nnot json\n{\"trial\":2}\n").unwrap();
        let err = format!("{:#}", read_jsonl(&path).unwrap_err());
        assert!(err.contains("line 2 is corrupt"), "{err}");
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    /// A program's run is counted in items; fewer states than the budget
    /// say why; checker restarts and retried timeouts are shown.
    #[test]
    fn the_summary_speaks_of_items_the_budget_and_checker_restarts() {
        let mut summary = Summary {
            unit: "items".into(),
            state_budget: 200,
            ..Default::default()
        };
        summary.add(&TrialTotals {
            passed: true,
            run_end: RunEnd::Crashed,
            states: 25,
            states_failed: 0,
            violations: 0,
            observations: 0,
            counts: verifier::Counts::default(),
            checker_restarts: 2,
            checker_timeouts_retried: 1,
            coverage: Some(blocklog::Coverage {
                epochs: 10,
                epochs_enumerated: 9,
                epochs_sampled: 1,
                states_in_model: 500,
                model_exact: false,
                states_generated: 30,
                duplicates: 5,
                states: 25,
                largest_epoch: Some((7, 14)),
                stopped_at_bound: false,
                by_epoch_size: Vec::new(),
            }),
            checker_disagreements: 1,
            checker_detail_differences: 0,
            tiered: Some(TierCounts {
                host_only: 20,
                kernel_sampled: 2,
                kernel_host_failed: 3,
                kernel_host_declined: 0,
            }),
        });
        let text = summary.render();
        assert!(
            text.contains(
                "checkers: tiered: the host checked all 25 states, the kernel 5 of them too (2 sampled, 3 the host \
                 failed, 0 the host's reader declined); 1 states judged differently (pass/fail)"
            ),
            "{text}"
        );
        assert!(text.contains("items, summed over crash states"), "{text}");
        assert!(
            text.contains("25 verified, 0 failed (budget 200: the logs held no more distinct crash states"),
            "{text}"
        );
        assert!(text.contains("checker: 2 restarts"), "{text}");
        assert!(text.contains("1 checks retried"), "{text}");
        assert!(
            text.contains(
                "coverage: 25 distinct states checked of at most 500 in the model (5.0%); 9 of 10 epochs \
                 enumerated, 1 sampled; 5 duplicates removed; largest epoch 14 writes"
            ),
            "{text}"
        );
        // A sampled trial of a run with an epoch of hundreds of writes: its
        // model saturates, and its line still reads back as JSON (a u128
        // there once broke every reader: "number out of range").
        let huge = blocklog::Coverage {
            epochs: 2,
            states_in_model: u64::MAX,
            states: 30,
            states_generated: 30,
            largest_epoch: Some((0, 467)),
            ..Default::default()
        };
        let line = serde_json::json!({ "coverage": huge });
        let back: blocklog::Coverage = serde_json::from_value(line["coverage"].clone()).unwrap();
        assert_eq!(back, huge);
        let mut sampled = CoverageTotals::default();
        sampled.add(&huge);
        let text = sampled.render();
        assert!(
            text.contains("30 distinct states checked of more than 10^19 in the model (0.0%); 2 epochs, sampled"),
            "{text}"
        );
        summary.state_budget = 25;
        summary.checker_restarts = 0;
        summary.checker_timeouts_retried = 0;
        let text = summary.render();
        assert!(!text.contains("budget") && !text.contains("checker:"), "{text}");
    }
}
