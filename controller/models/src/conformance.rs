//! `crashlab conformance`: msync's interface on the running kernel, no
//! crash needed. One guest boot per filesystem runs the suite of
//! `workload/src/conformance.rs` (each call of the seeds, with its return
//! value, errno and what it did to the page); here each observation is set
//! beside what POSIX requires and what Linux documents (the Linux System
//! Programming and tutorial seeds, the man page). Where Linux differs from
//! POSIX the table says so: a finding, not a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use record::Event;
use serde::Serialize;

use config::{Accel, Filesystem};
use machine::qemu::{Drive, VmSpec};
use machine::vm::{self, Action, Limits, RunFiles};

/// What POSIX says a call does.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Posix {
    /// Shall fail with this errno.
    Fails(&'static str),
    /// May fail with this errno (or succeed).
    MayFail(&'static str),
    /// Shall succeed, with this effect (a `key=value` the guest reports).
    Succeeds(Option<&'static str>),
    /// Leaves it unspecified.
    Unspecified,
}

pub struct Case {
    pub name: &'static str,
    pub call: &'static str,
    pub posix: Posix,
    pub linux_documents: &'static str,
}

/// The suite, in the order the guest runs it.
pub const CASES: &[Case] = &[
    Case {
        name: "unaligned-addr",
        call: "msync(addr + 1, page, MS_SYNC)",
        posix: Posix::MayFail("EINVAL"),
        linux_documents: "EINVAL: addr must be page-aligned (LSP)",
    },
    Case {
        name: "sync-and-async",
        call: "msync(addr, page, MS_SYNC | MS_ASYNC)",
        posix: Posix::Fails("EINVAL"),
        linux_documents: "EINVAL: either MS_ASYNC or MS_SYNC, not both (LSP)",
    },
    Case {
        name: "unknown-flag",
        call: "msync(addr, page, MS_SYNC | 0x100)",
        posix: Posix::Fails("EINVAL"),
        linux_documents: "EINVAL for unknown flags (man msync)",
    },
    Case {
        name: "no-flags",
        call: "msync(addr, page, 0)",
        posix: Posix::Fails("EINVAL"),
        linux_documents: "\"either MS_ASYNC or MS_SYNC must be specified\" (LSP)",
    },
    Case {
        name: "invalidate-only",
        call: "msync(addr, page, MS_INVALIDATE)",
        posix: Posix::Fails("EINVAL"),
        linux_documents: "\"either MS_ASYNC or MS_SYNC must be specified\" (LSP)",
    },
    Case {
        name: "zero-length",
        call: "msync(addr, 0, MS_SYNC)",
        posix: Posix::Unspecified,
        linux_documents: "0: no pages (man msync)",
    },
    Case {
        name: "length-not-page-multiple",
        call: "msync(addr, page + 1, MS_SYNC)",
        posix: Posix::Succeeds(Some("tail-page-written=yes")),
        linux_documents: "length rounded up to whole pages (tutorial)",
    },
    Case {
        name: "ms-async",
        call: "msync(addr, page, MS_ASYNC)",
        posix: Posix::Succeeds(None),
        linux_documents: "returns at once, write scheduled (LSP); a no-op since 2.6.19 (man msync)",
    },
    Case {
        name: "ms-sync",
        call: "msync(addr, page, MS_SYNC)",
        posix: Posix::Succeeds(Some("page-written=yes")),
        linux_documents: "returns once the pages are written (LSP)",
    },
    Case {
        name: "mtime-ctime-updated",
        call: "write through the mapping, msync(MS_SYNC), stat",
        posix: Posix::Succeeds(Some("mtime=yes,ctime=yes")),
        linux_documents: "updated after a write, before a later msync (man mmap)",
    },
    Case {
        name: "invalidate-locked",
        call: "mlock, msync(addr, page, MS_SYNC | MS_INVALIDATE)",
        posix: Posix::Fails("EBUSY"),
        linux_documents: "EBUSY on a locked range with MS_INVALIDATE (man msync)",
    },
    Case {
        name: "private-mapping",
        call: "write to MAP_PRIVATE, msync(MS_SYNC), pread",
        posix: Posix::Succeeds(Some("file-changed=no")),
        linux_documents: "private changes never reach the file (man mmap)",
    },
    Case {
        name: "unmapped",
        call: "munmap a page, msync(it, page, MS_SYNC)",
        posix: Posix::Fails("ENOMEM"),
        linux_documents: "ENOMEM: the range is not mapped (man msync)",
    },
    Case {
        name: "partly-unmapped",
        call: "munmap 2nd of 2 pages, msync(both, MS_SYNC)",
        posix: Posix::Fails("ENOMEM"),
        linux_documents: "ENOMEM, after syncing the mapped part (mm/msync.c)",
    },
    Case {
        name: "anonymous-mapping",
        call: "msync(anonymous memory, page, MS_SYNC)",
        posix: Posix::Unspecified,
        linux_documents: "0: nothing to write",
    },
];

/// One call as the guest saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub rc: i32,
    pub errno: i32,
    pub detail: String,
}

impl Observed {
    pub fn describe(&self) -> String {
        let result = match self.rc {
            0 => "0".to_string(),
            _ => errno_name(self.errno),
        };
        match self.detail.as_str() {
            "-" => result,
            detail => format!("{result} {detail}"),
        }
    }
}

/// How an observation stands against POSIX.
pub fn versus_posix(posix: Posix, observed: &Observed) -> &'static str {
    let errno = errno_name(observed.errno);
    if observed.detail.contains("=unknown") {
        return "cannot tell";
    }
    match posix {
        Posix::Fails(e) if observed.rc != 0 && errno == e => "as required",
        Posix::Fails(_) => "DIFFERS",
        Posix::MayFail(e) if observed.rc == 0 || errno == e => "allowed",
        Posix::MayFail(_) => "DIFFERS",
        Posix::Succeeds(effect) if observed.rc == 0 && effect.is_none_or(|e| observed.detail == e) => "as required",
        Posix::Succeeds(_) => "DIFFERS",
        Posix::Unspecified => "unspecified",
    }
}

pub fn errno_name(errno: i32) -> String {
    match errno {
        0 => "0".into(),
        e if e == nix::libc::EINVAL => "EINVAL".into(),
        e if e == nix::libc::ENOMEM => "ENOMEM".into(),
        e if e == nix::libc::EBUSY => "EBUSY".into(),
        e if e == nix::libc::EIO => "EIO".into(),
        e if e == nix::libc::ENOSPC => "ENOSPC".into(),
        e => format!("errno {e}"),
    }
}

pub struct ConformanceRequest<'a> {
    pub filesystems: Vec<Filesystem>,
    pub images_dir: PathBuf,
    pub out_dir: PathBuf,
    pub accel: Accel,
    pub boot_timeout_ms: u64,
    pub interrupt: &'a AtomicBool,
}

#[derive(Serialize)]
pub struct ConformanceRow {
    pub case: &'static str,
    pub call: &'static str,
    pub posix: Posix,
    pub linux_documents: &'static str,
    /// Per filesystem: what the call did, and how it stands against POSIX.
    pub observed: BTreeMap<&'static str, (Observed, &'static str)>,
}

#[derive(Serialize)]
pub struct ConformanceTable {
    pub kernel_release: String,
    pub accel: machine::qemu::AccelUsed,
    pub rows: Vec<ConformanceRow>,
}

/// Boots one guest per filesystem and gathers the table.
pub fn run_conformance(req: &ConformanceRequest) -> Result<ConformanceTable> {
    let images = machine::images::locate(&req.images_dir)?;
    for &fs in &req.filesystems {
        images.check_supports(fs)?;
    }
    std::fs::create_dir_all(&req.out_dir)
        .with_context(|| format!("cannot create {} (disk full? read-only?)", req.out_dir.display()))?;
    let (accel, _) = machine::accel::choose(req.accel, &images, &req.out_dir, req.interrupt)?;
    let mut rows: Vec<ConformanceRow> = CASES
        .iter()
        .map(|c| ConformanceRow {
            case: c.name,
            call: c.call,
            posix: c.posix,
            linux_documents: c.linux_documents,
            observed: BTreeMap::new(),
        })
        .collect();
    for &fs in &req.filesystems {
        let observed = run_one(req, &images, accel, fs)?;
        for row in &mut rows {
            let Some(seen) = observed.get(row.case) else {
                bail!("the {} guest did not report case {}", fs.name(), row.case);
            };
            let verdict = versus_posix(row.posix, seen);
            row.observed.insert(fs.name(), (seen.clone(), verdict));
        }
    }
    Ok(ConformanceTable {
        kernel_release: images.identity.release.clone(),
        accel,
        rows,
    })
}

/// Boots one guest on a fresh `fs` disk to run the suite; what it observed,
/// by case name.
fn run_one(
    req: &ConformanceRequest,
    images: &machine::images::GuestImages,
    accel: machine::qemu::AccelUsed,
    fs: Filesystem,
) -> Result<BTreeMap<String, Observed>> {
    let disk = req.out_dir.join(format!("{}.img", fs.name()));
    let words: Vec<String> = fs.default_mkfs_opts().split_whitespace().map(String::from).collect();
    machine::images::make_filesystem(fs, &words, &disk, fs.min_disk_size_bytes())?;
    let files = RunFiles::in_dir(&req.out_dir, &format!("conformance-{}", fs.name()));
    let spec = conformance_spec(images, accel, fs, &disk, &files);
    let limits = Limits {
        boot_timeout_ms: req.boot_timeout_ms,
        stall_timeout_ms: 30_000,
        total_timeout_ms: 120_000,
    };
    let mut report = SuiteReport::default();
    let run = vm::run_vm(spec, &files, limits, req.interrupt, |event, _| {
        report.take(event);
        Action::Continue
    })?;
    vm::bail_if_interrupted(run.outcome)?;
    let _ = std::fs::remove_file(&disk);
    if let Some(error) = report.error {
        bail!(
            "the conformance suite failed on {}: {error}; console: {}",
            fs.name(),
            files.console_log.display()
        );
    }
    if !report.done {
        return Err(vm::boot_failure(
            "the conformance guest did not finish",
            run.outcome,
            &files,
        ));
    }
    Ok(report.observed)
}

/// The conformance guest: the suite's role, on `fs` in `disk` with the
/// filesystem's default mount options.
fn conformance_spec(
    images: &machine::images::GuestImages,
    accel: machine::qemu::AccelUsed,
    fs: Filesystem,
    disk: &Path,
    files: &RunFiles,
) -> VmSpec {
    VmSpec {
        images: images.clone(),
        accel,
        memory_mib: 512,
        kernel_args: vec![
            "crashlab.role=conformance".into(),
            format!("crashlab.fs={}", fs.name()),
            format!("crashlab.mount_opts={}", fs.default_mount_opts()),
        ],
        drives: vec![Drive::Raw(disk.to_path_buf())],
        console_log: files.console_log.clone(),
        channel_socket: PathBuf::new(),
        qmp_socket: PathBuf::new(),
        trace_log: None,
    }
}

/// What the conformance guest reported: each case's observation, whether
/// it reached the suite's end, and the error that stopped it, if any.
#[derive(Default)]
struct SuiteReport {
    observed: BTreeMap<String, Observed>,
    done: bool,
    error: Option<String>,
}

impl SuiteReport {
    /// Takes one event of the guest's protocol (others are ignored).
    fn take(&mut self, event: Option<&Event>) {
        match event {
            Some(Event::Conf {
                case,
                rc,
                errno,
                detail,
            }) => {
                self.observed.insert(
                    case.clone(),
                    Observed {
                        rc: *rc,
                        errno: *errno,
                        detail: detail.clone(),
                    },
                );
            }
            Some(Event::Error { op, errno }) => self.error = Some(format!("{op}: {}", errno_name(*errno))),
            Some(Event::Mount { rc }) => self.error = Some(format!("mount failed (exit status {rc})")),
            Some(Event::Done { .. }) => self.done = true,
            _ => {}
        }
    }
}

/// The table as text: one row per case, one column per filesystem.
pub fn render(table: &ConformanceTable) -> String {
    let filesystems: Vec<&str> = table
        .rows
        .first()
        .map_or(vec![], |r| r.observed.keys().copied().collect());
    let mut out = format!(
        "msync conformance, Linux {} ({:?}); observed: return value or errno, and the call's effect\n\n",
        table.kernel_release, table.accel
    );
    out += &format!("{:<26} {:<48} {:<26}", "case", "call", "POSIX");
    for fs in &filesystems {
        out += &format!(" {:<36}", format!("{fs}: observed / vs POSIX"));
    }
    out += "  Linux documents\n";
    for row in &table.rows {
        let posix = match row.posix {
            Posix::Fails(e) => format!("shall fail {e}"),
            Posix::MayFail(e) => format!("may fail {e}"),
            Posix::Succeeds(Some(effect)) => format!("0, {effect}"),
            Posix::Succeeds(None) => "0".into(),
            Posix::Unspecified => "unspecified".into(),
        };
        out += &format!("{:<26} {:<48} {:<26}", row.case, row.call, posix);
        for fs in &filesystems {
            let (seen, verdict) = &row.observed[fs];
            out += &format!(" {:<36}", format!("{} / {verdict}", seen.describe()));
        }
        out += &format!("  {}\n", row.linux_documents);
    }
    out
}

/// Writes the table as text and JSON into the output directory.
pub fn write(table: &ConformanceTable, out_dir: &Path) -> Result<String> {
    let text = render(table);
    std::fs::write(out_dir.join("conformance.txt"), &text)?;
    std::fs::write(
        out_dir.join("conformance.json"),
        serde_json::to_string_pretty(table)? + "\n",
    )?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rc: i32, errno: i32, detail: &str) -> Observed {
        Observed {
            rc,
            errno,
            detail: detail.into(),
        }
    }

    #[test]
    fn observations_are_set_against_posix() {
        let einval = nix::libc::EINVAL;
        assert_eq!(
            versus_posix(Posix::Fails("EINVAL"), &seen(-1, einval, "-")),
            "as required"
        );
        assert_eq!(versus_posix(Posix::Fails("EINVAL"), &seen(0, 0, "-")), "DIFFERS");
        assert_eq!(versus_posix(Posix::MayFail("EINVAL"), &seen(0, 0, "-")), "allowed");
        assert_eq!(
            versus_posix(Posix::MayFail("EINVAL"), &seen(-1, nix::libc::ENOMEM, "-")),
            "DIFFERS"
        );
        let effect = Posix::Succeeds(Some("page-written=yes"));
        assert_eq!(versus_posix(effect, &seen(0, 0, "page-written=yes")), "as required");
        assert_eq!(versus_posix(effect, &seen(0, 0, "page-written=no")), "DIFFERS");
        assert_eq!(versus_posix(Posix::Unspecified, &seen(0, 0, "-")), "unspecified");
        assert_eq!(versus_posix(effect, &seen(0, 0, "page-written=unknown")), "cannot tell");
        assert_eq!(seen(-1, einval, "-").describe(), "EINVAL");
        assert_eq!(seen(0, 0, "page-written=no").describe(), "0 page-written=no");
    }

    #[test]
    fn every_case_has_a_unique_name() {
        let names: std::collections::HashSet<_> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CASES.len());
    }
}
