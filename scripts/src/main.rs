//! `cargo xtask <task>`: the project's own tasks, in Rust (xshell).
//!
//! - `deps`      install the missing Debian packages (as root) or print the line
//! - `images`    build the static workload and the guest initramfs (cached)
//! - `kernel`    a guest kernel from source (+ patches, config fragments), cached, into an images directory
//! - `kernel-check` build one (linux-source-6.12), build it again (cached), campaigns and the VM test on it
//! - `campaign`  deps + images + the default campaign: every crash state of a power-loss run,
//!   then kernel-crash trials (extra args: one `crashlab run` with them)
//! - `test`      deps + images + every test, unit and VM integration, in lanes ([--lanes N] [FILTER...])
//! - `bench`     deps + images + the benchmark figures
//! - `sensitivity` deps + images + the planted-bug catalogue's detection rates
//! - `fuzz`      every fuzz target of `fuzz/` for a while (nightly, cargo-fuzz)
//! - `soak`      deps + images + every correct configuration at length, and the controls
//! - `lmdb`      deps + images + LMDB under both crash models on ext4, xfs, btrfs, and its control
//! - `kvstores`  deps + images + RocksDB and LevelDB (dynamic, Debian's libraries) likewise
//! - `hunt`      features and mount options people deploy x records and wal, under power loss: the findings to chase
//! - `findings`  every finding of docs/findings/ rerun per kernel (--images-dir DIR...): present, fixed or changed
//! - `man`       the man pages, from crashlab's command-line definition, into target/man
//!
//! Exit codes: those of the task; 2 for setup errors.

mod bench;
mod children;
mod deps;
mod findings;
mod fuzz;
mod host;
mod hunt;
mod images;
mod kernel;
mod kernel_check;
mod lmdb;
mod sensitivity;
mod soak;
mod test_lanes;

use std::process::ExitCode;

use anyhow::Result;
use xshell::{cmd, Shell};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!(
            "usage: cargo xtask <deps|images|kernel|kernel-check|campaign|test|bench|sensitivity|fuzz|soak|lmdb|kvstores|findings|hunt|man> [args...]"
        );
        return ExitCode::from(2);
    };
    let result = (|| -> Result<i32> {
        // The process's own directory too: some tasks use std::fs with paths
        // relative to the workspace, and `cargo xtask` may run from anywhere in it.
        std::env::set_current_dir(workspace_root())?;
        let sh = Shell::new()?;
        match task.as_str() {
            "deps" => deps::ensure(&sh).map(|()| 0),
            "images" => images::build(&sh, &images::ImageRequest::parse(rest)?).map(|_| 0),
            "kernel" => kernel::run(&sh, rest),
            "kernel-check" => kernel_check::run(&sh, rest),
            "campaign" => campaign(&sh, rest),
            "test" => test(&sh, rest),
            "bench" => bench::run(&sh, rest),
            "fuzz" => fuzz::run(&sh, rest),
            "soak" => {
                let images = setup(&sh)?;
                soak::run(&sh, &images, rest)
            }
            "hunt" => {
                let images = setup(&sh)?;
                hunt::run(&sh, &images, rest)
            }
            "findings" => {
                let images = setup(&sh)?;
                findings::run(&sh, &images, rest)
            }
            "lmdb" => {
                let images = setup(&sh)?;
                lmdb::run(&sh, &images, rest)
            }
            "kvstores" => {
                let images = setup(&sh)?;
                lmdb::run_kvstores(&sh, &images, rest)
            }
            "man" => man(&sh),
            "sensitivity" => {
                let images = setup(&sh)?;
                sensitivity::run(&sh, &images, rest)
            }
            other => {
                anyhow::bail!(
                    "unknown task {other:?}: use deps, images, kernel, kernel-check, campaign, test, bench, sensitivity, fuzz, soak, lmdb, kvstores, findings, hunt or man"
                )
            }
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

/// Cargo's target directory: $CARGO_TARGET_DIR (relative to the
/// workspace), or target/.
fn target_dir(sh: &Shell) -> std::path::PathBuf {
    sh.current_dir()
        .join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or("target".into()))
}

fn setup(sh: &Shell) -> Result<std::path::PathBuf> {
    deps::ensure(sh)?;
    images::build(sh, &images::ImageRequest::default())
}

/// crashlab.1 and a page per subcommand, generated from the clap definition.
fn man(sh: &Shell) -> Result<i32> {
    let out = target_dir(sh).join("man");
    let out_arg = out.display().to_string();
    let command = cmd!(
        sh,
        "cargo run --quiet -p crashlab-controller --bin crashlab -- man-pages --out {out_arg}"
    );
    let code = children::status(command)?;
    if code == 0 {
        eprintln!("xtask man: read one with `man -l {}/crashlab-run.1`", out.display());
    }
    Ok(code)
}

/// The default campaign, two parts on ext4 (`data=ordered`), `ms-sync`,
/// seed 1: one power-loss run of 1,000 records whose every crash state is
/// checked (`--explore exhaustive`, the tiered checkers), then three
/// kernel-crash trials. With arguments, one `crashlab run` with them.
const DEFAULT_CAMPAIGN: [&[&str]; 2] = [
    &[
        "--crash-model=power-loss",
        "--trials=1",
        "--records=1000",
        "--explore=exhaustive",
        "--checker=tiered",
        "--seed=1",
    ],
    &["--crash-model=kernel-crash", "--trials=3", "--records=2000", "--seed=1"],
];

fn campaign(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let images = images.display().to_string();
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let crashlab = target_dir(sh).join("release/crashlab");
    if !extra.is_empty() {
        return children::status(cmd!(sh, "{crashlab} run --images-dir {images} {extra...}"));
    }
    let mut worst = 0;
    for (part, &args) in DEFAULT_CAMPAIGN.iter().enumerate() {
        eprintln!(
            "xtask campaign: part {} of 2: crashlab run {}",
            part + 1,
            args.join(" ")
        );
        let code = children::status(cmd!(sh, "{crashlab} run --images-dir {images} {args...}"))?;
        worst = worst.max(code);
        if code >= 2 {
            break;
        }
    }
    Ok(worst)
}

/// The VM tests are #[ignore]d so that a bare `cargo test` says they did
/// not run; here they run (`--include-ignored`), in lanes (`test_lanes`).
fn test(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    test_lanes::run(sh, &images, extra)
}
