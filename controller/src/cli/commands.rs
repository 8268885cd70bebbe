//! The commands over kept evidence and saved results, and the checks
//! that need no campaign: each takes its parsed flags, calls the library
//! and prints; the exit code is the command's.

use std::process::ExitCode;

use super::args::*;
use super::exit_for;
use campaign::kept::KeptStateAt;

pub fn report(dir: &std::path::Path, junit: Option<&std::path::Path>) -> ExitCode {
    let result = tools::report::write_report(dir).and_then(|page| {
        if let Some(path) = junit {
            let dirs = tools::report::find_campaigns(dir)?;
            tools::junit::write(path, &dir.display().to_string(), &dirs)?;
        }
        Ok(page)
    });
    match result {
        Ok(page) => {
            outln!("{}", page.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `run --minimise`: the campaign's first failing power-loss state,
/// minimised; the outcome printed and kept as minimised.json. A failure
/// here is reported, not fatal: the campaign's results stand.
pub fn minimise_first_failure(dir: &std::path::Path) {
    let first = std::fs::read_to_string(dir.join("states.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|s| s["passed"] == false);
    let Some(first) = first else {
        eprintln!(
            "--minimise: no failing power-loss state to minimise (a kernel-crash campaign, or live findings only)"
        );
        return;
    };
    let request = tools::minimise::MinimiseRequest {
        at: KeptStateAt {
            campaign_dir: dir,
            trial: first["trial"].as_u64().unwrap_or(0),
            state: first["state"].as_u64().unwrap_or(0),
            images_dir: None,
            interrupt: &machine::signals::INTERRUPTED,
        },
        checker: None,
    };
    match tools::minimise::minimise(&request) {
        Ok(outcome) => {
            out!(
                "\nminimised, the first failing state:\n{}",
                tools::minimise::render(&outcome)
            );
            let json = serde_json::to_string_pretty(&outcome).unwrap_or_default() + "\n";
            if let Err(e) = machine::durable::write_atomically(&dir.join("minimised.json"), json.as_bytes()) {
                eprintln!("--minimise: cannot write minimised.json: {e:#}");
            }
        }
        Err(e) => eprintln!("--minimise: the first failing state could not be minimised: {e:#}"),
    }
}

pub fn minimise(args: MinimiseArgs) -> ExitCode {
    let request = tools::minimise::MinimiseRequest {
        at: KeptStateAt {
            campaign_dir: &args.campaign,
            trial: args.trial,
            state: args.state,
            images_dir: args.images_dir,
            interrupt: &machine::signals::INTERRUPTED,
        },
        checker: args.checker,
    };
    match tools::minimise::minimise(&request) {
        Ok(outcome) => {
            match args.json {
                true => outln!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default()),
                false => out!("{}", tools::minimise::render(&outcome)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

pub fn doctor(args: DoctorArgs) -> ExitCode {
    let images_source = images_source(&args.images_dir);
    let request = machine::doctor::DoctorRequest {
        images_dir: &args.images_dir,
        images_source: &images_source,
        results_dir: &args.results_dir,
        boot: !args.no_boot,
        interrupt: &machine::signals::INTERRUPTED,
    };
    match machine::doctor::examine(&request) {
        Ok(findings) => {
            out!("{}", machine::doctor::render(&findings));
            let fails = findings.iter().any(|f| f.status == machine::doctor::Status::Fail);
            ExitCode::from(u8::from(fails))
        }
        Err(e) => exit_for(&e),
    }
}

pub fn conformance(args: ConformanceArgs) -> ExitCode {
    let id = args
        .id
        .unwrap_or_else(|| format!("{}-conformance", campaign::utc_timestamp()));
    let request = models::conformance::ConformanceRequest {
        filesystems: args.fs,
        images_dir: args.images_dir,
        out_dir: args.results_dir.join(id),
        accel: args.accel,
        boot_timeout_ms: args.boot_timeout_ms,
        interrupt: &machine::signals::INTERRUPTED,
    };
    match models::conformance::run_conformance(&request)
        .and_then(|table| models::conformance::write(&table, &request.out_dir))
    {
        Ok(text) => {
            out!("{text}");
            outln!("\nresults: {}", request.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

pub fn replay(args: ReplayArgs) -> ExitCode {
    let request = tools::replay::ReplayRequest {
        at: KeptStateAt {
            campaign_dir: &args.campaign,
            trial: args.trial,
            state: args.state.unwrap_or(0),
            images_dir: args.images_dir,
            interrupt: &machine::signals::INTERRUPTED,
        },
        state_file: args.state_file,
        out: args.out,
        checker: args.checker,
    };
    match tools::replay::replay_state(&request) {
        Ok(outcome) => {
            outln!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            let failed = outcome.verdicts.iter().any(|(_, v)| !v.passed);
            ExitCode::from(u8::from(failed))
        }
        Err(e) => exit_for(&e),
    }
}

pub fn workload_rate(args: WorkloadRateArgs) -> ExitCode {
    let config = match config_from(&args.run) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let id = args
        .run
        .campaign_id
        .clone()
        .unwrap_or_else(|| format!("{}-workload-rate", campaign::utc_timestamp()).replace(':', ""));
    let dir = args.run.results_dir.join(id);
    match models::rate::measure(&config, args.pairs, &dir, &machine::signals::INTERRUPTED) {
        Ok(report) => {
            outln!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

pub fn replay_loop(args: ReplayLoopArgs) -> ExitCode {
    let outcome = campaign::kept::KeptTrial::load(&args.campaign, args.trial, None).and_then(|kept| {
        let work = tempfile::Builder::new()
            .prefix("crashlab-replay-loop-")
            .tempdir_in(&kept.trial_dir)?;
        tools::replay_loop::replay_loop(&kept, args.states, work.path())
    });
    match outcome {
        Ok(outcome) => {
            outln!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn compare(args: CompareArgs) -> ExitCode {
    let request = tools::compare::CompareRequest {
        campaign_dir: &args.campaign,
        images_b: args.images_dir,
        images_a: args.baseline_images_dir,
        trials: args.trial,
        state_budget: args.state_budget,
        check_workers: args.check_workers,
        recapture: args.recapture,
        show_progress: !args.quiet,
        interrupt: &machine::signals::INTERRUPTED,
    };
    match tools::compare::compare(&request) {
        Ok((comparison, dir)) => {
            out!("{}", tools::compare::render(&comparison, &dir));
            ExitCode::from(comparison.exit_code())
        }
        Err(e) => exit_for(&e),
    }
}

pub fn recheck(args: RecheckArgs) -> ExitCode {
    let request = tools::recheck::RecheckRequest {
        campaign_dir: &args.campaign,
        trial: args.trial,
        state_budget: args.state_budget,
        checker: args.checker,
        check_workers: args.check_workers,
        read_files: args.read_files,
        images_dir: args.images_dir,
        interrupt: &machine::signals::INTERRUPTED,
    };
    let mut states_out = match args.states_out.as_deref().map(std::fs::File::create).transpose() {
        Ok(file) => file.map(std::io::BufWriter::new),
        Err(e) => {
            eprintln!(
                "error: cannot create {}: {e}",
                args.states_out.unwrap_or_default().display()
            );
            return ExitCode::from(2);
        }
    };
    let outcome = tools::recheck::recheck(&request, |line| {
        if let Some(out) = states_out.as_mut() {
            use std::io::Write;
            writeln!(out, "{}", serde_json::to_string(line)?)?;
        }
        Ok(())
    })
    .and_then(|record| {
        if let Some(mut out) = states_out.take() {
            use std::io::Write;
            out.flush()?;
        }
        Ok(record)
    });
    match outcome {
        Ok(record) => {
            let peak_rss_kib = campaign::peak_rss_kib(nix::sys::resource::UsageWho::RUSAGE_SELF);
            if args.json {
                let out = serde_json::json!({ "record": record, "peak_rss_kib": peak_rss_kib });
                outln!("{out}");
            } else {
                let t = &record.timing_ms;
                let per_state_ms = (t.parse + t.plan + t.check_wall) as f64 / record.states_checked.max(1) as f64;
                outln!(
                    "trial {}: {} states checked, {} failed, {} violations; {per_state_ms:.1} ms per state \
                     (parse {} + plan {} + check {} ms, {} workers, checker boot {} ms); peak RSS {} MiB",
                    record.run.trial,
                    record.states_checked,
                    record.states_failed,
                    record.violation_count,
                    t.parse,
                    t.plan,
                    t.check_wall,
                    record.check_workers,
                    t.checker_boot,
                    peak_rss_kib / 1024
                );
                for v in record.violations.iter().take(5) {
                    outln!("  state {}: {}", v.state, v.finding.reason);
                }
            }
            ExitCode::from(u8::from(!record.passed))
        }
        Err(e) => exit_for(&e),
    }
}

/// Where an images directory the command line holds came from: the flag or
/// the environment, or the default and why it was chosen.
fn images_source(images_dir: &std::path::Path) -> String {
    let (default, why) = machine::images::default_images_dir();
    let from_env = std::env::var_os("CRASHLAB_IMAGES_DIR").is_some_and(|v| std::path::Path::new(&v) == images_dir);
    match (from_env, images_dir == default) {
        (true, _) => "from CRASHLAB_IMAGES_DIR".into(),
        (false, true) => format!("the default: {why}"),
        (false, false) => "from --images-dir".into(),
    }
}
