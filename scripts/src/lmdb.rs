//! `cargo xtask lmdb [--items N] [--states N] [--kernel-trials N] [--seed S]`:
//! the LMDB campaign. crashlab-lmdb (`clients/lmdb`, LMDB with
//! `MDB_WRITEMAP`) under both crash models on ext4, xfs and btrfs, then
//! its negative control (`MDB_NOSYNC` under power loss), which must lose
//! acked transactions. Prints the table (also `results/lmdb-<pid>/
//! table.txt`); exit 1 on a violation in a correct configuration or a
//! control not caught.
//!
//! `cargo xtask kvstores [same flags]`: the same table for RocksDB (with
//! `allow_mmap_writes` and `allow_mmap_reads`) and LevelDB, each a
//! dynamically linked client (`clients/c/kvstore.c`, built here with gcc
//! against Debian's shared libraries) committing write batches with
//! `sync = true`; the control is `sync = false`.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::soak::{run_campaign, write_table};

const FILESYSTEMS: &[&str] = &["ext4", "xfs", "btrfs"];

/// `--items N --states N --kernel-trials N --seed S`, bounded.
fn parse_args(args: &[String]) -> Result<(u64, u64, u64, u64)> {
    let (mut items, mut states, mut kernel_trials, mut seed) = (200u64, 200u64, 5u64, 1u64);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} takes a number"))
        };
        match arg.as_str() {
            "--items" => items = value("--items")?,
            "--states" => states = value("--states")?,
            "--kernel-trials" => kernel_trials = value("--kernel-trials")?,
            "--seed" => seed = value("--seed")?,
            other => bail!("unknown flag {other:?}: use --items N, --states N, --kernel-trials N, --seed S"),
        }
    }
    if !(1..=100_000).contains(&items) || !(1..=1_000_000).contains(&states) || !(1..=10_000).contains(&kernel_trials) {
        bail!("--items 1..=100000, --states 1..=1000000, --kernel-trials 1..=10000");
    }
    Ok((items, states, kernel_trials, seed))
}

pub fn run(sh: &Shell, images: &std::path::Path, args: &[String]) -> Result<i32> {
    let lmdb = images.join("crashlab-lmdb");
    anyhow::ensure!(
        lmdb.is_file(),
        "{} is missing: run `cargo xtask images`",
        lmdb.display()
    );
    run_tables(sh, images, args, "lmdb", &[("crashlab-lmdb", lmdb, "MDB_NOSYNC")])
}

/// `cargo xtask kvstores`: RocksDB and LevelDB, built from
/// clients/c/kvstore.c against the packaged shared libraries.
pub fn run_kvstores(sh: &Shell, images: &std::path::Path, args: &[String]) -> Result<i32> {
    let out = crate::target_dir(sh).join("kvstores");
    std::fs::create_dir_all(&out)?;
    let mut programs = Vec::new();
    for (name, define, lib) in [
        ("rocksdb", "-DKV_ROCKSDB", "-lrocksdb"),
        ("leveldb", "-DKV_LEVELDB", "-lleveldb"),
    ] {
        let bin = out.join(format!("kv-{name}"));
        cmd!(
            sh,
            "gcc -O2 -Wall -Werror -I clients/c {define} -o {bin} clients/c/kvstore.c {lib}"
        )
        .run()?;
        programs.push((name, bin, "sync = false"));
    }
    run_tables(sh, images, args, "kvstores", &programs)
}

/// Each program (name, binary, what its `--nosync` control does) under
/// both crash models on each filesystem, then its control; one table.
fn run_tables(
    sh: &Shell,
    images: &std::path::Path,
    args: &[String],
    task: &str,
    programs: &[(&str, std::path::PathBuf, &str)],
) -> Result<i32> {
    let (items, states, kernel_trials, seed) = parse_args(args)?;
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let out_dir = format!("results/{task}-{}", std::process::id());
    let images = images.display().to_string();
    let shared = SharedFlags {
        seed: format!("--seed={seed}"),
        items: format!("--records={items}"),
        states: format!("--state-budget={states}"),
        kernel_trials: format!("--trials={kernel_trials}"),
    };
    let start = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut ok = true;
    for (name, bin, control) in programs {
        for &fs in FILESYSTEMS {
            for model in ["power-loss", "kernel-crash"] {
                let (row, clean) = run_cell(sh, &images, &out_dir, &shared, (name, bin), fs, model)?;
                ok &= clean;
                rows.push(row);
            }
        }
        let (row, caught) = run_control(sh, &images, &out_dir, &shared, (name, bin), control)?;
        ok &= caught;
        rows.push(row);
    }
    write_table(
        &out_dir,
        &format!(
            "crashlab {task} ({}, {}, {} per power-loss trial, {} kernel-crash trials; {:.0} min wall)",
            shared.seed,
            shared.items,
            shared.states,
            kernel_trials,
            start.elapsed().as_secs_f64() / 60.0
        ),
        &rows,
    )?;
    Ok(if ok { 0 } else { 1 })
}

/// One program on one filesystem under one crash model: its row, and
/// whether it was clean.
fn run_cell(
    sh: &Shell,
    images: &str,
    out_dir: &str,
    shared: &SharedFlags,
    (name, bin): (&str, &std::path::Path),
    fs: &str,
    model: &str,
) -> Result<(String, bool)> {
    let id = format!("{name}-{fs}-{model}");
    let fs_arg = format!("--fs={fs}");
    let model_arg = format!("--crash-model={model}");
    let mut flags = vec![
        shared.seed.as_str(),
        fs_arg.as_str(),
        model_arg.as_str(),
        shared.items.as_str(),
    ];
    match model {
        "power-loss" => flags.extend(["--trials=1", shared.states.as_str()]),
        _ => flags.extend([shared.kernel_trials.as_str(), "--crash-points=acks"]),
    }
    let program = program_flags(bin, None);
    flags.extend(program.iter().map(String::as_str));
    let s = run_campaign(sh, "programs", images, out_dir, &id, &flags)?;
    let violations = s["violations"].as_u64().unwrap_or(u64::MAX);
    let row = format!(
        "{name:<14} {fs:<6} {model:<13} {:>6} states {:>8} acked {:>6} violations  {}",
        s["states_checked"],
        s["acked"],
        violations,
        if violations == 0 { "ok" } else { "VIOLATIONS" }
    );
    Ok((row, violations == 0))
}

/// The task's numbers as the `crashlab run` flags they become, formatted
/// once: each campaign takes some of them.
struct SharedFlags {
    /// `--seed=S`
    seed: String,
    /// `--records=N`: the items each run commits.
    items: String,
    /// `--state-budget=N`: the states of a power-loss trial.
    states: String,
    /// `--trials=N`: the kernel-crash trials.
    kernel_trials: String,
}

/// The flags that make `bin` the workload (with `extra` as one more
/// argument of its `workload` command) and its checker (`check`).
fn program_flags(bin: &std::path::Path, extra: Option<&str>) -> Vec<String> {
    let mut args = vec![
        format!("--workload={}", bin.display()),
        "--workload-arg=workload".into(),
    ];
    args.extend(extra.map(|e| format!("--workload-arg={e}")));
    args.push(format!("--checker-cmd={}", bin.display()));
    args.push("--checker-arg=check".into());
    args
}

/// The negative control, `--nosync` on ext4 under power loss to the end of
/// the run (its acks leave no flush after them: crashed at an early ack,
/// the log would hold too few acks to be sure to catch it): its row, and
/// whether it was caught (some state failed), as it must be.
fn run_control(
    sh: &Shell,
    images: &str,
    out_dir: &str,
    shared: &SharedFlags,
    (name, bin): (&str, &std::path::Path),
    control: &str,
) -> Result<(String, bool)> {
    let program = program_flags(bin, Some("--nosync"));
    let mut flags = vec![
        shared.seed.as_str(),
        "--crash-model=power-loss",
        "--crash-points=end",
        "--trials=1",
        shared.items.as_str(),
        shared.states.as_str(),
    ];
    flags.extend(program.iter().map(String::as_str));
    let s = run_campaign(
        sh,
        "programs",
        images,
        out_dir,
        &format!("{name}-control-nosync"),
        &flags,
    )?;
    let failed = s["states_failed"].as_u64().unwrap_or(0);
    let row = format!(
        "{name:<14} control {control} (ext4, power-loss) {:>6} states {:>6} failing  {}",
        s["states_checked"],
        failed,
        if failed > 0 { "caught" } else { "NOT CAUGHT" }
    );
    Ok((row, failed > 0))
}
