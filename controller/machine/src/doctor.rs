//! `crashlab doctor`: would a campaign run here, and if not, what to
//! install or change. Each check is a finding (ok, warning, failure) with
//! the fix; a failure means the default campaign (ext4, kernel crash)
//! cannot run, a warning that some option cannot (another filesystem, the
//! host checker) or that it will be slow (no KVM).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use crate::qemu::AccelUsed;
use config::Filesystem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub what: String,
    pub status: Status,
    pub detail: String,
    /// What to install or change; `None` when nothing needs doing.
    pub fix: Option<String>,
}

pub struct DoctorRequest<'a> {
    pub images_dir: &'a Path,
    /// Where `images_dir` came from (`--images-dir`, `CRASHLAB_IMAGES_DIR`,
    /// the per-user cache, the checkout's), said beside it.
    pub images_source: &'a str,
    pub results_dir: &'a Path,
    /// Boot the guest once (TCG, or the KVM sanity boot): the only proof
    /// that QEMU, the kernel and the initramfs work together.
    pub boot: bool,
    pub interrupt: &'a AtomicBool,
}

/// Below this much free space a campaign's images and logs may not fit.
const FREE_FAIL_BYTES: u64 = 512 << 20;
/// Below this, long power-loss campaigns (kept evidence) may not fit.
const FREE_WARN_BYTES: u64 = 4 << 30;
/// The oldest QEMU crashlab was run with (Debian 12's).
const QEMU_MIN_VERSION: (u32, u32) = (7, 2);

/// A host tool, the package that has it, and what needs it.
struct Tool {
    command: &'static str,
    package: &'static str,
    /// Needed by the default campaign (a failure when missing), or only by
    /// the option named.
    needed_by: Option<&'static str>,
}

const TOOLS: &[Tool] = &[
    Tool {
        command: "mkfs.ext4",
        package: "e2fsprogs",
        needed_by: None,
    },
    Tool {
        command: "dumpe2fs",
        package: "e2fsprogs",
        needed_by: Some("recording ext4's parameters"),
    },
    Tool {
        command: "e2fsck",
        package: "e2fsprogs",
        needed_by: Some("--checker host"),
    },
    Tool {
        command: "debugfs",
        package: "e2fsprogs",
        needed_by: Some("--checker host"),
    },
    Tool {
        command: "mkfs.xfs",
        package: "xfsprogs",
        needed_by: Some("--fs xfs"),
    },
    Tool {
        command: "xfs_db",
        package: "xfsprogs",
        needed_by: Some("recording xfs's parameters"),
    },
    Tool {
        command: "mkfs.btrfs",
        package: "btrfs-progs",
        needed_by: Some("--fs btrfs"),
    },
    Tool {
        command: "btrfs",
        package: "btrfs-progs",
        needed_by: Some("recording btrfs's parameters"),
    },
    Tool {
        command: "mkfs.f2fs",
        package: "f2fs-tools",
        needed_by: Some("--fs f2fs"),
    },
];

/// The file `command` names on $PATH, if it is there and executable.
pub fn find_on_path(command: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `QEMU emulator version 7.2.19 (Debian ...)` → (7, 2).
pub fn parse_qemu_version(line: &str) -> Option<(u32, u32)> {
    let version = line.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

fn finding(what: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        what: what.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

pub fn examine(req: &DoctorRequest) -> Result<Vec<Finding>> {
    let mut found = Vec::new();
    let qemu_ok = check_qemu(&mut found);
    for tool in TOOLS {
        found.push(match find_on_path(tool.command) {
            Some(path) => finding(tool.command, Status::Ok, path.display().to_string(), None),
            None => finding(
                tool.command,
                if tool.needed_by.is_none() {
                    Status::Fail
                } else {
                    Status::Warn
                },
                match tool.needed_by {
                    None => "missing: no campaign can make its filesystem".to_string(),
                    Some(what) => format!("missing: needed for {what}"),
                },
                Some(format!("apt-get install {} (or `cargo xtask deps`)", tool.package)),
            ),
        });
    }
    let images = match crate::images::locate(req.images_dir) {
        Ok(images) => {
            found.push(finding(
                "guest kernel",
                Status::Ok,
                format!(
                    "{} ({}, {})",
                    images.identity.summary_line(),
                    req.images_dir.display(),
                    req.images_source
                ),
                None,
            ));
            for fs in [Filesystem::Ext4, Filesystem::Xfs, Filesystem::Btrfs, Filesystem::F2fs] {
                if let Err(e) = images.check_supports(fs) {
                    found.push(finding(
                        &format!("guest {}", fs.name()),
                        if fs == Filesystem::Ext4 {
                            Status::Fail
                        } else {
                            Status::Warn
                        },
                        format!("{e:#}"),
                        Some("build the guest kernel with it, then `cargo xtask images`".into()),
                    ));
                }
            }
            Some(images)
        }
        Err(e) => {
            found.push(finding(
                "guest images",
                Status::Fail,
                format!("{e:#}"),
                Some(format!(
                    "`cargo xtask images`, or --images-dir DIR (now {}, {})",
                    req.images_dir.display(),
                    req.images_source
                )),
            ));
            None
        }
    };
    check_accel(req, images.as_ref().filter(|_| qemu_ok), &mut found)?;
    check_space(req.results_dir, "results directory", &mut found);
    check_space(&std::env::temp_dir(), "temporary directory", &mut found);
    Ok(found)
}

fn check_qemu(found: &mut Vec<Finding>) -> bool {
    let Some(path) = find_on_path(crate::qemu::QEMU_BINARY) else {
        found.push(finding(
            "QEMU",
            Status::Fail,
            format!("{} is not on PATH", crate::qemu::QEMU_BINARY),
            Some("apt-get install qemu-system-x86 (or `cargo xtask deps`)".into()),
        ));
        return false;
    };
    let version = crate::qemu::qemu_version();
    match parse_qemu_version(&version) {
        Some(v) if v >= QEMU_MIN_VERSION => {
            found.push(finding(
                "QEMU",
                Status::Ok,
                format!("{version} ({})", path.display()),
                None,
            ));
            true
        }
        Some(_) => {
            found.push(finding(
                "QEMU",
                Status::Warn,
                format!(
                    "{version}: older than {}.{}, the oldest crashlab was run with",
                    QEMU_MIN_VERSION.0, QEMU_MIN_VERSION.1
                ),
                Some("install a newer qemu-system-x86".into()),
            ));
            true
        }
        None => {
            found.push(finding(
                "QEMU",
                Status::Fail,
                format!("{} does not run or says no version ({version:?})", path.display()),
                Some("reinstall qemu-system-x86".into()),
            ));
            false
        }
    }
}

fn check_accel(
    req: &DoctorRequest,
    images: Option<&crate::images::GuestImages>,
    found: &mut Vec<Finding>,
) -> Result<()> {
    let Some(images) = images else {
        found.push(finding(
            "accelerator",
            Status::Warn,
            "not checked: QEMU or the guest images are missing",
            None,
        ));
        return Ok(());
    };
    if !req.boot {
        found.push(finding("accelerator", Status::Warn, "not checked (--no-boot)", None));
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("crashlab-doctor-")
        .tempdir()
        .map_err(|e| anyhow::anyhow!("cannot create a temporary directory: {e}"))?;
    let (accel, why) = crate::accel::choose(config::Accel::Auto, images, work.path(), req.interrupt)?;
    if accel == AccelUsed::Kvm {
        found.push(finding("accelerator", Status::Ok, format!("KVM: {why}"), None));
        return Ok(());
    }
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    found.push(finding(
        "KVM",
        Status::Warn,
        why,
        Some(match kvm_opens {
            false => "campaigns run under TCG, several times slower: load the kvm module and give the user \
                      /dev/kvm (the kvm group) where the CPU has virtualisation"
                .into(),
            true => "campaigns run under TCG, several times slower: /dev/kvm opens but a guest does not boot \
                     with it (nested KVM often fails so); nothing to do unless the host's KVM should work"
                .into(),
        }),
    ));
    match crate::accel::probe_boot(images, AccelUsed::Tcg, work.path(), req.interrupt)? {
        Ok(()) => found.push(finding(
            "TCG boot",
            Status::Ok,
            "the guest reached /init under TCG",
            None,
        )),
        Err(why) => found.push(finding(
            "TCG boot",
            Status::Fail,
            format!("the guest did not boot: {why}"),
            Some(match &images.identity.build {
                Some(build) => format!(
                    "the kernel built from source does not boot: check its configuration (vm-images/kernel.config, \
                     your --config-fragment files) and patches, then rebuild it ({})",
                    build.rebuild
                ),
                None => "rebuild the guest images with `cargo xtask images`".into(),
            }),
        )),
    }
    Ok(())
}

/// Free space where `dir` is, or would be (its nearest existing ancestor).
fn check_space(dir: &Path, what: &str, found: &mut Vec<Finding>) {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Some(existing) = absolute.ancestors().find(|p| p.exists()) else {
        return;
    };
    let writable = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok();
    let free = nix::sys::statvfs::statvfs(existing)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    let detail = format!("{} GiB free at {}", free >> 30, existing.display());
    found.push(match (writable, free) {
        (false, _) => finding(
            what,
            Status::Fail,
            format!("{} is not writable", existing.display()),
            Some("choose another directory (--results-dir) or fix its permissions".into()),
        ),
        (_, f) if f < FREE_FAIL_BYTES => finding(
            what,
            Status::Fail,
            detail,
            Some(format!("free at least {} MiB there", FREE_FAIL_BYTES >> 20)),
        ),
        (_, f) if f < FREE_WARN_BYTES => finding(
            what,
            Status::Warn,
            detail,
            Some(format!(
                "long power-loss campaigns keep evidence: {} GiB or more is safer",
                FREE_WARN_BYTES >> 30
            )),
        ),
        _ => finding(what, Status::Ok, detail, None),
    });
}

/// The findings as a table, then what to do.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    let width = findings.iter().map(|f| f.what.len()).max().unwrap_or(8);
    for f in findings {
        let mark = match f.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        out += &format!("{mark}  {:<width$}  {}\n", f.what, f.detail);
    }
    let fixes: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.fix.is_some() && f.status != Status::Ok)
        .collect();
    if !fixes.is_empty() {
        out += "\nto do:\n";
        for f in fixes {
            out += &format!("  {}: {}\n", f.what, f.fix.as_deref().unwrap_or(""));
        }
    }
    out += match findings.iter().any(|f| f.status == Status::Fail) {
        true => "\na campaign cannot run here yet: see FAIL above\n",
        false => "\na campaign can run here\n",
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_are_read_from_its_banner() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2))
        );
        assert_eq!(parse_qemu_version("QEMU emulator version 10.0.2"), Some((10, 0)));
        assert_eq!(parse_qemu_version("unknown"), None);
    }

    #[test]
    fn a_failure_says_a_campaign_cannot_run_and_lists_the_fix() {
        let text = render(&[
            finding("QEMU", Status::Ok, "7.2", None),
            finding(
                "mkfs.ext4",
                Status::Fail,
                "missing",
                Some("apt-get install e2fsprogs".into()),
            ),
        ]);
        assert!(text.contains("FAIL  mkfs.ext4"), "{text}");
        assert!(text.contains("mkfs.ext4: apt-get install e2fsprogs"), "{text}");
        assert!(text.ends_with("cannot run here yet: see FAIL above\n"), "{text}");
    }
}
