//! A power-loss trial's kept evidence, loaded: the campaign's config, the
//! trial's plan, its block-write log, base image and serial protocol.
//! `replay-state` rebuilds one state from it, `recheck` all of them.

use std::path::{Path, PathBuf};

use anyhow::Result;

use config::CampaignConfig;
use models::plan::{plan_trial, TrialPlan};
use models::powerloss::{self, Capture};

/// One state of a kept trial, as the tools that rebuild it (`replay-state`,
/// `minimise`) are asked for it.
pub struct KeptStateAt<'a> {
    pub campaign_dir: &'a Path,
    pub trial: u64,
    /// The state's number in the trial's plan.
    pub state: u64,
    /// Overrides the campaign's images directory.
    pub images_dir: Option<PathBuf>,
    pub interrupt: &'a std::sync::atomic::AtomicBool,
}

impl KeptStateAt<'_> {
    /// The kept trial the state belongs to, checked against its seal.
    pub fn load_trial(&self) -> Result<KeptTrial> {
        KeptTrial::load(self.campaign_dir, self.trial, self.images_dir.as_deref())
    }
}

pub struct KeptTrial {
    pub config: CampaignConfig,
    /// The campaign's seal (`None`: results from before sealing).
    pub seal: Option<machine::seal::CampaignSeal>,
    /// The guest images were given on purpose (another kernel): not held
    /// to the campaign's.
    pub images_overridden: bool,
    pub plan: TrialPlan,
    pub trial_dir: PathBuf,
    pub log_path: PathBuf,
    pub base: PathBuf,
    pub ack_area_offset_bytes: u64,
    pub params: record::WorkloadParams,
    pub capture: Capture,
}

impl KeptTrial {
    /// Loads trial `trial` of the campaign in `campaign_dir`; `images_dir`
    /// overrides the campaign's guest images.
    pub fn load(campaign_dir: &Path, trial: u64, images_dir: Option<&Path>) -> Result<KeptTrial> {
        let (_, mut config) = crate::read_campaign_json(campaign_dir)?;
        anyhow::ensure!(
            config.crash_model == config::CrashModel::PowerLoss,
            "campaign {} is not a power-loss campaign: rerun a kernel-crash trial with its `rerun` command",
            campaign_dir.display()
        );
        anyhow::ensure!(
            trial < config.trials,
            "trial {trial} is outside the campaign's {} trials",
            config.trials
        );
        if let Some(dir) = images_dir {
            // Another kernel on purpose (recheck, compare): not the campaign's build.
            config.images_dir = dir.to_path_buf();
            config.kernel_build = None;
        }
        let trial_dir = campaign_dir.join("trials").join(trial.to_string());
        let (log_path, base) = (trial_dir.join("blocklog.bin"), trial_dir.join("base-disk.img"));
        anyhow::ensure!(
            log_path.is_file() && base.is_file(),
            "{} lacks blocklog.bin and base-disk.img: they are kept when a state fails, or with --keep-images",
            trial_dir.display()
        );
        let seal = machine::seal::read_campaign_seal(campaign_dir)?;
        let log_entries = match &seal {
            Some(seal) => verify_evidence(campaign_dir, trial, seal)?,
            None => None,
        };
        let plan = plan_trial(&config, trial);
        let ack_area_offset_bytes = config.ack_area_offset_bytes();
        let params = config.workload_params(
            plan.workload_seed,
            models::workload_boot::hold_for(&plan),
            Some(ack_area_offset_bytes),
        );
        let capture = powerloss::read_capture(&powerloss::CaptureSource {
            log_path: &log_path,
            protocol_path: &trial_dir.join("workload.protocol.log"),
            base_disk: &base,
            ack_area_offset_bytes,
            params: &params,
            device_bug: config.device_bug,
        })?;
        if let Some(sealed) = log_entries.filter(|n| *n != capture.log.entries.len() as u64) {
            anyhow::bail!(
                "{}: the campaign parsed {sealed} entries from it, this crashlab parses {}: the log is read \
                 differently than when it was judged; replay it with the crashlab version in campaign.json",
                log_path.display(),
                capture.log.entries.len()
            );
        }
        Ok(KeptTrial {
            config,
            seal,
            images_overridden: images_dir.is_some(),
            plan,
            trial_dir,
            log_path,
            base,
            ack_area_offset_bytes,
            params,
            capture,
        })
    }

    /// The identities the campaign recorded for this trial's states, in
    /// state order (empty for results from before identities).
    pub fn recorded_identities(&self, campaign_dir: &Path) -> Result<Vec<String>> {
        let (lines, _) = crate::read_jsonl(&campaign_dir.join("states.jsonl"))?;
        Ok(lines
            .iter()
            .filter(|l| l["trial"].as_u64() == Some(self.plan.trial))
            .filter_map(|l| l["identity"].as_str().map(String::from))
            .collect())
    }

    /// States rebuilt from the evidence must be the states the campaign
    /// judged, state for state (checked where the campaign recorded
    /// identities).
    pub fn check_identities(&self, campaign_dir: &Path, states: &[(u64, &blocklog::CrashState)]) -> Result<()> {
        let recorded = self.recorded_identities(campaign_dir)?;
        if recorded.is_empty() {
            return Ok(());
        }
        for (index, state) in states {
            let rebuilt = machine::seal::state_identity(state);
            let Some(expected) = recorded.get(*index as usize) else {
                anyhow::bail!(
                    "state {index} of trial {} was not judged by the campaign ({} states): nothing to replay",
                    self.plan.trial,
                    recorded.len()
                );
            };
            anyhow::ensure!(
                *expected == rebuilt,
                "state {index} of trial {}, rebuilt from the evidence, is not the state the campaign judged \
                 (identity {expected}, rebuilt {rebuilt}): the plan differs (another crashlab version, or edited \
                 evidence); `crashlab verify {}` checks the evidence",
                self.plan.trial,
                campaign_dir.display()
            );
        }
        Ok(())
    }

    /// The guest a check of this trial boots: the campaign's images (its
    /// program's initramfs, for a program under test) and the accelerator.
    pub fn guest(
        &self,
        campaign_dir: &Path,
        work_dir: &Path,
        interrupt: &std::sync::atomic::AtomicBool,
    ) -> Result<(machine::images::GuestImages, machine::qemu::AccelUsed)> {
        let images = machine::program::campaign_images(
            machine::images::locate_build(&self.config.images_dir, self.config.kernel_build.as_deref())?,
            &self.config,
            campaign_dir,
            None,
        )?;
        if let (Some(seal), false) = (&self.seal, self.images_overridden) {
            let found = seal.check_images(&images);
            if !found.is_empty() {
                return Err(machine::seal::refusal(
                    "the campaign's guest images changed since it ran (its states would be recovered by \
                     another kernel or initramfs; give --images-dir to check with other images on purpose)",
                    &found,
                ));
            }
        }
        let (accel, _) = machine::accel::choose(self.config.accel, &images, work_dir, interrupt)?;
        Ok((images, accel))
    }

    /// The trial's states, planned as the campaign planned them.
    pub fn states(&self) -> Vec<blocklog::CrashState> {
        powerloss::trial_states(
            &self.config,
            self.plan.workload_seed,
            &self.capture,
            self.ack_area_offset_bytes,
        )
        .0
    }
}

/// What a kept trial is read from, checked against the seals: the
/// campaign's configuration and program layer, the trial's line's seal
/// digest, and the trial's log, base image and protocol. Returns the log's
/// sealed entry count.
fn verify_evidence(campaign_dir: &Path, trial: u64, seal: &machine::seal::CampaignSeal) -> Result<Option<u64>> {
    let mut found = seal.check(
        campaign_dir,
        Some(&["campaign.json", machine::program::CAMPAIGN_INITRD]),
    );
    let trial_dir = campaign_dir.join("trials").join(trial.to_string());
    let line_seal = trial_line(campaign_dir, trial)?.and_then(|l| l["seal"].as_str().map(String::from));
    let mut log_entries = None;
    match machine::seal::read_trial_seal(&trial_dir, line_seal.as_deref()) {
        Ok(trial_seal) => {
            log_entries = trial_seal.log_entries;
            found.extend(machine::seal::check_trial(
                &trial_dir,
                &trial_seal,
                Some(&["blocklog.bin", "base-disk.img", "workload.protocol.log"]),
            ));
        }
        Err(mismatch) => found.push(mismatch),
    }
    match found.is_empty() {
        true => Ok(log_entries),
        false => Err(machine::seal::refusal(
            &format!("trial {trial} of {}", campaign_dir.display()),
            &found,
        )),
    }
}

/// The trial's line in trials.jsonl, if it finished.
pub fn trial_line(campaign_dir: &Path, trial: u64) -> Result<Option<serde_json::Value>> {
    let (lines, _torn) = crate::read_jsonl(&campaign_dir.join("trials.jsonl"))?;
    Ok(lines.into_iter().find(|l| l["trial"].as_u64() == Some(trial)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(config: &CampaignConfig) -> String {
        let dir = tempfile::tempdir().unwrap();
        let meta = serde_json::json!({ "config": config });
        std::fs::write(dir.path().join("campaign.json"), meta.to_string()).unwrap();
        match KeptTrial::load(dir.path(), 0, None) {
            Ok(_) => panic!("a campaign without its evidence loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn an_edited_configuration_is_refused_before_use() {
        let valid = CampaignConfig {
            crash_model: config::CrashModel::PowerLoss,
            ..config::sample_config()
        };
        // Valid: it gets as far as the missing evidence.
        assert!(load_with(&valid).contains("lacks blocklog.bin"));
        for broken in [
            CampaignConfig {
                state_budget: 0,
                ..valid.clone()
            },
            CampaignConfig {
                record_size_bytes: 0,
                ..valid.clone()
            },
            CampaignConfig {
                disk_size_bytes: u64::MAX,
                ..valid.clone()
            },
        ] {
            let err = load_with(&broken);
            assert!(err.contains("was it edited"), "{err}");
        }
    }
}
