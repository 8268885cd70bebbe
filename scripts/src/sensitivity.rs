//! `cargo xtask sensitivity`: how sensitive the checks are. Runs a
//! catalogue of planted bugs (and a control without one) under both crash
//! models over several seeds, and prints per entry: on how many seeds it
//! was caught, the share of crash states that failed, the wall time to the
//! first failing state, and (power loss) the share that would fail if
//! states were judged at their earliest crash point.
//!
//! Flags: `--seeds N` (default 20), `--first-seed S` (default 1),
//! `--only SUBSTRING` (entries whose name contains it), `--recheck-paths`
//! (each failing power-loss capture is checked again by every path at
//! once, `crashlab recheck --checker both --read-files both`: the kernel
//! checker's files read at their extents and copied, the host checker's
//! by crashlab-ext4 and by e2fsprogs, each pair compared; the failing
//! states must be the same as the run's), `--explore exhaustive` (each
//! power-loss run checks every distinct state of its trial, with the host
//! checker, instead of 100 sampled ones: detection is then not a matter of
//! the draw; the time to the first failing state is in the table),
//! `--crash-model NAME` (that model's rows alone). Results also go
//! to `results/sensitivity-<pid>/table.{txt,json}`, each run's campaign
//! beside them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

#[derive(Clone, Copy, PartialEq)]
enum Model {
    KernelCrash,
    PowerLoss,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::KernelCrash => "kernel-crash",
            Model::PowerLoss => "power-loss",
        }
    }

    /// One trial per seed; the crash point is a random ack count.
    fn args(self) -> &'static [&'static str] {
        match self {
            Model::KernelCrash => &["--crash-model=kernel-crash", "--records=300"],
            Model::PowerLoss => &["--crash-model=power-loss", "--records=200", "--state-budget=100"],
        }
    }
}

struct Entry {
    name: &'static str,
    /// What kind of bug: workload, device, filesystem, or none (control).
    kind: &'static str,
    args: &'static [&'static str],
    models: &'static [Model],
    /// Why a model is left out, shown in the table.
    not_under_kernel_crash: Option<&'static str>,
}

const BOTH: &[Model] = &[Model::KernelCrash, Model::PowerLoss];
const POWER_LOSS: &[Model] = &[Model::PowerLoss];
const NO_KERNEL_CRASH: &str = "a guest kernel crash keeps every write the disk received";

const CATALOGUE: &[Entry] = &[
    Entry {
        name: "control (no bug)",
        kind: "none",
        args: &[],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "ack-before-sync",
        kind: "workload",
        args: &["--planted-bug=ack-before-sync"],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "skip-sync:4",
        kind: "workload",
        args: &["--planted-bug=skip-sync:4"],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "sync-wrong-range",
        kind: "workload",
        args: &["--planted-bug=sync-wrong-range"],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "async-instead-of-sync:4",
        kind: "workload",
        args: &["--planted-bug=async-instead-of-sync:4"],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "data-before-log (wal)",
        kind: "workload",
        args: &["--pattern=wal", "--planted-bug=data-before-log"],
        models: BOTH,
        not_under_kernel_crash: None,
    },
    Entry {
        name: "drop-flush:4",
        kind: "device",
        args: &["--planted-device-bug=drop-flush:4"],
        models: POWER_LOSS,
        not_under_kernel_crash: Some(NO_KERNEL_CRASH),
    },
    Entry {
        name: "reorder-across-flush:4",
        kind: "device",
        args: &["--planted-device-bug=reorder-across-flush:4"],
        models: POWER_LOSS,
        not_under_kernel_crash: Some(NO_KERNEL_CRASH),
    },
    Entry {
        name: "ext4 barrier=0",
        kind: "filesystem",
        args: &["--mount-opts=barrier=0"],
        models: POWER_LOSS,
        not_under_kernel_crash: Some(NO_KERNEL_CRASH),
    },
];

/// One campaign's figures.
struct RunFigures {
    states: u64,
    states_failed: u64,
    states_failed_earliest: Option<u64>,
    first_failure_s: Option<f64>,
    elapsed_s: f64,
    recheck: Option<RecheckFigures>,
}

/// A failing power-loss capture checked again by every path.
struct RecheckFigures {
    /// The recheck failed the same number of states as the run.
    same_failures: bool,
    /// States on which the kernel and host checkers' pass/fail differed.
    disagreements: u64,
}

pub fn run(sh: &Shell, images: &Path, args: &[String]) -> Result<i32> {
    let SensitivityArgs {
        seeds,
        first_seed,
        only,
        model: only_model,
        run,
    } = SensitivityArgs::parse(args)?;
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let out_dir = format!("results/sensitivity-{}", std::process::id());
    let images = images.display().to_string();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for entry in CATALOGUE {
        if only.as_deref().is_some_and(|o| !entry.name.contains(o)) {
            continue;
        }
        for &model in BOTH.iter().filter(|m| only_model.is_none_or(|o| o == **m)) {
            if !entry.models.contains(&model) {
                let why = entry.not_under_kernel_crash.unwrap_or("not applicable");
                rows.push(format!("{:<26} {:<13} n/a: {why}", entry.name, model.name()));
                continue;
            }
            let mut figures = Vec::new();
            for seed in first_seed..first_seed + seeds {
                figures.push(run_one(sh, &images, &out_dir, entry, model, seed, run)?);
            }
            let (row, json) = summarize(entry, model, &figures);
            eprintln!("{row}");
            rows.push(row);
            json_rows.push(json);
        }
    }
    print_and_keep_table(&out_dir, (seeds, first_seed, run.exhaustive), &rows, json_rows)?;
    Ok(0)
}

/// The task's flags: `--seeds N`, `--first-seed S`, `--only SUBSTRING`,
/// `--recheck-paths`.
struct SensitivityArgs {
    seeds: u64,
    first_seed: u64,
    only: Option<String>,
    /// `--crash-model NAME`: that model's rows alone.
    model: Option<Model>,
    run: RunOptions,
}

/// What every run of the catalogue shares besides its entry and seed.
#[derive(Clone, Copy)]
struct RunOptions {
    /// Recheck a failing power-loss capture by every path.
    recheck_paths: bool,
    /// Power loss: every distinct state (host checker), not a sample.
    exhaustive: bool,
}

impl SensitivityArgs {
    fn parse(args: &[String]) -> Result<SensitivityArgs> {
        let mut parsed = SensitivityArgs {
            seeds: 20,
            first_seed: 1,
            only: None,
            model: None,
            run: RunOptions {
                recheck_paths: false,
                exhaustive: false,
            },
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| it.next().with_context(|| format!("{flag} needs a value"));
            match arg.as_str() {
                "--seeds" => parsed.seeds = value("--seeds")?.parse().context("--seeds takes a number")?,
                "--first-seed" => {
                    parsed.first_seed = value("--first-seed")?.parse().context("--first-seed takes a number")?
                }
                "--only" => parsed.only = Some(value("--only")?.clone()),
                "--recheck-paths" => parsed.run.recheck_paths = true,
                "--crash-model" => {
                    parsed.model = match value("--crash-model")?.as_str() {
                        "kernel-crash" => Some(Model::KernelCrash),
                        "power-loss" => Some(Model::PowerLoss),
                        other => bail!("--crash-model {other:?}: use kernel-crash or power-loss"),
                    }
                }
                "--explore" => match value("--explore")?.as_str() {
                    "exhaustive" => parsed.run.exhaustive = true,
                    "sample" => parsed.run.exhaustive = false,
                    other => bail!("--explore {other:?}: use sample or exhaustive"),
                },
                other => {
                    bail!(
                        "unknown flag {other:?}: use --seeds N, --first-seed S, --only SUBSTRING, --recheck-paths, \
                         --explore sample|exhaustive, --crash-model kernel-crash|power-loss"
                    )
                }
            }
        }
        if parsed.seeds == 0 || parsed.seeds > 1000 {
            bail!("--seeds must be between 1 and 1000");
        }
        Ok(parsed)
    }
}

/// Runs one campaign (an entry under a model on one seed, one trial) into
/// `out_dir` and reads its figures; with `recheck_paths`, a failing
/// power-loss capture is rechecked by every path.
fn run_one(
    sh: &Shell,
    images: &str,
    out_dir: &str,
    entry: &Entry,
    model: Model,
    seed: u64,
    run: RunOptions,
) -> Result<RunFigures> {
    let id = format!("{}-{}-seed{seed}", slug(entry.name), model.name());
    eprintln!(
        "xtask sensitivity: {} under {}, seed {seed} ...",
        entry.name,
        model.name()
    );
    let seed_arg = format!("--seed={seed}");
    let (model_args, entry_args) = (model.args(), entry.args);
    let explore_args: &[&str] = match (run.exhaustive, model) {
        (true, Model::PowerLoss) => &["--explore=exhaustive", "--checker=host"],
        _ => &[],
    };
    let command = cmd!(
        sh,
        "target/release/crashlab run --images-dir {images} --quiet --results-dir {out_dir} --campaign-id {id} --trials=1 --crash-points=acks {seed_arg} {model_args...} {entry_args...} {explore_args...}"
    );
    let code = crate::children::status(command)?;
    if code > 1 {
        bail!(
            "{} under {} (seed {seed}): crashlab exited {code}; see {out_dir}/{id}",
            entry.name,
            model.name()
        );
    }
    let campaign_dir = format!("{out_dir}/{id}");
    let mut figures = read_figures(sh, &campaign_dir)?;
    // A failing trial keeps its capture.
    let kept = Path::new(&campaign_dir).join("trials/0/blocklog.bin").exists();
    if run.recheck_paths && model == Model::PowerLoss && figures.states_failed > 0 && kept {
        figures.recheck = Some(recheck_every_path(sh, &campaign_dir, figures.states_failed)?);
    }
    Ok(figures)
}

/// Prints the table (what was run, the column heads, a row per entry and
/// model) and keeps it in `out_dir` as `table.txt`, the rows as
/// `table.json`.
fn print_and_keep_table(
    out_dir: &str,
    (seeds, first_seed, exhaustive): (u64, u64, bool),
    rows: &[String],
    json_rows: Vec<serde_json::Value>,
) -> Result<()> {
    let mut table = String::new();
    table += &format!("crashlab sensitivity: {seeds} seeds from {first_seed}, one trial per seed, crash points after a random ack count\n");
    table += match exhaustive {
        false => "kernel-crash: 300 records per trial; power-loss: 200 records, 100 crash states per trial\n\n",
        true => {
            "kernel-crash: 300 records per trial; power-loss: 200 records, every distinct crash state of the \
                 trial (--explore exhaustive, host checker)\n\n"
        }
    };
    table += &format!(
        "{:<26} {:<13} {:>9} {:>22} {:>21} {:>26}\n",
        "planted bug", "crash model", "caught", "failing states", "first failure s", "failing at earliest point"
    );
    table += &format!(
        "{:<26} {:<13} {:>9} {:>22} {:>21} {:>26}\n",
        "", "", "(seeds)", "(share)", "median / max", "(share)"
    );
    for row in rows {
        table += row;
        table += "\n";
    }
    print!("{table}");
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(format!("{out_dir}/table.txt"), &table)?;
    std::fs::write(
        format!("{out_dir}/table.json"),
        serde_json::to_string_pretty(&serde_json::Value::Array(json_rows))? + "\n",
    )?;
    println!("\nresults: {out_dir}/table.txt, table.json and one campaign per run");
    Ok(())
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .replace("--", "-")
}

fn read_figures(sh: &Shell, campaign_dir: &str) -> Result<RunFigures> {
    let summary: serde_json::Value = serde_json::from_str(&sh.read_file(format!("{campaign_dir}/summary.json"))?)?;
    let trials: Vec<serde_json::Value> = sh
        .read_file(format!("{campaign_dir}/trials.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let earliest = trials
        .iter()
        .map(|t| t["states_failed_at_earliest_point"].as_u64())
        .sum::<Option<u64>>();
    Ok(RunFigures {
        states: summary["states_checked"].as_u64().unwrap_or(0),
        states_failed: summary["states_failed"].as_u64().unwrap_or(0),
        states_failed_earliest: earliest,
        first_failure_s: summary["first_failure_after_s"].as_f64(),
        elapsed_s: summary["elapsed_s"].as_f64().unwrap_or(0.0),
        recheck: None,
    })
}

/// `crashlab recheck --checker both --read-files both` on a kept capture.
/// A difference between two reads of one file stops the recheck (exit 2).
fn recheck_every_path(sh: &Shell, campaign_dir: &str, states_failed: u64) -> Result<RecheckFigures> {
    eprintln!("xtask sensitivity: rechecking {campaign_dir} by every path ...");
    let out = crate::children::output(cmd!(
        sh,
        "target/release/crashlab recheck --campaign {campaign_dir} --json --checker both --read-files both"
    ))?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "crashlab recheck on {campaign_dir} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).context("recheck --json output")?;
    let record = &again["record"];
    Ok(RecheckFigures {
        same_failures: record["states_failed"].as_u64() == Some(states_failed),
        disagreements: record["checker_disagreements"].as_u64().unwrap_or(u64::MAX),
    })
}

fn summarize(entry: &Entry, model: Model, runs: &[RunFigures]) -> (String, serde_json::Value) {
    let caught = runs.iter().filter(|r| r.states_failed > 0).count();
    let states: u64 = runs.iter().map(|r| r.states).sum();
    let failed: u64 = runs.iter().map(|r| r.states_failed).sum();
    let share = |n: u64| format!("{n}/{states} ({:.0}%)", 100.0 * n as f64 / states.max(1) as f64);
    let mut firsts: Vec<f64> = runs.iter().filter_map(|r| r.first_failure_s).collect();
    firsts.sort_by(f64::total_cmp);
    let first = match firsts.len() {
        0 => "-".to_string(),
        n => format!("{:.1} / {:.1}", firsts[n / 2], firsts[n - 1]),
    };
    let earliest = runs.iter().map(|r| r.states_failed_earliest).sum::<Option<u64>>();
    let caught_text = match entry.kind {
        // For the control, a failing seed is a false positive.
        "none" => format!("{caught}/{} FP", runs.len()),
        _ => format!("{caught}/{}", runs.len()),
    };
    let rechecks: Vec<&RecheckFigures> = runs.iter().filter_map(|r| r.recheck.as_ref()).collect();
    let same = rechecks.iter().filter(|r| r.same_failures).count();
    let disagreements: u64 = rechecks.iter().map(|r| r.disagreements).sum();
    let recheck_text = match rechecks.len() {
        0 => String::new(),
        n => format!("  every path: {same}/{n} same failures, {disagreements} disagreements"),
    };
    let row = format!(
        "{:<26} {:<13} {:>9} {:>22} {:>21} {:>26}{recheck_text}",
        entry.name,
        model.name(),
        caught_text,
        share(failed),
        first,
        earliest.map_or("-".to_string(), share),
    );
    let json = serde_json::json!({
        "planted_bug": entry.name,
        "kind": entry.kind,
        "crash_model": model.name(),
        "seeds": runs.len(),
        "seeds_caught": caught,
        "states": states,
        "states_failed": failed,
        "states_failed_at_earliest_point": earliest,
        "first_failure_s_median": firsts.get(firsts.len() / 2),
        "first_failure_s_max": firsts.last(),
        "campaign_s_total": runs.iter().map(|r| r.elapsed_s).sum::<f64>(),
        "rechecked_every_path": rechecks.len(),
        "rechecked_same_failures": same,
        "rechecked_checker_disagreements": disagreements,
    });
    (row, json)
}
