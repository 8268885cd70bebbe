//! `crashlab doctor` on this machine, and on the same machine with a tool
//! taken away (a PATH without it): the finding names the tool and the
//! package, and the exit code says no campaign would run.

mod util;

use std::path::Path;

use util::vm_harness;

/// Every command the doctor looks for, linked into `dir` from the real
/// PATH, except `without`.
fn path_without(dir: &Path, without: &str) -> String {
    let commands = [
        "qemu-system-x86_64",
        "mkfs.ext4",
        "dumpe2fs",
        "e2fsck",
        "debugfs",
        "mkfs.xfs",
        "xfs_db",
        "mkfs.btrfs",
        "btrfs",
        "mkfs.f2fs",
    ];
    for command in commands.iter().filter(|c| **c != without) {
        let real = machine::doctor::find_on_path(command)
            .unwrap_or_else(|| panic!("{command} is not installed: run `cargo xtask deps`"));
        std::os::unix::fs::symlink(real, dir.join(command)).unwrap();
    }
    dir.display().to_string()
}

fn doctor(h: &util::Harness, path: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = util::crashlab()
        .arg("doctor")
        .arg("--images-dir")
        .arg(&h.images_dir)
        .arg("--results-dir")
        .arg(h.results.path())
        .args(extra)
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
#[ignore = "boots a QEMU guest: `cargo xtask test` runs it"]
fn doctor_passes_here_and_names_what_is_missing() {
    let h = vm_harness("doctor");
    let bin = tempfile::tempdir().unwrap();
    let (code, text) = doctor(&h, &path_without(bin.path(), ""), &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("a campaign can run here"), "{text}");
    // The guest booted, under KVM or TCG.
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && (l.contains("TCG boot") || l.contains("KVM:"))),
        "{text}"
    );

    for (missing, package) in [("mkfs.ext4", "e2fsprogs"), ("qemu-system-x86_64", "qemu-system-x86")] {
        let bin = tempfile::tempdir().unwrap();
        let (code, text) = doctor(&h, &path_without(bin.path(), missing), &["--no-boot"]);
        assert_eq!(code, Some(1), "without {missing}: {text}");
        assert!(
            text.contains(&format!("apt-get install {package}")),
            "without {missing}: {text}"
        );
        assert!(text.contains("cannot run here yet"), "{text}");
    }

    // A tool only some options need is a warning, not a failure.
    let bin = tempfile::tempdir().unwrap();
    let (code, text) = doctor(&h, &path_without(bin.path(), "mkfs.f2fs"), &["--no-boot"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warn  mkfs.f2fs") && text.contains("--fs f2fs"), "{text}");
}

/// A kernel that does not get to /init (here: an initramfs that is not an
/// archive, so the kernel finds no root and panics) fails the doctor's boot,
/// quoting the console: what `cargo xtask kernel` shows for a built kernel
/// that does not boot.
#[test]
#[ignore = "boots a QEMU guest: `cargo xtask test` runs it"]
fn a_kernel_that_does_not_boot_is_named_with_its_console() {
    let h = vm_harness("doctor-unbootable");
    let broken = tempfile::tempdir().unwrap();
    for name in ["vmlinuz", "manifest.json"] {
        std::fs::copy(h.images_dir.join(name), broken.path().join(name)).unwrap();
    }
    std::fs::write(broken.path().join("initramfs.cpio"), vec![0x5a; 4096]).unwrap();
    let out = util::crashlab()
        .arg("doctor")
        .arg("--images-dir")
        .arg(broken.path())
        .arg("--results-dir")
        .arg(h.results.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  TCG boot"), "{text}");
    assert!(text.contains("the console's last lines"), "{text}");
    assert!(text.contains("Kernel panic"), "the kernel's own words: {text}");
}

/// The images are found from any directory: run from a directory that is
/// no checkout, crashlab looks in the per-user cache (`cargo xtask images`
/// links it), and `doctor` says which directory it used and why.
#[test]
#[ignore = "needs the guest images: `cargo xtask test` runs it"]
fn images_are_found_from_any_directory_through_the_user_cache() {
    let h = vm_harness("doctor-anywhere");
    let home = tempfile::tempdir().unwrap();
    let doctor = || {
        util::crashlab()
            .args(["doctor", "--no-boot"])
            .current_dir(home.path())
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("CRASHLAB_IMAGES_DIR")
            .output()
            .unwrap()
    };
    let before = String::from_utf8_lossy(&doctor().stdout).into_owned();
    assert!(
        before.contains("no guest images at vm-images/cache") && before.contains(".cache/crashlab/images"),
        "names where it looked and the per-user cache: {before}"
    );
    std::fs::create_dir_all(home.path().join(".cache/crashlab")).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(&h.images_dir).unwrap(),
        home.path().join(".cache/crashlab/images"),
    )
    .unwrap();
    let after = String::from_utf8_lossy(&doctor().stdout).into_owned();
    assert!(
        after.contains(".cache/crashlab/images, the default: the per-user cache"),
        "{after}"
    );
    assert!(!after.contains("no guest images"), "{after}");
}
