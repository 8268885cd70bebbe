//! Sweeps: many campaigns, one per cell, gathered into a table. Two tables
//! use it: `crashlab matrix` (filesystem configurations × workload
//! patterns, per crash model) and `crashlab io-errors` (filesystems ×
//! injected write errors, without and with a crash). A cell is an ordinary
//! campaign in `<out>/<cell-id>/`; the table is read back from its results,
//! so it shows exactly what the campaigns wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{run_campaign, CampaignRequest, Summary};
use config::CampaignConfig;

/// One campaign of a sweep, and where its row and column are.
pub struct Cell {
    pub row: String,
    pub column: String,
    pub config: CampaignConfig,
}

/// What a finished cell showed.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    pub states_checked: u64,
    pub states_failed: u64,
    pub violations: u64,
    pub observations: u64,
    pub results_dir: PathBuf,
}

impl CellResult {
    fn from_summary(summary: &Summary) -> CellResult {
        CellResult {
            states_checked: summary.states_checked,
            states_failed: summary.states_failed,
            violations: summary.violations,
            observations: summary.observations,
            results_dir: summary.results_dir.clone(),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} / {} / {}", self.states_checked, self.violations, self.observations)
    }
}

/// Rows × columns of cell results, in the order the cells were given.
#[derive(Serialize)]
pub struct Table {
    pub title: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: BTreeMap<String, BTreeMap<String, CellResult>>,
}

impl Table {
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(String::len).max().unwrap_or(10).max(14);
        let mut out = format!("{}\n\n{:<width$}", self.title, "");
        for column in &self.columns {
            out += &format!(" {column:>24}");
        }
        out += "\n";
        for row in &self.rows {
            out += &format!("{row:<width$}");
            for column in &self.columns {
                let cell = self.cells.get(row).and_then(|r| r.get(column));
                out += &format!(" {:>24}", cell.map_or("-".to_string(), CellResult::describe));
            }
            out += "\n";
        }
        out
    }
}

/// Runs every cell in order (stopping at Ctrl-C) and gathers the table.
/// A cell whose campaign fails to run stops the sweep: its error names the
/// cell.
pub fn run_cells(title: &str, cells: &[Cell], out_dir: &Path, interrupt: &AtomicBool) -> Result<Table> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {} (disk full? read-only?)", out_dir.display()))?;
    let mut table = Table {
        title: title.to_string(),
        rows: Vec::new(),
        columns: Vec::new(),
        cells: BTreeMap::new(),
    };
    for cell in cells {
        if !table.rows.contains(&cell.row) {
            table.rows.push(cell.row.clone());
        }
        if !table.columns.contains(&cell.column) {
            table.columns.push(cell.column.clone());
        }
        let id = format!("{}--{}", slug(&cell.row), slug(&cell.column));
        eprintln!("{title}: {} × {} ...", cell.row, cell.column);
        let request = CampaignRequest {
            config: &cell.config,
            results_root: out_dir,
            campaign_id: id.clone(),
            only_trial: None,
            resume: false,
            show_progress: false,
            interrupt,
        };
        let summary = run_campaign(&request).with_context(|| format!("cell {} × {}", cell.row, cell.column))?;
        if summary.interrupted {
            anyhow::bail!(machine::vm::Interrupted);
        }
        table
            .cells
            .entry(cell.row.clone())
            .or_default()
            .insert(cell.column.clone(), CellResult::from_summary(&summary));
    }
    Ok(table)
}

pub fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// Writes `<name>.txt` and `<name>.json` into `out_dir`; returns the text.
pub fn write(table: &Table, out_dir: &Path, name: &str) -> Result<String> {
    let text = table.render();
    std::fs::write(out_dir.join(format!("{name}.txt")), &text)?;
    std::fs::write(
        out_dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(table)? + "\n",
    )?;
    Ok(text)
}

/// The io-errors table: per filesystem and error, without and with a
/// crash, what the application was told and what the verdict was. Read
/// back from each cell's trial record.
pub fn write_io_errors_table(table: &Table, out_dir: &Path) -> Result<String> {
    let mut text = format!(
        "{}: the disk fails the write carrying one record (once); the workload goes on\n\n",
        table.title
    );
    text += &format!(
        "{:<16} {:<13} {:>8} {:<26} {:<16} {:>14} {:>10}\n",
        "filesystem", "run", "injected", "reported to the app by", "read back", "acked after", "verdict"
    );
    let mut json = Vec::new();
    for row in &table.rows {
        for column in &table.columns {
            let Some(cell) = table.cells.get(row).and_then(|r| r.get(column)) else {
                continue;
            };
            let trials = std::fs::read_to_string(cell.results_dir.join("trials.jsonl"))?;
            let trial: serde_json::Value =
                serde_json::from_str(trials.lines().next().unwrap_or("{}")).unwrap_or_default();
            let facts = &trial["io_error"];
            let list = |key: &str| {
                facts[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into())
            };
            let verdict = match (trial["passed"].as_bool(), cell.violations) {
                (Some(true), _) => "passed".to_string(),
                (_, n) => format!("{n} violations"),
            };
            text += &format!(
                "{:<16} {:<13} {:>8} {:<26} {:<16} {:>14} {:>10}\n",
                row,
                column,
                facts["injected"].to_string(),
                list("reported_by"),
                list("readback").replace("record ", "#"),
                facts["acked_after_error"].to_string(),
                verdict
            );
            json.push(serde_json::json!({
                "filesystem_error": row,
                "run": column,
                "io_error": facts,
                "passed": trial["passed"],
                "violations": trial["violations"],
                "results_dir": cell.results_dir,
            }));
        }
    }
    std::fs::write(out_dir.join("io-errors.txt"), &text)?;
    std::fs::write(
        out_dir.join("io-errors.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_render_in_the_order_given_and_missing_ones_show_a_dash() {
        let result = |states, violations| CellResult {
            states_checked: states,
            states_failed: 0,
            violations,
            observations: 0,
            results_dir: PathBuf::new(),
        };
        let mut cells = BTreeMap::new();
        cells.insert(
            "ext4 data=ordered".to_string(),
            BTreeMap::from([
                ("wal".to_string(), result(200, 0)),
                ("records".to_string(), result(210, 1)),
            ]),
        );
        let table = Table {
            title: "t".into(),
            rows: vec!["ext4 data=ordered".into(), "xfs".into()],
            columns: vec!["records".into(), "wal".into()],
            cells,
        };
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].find("records").unwrap() < lines[2].find("wal").unwrap());
        assert!(
            lines[3].contains("210 / 1 / 0") && lines[3].contains("200 / 0 / 0"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("xfs") && lines[4].trim_end().ends_with('-'),
            "{text}"
        );
        assert_eq!(slug("ext4 data=ordered"), "ext4_data_ordered");
    }
}
