//! `crashlab`: the command line over the controller library (its
//! definition and commands: `controller::cli`).

use std::process::ExitCode;

use clap::Parser;
use controller::cli::{dispatch, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // What a SIGKILLed earlier run left behind (its guests died with it).
    for dir in machine::lifetime::clean_stale() {
        eprintln!("crashlab: removed {}, left by a run that was killed", dir.display());
    }
    // Ctrl-C and SIGTERM only set a flag, which every loop checks.
    if let Err(e) = machine::signals::install() {
        eprintln!("error: cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    dispatch(cli.command)
}
