//! `cargo xtask kernel-check [--source PATH] [--patch FILE]... [--out DIR]`:
//! the long check of kernels from source (CI builds none: too slow). Builds
//! a kernel (default: Debian's linux-source-6.12, installed as root when
//! missing) into `vm-images/cache-src`, builds it again to show the cache
//! answers, then runs a power-loss and a kernel-crash campaign on it and
//! the VM test that boots it (`built_kernel`).
//!
//! Prints the figures: the build's time, the cached build's time, each
//! campaign's verdict.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// Where the built kernel's images go; the `built_kernel` VM test looks here.
pub const OUT_DEFAULT: &str = "vm-images/cache-src";
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_DEFAULT: &str = "/usr/src/linux-source-6.12.tar.xz";

pub fn run(sh: &Shell, args: &[String]) -> Result<i32> {
    let mut kernel_args: Vec<String> = args.to_vec();
    if !args.iter().any(|a| a == "--source") {
        ensure_source_package()?;
        kernel_args.extend(["--source".into(), SOURCE_DEFAULT.into()]);
    }
    if !args.iter().any(|a| a == "--out") {
        kernel_args.extend(["--out".into(), OUT_DEFAULT.into()]);
    }
    let out = PathBuf::from(&kernel_args[kernel_args.iter().position(|a| a == "--out").expect("set above") + 1]);

    let t = Instant::now();
    crate::kernel::run(sh, &kernel_args)?;
    let first_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    crate::kernel::run(sh, &kernel_args)?;
    let second_s = t.elapsed().as_secs_f64();
    let identity = std::fs::read_to_string(out.join("manifest.json")).context("the images have no manifest")?;
    let manifest: serde_json::Value = serde_json::from_str(&identity)?;
    let build = &manifest["kernel_build"];

    let mut failed = 0;
    for (name, extra) in CAMPAIGNS {
        let code = campaign(sh, &out, extra)?;
        eprintln!("xtask kernel-check: {name} campaign: exit {code}");
        failed += u32::from(code != 0);
    }
    let test = crate::children::status(cmd!(sh, "cargo xtask test a_kernel_built_from_source"))?;
    failed += u32::from(test != 0);
    println!(
        "kernel {} (build key {}): built in {:.0} s by make ({:.0} s for the whole first command), the same \
         inputs again in {:.1} s (cache); {} of {} checks failed",
        manifest["kernel_release"].as_str().unwrap_or("?"),
        build["build_key"].as_str().unwrap_or("?"),
        build["build_seconds"].as_f64().unwrap_or(0.0),
        first_s,
        second_s,
        failed,
        CAMPAIGNS.len() + 1
    );
    Ok(i32::from(failed > 0))
}

/// Small campaigns on the built kernel, one per crash model: a clean
/// configuration must pass.
const CAMPAIGNS: &[(&str, &[&str])] = &[
    (
        "power-loss (ext4, the kernel checker)",
        &[
            "--crash-model",
            "power-loss",
            "--trials",
            "1",
            "--records",
            "500",
            "--state-budget",
            "200",
        ],
    ),
    (
        "kernel-crash",
        &["--crash-model", "kernel-crash", "--trials", "3", "--records", "300"],
    ),
];

fn campaign(sh: &Shell, images: &std::path::Path, extra: &[&str]) -> Result<i32> {
    let images = images.display().to_string();
    let command = cmd!(
        sh,
        "cargo run --quiet --release -p crashlab-controller --bin crashlab -- run --images-dir {images} {extra...}"
    );
    crate::children::status(command)
}

/// Debian's kernel source tarball, installed as root when missing.
fn ensure_source_package() -> Result<()> {
    if std::path::Path::new(SOURCE_DEFAULT).is_file() {
        return Ok(());
    }
    let line = format!("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {SOURCE_PACKAGE}");
    anyhow::ensure!(
        crate::host::is_root(),
        "{SOURCE_DEFAULT} is missing: install it as root with\n  {line}\nor give --source PATH"
    );
    let status = std::process::Command::new("sh").arg("-c").arg(&line).status()?;
    anyhow::ensure!(
        status.success() && std::path::Path::new(SOURCE_DEFAULT).is_file(),
        "`{line}` did not give {SOURCE_DEFAULT} ({status}): give --source PATH"
    );
    Ok(())
}
