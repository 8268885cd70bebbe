//! A program crashlab did not write, under test (docs/workload-protocol.md):
//! its binaries checked and put into the guest without rebuilding
//! crashlab's images.
//!
//! The guest's initramfs is the image builder's archive with a second
//! newc archive appended (the kernel unpacks concatenated archives in
//! order): `/crashlab/program/workload`, `/crashlab/program/checker` and
//! their arguments, one per line. The combined image is written once per
//! campaign into its results directory.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub use config::ProgramSpec;

use crate::libraries::{runtime_files, RuntimeFile, SearchPath};

/// A program or checker larger than this is refused: it is copied into
/// every guest's memory.
pub const BINARY_MAX_BYTES: u64 = 256 << 20;

/// Where the program's binaries go in the guest.
const GUEST_WORKLOAD: &str = "/crashlab/program/workload";
const GUEST_CHECKER: &str = "/crashlab/program/checker";

/// Checks both binaries of `spec` can run in the guest: x86-64 ELF
/// executables, static or dynamic with every shared library they need
/// found on this host. The error names the file, what is missing and the
/// fix. Returns what the program layer must carry besides them.
pub fn check_binaries(spec: &ProgramSpec) -> Result<Vec<RuntimeFile>> {
    let search = SearchPath::host();
    let mut files = Vec::new();
    for (path, guest, flag) in [
        (&spec.workload, GUEST_WORKLOAD, "--workload"),
        (&spec.checker, GUEST_CHECKER, "--checker-cmd"),
    ] {
        check_size(path, flag)?;
        files.extend(runtime_files(path, guest, flag, &search).map_err(|e| explain_refusal(e, path))?);
    }
    refuse_collisions(&files)?;
    Ok(files)
}

/// A binary larger than `BINARY_MAX_BYTES` is refused; so is a path that
/// is not a file.
fn check_size(path: &Path, flag: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    if !meta.is_file() {
        bail!("{flag} {}: not a file", path.display());
    }
    if meta.len() > BINARY_MAX_BYTES {
        bail!("{flag} {}: larger than {} MiB", path.display(), BINARY_MAX_BYTES >> 20);
    }
    Ok(())
}

/// A script is refused with the reason: its interpreter (a shell, Python)
/// and everything it runs would have to be found and packed, which
/// crashlab cannot see from the file.
fn explain_refusal(error: anyhow::Error, path: &Path) -> anyhow::Error {
    let is_script = std::fs::read(path).is_ok_and(|b| b.starts_with(b"#!"));
    match is_script {
        true => error.context(format!(
            "{} is a script: crashlab packs an ELF executable and the shared libraries it names, but \
             cannot see what a script's interpreter and the commands it runs need. Point --workload and \
             --checker-cmd at the executables themselves, with --workload-arg/--checker-arg for their flags",
            path.display()
        )),
        false => error,
    }
}

/// Two different host files wanted at one guest path (a library of one
/// name found in two places for the workload and the checker) would leave
/// one binary with the other's library: refused, naming both.
fn refuse_collisions(files: &[RuntimeFile]) -> Result<()> {
    let mut at: std::collections::BTreeMap<&str, &RuntimeFile> = std::collections::BTreeMap::new();
    for f in files {
        if let Some(other) = at.insert(&f.guest_path, f) {
            let same = std::fs::canonicalize(&other.host_path).ok() == std::fs::canonicalize(&f.host_path).ok();
            if !same {
                bail!(
                    "{} would hold two different files in the guest: {} ({}) and {} ({}); build both \
                     binaries against the same libraries",
                    f.guest_path,
                    other.host_path.display(),
                    other.why,
                    f.host_path.display(),
                    f.why
                );
            }
        }
    }
    Ok(())
}

/// The name of a campaign's own initramfs (base + program) in its results
/// directory: written when the campaign starts, reused by its resume,
/// replays and rechecks, so that they run the very bytes it ran.
pub const CAMPAIGN_INITRD: &str = "program-initrd.img";

/// The guest images for `config`'s campaign in `campaign_dir`: `images`
/// (the cached ones), with the campaign's own initramfs for a program
/// under test. `fresh`: a new campaign, with what its checked binaries
/// need (`check_binaries`): the initramfs is written with them; `None`:
/// the one already there is used.
pub fn campaign_images(
    mut images: crate::images::GuestImages,
    config: &config::CampaignConfig,
    campaign_dir: &Path,
    fresh: Option<&[RuntimeFile]>,
) -> Result<crate::images::GuestImages> {
    let Some(spec) = &config.program else {
        return Ok(images);
    };
    let initrd = campaign_dir.join(CAMPAIGN_INITRD);
    if let Some(runtime) = fresh {
        write_program_initrd(&images.initramfs, spec, runtime, &initrd)?;
    }
    anyhow::ensure!(
        initrd.is_file(),
        "{} is missing: the campaign's program cannot be run again as it ran",
        initrd.display()
    );
    images.initramfs = initrd;
    Ok(images)
}

/// Writes `out`: the base initramfs, zero-padded to 4 bytes (archives
/// start aligned), then the program's archive: its binaries, their
/// arguments, and `runtime` (the loader and shared libraries of a dynamic
/// program, each at its guest path, with the directories above it).
pub fn write_program_initrd(
    base_initramfs: &Path,
    spec: &ProgramSpec,
    runtime: &[RuntimeFile],
    out: &Path,
) -> Result<()> {
    let mut bytes = std::fs::read(base_initramfs)
        .with_context(|| format!("cannot read the guest initramfs {}", base_initramfs.display()))?;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let mut archive = cpio::CpioWriter::new();
    archive.dir("/crashlab");
    archive.dir("/crashlab/program");
    for (name, path) in [("workload", &spec.workload), ("checker", &spec.checker)] {
        let binary = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        archive.file(&format!("/crashlab/program/{name}"), 0o755, &binary);
    }
    for (name, args) in [
        ("workload.args", &spec.workload_args),
        ("checker.args", &spec.checker_args),
    ] {
        let text: String = args.iter().map(|a| format!("{a}\n")).collect();
        archive.file(&format!("/crashlab/program/{name}"), 0o644, text.as_bytes());
    }
    for f in runtime {
        archive.parents(&f.guest_path);
        let bytes = std::fs::read(&f.host_path)
            .with_context(|| format!("cannot read {} ({})", f.host_path.display(), f.why))?;
        archive.file(&f.guest_path, 0o755, &bytes);
    }
    bytes.extend_from_slice(&archive.finish());
    crate::durable::write_atomically(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(workload: &Path, checker: &Path) -> ProgramSpec {
        ProgramSpec {
            workload: workload.to_path_buf(),
            checker: checker.to_path_buf(),
            workload_args: vec![],
            checker_args: vec![],
        }
    }

    #[test]
    fn a_dynamic_binary_brings_its_loader_and_libraries() {
        let me = std::env::current_exe().unwrap();
        let runtime = check_binaries(&spec_of(&me, Path::new("/bin/sh"))).unwrap();
        let guest: Vec<&str> = runtime.iter().map(|f| f.guest_path.as_str()).collect();
        assert!(guest.iter().any(|p| p.contains("ld-linux")), "{guest:?}");
        assert!(guest.iter().any(|p| p.ends_with("/libc.so.6")), "{guest:?}");
    }

    #[test]
    fn scripts_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let sh = Path::new("/bin/sh");
        let err = format!("{:#}", check_binaries(&spec_of(sh, &script)).unwrap_err());
        assert!(err.contains("is a script") && err.contains("--checker-cmd"), "{err}");
        let err = format!(
            "{:#}",
            check_binaries(&spec_of(sh, Path::new("/no/such/program"))).unwrap_err()
        );
        assert!(err.contains("--checker-cmd /no/such/program: cannot read it"), "{err}");
    }

    #[test]
    fn one_guest_path_never_holds_two_files() {
        let f = |host: &str| RuntimeFile {
            guest_path: "/lib/x86_64-linux-gnu/libx.so.1".into(),
            host_path: host.into(),
            why: format!("needed by {host}"),
        };
        assert!(refuse_collisions(&[f("/bin/sh"), f("/bin/sh")]).is_ok());
        let err = format!("{:#}", refuse_collisions(&[f("/bin/sh"), f("/bin/ls")]).unwrap_err());
        assert!(err.contains("two different files") && err.contains("/bin/ls"), "{err}");
    }

    #[test]
    fn arguments_are_single_words() {
        let spec = ProgramSpec {
            workload: "w".into(),
            checker: "c".into(),
            workload_args: vec!["--nosync".into()],
            checker_args: vec![],
        };
        spec.validate().unwrap();
        let spaced = ProgramSpec {
            checker_args: vec!["a b".into()],
            ..spec
        };
        assert!(spaced.validate().unwrap_err().contains("--checker-arg"));
    }

    #[test]
    fn the_program_archive_follows_the_base_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        std::fs::write(&base, b"0707010").unwrap(); // 7 bytes: padding needed
        let exe = std::env::current_exe().unwrap();
        let spec = ProgramSpec {
            workload: exe.clone(),
            checker: exe,
            workload_args: vec!["x".into()],
            checker_args: vec![],
        };
        let out = dir.path().join("initrd");
        let runtime = check_binaries(&spec).unwrap();
        write_program_initrd(&base, &spec, &runtime, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..8], b"0707010\0");
        assert_eq!(&bytes[8..14], b"070701");
        assert!(bytes.windows(25).any(|w| w == b"crashlab/program/workload"));
        for f in &runtime {
            let name = f.guest_path.trim_start_matches('/').as_bytes();
            assert!(bytes.windows(name.len()).any(|w| w == name), "{f:?} is in the archive");
        }
    }
}
