//! Stage 2: which crash states a trial checks (the planners are
//! `blocklog::plan_states`, a seeded sample, and `blocklog::explore_states`,
//! every state; this is how a trial's options reach them), and what they
//! cover of the model.

use super::capture::{ack_area_sectors, Capture};

/// How a trial's states are planned from its capture.
pub fn plan_options(
    config: &config::CampaignConfig,
    workload_seed: u64,
    capture: &Capture,
    ack_area_offset_bytes: u64,
) -> blocklog::PlanOptions {
    blocklog::PlanOptions {
        seed: workload_seed,
        budget: config.state_budget_per_trial(),
        torn: config.torn_writes,
        tear_unit: config.tear_unit.into(),
        ignored_sectors: ack_area_sectors(ack_area_offset_bytes, capture.device_size_bytes),
    }
}

/// The exploration's options for a trial: torn variants with
/// `--torn-writes` (4 kept lengths per write and tear unit, `--tear-unit`), the ack area left out.
pub fn explore_options(
    config: &config::CampaignConfig,
    workload_seed: u64,
    capture: &Capture,
    ack_area_offset_bytes: u64,
) -> blocklog::ExploreOptions {
    blocklog::ExploreOptions {
        seed: workload_seed,
        tears_per_write: if config.torn_writes { 4 } else { 0 },
        tear_unit: config.tear_unit.into(),
        ignored_sectors: ack_area_sectors(ack_area_offset_bytes, capture.device_size_bytes),
        ..blocklog::ExploreOptions::default()
    }
}

/// A trial's states as its configuration asks (`--explore`), and their
/// coverage of the model: for a sample, the model counted (what a budget
/// buys), with the sample's states as the ones checked.
pub fn trial_states(
    config: &config::CampaignConfig,
    workload_seed: u64,
    capture: &Capture,
    ack_area_offset_bytes: u64,
) -> (Vec<blocklog::CrashState>, blocklog::Coverage) {
    let explore = explore_options(config, workload_seed, capture, ack_area_offset_bytes);
    match config.explore {
        config::Explore::Exhaustive => {
            let explored = blocklog::explore_states(&capture.log, &explore);
            (explored.states, explored.coverage)
        }
        config::Explore::Sample => {
            let options = plan_options(config, workload_seed, capture, ack_area_offset_bytes);
            let states = blocklog::plan_states(&capture.log, &options);
            let coverage = blocklog::count_model(&capture.log, &explore, &states);
            (states, coverage)
        }
    }
}
