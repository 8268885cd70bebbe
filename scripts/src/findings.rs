//! `cargo xtask findings [--images-dir DIR]... [--only NAME]`: every
//! finding of `docs/findings/` rerun as its campaign file
//! (`examples/findings/NAME.toml`) on each kernel's guest images (default:
//! the distro kernel's), and per finding and kernel: **present** (states
//! fail the finding's rule), **fixed** (no state fails) or **changed**
//! (states fail, by another rule). The regression check a storage stack's
//! CI runs against its own kernel. Prints the table (also
//! `results/findings-<pid>/table.txt`); exit 0 when no finding is present
//! or changed on any kernel given, 1 otherwise.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::soak::{run_campaign, write_table};

/// A finding: its name (its page `docs/findings/NAME/README.md`, its
/// campaign `examples/findings/NAME.toml`) and the rule its failing states
/// break.
pub struct Finding {
    pub name: &'static str,
    pub rule: &'static str,
}

pub const FINDINGS: &[Finding] = &[
    Finding {
        name: "ext4-fast-commit",
        rule: "mountable",
    },
    Finding {
        name: "f2fs-first-fsync",
        rule: "acked-record-lost",
    },
    Finding {
        name: "f2fs-fsync-data-order",
        rule: "stale-bytes",
    },
    Finding {
        name: "ext4-torn-commit-block",
        rule: "mountable",
    },
];

pub fn run(sh: &Shell, images: &Path, args: &[String]) -> Result<i32> {
    let mut kernels: Vec<PathBuf> = Vec::new();
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--images-dir" => kernels.push(value("--images-dir")?.into()),
            "--only" => only = Some(value("--only")?),
            other => bail!("unknown flag {other:?}: use --images-dir DIR (repeatable), --only NAME"),
        }
    }
    if kernels.is_empty() {
        kernels.push(images.to_path_buf());
    }
    if let Some(name) = &only {
        anyhow::ensure!(
            FINDINGS.iter().any(|f| f.name == name),
            "--only {name:?}: the findings are {}",
            FINDINGS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
        );
    }
    cmd!(
        sh,
        "cargo build --quiet --release -p crashlab-controller --bin crashlab"
    )
    .run()?;
    let out_dir = format!("results/findings-{}", std::process::id());
    let (mut rows, mut clean) = (Vec::new(), true);
    for finding in FINDINGS.iter().filter(|f| only.as_deref().is_none_or(|o| o == f.name)) {
        for (k, images) in kernels.iter().enumerate() {
            let release = release_of(images)?;
            let id = format!("{}-{k}", finding.name);
            let config = format!("examples/findings/{}.toml", finding.name);
            let images_arg = images.display().to_string();
            run_campaign(sh, "findings", &images_arg, &out_dir, &id, &["--config", &config])?;
            let (verdict, detail) = verdict(finding, &Path::new(&out_dir).join(&id))?;
            clean &= verdict == "fixed";
            rows.push(format!("{:<20} {release:<28} {verdict:<8} {detail}", finding.name));
        }
    }
    write_table(
        &out_dir,
        "crashlab findings: each finding's campaign, per kernel",
        &rows,
    )?;
    Ok(if clean { 0 } else { 1 })
}

fn release_of(images: &Path) -> Result<String> {
    let manifest = std::fs::read_to_string(images.join("manifest.json"))
        .with_context(|| format!("no guest images at {}", images.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest)?;
    let release = manifest["kernel_release"].as_str().unwrap_or("?").to_string();
    Ok(match manifest["kernel_build"]["patches"].as_array().map(Vec::len) {
        Some(n) if n > 0 => format!("{release} +{n} patch(es)"),
        _ => release,
    })
}

/// present, fixed or changed, from the campaign's state lines (power loss)
/// or trial lines (kernel crash), with the counts.
fn verdict(finding: &Finding, campaign: &Path) -> Result<(&'static str, String)> {
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(campaign.join(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // A state line names its first violation; a trial line (kernel crash) lists them.
    let (units, first): (Vec<serde_json::Value>, &[&str]) = match lines("states.jsonl") {
        states if !states.is_empty() => (states, &["first_violation", "rule"]),
        _ => (lines("trials.jsonl"), &["violations", "0", "rule"]),
    };
    let rule_of = |v: &serde_json::Value| {
        first
            .iter()
            .try_fold(v, |v, key| match key.parse::<usize>() {
                Ok(i) => v.get(i),
                Err(_) => v.get(*key),
            })
            .and_then(|r| r.as_str())
            .map(String::from)
    };
    anyhow::ensure!(!units.is_empty(), "{}: no states or trials judged", campaign.display());
    let failing: Vec<Option<String>> = units.iter().filter(|u| u["passed"] == false).map(rule_of).collect();
    let by_rule = failing.iter().filter(|r| r.as_deref() == Some(finding.rule)).count();
    let detail = format!(
        "{} of {} failing, {by_rule} by {}",
        failing.len(),
        units.len(),
        finding.rule
    );
    Ok(match (failing.len(), by_rule) {
        (0, _) => ("fixed", detail),
        (_, 0) => ("changed", detail),
        _ => ("present", detail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finding_has_its_page_and_its_campaign_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for f in FINDINGS {
            assert!(
                root.join("docs/findings").join(f.name).join("README.md").is_file(),
                "{}",
                f.name
            );
            assert!(
                root.join("examples/findings")
                    .join(format!("{}.toml", f.name))
                    .is_file(),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn a_finding_is_present_fixed_or_changed_by_its_states() {
        let dir = tempfile::tempdir().unwrap();
        let finding = &FINDINGS[0];
        let state = |passed: bool, rule: &str| {
            let violation = match passed {
                true => serde_json::Value::Null,
                false => serde_json::json!({ "rule": rule }),
            };
            serde_json::json!({ "passed": passed, "first_violation": violation }).to_string()
        };
        let write = |lines: &[String]| std::fs::write(dir.path().join("states.jsonl"), lines.join("\n")).unwrap();
        write(&[state(true, ""), state(false, "mountable")]);
        assert_eq!(verdict(finding, dir.path()).unwrap().0, "present");
        write(&[state(true, ""), state(true, "")]);
        assert_eq!(
            verdict(finding, dir.path()).unwrap(),
            ("fixed", "0 of 2 failing, 0 by mountable".into())
        );
        write(&[state(false, "acked-record-lost")]);
        assert_eq!(verdict(finding, dir.path()).unwrap().0, "changed");
    }
}
