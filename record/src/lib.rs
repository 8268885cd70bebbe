//! The contract between the guest workload and the host verifier.
//!
//! Three things cross the VM boundary and are defined once, here:
//! - [`layout`]: the bytes of one record in the data file (written by the
//!   workload, checked by the verifier after a crash);
//! - [`protocol`]: the lines the workload prints on its channel (`BEGIN`,
//!   `ACK`, ...), which the controller logs and the verifier reads;
//! - [`params`]: the workload's parameters, carried on the guest kernel
//!   command line.
//!
//! This crate does no I/O and never reads a clock: the same inputs always give
//! the same bytes, which is what makes a crash state reproducible.

pub mod error;
pub mod items;
pub mod layout;
pub mod params;
pub mod pattern;
pub mod protocol;

pub use layout::{RecordHeader, RecordLayoutError};
pub use params::{DurabilityMode, ParamsError, PlantedBug, WorkloadParams};
pub use pattern::{Geometry, Pattern};
pub use protocol::{Event, ProtocolError, ProtocolLog};
