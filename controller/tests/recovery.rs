//! A guest that hangs while recovering a crash state gives that state's
//! verdict and is replaced; it does not stop the trial. Real QEMU, real
//! kernel, real ext4; the disk the guest sees is served by the controller's
//! NBD server from a view whose reads can be held back.

mod util;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{Accel, CampaignConfig, Checker, CrashModel, CrashPointKind, FileRead, Filesystem};
use models::evidence::RecoveredFile;
use models::powerloss::KernelChecker;
use models::workload_boot::TrialContext;
use nbd::{DiskView, FileView};
use record::DurabilityMode;
use util::vm_harness;

/// A disk whose reads wait while `held` is set: a device that stopped
/// answering in the middle of recovery.
struct HeldView {
    inner: FileView,
    held: Arc<AtomicBool>,
}

impl DiskView for HeldView {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = Instant::now();
        while self.held.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.inner.read_at(offset_bytes, buf)
    }
}

fn config(images_dir: &std::path::Path) -> CampaignConfig {
    CampaignConfig {
        fs: Filesystem::Ext4,
        mount_opts: "data=ordered".into(),
        mkfs_opts: Filesystem::Ext4.default_mkfs_opts().into(),
        shard: None,
        pattern: record::Pattern::Records,
        mode: DurabilityMode::MsSync,
        record_size_bytes: 4096,
        file_size_bytes: 1 << 20,
        records_per_trial: 10,
        trials: 1,
        seed: 1,
        crash_model: CrashModel::PowerLoss,
        crash_points: CrashPointKind::End,
        crash_delay_max_ms: 1000,
        planted_bug: None,
        device_bug: None,
        profile: verifier::Profile::Linux,
        disk_size_bytes: 16 << 20,
        guest_memory_mib: 256,
        accel: Accel::Auto,
        boot_timeout_ms: 60_000,
        // The per-state limit of a checker VM is the stall timeout.
        stall_timeout_ms: 4_000,
        trial_timeout_ms: 300_000,
        images_dir: images_dir.to_path_buf(),
        kernel_build: None,
        keep_images: false,
        state_budget: 1,
        checker: Checker::Kernel,
        read_files: FileRead::Extents,
        torn_writes: false,
        tear_unit: config::TearUnit::Sector,
        fsck_states: false,
        check_workers: 1,
        trace_msync: false,
        inject_write_error: None,
        program: None,
        crash_at: None,
        explore: Default::default(),
    }
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_recovery_that_hangs_is_that_states_finding_and_the_checker_is_replaced() {
    let h = vm_harness("recovery_hang");
    let dir = h.results.path();
    let config = config(&h.images_dir);
    let images = machine::images::locate(&config.images_dir).unwrap();
    let interrupt = AtomicBool::new(false);
    let (accel, _) = machine::accel::choose(config.accel, &images, dir, &interrupt).unwrap();
    let base = dir.join("base.img");
    machine::images::make_filesystem(config.fs, &config.mkfs_words(), &base, config.disk_size_bytes).unwrap();
    let ctx = TrialContext {
        config: &config,
        images: &images,
        accel,
        base_disk: &base,
        interrupt: &interrupt,
        rerun_command: "",
    };
    let plain = || -> Arc<dyn DiskView> { Arc::new(FileView::open(&base).unwrap()) };

    let mut checker = KernelChecker::start(&ctx, dir, "checker", plain(), false).unwrap();
    let held = Arc::new(AtomicBool::new(true));
    let stalled: Arc<dyn DiskView> = Arc::new(HeldView {
        inner: FileView::open(&base).unwrap(),
        held: held.clone(),
    });
    let result = checker
        .check(stalled, FileRead::Extents, &AtomicBool::new(false))
        .unwrap();
    let reason = result
        .recovery_failure
        .clone()
        .expect("a hung mount is the state's finding");
    assert!(
        reason.contains("did not finish recovering the state within 4000 ms"),
        "{reason}"
    );
    assert!(!checker.is_usable(), "a guest stuck in a mount checks no further state");
    held.store(false, Ordering::SeqCst);
    checker.stop().unwrap();

    // The verdict names the rule; nothing else is judged on that state.
    let params = config.workload_params(1, None, None);
    let protocol = record::protocol::parse_log("READY 256\n").unwrap();
    let verdict = models::evidence::judge(&config, &params, &protocol, verifier::Seen::All, &result);
    let rules: Vec<_> = verdict.violations.iter().map(|f| f.rule).collect();
    assert_eq!(rules, vec![verifier::Rule::RecoveryCompletes]);

    // A fresh checker recovers the same disk, served normally: the fresh
    // filesystem mounts and has no data file yet.
    let mut fresh = KernelChecker::start(&ctx, dir, "checker-restart1", plain(), false).unwrap();
    let result = fresh.check(plain(), FileRead::Both, &AtomicBool::new(false)).unwrap();
    assert!(result.recovery_failure.is_none());
    assert_eq!(result.mount_rc, 0);
    assert!(matches!(result.files[..], [RecoveredFile::Missing]));
    assert!(fresh.is_usable());
    fresh.stop().unwrap();
}
