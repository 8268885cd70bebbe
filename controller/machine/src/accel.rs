//! Choosing KVM or TCG. KVM can exist and still be broken (nested KVM on some
//! hosts aborts QEMU, or hangs after "Booting from ROM"), so its presence is
//! proved by a short sanity boot, bounded by a timeout. The answer is
//! remembered for the rest of the host's boot (`accel-probe.json` beside
//! the guest images, keyed by the host's boot id and QEMU's version): a
//! hanging probe costs its whole timeout, and every campaign would pay it.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Result};
use record::Event;

use crate::images::GuestImages;
use crate::qemu::{AccelUsed, VmSpec};
use crate::vm::{self, Action, Limits, RunFiles, VmOutcome};
use config::Accel;

pub const PROBE_TIMEOUT_MS: u64 = 20_000;
/// Lines of the console quoted when a probe boot fails.
const CONSOLE_TAIL_LINES: usize = 8;

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
    let memo = ProbeMemo::path_for(images);
    let key = ProbeMemo::key();
    let verdict = if !kvm_openable {
        Err("/dev/kvm cannot be opened".to_string())
    } else if let Some(remembered) = memo.as_deref().and_then(|path| ProbeMemo::read(path, &key)) {
        remembered.map_err(|why| format!("{why}; remembered from this boot's probe"))
    } else {
        let verdict = probe_boot(images, AccelUsed::Kvm, work_dir, interrupt)?;
        if let Some(path) = &memo {
            ProbeMemo::write(path, &key, &verdict);
        }
        verdict
    };
    match (requested, verdict) {
        (_, Ok(())) => Ok((AccelUsed::Kvm, "KVM sanity boot reached /init".into())),
        (Accel::Kvm, Err(why)) => {
            bail!("--accel kvm was requested but KVM does not work here ({why}): use --accel tcg or --accel auto")
        }
        (_, Err(why)) => Ok((AccelUsed::Tcg, format!("KVM unusable ({why}); using TCG"))),
    }
}

/// Boots the guest to `/init` (which says BOOTED and halts) under `accel`,
/// bounded: `Ok(Err(why))` when the boot fails, `Err` only when
/// interrupted. The KVM sanity boot, and `crashlab doctor`'s TCG boot.
pub fn probe_boot(
    images: &GuestImages,
    accel: AccelUsed,
    work_dir: &Path,
    interrupt: &AtomicBool,
) -> Result<Result<(), String>> {
    let name = match accel {
        AccelUsed::Kvm => "kvm-probe",
        AccelUsed::Tcg => "tcg-probe",
    };
    let files = RunFiles::in_dir(work_dir, name);
    let spec = VmSpec {
        images: images.clone(),
        accel,
        memory_mib: 256,
        kernel_args: vec!["crashlab.role=probe".into()],
        drives: vec![],
        console_log: files.console_log.clone(),
        channel_socket: Default::default(),
        qmp_socket: Default::default(),
        trace_log: None,
    };
    // TCG boots several times slower than KVM, more so on a busy machine.
    let timeout_ms = match accel {
        AccelUsed::Kvm => PROBE_TIMEOUT_MS,
        AccelUsed::Tcg => 3 * PROBE_TIMEOUT_MS,
    };
    let limits = Limits {
        boot_timeout_ms: timeout_ms,
        stall_timeout_ms: timeout_ms,
        total_timeout_ms: timeout_ms,
    };
    let run = vm::run_vm(spec, &files, limits, interrupt, |event, _| match event {
        Some(Event::Booted { .. }) => Action::Kill,
        _ => Action::Continue,
    });
    // QEMU failing in any way (under KVM on some nested hosts it aborts on
    // an assertion at once) is the answer: this accelerator does not work
    // here. Only an interrupt stops the caller.
    let run = match run {
        Ok(run) => run,
        Err(e) if e.downcast_ref::<vm::Interrupted>().is_some() => return Err(e),
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    vm::bail_if_interrupted(run.outcome)?;
    // A kernel that does not boot says why on its console (a panic, a
    // missing driver): its last lines go with the answer.
    let console = console_excerpt(&std::fs::read_to_string(&files.console_log).unwrap_or_default());
    Ok(match run.outcome {
        VmOutcome::Killed => Ok(()),
        VmOutcome::Exited { code } => Err(format!(
            "QEMU exited with status {code} before /init said BOOTED{}; {console}",
            match vm::tail_of(&files.stderr_log, 1) {
                said if said.trim().is_empty() => String::new(),
                said => format!(" ({said})"),
            }
        )),
        other => Err(format!("{other:?} after {} ms; {console}", run.elapsed_ms)),
    })
}

/// What a failed boot's console says: its last lines, and before them the
/// kernel's panic or oops line when the stack trace pushed it out.
fn console_excerpt(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        return "the console is empty".into();
    }
    let tail_start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    let cause = lines[..tail_start].iter().rev().find(|l| {
        ["Kernel panic", "BUG:", "Oops", "Unable to mount root"]
            .iter()
            .any(|k| l.contains(k))
    });
    let mut excerpt = String::from("the console's last lines:\n");
    if let Some(cause) = cause {
        excerpt += &format!("{cause}\n[...]\n");
    }
    excerpt + &lines[tail_start..].join("\n")
}

/// The remembered outcome of a KVM sanity boot.
struct ProbeMemo;

impl ProbeMemo {
    fn path_for(images: &GuestImages) -> Option<std::path::PathBuf> {
        images.kernel.parent().map(|dir| dir.join("accel-probe.json"))
    }

    /// Valid for one boot of the host with one QEMU build.
    fn key() -> String {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        format!("{} {}", boot_id.trim(), crate::qemu::qemu_version())
    }

    fn read(path: &Path, key: &str) -> Option<Result<(), String>> {
        let memo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        if memo["key"].as_str()? != key || key.starts_with(' ') {
            return None;
        }
        match memo["kvm_works"].as_bool()? {
            true => Some(Ok(())),
            false => Some(Err(memo["why"].as_str().unwrap_or("unknown").to_string())),
        }
    }

    /// Best effort: a read-only images directory just means probing again.
    fn write(path: &Path, key: &str, verdict: &Result<(), String>) {
        let memo = serde_json::json!({
            "key": key,
            "kvm_works": verdict.is_ok(),
            "why": verdict.as_ref().err(),
        });
        let _ = std::fs::write(path, memo.to_string() + "\n");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_boots_console_names_the_panic_above_its_stack_trace() {
        let mut console = String::from(
            "[    1.0] Initramfs unpacking failed\n[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
        );
        for i in 0..20 {
            console += &format!("[    2.{i}]  frame_{i}+0x10/0x20\n");
        }
        let excerpt = super::console_excerpt(&console);
        assert!(
            excerpt.starts_with("the console's last lines:\n[    2.0] Kernel panic - not syncing"),
            "{excerpt}"
        );
        assert!(excerpt.ends_with("frame_19+0x10/0x20"), "{excerpt}");
        assert_eq!(super::console_excerpt("\n"), "the console is empty");
    }
}
