//! What the power-loss capture costs the workload: the same run (same seed,
//! records, filesystem) on a plain disk, with the ack area (one O_DIRECT
//! sector write per ack), and with the ack area behind QEMU's blklogwrites
//! driver, in rotation, `pairs` times. Each run is one boot to the end, no
//! crash. Ratios are taken within a round (runs side by side) and their
//! median reported: the machine's load drifts between rounds.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use crate::plan::{CrashPoint, TrialPlan};
use crate::workload_boot::TrialContext;
use config::{CampaignConfig, CrashPointKind};
use machine::qemu::Drive;
use machine::vm::RunFiles;
use machine::{accel, images};

/// Rounds at most: each is three boots.
pub const PAIRS_MAX: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// No ack area, no log: the workload as the kernel-crash model runs it.
    Plain,
    /// The ack area, no log.
    AckArea,
    /// The ack area and the block-write log: the power-loss capture.
    Logged,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RateReport {
    /// acks per second between READY and the last ACK, per round.
    pub plain: Vec<f64>,
    pub ack_area: Vec<f64>,
    pub logged: Vec<f64>,
    /// Median over rounds of plain / ack_area rate within a round.
    pub ack_area_slowdown: f64,
    /// Median over rounds of ack_area / logged: what the log itself costs.
    pub log_slowdown: f64,
    /// Median over rounds of plain / logged: the whole capture's cost.
    pub capture_slowdown: f64,
}

pub fn measure(config: &CampaignConfig, pairs: u32, dir: &Path, interrupt: &AtomicBool) -> Result<RateReport> {
    anyhow::ensure!(
        (1..=PAIRS_MAX).contains(&pairs),
        "--pairs {pairs}: between 1 and {PAIRS_MAX}"
    );
    let mut config = config.clone();
    config.crash_points = CrashPointKind::End;
    config.validate().map_err(anyhow::Error::msg)?;
    let images = images::locate(&config.images_dir)?;
    images.check_supports(config.fs)?;
    std::fs::create_dir_all(dir)?;
    let (accel, _) = accel::choose(config.accel, &images, dir, interrupt)?;
    let base = dir.join("base-disk.img");
    images::make_filesystem(config.fs, &config.mkfs_words(), &base, config.disk_size_bytes)?;
    let ack_area_offset_bytes = config.ack_area_offset_bytes();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)?
        .set_len(ack_area_offset_bytes + config.ack_area_size_bytes())?;
    let ctx = TrialContext {
        config: &config,
        images: &images,
        accel,
        base_disk: &base,
        interrupt,
        rerun_command: "",
    };
    let plan = TrialPlan {
        trial: 0,
        workload_seed: config.seed,
        crash_point: CrashPoint::AtEnd,
        failing_record: None,
    };
    let mut report = RateReport {
        plain: Vec::new(),
        ack_area: Vec::new(),
        logged: Vec::new(),
        ack_area_slowdown: 0.0,
        log_slowdown: 0.0,
        capture_slowdown: 0.0,
    };
    for round in 0..pairs {
        for variant in [Variant::Plain, Variant::AckArea, Variant::Logged] {
            let rate = run_once(
                &ctx,
                &plan,
                variant,
                &base,
                ack_area_offset_bytes,
                &dir.join(format!("{round}")),
            )?;
            match variant {
                Variant::Plain => report.plain.push(rate),
                Variant::AckArea => report.ack_area.push(rate),
                Variant::Logged => report.logged.push(rate),
            }
        }
    }
    let ratios = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect());
    report.ack_area_slowdown = ratios(&report.plain, &report.ack_area);
    report.log_slowdown = ratios(&report.ack_area, &report.logged);
    report.capture_slowdown = ratios(&report.plain, &report.logged);
    let _ = std::fs::remove_file(&base);
    Ok(report)
}

/// One boot to the end; acks per second between READY and the last ACK.
fn run_once(
    ctx: &TrialContext,
    plan: &TrialPlan,
    variant: Variant,
    base: &Path,
    ack_area_offset_bytes: u64,
    dir: &Path,
) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let name = match variant {
        Variant::Plain => "plain",
        Variant::AckArea => "ack-area",
        Variant::Logged => "logged",
    };
    let disk = dir.join(format!("{name}.img"));
    let log = dir.join(format!("{name}.log"));
    images::copy_sparse(base, &disk)?;
    let ack_area = (variant != Variant::Plain).then_some(ack_area_offset_bytes);
    let params = ctx.config.workload_params(plan.workload_seed, None, ack_area);
    let drive = match variant {
        Variant::Logged => {
            std::fs::File::create(&log)?;
            Drive::Logged {
                disk: disk.clone(),
                log: log.clone(),
            }
        }
        _ => Drive::Raw(disk.clone()),
    };
    let run = crate::workload_boot::run_workload(ctx, plan, &params, drive, &RunFiles::in_dir(dir, name))?;
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&log);
    anyhow::ensure!(
        run.workload_error.is_none() && run.workload_rate.acks > 0,
        "the {name} run acked nothing ({:?}): see {}",
        run.workload_error,
        dir.display()
    );
    Ok(run.workload_rate.acks as f64 * 1000.0 / run.workload_rate.ready_to_last_ack_ms.max(1) as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(vec![]), 0.0);
    }
}
