//! Stage 2: which crash states a trial checks (the planner is
//! `blocklog::plan_states`; this is how a trial's options reach it).

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
        ignored_sectors: ack_area_sectors(ack_area_offset_bytes, capture.device_size_bytes),
    }
}
