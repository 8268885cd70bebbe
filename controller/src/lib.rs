//! The crashlab CLI as a library: its flags, their conversion to a
//! campaign configuration and the commands they run ([`cli`]). The
//! `crashlab` binary only dispatches to it.
//!
//! The layers below, each a crate, bottom to top (ARCHITECTURE.md):
//! `config` (the campaign's configuration) -> `machine` (guests, QEMU,
//! images) -> `models` (kernel crash, power loss, the evidence of a check)
//! -> `campaign` (the loop, results) -> `tools` (verify, merge, report,
//! replay, ...) -> this CLI. Every arrow points down; a cycle cannot
//! compile.

pub mod cli;
