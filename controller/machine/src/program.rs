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

/// A program or checker larger than this is refused: it is copied into
/// every guest's memory.
pub const BINARY_MAX_BYTES: u64 = 256 << 20;

/// Checks both binaries of `spec` can run in the guest; the error names
/// the file and the fix.
pub fn check_binaries(spec: &ProgramSpec) -> Result<()> {
    check_static_binary(&spec.workload, "--workload")?;
    check_static_binary(&spec.checker, "--checker-cmd")
}

/// ELF: a 64-bit x86-64 executable without a program interpreter (a
/// dynamic one asks for a loader and libraries the guest does not have).
pub fn check_static_binary(path: &Path, flag: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    if !meta.is_file() {
        bail!("{flag} {}: not a file", path.display());
    }
    if meta.len() > BINARY_MAX_BYTES {
        bail!("{flag} {}: larger than {} MiB", path.display(), BINARY_MAX_BYTES >> 20);
    }
    let bytes = std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    match elf_interpreter(&bytes) {
        Err(why) => bail!(
            "{flag} {}: {why}; the guest runs static x86-64 Linux executables",
            path.display()
        ),
        Ok(Some(interp)) => bail!(
            "{flag} {}: a dynamically linked executable (it asks for {interp}), which cannot run in the guest: \
             it has no shared libraries. Link it statically (the musl target, or glibc with \
             RUSTFLAGS='-C target-feature=+crt-static'; gcc -static)",
            path.display()
        ),
        Ok(None) => Ok(()),
    }
}

/// The program interpreter an x86-64 ELF executable asks for, if any.
fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF executable (a script?)".into());
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    match u16_at(16) {
        Some(2 | 3) => {}
        _ => return Err("an ELF file that is not an executable".into()),
    }
    if u16_at(18) != Some(62) {
        return Err("an ELF file for another machine than x86-64".into());
    }
    let truncated = || "a truncated ELF file".to_string();
    let phoff = u64_at(32).ok_or_else(truncated)? as usize;
    let phentsize = usize::from(u16_at(54).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(56).ok_or_else(truncated)?);
    if phentsize < 56 {
        return Err("an ELF file with malformed program headers".into());
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or_else(truncated)?;
        if u32_at(at).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(at + 8).ok_or_else(truncated)? as usize;
        let size = u64_at(at + 32).ok_or_else(truncated)? as usize;
        let interp = bytes.get(offset..offset.saturating_add(size)).ok_or_else(truncated)?;
        let interp = String::from_utf8_lossy(interp).trim_end_matches('\0').to_string();
        return Ok(Some(interp));
    }
    Ok(None)
}

/// The name of a campaign's own initramfs (base + program) in its results
/// directory: written when the campaign starts, reused by its resume,
/// replays and rechecks, so that they run the very bytes it ran.
pub const CAMPAIGN_INITRD: &str = "program-initrd.img";

/// The guest images for `config`'s campaign in `campaign_dir`: `images`
/// (the cached ones), with the campaign's own initramfs for a program
/// under test. `fresh`: a new campaign, whose binaries the caller checked
/// (`check_binaries`): the initramfs is written; otherwise the
/// one already there is used.
pub fn campaign_images(
    mut images: crate::images::GuestImages,
    config: &config::CampaignConfig,
    campaign_dir: &Path,
    fresh: bool,
) -> Result<crate::images::GuestImages> {
    let Some(spec) = &config.program else {
        return Ok(images);
    };
    let initrd = campaign_dir.join(CAMPAIGN_INITRD);
    if fresh {
        write_program_initrd(&images.initramfs, spec, &initrd)?;
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
/// start aligned), then the program's archive.
pub fn write_program_initrd(base_initramfs: &Path, spec: &ProgramSpec, out: &Path) -> Result<()> {
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
    bytes.extend_from_slice(&archive.finish());
    crate::durable::write_atomically(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_says_which_loader() {
        let me = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&me).unwrap();
        match elf_interpreter(&bytes) {
            // A test binary built with crt-static has none; the usual one asks for ld-linux.
            Ok(Some(interp)) => assert!(interp.contains("ld-linux"), "{interp}"),
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
        let err = format!(
            "{:#}",
            check_static_binary(Path::new("/bin/sh"), "--workload").unwrap_err()
        );
        assert!(
            err.contains("dynamically linked") && err.contains("crt-static"),
            "{err}"
        );
    }

    #[test]
    fn scripts_truncated_and_foreign_files_are_named() {
        assert!(elf_interpreter(b"#!/bin/sh\n").unwrap_err().contains("not an ELF"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16] = 2;
        elf[18] = 183; // aarch64
        assert!(elf_interpreter(&elf).unwrap_err().contains("x86-64"));
        elf[18] = 62;
        elf[54] = 56;
        elf[56] = 1; // one program header, past the end
        elf[32] = 64;
        assert!(elf_interpreter(&elf).unwrap_err().contains("truncated"));
        elf[56] = 0;
        assert_eq!(elf_interpreter(&elf), Ok(None));
        let err = format!(
            "{:#}",
            check_static_binary(Path::new("/no/such/program"), "--checker-cmd").unwrap_err()
        );
        assert!(err.contains("--checker-cmd /no/such/program: cannot read it"), "{err}");
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
        write_program_initrd(&base, &spec, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..8], b"0707010\0");
        assert_eq!(&bytes[8..14], b"070701");
        assert!(bytes.windows(25).any(|w| w == b"crashlab/program/workload"));
    }
}
