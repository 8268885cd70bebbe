//! `cargo xtask bench`: the figures of ARCHITECTURE.md's "Speed" section,
//! all from one run, pipelines compared side by side on the same logs.
//!
//! 1. Reboot per crash (kernel-crash model, 3 trials): the baseline.
//! 2. One power-loss campaign (1,000 records, 1,000 states, kernel checker,
//!    2 workers), its capture kept: kernel-verified states per minute.
//! 3. On that log, alternately, `rounds` times: the xfstests-style replay
//!    loop (`crashlab replay-loop`) and crashlab's host checker (`crashlab
//!    recheck --checker host --check-workers 1`), same number of states;
//!    the ratio of the medians.
//! 4. Flat cost: logs of 1,000, 4,000 and 16,000 records over a data file
//!    each fills early, each rechecked (host checker, one worker): ms per
//!    state and peak RSS.
//! 5. The capture's cost to the workload (`crashlab workload-rate`).
//! 6. Campaign throughput as shards on one machine: the same kernel-crash
//!    campaign with `--jobs 1` and `--jobs 2`, states per minute of wall
//!    time. `cargo xtask bench --only jobs` runs this part alone.
//! 7. Every crash state of a run (`--explore exhaustive`): the default
//!    trial with torn variants under each checker, and `batch:8` and
//!    `ms-async-fsync` runs; `--only explore` runs this part alone.
//!
//! Absolute times on a shared machine are noise; read the ratios. Run it on
//! an otherwise idle machine.

mod explore;

use anyhow::{Context, Result};
use serde_json::Value;
use xshell::{cmd, Shell};

use crate::setup;

const WORKLOAD: &[&str] = &["--seed=7", "--fs=ext4", "--mode=ms-sync"];
/// States per side in the host comparison, and rounds of it.
const HOST_STATES: u64 = 200;
const HOST_ROUNDS: usize = 3;
/// Record counts of the flat-cost logs, and states rechecked on each.
const FLAT_RECORDS: [u64; 3] = [1000, 4000, 16000];
const FLAT_STATES: u64 = 1000;
const FLAT_BASE_STATES: u64 = 50;
/// The flat-cost runs' data file: 256 slots, which each run fills within
/// its first 256 records, so the three differ in length and not in the
/// bytes a state holds (a state's cost grows with the records on its disk,
/// which is the check's work, not with the run's length).
const FLAT_FILE_BYTES: u64 = 1 << 20;
const RATE_PAIRS: u32 = 5;
/// Trials of the `--jobs` comparison.
const JOBS_TRIALS: u32 = 8;

/// The targets (#10), printed beside the figures.
const TARGET_HOST_RATIO: f64 = 2.0;
const TARGET_KERNEL_PER_MIN: f64 = 1000.0;
const TARGET_FLAT_RATIO: f64 = 1.2;
const TARGET_LOG_SLOWDOWN: f64 = 1.3;

/// `--only STAGE` (jobs or explore), and the other arguments (for
/// `crashlab run`).
fn only_stage(extra: &[String]) -> Result<(Option<String>, Vec<String>)> {
    let only = extra.windows(2).find(|w| w[0] == "--only").map(|w| w[1].clone());
    anyhow::ensure!(
        matches!(only.as_deref(), None | Some("jobs" | "explore")),
        "--only {}: the stages that run alone are jobs and explore",
        only.unwrap_or_default()
    );
    let rest = match &only {
        Some(stage) => extra
            .iter()
            .filter(|a| *a != "--only" && *a != stage)
            .cloned()
            .collect(),
        None => extra.to_vec(),
    };
    Ok((only, rest))
}

pub fn run(sh: &Shell, extra: &[String]) -> Result<i32> {
    let (only, extra) = only_stage(extra)?;
    let images = setup(sh)?.display().to_string();
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let bench = Bench {
        sh,
        images,
        extra,
        tag: format!("bench-{}", std::process::id()),
    };
    match only.as_deref() {
        Some("jobs") => {
            let (one, two) = (bench.jobs_row(1)?, bench.jobs_row(2)?);
            print_jobs(one, two);
            return Ok(0);
        }
        Some("explore") => {
            explore::print_explore(&bench.explore_rows()?);
            return Ok(0);
        }
        _ => {}
    }
    // 1. Reboot per crash.
    let reboot = bench.campaign(
        &format!("{}-reboot", bench.tag),
        &["--crash-model=kernel-crash", "--trials=3", "--records=1000"],
    )?;
    // 2. Kernel checker, whole campaign.
    let kernel_id = format!("{}-kernel", bench.tag);
    let kernel = bench.campaign(
        &kernel_id,
        &[
            "--crash-model=power-loss",
            "--trials=1",
            "--records=1000",
            "--state-budget=1000",
            "--checker=kernel",
            "--check-workers=2",
            "--keep-images",
        ],
    )?;
    let figures = Figures {
        kernel_trial: bench.trial_record(&kernel_id)?,
        host_vs_loop: bench.host_vs_loop(&kernel_id)?,
        host_all: bench.recheck(
            &kernel_id,
            &["--checker=host", "--check-workers=2", "--state-budget=1000"],
        )?,
        flat: bench.flat_cost()?,
        rate: bench.workload_rate()?,
        reboot,
        kernel,
    };
    figures.print();
    let (one, two) = (bench.jobs_row(1)?, bench.jobs_row(2)?);
    print_jobs(one, two);
    explore::print_explore(&bench.explore_rows()?);
    println!("results: results/{}-*", bench.tag);
    Ok(0)
}

/// What every stage runs with: crashlab's release build on the images,
/// results under `results/<tag>-*`, the user's extra run flags.
struct Bench<'a> {
    sh: &'a Shell,
    images: String,
    extra: Vec<String>,
    tag: String,
}

const CRASHLAB: &str = "target/release/crashlab";

impl Bench<'_> {
    /// One campaign's summary.
    fn campaign(&self, id: &str, args: &[&str]) -> Result<Value> {
        let (sh, images, extra) = (self.sh, &self.images, &self.extra);
        eprintln!("xtask bench: crashlab run {}", args.join(" "));
        let code = crate::children::status(cmd!(
            sh,
            "{CRASHLAB} run --images-dir {images} --quiet --campaign-id {id} --results-dir results {WORKLOAD...} {args...} {extra...}"
        ))?;
        anyhow::ensure!(code <= 1, "crashlab exited {code}; see results/{id}");
        json(&sh.read_file(format!("results/{id}/summary.json"))?)
    }

    /// A one-trial campaign's trial line.
    fn trial_record(&self, id: &str) -> Result<Value> {
        let text = self.sh.read_file(format!("results/{id}/trials.jsonl"))?;
        json(text.lines().next().context("no trial line")?)
    }

    fn recheck(&self, id: &str, args: &[&str]) -> Result<Value> {
        let sh = self.sh;
        let out = crate::children::read(cmd!(sh, "{CRASHLAB} recheck --campaign results/{id} --json {args...}"))
            .with_context(|| format!("crashlab recheck on results/{id}"))?;
        json(&out)
    }

    /// Stage 3, the host checker against the replay loop, alternating on
    /// the same log: ms per state, (ours, theirs) per round.
    fn host_vs_loop(&self, kernel_id: &str) -> Result<(Vec<f64>, Vec<f64>)> {
        let sh = self.sh;
        let host_states = HOST_STATES.to_string();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..HOST_ROUNDS {
            eprintln!(
                "xtask bench: host checker vs replay loop, round {}/{HOST_ROUNDS}",
                round + 1
            );
            let loop_out = json(&crate::children::read(cmd!(
                sh,
                "{CRASHLAB} replay-loop --campaign results/{kernel_id} --states {host_states}"
            ))?)?;
            theirs.push(field(&loop_out, &["ms_per_state"]));
            let host = self.recheck(
                kernel_id,
                &[
                    "--checker=host",
                    "--check-workers=1",
                    &format!("--state-budget={HOST_STATES}"),
                ],
            )?;
            ours.push(ms_per_state(&host["record"]));
        }
        Ok((ours, theirs))
    }

    /// Stage 4, flat cost: per log size, (records, ms per state, peak RSS
    /// KiB, log entries).
    fn flat_cost(&self) -> Result<Vec<(u64, f64, f64, f64)>> {
        let mut flat = Vec::new();
        for records in FLAT_RECORDS {
            let id = format!("{}-log{records}", self.tag);
            self.campaign(
                &id,
                &[
                    "--crash-model=power-loss",
                    "--trials=1",
                    &format!("--records={records}"),
                    &format!("--file-size={FLAT_FILE_BYTES}"),
                    "--crash-points=end",
                    "--state-budget=1",
                    "--checker=host",
                    "--keep-images",
                ],
            )?;
            eprintln!("xtask bench: flat cost, {records} records");
            // Two budgets, the difference per state: what one more state
            // costs, without the recheck's fixed part (reading the log,
            // building its prefix index).
            let recheck = |budget: u64| {
                self.recheck(
                    &id,
                    &[
                        "--checker=host",
                        "--check-workers=1",
                        &format!("--state-budget={budget}"),
                    ],
                )
            };
            let (small, out) = (recheck(FLAT_BASE_STATES)?, recheck(FLAT_BASE_STATES + FLAT_STATES)?);
            let (wall, states) = (["timing_ms", "check_wall"], ["states_checked"]);
            let record = &out["record"];
            let per_state = (field(record, &wall) - field(&small["record"], &wall))
                / (field(record, &states) - field(&small["record"], &states)).max(1.0);
            flat.push((
                records,
                per_state,
                field(&out, &["peak_rss_kib"]),
                field(record, &["log", "entries"]),
            ));
        }
        Ok(flat)
    }

    /// Stage 5, the capture's cost to the workload.
    fn workload_rate(&self) -> Result<Value> {
        let (sh, images) = (self.sh, &self.images);
        eprintln!("xtask bench: workload rate, {RATE_PAIRS} rounds of plain / ack area / logged");
        let rate_id = format!("{}-rate", self.tag);
        let pairs = RATE_PAIRS.to_string();
        json(&crate::children::read(cmd!(
            sh,
            "{CRASHLAB} workload-rate --images-dir {images} --results-dir results --campaign-id {rate_id} --pairs {pairs} --records=1000 --crash-model=power-loss {WORKLOAD...}"
        ))?)
    }

    /// Stage 6, shards side by side: the same campaign with `--jobs N`;
    /// (wall seconds, states per minute).
    fn jobs_row(&self, jobs: u32) -> Result<(f64, f64)> {
        let (sh, images, extra) = (self.sh, &self.images, &self.extra);
        let id = format!("{}-jobs{jobs}", self.tag);
        let (trials, jobs_arg) = (format!("--trials={JOBS_TRIALS}"), format!("--jobs={jobs}"));
        eprintln!("xtask bench: {JOBS_TRIALS} kernel-crash trials with {jobs_arg}");
        let start = std::time::Instant::now();
        let code = crate::children::status(cmd!(
            sh,
            "{CRASHLAB} run --images-dir {images} --quiet --campaign-id {id} --results-dir results {WORKLOAD...} --crash-model=kernel-crash --records=1000 {trials} {jobs_arg} {extra...}"
        ))?;
        anyhow::ensure!(code <= 1, "crashlab exited {code}; see results/{id}.shards");
        let wall_s = start.elapsed().as_secs_f64();
        let summary = json(&sh.read_file(format!("results/{id}/summary.json"))?)?;
        Ok((wall_s, field(&summary, &["states_checked"]) * 60.0 / wall_s.max(1e-9)))
    }
}

fn print_jobs(one: (f64, f64), two: (f64, f64)) {
    println!("campaign throughput as shards on this machine ({JOBS_TRIALS} kernel-crash trials, wall time):");
    println!("  --jobs 1: {:.0} s, {:.1} states/minute", one.0, one.1);
    println!("  --jobs 2: {:.0} s, {:.1} states/minute", two.0, two.1);
    println!(
        "  speed-up: {:.2}x on {} cores",
        two.1 / one.1.max(1e-9),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

/// Stages 1 to 5's outcomes, printed as the figures.
struct Figures {
    reboot: Value,
    kernel: Value,
    kernel_trial: Value,
    host_vs_loop: (Vec<f64>, Vec<f64>),
    host_all: Value,
    flat: Vec<(u64, f64, f64, f64)>,
    rate: Value,
}

impl Figures {
    fn print(&self) {
        self.print_checkers();
        self.print_host_vs_loop();
        self.print_flat_cost();
        self.print_rate();
        println!(
            "peak RSS of the controller: {} MiB (kernel campaign), largest QEMU {} MiB",
            field(&self.kernel, &["peak_rss_kib"]) as u64 / 1024,
            field(&self.kernel, &["peak_rss_largest_child_kib"]) as u64 / 1024
        );
        println!();
    }

    fn print_checkers(&self) {
        let (reboot, kernel) = (&self.reboot, &self.kernel);
        let per_min = |s: &Value| field(s, &["states_per_minute"]);
        let stage_per_min = |record: &Value| {
            field(record, &["states_checked"]) * 60_000.0 / field(record, &["timing_ms", "check_wall"]).max(1.0)
        };
        let kernel_stage_per_min = stage_per_min(&self.kernel_trial);
        println!(
            "crashlab benchmark ({}; ext4 data=ordered, 64 MiB disk)",
            WORKLOAD.join(" ")
        );
        println!();
        println!(
            "reboot per crash: {:.2} s per trial, {:.1} states/minute",
            field(reboot, &["seconds_per_trial"]),
            per_min(reboot)
        );
        println!(
            "kernel checker, whole campaign (capture + boot + 1,000 states, 2 workers): {:.0} states/minute ({:.0}x reboot per crash)",
            per_min(kernel),
            per_min(kernel) / per_min(reboot).max(1e-9)
        );
        println!(
            "kernel checker, check stage: {kernel_stage_per_min:.0} states/minute  [target >= {TARGET_KERNEL_PER_MIN:.0}: {}]",
            verdict(kernel_stage_per_min >= TARGET_KERNEL_PER_MIN)
        );
        println!(
            "host checker, check stage (1,000 states, 2 workers): {:.0} states/minute",
            stage_per_min(&self.host_all["record"])
        );
        println!();
    }

    fn print_host_vs_loop(&self) {
        let (ours, theirs) = &self.host_vs_loop;
        let (ours_ms, theirs_ms) = (median(ours), median(theirs));
        println!("host checker vs the xfstests replay-log loop, {HOST_STATES} states each, one worker, {HOST_ROUNDS} rounds alternating:");
        println!(
            "  replay loop (replay to flush + cp --sparse + e2fsck -fy + debugfs dump): {}",
            list(theirs)
        );
        println!(
            "  crashlab recheck --checker host (plan + build + host check + verify):   {}",
            list(ours)
        );
        println!(
            "  median {theirs_ms:.1} vs {ours_ms:.1} ms per state: crashlab {:.2}x faster  [target >= {TARGET_HOST_RATIO}x: {}]",
            theirs_ms / ours_ms.max(1e-9),
            verdict(theirs_ms / ours_ms.max(1e-9) >= TARGET_HOST_RATIO)
        );
        println!();
    }

    fn print_flat_cost(&self) {
        let costs: Vec<f64> = self.flat.iter().map(|f| f.1).collect();
        let flat_ratio =
            costs.iter().cloned().fold(0.0, f64::max) / costs.iter().cloned().fold(f64::MAX, f64::min).max(1e-9);
        println!(
            "flat cost (host checker, one worker, {FLAT_FILE_BYTES}-byte data file, ms per state: check stage of \
             {} states minus {FLAT_BASE_STATES}, per state):",
            FLAT_BASE_STATES + FLAT_STATES
        );
        for (records, per_state, rss_kib, entries) in &self.flat {
            println!(
                "  {records:>6} records ({:>6} log entries): {per_state:>6.2} ms per state, peak RSS {:.0} MiB",
                *entries as u64,
                rss_kib / 1024.0
            );
        }
        println!(
            "  largest / smallest: {flat_ratio:.2}x  [target <= {TARGET_FLAT_RATIO}x: {}]",
            verdict(flat_ratio <= TARGET_FLAT_RATIO)
        );
        println!();
    }

    fn print_rate(&self) {
        let rate = &self.rate;
        println!("the capture's cost to the workload (acks per second, {RATE_PAIRS} rounds side by side):");
        println!("  plain disk:            {}", list(&floats(&rate["plain"])));
        println!("  with the ack area:     {}", list(&floats(&rate["ack_area"])));
        println!("  ack area + block log:  {}", list(&floats(&rate["logged"])));
        let log_slowdown = field(rate, &["log_slowdown"]);
        println!(
            "  median slowdowns: ack area {:.2}x, block log {log_slowdown:.2}x  [target <= {TARGET_LOG_SLOWDOWN}x: {}], both {:.2}x",
            field(rate, &["ack_area_slowdown"]),
            verdict(log_slowdown <= TARGET_LOG_SLOWDOWN),
            field(rate, &["capture_slowdown"])
        );
        println!();
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text.trim()).with_context(|| format!("not JSON: {:.200}", text.trim()))
}

fn field(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

/// What a user waits for per state in a recheck: parse + plan + checks.
fn ms_per_state(record: &Value) -> f64 {
    let t = |k: &str| field(record, &["timing_ms", k]);
    (t("parse") + t("plan") + t("check_wall")) / field(record, &["states_checked"]).max(1.0)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn list(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
