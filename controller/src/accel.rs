//! Choosing KVM or TCG. KVM can exist and still be broken (nested KVM on some
//! hosts aborts QEMU, or hangs after "Booting from ROM"), so its presence is
//! proved by a short sanity boot, bounded by a timeout.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Result};
use record::Event;

use crate::config::Accel;
use crate::images::GuestImages;
use crate::qemu::{AccelUsed, VmSpec};
use crate::vm::{self, Action, Limits, RunFiles, VmOutcome};

pub const PROBE_TIMEOUT_MS: u64 = 20_000;

/// Returns the accelerator to use and why.
pub fn choose(
    requested: Accel,
    images: &GuestImages,
    work_dir: &Path,
    interrupt: &AtomicBool,
) -> Result<(AccelUsed, String)> {
    if requested == Accel::Tcg {
        return Ok((AccelUsed::Tcg, "requested with --accel tcg".into()));
    }
    let kvm_openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let verdict = if kvm_openable {
        sanity_boot(images, work_dir, interrupt)?
    } else {
        Err("/dev/kvm cannot be opened".to_string())
    };
    match (requested, verdict) {
        (_, Ok(())) => Ok((AccelUsed::Kvm, "KVM sanity boot reached /init".into())),
        (Accel::Kvm, Err(why)) => {
            bail!("--accel kvm was requested but KVM does not work here ({why}): use --accel tcg or --accel auto")
        }
        (_, Err(why)) => Ok((AccelUsed::Tcg, format!("KVM unusable ({why}); using TCG"))),
    }
}

fn sanity_boot(images: &GuestImages, work_dir: &Path, interrupt: &AtomicBool) -> Result<Result<(), String>> {
    let files = RunFiles::in_dir(work_dir, "kvm-probe");
    let spec = VmSpec {
        images: images.clone(),
        accel: AccelUsed::Kvm,
        memory_mib: 256,
        kernel_args: vec!["crashlab.role=probe".into()],
        drives: vec![],
        console_log: files.console_log.clone(),
        channel_socket: Default::default(),
    };
    let limits = Limits {
        boot_timeout_ms: PROBE_TIMEOUT_MS,
        stall_timeout_ms: PROBE_TIMEOUT_MS,
        total_timeout_ms: PROBE_TIMEOUT_MS,
    };
    let run = vm::run_vm(spec, &files, limits, interrupt, |event, _| match event {
        Some(Event::Booted { .. }) => Action::Kill,
        _ => Action::Continue,
    })?;
    vm::bail_if_interrupted(run.outcome)?;
    Ok(match run.outcome {
        VmOutcome::Killed => Ok(()),
        VmOutcome::Exited { code } => Err(format!(
            "QEMU exited with status {code}: {}",
            vm::tail_of(&files.stderr_log, 1)
        )),
        other => Err(format!("{other:?} after {} ms", run.elapsed_ms)),
    })
}
