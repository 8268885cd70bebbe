//! Bad input gets a clear message naming the problem and the fix, and exit
//! code 2, before any VM starts.

mod util;

fn run_expecting_usage_error(args: &[&str], needle: &str) {
    let out = util::crashlab().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn zero_record_size() {
    run_expecting_usage_error(&["run", "--record-size=0"], "record size 0");
}

#[test]
fn unknown_mode_lists_the_valid_ones() {
    run_expecting_usage_error(&["run", "--mode=fsync"], "ms-async-fdatasync");
}

#[test]
fn file_larger_than_the_disk() {
    run_expecting_usage_error(&["run", "--file-size=1G", "--disk-size=64M"], "--disk-size");
}

#[test]
fn more_records_than_a_power_loss_log_can_hold() {
    run_expecting_usage_error(
        &["run", "--crash-model=power-loss", "--records=1000000"],
        "use at most 524288 records",
    );
}

#[test]
fn a_disk_beyond_the_limit() {
    run_expecting_usage_error(&["run", "--disk-size=18446744073709551615"], "above the limit");
}

#[test]
fn missing_kernel_names_the_build_command() {
    let results = tempfile::tempdir().unwrap();
    let results = results.path().to_str().unwrap();
    run_expecting_usage_error(
        &["run", "--images-dir=/nonexistent", "--results-dir", results],
        "cargo xtask images",
    );
}

#[test]
fn only_trial_outside_the_campaign() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let images = format!("{dir}/../vm-images/cache");
    let results = tempfile::tempdir().unwrap();
    let out = util::crashlab()
        .args(["run", "--trials=2", "--only-trial=5", "--images-dir", &images])
        .arg("--results-dir")
        .arg(results.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--only-trial 5"));
}

#[test]
fn help_lists_every_flag() {
    let out = util::crashlab().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--fs",
        "--mode",
        "--record-size",
        "--planted-bug",
        "--profile",
        "--seed",
        "--only-trial",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_filesystem_the_guest_kernel_lacks_is_refused_naming_its_config_option() {
    // Images built for a kernel without f2fs (as `cargo xtask images`
    // records it), e.g. Debian's cloud kernel.
    let images = tempfile::tempdir().unwrap();
    std::fs::write(images.path().join("vmlinuz"), b"").unwrap();
    std::fs::write(images.path().join("initramfs.cpio"), b"").unwrap();
    std::fs::write(
        images.path().join("manifest.json"),
        r#"{"kernel":"vmlinuz","initramfs":"initramfs.cpio","kernel_release":"6.12-cloud",
            "modules_missing":["f2fs (CONFIG_F2FS_FS)"]}"#,
    )
    .unwrap();
    let results = tempfile::tempdir().unwrap();
    let images_arg = format!("--images-dir={}", images.path().display());
    let results_arg = format!("--results-dir={}", results.path().display());
    run_expecting_usage_error(&["run", "--fs=f2fs", &images_arg, &results_arg], "CONFIG_F2FS_FS");
}

#[test]
fn pattern_flags_say_what_each_pattern_needs() {
    run_expecting_usage_error(&["run", "--pattern=mmap"], "partial-msync");
    run_expecting_usage_error(
        &["run", "--pattern=partial-msync", "--file-size=256K"],
        "at least 1 MiB",
    );
    run_expecting_usage_error(&["run", "--pattern=wal", "--mode=batch:4"], "leave --mode at ms-sync");
    run_expecting_usage_error(&["run", "--planted-bug=data-before-log"], "--pattern wal");
    run_expecting_usage_error(
        &["run", "--inject-write-error=eio", "--crash-model=power-loss"],
        "kernel-crash",
    );
    run_expecting_usage_error(&["run", "--planted-device-bug=drop-flush:4"], "power-loss");
}

#[test]
fn mkfs_options_that_name_a_path_are_refused() {
    run_expecting_usage_error(&["run", "--mkfs-opts=-d /etc"], "--mkfs-opts");
}

#[test]
fn completion_scripts_are_generated_from_the_command_line_definition() {
    let out = util::crashlab().args(["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("_crashlab()") && script.contains("doctor") && script.contains("--mkfs-opts"));
    // bash reads it without a syntax error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crashlab.bash");
    std::fs::write(&path, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    run_expecting_usage_error(&["completions", "tcsh"], "possible values");
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = util::crashlab()
        .arg("man-pages")
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for page in [
        "crashlab.1",
        "crashlab-run.1",
        "crashlab-doctor.1",
        "crashlab-replay-state.1",
    ] {
        let roff = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(roff.contains(".TH") && roff.contains(".SH NAME"), "{page}");
    }
    let run = std::fs::read_to_string(dir.path().join("crashlab-run.1")).unwrap();
    assert!(
        run.contains("mkfs\\-opts") && run.contains("junit"),
        "crashlab-run.1 lacks options"
    );
}

/// Guest images as `cargo xtask images` or `cargo xtask kernel` record them
/// (empty kernel and initramfs: nothing here boots them).
fn fake_images(manifest_extra: &str) -> tempfile::TempDir {
    let images = tempfile::tempdir().unwrap();
    std::fs::write(images.path().join("vmlinuz"), b"").unwrap();
    std::fs::write(images.path().join("initramfs.cpio"), b"").unwrap();
    std::fs::write(
        images.path().join("manifest.json"),
        format!(r#"{{"kernel":"vmlinuz","initramfs":"initramfs.cpio","kernel_release":"6.12.118-crashlab"{manifest_extra}}}"#),
    )
    .unwrap();
    images
}

#[test]
fn a_campaign_on_a_kernel_build_refuses_images_of_another() {
    let other = fake_images(
        r#","kernel_build":{"build_key":"blake3:ffffffffffff00","source":{"name":"linux.tar.xz","digest":"blake3:aa"},
            "config_digest":"blake3:bb"}"#,
    );
    let distro = fake_images("");
    let results = tempfile::tempdir().unwrap();
    let results_arg = format!("--results-dir={}", results.path().display());
    for images in [&other, &distro] {
        let images_arg = format!("--images-dir={}", images.path().display());
        run_expecting_usage_error(
            &["run", "--kernel-build=0123456789ab", &images_arg, &results_arg],
            "the campaign ran on kernel build 0123456789ab",
        );
    }
    let gone = format!("--images-dir={}/gone", results.path().display());
    run_expecting_usage_error(
        &["run", "--kernel-build=0123456789ab", &gone, &results_arg],
        "kernel.build.rebuild",
    );
    run_expecting_usage_error(&["run", "--kernel-build=blake3:01234"], "hex digits of the build key");
}

#[test]
fn compare_names_what_it_needs_before_any_vm() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results");
    let a = fake_images("");
    let a_arg = a.path().display().to_string();
    // Recovery mode needs a kept capture.
    let campaign = fixtures.join("power-loss-barrier0").display().to_string();
    run_expecting_usage_error(
        &[
            "compare",
            "--campaign",
            &campaign,
            "--images-dir",
            &a_arg,
            "--baseline-images-dir",
            &a_arg,
        ],
        "--keep-images",
    );
    // Kernel B must be there.
    let campaign = fixtures.join("kernel-crash-clean").display().to_string();
    run_expecting_usage_error(
        &[
            "compare",
            "--campaign",
            &campaign,
            "--images-dir",
            "/nonexistent/images",
            "--baseline-images-dir",
            &a_arg,
        ],
        "no guest images at /nonexistent/images",
    );
}

/// e2fsprogs cannot recover most fast-commit crash states
/// (docs/findings/ext4-fast-commit): the host checker would blame ext4 for
/// each, so it is refused before any VM, naming the finding.
#[test]
fn the_host_checker_refuses_an_ext4_with_fast_commit() {
    let images = fake_images("");
    let results = tempfile::tempdir().unwrap();
    let images_arg = format!("--images-dir={}", images.path().display());
    let results_arg = format!("--results-dir={}", results.path().display());
    run_expecting_usage_error(
        &[
            "run",
            "--crash-model=power-loss",
            "--checker=host",
            "--mkfs-opts=-O fast_commit",
            &images_arg,
            &results_arg,
        ],
        "docs/findings/ext4-fast-commit",
    );
    // The disk made before the refusal is not left in the results.
    let left: Vec<_> = std::fs::read_dir(results.path())
        .unwrap()
        .flatten()
        .filter(|campaign| campaign.path().join("base-disk.img").exists())
        .map(|campaign| campaign.path())
        .collect();
    assert!(left.is_empty(), "a refused campaign left its disk: {left:?}");
}
