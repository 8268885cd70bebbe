//! `cargo xtask <task>`: the project's own tasks, in Rust (xshell).
//!
//! - `deps`      install the missing Debian packages (as root) or print the line
//! - `images`    build the static workload and the guest initramfs (cached)
//! - `campaign`  deps + images + the default campaign (extra args go to `crashlab run`)
//! - `test`      deps + images + every test, unit and VM integration
//! - `bench`     deps + images + the benchmark figures
//!
//! Exit codes: those of the task; 2 for setup errors.

mod cpio;
mod deps;
mod images;

use std::process::ExitCode;

use anyhow::Result;
use xshell::{cmd, Shell};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("usage: cargo xtask <deps|images|campaign|test|bench> [args...]");
        return ExitCode::from(2);
    };
    let result = (|| -> Result<i32> {
        let sh = Shell::new()?;
        sh.change_dir(workspace_root());
        match task.as_str() {
            "deps" => deps::ensure(&sh).map(|()| 0),
            "images" => images::build(&sh).map(|_| 0),
            "campaign" => campaign(&sh, rest),
            "test" => test(&sh, rest),
            "bench" => bench(&sh, rest),
            other => anyhow::bail!("unknown task {other:?}: use deps, images, campaign, test or bench"),
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
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("scripts/ is in the workspace").to_path_buf()
}

fn setup(sh: &Shell) -> Result<std::path::PathBuf> {
    deps::ensure(sh)?;
    images::build(sh)
}

/// Runs a command, returning its exit code instead of failing on non-zero.
fn status(sh: &Shell, command: xshell::Cmd<'_>) -> Result<i32> {
    let _ = sh;
    let out = std::process::Command::from(command).status()?;
    Ok(out.code().unwrap_or(2))
}

fn campaign(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let images = images.display().to_string();
    let command = cmd!(sh, "cargo run --quiet --release -p crashlab-controller --bin crashlab -- run --images-dir {images} {extra...}");
    status(sh, command)
}

fn test(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let _env = sh.push_env("CRASHLAB_IMAGES_DIR", &images);
    let _require = sh.push_env("CRASHLAB_REQUIRE_VM", "1");
    // One VM at a time: the machine has two cores and TCG is CPU-bound.
    let command = cmd!(sh, "cargo test --workspace --exclude xtask {extra...} -- --test-threads=1");
    status(sh, command)
}

fn bench(sh: &Shell, extra: &[String]) -> Result<i32> {
    let images = setup(sh)?;
    let images = images.display().to_string();
    let id = format!("bench-{}", std::process::id());
    let command = cmd!(
        sh,
        "cargo run --quiet --release -p crashlab-controller --bin crashlab -- run --images-dir {images} --quiet --campaign-id {id} --results-dir results {extra...}"
    );
    let code = status(sh, command)?;
    if code > 1 {
        return Ok(code);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&sh.read_file(format!("results/{id}/summary.json"))?)?;
    let trials = sh.read_file(format!("results/{id}/trials.jsonl"))?;
    let mut phases = [0f64; 3];
    let mut n = 0f64;
    for line in trials.lines() {
        let t: serde_json::Value = serde_json::from_str(line)?;
        for (i, key) in ["workload_ms", "check_ms", "verify_ms"].iter().enumerate() {
            phases[i] += t[key].as_f64().unwrap_or(0.0);
        }
        n += 1.0;
    }
    println!("benchmark: reboot-per-crash (kernel-crash model), default campaign");
    println!("  trials:                          {}", summary["trials_run"]);
    println!("  seconds per trial:               {:.2}", summary["seconds_per_trial"].as_f64().unwrap_or(0.0));
    println!("  crash states verified per minute: {:.2}", summary["states_per_minute"].as_f64().unwrap_or(0.0));
    if n > 0.0 {
        println!(
            "  mean per trial: workload boot {:.0} ms, check boot {:.0} ms, verify {:.1} ms",
            phases[0] / n,
            phases[1] / n,
            phases[2] / n
        );
    }
    println!("  results: results/{id}");
    Ok(0)
}
