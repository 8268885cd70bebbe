//! A kernel built from source (`cargo xtask kernel`) under both crash
//! models. CI builds no kernel (15 minutes on 2 cores): this test runs
//! where `cargo xtask kernel-check` left one in `vm-images/cache-src`, and
//! says it skipped otherwise.

mod util;

use std::path::PathBuf;

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_kernel_built_from_source_runs_both_crash_models() {
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vm-images/cache-src");
    let Ok(manifest) = std::fs::read_to_string(images.join("manifest.json")) else {
        eprintln!(
            "skipped: no kernel built from source at {} (`cargo xtask kernel-check` builds one)",
            images.display()
        );
        return;
    };
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let build_key = manifest["kernel_build"]["build_key"]
        .as_str()
        .expect("a built kernel's manifest");
    assert_eq!(manifest["modules"], 0, "everything built in: {manifest}");
    let h = util::vm_harness("built-kernel").with_images(images.clone());
    for (id, model) in [("pl", "--crash-model=power-loss"), ("kc", "--crash-model=kernel-crash")] {
        let out = h.run(id, &[model, "--trials=1", "--records=200", "--state-budget=20"]);
        assert_eq!(out.status.code(), Some(0), "{id}");
        let meta = h.campaign_json(id);
        assert_eq!(meta["kernel"]["build"]["build_key"], build_key, "{id}");
        let short = &build_key.trim_start_matches("blake3:")[..12];
        assert_eq!(meta["config"]["kernel_build"], short, "{id}");
        assert!(
            meta["rerun"]
                .as_str()
                .unwrap()
                .contains(&format!("--kernel-build={short}")),
            "{id}"
        );
        let summary = std::fs::read_to_string(h.results.path().join(id).join("summary.txt")).unwrap();
        assert!(
            summary.contains("kernel: ") && summary.contains(" built from "),
            "{summary}"
        );
    }
    // The rerun names the build: images of another kernel are refused.
    let out = util::crashlab()
        .args([
            "run",
            "--quiet",
            "--trials=1",
            "--records=50",
            "--kernel-build=000000000000",
        ])
        .arg("--images-dir")
        .arg(&images)
        .arg("--results-dir")
        .arg(h.results.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("ran on kernel build 000000000000"), "{text}");
}
