//! `cargo xtask hunt [--states N] [--images-dir DIR] [--seed S] [--workload
//! NAME] [--config TEXT]`: a sweep of the filesystem features and mount
//! options people deploy, each under power loss with the `records` pattern
//! (`ms-sync` and `batch:8`) and `wal` (`--workload`, `--config`: only the
//! columns, rows whose description holds the text), N states a cell
//! (default 400), checked by the kernel's own recovery. Long (about an
//! hour under TCG on 2 cores), not CI. Prints the table (also
//! `results/hunt-<pid>/table.txt`; docs/findings/hunt.md keeps the last
//! one). A failing cell is a finding to chase, unless the table names
//! the finding it already is. Exit 1 when a cell fails that is not a known
//! finding.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::soak::{run_campaign, write_table};

/// A configuration: filesystem, mount options, mkfs options, and the
/// finding its failures are known as.
struct Config {
    fs: &'static str,
    mount: &'static str,
    mkfs: &'static str,
    known: Option<&'static str>,
}

const fn config(fs: &'static str, mount: &'static str, mkfs: &'static str) -> Config {
    Config {
        fs,
        mount,
        mkfs,
        known: None,
    }
}

const CONFIGS: &[Config] = &[
    Config {
        known: Some("ext4-fast-commit"),
        ..config("ext4", "data=ordered", "-T default -O fast_commit")
    },
    config("ext4", "data=journal", "-T default"),
    config("ext4", "data=ordered,journal_checksum", "-T default"),
    config("ext4", "data=ordered", "-T default -O inline_data"),
    config("ext4", "data=ordered", "-T default -O bigalloc"),
    config("ext4", "data=ordered,nodelalloc", "-T default"),
    config("ext4", "data=ordered,dioread_nolock", "-T default"),
    config("xfs", "defaults", "-m reflink=1"),
    // The smallest log mkfs.xfs 6.1 makes ("Log size must be at least
    // 64MB", on a filesystem of at least 300 MB).
    config("xfs", "defaults", "-l size=64m"),
    config("xfs", "logbsize=256k", ""),
    config("btrfs", "compress=zstd", ""),
    config("btrfs", "nodatacow", ""),
    config("btrfs", "flushoncommit", ""),
    config("btrfs", "space_cache=v2", ""),
    config(
        "f2fs",
        "compress_algorithm=lz4,compress_extension=dat",
        "-O extra_attr,compression",
    ),
    config("f2fs", "checkpoint_merge", ""),
    config("f2fs", "fsync_mode=strict", ""),
    config("f2fs", "atgc", ""),
];

/// (column name, run flags): the workloads of each cell. batch:8 syncs
/// once per 8 records: 1,600 records give it as many flush epochs as 400
/// give ms-sync (with 400 it planned only 83 to 233 distinct states).
const WORKLOADS: &[(&str, &[&str])] = &[
    (
        "records ms-sync",
        &["--pattern=records", "--mode=ms-sync", "--records=400"],
    ),
    (
        "records batch:8",
        &["--pattern=records", "--mode=batch:8", "--records=1600"],
    ),
    ("wal", &["--pattern=wal", "--records=400"]),
];

pub fn run(sh: &Shell, images: &std::path::Path, args: &[String]) -> Result<i32> {
    let HuntArgs {
        states,
        seed,
        images,
        only_workload,
        only_config,
    } = HuntArgs::parse(images, args)?;
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let out_dir = format!("results/hunt-{}", std::process::id());
    let images = images.display().to_string();
    let start = std::time::Instant::now();
    let (mut rows, mut unexplained) = (Vec::new(), 0);
    for (c, config) in CONFIGS.iter().enumerate() {
        let described = format!("{} {} {}", config.fs, config.mount, config.mkfs);
        if only_config.as_deref().is_some_and(|o| !described.contains(o)) {
            continue;
        }
        for (w, (workload, flags)) in WORKLOADS.iter().enumerate() {
            if only_workload.as_deref().is_some_and(|o| !workload.contains(o)) {
                continue;
            }
            let id = format!("{c:02}-{}-{w}", config.fs);
            let flags = cell_flags(config, flags, states, seed);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let cell = run_cell(sh, &images, &out_dir, &id, config, workload, &flags);
            unexplained += usize::from(cell.unexplained);
            rows.push(cell.row);
        }
    }
    write_table(
        &out_dir,
        &format!(
            "crashlab hunt (seed {seed}, {states} power-loss states a cell, kernel checker, images {images}): {:.0} min wall",
            start.elapsed().as_secs_f64() / 60.0
        ),
        &rows,
    )?;
    Ok(i32::from(unexplained > 0))
}

/// The hunt's flags: `--states N`, `--seed S`, `--images-dir DIR`,
/// `--workload NAME`, `--config TEXT`.
struct HuntArgs {
    states: u64,
    seed: u64,
    images: std::path::PathBuf,
    /// Only the columns whose name holds this.
    only_workload: Option<String>,
    /// Only the rows whose description holds this.
    only_config: Option<String>,
}

impl HuntArgs {
    fn parse(images: &std::path::Path, args: &[String]) -> Result<HuntArgs> {
        let mut parsed = HuntArgs {
            states: 400,
            seed: 1,
            images: images.to_path_buf(),
            only_workload: None,
            only_config: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| it.next().cloned().with_context(|| format!("{flag} needs a value"));
            match arg.as_str() {
                "--states" => parsed.states = value("--states")?.parse().context("--states takes a number")?,
                "--seed" => parsed.seed = value("--seed")?.parse().context("--seed takes a number")?,
                "--images-dir" => parsed.images = value("--images-dir")?.into(),
                "--workload" => parsed.only_workload = Some(value("--workload")?),
                "--config" => parsed.only_config = Some(value("--config")?),
                other => bail!(
                    "unknown flag {other:?}: use --states N, --seed S, --images-dir DIR, --workload NAME, --config TEXT"
                ),
            }
        }
        anyhow::ensure!((1..=100_000).contains(&parsed.states), "--states must be 1..=100000");
        Ok(parsed)
    }
}

/// One cell of the table: its row, and whether it is a failure no known
/// finding explains (a failing cell, or one that could not run).
struct Cell {
    row: String,
    unexplained: bool,
}

/// Runs one cell's campaign and makes its row: clean, a known finding, a
/// failure to chase, or the error that kept it from running.
fn run_cell(
    sh: &Shell,
    images: &str,
    out_dir: &str,
    id: &str,
    config: &Config,
    workload: &str,
    flags: &[&str],
) -> Cell {
    // A cell that cannot run (an option this kernel lacks) is a row saying
    // so, not the end of a 90-minute sweep.
    let summary = match run_campaign(sh, "hunt", images, out_dir, id, flags) {
        Ok(summary) => summary,
        Err(e) => {
            return Cell {
                row: format!(
                    "{:<6} {:<46} {:<28} {:<16} ERROR: {e:#}",
                    config.fs, config.mount, config.mkfs, workload
                ),
                unexplained: true,
            }
        }
    };
    let failed = summary["states_failed"].as_u64().unwrap_or(0);
    let campaign_dir = format!("{out_dir}/{id}");
    let trial = trial_line(&campaign_dir);
    let known = config
        .known
        .or_else(|| known_by_its_log(config.fs, trial.as_ref(), &campaign_dir));
    let unexplained = failed > 0 && known.is_none();
    let verdict = match (failed, known) {
        (0, _) => "clean".to_string(),
        (_, Some(finding)) => format!("known: docs/findings/{finding}"),
        (_, None) => format!("FAILS: chase it ({out_dir}/{id})"),
    };
    let row = format!(
        "{:<6} {:<46} {:<28} {:<16} {:>5} states {:>4} failing {:>4} unflushed acks  {verdict}",
        config.fs,
        config.mount,
        config.mkfs,
        workload,
        summary["states_checked"],
        failed,
        unflushed_acks(trial.as_ref()),
    );
    Cell { row, unexplained }
}

/// The findings a failing cell's states are, when every failing state is
/// one: on f2fs, a first record lost after its ack was logged while a
/// write after the last flush was unflushed is the first-fsync race
/// (docs/findings/f2fs-first-fsync); stale bytes are a node written before
/// its data (docs/findings/f2fs-fsync-data-order).
fn known_by_its_log(fs: &str, trial: Option<&serde_json::Value>, campaign_dir: &str) -> Option<&'static str> {
    if fs != "f2fs" {
        return None;
    }
    let first_record_early = trial?["log"]["first_ack_after_unflushed_writes"]["seq"].as_u64() == Some(0);
    let states = std::fs::read_to_string(format!("{campaign_dir}/states.jsonl")).ok()?;
    let (mut first_fsync, mut data_order) = (false, false);
    for line in states.lines() {
        let state: serde_json::Value = serde_json::from_str(line).ok()?;
        if state["passed"] != false {
            continue;
        }
        match state["first_violation"]["rule"].as_str()? {
            "acked-record-lost" if first_record_early => first_fsync = true,
            "stale-bytes" => data_order = true,
            _ => return None,
        }
    }
    match (first_fsync, data_order) {
        (true, true) => Some("f2fs-first-fsync and docs/findings/f2fs-fsync-data-order"),
        (true, false) => Some("f2fs-first-fsync"),
        (false, true) => Some("f2fs-fsync-data-order"),
        (false, false) => None,
    }
}

/// A one-trial campaign's trial line (None if unreadable).
fn trial_line(campaign_dir: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(format!("{campaign_dir}/trials.jsonl")).ok()?;
    serde_json::from_str(text.lines().next()?).ok()
}

/// The trial's acks logged after an unflushed filesystem write (the sign
/// of a durability call returning early, whatever the sampled states
/// showed; see docs/findings/f2fs-first-fsync), or "?" if unreadable.
fn unflushed_acks(trial: Option<&serde_json::Value>) -> String {
    trial
        .and_then(|line| line["log"]["acks_after_unflushed_writes"].as_u64())
        .map_or("?".to_string(), |n| n.to_string())
}

fn cell_flags(config: &Config, workload: &[&str], states: u64, seed: u64) -> Vec<String> {
    let mut flags = vec![
        format!("--fs={}", config.fs),
        format!("--mount-opts={}", config.mount),
        "--crash-model=power-loss".into(),
        "--checker=kernel".into(),
        "--crash-points=end".into(),
        "--trials=1".into(),
        format!("--state-budget={states}"),
        format!("--seed={seed}"),
    ];
    if !config.mkfs.is_empty() {
        flags.push(format!("--mkfs-opts={}", config.mkfs));
    }
    flags.extend(workload.iter().map(|f| f.to_string()));
    flags
}
