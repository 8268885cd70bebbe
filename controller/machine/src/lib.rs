//! The machine layer: everything about running a guest, and nothing about
//! what a run means. Guest images and their identity, QEMU command lines,
//! one VM's run with its limits and lifetime (no QEMU outlives crashlab),
//! the accelerator choice, the user's program packed into an initramfs
//! layer, a disk that fails a write, the guest console's one reader, the
//! seals of kept evidence, and `doctor`.
//!
//! It knows the campaign's configuration (`config`) and nothing above it:
//! no crash model, no verdict, no results directory layout beyond the
//! files a seal covers.

pub mod accel;
pub mod console;
pub mod doctor;
pub mod durable;
pub mod elf;
pub mod faulty_disk;
pub mod images;
pub mod libraries;
pub mod lifetime;
pub mod program;
pub mod qemu;
pub mod seal;
pub mod signals;
pub mod vm;
