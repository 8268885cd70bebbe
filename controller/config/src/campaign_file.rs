//! Campaign files: a campaign described in TOML instead of a flag list.
//!
//! Top-level keys are the flags of `crashlab run`, spelled as on the
//! command line without the dashes (`fs = "xfs"`, `crash-model =
//! "power-loss"`, `torn-writes = true`). A `[sweep]` table gives lists for
//! some of them (`fs = ["ext4", "xfs"]`); the lists expand into a matrix,
//! one campaign per combination, in the order the keys are written. Flags
//! on the command line override the file: a flag replaces the key, and a
//! swept key's whole list. Relative paths are relative to the file.
//!
//! This module is plain data in, plain data out: the file's text becomes
//! settings and sweep axes (each with its line, for error messages), and
//! those become the `run` argument lists of the cells. Whether a value is
//! valid is asked of the command line's own parser (`validate`), so a file
//! accepts exactly what the flags accept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a `run` flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// `--name VALUE`, once.
    Value,
    /// `--name`, no value: `true` or `false` in a file.
    Switch,
    /// `--name VALUE`, repeatable: a list in a file.
    Many,
    /// A path: relative to the file.
    Path,
}

/// Keys a `[sweep]` may list: the axes researchers vary.
pub const SWEEPABLE: [&str; 8] = [
    "fs",
    "mkfs-opts",
    "mount-opts",
    "mode",
    "pattern",
    "crash-model",
    "images-dir",
    "seed",
];

/// Keys a file may not set: they say what to do with a campaign, not what
/// it is.
pub const NOT_IN_FILES: [&str; 3] = ["config", "resume", "only-trial"];

/// Upper bound on cells in one sweep: a matrix one can still read.
pub const CELLS_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// One per occurrence of the flag (several for a `Many` key); empty
    /// for a switch that is on.
    pub values: Vec<String>,
    pub kind: FlagKind,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepAxis {
    pub key: String,
    pub values: Vec<String>,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignFile {
    pub path: PathBuf,
    pub settings: Vec<Setting>,
    pub sweep: Vec<SweepAxis>,
}

/// One campaign of a file: its `run` arguments and, for a sweep, the value
/// each axis took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCell {
    pub args: Vec<String>,
    pub axes: Vec<(String, String)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Reads a campaign file. `known` maps each `run` flag (without dashes) to
/// its kind; `validate` parses `run` arguments as the command line would.
pub fn parse(
    path: &Path,
    text: &str,
    known: &BTreeMap<String, FlagKind>,
    validate: &dyn Fn(&[String]) -> Result<(), String>,
) -> Result<CampaignFile, String> {
    let spans = toml::de::DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        format!("{}:{line}: not valid TOML: {}", path.display(), e.message())
    })?;
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    // Key → line, for the top level and for [sweep].
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for (key, value) in spans.get_ref() {
        lines.insert(key.get_ref().to_string(), line_of(text, key.span().start));
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            for (k, _) in inner {
                lines.insert(
                    format!("{}.{}", key.get_ref(), k.get_ref()),
                    line_of(text, k.span().start),
                );
            }
        }
    }
    let reader = Reader {
        path,
        lines,
        known,
        validate,
    };
    let mut file = CampaignFile {
        path: path.to_path_buf(),
        settings: Vec::new(),
        sweep: Vec::new(),
    };
    for (key, value) in &table {
        if key == "sweep" {
            file.sweep = reader.sweep(value)?;
        } else if let Some(setting) = reader.setting(key, value)? {
            file.settings.push(setting);
        }
    }
    // In the order written: the matrix's rows and columns follow it.
    file.sweep.sort_by_key(|a| a.line);
    Ok(file)
}

/// What reading a campaign file's keys needs: where each key is, the
/// flags there are, and how a value is checked.
struct Reader<'a> {
    path: &'a Path,
    lines: BTreeMap<String, usize>,
    known: &'a BTreeMap<String, FlagKind>,
    validate: &'a dyn Fn(&[String]) -> Result<(), String>,
}

impl Reader<'_> {
    fn line(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(1)
    }

    /// `FILE:LINE` of a key, for messages.
    fn at(&self, key: &str) -> String {
        format!("{}:{}", self.path.display(), self.line(key))
    }

    /// A relative path is relative to the file's directory.
    fn resolve(&self, kind: FlagKind, value: String) -> String {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match kind {
            FlagKind::Path if Path::new(&value).is_relative() => dir.join(&value).display().to_string(),
            _ => value,
        }
    }

    fn keys_list(&self) -> String {
        let mut keys: Vec<&str> = self
            .known
            .keys()
            .map(String::as_str)
            .filter(|k| !NOT_IN_FILES.contains(k))
            .collect();
        keys.push("[sweep]");
        keys.join(", ")
    }

    /// `[sweep]`: each axis a list of values of a sweepable flag.
    fn sweep(&self, value: &toml::Value) -> Result<Vec<SweepAxis>, String> {
        let toml::Value::Table(axes) = value else {
            return Err(format!(
                "{}: `sweep` must be a table: [sweep] with lists under it",
                self.at("sweep")
            ));
        };
        let mut sweep = Vec::new();
        for (axis, values) in axes {
            let here = self.at(&format!("sweep.{axis}"));
            if !SWEEPABLE.contains(&axis.as_str()) {
                return Err(format!(
                    "{here}: `{axis}` cannot be swept; [sweep] takes {}",
                    SWEEPABLE.join(", ")
                ));
            }
            let toml::Value::Array(items) = values else {
                return Err(format!(
                    "{here}: [sweep] {axis} must be a list, e.g. {axis} = [\"a\", \"b\"]"
                ));
            };
            let kind = self.known.get(axis).copied().unwrap_or(FlagKind::Value);
            let mut list = Vec::new();
            for item in items {
                let v = scalar(item)
                    .ok_or_else(|| format!("{here}: [sweep] {axis} holds {item}: use strings or numbers"))?;
                let v = self.resolve(kind, v);
                (self.validate)(&[format!("--{axis}={v}")])
                    .map_err(|e| format!("{here}: [sweep] {axis} = {v:?}: {e}"))?;
                list.push(v);
            }
            if list.is_empty() {
                return Err(format!("{here}: [sweep] {axis} is an empty list"));
            }
            sweep.push(SweepAxis {
                key: axis.clone(),
                values: list,
                line: self.line(&format!("sweep.{axis}")),
            });
        }
        Ok(sweep)
    }

    /// A top-level key: a `run` flag's setting (`None`: a switch set false).
    fn setting(&self, key: &str, value: &toml::Value) -> Result<Option<Setting>, String> {
        let here = self.at(key);
        if NOT_IN_FILES.contains(&key) {
            return Err(format!(
                "{here}: `{key}` is not a campaign setting: give it on the command line"
            ));
        }
        let Some(&kind) = self.known.get(key) else {
            return Err(format!(
                "{here}: unknown key `{key}`; a campaign file takes the flags of `crashlab run` without \
                 their dashes: {}",
                self.keys_list()
            ));
        };
        let values = match (kind, value) {
            (FlagKind::Switch, toml::Value::Boolean(true)) => vec![],
            (FlagKind::Switch, toml::Value::Boolean(false)) => return Ok(None),
            (FlagKind::Switch, other) => {
                return Err(format!("{here}: `{key}` is a switch: true or false, not {other}"));
            }
            (FlagKind::Many, toml::Value::Array(items)) => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| format!("{here}: `{key}` holds {i}: use strings")))
                .collect::<Result<Vec<_>, _>>()?,
            (_, toml::Value::Array(_)) => {
                return Err(format!(
                    "{here}: `{key}` takes one value; to try several, list them under [sweep]"
                ));
            }
            (_, v) => vec![scalar(v)
                .ok_or_else(|| format!("{here}: `{key}` = {v}: give a string or a number, as on the command line"))?],
        };
        let setting = Setting {
            key: key.to_string(),
            values: values.into_iter().map(|v| self.resolve(kind, v)).collect(),
            kind,
            line: self.line(key),
        };
        (self.validate)(&setting.args()).map_err(|e| format!("{here}: {key}: {e}"))?;
        Ok(Some(setting))
    }
}

impl Setting {
    pub fn args(&self) -> Vec<String> {
        match self.kind {
            FlagKind::Switch => vec![format!("--{}", self.key)],
            _ => self.values.iter().map(|v| format!("--{}={v}", self.key)).collect(),
        }
    }
}

/// The flag names (without dashes) set in command-line arguments.
pub fn flags_in(args: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

/// The cells of a file with the command line's `overrides`: every
/// combination of the axes the command line does not set, each with the
/// file's settings, then the axes' values, then the overrides (the last
/// occurrence of a flag wins).
pub fn expand(file: &CampaignFile, overrides: &[String]) -> Result<Vec<FileCell>, String> {
    let overridden = flags_in(overrides);
    let axes: Vec<&SweepAxis> = file.sweep.iter().filter(|a| !overridden.contains(&a.key)).collect();
    let count = axes.iter().try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
    match count {
        Some(n) if n <= CELLS_MAX => {}
        _ => {
            return Err(format!(
                "{}: the [sweep] expands into more than {CELLS_MAX} campaigns: shorten its lists",
                file.path.display()
            ))
        }
    }
    let base: Vec<String> = file
        .settings
        .iter()
        .filter(|s| !overridden.contains(&s.key))
        .flat_map(Setting::args)
        .collect();
    let mut cells = vec![FileCell {
        args: Vec::new(),
        axes: Vec::new(),
    }];
    for axis in axes {
        cells = cells
            .into_iter()
            .flat_map(|cell| {
                axis.values.iter().map(move |v| {
                    let mut c = cell.clone();
                    c.args.push(format!("--{}={v}", axis.key));
                    c.axes.push((axis.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    Ok(cells
        .into_iter()
        .map(|cell| FileCell {
            args: base.iter().chain(&cell.args).chain(overrides).cloned().collect(),
            axes: cell.axes,
        })
        .collect())
}

/// `--key=value` arguments as a campaign file (what a campaign saves as
/// `campaign.toml`, and what `--config` reads back).
pub fn render(args: &[String], comment: &str) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        out += &format!("# {line}\n");
    }
    let mut many: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for arg in args {
        let Some(flag) = arg.strip_prefix("--") else { continue };
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if !order.contains(&key) {
            order.push(key.clone());
        }
        // A switch (`--name`) has no value: it renders as `true`.
        many.entry(key).or_default().extend(value);
    }
    for key in order {
        let values = &many[&key];
        // A number stays a number (a seed that does not fit i64 stays a string).
        let quoted: Vec<String> = values
            .iter()
            .map(|v| match v.parse::<i64>() {
                Ok(n) if n.to_string() == *v => v.clone(),
                _ => toml::Value::String(v.clone()).to_string(),
            })
            .collect();
        // A repeated flag is a list; `parse` takes one value as a list of one.
        out += &match values.len() {
            0 => format!("{key} = true\n"),
            1 => format!("{key} = {}\n", quoted[0]),
            _ => format!("{key} = [{}]\n", quoted.join(", ")),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeMap<String, FlagKind> {
        [
            ("fs", FlagKind::Value),
            ("mount-opts", FlagKind::Value),
            ("mkfs-opts", FlagKind::Value),
            ("trials", FlagKind::Value),
            ("seed", FlagKind::Value),
            ("crash-model", FlagKind::Value),
            ("torn-writes", FlagKind::Switch),
            ("workload-arg", FlagKind::Many),
            ("images-dir", FlagKind::Path),
            ("resume", FlagKind::Path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Accepts what the real parser would, for the keys above.
    fn validate(args: &[String]) -> Result<(), String> {
        for a in args {
            if let Some(v) = a.strip_prefix("--fs=") {
                if !["ext4", "xfs", "btrfs", "f2fs"].contains(&v) {
                    return Err(format!(
                        "invalid value '{v}' for '--fs <FS>' [possible values: ext4, xfs, btrfs, f2fs]"
                    ));
                }
            }
            if let Some(v) = a.strip_prefix("--trials=") {
                v.parse::<u64>()
                    .map_err(|_| format!("invalid value '{v}' for '--trials <TRIALS>'"))?;
            }
        }
        Ok(())
    }

    fn parse_text(text: &str) -> Result<CampaignFile, String> {
        parse(Path::new("/c/x.toml"), text, &known(), &validate)
    }

    #[test]
    fn settings_and_sweeps_become_cells_in_file_order() {
        let file = parse_text(
            "fs = \"ext4\"\ntrials = 2\ntorn-writes = true\nworkload-arg = [\"a\", \"-b\"]\nimages-dir = \"img\"\n\n[sweep]\nfs = [\"ext4\", \"xfs\"]\nmount-opts = [\"defaults\", \"noatime\"]\n",
        )
        .unwrap();
        assert_eq!(file.sweep[0].line, 8);
        let cells = expand(&file, &[]).unwrap();
        assert_eq!(cells.len(), 4);
        assert_eq!(
            cells[1].args,
            [
                "--fs=ext4",
                "--images-dir=/c/img",
                "--torn-writes",
                "--trials=2",
                "--workload-arg=a",
                "--workload-arg=-b",
                "--fs=ext4",
                "--mount-opts=noatime"
            ]
        );
        assert_eq!(
            cells[3].axes,
            [
                ("fs".to_string(), "xfs".to_string()),
                ("mount-opts".to_string(), "noatime".to_string())
            ]
        );
    }

    #[test]
    fn the_command_line_overrides_a_key_and_a_whole_sweep_axis() {
        let file = parse_text("trials = 2\n[sweep]\nfs = [\"ext4\", \"xfs\"]\nseed = [1, 2]\n").unwrap();
        let cells = expand(&file, &["--fs=btrfs".into(), "--trials=1".into()]).unwrap();
        assert_eq!(cells.len(), 2, "fs is no longer swept");
        assert_eq!(cells[0].args, ["--seed=1", "--fs=btrfs", "--trials=1"]);
    }

    #[test]
    fn errors_name_the_file_the_line_and_what_is_allowed() {
        let err = parse_text("trials = 2\nfilesystem = \"xfs\"\n").unwrap_err();
        assert!(
            err.starts_with("/c/x.toml:2: unknown key `filesystem`") && err.contains("fs, "),
            "{err}"
        );
        let err = parse_text("\n\nfs = \"zfs\"\n").unwrap_err();
        assert!(
            err.starts_with("/c/x.toml:3: fs:") && err.contains("possible values: ext4"),
            "{err}"
        );
        let err = parse_text("[sweep]\nfs = [\"ext4\", \"zfs\"]\n").unwrap_err();
        assert!(err.starts_with("/c/x.toml:2: [sweep] fs = \"zfs\""), "{err}");
        let err = parse_text("[sweep]\ntrials = [1, 2]\n").unwrap_err();
        assert!(
            err.contains("`trials` cannot be swept") && err.contains("mkfs-opts"),
            "{err}"
        );
        let err = parse_text("fs = [\"ext4\", \"xfs\"]\n").unwrap_err();
        assert!(err.contains("list them under [sweep]"), "{err}");
        let err = parse_text("torn-writes = \"yes\"\n").unwrap_err();
        assert!(err.contains("is a switch: true or false"), "{err}");
        let err = parse_text("resume = \"x\"\n").unwrap_err();
        assert!(err.contains("give it on the command line"), "{err}");
        let err = parse_text("trials = \n").unwrap_err();
        assert!(err.starts_with("/c/x.toml:1: not valid TOML"), "{err}");
    }

    #[test]
    fn a_rendered_configuration_reads_back_to_the_same_arguments() {
        let args: Vec<String> = [
            "--fs=ext4",
            "--mkfs-opts=-T small",
            "--torn-writes",
            "--workload-arg=a b",
            "--workload-arg=-c",
            "--trials=3",
        ]
        .map(String::from)
        .to_vec();
        let text = render(&args, "resolved");
        assert!(text.starts_with("# resolved\n"), "{text}");
        let file = parse_text(&text).unwrap();
        let mut again = expand(&file, &[]).unwrap().remove(0).args;
        let mut want = args.clone();
        again.sort();
        want.sort();
        assert_eq!(again, want);
    }

    #[test]
    fn a_sweep_too_large_is_refused() {
        let list = (0..100).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        let file = parse_text(&format!(
            "[sweep]\nseed = [{list}]\nmount-opts = [{}]\n",
            (0..100).map(|i| format!("\"o{i}\"")).collect::<Vec<_>>().join(", ")
        ))
        .unwrap();
        assert!(expand(&file, &[]).unwrap_err().contains("more than 4096"));
    }
}
