//! The seeded plan: which crash point each trial uses.
//!
//! A trial's plan is a pure function of (campaign seed, trial index), so one
//! trial can be rerun alone and the same seed always gives the same crash
//! points, whatever the other trials did.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use config::{CampaignConfig, CrashPointKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CrashPoint {
    /// Kill right after the workload's `acks`-th ACK: the workload holds
    /// there, so the point is exact.
    AfterAcks { acks: u64 },
    /// Kill `delay_ms` after the workload reported READY, wherever it is.
    AfterDelay { delay_ms: u64 },
    /// No kill: the workload finishes and the guest powers off.
    AtEnd,
    /// Kill where the program stops at its named point (`--crash-at`,
    /// the configuration names it): the relay holds it there.
    AtNamedPoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialPlan {
    pub trial: u64,
    pub workload_seed: u64,
    pub crash_point: CrashPoint,
    /// With `--inject-write-error`: the record whose disk write fails.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failing_record: Option<u64>,
}

pub fn plan_trial(config: &CampaignConfig, trial: u64) -> TrialPlan {
    assert!(
        trial < config.trials,
        "trial {trial} outside the campaign's {}",
        config.trials
    );
    // Mix the index in so that neighbouring trials get unrelated streams.
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(trial);
    let workload_seed = rng.random::<u64>();
    // A write error in the first half of the run; an ack-count crash point
    // then falls after it, so the crash tests what was synced after the
    // error.
    let failing_record = config.inject_write_error.map(|_| {
        let quarter = (config.records_per_trial / 4).max(1);
        (quarter + rng.random_range(0..quarter)).min(config.records_per_trial - 1)
    });
    if config.crash_at.is_some() {
        return TrialPlan {
            trial,
            workload_seed,
            crash_point: CrashPoint::AtNamedPoint,
            failing_record,
        };
    }
    let use_acks = match config.crash_points {
        CrashPointKind::Acks => true,
        CrashPointKind::Delay => false,
        CrashPointKind::Mixed => rng.random_bool(0.5),
        CrashPointKind::End => {
            return TrialPlan {
                trial,
                workload_seed,
                crash_point: CrashPoint::AtEnd,
                failing_record,
            }
        }
    };
    let first_ack = failing_record.map_or(1, |r| (r + 1).min(config.records_per_trial));
    let crash_point = if use_acks {
        CrashPoint::AfterAcks {
            acks: rng.random_range(first_ack..=config.records_per_trial),
        }
    } else {
        CrashPoint::AfterDelay {
            delay_ms: rng.random_range(0..=config.crash_delay_max_ms),
        }
    };
    TrialPlan {
        trial,
        workload_seed,
        crash_point,
        failing_record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::sample_config;

    #[test]
    fn same_seed_same_plan() {
        let c = sample_config();
        let a: Vec<_> = (0..c.trials).map(|t| plan_trial(&c, t)).collect();
        let b: Vec<_> = (0..c.trials).map(|t| plan_trial(&c, t)).collect();
        assert_eq!(a, b);
        let other = CampaignConfig { seed: 2, ..c.clone() };
        assert_ne!(a, (0..c.trials).map(|t| plan_trial(&other, t)).collect::<Vec<_>>());
    }

    #[test]
    fn trials_differ_and_stay_in_range() {
        let c = CampaignConfig {
            trials: 200,
            ..sample_config()
        };
        let plans: Vec<_> = (0..c.trials).map(|t| plan_trial(&c, t)).collect();
        let mut seeds: Vec<_> = plans.iter().map(|p| p.workload_seed).collect();
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), 200, "every trial has its own workload seed");
        let mut kinds = (0, 0);
        for p in &plans {
            match p.crash_point {
                CrashPoint::AfterAcks { acks } => {
                    kinds.0 += 1;
                    assert!((1..=c.records_per_trial).contains(&acks));
                }
                CrashPoint::AfterDelay { delay_ms } => {
                    kinds.1 += 1;
                    assert!(delay_ms <= c.crash_delay_max_ms);
                }
                CrashPoint::AtEnd | CrashPoint::AtNamedPoint => panic!("mixed draws acks or delays"),
            }
        }
        assert!(kinds.0 > 50 && kinds.1 > 50, "mixed draws both kinds: {kinds:?}");
    }

    #[test]
    fn a_named_point_is_every_trials_crash_point() {
        let c = CampaignConfig {
            trials: 5,
            crash_at: Some("committed:3".parse().unwrap()),
            ..config::sample_config()
        };
        for t in 0..5 {
            assert_eq!(plan_trial(&c, t).crash_point, CrashPoint::AtNamedPoint);
        }
        let params = c.workload_params(1, None, None);
        assert_eq!(params.hold_at_point.unwrap().to_string(), "committed:3");
    }

    #[test]
    fn acks_only() {
        let c = CampaignConfig {
            crash_points: CrashPointKind::Acks,
            ..sample_config()
        };
        assert!((0..c.trials).all(|t| matches!(plan_trial(&c, t).crash_point, CrashPoint::AfterAcks { .. })));
    }
}
