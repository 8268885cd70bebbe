//! Every workload pattern on a real ext4 in a real guest, under both crash
//! models, clean on the correct configuration: a small matrix, run through
//! `crashlab matrix` itself (the sweep CI runs).

mod util;

use util::vm_harness;

// `records` is covered by every other VM test.
const PATTERNS: [&str; 6] = ["partial-msync", "invalidate", "ipc", "wal", "growth", "several"];

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn every_pattern_is_clean_under_a_kernel_crash() {
    every_pattern_is_clean_under("kernel-crash");
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn every_pattern_is_clean_under_power_loss() {
    every_pattern_is_clean_under("power-loss");
}

/// One crash model's half of the matrix (two tests, so that lanes run the
/// halves side by side).
fn every_pattern_is_clean_under(model: &str) {
    let h = vm_harness("patterns");
    let out = util::crashlab()
        .args([
            "matrix",
            "--configs=ext4:data=ordered",
            &format!("--patterns={}", PATTERNS.join(",")),
            &format!("--crash-models={model}"),
            "--id=m",
            "--results-dir",
        ])
        .arg(h.results.path())
        .arg(format!("--junit={}", h.results.path().join("junit.xml").display()))
        .args([
            "--",
            "--trials=1",
            "--records=80",
            "--state-budget=6",
            "--check-workers=1",
            "--seed=4",
            "--quiet",
        ])
        .arg(format!("--images-dir={}", h.images_dir.display()))
        .output()
        .unwrap();
    let stdout = util::expect_exit(&out, 0);
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.results.path().join("m/matrix.json")).unwrap()).unwrap();
    for row in [format!("{model}: ext4 data=ordered")] {
        let row = row.as_str();
        for pattern in PATTERNS {
            let cell = &table["cells"][row][pattern];
            assert_eq!(cell["violations"], 0, "{row} {pattern}: {cell}");
            // Not vacuous: states were judged, against acked records.
            assert!(cell["states_checked"].as_u64().unwrap() >= 1, "{row} {pattern}: {cell}");
            let trials = std::fs::read_to_string(
                std::path::Path::new(cell["results_dir"].as_str().unwrap()).join("trials.jsonl"),
            )
            .unwrap();
            assert!(trials.contains("\"acked\":"), "{row} {pattern}");
        }
    }
    assert!(stdout.contains("partial-msync"), "{stdout}");
    // One JUnit case per cell, all passing, valid against the schema.
    let junit = h.results.path().join("junit.xml");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"6\" failures=\"0\" errors=\"0\""), "{xml}");
    assert!(
        xml.contains("name=\"ext4 wal -o data=ordered mkfs -T default\""),
        "{xml}"
    );
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/junit.xsd");
    let check = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(&junit)
        .output()
        .expect("xmllint runs");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
