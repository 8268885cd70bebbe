//! The `crashlab` command line: its definition ([`args`]), and one
//! function per command that turns parsed flags into a library call and
//! its outcome into output and an exit code. The binary (main.rs) only
//! parses and dispatches; nothing else in the library uses this module.
//!
//! Exit codes: 0 no violation, 1 at least one violation, 2 usage or setup
//! error, 130 interrupted (finished trials are kept).

use std::process::ExitCode;

/// stdout, ignoring a closed pipe (`crashlab ... | head`): the output is
/// a courtesy, the results are on disk, and a panic would be a lie.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod args;
mod commands;
mod run;
mod sweeps;

pub use args::{Cli, Command};
use commands::*;
use run::*;
use sweeps::*;

/// Runs one parsed command to its exit code.
pub fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run(args) => run(args),
        Command::ReplayState(args) => replay(args),
        Command::Recheck(args) => recheck(args),
        Command::Compare(args) => compare(args),
        Command::ReplayLoop(args) => replay_loop(args),
        Command::WorkloadRate(args) => workload_rate(args),
        Command::Conformance(args) => conformance(args),
        Command::Matrix(args) => sweep(matrix_cells(&args), "matrix", &args.sweep),
        Command::IoErrors(args) => sweep(io_error_cells(&args), "io-errors", &args.sweep),
        Command::Doctor(args) => doctor(args),
        Command::Minimise(args) => minimise(args),
        Command::Slurm(args) => slurm(args),
        Command::Merge { out, shards } => match tools::merge::merge(&out, &shards) {
            Ok(summary) => {
                out!("{}", summary.render());
                ExitCode::from(u8::from(summary.violations > 0))
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Report { dir, junit } => report(&dir, junit.as_deref()),
        Command::Verify { dir } => match tools::verify::verify(&dir) {
            Ok(verification) => {
                out!("{}", verification.render());
                ExitCode::from(u8::from(!verification.problems.is_empty()))
            }
            Err(e) => exit_for(&e),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "crashlab", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::ManPages { out } => match write_man_pages(&out) {
            Ok(n) => {
                outln!("{n} man pages in {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write the man pages into {}: {e}", out.display());
                ExitCode::from(2)
            }
        },
    }
}

/// The exit code of a command that failed: 130 when the user interrupted
/// it, else 2 with the error (setup or usage) on stderr.
pub fn exit_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<machine::vm::Interrupted>().is_some() {
        return ExitCode::from(130);
    }
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

/// crashlab.1, and crashlab-SUB.1 for each visible subcommand.
pub fn write_man_pages(out: &std::path::Path) -> std::io::Result<usize> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out)?;
    let top = Cli::command();
    let mut pages = vec![("crashlab.1".to_string(), top.clone())];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("crashlab-{}", sub.get_name());
        pages.push((
            format!("{name}.1"),
            sub.clone()
                .display_name(name)
                .bin_name(format!("crashlab {}", sub.get_name())),
        ));
    }
    for (file, command) in &pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut roff)?;
        std::fs::write(out.join(file), roff)?;
    }
    Ok(pages.len())
}
