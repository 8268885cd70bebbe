//! The campaign files of `examples/`, each run whole at a tiny budget in a
//! real guest (the command line overrides the budget, as a user would), and
//! a campaign's saved `campaign.toml` rerun to the same verdicts.

mod util;

use std::path::{Path, PathBuf};

use util::vm_harness;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

/// Runs `crashlab run --config FILE` with a tiny budget; (exit code,
/// stdout + stderr).
fn run_file(h: &util::Harness, file: &Path, id: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = util::crashlab()
        .arg("run")
        .arg("--config")
        .arg(file)
        .args(["--quiet", "--trials=1", "--state-budget=4"])
        .args((!extra.iter().any(|a| a.starts_with("--records"))).then_some("--records=60"))
        .arg(format!("--campaign-id={id}"))
        .arg("--images-dir")
        .arg(&h.images_dir)
        .arg("--results-dir")
        .arg(h.results.path())
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {}: {}\n{text}", file.display(), out.status);
    (out.status.code(), text)
}

fn matrix(h: &util::Harness, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(h.results.path().join(id).join("campaign-file.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cells(table: &serde_json::Value) -> Vec<serde_json::Value> {
    table["cells"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|row| row.as_object().unwrap().values().cloned().collect::<Vec<_>>())
        .collect()
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn quick_check_runs_and_a_saved_configuration_reruns_exactly() {
    let h = vm_harness("example_quick");

    // Both crash models, clean; the sweep is saved.
    let (code, text) = run_file(&h, &example("quick-check.toml"), "quick", &[]);
    assert_eq!(code, Some(0), "{text}");
    let quick = cells(&matrix(&h, "quick"));
    assert_eq!(quick.len(), 2);
    assert!(quick
        .iter()
        .all(|c| c["violations"] == 0 && c["states_checked"].as_u64().unwrap() >= 1));
    let sweep = std::fs::read_to_string(h.results.path().join("quick/sweep.toml")).unwrap();
    assert!(
        sweep.contains("crash-model = [\"kernel-crash\", \"power-loss\"]") && sweep.contains("trials = 1"),
        "{sweep}"
    );

    // A cell's campaign.toml runs the same campaign again: same crash
    // points, same verdicts.
    let power_loss = quick
        .iter()
        .map(|c| PathBuf::from(c["results_dir"].as_str().unwrap()))
        .find(|d| d.to_string_lossy().contains("power-loss"))
        .unwrap();
    let saved = power_loss.join("campaign.toml");
    let out = util::crashlab()
        .args(["run", "--quiet", "--campaign-id=again", "--config"])
        .arg(&saved)
        .arg("--results-dir")
        .arg(h.results.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let facts = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("states.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let s: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {} {} {} {}",
                    s["trial"], s["state"], s["crash_position"], s["acked"], s["passed"]
                )
            })
            .collect()
    };
    assert_eq!(facts(&power_loss), facts(&h.results.path().join("again")));
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn fs_matrix_is_clean_on_every_filesystem_with_its_defaults() {
    let h = vm_harness("example_fs");
    let (code, text) = run_file(&h, &example("fs-matrix.toml"), "fs", &[]);
    assert_eq!(code, Some(0), "{text}");
    let fs = cells(&matrix(&h, "fs"));
    assert_eq!(fs.len(), 8);
    assert!(
        fs.iter()
            .all(|c| c["violations"] == 0 && c["states_checked"].as_u64().unwrap() >= 1),
        "{fs:?}"
    );
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn the_barrier0_control_is_caught() {
    let h = vm_harness("example_barrier0");
    let (code, text) = run_file(&h, &example("barrier0-control.toml"), "barrier0", &[]);
    assert_eq!(code, Some(1), "barrier=0 was not caught: {text}");
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn lmdb_is_clean_on_three_filesystems_under_both_models() {
    let h = vm_harness("example_lmdb");
    let (code, text) = run_file(&h, &example("lmdb.toml"), "lmdb", &["--records=30"]);
    assert_eq!(code, Some(0), "{text}");
    let lmdb = cells(&matrix(&h, "lmdb"));
    assert_eq!(lmdb.len(), 6);
    // Not vacuous: every cell judged states against acked transactions.
    assert!(
        lmdb.iter()
            .all(|c| c["violations"] == 0 && c["states_checked"].as_u64().unwrap() >= 1),
        "{lmdb:?}"
    );
    for cell in &lmdb {
        let dir = Path::new(cell["results_dir"].as_str().unwrap());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert!(
            summary["acked"].as_u64().unwrap() > 0,
            "nothing acked in {}",
            dir.display()
        );
    }
}

#[test]
fn a_campaign_file_with_a_mistake_names_the_file_the_line_and_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (text, want) in [
        (
            "fs = \"ext4\"\n\ncrash_model = \"power-loss\"\n",
            ":3: unknown key `crash_model`",
        ),
        ("[sweep]\nfs = [\"ext4\", \"zfs\"]\n", ":2: [sweep] fs = \"zfs\""),
        ("pattern = \"wal\"\nrecords = \"many\"\n", ":2: records:"),
        ("trials = [1, 2]\n", "list them under [sweep]"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = util::crashlab().arg("run").arg("--config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(want) && stderr.contains(&file.display().to_string()),
            "{text}: {stderr}"
        );
    }
    // Keys that need each other are checked together, after each alone.
    std::fs::write(
        &file,
        "workload = \"no-such-program\"\nworkload-arg = [\"workload\"]\nchecker-cmd = \"no-such-program\"\nchecker-arg = [\"check\"]\n",
    )
    .unwrap();
    let out = util::crashlab().arg("run").arg("--config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-program") && stderr.contains("cannot read it"),
        "{stderr}"
    );
    std::fs::write(&file, "[sweep]\nfs = [\"ext4\", \"zfs\"]\n").unwrap();
    let out = util::crashlab().arg("run").arg("--config").arg(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: ext4, xfs, btrfs, f2fs"));
}
