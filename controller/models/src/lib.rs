//! The crash models: a seeded plan of crash points, the workload boot both
//! models share, the evidence of a check and its verdict, and the two
//! models on top: [`kernel_crash`] (SIGKILL QEMU, a check boot recovers)
//! and [`powerloss`] (a block-write log, crash states built from it,
//! checked by a long-lived checker VM or on the host). Besides them, the
//! msync error-case conformance run, injected write errors' facts and the
//! workload rate measurement, which boot the same guests.
//!
//! A model takes a trial's plan and returns its record; it knows nothing of
//! the campaign loop, the results directory or the CLI.

pub mod conformance;
pub mod evidence;
pub mod io_errors;
pub mod kernel_crash;
pub mod plan;
pub mod powerloss;
pub mod rate;
pub mod trace;
pub mod workload_boot;
