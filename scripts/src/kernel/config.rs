//! Kernel configurations as data: a `.config` or a fragment read into
//! option -> value, fragments merged over a base, and the check that every
//! line of the fragments took (Kconfig silently drops a value whose
//! dependencies are not met). Pure: text in, text or findings out.

use std::collections::BTreeMap;

/// The base `make` target crashlab's configuration starts from.
pub const BASE_TARGET: &str = "tinyconfig";

/// An option's value as Kconfig writes it: `y`, `m`, a number, a quoted
/// string; `n` for "is not set".
pub type Options = BTreeMap<String, String>;

/// Options set by a `.config` or a fragment, later lines winning.
/// Comments other than "# CONFIG_X is not set" are ignored.
pub fn parse(text: &str) -> Options {
    let mut options = Options::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            if is_option_name(name) {
                options.insert(name.to_string(), "n".into());
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if is_option_name(name) {
                options.insert(name.to_string(), value.to_string());
            }
        }
    }
    options
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// A fragment's lines that are neither options, comments nor blank: a
/// typo (`CONFIG_EXT4=y` is fine, `EXT4_FS=y` is not) would otherwise be
/// dropped without a word.
pub fn malformed_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            let comment = l.starts_with('#') && !l.contains("CONFIG_");
            let unset = l
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
                .is_some_and(is_option_name);
            let set = l
                .split_once('=')
                .is_some_and(|(name, value)| is_option_name(name) && !value.is_empty());
            !(l.is_empty() || comment || unset || set)
        })
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// The `.config` that `make olddefconfig` is given: the base's, then each
/// fragment in order (Kconfig takes an option's last assignment).
pub fn merge(base: &str, fragments: &[(String, String)]) -> String {
    let mut merged = base.trim_end().to_string();
    merged.push('\n');
    for (name, text) in fragments {
        merged.push_str(&format!("# --- fragment {name} ---\n"));
        merged.push_str(text.trim_end());
        merged.push('\n');
    }
    merged
}

/// An option a fragment asked for that the final configuration does not
/// have.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub option: String,
    pub wanted: String,
    /// `n` when the option is absent (its dependencies hide it).
    pub got: String,
    /// The fragment that asked, by name.
    pub fragment: String,
}

/// What each fragment asked for, checked against the final `.config`. The
/// last fragment to set an option is the one checked (a user's fragment
/// may override crashlab's).
pub fn mismatches(fragments: &[(String, String)], final_config: &str) -> Vec<Mismatch> {
    let got = parse(final_config);
    let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (name, text) in fragments {
        for (option, value) in parse(text) {
            wanted.insert(option, (value, name.clone()));
        }
    }
    wanted
        .into_iter()
        .filter_map(|(option, (value, fragment))| {
            let have = got.get(&option).cloned().unwrap_or_else(|| "n".into());
            (have != value).then_some(Mismatch {
                option,
                wanted: value,
                got: have,
                fragment,
            })
        })
        .collect()
}

/// The error for options that did not take, with the way to find out why.
pub fn describe_mismatches(found: &[Mismatch]) -> String {
    let lines: Vec<String> = found
        .iter()
        .map(|m| {
            format!(
                "  {}={} (from {}) came out as {}",
                m.option, m.wanted, m.fragment, m.got
            )
        })
        .collect();
    format!(
        "{} option(s) of the configuration did not take after `make olddefconfig`:\n{}\n\
         an option Kconfig drops has unmet dependencies: look each up with `make menuconfig` \
         (press / and type its name) and add what it depends on to your --config-fragment",
        found.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_reads_as_options_with_later_lines_winning() {
        let text = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"-x\"\nCONFIG_A=m\nnot a line\n";
        let options = parse(text);
        assert_eq!(options["CONFIG_A"], "m");
        assert_eq!(options["CONFIG_B"], "n");
        assert_eq!(options["CONFIG_S"], "\"-x\"");
        assert_eq!(options.len(), 3);
    }

    #[test]
    fn fragments_go_after_the_base_in_order() {
        let merged = merge(
            "CONFIG_A=y\n",
            &[
                ("one".into(), "CONFIG_A=m\n".into()),
                ("two".into(), "# CONFIG_A is not set".into()),
            ],
        );
        assert_eq!(parse(&merged)["CONFIG_A"], "n", "the last fragment wins");
        assert!(merged.find("fragment one").unwrap() < merged.find("fragment two").unwrap());
    }

    #[test]
    fn options_that_did_not_take_are_named_with_their_fragment() {
        let ours = (
            "crashlab".to_string(),
            "CONFIG_EXT4_FS=y\nCONFIG_XFS_FS=y\n# CONFIG_SLUB_TINY is not set\n".to_string(),
        );
        let users = (
            "mine.config".to_string(),
            "CONFIG_XFS_FS=m\nCONFIG_EXT4_DEBUG=y\n".to_string(),
        );
        let final_config = "CONFIG_EXT4_FS=y\nCONFIG_XFS_FS=m\n# CONFIG_EXT4_DEBUG is not set\n";
        let found = mismatches(&[ours.clone(), users], final_config);
        assert_eq!(
            found,
            vec![Mismatch {
                option: "CONFIG_EXT4_DEBUG".into(),
                wanted: "y".into(),
                got: "n".into(),
                fragment: "mine.config".into(),
            }],
            "the user's XFS_FS=m overrides ours; an absent option is unset, as asked"
        );
        let said = describe_mismatches(&found);
        assert!(
            said.contains("CONFIG_EXT4_DEBUG=y (from mine.config) came out as n"),
            "{said}"
        );
        assert!(
            mismatches(&[ours], "CONFIG_EXT4_FS=y\n").len() == 1,
            "XFS_FS absent is not y"
        );
    }

    #[test]
    fn a_line_that_is_no_option_is_reported_with_its_number() {
        let text = "# a comment\nCONFIG_A=y\n\nEXT4_FS=y\nCONFIG_B=\n# CONFIG_C is not set\n";
        assert_eq!(
            malformed_lines(text),
            vec![(4, "EXT4_FS=y".into()), (5, "CONFIG_B=".into())]
        );
    }

    #[test]
    fn crashlabs_own_fragment_is_well_formed() {
        let text = include_str!("../../../vm-images/kernel.config");
        assert_eq!(malformed_lines(text), vec![]);
        let options = parse(text);
        for needed in [
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_PCI",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_EXT4_FS",
            "CONFIG_XFS_FS",
            "CONFIG_BTRFS_FS",
            "CONFIG_F2FS_FS",
            "CONFIG_FTRACE_SYSCALLS",
            "CONFIG_BLK_DEV_INITRD",
        ] {
            assert_eq!(options.get(needed).map(String::as_str), Some("y"), "{needed} built in");
        }
        assert!(
            !options.values().any(|v| v == "m"),
            "nothing as a module: the guest loads none"
        );
    }
}
