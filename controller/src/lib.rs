//! The crashlab controller: everything between a campaign configuration and
//! its results. The `crashlab` binary is a thin CLI over [`campaign`].
//!
//! Data flows one way: [`config::CampaignConfig`] -> [`plan`] (seeded crash
//! points) -> [`trial`] (VM runs through [`vm`] and [`qemu`], leaving
//! evidence) -> `verifier` (a verdict per state) -> [`campaign`] (results and
//! summary).

pub mod accel;
pub mod campaign;
pub mod campaign_file;
pub mod cli;
pub mod compare;
pub mod config;
pub mod conformance;
pub mod console;
pub mod doctor;
pub mod durable;
pub mod images;
pub mod io_errors;
pub mod junit;
pub mod kept;
pub mod lifetime;
pub mod matrix;
pub mod merge;
pub mod minimise;
pub mod plan;
pub mod powerloss;
pub mod program;
pub mod qemu;
pub mod rate;
pub mod recheck;
pub mod replay;
pub mod replay_loop;
pub mod report;
pub mod results;
pub mod seal;
pub mod signals;
pub mod slurm;
pub mod trace;
pub mod trial;
pub mod verify;
pub mod vm;
