//! `crashlab compare` on real captures: the distro kernel against itself,
//! where the answer is known (the same recovery: no state differs, and the
//! failing states of a `barrier=0` capture fail on both), under power loss
//! (one capture, recovered twice) and kernel crash (the campaign run again).
//! The diff's logic on every kind of difference is unit-tested beside it
//! (`controller/tools/src/compare.rs`), its refusals in `cli.rs`.

mod util;

use util::vm_harness;

fn compare(h: &util::Harness, id: &str, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let campaign = h.results.path().join(id);
    let out = util::crashlab()
        .args(["compare", "--quiet", "--campaign"])
        .arg(&campaign)
        .arg("--images-dir")
        .arg(&h.images_dir)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("--- compare {id}: {}\n{text}", out.status);
    let results = text
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .map(|dir| std::fs::read_to_string(std::path::Path::new(dir).join("comparison.json")).unwrap())
        .map(|json| serde_json::from_str(&json).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code(), text, results)
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_kernel_compared_with_itself_differs_in_no_state() {
    let h = vm_harness("compare");
    // barrier=0: states that lose acked records, so "both fail" is tested too.
    let out = h.run(
        "barrier0",
        &[
            "--crash-model=power-loss",
            "--trials=1",
            "--crash-points=end",
            "--records=300",
            "--state-budget=30",
            "--checker=host",
            "--mount-opts=barrier=0",
            "--seed=5",
            "--keep-images",
        ],
    );
    assert!(out.status.code().is_some_and(|c| c <= 1), "the campaign ran");
    let (code, text, c) = compare(&h, "barrier0", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(c["mode"], "recovery", "{c}");
    assert!(text.contains("recovery alone"), "{text}");
    let counts = &c["counts"];
    assert!(counts["compared"].as_u64().unwrap() >= 20, "{counts}");
    assert_eq!(counts["a_failed"], counts["b_failed"], "{counts}");
    assert!(
        counts["both_failed"].as_u64().unwrap() > 0,
        "barrier=0 loses acks on both: {counts}"
    );
    for kind in ["fixed", "regressions", "other_rule"] {
        assert_eq!(counts[kind], 0, "{kind}: {counts}");
    }
    assert_eq!(c["a"]["kernel"], c["b"]["kernel"], "one kernel, twice");

    // The report shows the comparison.
    let campaign = h.results.path().join("barrier0");
    let report = util::crashlab().arg("report").arg(&campaign).output().unwrap();
    assert!(report.status.success());
    let html = std::fs::read_to_string(campaign.join("report.html")).unwrap();
    assert!(html.contains("Kernels compared"), "the report shows the comparison");
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_kernel_crash_campaign_is_compared_by_running_it_again() {
    let h = vm_harness("compare-kc");
    let out = h.run(
        "kc",
        &[
            "--crash-model=kernel-crash",
            "--trials=1",
            "--records=200",
            "--crash-points=acks",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let (code, text, c) = compare(&h, "kc", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(c["mode"], "capture", "{c}");
    assert!(text.contains("write path"), "{text}");
    assert_eq!(c["counts"]["compared"], 1, "{c}");
    assert_eq!(c["counts"]["both_passed"], 1, "{c}");
    let b_dir = c["b_campaign_dir"].as_str().unwrap();
    assert!(
        std::path::Path::new(b_dir).join("trials.jsonl").is_file(),
        "B's campaign is kept"
    );
}
