//! The power-loss model end to end: real QEMU with blklogwrites, real
//! kernels recovering real filesystems, crash states from the real log.

mod util;

use util::vm_harness;

/// A short run to the end, so every state is drawn from a whole log.
const SMALL: &[&str] = &[
    "--crash-model=power-loss",
    "--trials=1",
    "--records=150",
    "--crash-points=end",
    "--seed=21",
];

fn run(h: &util::Harness, id: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let args: Vec<&str> = SMALL.iter().chain(extra).copied().collect();
    let out = h.run(id, &args);
    let trials = h.trials(id);
    assert_eq!(trials.len(), 1);
    (out.status.code(), trials.into_iter().next().unwrap())
}

fn u(t: &serde_json::Value, key: &str) -> u64 {
    t[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {t}"))
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn ext4_without_barriers_loses_acked_records() {
    let h = vm_harness("pl_barrier0");
    let (code, t) = run(&h, "barrier0", &["--mount-opts=barrier=0", "--state-budget=30"]);
    assert_eq!(code, Some(1), "a violation gives exit code 1");
    assert_eq!(u(&t, "states_checked"), 30);
    // barrier=0: no flush while the workload runs; the only one is the
    // unmount's at the very end, after the last ack.
    assert!(
        t["log"]["flushes"].as_u64().unwrap() <= 1,
        "barrier=0 issues no flush: {}",
        t["log"]
    );
    assert!(u(&t, "states_failed") > 0);
    let rules: Vec<&str> = t["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"acked-record-lost"), "{rules:?}");

    // One command replays one crash state exactly: rebuilt from the kept
    // base image and log, it fails again with the same first violation.
    let first = &t["violations"][0];
    let replay = first["replay"].as_str().unwrap();
    assert!(replay.starts_with("crashlab replay-state --campaign "), "{replay}");
    let state = first["state"].as_u64().unwrap().to_string();
    let out = util::crashlab()
        .args([
            "replay-state",
            "--trial=0",
            "--checker=both",
            "--state",
            &state,
            "--campaign",
        ])
        .arg(h.results.path().join("barrier0"))
        .arg("--images-dir")
        .arg(&h.images_dir)
        .output()
        .unwrap();
    let stdout = util::expect_exit(&out, 1);
    let replayed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (name, verdict) in replayed["verdicts"].as_array().unwrap().iter().map(|p| (&p[0], &p[1])) {
        assert_eq!(verdict["passed"], false, "{name}");
    }
    let kernel = &replayed["verdicts"][0][1]["violations"][0];
    assert_eq!(kernel["reason"], first["reason"]);
    assert_eq!(kernel["slot"], first["slot"]);
    let image = replayed["image"].as_str().unwrap();
    assert!(
        std::path::Path::new(image).is_file(),
        "the state's disk image is written: {image}"
    );
}

/// Every planted bug of the sensitivity catalogue is caught under power
/// loss: each acknowledges records that are not durable, or the disk
/// breaks its flush contract. `cargo xtask sensitivity` measures the rates;
/// this only asserts that each is caught at all.
#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn every_planted_bug_is_caught_under_power_loss() {
    let h = vm_harness("pl_planted");
    for bug in [
        "--planted-bug=ack-before-sync",
        "--planted-bug=skip-sync:2",
        "--planted-bug=sync-wrong-range",
        "--planted-bug=async-instead-of-sync:2",
        "--planted-device-bug=drop-flush:2",
        "--planted-device-bug=reorder-across-flush:2",
    ] {
        let id = bug.trim_start_matches("--planted-").replace([':', '='], "-");
        // The host checker (e2fsck + debugfs): detection is the point here,
        // and the kernel path has its own tests.
        let (code, t) = run(&h, &id, &[bug, "--state-budget=40", "--checker=host"]);
        assert_eq!(code, Some(1), "{bug}: {t}");
        assert!(u(&t, "states_failed") > 0, "{bug}: {t}");
        assert_eq!(t["violations"][0]["rule"], "acked-record-lost", "{bug}: {t}");
        // Judging at the latest point never passes a state the earliest fails.
        assert!(
            u(&t, "states_failed") >= u(&t, "states_failed_at_earliest_point"),
            "{bug}: {t}"
        );
        if bug.contains("device") {
            assert!(t["device_bug"].is_object(), "{bug}: {t}");
        }
    }
    // The write-ahead log's own bug: a data page on disk before its log.
    let (code, t) = run(
        &h,
        "data-before-log",
        &["--pattern=wal", "--planted-bug=data-before-log", "--state-budget=40"],
    );
    assert_eq!(code, Some(1), "{t}");
    let rules: Vec<&str> = t["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"wal-order"), "{rules:?}");
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn correct_configurations_have_no_violation() {
    let h = vm_harness("pl_correct");
    for (fs, opts, disk) in [
        ("ext4", "data=ordered", "64M"),
        ("xfs", "defaults", "300M"),
        ("btrfs", "defaults", "128M"),
    ] {
        let id = format!("correct-{fs}");
        let (code, t) = run(
            &h,
            &id,
            &[
                &format!("--fs={fs}"),
                &format!("--mount-opts={opts}"),
                &format!("--disk-size={disk}"),
                "--state-budget=40",
                // Every state's files read at their extents and copied,
                // compared (a difference fails the run).
                "--read-files=both",
            ],
        );
        assert_eq!(code, Some(0), "{fs}: {t}");
        // Not vacuous: many states, each judged against acked records.
        assert!(u(&t, "states_checked") >= 30, "{fs}: {t}");
        assert!(t["log"]["acks"].as_u64().unwrap() >= 100, "{fs}: {t}");
        assert!(t["log"]["flushes"].as_u64().unwrap() > 0, "{fs}: {t}");
        assert_eq!(t["run_end"], "workload-done");
        let reads = &t["file_reads"];
        match fs {
            // Device offsets in FIEMAP: mapped, and equal to the copy.
            "ext4" | "xfs" => {
                assert!(u(reads, "by_extents") >= 30, "{fs}: {reads}");
                assert_eq!(u(reads, "cross_checked"), u(reads, "by_extents"), "{fs}: {reads}");
                assert_eq!(u(reads, "copied"), 0, "{fs}: {reads}");
            }
            // btrfs's FIEMAP gives its own logical addresses: copied.
            _ => {
                assert_eq!(u(reads, "by_extents"), 0, "{fs}: {reads}");
                assert!(u(reads, "copied") >= 30, "{fs}: {reads}");
            }
        }
    }
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn host_path_agrees_with_the_kernel_path() {
    let h = vm_harness("pl_both");
    // barrier=0 gives failing states, data=ordered passing ones: both
    // verdicts are compared state by state.
    for (opts, expect_failures) in [("barrier=0", true), ("data=ordered", false)] {
        let id = format!("both-{opts}").replace('=', "-");
        let (_, t) = run(
            &h,
            &id,
            &[&format!("--mount-opts={opts}"), "--checker=both", "--state-budget=30"],
        );
        assert_eq!(u(&t, "checker_disagreements"), 0, "{opts}: {t}");
        assert_eq!(u(&t, "states_checked"), 30);
        assert_eq!(u(&t, "states_failed") > 0, expect_failures, "{opts}: {t}");
        if expect_failures {
            // The failing trial's capture is kept: checked again without a
            // workload boot, by the host path alone, the same states fail
            // (details may differ on wreckage, pass/fail may not).
            // Every state read by crashlab's ext4 reader is also read by
            // e2fsprogs, and must be equal (or the recheck stops, exit 2).
            let again = host_recheck_read_both_ways(&h.results.path().join(&id));
            assert_eq!(again["passed"], false, "{again}");
            assert_eq!(u(&again, "states_checked"), 30, "{again}");
            assert_eq!(u(&again, "states_failed"), u(&t, "states_failed"), "{again}");
        }
        if !expect_failures {
            // On consistent filesystems the two readings match in every detail.
            assert_eq!(u(&t, "checker_detail_differences"), 0, "{opts}: {t}");
        }
    }
}

/// `crashlab recheck --checker host --read-files both` on a kept capture:
/// every state the ext4 reader reads is read by e2fsprogs too, compared.
fn host_recheck_read_both_ways(campaign: &std::path::Path) -> serde_json::Value {
    let out = util::crashlab()
        .args(["recheck", "--json", "--checker=host", "--read-files=both", "--campaign"])
        .arg(campaign)
        .output()
        .expect("crashlab runs");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let record = again["record"].clone();
    let reads = &record["file_reads"];
    let (native, tools) = (u(reads, "by_ext4_reader"), u(reads, "by_e2fsprogs"));
    assert_eq!(native + tools, u(&record, "states_checked"), "{record}");
    assert_eq!(u(reads, "cross_checked"), native, "{record}");
    assert!(native > 0, "the reader declined every state: {record}");
    record
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn torn_writes_may_break_the_filesystem_but_never_the_data_rules() {
    let h = vm_harness("pl_torn");
    // Batches of 8 in a file of 64 slots that 400 records wrap around:
    // overwrites of whole batches, so a torn write lands in records in
    // flight. Tears at sectors and at 4 KiB pages, chosen per state.
    let args = [
        "--crash-model=power-loss",
        "--trials=1",
        "--crash-points=end",
        "--seed=21",
        "--torn-writes",
        "--tear-unit=both",
        "--mode=batch:8",
        "--file-size=256K",
        "--records=400",
        "--state-budget=60",
        "--keep-images",
    ];
    h.run("torn", &args);
    let t = h.trials("torn").remove(0);
    assert_eq!(u(&t, "states_checked"), 60);
    let states: Vec<serde_json::Value> = std::fs::read_to_string(h.results.path().join("torn/states.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let torn_states = states.iter().filter(|s| s["torn"] == true).count();
    assert!(
        torn_states >= 5,
        "torn states are planned: {torn_states} of {}",
        states.len()
    );
    // Not vacuous: torn records in flight were seen, and counted, not flagged.
    assert!(t["state_counts"]["torn"].as_u64().unwrap() > 0, "{t}");
    // Both units were drawn, each recorded in its state: 8-sector (4 KiB
    // page) tears of batch:8's multi-page writes, and sector tears.
    let page_torn = states.iter().filter(|s| s["tear_unit_sectors"] == 8).count();
    assert!(
        page_torn > 0 && page_torn < torn_states,
        "page tears {page_torn} of {torn_states}"
    );
    for s in &states {
        if s["passed"] == true {
            continue;
        }
        // Only a torn state may fail, and only because the filesystem
        // refused the torn metadata (e.g. a 1 KiB superblock torn between
        // its sectors fails its checksum): a finding about the filesystem.
        // Acked data lost, stale or foreign bytes would be a broken model
        // or verifier.
        assert_eq!(s["torn"], true, "{s}");
        let rule = s["first_violation"]["rule"].as_str().unwrap();
        assert!(["mountable", "fsck-clean"].contains(&rule), "{s}");
    }
    // Torn journal and metadata blocks on the host path: the ext4 reader
    // declines what it cannot vouch for, e2fsprogs reads those, and the
    // two agree wherever both read.
    let again = host_recheck_read_both_ways(&h.results.path().join("torn"));
    assert_eq!(u(&again, "states_checked"), 60, "{again}");
}

/// `--explore exhaustive` with `--checker tiered`: every distinct state of
/// a run checked (the coverage says exactly how many the model holds, by
/// epoch size too), the host on each, the kernel on a seeded sample; and
/// on a run whose states fail, the kernel on every one the host failed,
/// agreeing with it.
#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn every_state_of_a_run_is_checked_by_the_tiered_checkers() {
    let h = vm_harness("pl_tiered");
    let (code, t) = run(&h, "exhaustive", &["--explore=exhaustive", "--checker=tiered"]);
    assert_eq!(code, Some(0), "{t}");
    let c = &t["coverage"];
    let states = u(&t, "states_checked");
    assert_eq!(c["model_exact"], true, "{c}");
    assert_eq!(
        (u(c, "states"), u(c, "states_in_model") - u(c, "duplicates")),
        (states, states),
        "{c}"
    );
    assert_eq!(u(c, "epochs_enumerated"), u(c, "epochs"), "{c}");
    let classes = c["by_epoch_size"].as_array().unwrap();
    let sum = |key: &str| classes.iter().map(|k| u(k, key)).sum::<u64>();
    assert_eq!((sum("states"), sum("epochs")), (states, u(c, "epochs")), "{c}");
    let tiers = &t["tiered"];
    let kernel = u(tiers, "kernel_sampled") + u(tiers, "kernel_host_failed") + u(tiers, "kernel_host_declined");
    assert_eq!(u(tiers, "host_only") + kernel, states, "{tiers}");
    assert!(u(tiers, "kernel_sampled") > 0, "the kernel checks a sample: {tiers}");
    assert_eq!(u(tiers, "kernel_host_failed"), 0, "{tiers}");
    assert_eq!(u(&t, "checker_disagreements"), 0, "{t}");
    let summary = std::fs::read_to_string(h.results.path().join("exhaustive/summary.txt")).unwrap();
    assert!(
        summary.contains(&format!(
            "{states} distinct states checked of exactly {states} in the model (100.0%)"
        )),
        "{summary}"
    );
    assert!(summary.contains("checkers: tiered: the host checked all"), "{summary}");

    let (code, t) = run(
        &h,
        "barrier0",
        &["--mount-opts=barrier=0", "--checker=tiered", "--state-budget=30"],
    );
    assert_eq!(code, Some(1), "{t}");
    let tiers = &t["tiered"];
    assert!(u(&t, "states_failed") > 0, "{t}");
    // Every failing state was the kernel's verdict too: none fails on the
    // host's word alone, and the two agree.
    assert_eq!(u(&t, "checker_disagreements"), 0, "{t}");
    assert!(
        u(tiers, "kernel_host_failed") + u(tiers, "kernel_sampled") >= u(&t, "states_failed"),
        "{t}"
    );
}
