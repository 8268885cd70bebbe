//! `cargo xtask soak [--states N] [--kernel-trials N] [--seed S]
//! [--images-dir DIR]`: a long run, not part of CI, on the distro kernel's
//! images or those in DIR (a kernel built by `cargo xtask kernel`). Every correct configuration (ext4 in its three
//! data modes, xfs, btrfs, f2fs) under power loss (at least N crash states,
//! default 1,000) and under the kernel-crash model (default 20 trials);
//! then the negative controls, each of which must be caught. Prints the
//! table (also `results/soak-<pid>/table.txt`) and fails (exit 1) on any
//! violation in a correct configuration or any control not caught. Each
//! campaign's results must verify against their seals (`crashlab verify`).

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// (filesystem, mount options).
const CORRECT: &[(&str, &str)] = &[
    ("ext4", "data=ordered"),
    ("ext4", "data=journal"),
    ("ext4", "data=writeback"),
    ("xfs", "defaults"),
    ("btrfs", "defaults"),
    ("f2fs", "defaults"),
];

/// (name, crash model, flags): each must fail some state.
const CONTROLS: &[(&str, &str, &[&str])] = &[
    ("ack-before-sync", "kernel-crash", &["--planted-bug=ack-before-sync"]),
    ("ack-before-sync", "power-loss", &["--planted-bug=ack-before-sync"]),
    ("drop-flush:4", "power-loss", &["--planted-device-bug=drop-flush:4"]),
    ("ext4 barrier=0", "power-loss", &["--mount-opts=barrier=0"]),
];

/// Crash states one power-loss trial plans, at most.
const STATES_PER_TRIAL: u64 = 500;
const STATES_MAX: u64 = 10_000_000;

pub fn run(sh: &Shell, images: &std::path::Path, args: &[String]) -> Result<i32> {
    let SoakArgs {
        images,
        states,
        kernel_trials,
        seed,
    } = SoakArgs::parse(images, args)?;
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let out_dir = format!("results/soak-{}", std::process::id());
    let kernel = kernel_release(&images)?;
    let images = images.display().to_string();
    let start = std::time::Instant::now();
    let seed_arg = format!("--seed={seed}");
    let kc_trials = kernel_trials.to_string();
    let mut rows = Vec::new();
    let mut ok = true;
    let campaign = |id: &str, seed_arg: &str, flags: &[&str]| -> Result<serde_json::Value> {
        let flags: Vec<&str> = [seed_arg].into_iter().chain(flags.iter().copied()).collect();
        run_campaign(sh, "soak", &images, &out_dir, id, &flags)
    };
    for &(fs, opts) in CORRECT {
        for model in ["power-loss", "kernel-crash"] {
            let id = format!("{fs}-{}-{model}", opts.replace('=', "-"));
            let (fs_arg, opts_arg) = (format!("--fs={fs}"), format!("--mount-opts={opts}"));
            let configuration = [fs_arg.as_str(), opts_arg.as_str()];
            let totals = match model {
                "power-loss" => soak_power_loss(&id, &configuration, states, seed, &campaign)?,
                _ => {
                    let mut flags = configuration.to_vec();
                    flags.extend(["--crash-model=kernel-crash", "--trials", &kc_trials]);
                    Totals::of(&campaign(&id, &seed_arg, &flags)?)
                }
            };
            ok &= totals.violations == 0;
            rows.push(format!(
                "{fs:<6} {opts:<14} {model:<13} {:>8} states {:>6} violations {:>7.0} s  {}",
                totals.states,
                totals.violations,
                totals.elapsed_s,
                if totals.violations == 0 { "ok" } else { "VIOLATIONS" }
            ));
        }
    }
    for &(name, model, bug) in CONTROLS {
        let (row, caught) = run_control(name, model, bug, &seed_arg, &campaign)?;
        ok &= caught;
        rows.push(row);
    }
    write_table(
        &out_dir,
        &format!(
            "crashlab soak (seed {seed}, kernel {kernel}): {states} power-loss states and {kernel_trials} \
             kernel-crash trials per configuration; {:.0} min wall; every campaign's results verified against \
             their seals",
            start.elapsed().as_secs_f64() / 60.0
        ),
        &rows,
    )?;
    Ok(if ok { 0 } else { 1 })
}

/// The guest kernel's release, from the images' manifest: the table names
/// the kernel the soak ran on.
fn kernel_release(images: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(images.join("manifest.json"))
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| m["kernel_release"].as_str().map(String::from))
        .with_context(|| format!("no guest images at {}", images.display()))
}

/// Runs one negative control (a planted bug under `model`): its row, and
/// whether it was caught (some state failed), as it must be.
fn run_control(
    name: &str,
    model: &str,
    bug: &[&str],
    seed_arg: &str,
    campaign: &RunCampaign,
) -> Result<(String, bool)> {
    let id = format!("control-{}-{model}", name.replace([' ', ':', '='], "-"));
    let model_arg = format!("--crash-model={model}");
    let mut flags = vec![model_arg.as_str(), "--records=300"];
    flags.extend(bug);
    match model {
        "power-loss" => flags.extend(["--trials=2", "--state-budget=200", "--crash-points=acks"]),
        _ => flags.extend(["--trials=5", "--crash-points=acks"]),
    }
    let s = campaign(&id, seed_arg, &flags)?;
    let failed = s["states_failed"].as_u64().unwrap_or(0);
    let row = format!(
        "control {name:<22} {model:<13} {:>8} states {:>6} failing {:>7.0} s  {}",
        s["states_checked"],
        failed,
        s["elapsed_s"].as_f64().unwrap_or(0.0),
        if failed > 0 { "caught" } else { "NOT CAUGHT" }
    );
    Ok((row, failed > 0))
}

/// Runs one campaign: (id, `--seed=S`, flags) to its summary.
type RunCampaign<'a> = dyn Fn(&str, &str, &[&str]) -> Result<serde_json::Value> + 'a;

/// What a configuration's campaigns added up to.
#[derive(Default)]
struct Totals {
    states: u64,
    violations: u64,
    elapsed_s: f64,
}

impl Totals {
    fn of(summary: &serde_json::Value) -> Totals {
        Totals {
            states: summary["states_checked"].as_u64().unwrap_or(0),
            violations: summary["violations"].as_u64().unwrap_or(u64::MAX),
            elapsed_s: summary["elapsed_s"].as_f64().unwrap_or(0.0),
        }
    }
}

/// Campaigns with the power-loss model on one configuration until `states`
/// distinct crash states were checked: a trial has only so many distinct
/// states (a run's flush epochs bound them), so a first campaign can fall
/// short of its budget; each next one has another seed and as many trials
/// as the states still missing need at the rate seen so far. At most
/// `TOP_UPS_MAX` more campaigns (their ids end in `-more<k>`).
fn soak_power_loss(id: &str, configuration: &[&str], states: u64, seed: u64, campaign: &RunCampaign) -> Result<Totals> {
    const TOP_UPS_MAX: u64 = 4;
    let mut totals = Totals::default();
    let mut per_trial = STATES_PER_TRIAL;
    for round in 0..=TOP_UPS_MAX {
        let missing = states.saturating_sub(totals.states);
        if missing == 0 || totals.violations > 0 {
            break;
        }
        let trials = missing.div_ceil(per_trial.max(1));
        let (trials_arg, budget_arg) = (
            format!("--trials={trials}"),
            format!("--state-budget={}", trials * per_trial),
        );
        let seed_arg = format!("--seed={}", seed + 1000 * round);
        let mut flags = configuration.to_vec();
        flags.extend(["--crash-model=power-loss", "--records=1000", &trials_arg, &budget_arg]);
        let round_id = match round {
            0 => id.to_string(),
            k => format!("{id}-more{k}"),
        };
        let seen = Totals::of(&campaign(&round_id, &seed_arg, &flags)?);
        per_trial = (seen.states / trials).clamp(1, STATES_PER_TRIAL);
        totals.states += seen.states;
        totals.violations = totals.violations.saturating_add(seen.violations);
        totals.elapsed_s += seen.elapsed_s;
    }
    Ok(totals)
}

/// The soak's flags: `--states N` (power-loss states per configuration),
/// `--kernel-trials N`, `--seed S`, `--images-dir DIR`.
struct SoakArgs {
    images: std::path::PathBuf,
    states: u64,
    kernel_trials: u64,
    seed: u64,
}

impl SoakArgs {
    fn parse(images: &std::path::Path, args: &[String]) -> Result<SoakArgs> {
        let mut parsed = SoakArgs {
            images: images.to_path_buf(),
            states: 1000,
            kernel_trials: 20,
            seed: 1,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| it.next().with_context(|| format!("{flag} needs a value"));
            match arg.as_str() {
                "--states" => parsed.states = value("--states")?.parse().context("--states takes a number")?,
                "--kernel-trials" => {
                    parsed.kernel_trials = value("--kernel-trials")?
                        .parse()
                        .context("--kernel-trials takes a number")?
                }
                "--seed" => parsed.seed = value("--seed")?.parse().context("--seed takes a number")?,
                "--images-dir" => parsed.images = value("--images-dir")?.into(),
                other => {
                    bail!("unknown flag {other:?}: use --states N, --kernel-trials N, --seed S, --images-dir DIR")
                }
            }
        }
        if parsed.states == 0
            || parsed.states > STATES_MAX
            || parsed.kernel_trials == 0
            || parsed.kernel_trials > 100_000
        {
            bail!("--states must be 1..={STATES_MAX}, --kernel-trials 1..=100000");
        }
        Ok(parsed)
    }
}

/// Prints a task's table (title, a blank line, the rows) and keeps it as
/// `out_dir/table.txt`.
pub fn write_table(out_dir: &str, title: &str, rows: &[String]) -> Result<()> {
    let table = format!("{title}\n\n{}\n", rows.join("\n"));
    print!("{table}");
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(format!("{out_dir}/table.txt"), &table)?;
    println!("results: {out_dir}");
    Ok(())
}

/// Runs one `crashlab run` (release build) into `out_dir/id` and returns
/// its summary; exit 1 (violations) is a result, anything above an error.
pub fn run_campaign(
    sh: &Shell,
    task: &str,
    images: &str,
    out_dir: &str,
    id: &str,
    flags: &[&str],
) -> Result<serde_json::Value> {
    eprintln!("xtask {task}: {id}");
    let crashlab = crate::target_dir(sh).join("release/crashlab");
    let command = cmd!(
        sh,
        "{crashlab} run --images-dir {images} --quiet --results-dir {out_dir} --campaign-id {id} {flags...}"
    );
    let code = crate::children::status(command)?;
    if code > 1 {
        bail!("{id}: crashlab exited {code}; see {out_dir}/{id}");
    }
    let campaign_dir = format!("{out_dir}/{id}");
    let verified = crate::children::status(cmd!(sh, "{crashlab} verify {campaign_dir}").quiet())?;
    if verified != 0 {
        bail!("{id}: its results do not verify against their seals (`crashlab verify {campaign_dir}`)");
    }
    let summary = std::fs::read_to_string(format!("{out_dir}/{id}/summary.json"))?;
    Ok(serde_json::from_str(&summary)?)
}
