//! A program crashlab did not write, under test (docs/workload-protocol.md):
//! LMDB (`clients/lmdb`, built by `cargo xtask images` beside the guest
//! images) in a real guest on real filesystems, under both crash models;
//! its negative controls caught; faults of the program itself reported as
//! such, not as verdicts on the filesystem.

mod util;

use util::vm_harness;

/// `--workload`/`--checker-cmd` for crashlab-lmdb, with `extra` workload flags.
fn lmdb_args(h: &util::Harness, extra: &[&str]) -> Vec<String> {
    let bin = h.images_dir.join("crashlab-lmdb");
    assert!(bin.is_file(), "{} is missing: run `cargo xtask images`", bin.display());
    let mut args = vec![
        format!("--workload={}", bin.display()),
        "--workload-arg=workload".to_string(),
    ];
    args.extend(extra.iter().map(|e| format!("--workload-arg={e}")));
    args.push(format!("--checker-cmd={}", bin.display()));
    args.push("--checker-arg=check".into());
    args
}

fn run(h: &util::Harness, id: &str, extra: &[&str], flags: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let lmdb = lmdb_args(h, extra);
    let args: Vec<&str> = flags.iter().copied().chain(lmdb.iter().map(String::as_str)).collect();
    let out = h.run(id, &args);
    let summary = std::fs::read_to_string(h.results.path().join(id).join("summary.json"))
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ext4 here; `cargo xtask lmdb` runs ext4, xfs and btrfs at length.
// LMDB clean on ext4, xfs and btrfs under both crash models: the campaign
// file examples/lmdb.toml, run by controller/tests/examples.rs.

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn lmdb_controls_are_caught_nosync_and_a_lying_program() {
    let h = vm_harness("lmdb-controls");
    // MDB_NOSYNC: commits return without msync; a power loss loses them.
    // --ack-before-commit: the program says ACK before it commits.
    for (id, extra) in [("nosync", "--nosync"), ("liar", "--ack-before-commit")] {
        let (code, summary, stderr) = run(
            &h,
            id,
            &[extra],
            &[
                "--trials=1",
                "--records=100",
                "--crash-model=power-loss",
                "--state-budget=40",
            ],
        );
        assert_eq!(code, Some(1), "{id}: {stderr}");
        assert!(summary["states_failed"].as_u64().unwrap() > 0, "{id}: {summary}");
        let states = std::fs::read_to_string(h.results.path().join(id).join("states.jsonl")).unwrap();
        let rules: std::collections::BTreeSet<String> = states
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|s| s["passed"] == false)
            .map(|s| s["first_violation"]["rule"].as_str().unwrap().to_string())
            .collect();
        assert!(rules.contains("acked-item-lost"), "{id}: {rules:?}");
    }
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_program_that_exits_or_hangs_by_itself_is_reported_as_such() {
    let h = vm_harness("lmdb-faults");
    // Exits (status 3) after 5 commits: a workload error, and the 5 acked
    // transactions are judged as any others.
    let (code, summary, stderr) = run(
        &h,
        "exits",
        &["--exit-after", "5"],
        &["--trials=1", "--records=100", "--crash-points=end"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary["workload_errors"], 1, "{summary}");
    assert_eq!(summary["violations"], 0, "{summary}");
    assert_eq!(summary["acked"], 5, "{summary}");
    // Hangs after 5 commits: the campaign stops naming the program.
    let (code, _, stderr) = run(
        &h,
        "hangs",
        &["--hang-after", "5"],
        &[
            "--trials=1",
            "--records=100",
            "--crash-points=end",
            "--stall-timeout-ms=6000",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("hangs by itself"), "{stderr}");
}

/// A dynamic program whose library is not on the host's library path:
/// built with gcc against a library that is then removed.
fn program_missing_its_library(dir: &std::path::Path) -> std::path::PathBuf {
    let gcc = |args: &[&str]| {
        let out = std::process::Command::new("gcc")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gcc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("gone.c"), "int gone(void) { return 7; }\n").unwrap();
    std::fs::write(
        dir.join("main.c"),
        "int gone(void);\nint main(void) { return gone(); }\n",
    )
    .unwrap();
    gcc(&["-shared", "-fPIC", "-o", "libcrashlabgone.so", "gone.c"]);
    gcc(&["-o", "needs-gone", "main.c", "-L.", "-lcrashlabgone"]);
    std::fs::remove_file(dir.join("libcrashlabgone.so")).unwrap();
    dir.join("needs-gone")
}

/// Refused before any VM, each with the file named and the fix: a script
/// (its interpreter's needs cannot be seen), a dynamic program whose
/// library this host lacks, a missing file. A dynamic binary whose
/// libraries are all found is accepted (the VM test below runs one).
#[test]
fn a_script_a_missing_library_or_a_missing_file_is_refused_before_any_vm() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("prog.sh");
    std::fs::write(&script, "#!/bin/sh\necho READY\n").unwrap();
    let needs_gone = program_missing_its_library(dir.path());
    for (workload, needle) in [
        (script.to_str().unwrap(), "is a script"),
        (
            needs_gone.to_str().unwrap(),
            "needs libcrashlabgone.so, which is not on this host's library path",
        ),
        ("/no/such/program", "cannot read it"),
    ] {
        let out = util::crashlab()
            .args(["run", "--quiet", "--trials=1", "--images-dir=/no/images"])
            .arg(format!("--workload={workload}"))
            .arg("--checker-cmd=/bin/sh")
            .arg("--results-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{workload}: {stderr}");
    }
}

/// A client of clients/c built by gcc as users build theirs: dynamically
/// linked against the host's glibc (and `libs`, Debian's packages).
fn build_c_client(dir: &std::path::Path, name: &str, source: &str, flags: &[&str]) -> std::path::PathBuf {
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/c");
    let bin = dir.join(name);
    let out = std::process::Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(&clients)
        .arg("-o")
        .arg(&bin)
        .arg(clients.join(source))
        .args(flags)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc: {}", String::from_utf8_lossy(&out.stderr));
    let elf = machine::elf::read(&std::fs::read(&bin).unwrap()).unwrap();
    assert!(elf.interpreter.is_some(), "a dynamic binary: {elf:?}");
    bin
}

/// `bin` as program (`workload` and `extra`) and as checker (`check`).
fn c_program_args(bin: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--workload={}", bin.display()),
        "--workload-arg=workload".into(),
    ];
    args.extend(extra.iter().map(|e| format!("--workload-arg={e}")));
    args.extend([format!("--checker-cmd={}", bin.display()), "--checker-arg=check".into()]);
    args
}

/// Runs `bin` clean under both crash models (crashed at an ack; 40
/// items, 20 states) and its `--nosync` control under power loss to the
/// end of its run (60 items, 40 states), which must lose acked items: acks
/// without a sync leave no flush after them, so the whole run is one open
/// epoch, and only the states that hold an ack but not its item fail (for
/// LevelDB about one in ten).
fn clean_and_control_caught(h: &util::Harness, name: &str, bin: &std::path::Path) {
    for (model, extra, crash_points, (records, budget), code) in [
        ("power-loss", &[][..], "acks", (40, 20), 0),
        ("kernel-crash", &[][..], "acks", (40, 20), 0),
        ("power-loss", &["--nosync"][..], "end", (60, 40), 1),
    ] {
        let id = format!("{name}-{model}{}", extra.first().unwrap_or(&""));
        let mut args = vec![
            "--trials=1".to_string(),
            format!("--records={records}"),
            format!("--state-budget={budget}"),
            format!("--crash-points={crash_points}"),
            format!("--crash-model={model}"),
        ];
        args.extend(c_program_args(bin, extra));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h.run(&id, &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let trial = &h.trials(&id)[0];
        if code == 0 {
            assert_eq!(trial["run_end"], "crashed", "{id}: {trial}");
            assert_eq!(trial["workload_error"], serde_json::Value::Null, "{id}: {trial}");
        } else {
            let states = std::fs::read_to_string(h.results.path().join(&id).join("states.jsonl")).unwrap();
            assert!(states.contains("acked-item-lost"), "{id}: {states}");
        }
    }
}

/// A dynamically linked program and checker (mmaplog, built by gcc; the
/// loader and libraries packed into the program's layer) run in the guest,
/// clean, and `--crash-at committed:5` stops it right after its fifth
/// commit (it prints `POINT committed` after each `ACK`), under both models:
/// kernel crash: the trial crashed there with 5 items acked; power loss:
/// the run stopped there, so its log ends at that point (5 acks in it, the
/// sixth item never begun). The program's NOTE is kept in its log.
#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_crash_point_the_program_names_stops_it_there_under_both_models() {
    let h = vm_harness("crash-at");
    let bin = build_c_client(h.results.path(), "mmaplog", "mmaplog.c", &[]);
    for model in ["kernel-crash", "power-loss"] {
        let mut args = vec![
            "--trials=1".to_string(),
            "--records=40".into(),
            "--state-budget=20".into(),
            "--crash-at=committed:5".into(),
            format!("--crash-model={model}"),
        ];
        args.extend(c_program_args(&bin, &[]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h.run(model, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let trial = &h.trials(model)[0];
        assert_eq!(trial["crash_point"]["kind"], "at-named-point", "{trial}");
        assert_eq!(trial["run_end"], "crashed", "{trial}");
        let log = std::fs::read_to_string(h.results.path().join(model).join("trials/0/workload.protocol.log")).unwrap();
        assert!(
            log.contains("POINT committed 5\n") && !log.contains("POINT committed 6"),
            "{log}"
        );
        assert!(
            log.contains("NOTE mmaplog: 40 records"),
            "the program's NOTE is kept: {log}"
        );
        assert!(!log.contains("ITEM 5 5 "), "the sixth item was never begun: {log}");
        match model {
            "kernel-crash" => assert_eq!(trial["counts"]["acked"], 5, "{trial}"),
            _ => assert_eq!(trial["items"]["acked"], 5, "{trial}"),
        }
    }
}

/// RocksDB (with allow_mmap_writes and allow_mmap_reads) and LevelDB as
/// Debian ships them, shared libraries, each committing seeded write
/// batches with sync = true: clean on ext4 under both crash models; with
/// sync = false, acked batches are lost under power loss (caught).
/// `cargo xtask kvstores` runs them on ext4, xfs and btrfs at length.
#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn rocksdb_and_leveldb_run_clean_and_their_controls_are_caught() {
    let h = vm_harness("kvstores");
    for (name, define, lib) in [
        ("rocksdb", "-DKV_ROCKSDB", "-lrocksdb"),
        ("leveldb", "-DKV_LEVELDB", "-lleveldb"),
    ] {
        let bin = build_c_client(h.results.path(), &format!("kv-{name}"), "kvstore.c", &[define, lib]);
        clean_and_control_caught(&h, name, &bin);
    }
}

/// A check that takes longer than the per-state limit is checked again, on
/// a fresh checker VM with four times the time, before a timeout counts as
/// a hung recovery: an overloaded host is not a filesystem that hangs.
/// Here the checker itself is slow (4 s against a 3 s limit).
#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_slow_check_is_retried_with_more_time_not_reported_as_a_hang() {
    let h = vm_harness("lmdb-slow-check");
    let bin = h.images_dir.join("crashlab-lmdb");
    let out = h.run(
        "slow",
        &[
            "--trials=1",
            "--records=50",
            "--crash-model=power-loss",
            "--state-budget=2",
            "--check-workers=1",
            "--stall-timeout-ms=3000",
            &format!("--workload={}", bin.display()),
            "--workload-arg=workload",
            &format!("--checker-cmd={}", bin.display()),
            "--checker-arg=check",
            "--checker-arg=--delay-ms",
            "--checker-arg=4000",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let trial = &h.trials("slow")[0];
    assert_eq!(trial["states_failed"], 0, "{trial}");
    assert_eq!(trial["checker_timeouts_retried"], trial["states_checked"], "{trial}");
}
