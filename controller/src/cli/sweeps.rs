//! Sweeps: `matrix`, `io-errors` and a campaign file with a [sweep],
//! each a table of campaigns (`matrix::run_cells`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::args::*;
use campaign::matrix::Cell;
use clap::Parser;
use config::campaign_file::{self, CampaignFile, FileCell};

use super::run::run;
use config::CrashModel;

pub type Cells = Result<(String, Vec<campaign::matrix::Cell>), String>;

pub fn matrix_cells(args: &MatrixArgs) -> Cells {
    let mut cells = Vec::new();
    for model in &args.crash_models {
        let model_name = match model {
            CrashModel::KernelCrash => "kernel-crash",
            CrashModel::PowerLoss => "power-loss",
        };
        for config in &args.configs {
            let (fs, opts) = config.split_once(':').unwrap_or((config.as_str(), ""));
            for pattern in &args.patterns {
                let mut flags = vec![
                    "run".to_string(),
                    format!("--fs={fs}"),
                    format!("--pattern={pattern}"),
                    format!("--crash-model={model_name}"),
                ];
                if !opts.is_empty() {
                    flags.push(format!("--mount-opts={opts}"));
                }
                flags.extend(args.sweep.run_flags.iter().cloned());
                cells.push(campaign::matrix::Cell {
                    row: format!("{model_name}: {}", config.replace(':', " ")),
                    column: pattern.to_string(),
                    config: cell_config(&flags)?,
                });
            }
        }
    }
    Ok((
        "matrix: states checked / violations / observations per cell".into(),
        cells,
    ))
}

pub fn io_error_cells(args: &IoErrorsArgs) -> Cells {
    let mut cells = Vec::new();
    for fs in &args.fs {
        for error in ["eio", "enospc"] {
            for (column, points) in [("no crash", "end"), ("kernel crash", "acks")] {
                let mut flags = vec![
                    "run".to_string(),
                    format!("--fs={}", fs.name()),
                    format!("--inject-write-error={error}"),
                    format!("--crash-points={points}"),
                    "--crash-model=kernel-crash".into(),
                    "--trials=1".into(),
                ];
                flags.extend(args.sweep.run_flags.iter().cloned());
                cells.push(campaign::matrix::Cell {
                    row: format!("{} {}", fs.name(), error.to_uppercase()),
                    column: column.into(),
                    config: cell_config(&flags)?,
                });
            }
        }
    }
    Ok(("injected write errors".into(), cells))
}

pub fn sweep(cells: Cells, name: &str, args: &SweepArgs) -> ExitCode {
    let (results_dir, id) = (&args.results_dir, args.id.as_deref());
    let (title, cells) = match cells {
        Ok(cells) => cells,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let out_dir = results_dir.join(id.map_or_else(|| format!("{}-{name}", campaign::utc_timestamp()), String::from));
    let interrupt = &machine::signals::INTERRUPTED;
    let result = campaign::matrix::run_cells(&title, &cells, &out_dir, interrupt).and_then(|table| {
        let text = match name {
            "io-errors" => campaign::matrix::write_io_errors_table(&table, &out_dir)?,
            _ => campaign::matrix::write(&table, &out_dir, name)?,
        };
        if let Some(path) = &args.junit {
            let dirs: Vec<PathBuf> = table
                .rows
                .iter()
                .flat_map(|row| table.columns.iter().map(move |column| (row, column)))
                .filter_map(|(row, column)| table.cells.get(row)?.get(column))
                .map(|cell| cell.results_dir.clone())
                .collect();
            tools::junit::write(path, &format!("crashlab {name}"), &dirs)?;
        }
        Ok((table, text))
    });
    match result {
        Ok((table, text)) => {
            out!("{text}");
            outln!("\nresults: {}", out_dir.display());
            let failed = table.cells.values().flat_map(|r| r.values()).any(|c| c.violations > 0);
            ExitCode::from(u8::from(failed))
        }
        Err(e) if e.downcast_ref::<machine::vm::Interrupted>().is_some() => {
            eprintln!("interrupted: finished cells are kept in {}", out_dir.display());
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `crashlab run --config FILE [flags]`: one campaign, or the matrix of
/// the file's [sweep].
pub fn run_file(path: &Path) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let overrides = overrides_of_command_line();
    let (file, cells) = match read_campaign_file(path, &overrides) {
        Ok(read) => read,
        Err(msg) => return fail(msg),
    };
    // Where a configuration error comes from: the file's line for a flag it set.
    let locate = |msg: String| match file
        .settings
        .iter()
        .find(|s| msg.contains(&format!("--{}", s.key)) && !campaign_file::flags_in(&overrides).contains(&s.key))
    {
        Some(s) => format!("{msg} (set by {}:{})", path.display(), s.line),
        None => msg,
    };
    let first = match parse_run_args(&cells[0].args) {
        Ok(args) => args,
        Err(msg) => return fail(locate(msg)),
    };
    if cells.len() == 1 && cells[0].axes.is_empty() {
        return match config_from(&first) {
            Ok(_) => run(first),
            Err(msg) => fail(locate(msg)),
        };
    }
    // A sweep: each cell a campaign, as `crashlab matrix` runs them.
    let matrix_cells = match sweep_cells(path, &cells, &locate) {
        Ok(cells) => cells,
        Err(msg) => return fail(msg),
    };
    let id = first.campaign_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            campaign::utc_timestamp(),
            path.file_stem().map_or("campaign".into(), |s| s.to_string_lossy())
        )
    });
    // The sweep as resolved: rerunnable with --config.
    let out_dir = first.results_dir.join(&id);
    let resolved = resolved_sweep(path, &file, &overrides, &id);
    if let Err(e) =
        std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(out_dir.join("sweep.toml"), resolved))
    {
        return fail(format!("cannot write {}/sweep.toml: {e}", out_dir.display()));
    }
    let title = format!("{}: {} campaigns", path.display(), matrix_cells.len());
    sweep(
        Ok((title, matrix_cells)),
        "campaign-file",
        &SweepArgs {
            results_dir: first.results_dir.clone(),
            id: Some(id),
            junit: first.junit.clone(),
            run_flags: Vec::new(),
        },
    )
}

/// The campaign file, each of its settings checked as a `run` flag, and
/// its cells with the command line's overrides applied (at least one).
fn read_campaign_file(path: &Path, overrides: &[String]) -> Result<(CampaignFile, Vec<FileCell>), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the campaign file {}: {e}", path.display()))?;
    // One key's value, on its own: a flag that needs another one (the
    // checker's arguments need --workload) is checked with the whole cell.
    let validate = |args: &[String]| {
        let argv = ["crashlab", "run"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned());
        match Cli::try_parse_from(argv) {
            Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => Ok(()),
            _ => parse_run_args(args).map(|_| ()),
        }
    };
    let file = campaign_file::parse(path, &text, &run_flag_kinds(), &validate)?;
    let cells = campaign_file::expand(&file, overrides)?;
    assert!(!cells.is_empty(), "a campaign file expands to at least one cell");
    Ok((file, cells))
}

/// A sweep's cells as the matrix runs them: the axes that name the disk
/// and the model (`ROW_KEYS`) label rows, the others columns.
fn sweep_cells(path: &Path, cells: &[FileCell], locate: &dyn Fn(String) -> String) -> Result<Vec<Cell>, String> {
    const ROW_KEYS: [&str; 6] = ["crash-model", "fs", "mkfs-opts", "mount-opts", "images-dir", "seed"];
    let mut matrix_cells = Vec::new();
    for cell in cells {
        let label = |row: bool| {
            let parts: Vec<String> = cell
                .axes
                .iter()
                .filter(|(k, _)| ROW_KEYS.contains(&k.as_str()) == row)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            match parts.is_empty() {
                true => "campaign".to_string(),
                false => parts.join(" "),
            }
        };
        let config = parse_run_args(&cell.args)
            .and_then(|a| config_from(&a))
            .map_err(|msg| {
                format!(
                    "{} ({}): {}",
                    path.display(),
                    label(true) + " " + &label(false),
                    locate(msg)
                )
            })?;
        matrix_cells.push(Cell {
            row: label(true),
            column: label(false),
            config,
        });
    }
    Ok(matrix_cells)
}

/// The sweep as resolved, as a campaign file: the settings with the
/// command line's overrides applied, and the axes it did not override.
fn resolved_sweep(path: &Path, file: &CampaignFile, overrides: &[String], id: &str) -> String {
    let settings = campaign_file::expand(
        &CampaignFile {
            sweep: vec![],
            ..file.clone()
        },
        overrides,
    )
    .map(|c| c[0].args.clone())
    .unwrap_or_default();
    let mut resolved = campaign_file::render(
        &settings,
        &format!(
            "crashlab sweep {id}, resolved from {}; rerun with crashlab run --config sweep.toml",
            path.display()
        ),
    );
    resolved += "\n[sweep]\n";
    for axis in file
        .sweep
        .iter()
        .filter(|a| !campaign_file::flags_in(overrides).contains(&a.key))
    {
        let values: Vec<String> = axis
            .values
            .iter()
            .map(|v| toml::Value::String(v.clone()).to_string())
            .collect();
        resolved += &format!("{} = [{}]\n", axis.key, values.join(", "));
    }
    resolved
}
