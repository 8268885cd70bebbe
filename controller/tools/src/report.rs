//! `crashlab report DIR`: one self-contained HTML page (no network, no
//! script) from a campaign's results, or from a sweep's: the summary, the
//! configuration by pattern matrix, each violation with its replay command,
//! the bytes expected and found, the guest kernel's own messages and the
//! last msync calls, and three plots as inline SVG (plotters):
//!
//! - acked records lost against the crash position (acks given before it),
//! - the loss window: lost records by how many acks were given after
//!   theirs before the crash (0: the last one acked), as diskchecker.pl
//!   reports losses by time before the crash,
//! - crash states verified per second over the campaign.
//!
//! It reads results files only (`results/README.md` documents them), so it
//! works on results from any machine, and on older minor versions of the
//! results schema (missing fields are shown as absent).

mod coverage;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use campaign::results::RESULTS_SCHEMA;

/// At most this many violations are shown in full (the rest are counted).
const VIOLATIONS_SHOWN_MAX: usize = 50;
/// At most this many states' points in a plot.
const PLOT_POINTS_MAX: usize = 20_000;

/// The data marks' colours: distinct from the axes' and text's greys, so
/// a screenshot shows whether each plot drew any data.
pub const LOST_COLOUR: (u8, u8, u8) = (214, 39, 40);
pub const WINDOW_COLOUR: (u8, u8, u8) = (31, 119, 180);
pub const RATE_COLOUR: (u8, u8, u8) = (44, 160, 44);

/// One campaign's results, as read.
pub struct CampaignResults {
    pub dir: PathBuf,
    pub meta: Value,
    pub summary: Option<Value>,
    pub trials: Vec<Value>,
    pub states: Vec<Value>,
}

impl CampaignResults {
    fn config(&self) -> &Value {
        &self.meta["config"]
    }

    fn model(&self) -> &str {
        self.config()["crash_model"].as_str().unwrap_or("?")
    }

    /// The guest kernel, in a line: its identity (results schema 1.2) or
    /// its release.
    fn kernel(&self) -> String {
        match serde_json::from_value::<machine::images::KernelIdentity>(self.meta["kernel"].clone()) {
            Ok(kernel) => kernel.summary_line(),
            Err(_) => self.meta["kernel_release"]
                .as_str()
                .unwrap_or("(not recorded)")
                .to_string(),
        }
    }

    /// The matrix row: crash model, filesystem, its options.
    fn row(&self) -> String {
        let c = self.config();
        let mut row = format!(
            "{}: {} -o {}",
            self.model(),
            c["fs"].as_str().unwrap_or("?"),
            c["mount_opts"].as_str().unwrap_or("?")
        );
        if let Some(mkfs) = c["mkfs_opts"].as_str().filter(|m| !m.is_empty()) {
            row += &format!(" (mkfs {mkfs})");
        }
        row
    }

    /// The matrix column: the pattern (and mode), or the program.
    fn column(&self) -> String {
        let c = self.config();
        let mut column = match c["program"]["workload"].as_str() {
            Some(p) => Path::new(p)
                .file_name()
                .map_or(p.into(), |n| n.to_string_lossy().into_owned()),
            None if c["pattern"] == "records" => format!("records {}", c["mode"].as_str().unwrap_or("")),
            None => c["pattern"].as_str().unwrap_or("?").to_string(),
        };
        // A planted bug is another workload (or disk), not the same cell.
        for key in ["planted_bug", "device_bug"] {
            if let Some(bug) = c[key].as_str() {
                column += &format!(" + planted {bug}");
            }
        }
        column
    }

    /// One point per judged crash state: (acks given before the crash,
    /// acked records lost, finished at, lost seqs, in flight).
    fn state_points(&self) -> Vec<StatePoint> {
        match self.model() {
            "power-loss" => self
                .states
                .iter()
                .map(|s| StatePoint {
                    acked: s["acked"].as_u64().unwrap_or(0),
                    lost: s["lost"].as_u64().unwrap_or(0),
                    finished_at_unix_ms: s["finished_at_unix_ms"].as_u64(),
                    lost_seqs: s["lost_seqs"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default(),
                    in_flight: 0,
                })
                .collect(),
            _ => self
                .trials
                .iter()
                .map(|t| StatePoint {
                    acked: t["counts"]["acked"].as_u64().unwrap_or(0),
                    lost: t["counts"]["lost"].as_u64().unwrap_or(0),
                    finished_at_unix_ms: t["finished_at_unix_ms"].as_u64(),
                    lost_seqs: t["violations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(t["observations"].as_array().into_iter().flatten())
                        .filter(|f| {
                            matches!(
                                serde_json::from_value::<verifier::Rule>(f["rule"].clone()),
                                Ok(verifier::Rule::AckedRecordLost | verifier::Rule::AckedItemLost)
                            )
                        })
                        .filter_map(|f| f["expected_seq"].as_u64())
                        .collect(),
                    in_flight: t["counts"]["in_flight"].as_u64().unwrap_or(0),
                })
                .collect(),
        }
    }
}

struct StatePoint {
    acked: u64,
    lost: u64,
    finished_at_unix_ms: Option<u64>,
    lost_seqs: Vec<u64>,
    in_flight: u64,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON (damaged?)", path.display()))
}

/// The JSON lines of a file; a torn last line (a killed run) is skipped,
/// a missing file is empty.
fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The results schema version a campaign.json declares (1.0 when none).
pub fn schema_of(meta: &Value) -> Result<(u64, u64), String> {
    let Some(text) = meta["results_schema"].as_str() else {
        return Ok((1, 0));
    };
    let parsed = text
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    parsed.ok_or_else(|| format!("results_schema {text:?} is not MAJOR.MINOR"))
}

pub fn load_campaign(dir: &Path) -> Result<CampaignResults> {
    let meta = read_json(&dir.join("campaign.json"))?;
    let (major, minor) = schema_of(&meta).map_err(anyhow::Error::msg)?;
    if major != RESULTS_SCHEMA.0 {
        bail!(
            "{} was written with results schema {major}.{minor}; this crashlab reads {}.x: use a crashlab \
             release of schema {major} to report it",
            dir.display(),
            RESULTS_SCHEMA.0
        );
    }
    Ok(CampaignResults {
        dir: dir.to_path_buf(),
        summary: read_json(&dir.join("summary.json")).ok(),
        trials: read_lines(&dir.join("trials.jsonl")),
        states: read_lines(&dir.join("states.jsonl")),
        meta,
    })
}

pub use campaign::results::find_campaigns;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn rgb((r, g, b): (u8, u8, u8)) -> plotters::style::RGBColor {
    plotters::style::RGBColor(r, g, b)
}

/// An SVG plot, or a sentence saying why there is none.
type Plot = std::result::Result<String, String>;

/// A chart on an SVG string: the axes, their descriptions and labels,
/// then `series` draws the data. One size and look for every plot.
fn svg_chart(
    x_max: f64,
    y_max: f64,
    (x_desc, y_desc): (&str, &str),
    x_label: Option<&dyn Fn(&f64) -> String>,
    series: impl FnOnce(&mut Chart) -> std::result::Result<(), String>,
) -> Plot {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| e.to_string())?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(y_desc).light_line_style(WHITE);
        if let Some(label) = x_label {
            mesh.x_labels(WINDOW_BUCKETS + 1).x_label_formatter(label);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        series(&mut chart)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Chart<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

fn plot_lost_against_position(points: &[(u64, u64)], unit: &str) -> Plot {
    use plotters::prelude::*;
    if points.is_empty() {
        return Err("no crash state was judged".into());
    }
    let x_max = points.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64 * 1.05;
    let y_max = points.iter().map(|p| p.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    svg_chart(
        x_max,
        y_max,
        ("acks given before the crash", &format!("acked {unit} lost")),
        None,
        |chart| {
            chart
                .draw_series(
                    points
                        .iter()
                        .take(PLOT_POINTS_MAX)
                        .map(|&(x, y)| Circle::new((x as f64, y as f64), 4, rgb(LOST_COLOUR).filled())),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
}

/// Buckets of the loss window, by powers of two: 0, 1, 2-3, 4-7, ...; the
/// last holds everything from 2^(WINDOW_BUCKETS-2) on. A loss right at the
/// crash and one thousands of acks before it both show.
const WINDOW_BUCKETS: usize = 14;

fn window_bucket(distance: u64) -> usize {
    match distance {
        0 => 0,
        d => ((64 - d.leading_zeros()) as usize).min(WINDOW_BUCKETS - 1),
    }
}

/// The label of a bucket: its smallest distance.
fn window_label(bucket: usize) -> String {
    match bucket {
        0 => "0".into(),
        b if b == WINDOW_BUCKETS - 1 => format!("{}+", 1u64 << (b - 1)),
        b => format!("{}", 1u64 << (b - 1)),
    }
}

fn plot_loss_window(distances: &[u64], unit: &str) -> Plot {
    use plotters::prelude::*;
    if distances.is_empty() {
        return Err(format!("no acked {} was lost", unit.trim_end_matches('s')));
    }
    let mut counts = [0u64; WINDOW_BUCKETS];
    for &d in distances {
        counts[window_bucket(d)] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let label = |x: &f64| match x.fract() == 0.0 && (*x as usize) < WINDOW_BUCKETS {
        true => window_label(*x as usize),
        false => String::new(),
    };
    svg_chart(
        WINDOW_BUCKETS as f64,
        y_max,
        (
            &format!(
                "acks given after the lost {}'s before the crash (from; powers of two)",
                unit.trim_end_matches('s')
            ),
            &format!("{unit} lost"),
        ),
        Some(&label),
        |chart| {
            chart
                .draw_series(counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(i, &n)| {
                    Rectangle::new(
                        [(i as f64 + 0.1, 0.0), (i as f64 + 0.9, n as f64)],
                        rgb(WINDOW_COLOUR).filled(),
                    )
                }))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
}

/// Bins of the states-per-second plot.
const RATE_BINS: usize = 24;

fn plot_rate(finished_ms: &[u64]) -> Plot {
    use plotters::prelude::*;
    if finished_ms.len() < 2 {
        return Err("fewer than two states carry their time (results written before schema 1.1 do not)".into());
    }
    let start = *finished_ms.iter().min().unwrap();
    let end = *finished_ms.iter().max().unwrap();
    let span_ms = (end - start).max(1);
    let bin_ms = span_ms.div_ceil(RATE_BINS as u64).max(1);
    let mut counts = [0u64; RATE_BINS + 1];
    for &t in finished_ms {
        counts[((t - start) / bin_ms) as usize] += 1;
    }
    let rates: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (
                (i as f64 + 0.5) * bin_ms as f64 / 1000.0,
                n as f64 * 1000.0 / bin_ms as f64,
            )
        })
        .collect();
    let y_max = rates.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let x_max = (RATE_BINS + 1) as f64 * bin_ms as f64 / 1000.0;
    svg_chart(
        x_max,
        y_max,
        ("seconds since the first verdict", "states verified per second"),
        None,
        |chart| {
            chart
                .draw_series(LineSeries::new(rates.iter().copied(), rgb(RATE_COLOUR).stroke_width(3)))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(rates.iter().map(|&p| Circle::new(p, 3, rgb(RATE_COLOUR).filled())))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
}

/// "@0x40: 00000000 11223344" → (offset, bytes).
fn parse_excerpt(hex: &str) -> Option<(String, Vec<String>)> {
    let (offset, rest) = hex.split_once(':')?;
    let bytes = rest
        .split_whitespace()
        .flat_map(|group| (0..group.len() / 2).map(move |i| group[2 * i..2 * i + 2].to_string()))
        .collect();
    Some((offset.trim_start_matches('@').to_string(), bytes))
}

/// The expected and found bytes, aligned, differing bytes marked.
fn hex_diff(expected: Option<&str>, found: Option<&str>) -> String {
    let Some((offset, found)) = found.and_then(parse_excerpt) else {
        return String::new();
    };
    let expected = expected.and_then(parse_excerpt).map(|(_, b)| b);
    let line = |bytes: &[String], other: Option<&Vec<String>>| {
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let differs = other.is_some_and(|o| o.get(i) != Some(b));
                match differs {
                    true => format!("<b class=\"d\">{b}</b>"),
                    false => b.clone(),
                }
            })
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c.concat())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!("<pre class=\"hex\">offset   {}\n", esc(&offset));
    if let Some(e) = &expected {
        out += &format!("expected {}\n", line(e, Some(&found)));
    }
    out += &format!("found    {}</pre>", line(&found, expected.as_ref()));
    out
}

/// The guest kernel's messages a check boot or checker VM printed for a
/// failed mount (`crashlab-kernel:` lines), from the campaign's logs.
fn kernel_messages(dir: &Path, trial: u64) -> Vec<String> {
    let trial_dir = dir.join("trials").join(trial.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&trial_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.contains("console") && (name.starts_with("check") || name.starts_with("checker"))
        })
        .collect();
    logs.sort();
    let mut said = Vec::new();
    for log in logs {
        said.extend(machine::console::kernel_lines_of(&log));
    }
    said.dedup();
    let keep = said.len().saturating_sub(12);
    said.split_off(keep)
}

struct ShownViolation<'a> {
    campaign: &'a CampaignResults,
    trial: u64,
    state: Option<u64>,
    finding: &'a Value,
    replay: String,
    last_msyncs: Vec<String>,
}

fn violations_of(c: &CampaignResults) -> Vec<ShownViolation<'_>> {
    let abs = std::fs::canonicalize(&c.dir).unwrap_or_else(|_| c.dir.clone());
    let trial_of = |n: u64| c.trials.iter().find(|t| t["trial"].as_u64() == Some(n));
    let msyncs = |t: Option<&Value>| -> Vec<String> {
        t.and_then(|t| t["msync_trace"]["last_calls"].as_array())
            .map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let mut shown = Vec::new();
    if c.model() == "power-loss" {
        for s in c.states.iter().filter(|s| s["passed"] == false) {
            let (trial, state) = (s["trial"].as_u64().unwrap_or(0), s["state"].as_u64().unwrap_or(0));
            shown.push(ShownViolation {
                campaign: c,
                trial,
                state: Some(state),
                finding: &s["first_violation"],
                replay: format!(
                    "crashlab replay-state --campaign {} --trial {trial} --state {state}",
                    abs.display()
                ),
                last_msyncs: msyncs(trial_of(trial)),
            });
        }
    }
    for t in &c.trials {
        let trial = t["trial"].as_u64().unwrap_or(0);
        // Power loss: the trial's own findings (live ones); states above.
        let list = match c.model() {
            "power-loss" => &t["live_violations"],
            _ => &t["violations"],
        };
        for f in list.as_array().into_iter().flatten() {
            shown.push(ShownViolation {
                campaign: c,
                trial,
                state: None,
                finding: f,
                replay: t["rerun"].as_str().unwrap_or("").to_string(),
                last_msyncs: msyncs(Some(t)),
            });
        }
    }
    shown
}

fn summary_cell(summary: Option<&Value>, key: &str) -> String {
    summary
        .and_then(|s| s[key].as_u64())
        .map_or("-".to_string(), |v| v.to_string())
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.ok{background:#e6f4e6}.bad{background:#fbe3e3}.none{color:#888}\
pre{background:#f7f7f7;padding:6px 8px;overflow-x:auto;font-size:12px}b.d{color:#c00}\
.plot{margin:8px 0 20px}.v{border-left:4px solid #d62728;padding-left:12px;margin:16px 0}code{font-size:12px}";

/// The page for the campaigns in `dirs`: one section after another.
pub fn render(title: &str, campaigns: &[CampaignResults]) -> String {
    let mut h = header(title, campaigns);
    h += &campaigns_table(campaigns);
    h += &configuration_table(campaigns);
    h += &comparisons_section(campaigns);
    h += &plots_section(campaigns);
    h += &violations_section(campaigns);
    h += "</body></html>\n";
    h
}

/// The results schema the campaigns were written with, as the plots that
/// depend on it say it: "Results schema 1.3", or each one when they differ.
fn schemas_written(campaigns: &[CampaignResults]) -> String {
    let versions: std::collections::BTreeSet<String> = campaigns
        .iter()
        .filter_map(|c| schema_of(&c.meta).ok())
        .map(|(major, minor)| format!("{major}.{minor}"))
        .collect();
    match versions.len() {
        0 => "No results schema".into(),
        1 => format!("Results schema {}", versions.into_iter().next().unwrap_or_default()),
        _ => format!(
            "Results schemas {}",
            versions.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The page's head and its one-line verdict over every campaign.
fn header(title: &str, campaigns: &[CampaignResults]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(title)
    );
    let _ = writeln!(h, "<h1>crashlab report: {}</h1>", esc(title));
    let total = |key: &str| -> u64 {
        campaigns
            .iter()
            .filter_map(|c| c.summary.as_ref().and_then(|s| s[key].as_u64()))
            .sum()
    };
    let violations = total("violations");
    let _ = writeln!(
        h,
        "<p class=\"{}\"><b>{} campaign(s), {} crash states checked, {} failed, {} violation(s), {} observation(s).</b> \
         {}; read by crashlab {} (which writes {}.{}).</p>",
        if violations > 0 { "bad" } else { "ok" },
        campaigns.len(),
        total("states_checked"),
        total("states_failed"),
        violations,
        total("observations"),
        schemas_written(campaigns),
        env!("CARGO_PKG_VERSION"),
        RESULTS_SCHEMA.0,
        RESULTS_SCHEMA.1,
    );
    h
}

/// A row per campaign.
fn campaigns_table(campaigns: &[CampaignResults]) -> String {
    let mut h = String::new();
    h += "<h2>Campaigns</h2>\n<table><tr><th>campaign</th><th>configuration</th><th>workload</th><th>filesystem made with</th>\
          <th>kernel</th><th>states</th><th>failed</th><th>violations</th><th>observations</th><th>lost</th><th>seconds</th></tr>\n";
    for c in campaigns {
        let s = c.summary.as_ref();
        let failed = s.and_then(|s| s["violations"].as_u64()).unwrap_or(0) > 0;
        let made = c.meta["filesystem"]["mkfs_command"]
            .as_str()
            .unwrap_or("(not recorded)");
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if s.is_none() { "none" } else if failed { "bad" } else { "ok" },
            esc(c.meta["campaign_id"].as_str().unwrap_or("?")),
            esc(&c.row()),
            esc(&c.column()),
            esc(made),
            esc(&c.kernel()),
            summary_cell(s, "states_checked"),
            summary_cell(s, "states_failed"),
            summary_cell(s, "violations"),
            summary_cell(s, "observations"),
            summary_cell(s, "lost"),
            s.and_then(|s| s["elapsed_s"].as_f64()).map_or("-".into(), |e| format!("{e:.0}")),
        );
    }
    h += "</table>\n";
    h
}

/// Configuration by workload: states checked / violations per cell.
fn configuration_table(campaigns: &[CampaignResults]) -> String {
    let mut h = String::new();
    let mut rows: Vec<String> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for c in campaigns {
        if !rows.contains(&c.row()) {
            rows.push(c.row());
        }
        if !columns.contains(&c.column()) {
            columns.push(c.column());
        }
    }
    h += "<h2>Configuration × workload</h2>\n<p>Crash states checked / violations.</p>\n<table><tr><th></th>";
    for col in &columns {
        let _ = write!(h, "<th>{}</th>", esc(col));
    }
    h += "</tr>\n";
    for row in &rows {
        let _ = write!(h, "<tr><th>{}</th>", esc(row));
        for col in &columns {
            let cell: Vec<&CampaignResults> = campaigns
                .iter()
                .filter(|c| &c.row() == row && &c.column() == col)
                .collect();
            if cell.is_empty() {
                h += "<td class=\"none\">-</td>";
                continue;
            }
            let sum = |k: &str| -> u64 { cell.iter().filter_map(|c| c.summary.as_ref()?[k].as_u64()).sum() };
            let _ = write!(
                h,
                "<td class=\"{}\">{} / {}</td>",
                if sum("violations") > 0 { "bad" } else { "ok" },
                sum("states_checked"),
                sum("violations")
            );
        }
        h += "</tr>\n";
    }
    h += "</table>\n";
    h
}

/// What the campaigns' workloads promise, as the plots count it: records
/// (crashlab's workload), items (a program's), or both words when mixed.
fn unit_of(campaigns: &[CampaignResults]) -> &'static str {
    let programs = campaigns
        .iter()
        .filter(|c| !c.meta["config"]["program"].is_null())
        .count();
    match (programs, campaigns.len()) {
        (0, _) => "records",
        (p, n) if p == n => "items",
        _ => "records or items",
    }
}

/// The plots, over every campaign's states.
fn plots_section(campaigns: &[CampaignResults]) -> String {
    let mut h = String::new();
    let points: Vec<StatePoint> = campaigns.iter().flat_map(CampaignResults::state_points).collect();
    let lost: Vec<(u64, u64)> = points.iter().map(|p| (p.acked, p.lost)).collect();
    let distances: Vec<u64> = points
        .iter()
        .flat_map(|p| {
            p.lost_seqs
                .iter()
                .map(move |&s| p.acked.saturating_sub(1).saturating_sub(s))
        })
        .collect();
    let in_flight: u64 = points.iter().map(|p| p.in_flight).sum();
    let finished: Vec<u64> = points.iter().filter_map(|p| p.finished_at_unix_ms).collect();
    h += "<h2>Plots</h2>\n";
    let unit = unit_of(campaigns);
    let plots: [(&str, String, Plot); 3] = [
        (
            "plot-lost",
            format!("Acked {unit} lost against the crash position"),
            plot_lost_against_position(&lost, unit),
        ),
        (
            "plot-window",
            format!("Loss window: lost {unit} by acks given after theirs, before the crash"),
            match (distances.is_empty(), points.iter().any(|p| p.lost > 0)) {
                (true, true) => Err(format!(
                    "{unit} were lost, but these results name only the first per state \
                     (results schema 1.0; 1.1 keeps each state's lost {unit})"
                )),
                _ => plot_loss_window(&distances, unit),
            },
        ),
        (
            "plot-rate",
            "Crash states verified per second over the campaign".to_string(),
            plot_rate(&finished),
        ),
    ];
    h += &coverage::section(campaigns);
    for (id, caption, plot) in plots {
        let _ = write!(h, "<div class=\"plot\" id=\"{id}\"><h3>{}</h3>", esc(&caption));
        match plot {
            Ok(svg) => h += &svg,
            Err(why) => {
                let _ = write!(h, "<p class=\"none\">No plot: {}.</p>", esc(&why));
            }
        }
        if id == "plot-window" && in_flight > 0 {
            let _ = write!(
                h,
                "<p>Records in flight at the crash (begun, not acked; old or new version allowed): {in_flight}.</p>"
            );
        }
        h += "</div>\n";
    }
    h
}

/// Each failing state or trial (at most `VIOLATIONS_SHOWN_MAX`): its rule,
/// reason, replay command, bytes, the kernel's words and the last msyncs.
fn violations_section(campaigns: &[CampaignResults]) -> String {
    let mut h = String::new();
    let all: Vec<ShownViolation> = campaigns.iter().flat_map(violations_of).collect();
    let _ = writeln!(h, "<h2>Violations ({} failing states or trials)</h2>", all.len());
    if all.is_empty() {
        h += "<p class=\"ok\">None.</p>\n";
    }
    for v in all.iter().take(VIOLATIONS_SHOWN_MAX) {
        let f = v.finding;
        let _ = write!(
            h,
            "<div class=\"v\"><h3>{} — trial {}{}: {}</h3>\n<p>{}</p>\n<p>Replay: <code>{}</code></p>\n",
            esc(v.campaign.meta["campaign_id"].as_str().unwrap_or("?")),
            v.trial,
            v.state.map_or(String::new(), |s| format!(", state {s}")),
            esc(f["rule"].as_str().unwrap_or("violation")),
            esc(f["reason"].as_str().unwrap_or("")),
            esc(&v.replay),
        );
        h += &hex_diff(f["expected_hex"].as_str(), f["hex_excerpt"].as_str());
        if let Some(covered) = f["covered_by"].as_str() {
            let _ = writeln!(h, "<p>Promised by: <code>{}</code></p>", esc(covered));
        }
        let said = kernel_messages(&v.campaign.dir, v.trial);
        if !said.is_empty() {
            h += "<p>The guest kernel said, recovering:</p><pre>";
            for line in &said {
                h += &esc(line);
                h += "\n";
            }
            h += "</pre>\n";
        }
        if !v.last_msyncs.is_empty() {
            h += "<p>The last msync calls before the crash (the guest kernel's trace):</p><pre>";
            for line in &v.last_msyncs {
                h += &esc(line);
                h += "\n";
            }
            h += "</pre>\n";
        }
        h += "</div>\n";
    }
    if all.len() > VIOLATIONS_SHOWN_MAX {
        let _ = writeln!(
            h,
            "<p>… and {} more (see states.jsonl and trials.jsonl).</p>",
            all.len() - VIOLATIONS_SHOWN_MAX
        );
    }
    h
}

/// `crashlab compare`'s results under each campaign (`compare/*/
/// comparison.json`, read as results files like the rest): A and B, the
/// counts, the differing states.
fn comparisons_section(campaigns: &[CampaignResults]) -> String {
    let mut found = Vec::new();
    for c in campaigns {
        let Ok(entries) = std::fs::read_dir(c.dir.join("compare")) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path().join("comparison.json")))
            .collect();
        paths.sort();
        found.extend(paths.iter().filter_map(|p| read_json(p).ok()));
    }
    if found.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h2>Kernels compared</h2>\n");
    for c in &found {
        h += &comparison_html(c);
    }
    h
}

fn comparison_html(c: &Value) -> String {
    let kernel = |side: &str| match serde_json::from_value::<machine::images::KernelIdentity>(c[side]["kernel"].clone())
    {
        Ok(kernel) => kernel.summary_line(),
        Err(_) => "(not recorded)".into(),
    };
    let k = &c["counts"];
    let n = |key: &str| k[key].as_u64().unwrap_or(0);
    let mut h = format!(
        "<p class=\"{}\"><b>A</b> {} <b>B</b> {}: {} compared, A failed {}, B failed {}; fixed {}, regressions {}, \
         both fail with another rule {}. <i>{}</i></p>\n",
        if n("regressions") > 0 { "bad" } else { "ok" },
        esc(&kernel("a")),
        esc(&kernel("b")),
        n("compared"),
        n("a_failed"),
        n("b_failed"),
        n("fixed"),
        n("regressions"),
        n("other_rule"),
        esc(c["scope"].as_str().unwrap_or(""))
    );
    let differences = c["differences"].as_array().cloned().unwrap_or_default();
    if differences.is_empty() {
        return h;
    }
    h += "<table><tr><th>trial</th><th>state</th><th>crash position</th><th>difference</th><th>A</th><th>B</th></tr>\n";
    let cell = |v: &Value| match v["passed"].as_bool() {
        Some(true) => "pass".to_string(),
        _ => format!(
            "{}: {}",
            v["rule"].as_str().unwrap_or("fail"),
            v["reason"].as_str().unwrap_or("")
        ),
    };
    for p in differences.iter().take(VIOLATIONS_SHOWN_MAX) {
        let opt = |v: &Value| v.as_u64().map_or("-".into(), |n| n.to_string());
        let difference = p["difference"].as_str().unwrap_or("?");
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if difference == "regression" { "bad" } else { "ok" },
            opt(&p["trial"]),
            opt(&p["state"]),
            opt(&p["crash_position"]),
            esc(difference),
            esc(&cell(&p["a"])),
            esc(&cell(&p["b"]))
        );
    }
    h + "</table>\n"
}

/// Writes `report.html` into `dir` for the campaigns under it; its path.
pub fn write_report(dir: &Path) -> Result<PathBuf> {
    for campaign in find_campaigns(dir)? {
        let found = crate::verify::check_for_reading(&campaign);
        if !found.is_empty() {
            return Err(machine::seal::refusal(
                &format!("cannot report on {}", campaign.display()),
                &found,
            ));
        }
    }
    let campaigns = find_campaigns(dir)?
        .iter()
        .map(|d| load_campaign(d))
        .collect::<Result<Vec<_>>>()?;
    let title = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let html = render(&title, &campaigns);
    let path = dir.join("report.html");
    machine::durable::write_atomically(&path, html.as_bytes())
        .with_context(|| format!("cannot write {} (disk full? read-only?)", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_versions_are_read_and_absent_means_one_zero() {
        assert_eq!(schema_of(&serde_json::json!({})), Ok((1, 0)));
        assert_eq!(schema_of(&serde_json::json!({"results_schema": "1.7"})), Ok((1, 7)));
        assert!(schema_of(&serde_json::json!({"results_schema": "one"})).is_err());
    }

    /// The header names the schema the results were written with (as the
    /// plots that depend on it do), not only the one this crashlab writes.
    #[test]
    fn the_header_names_the_results_own_schema() {
        let campaign = |meta: serde_json::Value| CampaignResults {
            dir: PathBuf::from("/r"),
            summary: None,
            trials: Vec::new(),
            states: Vec::new(),
            meta,
        };
        let old = campaign(serde_json::json!({}));
        let new = campaign(serde_json::json!({"results_schema": "1.3"}));
        assert_eq!(schemas_written(std::slice::from_ref(&old)), "Results schema 1.0");
        assert_eq!(schemas_written(&[old, new]), "Results schemas 1.0, 1.3");
    }

    #[test]
    fn the_hex_diff_marks_the_differing_bytes() {
        let html = hex_diff(Some("@0x10: 11223344 55"), Some("@0x10: 11220044 00"));
        assert!(
            html.contains("expected 1122<b class=\"d\">33</b>44 <b class=\"d\">55</b>"),
            "{html}"
        );
        assert!(
            html.contains("found    1122<b class=\"d\">00</b>44 <b class=\"d\">00</b>"),
            "{html}"
        );
        assert!(html.contains("offset   0x10"));
        assert_eq!(hex_diff(None, None), "");
    }

    #[test]
    fn loss_window_buckets_are_powers_of_two() {
        let buckets: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 4095, 4096, u64::MAX].map(window_bucket).to_vec();
        assert_eq!(buckets, [0, 1, 2, 2, 3, 3, 4, 12, 13, 13]);
        assert_eq!(window_label(0), "0");
        assert_eq!(window_label(3), "4");
        assert_eq!(window_label(13), "4096+");
    }

    #[test]
    fn plots_draw_their_data_in_their_colour() {
        let svg = plot_lost_against_position(&[(10, 0), (20, 3)], "records").unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("#D62728"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        let svg = plot_loss_window(&[0, 0, 3, 40], "records").unwrap();
        assert!(svg.contains("#1F77B4"));
        let svg = plot_rate(&[1000, 1500, 2200, 9000]).unwrap();
        assert!(svg.contains("#2CA02C"));
        assert!(plot_loss_window(&[], "items").is_err());
        assert!(plot_rate(&[5]).unwrap_err().contains("schema 1.1"));
    }
}
