//! JUnit XML for CI systems: one test case per campaign (a configuration
//! and a pattern), read back from its results directory, so that `run`,
//! `matrix` and any later tool write the same thing from the same files.
//!
//! A case fails when its campaign found a violation: the failure carries the
//! first one (rule, reason, the bytes found) and the command that replays
//! it. A campaign that did not finish (no `summary.json`, or interrupted) is
//! an `error`, not a pass. The format is the Ant/Jenkins one most CI
//! systems read; `docs/junit.xsd` is the schema the tests hold it to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One test case: one campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub name: String,
    /// `crashlab.<crash model>`: CI systems group cases by it.
    pub classname: String,
    pub time_s: f64,
    pub outcome: Outcome,
    /// What the case ran on, as name and value (the guest kernel's
    /// identity): `<properties>`, which Jenkins and most readers show.
    pub properties: Vec<(String, String)>,
    /// The campaign's summary and where its results are.
    pub system_out: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Passed,
    /// The first violation, and how to see it again.
    Failed {
        message: String,
        rule: String,
        detail: String,
    },
    /// The campaign did not give a verdict.
    Error {
        message: String,
    },
}

/// Upper bound on a failure's text: CI pages show it whole.
const DETAIL_MAX_BYTES: usize = 16 * 1024;

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON (a damaged results file?)", path.display()))
}

/// The first JSON line of `path` for which `pick` holds (a torn last line,
/// as a killed run leaves, is skipped).
fn first_line(path: &Path, pick: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| pick(v))
}

/// A JSON string's text, empty when it is missing (results from an older
/// crashlab lack some fields).
fn json_text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// The case of the campaign in `dir`.
pub fn case_from_campaign(dir: &Path) -> Result<Case> {
    let meta = read_json(&dir.join("campaign.json"))?;
    let config = &meta["config"];
    let model = json_text(&config["crash_model"]);
    let name = case_name(config);
    let classname = format!("crashlab.{model}");
    let properties = kernel_properties(&meta);
    let summary = match read_json(&dir.join("summary.json")) {
        Ok(summary) => summary,
        Err(_) => {
            return Ok(Case {
                name,
                classname,
                time_s: 0.0,
                outcome: Outcome::Error {
                    message: format!(
                        "the campaign in {} did not finish (no summary.json): continue it with `crashlab run \
                         --resume {}`",
                        dir.display(),
                        dir.display()
                    ),
                },
                properties,
                system_out: String::new(),
            })
        }
    };
    let system_out = std::fs::read_to_string(dir.join("summary.txt")).unwrap_or_default();
    let time_s = summary["elapsed_s"].as_f64().unwrap_or(0.0);
    let mut properties = properties;
    properties.extend(coverage_properties(&summary));
    Ok(Case {
        name,
        classname,
        time_s,
        outcome: summary_outcome(dir, &model, &summary),
        properties,
        system_out,
    })
}

/// The case's name from the campaign's configuration: what ran (program
/// or pattern) on which filesystem and options, so that a matrix's cases
/// differ by name.
fn case_name(config: &serde_json::Value) -> String {
    let mut name = match config["program"]["workload"].as_str() {
        Some(program) => format!(
            "{} on {}",
            Path::new(program)
                .file_name()
                .map_or(program.into(), |n| n.to_string_lossy()),
            json_text(&config["fs"])
        ),
        None => format!("{} {}", json_text(&config["fs"]), json_text(&config["pattern"])),
    };
    name += &format!(" -o {}", json_text(&config["mount_opts"]));
    if let Some(mkfs) = config["mkfs_opts"].as_str().filter(|m| !m.is_empty()) {
        name += &format!(" mkfs {mkfs}");
    }
    if config["program"].is_null() && config["pattern"] == "records" {
        name += &format!(" {}", json_text(&config["mode"]));
    }
    name
}

/// The verdict of a finished campaign from its summary: failed on a
/// violation, an error when it was interrupted or checked no state (no
/// verdict either way), else passed.
fn summary_outcome(dir: &Path, model: &str, summary: &serde_json::Value) -> Outcome {
    let violations = summary["violations"].as_u64().unwrap_or(0);
    if violations > 0 {
        first_violation(dir, model, violations)
    } else if summary["interrupted"] == true {
        Outcome::Error {
            message: format!(
                "interrupted before the campaign ended; continue it with `crashlab run --resume {}`",
                dir.display()
            ),
        }
    } else if summary["states_checked"].as_u64().unwrap_or(0) == 0 {
        // A verdict needs at least one judged state.
        Outcome::Error {
            message: "no crash state was checked".into(),
        }
    } else {
        Outcome::Passed
    }
}

/// A power-loss campaign's coverage of its model and its checkers'
/// agreement (summary.json), as `coverage.*` and `checkers.*` properties:
/// what a CI dashboard plots run over run.
fn coverage_properties(summary: &serde_json::Value) -> Vec<(String, String)> {
    let coverage = &summary["coverage"];
    if coverage["trials"].as_u64().unwrap_or(0) == 0 {
        return Vec::new();
    }
    let mut properties: Vec<(String, String)> = [
        "states_checked",
        "states_in_model",
        "exact",
        "epochs",
        "epochs_enumerated",
        "epochs_sampled",
        "duplicates",
        "largest_epoch_writes",
    ]
    .iter()
    .filter(|key| !coverage[**key].is_null())
    .map(|key| (format!("coverage.{key}"), coverage[*key].to_string()))
    .collect();
    for key in ["checker_disagreements", "checker_detail_differences"] {
        if let Some(n) = summary[key].as_u64() {
            properties.push((
                format!("checkers.{}", key.trim_start_matches("checker_")),
                n.to_string(),
            ));
        }
    }
    if let Some(tiered) = summary["tiered"].as_object() {
        for (key, value) in tiered {
            properties.push((format!("checkers.tiered.{key}"), value.to_string()));
        }
    }
    properties
}

/// The guest kernel a campaign ran on (campaign.json's `kernel`; older
/// results have only `kernel_release`).
fn kernel_properties(meta: &serde_json::Value) -> Vec<(String, String)> {
    let mut properties = Vec::new();
    let mut add = |name: &str, value: &serde_json::Value| {
        if let Some(text) = value.as_str().filter(|t| !t.is_empty()) {
            properties.push((format!("kernel.{name}"), text.to_string()));
        }
    };
    let kernel = &meta["kernel"];
    add(
        "release",
        if kernel.is_null() {
            &meta["kernel_release"]
        } else {
            &kernel["release"]
        },
    );
    add("digest", &kernel["digest"]);
    let build = &kernel["build"];
    add("build_key", &build["build_key"]);
    add("source", &build["source"]["name"]);
    add("source_digest", &build["source"]["digest"]);
    add("config_digest", &build["config_digest"]);
    let patches: Vec<String> = build["patches"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["digest"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if !build.is_null() {
        properties.push(("kernel.patches".into(), patches.join(", ")));
    }
    properties
}

fn first_violation(dir: &Path, model: &str, violations: u64) -> Outcome {
    let abs: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let failing_state = (model == "power-loss")
        .then(|| first_line(&dir.join("states.jsonl"), |s| s["passed"] == false))
        .flatten();
    let (violation, rerun) = match failing_state {
        Some(state) => (
            state["first_violation"].clone(),
            format!(
                "crashlab replay-state --campaign {} --trial {} --state {}",
                abs.display(),
                state["trial"],
                state["state"]
            ),
        ),
        None => match first_line(&dir.join("trials.jsonl"), |t| {
            t["violation_count"].as_u64().unwrap_or(0) > 0
        }) {
            Some(trial) => (
                trial["violations"][0].clone(),
                trial["rerun"].as_str().unwrap_or("").to_string(),
            ),
            None => (serde_json::Value::Null, String::new()),
        },
    };
    let rule = violation["rule"].as_str().unwrap_or("violation").to_string();
    let reason = violation["reason"].as_str().unwrap_or("see the campaign's results");
    let mut detail = format!("{reason}\n\nreplay: {rerun}\nresults: {}\n", abs.display());
    if let Some(hex) = violation["hex_excerpt"].as_str() {
        detail += &format!("\nfound: {hex}\n");
    }
    if let Some(covered) = violation["covered_by"].as_str() {
        detail += &format!("covered by: {covered}\n");
    }
    Outcome::Failed {
        message: format!("{violations} violation(s); first: {rule}: {reason}"),
        rule,
        detail,
    }
}

/// XML text or attribute value: the five special characters escaped, and
/// characters XML 1.0 cannot hold at all (most control characters) dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn cut(text: &str) -> &str {
    if text.len() <= DETAIL_MAX_BYTES {
        return text;
    }
    let mut end = DETAIL_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One JUnit document: a suite named `suite` holding `cases`.
pub fn render(suite: &str, cases: &[Case]) -> String {
    let failures = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
        .count();
    let errors = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Error { .. }))
        .count();
    let time_s: f64 = cases.iter().map(|c| c.time_s).sum();
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time_s:.3}\"",
        cases.len()
    );
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml += &format!("<testsuites name=\"crashlab\" {counts}>\n");
    xml += &format!("  <testsuite name=\"{}\" {counts} skipped=\"0\">\n", escape(suite));
    for case in cases {
        xml += &format!(
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">\n",
            escape(&case.name),
            escape(&case.classname),
            case.time_s
        );
        if !case.properties.is_empty() {
            xml += "      <properties>\n";
            for (name, value) in &case.properties {
                xml += &format!(
                    "        <property name=\"{}\" value=\"{}\"/>\n",
                    escape(name),
                    escape(value)
                );
            }
            xml += "      </properties>\n";
        }
        match &case.outcome {
            Outcome::Passed => {}
            Outcome::Failed { message, rule, detail } => {
                xml += &format!(
                    "      <failure message=\"{}\" type=\"{}\">{}</failure>\n",
                    escape(cut(message)),
                    escape(rule),
                    escape(cut(detail))
                );
            }
            Outcome::Error { message } => {
                xml += &format!(
                    "      <error message=\"{}\" type=\"no-verdict\">{}</error>\n",
                    escape(cut(message)),
                    escape(cut(message))
                );
            }
        }
        if !case.system_out.is_empty() {
            xml += &format!("      <system-out>{}</system-out>\n", escape(cut(&case.system_out)));
        }
        xml += "    </testcase>\n";
    }
    xml += "  </testsuite>\n</testsuites>\n";
    xml
}

/// A campaign that stopped on an error: its case says so, whatever its
/// results directory holds (a campaign stopped by a broken setup may have
/// written a summary of the trials before).
pub fn error_case(dir: &Path, message: &str) -> Case {
    let mut case = case_from_campaign(dir).unwrap_or_else(|_| Case {
        name: dir
            .file_name()
            .map_or("campaign".into(), |n| n.to_string_lossy().into_owned()),
        classname: "crashlab".into(),
        time_s: 0.0,
        outcome: Outcome::Passed,
        properties: Vec::new(),
        system_out: String::new(),
    });
    if !matches!(case.outcome, Outcome::Failed { .. }) {
        case.outcome = Outcome::Error {
            message: message.to_string(),
        };
    }
    case
}

/// Writes the JUnit file of the campaigns in `dirs`, whole or not at all.
pub fn write(path: &Path, suite: &str, dirs: &[PathBuf]) -> Result<()> {
    let cases = dirs.iter().map(|d| case_from_campaign(d)).collect::<Result<Vec<_>>>()?;
    write_cases(path, suite, &cases)
}

pub fn write_cases(path: &Path, suite: &str, cases: &[Case]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    machine::durable::write_atomically(path, render(suite, cases).as_bytes())
        .with_context(|| format!("cannot write the JUnit file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_escaped_and_control_characters_dropped() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}\n"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\n"
        );
    }

    #[test]
    fn counts_follow_the_outcomes() {
        let case = |outcome| Case {
            name: "ext4 records".into(),
            classname: "crashlab.power-loss".into(),
            time_s: 1.5,
            outcome,
            properties: vec![("kernel.release".into(), "6.12.118-crashlab".into())],
            system_out: String::new(),
        };
        let xml = render(
            "m",
            &[
                case(Outcome::Passed),
                case(Outcome::Failed {
                    message: "1 violation(s)".into(),
                    rule: "acked-record-lost".into(),
                    detail: "replay: crashlab replay-state".into(),
                }),
                case(Outcome::Error { message: "no".into() }),
            ],
        );
        assert!(
            xml.contains("<testsuites name=\"crashlab\" tests=\"3\" failures=\"1\" errors=\"1\" time=\"4.500\">"),
            "{xml}"
        );
        assert!(
            xml.contains("type=\"acked-record-lost\">replay: crashlab replay-state</failure>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert_eq!(
            xml.matches("<property name=\"kernel.release\" value=\"6.12.118-crashlab\"/>")
                .count(),
            3
        );
    }

    #[test]
    fn a_built_kernel_is_named_by_its_build_and_an_old_campaign_by_its_release() {
        let built = serde_json::json!({
            "kernel_release": "6.12.118-crashlab",
            "kernel": {
                "release": "6.12.118-crashlab",
                "digest": "blake3:aa",
                "build": {
                    "build_key": "blake3:bb",
                    "source": { "name": "/usr/src/linux-source-6.12.tar.xz", "digest": "blake3:cc" },
                    "patches": [{ "name": "fix.patch", "digest": "blake3:dd" }],
                    "config_digest": "blake3:ee",
                },
            },
        });
        let summary = serde_json::json!({
            "coverage": {"states_checked": 402, "states_in_model": 402, "exact": true, "epochs": 198,
                         "epochs_enumerated": 198, "epochs_sampled": 0, "duplicates": 197,
                         "largest_epoch_writes": 3, "trials": 1},
            "checker_disagreements": 0, "checker_detail_differences": 1,
            "tiered": {"host_only": 377, "kernel_sampled": 21, "kernel_host_failed": 0, "kernel_host_declined": 4}
        });
        let covered = coverage_properties(&summary);
        let get = |name: &str| covered.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("coverage.states_in_model"), Some("402"));
        assert_eq!(get("coverage.exact"), Some("true"));
        assert_eq!(get("checkers.detail_differences"), Some("1"));
        assert_eq!(get("checkers.tiered.kernel_sampled"), Some("21"));
        let none = coverage_properties(&serde_json::json!({"coverage": {"trials": 0}}));
        assert!(none.is_empty(), "a kernel-crash campaign has no coverage: {none:?}");
        let properties = kernel_properties(&built);
        let get = |name: &str| properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("kernel.release"), Some("6.12.118-crashlab"));
        assert_eq!(get("kernel.build_key"), Some("blake3:bb"));
        assert_eq!(get("kernel.source_digest"), Some("blake3:cc"));
        assert_eq!(get("kernel.patches"), Some("fix.patch blake3:dd"));
        assert_eq!(get("kernel.config_digest"), Some("blake3:ee"));
        let old = kernel_properties(&serde_json::json!({ "kernel_release": "6.1.0-57-amd64" }));
        assert_eq!(old, vec![("kernel.release".to_string(), "6.1.0-57-amd64".to_string())]);
    }

    #[test]
    fn a_long_detail_is_cut_on_a_character_boundary() {
        let long = "é".repeat(DETAIL_MAX_BYTES);
        let c = cut(&long);
        assert!(c.len() <= DETAIL_MAX_BYTES && c.len() >= DETAIL_MAX_BYTES - 1);
    }
}
