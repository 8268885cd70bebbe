//! The system packages crashlab needs, and installing the missing ones.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

/// Debian 12 only has qemu-system-x86 7.2, which conflicts with the newer
/// qemu-utils some machines ship: pinning qemu-utils to bookworm (a
/// downgrade) is what makes the install go through.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils/bookworm",
    "busybox-static",
    "linux-image-amd64",
    "e2fsprogs",
    "xfsprogs",
    "btrfs-progs",
    "f2fs-tools",
    // Decompress the modules of kernels that ship them compressed.
    "xz-utils",
    "zstd",
    // xmllint: the tests hold the JUnit output to docs/junit.xsd.
    "libxml2-utils",
    // The report's test opens it in a browser and reads the screenshot.
    "chromium",
    // RocksDB and LevelDB as users have them (shared libraries): the
    // clients in clients/c are built against them by the tests.
    "librocksdb-dev",
    "libleveldb-dev",
];

/// Files that prove the library packages are there (no command does).
const REQUIRED_FILES: &[&str] = &["/usr/include/rocksdb/c.h", "/usr/include/leveldb/c.h"];

/// Commands that prove the packages are there.
const REQUIRED_COMMANDS: &[&str] = &[
    "qemu-system-x86_64",
    "qemu-img",
    "mkfs.ext4",
    "e2fsck",
    "debugfs",
    "mkfs.xfs",
    "xfs_repair",
    "mkfs.btrfs",
    "btrfs",
    "mkfs.f2fs",
    "fsck.f2fs",
    "modprobe",
    "xz",
    "zstd",
    "xmllint",
    "chromium",
];

pub fn apt_line() -> String {
    format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades {}",
        APT_PACKAGES.join(" ")
    )
}

fn missing(sh: &Shell) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED_COMMANDS
        .iter()
        .filter(|c| crate::host::find_command(c).is_none())
        .map(|c| c.to_string())
        .collect();
    missing.extend(
        REQUIRED_FILES
            .iter()
            .filter(|f| !std::path::Path::new(f).is_file())
            .map(|f| f.to_string()),
    );
    if !busybox_is_static(sh) {
        missing.push("busybox (static)".into());
    }
    if crate::images::find_kernel(sh, &crate::images::ImageRequest::default()).is_err() {
        missing.push("the distro kernel (linux-image-amd64)".into());
    }
    missing
}

fn busybox_is_static(sh: &Shell) -> bool {
    let format = "${Status}";
    let status = cmd!(sh, "dpkg-query -W -f={format} busybox-static")
        .quiet()
        .ignore_stderr()
        .read();
    matches!(status, Ok(s) if s.contains("install ok installed"))
}

/// Installs what is missing (as root) or prints the exact line and stops
/// with exit code 2.
pub fn ensure(sh: &Shell) -> Result<()> {
    let missing = missing(sh);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: missing: {}", missing.join(", "));
    if !crate::host::is_root() {
        eprintln!("run as root:\n  {}", apt_line());
        std::process::exit(2);
    }
    eprintln!("xtask: installing: {}", APT_PACKAGES.join(" "));
    let install = apt_line();
    cmd!(sh, "sh -c {install}").run()?;
    let still = self::missing(sh);
    if !still.is_empty() {
        bail!("still missing after the install: {}", still.join(", "));
    }
    Ok(())
}
