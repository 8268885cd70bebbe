//! Builds the guest images into `vm-images/cache/`:
//! - `vmlinuz`: the host's Debian kernel, copied (it is root-only in /boot);
//! - `initramfs.cpio`: /init (vm-images/init), static busybox, the static
//!   workload, the kernel modules of vm-images/modules.txt with their
//!   dependencies in load order, and the fsck tools of
//!   vm-images/guest-tools.txt with their shared libraries;
//! - `manifest.json`: what the controller reads to find them.
//!
//! The archive is built in memory (deterministic bytes) and written only when
//! it differs from the cached one, so "rebuilt when an input changes" needs
//! no separate hash bookkeeping.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cpio::CpioWriter;

const CACHE_DIR: &str = "vm-images/cache";
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
const GNU_TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Kernel {
    pub image: PathBuf,
    pub release: String,
}

/// The newest Debian kernel in /boot (`vmlinuz-<release>`).
pub fn find_kernel() -> Result<Kernel> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&release)
                .is_dir()
                .then(|| (release, e.path()))
        })
        .collect();
    found.sort();
    let (release, image) = found
        .pop()
        .context("no /boot/vmlinuz-* with modules in /lib/modules: install linux-image-amd64")?;
    Ok(Kernel { image, release })
}

/// Builds the static workload binary and returns its path.
fn build_workload(sh: &Shell) -> Result<PathBuf> {
    let has_musl = cmd!(sh, "rustup target list --installed")
        .quiet()
        .read()
        .map(|s| s.contains(MUSL_TARGET))
        .unwrap_or(false)
        || cmd!(sh, "rustup target add {MUSL_TARGET}").quiet().run().is_ok();
    let target = if has_musl {
        cmd!(
            sh,
            "cargo build --quiet --release -p crashlab-workload --target {MUSL_TARGET}"
        )
        .run()?;
        MUSL_TARGET
    } else {
        // Fallback: glibc with crt-static also gives a static binary.
        let _flags = sh.push_env("RUSTFLAGS", "-C target-feature=+crt-static");
        cmd!(
            sh,
            "cargo build --quiet --release -p crashlab-workload --target {GNU_TARGET}"
        )
        .run()?;
        GNU_TARGET
    };
    let path = sh
        .current_dir()
        .join(format!("target/{target}/release/crashlab-workload"));
    let file_out = cmd!(sh, "file -L {path}").quiet().read().unwrap_or_default();
    // `file` may be missing on a minimal machine: then trust the build flags.
    let is_static = file_out.contains("statically linked") || file_out.contains("static-pie");
    if !file_out.is_empty() && !is_static {
        bail!("{} is not static ({file_out}): the guest has no libc", path.display());
    }
    Ok(path)
}

/// Module files (relative to /lib/modules/<release>) in load order.
fn resolve_modules(sh: &Shell, release: &str, names: &[String]) -> Result<Vec<String>> {
    let root = format!("/lib/modules/{release}/");
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in names {
        let out = cmd!(sh, "modprobe -S {release} --show-depends {name}")
            .quiet()
            .read()
            .with_context(|| format!("module {name} not found for kernel {release}"))?;
        for line in out.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let rel = path
                .trim()
                .strip_prefix(&root)
                .context("module outside the kernel's tree")?
                .to_string();
            if seen.insert(rel.clone()) {
                order.push(rel);
            }
        }
    }
    Ok(order)
}

/// The shared libraries (and the loader) a dynamic binary needs, from ldd.
fn shared_libraries(sh: &Shell, binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd!(sh, "ldd {binary}").quiet().ignore_status().read()?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect())
}

fn list_file(sh: &Shell, path: &str) -> Result<Vec<String>> {
    Ok(sh
        .read_file(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// Adds every parent directory of `path` not yet in the archive.
fn add_parents(w: &mut CpioWriter, dirs: &mut BTreeSet<String>, path: &str) {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len() - 1] {
        prefix.push('/');
        prefix.push_str(part);
        if dirs.insert(prefix.clone()) {
            w.dir(&prefix);
        }
    }
}

pub fn build(sh: &Shell) -> Result<PathBuf> {
    let kernel = find_kernel()?;
    let workload = build_workload(sh)?;
    let modules = resolve_modules(sh, &kernel.release, &list_file(sh, "vm-images/modules.txt")?)?;

    let mut w = CpioWriter::new();
    let mut dirs = BTreeSet::new();
    for d in [
        "/bin",
        "/sbin",
        "/etc",
        "/etc/crashlab",
        "/proc",
        "/sys",
        "/dev",
        "/mnt",
        "/tmp",
        "/lib",
        "/lib/modules",
    ] {
        dirs.insert(d.to_string());
        w.dir(d);
    }
    w.file("/init", 0o755, &std::fs::read("vm-images/init")?);
    w.file(
        "/bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").context("install busybox-static")?,
    );
    w.file("/bin/crashlab-workload", 0o755, &std::fs::read(&workload)?);
    for rel in &modules {
        let dest = format!("/lib/modules/{rel}");
        add_parents(&mut w, &mut dirs, &dest);
        w.file(
            &dest,
            0o644,
            &std::fs::read(format!("/lib/modules/{}/{rel}", kernel.release))?,
        );
    }
    w.file("/etc/crashlab/modules", 0o644, (modules.join("\n") + "\n").as_bytes());

    let mut libs = BTreeSet::new();
    for tool in list_file(sh, "vm-images/guest-tools.txt")? {
        let path = crate::deps::find_command(&tool)
            .with_context(|| format!("{tool} not installed: run `cargo xtask deps`"))?;
        w.file(&format!("/sbin/{tool}"), 0o755, &std::fs::read(&path)?);
        libs.extend(shared_libraries(sh, &path)?);
    }
    for lib in &libs {
        let dest = lib.display().to_string();
        add_parents(&mut w, &mut dirs, &dest);
        w.file(&dest, 0o755, &std::fs::read(lib)?);
    }
    let archive = w.finish();

    let cache = sh.current_dir().join(CACHE_DIR);
    sh.create_dir(&cache)?;
    let initramfs = cache.join("initramfs.cpio");
    let kernel_bytes =
        std::fs::read(&kernel.image).with_context(|| format!("cannot read {}", kernel.image.display()))?;
    let changed = write_if_changed(&initramfs, &archive)? | write_if_changed(&cache.join("vmlinuz"), &kernel_bytes)?;
    let manifest = serde_json::json!({
        "kernel": "vmlinuz",
        "initramfs": "initramfs.cpio",
        "kernel_release": kernel.release,
        "modules": modules.len(),
        "initramfs_bytes": archive.len(),
    });
    write_if_changed(
        &cache.join("manifest.json"),
        (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
    )?;
    eprintln!(
        "xtask: guest images {} ({} modules, initramfs {} KiB, kernel {})",
        if changed { "rebuilt" } else { "up to date" },
        modules.len(),
        archive.len() / 1024,
        kernel.release
    );
    Ok(cache)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).map(|old| old == bytes).unwrap_or(false) {
        return Ok(false);
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
    Ok(true)
}
