//! Tools over saved results: each reads a results directory (verified
//! against its seals first) and writes beside it. `verify` (the results
//! directory's fsck), `merge` (shards into one), `report` (report.html),
//! `junit`, `replay` and `replay_loop` (one state again), `recheck` (kept
//! captures judged again), `minimise`, `compare` (two kernels), `slurm`
//! (a campaign as an array job).
//!
//! Nothing here runs a campaign loop of its own: a tool that needs trials
//! asks `campaign` for them.

pub mod compare;
pub mod junit;
pub mod merge;
pub mod minimise;
pub mod recheck;
pub mod replay;
pub mod replay_loop;
pub mod report;
pub mod slurm;
pub mod verify;
