//! A power-loss trial's kept evidence, loaded: the campaign's config, the
//! trial's plan, its block-write log, base image and serial protocol.
//! `replay-state` rebuilds one state from it, `recheck` all of them.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::CampaignConfig;
use crate::plan::{plan_trial, TrialPlan};
use crate::powerloss::{self, Capture};

pub struct KeptTrial {
    pub config: CampaignConfig,
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
        let (_, mut config) = crate::campaign::read_campaign_json(campaign_dir)?;
        anyhow::ensure!(
            config.crash_model == crate::config::CrashModel::PowerLoss,
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
        let plan = plan_trial(&config, trial);
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
        Ok(KeptTrial {
            config,
            plan,
            trial_dir,
            log_path,
            base,
            ack_area_offset_bytes,
            params,
            capture,
        })
    }

    /// The guest a check of this trial boots: the campaign's images (its
    /// program's initramfs, for a program under test) and the accelerator.
    pub fn guest(
        &self,
        campaign_dir: &Path,
        work_dir: &Path,
        interrupt: &std::sync::atomic::AtomicBool,
    ) -> Result<(crate::images::GuestImages, crate::qemu::AccelUsed)> {
        let images = crate::program::campaign_images(
            crate::images::locate_build(&self.config.images_dir, self.config.kernel_build.as_deref())?,
            &self.config,
            campaign_dir,
            false,
        )?;
        let (accel, _) = crate::accel::choose(self.config.accel, &images, work_dir, interrupt)?;
        Ok((images, accel))
    }

    /// The trial's states, planned as the campaign planned them.
    pub fn states(&self) -> Vec<blocklog::CrashState> {
        let options = powerloss::plan_options(
            &self.config,
            self.plan.workload_seed,
            &self.capture,
            self.ack_area_offset_bytes,
        );
        blocklog::plan_states(&self.capture.log, &options)
    }
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
            crash_model: crate::config::CrashModel::PowerLoss,
            ..crate::config::sample_config()
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
