//! A results directory: its schema version, and the campaigns in it (one
//! campaign's directory, or a sweep's, whose table names its cells'
//! campaigns).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The results schema this crashlab writes: (major, minor). A report reads
/// any minor version of its major; results without a version are 1.0
/// (results/README.md lists what each adds).
pub const RESULTS_SCHEMA: (u64, u64) = (1, 5);

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The campaigns under `dir`: itself, or the cells of a sweep (any
/// `*.json` table with `cells`), or its subdirectories that are campaigns.
pub fn find_campaigns(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("campaign.json").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut found = Vec::new();
    for table in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let Ok(value) = read_json(table) else { continue };
        let Some(rows) = value["cells"].as_object() else {
            continue;
        };
        for cell in rows
            .values()
            .flat_map(|r| r.as_object().into_iter().flat_map(|c| c.values()))
        {
            let Some(recorded) = cell["results_dir"].as_str() else {
                continue;
            };
            // Recorded as the run saw it; the sweep may have moved since.
            let here = dir.join(Path::new(recorded).file_name().unwrap_or_default());
            let path = if Path::new(recorded).join("campaign.json").is_file() {
                PathBuf::from(recorded)
            } else {
                here
            };
            if path.join("campaign.json").is_file() && !found.contains(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        let mut subdirs: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| p.join("campaign.json").is_file())
            .collect();
        subdirs.sort();
        found = subdirs;
    }
    if found.is_empty() {
        bail!(
            "{} holds no campaign results (no campaign.json, no sweep table): give a directory that \
             `crashlab run` or `crashlab matrix` wrote",
            dir.display()
        );
    }
    Ok(found)
}
