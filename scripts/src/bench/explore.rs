//! Stage 7 of `cargo xtask bench` (`--only explore` runs it alone): every
//! crash state of a run, explored (`--explore exhaustive`), timed end to
//! end: the default power-loss trial with torn variants under each
//! checker (the targets of ARCHITECTURE.md's "Speed"), then the long
//! epochs of `batch:8` and `ms-async-fsync`, where the per-epoch bound
//! (2^12 subsets per crash point) bites.

use anyhow::Result;
use serde_json::Value;
use xshell::cmd;

use super::{field, json, Bench, CRASHLAB};

const TARGET_HOST_S: f64 = 300.0;
const TARGET_KERNEL_S: f64 = 900.0;

/// One exploration: what it ran, its summary and its wall time.
pub struct ExploreRow {
    label: &'static str,
    target_s: Option<f64>,
    wall_s: f64,
    summary: Value,
}

type RowSpec = (&'static str, Option<f64>, &'static [&'static str]);

const ROWS: [RowSpec; 4] = [
    (
        "ms-sync, 1,000 records, torn variants, host checker",
        Some(TARGET_HOST_S),
        &["--mode=ms-sync", "--records=1000", "--torn-writes", "--checker=host"],
    ),
    (
        "ms-sync, 1,000 records, torn variants, kernel checker",
        Some(TARGET_KERNEL_S),
        &["--mode=ms-sync", "--records=1000", "--torn-writes", "--checker=kernel"],
    ),
    (
        "batch:8, 1,000 records, host checker",
        None,
        &["--mode=batch:8", "--records=1000", "--checker=host"],
    ),
    (
        "ms-async-fsync, 1,000 records, host checker",
        None,
        &["--mode=ms-async-fsync", "--records=1000", "--checker=host"],
    ),
];

impl Bench<'_> {
    pub fn explore_rows(&self) -> Result<Vec<ExploreRow>> {
        let (sh, images, extra) = (self.sh, &self.images, &self.extra);
        let mut rows = Vec::new();
        for (i, &(label, target_s, args)) in ROWS.iter().enumerate() {
            let id = format!("{}-explore{i}", self.tag);
            eprintln!("xtask bench: every crash state of a run: {label}");
            let start = std::time::Instant::now();
            let code = crate::children::status(cmd!(
                sh,
                "{CRASHLAB} run --images-dir {images} --quiet --campaign-id {id} --results-dir results --seed=7 --fs=ext4 --crash-model=power-loss --trials=1 --crash-points=end --explore=exhaustive --check-workers=2 {args...} {extra...}"
            ))?;
            anyhow::ensure!(code <= 1, "crashlab exited {code}; see results/{id}");
            rows.push(ExploreRow {
                label,
                target_s,
                wall_s: start.elapsed().as_secs_f64(),
                summary: json(&sh.read_file(format!("results/{id}/summary.json"))?)?,
            });
        }
        Ok(rows)
    }
}

pub fn print_explore(rows: &[ExploreRow]) {
    println!("every crash state of a run (--explore exhaustive, ext4 data=ordered, one trial, 2 check workers):");
    for row in rows {
        let c = &row.summary["coverage"];
        let model = match c["exact"].as_bool() {
            Some(true) => "exactly",
            _ => "at most",
        };
        println!("  {}:", row.label);
        println!(
            "    {:.0} s wall, {} distinct states checked of {model} {} in the model, {} duplicates removed, \
             {} violations",
            row.wall_s,
            field(c, &["states_checked"]),
            field(c, &["states_in_model"]),
            field(c, &["duplicates"]),
            field(&row.summary, &["violations"]),
        );
        println!(
            "    epochs: {} enumerated, {} sampled (over 2^12 subsets per crash point); largest epoch {} writes",
            field(c, &["epochs_enumerated"]),
            field(c, &["epochs_sampled"]),
            field(c, &["largest_epoch_writes"]),
        );
        if let Some(target_s) = row.target_s {
            println!(
                "    [target: under {:.0} minutes: {}]",
                target_s / 60.0,
                super::verdict(row.wall_s < target_s)
            );
        }
    }
    println!("  (violations under torn variants on the distro 6.1 kernel: docs/findings/ext4-torn-commit-block)");
    println!();
}
