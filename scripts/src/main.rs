//! `cargo xtask <task>`: the project's own tasks, in Rust (xshell).
//!
//! - `deps`      install the missing Debian packages (as root) or print the line
//! - `images`    build the static workload and the guest initramfs (cached)
//! - `campaign`  deps + images + the default campaign (extra args go to `crashlab run`)
//! - `test`      deps + images + every test, unit and VM integration
//! - `bench`     deps + images + the benchmark figures
//! - `sensitivity` deps + images + the planted-bug catalogue's detection rates
//!
//! Exit codes: those of the task; 2 for setup errors.

mod cpio;
mod deps;
mod images;
mod sensitivity;

use std::process::ExitCode;

use anyhow::Result;
use xshell::{cmd, Shell};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("usage: cargo xtask <deps|images|campaign|test|bench|sensitivity> [args...]");
        return ExitCode::from(2);
    };
    let result = (|| -> Result<i32> {
        let sh = Shell::new()?;
        sh.change_dir(workspace_root());
        match task.as_str() {
            "deps" => deps::ensure(&sh).map(|()| 0),
            "images" => images::build(&sh, &images::ImageRequest::parse(rest)?).map(|_| 0),
            "campaign" => campaign(&sh, rest),
            "test" => test(&sh, rest),
            "bench" => bench(&sh, rest),
            "sensitivity" => {
                let images = setup(&sh)?;
                sensitivity::run(&sh, &images, rest)
            }
            other => anyhow::bail!("unknown task {other:?}: use deps, images, campaign, test, bench or sensitivity"),
        }
    })();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("xtask {task}: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("scripts/ is in the workspace")
        .to_path_buf()
}

fn setup(sh: &Shell) -> Result<std::path::PathBuf> {
    deps::ensure(sh)?;
    images::build(sh, &images::ImageRequest::default())
}

/// Runs a command, returning its exit code instead of failing on non-zero.
fn status(command: xshell::Cmd<'_>) -> Result<i32> {
    let out = std::process::Command::from(command).status()?;
    Ok(out.code().unwrap_or(2))
}

fn campaign(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let images = images.display().to_string();
    let command = cmd!(
        sh,
        "cargo run --quiet --release -p crashlab-controller --bin crashlab -- run --images-dir {images} {extra...}"
    );
    status(command)
}

fn test(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let _env = sh.push_env("CRASHLAB_IMAGES_DIR", &images);
    // The VM tests are #[ignore]d so that a bare `cargo test` says they did
    // not run; here they run. One VM at a time: the machine has two cores
    // and TCG is CPU-bound.
    let command = cmd!(
        sh,
        "cargo test --workspace {extra...} -- --test-threads=1 --include-ignored"
    );
    status(command)
}

/// The three pipelines on the same workload and seed, side by side.
const BENCH_WORKLOAD: &[&str] = &["--seed=7", "--records=1000", "--fs=ext4", "--mode=ms-sync"];

fn bench(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?.display().to_string();
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let tag = std::process::id();
    let runs: [(&str, &[&str]); 3] = [
        ("reboot-per-crash", &["--crash-model=kernel-crash", "--trials=3"]),
        (
            "power-loss, kernel checker",
            &[
                "--crash-model=power-loss",
                "--trials=1",
                "--state-budget=1000",
                "--checker=kernel",
            ],
        ),
        (
            "power-loss, host checker (ext4)",
            &[
                "--crash-model=power-loss",
                "--trials=1",
                "--state-budget=1000",
                "--checker=host",
            ],
        ),
    ];
    let mut results = Vec::new();
    for (name, args) in runs {
        let id = format!("bench-{tag}-{}", results.len());
        eprintln!("xtask bench: {name} ...");
        let command = cmd!(
            sh,
            "target/release/crashlab run --images-dir {images} --quiet --campaign-id {id} --results-dir results {BENCH_WORKLOAD...} {args...} {extra...}"
        );
        let code = status(command)?;
        if code > 1 {
            anyhow::bail!("{name}: crashlab exited {code}; see results/{id}");
        }
        let summary: serde_json::Value = serde_json::from_str(&sh.read_file(format!("results/{id}/summary.json"))?)?;
        let trials: Vec<serde_json::Value> = sh
            .read_file(format!("results/{id}/trials.jsonl"))?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        results.push((name, id, summary, trials));
    }
    let per_min = |i: usize| results[i].2["states_per_minute"].as_f64().unwrap_or(0.0);
    let field = |v: &serde_json::Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0);
    println!("crashlab benchmark (workload: {})", BENCH_WORKLOAD.join(" "));
    println!();
    println!(
        "{:<34} {:>8} {:>10} {:>14} {:>16} {:>16}",
        "pipeline", "states", "seconds", "states/minute", "RSS controller", "RSS largest QEMU"
    );
    for (name, _, summary, _) in &results {
        println!(
            "{:<34} {:>8} {:>10.1} {:>14.1} {:>12} MiB {:>12} MiB",
            name,
            summary["states_checked"],
            field(summary, &["elapsed_s"]),
            field(summary, &["states_per_minute"]),
            field(summary, &["peak_rss_kib"]) as u64 / 1024,
            field(summary, &["peak_rss_largest_child_kib"]) as u64 / 1024
        );
    }
    println!();
    println!(
        "seconds per trial, reboot-per-crash: {:.2}",
        field(&results[0].2, &["seconds_per_trial"])
    );
    println!(
        "ratio, kernel-verified power-loss states vs reboot-per-crash: {:.0}x",
        per_min(1) / per_min(0).max(1e-9)
    );
    println!(
        "ratio, host-verified power-loss states vs reboot-per-crash:   {:.0}x",
        per_min(2) / per_min(0).max(1e-9)
    );
    println!();
    for i in [1, 2] {
        let t = &results[i].3[0];
        let timing = &t["timing_ms"];
        println!(
            "where the time goes, {} ({} states, {} check workers), ms:",
            results[i].0, t["states_checked"], t["check_workers"]
        );
        println!("  wall time, once per trial:");
        for key in ["capture", "parse", "plan", "checker_boot", "check_wall"] {
            println!("    {key:<14} {:>8}", timing[key]);
        }
        println!("  worker time, summed over the workers running in parallel (can exceed check_wall):");
        for key in ["build", "kernel_check", "host_check", "verify"] {
            println!("    {key:<14} {:>8}", timing[key]);
        }
        println!(
            "  log: {} entries ({} writes, {} flushes, {} acks), {} KiB",
            t["log"]["entries"],
            t["log"]["writes"],
            t["log"]["flushes"],
            t["log"]["acks"],
            field(t, &["log", "log_bytes"]) as u64 / 1024
        );
    }
    let rate = |trials: &[serde_json::Value]| {
        let acks: f64 = trials.iter().map(|t| field(t, &["workload_rate", "acks"])).sum();
        let ms: f64 = trials
            .iter()
            .map(|t| field(t, &["workload_rate", "ready_to_last_ack_ms"]))
            .sum();
        acks * 1000.0 / ms.max(1.0)
    };
    let (plain, logged) = (rate(&results[0].3), rate(&results[1].3[..]));
    println!();
    println!(
        "workload msyncs (acks) per second: {plain:.0} without blklogwrites, {logged:.0} with; slowdown {:.2}x",
        plain / logged.max(1e-9)
    );
    println!(
        "results: {}",
        results
            .iter()
            .map(|r| format!("results/{}", r.1))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(0)
}
